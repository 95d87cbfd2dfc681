"""`knowloc bench attribution --peer`: knowledge-neurons beside the engine, with a stand-in for the package (the
suite is offline): `FakeKnowledgeNeurons` keeps knowledge-neurons 0.0.2's contract (constructor, hook-site
attributes, ``scaled_input``, ``get_scores``) and computes IG its own plain way, one layer at a time."""

from __future__ import annotations

import subprocess
import sys
import types
from dataclasses import replace

import pytest
import torch

from knowloc.attribution import peer
from knowloc.attribution.engine import attribute_fast
from knowloc.attribution.methods import MethodConfig
from knowloc.data import load_facts
from knowloc.errors import KnowlocError
from knowloc.models import load_model


class FakeKnowledgeNeurons:
    """IG of P(target) at the output of `input_ff_attr` in each block of `transformer.h`, zero baseline, on the
    grid `scaled_input` gives (knowledge-neurons' own: linspace(0, 1, m))."""

    def __init__(self, model, tokenizer, model_type="bert", device=None):
        assert model_type == "gpt2"
        self.model, self.tokenizer, self.device = model, tokenizer, device
        self.input_ff_attr, self.output_ff_attr = "mlp.c_fc", "mlp.c_proj.weight"

    @staticmethod
    def scaled_input(activations, steps=20, device="cpu"):
        return torch.cat([activations * alpha for alpha in torch.linspace(0, 1, steps, device=device)])

    def get_scores(self, prompt, ground_truth, batch_size=10, steps=20, pbar=True):
        ids = self.tokenizer(prompt, return_tensors="pt")["input_ids"].to(self.device)  # [1, P]
        (target,) = self.tokenizer.encode(ground_truth)
        scores = []
        for block in self.model.transformer.h:
            module = block.get_submodule(self.input_ff_attr)
            seen = {}
            handle = module.register_forward_hook(lambda m, i, out: seen.setdefault("a", out[0, -1].detach()))
            self.model(ids)
            handle.remove()
            x = self.scaled_input(seen["a"][None], steps=steps, device=self.device).requires_grad_(True)  # [m, d]

            def patch(m, i, out):
                return torch.cat([out[:, :-1], x[:, None]], dim=1)

            handle = module.register_forward_hook(patch)
            probs = torch.softmax(self.model(ids.expand(steps, -1)).logits[:, -1], dim=-1)[:, target]  # [m]
            handle.remove()
            (grad,) = torch.autograd.grad(probs.sum(), x)
            scores.append(seen["a"] * grad.mean(dim=0))
        return torch.stack(scores)  # [n_layers, d_ff]


@pytest.fixture
def fake_package(monkeypatch):
    module = types.ModuleType("knowledge_neurons")
    module.KnowledgeNeurons, module.__file__ = FakeKnowledgeNeurons, "<fake knowledge_neurons>"
    monkeypatch.setitem(sys.modules, "knowledge_neurons", module)
    return module


def test_peer_times_both_on_the_same_grid_and_they_agree(fake_package, device):
    """run_peer swaps in knowloc's grid alpha = k/m (so the two compute the same IG), times both, and puts the
    package's own grid back."""
    lm = load_model("tiny-gpt2", device=device)
    stock = FakeKnowledgeNeurons.__dict__["scaled_input"]
    config = MethodConfig("ig", 6)
    lines = []
    result = peer.run_peer(lm, load_facts("builtin").queries, 6, 2,
                           lambda pre, enc: attribute_fast(pre, enc, config)[0], echo=lines.append)
    assert FakeKnowledgeNeurons.__dict__["scaled_input"] is stock
    assert result["peer_pearson"] > 0.99999 and result["peer_top20"] == 20 and result["peer_max_rel_diff"] < 1e-4
    assert result["peer_speedup"] == pytest.approx(result["peer_s"] / result["ours_s"])
    assert "site pre_act" in lines[0] and "top-20 20/20" in lines[-1]
    # on the package's own grid the scores differ: the swap is what makes them equal
    prompt, target, enc = peer.one_token_query(lm, load_facts("builtin").queries)
    own = FakeKnowledgeNeurons(lm.model, lm.tokenizer, "gpt2", lm.device).get_scores(prompt, " " + target, 6, 6)
    ours = attribute_fast(replace(lm, site="pre_act"), enc, config)[0]
    assert peer.agreement(ours, own)["max_rel_diff"] > 1e-3


def test_bench_attribution_peer_adds_the_peers_figures_to_the_last_line(fake_package, capsys):
    from knowloc.cli import main

    assert main(["bench", "attribution", "--model", "tiny-gpt2", "--peer", "--repeats", "1", "--steps", "4"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    fields = dict(kv.split("=", 1) for kv in lines[-1].split())
    assert {"op_calls", "peer_s", "peer_speedup", "peer_pearson", "peer_top20"} <= set(fields)
    assert float(fields["peer_pearson"]) > 0.99999 and fields["peer_top20"] == "20"
    assert lines[-2].startswith("peer: knowloc ") and f"knowledge-neurons {fields['peer_s']} s/query" in lines[-2]
    assert float(fields["peer_speedup"]) > 0


def test_right_riemann_grid_tiles_like_knowledge_neurons(device):
    """Row r * b + i is activation i scaled by (r + 1) / m: knowledge-neurons' layout, knowloc's alphas."""
    acts = torch.arange(1.0, 7.0, device=device).view(2, 3)  # [b=2, d=3]
    out = peer.right_riemann_scaled_input(acts, steps=4, device=device)
    assert out.shape == (8, 3) and out.device.type == device.type
    for r in range(4):
        torch.testing.assert_close(out[2 * r:2 * r + 2], acts * (r + 1) / 4)


def test_peer_refuses_what_knowledge_neurons_cannot_compare(capsys):
    from knowloc.cli import main

    assert main(["bench", "attribution", "--model", "tiny-llama", "--peer", "--repeats", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "llama" in err and "random:gpt2-xl" in err
    assert main(["bench", "attribution", "--model", "tiny-gpt2", "--peer", "--method", "sig"]) == 2
    assert "(ig), not sig" in capsys.readouterr().err
    with pytest.raises(KnowlocError, match="fp32"):
        peer.check_peer_model(load_model("tiny-gpt2", dtype="bf16"))


def test_an_uninstallable_peer_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "knowledge_neurons", None)  # not importable
    failed = subprocess.CompletedProcess([], 1, "", "ERROR: No matching distribution found for knowledge-neurons")
    monkeypatch.setattr(peer.subprocess, "run", lambda *a, **k: failed)
    with pytest.raises(KnowlocError, match="could not install .* No matching distribution"):
        peer.load_knowledge_neurons(tmp_path)
