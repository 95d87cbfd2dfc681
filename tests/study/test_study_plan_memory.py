"""The dry run's memory plan: what a study holds at its peak on the device and on the host (issue 32)."""

from knowloc.study import plan
from knowloc.study.config import StudyConfig

GiB = 2**30


def test_memory_needs_of_a_llama3_8b_shape_in_bf16():
    needs = plan.memory_needs(8_030_261_248, 2, 4096, 14336, rome_layers=3, ft=True, engine_bytes=2 * GiB)
    assert needs["weights"] == 8_030_261_248 * 2
    assert needs["ft"] == 16 * 4096 * 14336  # fp32 change, gradient and Adam's two moments of one projection
    assert needs["device"] == needs["weights"] + 2 * GiB + needs["ft"]
    assert needs["rome_c"] == needs["host"] == 3 * 8 * 14336**2  # float64 C of each edited layer
    assert plan.memory_needs(10, 4, 2, 3, rome_layers=0, ft=False, engine_bytes=0)["device"] == 40


def test_the_dry_run_reports_the_loaded_models_memory(tmp_path, study_args, tiny_models):
    lines = []
    args = study_args(tmp_path / "dry", experiments=["consistency", "editors"], editors=["kn", "rome"], facts=2,
                      edit_layer=["0", "2"], specificity_prompts=4)
    result = plan.print_plan(StudyConfig(**args), echo=lines.append)
    lm = tiny_models("tiny-llama")
    needs = result["memory"]["tiny-llama"]
    assert needs["weights"] == sum(p.numel() * p.element_size() for p in lm.model.parameters())
    assert needs["rome_c"] == 2 * 8 * lm.n_neurons**2  # rome at layers 0 and 2
    assert needs["ft"] == 0  # neither ft nor kn-ft
    memory = next(line for line in lines if "memory on" in line)
    assert str(lm.device) in memory and f"{sum(p.numel() for p in lm.model.parameters()):,} parameters" in memory
    assert any("ROME's C" in line and "2 layers" in line for line in lines)
