"""The dry run's time estimate: units timed as a worker runs them (after its first), and the wall time of a Ray
study with its workers side by side (issue 35, item 3)."""

import pytest

from knowloc.study import plan
from knowloc.study.config import StudyConfig


def test_wall_estimate_adds_the_serial_work_and_spreads_the_units():
    assert plan.wall_estimate(30.0, 1000.0, 1) == 1030.0
    assert plan.wall_estimate(30.0, 1000.0, 1, slowdown=1.5, loads=9.0) == 1030.0  # one process: no side by side
    two = plan.wall_estimate(30.0, 1000.0, 2, slowdown=1.25, loads=6.0)
    assert two == pytest.approx(30.0 + 625.0 + plan.RAY_START_S + 6.0)
    assert plan.wall_estimate(30.0, 0.0, 2, slowdown=1.25, loads=6.0) == 30.0  # nothing for the workers to do


def test_attributions_are_timed_after_one_untimed_unit(tmp_path, study_args, monkeypatch):
    """The first attribution of the process (here a reference one) runs untimed (one-off costs); the first timed
    one is another unit of the same kind."""
    executed, timed = [], []
    real_execute, real_timed = plan.execute, plan._timed

    def spy_execute(ctx, unit):
        executed.append(unit)
        return real_execute(ctx, unit)

    def spy_timed(ctx, unit):
        timed.append(unit)
        return real_timed(ctx, unit)
    monkeypatch.setattr(plan, "execute", spy_execute)
    monkeypatch.setattr(plan, "_timed", spy_timed)
    args = study_args(tmp_path / "dry", experiments=["consistency"], facts=2, specificity_prompts=4)
    plan.print_plan(StudyConfig(**args), echo=lambda _: None)
    assert {u.kind for u in timed} >= {"reference", "attribution"}  # one unit of each kind and method timed
    assert executed[0] != timed[0] and executed[0].kind == timed[0].kind  # the first ran untimed, then another
    assert executed.index(timed[0]) == 1 and timed.count(executed[0]) == 0


def test_the_dry_run_states_the_ray_wall_time(tmp_path, study_args, monkeypatch):
    monkeypatch.setattr(plan, "SIDE_BY_SIDE", 1.25)
    lines = []
    args = study_args(tmp_path / "dry", experiments=["consistency", "modification"], facts=2, specificity_prompts=4)
    result = plan.print_plan(StudyConfig(**{**args, "executor": "ray", "workers": 2}), echo=lines.append)
    assert result["units_s"] > 0
    assert result["estimated_s"] == pytest.approx(result["serial_s"] + result["units_s"])
    spread = result["serial_s"] + result["units_s"] * 1.25 / 2 + plan.RAY_START_S
    assert spread < result["wall_s"] < spread + 60  # plus the slowest model load
    assert "units 1.25x as long as alone" in lines[-1] and "2 Ray workers" in lines[-1]


def test_timing_sample_is_the_median_fact_then_seeded_others_of_other_relations():
    facts = [(k, rel) for k, rel in ((3, "A"), (1, "A"), (5, "A"), (2, "B"), (4, "A"), (6, "A"), (7, "C"))]
    size, relation = (lambda f: f[0]), (lambda f: f[1])
    sample = plan.timing_sample(facts, 3, seed=0, size=size, relation=relation)
    assert sample[0] == (4, "A") and len(sample) == len(set(sample)) == 3  # the median size (4 of 1..7) first
    assert {relation(f) for f in sample} == {"A", "B", "C"}  # then one of each other relation
    assert sample == plan.timing_sample(facts, 3, seed=0, size=size, relation=relation)  # seeded
    fours = {tuple(plan.timing_sample(facts, 4, seed=s, size=size, relation=relation)) for s in range(8)}
    assert len(fours) > 1  # the fourth is a seeded one of relation A
    assert sorted(plan.timing_sample(facts, 10, seed=0, size=size, relation=relation)) == sorted(facts)


def test_experiments_are_timed_on_several_facts_per_query(tmp_path, study_args, monkeypatch):
    timed = []
    real_execute = plan.execute

    def spy(ctx, unit):
        if unit.kind == "modification":
            timed.append(unit.fact_id)
        return real_execute(ctx, unit)
    monkeypatch.setattr(plan, "execute", spy)
    monkeypatch.setattr(plan, "TIMED_FACTS", 3)
    lines = []
    args = study_args(tmp_path / "dry", experiments=["modification"], facts=4, specificity_prompts=4)
    plan.print_plan(StudyConfig(**args), echo=lines.append)
    assert len(timed) == len(set(timed)) == 3
    line = next(x for x in lines if x.strip().startswith("modification:"))
    assert "s per query" in line and "for 3 timed facts" in line


def test_unit_cost_separates_a_fixed_part_from_a_part_per_query():
    fixed, per_query = plan.unit_cost([4, 8, 12], [9.0, 10.0, 11.0])  # 8 s + 0.25 s a query
    assert fixed == pytest.approx(8.0) and per_query == pytest.approx(0.25)
    # work proportional to the queries: no fixed part
    fixed, per_query = plan.unit_cost([5, 10, 20], [2.5, 5.0, 10.0])
    assert fixed == pytest.approx(0.0, abs=1e-9) and per_query == pytest.approx(0.5)
    # cost falling with the queries (noise): flat, the mean, never a negative part
    fixed, per_query = plan.unit_cost([5, 10], [6.0, 4.0])
    assert per_query == 0.0 and fixed == pytest.approx(5.0)
    # a negative intercept: through the origin (least squares of t = b n)
    fixed, per_query = plan.unit_cost([2, 4], [1.0, 5.0])
    assert fixed == 0.0 and per_query == pytest.approx((2 * 1 + 4 * 5) / (2 * 2 + 4 * 4))
    # equal sizes cannot tell the parts apart: proportional
    assert plan.unit_cost([6, 6], [3.0, 5.0]) == (0.0, pytest.approx(8 / 12))
    with pytest.raises(ValueError, match="one positive query count"):
        plan.unit_cost([0, 3], [1.0, 2.0])
