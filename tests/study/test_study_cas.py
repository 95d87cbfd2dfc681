
import pytest
import torch

from knowloc.analysis import MIN_N, select_neurons
from knowloc.study.config import StudyConfig
from knowloc.study.context import StudyContext
from knowloc.study.experiments.common import selections


def _ctx(**kw):
    return StudyContext(config=StudyConfig(**kw), store=None, out=None)


def test_identical_queries_cas_equals_own_kns():
    """KL as the special case of QL: with identical attributions CAS selects exactly N_i."""
    gen = torch.Generator().manual_seed(0)  # cpu: attribution maps, pure maths
    one = torch.randn(4, 32, generator=gen).half().float()  # cpu
    stack = one.expand(3, -1, -1).clone()
    chosen = selections(_ctx(), stack, edited=1, members=[0, 1, 2])
    assert chosen["free"]["CAS"] == chosen["free"]["N_i"] == select_neurons(one, 0.2)
    assert set(chosen["free"]["N_g"]) == set(chosen["free"]["N_i"])


def test_matched_budget_and_held_out_members():
    gen = torch.Generator().manual_seed(1)  # cpu: attribution maps, pure maths
    stack = torch.rand(3, 4, 32, generator=gen)  # cpu
    chosen = selections(_ctx(), stack, edited=0, members=[0, 1])
    k = len(chosen["free"]["CAS"])
    assert len(chosen["matched"]["N_i"]) == min(k, len(chosen["free"]["N_i"]))
    assert chosen["matched"]["N_g"] == chosen["free"]["N_g"][:k]
    union_without_2 = {n for m in (0, 1) for n in select_neurons(stack[m], 0.2)}
    assert set(chosen["free"]["N_g"]) == union_without_2


def test_cas_sweep_grid_rows_figures_and_cli(tmp_path, study_args):
    """The sweep runs on an earlier study's directory (its attributions reused), writes one row per
    model x method x operation x group x grid point, and a grid point equal to the `cas` defaults reproduces
    the `cas` experiment's transductive CAS Avg."""
    import json

    from knowloc.cli import main
    from knowloc.study.runner import run_study

    out = tmp_path / "study"
    base = study_args(out, experiments=["consistency", "cas"], cas_sweep_beta2=[0.0, 1.0],
                      cas_sweep_thresholds=[0.2, 0.6])
    cas_rows = json.loads(run_study(StudyConfig(**base), echo=lambda _: None).read_text())["cas"]
    code = main(["cas-sweep", "--model", "tiny-llama", "--data", base["data"], "--methods", "ig", "--seed", "1",
                 "--sweep-beta2", "0,1", "--sweep-thresholds", "0.2,0.6", "--out", str(out), "--no-progress",
                 "--config", str(_toml(tmp_path, base))])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    rows = summary["cas_sweep"]
    groups = {r["group"] for r in rows}
    assert len(rows) == 2 * len(groups) * 4  # operations x groups x (2 beta2 x 2 t)
    assert {(r["beta2"], r["t"]) for r in rows} == {(0.0, 0.2), (0.0, 0.6), (1.0, 0.2), (1.0, 0.6)}
    for r in rows:
        if r["n"]:
            assert 0 <= r["avg"] <= 1
            if r["n"] >= MIN_N:
                assert r["avg_ci_low"] <= r["avg"] <= r["avg_ci_high"]
            else:  # too few facts: the interval is withheld
                assert r["avg_ci_low"] is None and r["avg_ci_high"] is None
    # a higher t keeps fewer neurons
    for op in ("erase", "update"):
        for g in groups:
            size = {(r["beta2"], r["t"]): r["n_neurons"] for r in rows if r["operation"] == op and r["group"] == g}
            if size[(1.0, 0.6)] is not None:  # null (strict JSON) where no fact selects anything
                assert size[(1.0, 0.6)] <= size[(1.0, 0.2)]
    default = {(r["operation"], r["group"]): r["avg"] for r in rows if r["beta2"] == 1.0 and r["t"] == 0.2}
    for r in cas_rows:
        if r["selection"] == "CAS" and r["protocol"] == "transductive" and r["budget"] == "free" and r["n"]:
            assert default[(r["operation"], r["group"])] == pytest.approx(r["avg"])
    figures = {p.name for p in (out / "figures").glob("cas_sweep_*.png")}
    assert figures and all(name.endswith("_tiny-llama_ig.png") for name in figures)
    assert "## CAS sweep" in (out / "summary.md").read_text()


def _toml(tmp_path, args: dict):
    path = tmp_path / "study.toml"
    keys = ("steps", "candidates", "n_boot", "locality", "specificity_queries")
    path.write_text("\n".join(f"{k} = {str(args[k]).lower() if isinstance(args[k], bool) else args[k]}" for k in keys))
    return path


def test_sweep_grid_validation():
    from knowloc.errors import KnowlocError

    assert StudyConfig(cas_sweep_beta2="0, 0.5,2").cas_sweep.beta2 == [0.0, 0.5, 2.0]
    for bad in ({"cas_sweep_beta2": "a,b"}, {"cas_sweep_beta1": [-1]}, {"cas_sweep_thresholds": [0.2, 1.5]},
                {"cas_sweep_thresholds": []}, {"cas_sweep_beta2": [1, 1]}):
        with pytest.raises(KnowlocError):
            StudyConfig(**bad)


def test_cas_protocols_and_budgets_run_only_those_named_with_the_same_numbers(tmp_path, study_args):
    """--cas-protocols transductive and --cas-budgets free (the demo's) store and summarize only the paper's protocol
    and budget, and their rows and the finding equal those of a study that runs both; --cas-budgets matched alone
    still has its CAS row (the budgets share the CAS trial) and the same rows as the full study's."""
    import json

    from knowloc.study.runner import run_study

    def cas(out, **kw):
        summary = json.loads(run_study(StudyConfig(**study_args(out, experiments=["consistency", "cas"], **kw)),
                                       echo=lambda _: None).read_text())
        finding = next(f for f in summary["findings"] if f["id"] == "cas-beats-baselines")
        return summary["cas"], summary["cas_comparison"], finding

    both, both_diff, both_finding = cas(tmp_path / "both")
    assert {r["protocol"] for r in both} == {"transductive", "held_out"}
    assert {r["budget"] for r in both} == {"free", "matched"}
    for setting, key, value in (("cas_protocols", "protocol", "transductive"), ("cas_budgets", "budget", "free"),
                                ("cas_budgets", "budget", "matched")):
        one, one_diff, one_finding = cas(tmp_path / value, **{setting: value})
        assert one == [r for r in both if r[key] == value] and one
        assert one_diff == [r for r in both_diff if r[key] == value] and one_diff
        assert any(r["selection"] == "CAS" and r["n"] for r in one)
        if value != "matched":  # the finding reads the transductive protocol's free budget
            assert one_finding == both_finding


def test_cas_protocols_validation():
    from knowloc.errors import KnowlocError

    assert StudyConfig(cas_protocols="held_out,transductive").cas.protocols == ["transductive", "held_out"]
    for bad in ("", "transductive,leave_one_out"):
        with pytest.raises(KnowlocError, match="--cas-protocols must name some of transductive, held_out"):
            StudyConfig(cas_protocols=bad)
    assert StudyConfig(cas_budgets="matched,free").cas.budgets == ["free", "matched"]
    with pytest.raises(KnowlocError, match="--cas-budgets must name some of free, matched, got fixed"):
        StudyConfig(cas_budgets="fixed")
