"""Attention knockout (Geva et al. 2023) and attribute extraction on tiny models of every family, eager and sdpa."""

import pytest
import torch

from knowloc.attention.knockout import (EDGE_SETS, default_window, extraction_hits, knocked_out, knockout_effects,
                                        source_positions, window_layers)
from knowloc.errors import KnowlocError
from knowloc.models.tiny import TINY

PROMPT, SUBJECT, ANSWER = "The capital of France is", "France", "Paris"
FAMILIES = sorted(TINY)


def _ids(lm, rows=1):
    return torch.tensor([list(lm.encode(PROMPT).prompt_ids)] * rows, device=lm.device)


def _implementations(lm):
    return ["eager", "sdpa"] if getattr(lm.model, "_supports_sdpa", False) else ["eager"]


@torch.no_grad()
@pytest.mark.parametrize("name", FAMILIES)
def test_blocking_nothing_changes_nothing(tiny_models, name):
    lm = tiny_models(name)
    for implementation in _implementations(lm):
        with lm.use_attention(implementation):
            clean = lm.model(input_ids=_ids(lm, 2)).logits
            with knocked_out(lm, [{}, {0: []}]):
                same = lm.model(input_ids=_ids(lm, 2)).logits
            assert torch.equal(clean, same), implementation
    hooks = [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in lm.model.modules()]
    assert all(h == (0, 0) for h in hooks)  # nothing left behind


@torch.no_grad()
@pytest.mark.parametrize("name", FAMILIES)
def test_blocking_every_other_edge_into_the_last_position_is_the_last_token_alone(tiny_models, name):
    """With every edge from another position into the last one blocked in every layer, the last position only
    attends to itself: its logits are those of the last token run alone (at its own position)."""
    lm = tiny_models(name)
    ids = _ids(lm)
    n = ids.shape[1]
    for implementation in _implementations(lm):
        with lm.use_attention(implementation):
            blocked = {layer: list(range(n - 1)) for layer in range(lm.n_layers)}
            with knocked_out(lm, [blocked]):
                knocked = lm.model(input_ids=ids).logits[0, -1]
            alone = lm.model(input_ids=ids[:, -1:], position_ids=torch.tensor([[n - 1]], device=lm.device)).logits
            torch.testing.assert_close(knocked, alone[0, -1], rtol=1e-4, atol=1e-4, msg=implementation)


@pytest.mark.parametrize("name", FAMILIES)
def test_batched_knockouts_equal_one_per_pass_and_eager_equals_sdpa(tiny_models, name):
    lm = tiny_models(name)
    batched = knockout_effects(lm, PROMPT, SUBJECT, ANSWER, window=2)
    single = knockout_effects(lm, PROMPT, SUBJECT, ANSWER, window=2, max_rows=1)
    assert batched.p_clean == single.p_clean and set(batched.drop) == set(EDGE_SETS)
    for edge_set in EDGE_SETS:
        assert len(batched.drop[edge_set]) == lm.n_layers
        assert batched.drop[edge_set] == pytest.approx(single.drop[edge_set], rel=1e-4, abs=1e-5)
        assert any(abs(d) > 1e-4 for d in batched.drop[edge_set])  # the knockout does something
    if "sdpa" in _implementations(lm):
        with lm.use_attention("sdpa"):
            fused = knockout_effects(lm, PROMPT, SUBJECT, ANSWER, window=2)
        for edge_set in EDGE_SETS:
            assert fused.drop[edge_set] == pytest.approx(batched.drop[edge_set], rel=1e-3, abs=1e-4)


@torch.no_grad()
def test_a_knockout_blocks_only_its_rows_layers_and_positions(tiny_models):
    """Row 1 blocks the subject at layer 1: row 0 (nothing) keeps the clean logits bit for bit, and blocking a
    position at a layer equals scaling its attention to 0 with the row renormalized (the -inf softmax)."""
    from knowloc.attention import scale_attention

    lm = tiny_models("tiny-llama")
    ids = _ids(lm, 2)
    with knocked_out(lm, [{}, {1: [1, 2]}]):
        both = lm.model(input_ids=ids).logits
    clean = lm.model(input_ids=ids[:1]).logits
    assert torch.equal(both[0], clean[0]) and not torch.allclose(both[1], clean[0])
    heads = lm.model.config.num_attention_heads
    with scale_attention(lm, [(1, h, p) for h in range(heads) for p in (1, 2)], 0.0, renormalize=True):
        scaled = lm.model(input_ids=ids[:1]).logits
    torch.testing.assert_close(both[1], scaled[0], rtol=1e-5, atol=1e-6)


def test_edge_sets_and_windows():
    assert source_positions(7, (2, 3), "subject") == [2, 3]
    assert source_positions(7, (2, 3), "non_subject") == [1, 4, 5]  # never the sink at position 0
    assert source_positions(7, (0, 1), "subject") == [0, 1] and source_positions(7, (0, 1), "non_subject") == [2, 3, 4, 5]
    assert source_positions(7, (2, 3), "last") == [6]
    assert source_positions(4, (1, 3), "subject") == [1, 2]  # the last token is never a subject source
    assert window_layers(5, 3, 30) == [4, 5, 6] and window_layers(0, 5, 30) == [0, 1, 2]
    assert window_layers(29, 4, 30) == [28, 29] and window_layers(3, 1, 30) == [3]
    assert default_window(30) == 6 and default_window(48) == 10 and default_window(3) == 1
    with pytest.raises(KnowlocError, match="unknown edge set"):
        source_positions(7, (2, 3), "object")


def test_bad_knockouts_are_refused_in_one_line(tiny_models):
    lm = tiny_models("tiny-llama")
    with pytest.raises(KnowlocError, match="out of range"):
        with knocked_out(lm, [{lm.n_layers: [1]}]):
            pass
    with pytest.raises(KnowlocError, match="a knockout of 2 rows ran on a batch of 1"):
        with knocked_out(lm, [{0: [1]}, {}]):
            lm.model(input_ids=_ids(lm))
    with pytest.raises(KnowlocError, match="integer >= 0"):
        with knocked_out(lm, [{0: [-1]}]):
            pass
    with pytest.raises(KnowlocError, match="does not occur"):
        knockout_effects(lm, PROMPT, "Germany", ANSWER)
    with pytest.raises(KnowlocError, match="window must be"):
        knockout_effects(lm, PROMPT, SUBJECT, ANSWER, window=0)
    with lm.use_attention("flex_attention"):
        with pytest.raises(KnowlocError, match="needs eager or sdpa"):
            with knocked_out(lm, [{0: [1]}]):
                pass


@torch.no_grad()
@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama", "tiny-gemma2"])
def test_extraction_reads_the_subject_state_and_the_attention_update_through_the_logit_lens(device, name):
    from knowloc.models import load_model

    lm = load_model(name, device=device)  # its own copy: output_hidden_states leaves transformers' recording hooks
    hits = extraction_hits(lm, PROMPT, SUBJECT, ANSWER)
    assert set(hits) == {"subject_hidden", "attention_update"} and all(len(v) == lm.n_layers for v in hits.values())
    # the same by hand, for the residual stream: HF's hidden states after each block but the last (normed there)
    enc = lm.encode(PROMPT, ANSWER)
    from knowloc.models.spans import subject_span
    last_sub = subject_span(lm, PROMPT, SUBJECT)[1]
    states = lm.model(input_ids=_ids(lm), output_hidden_states=True).hidden_states
    for layer in range(lm.n_layers - 1):
        top = int(lm.logits(states[layer + 1][:, last_sub:last_sub + 1]).float()[0, 0].argmax())
        assert hits["subject_hidden"][layer] == (top == enc.target_ids[0])
    # an answer that is the lens's top token at some layer is a hit there
    top_token = int(lm.logits(states[1][:, last_sub:last_sub + 1]).float()[0, 0].argmax())
    answer = lm.tokenizer.decode([top_token]).strip()
    if answer and lm.encode(PROMPT, answer).target_ids[0] == top_token:
        assert extraction_hits(lm, PROMPT, SUBJECT, answer)["subject_hidden"][0]


def test_bench_knockout_prints_seconds_per_query(capsys):
    from knowloc.cli import main

    assert main(["bench", "knockout", "--model", "tiny-llama", "--queries", "2", "--window", "2"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-2].startswith("knockout: ") and "s per query (median of 2" in out[-2]
    figures = dict(part.split("=") for part in out[-1].split())
    assert float(figures["median_s"]) > 0 and figures["queries"] == "2" and figures["model"] == "tiny-llama"
    assert main(["bench", "knockout", "--model", "tiny-llama", "--window", "0"]) == 2
