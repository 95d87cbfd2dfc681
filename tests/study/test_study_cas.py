import torch

from knowloc.analysis import select_neurons
from knowloc.study.config import StudyConfig
from knowloc.study.context import StudyContext
from knowloc.study.experiments.cas import selections


def _ctx(**kw):
    return StudyContext(config=StudyConfig(**kw), store=None, out=None)


def test_identical_queries_cas_equals_own_kns():
    """KL as the special case of QL: with identical attributions CAS selects exactly N_i."""
    gen = torch.Generator().manual_seed(0)
    one = torch.randn(4, 32, generator=gen).half().float()
    stack = one.expand(3, -1, -1).clone()
    chosen = selections(_ctx(), stack, edited=1, members=[0, 1, 2])
    assert chosen["free"]["CAS"] == chosen["free"]["N_i"] == select_neurons(one, 0.2)
    assert set(chosen["free"]["N_g"]) == set(chosen["free"]["N_i"])


def test_matched_budget_and_held_out_members():
    gen = torch.Generator().manual_seed(1)
    stack = torch.rand(3, 4, 32, generator=gen)
    chosen = selections(_ctx(), stack, edited=0, members=[0, 1])
    k = len(chosen["free"]["CAS"])
    assert len(chosen["matched"]["N_i"]) == min(k, len(chosen["free"]["N_i"]))
    assert chosen["matched"]["N_g"] == chosen["free"]["N_g"][:k]
    union_without_2 = {n for m in (0, 1) for n in select_neurons(stack[m], 0.2)}
    assert set(chosen["free"]["N_g"]) == union_without_2
