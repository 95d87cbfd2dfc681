import pytest
import torch

from knowloc.attention import (
    attention_rows,
    knowledge_synapses,
    n_heads,
    related_and_irrelevant,
    subject_token_positions,
)
from knowloc.data.types import Fact, make_query
from knowloc.errors import KnowlocError
from knowloc.models.tiny import TINY

PROMPT = "The capital of France is"


# --- attention_rows -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(TINY))
def test_attention_rows_match_output_attentions(name, device):
    from knowloc.models import load_model

    lm = load_model(name)  # on the suite's device; not the shared session model: output_attentions=True leaves transformers' capture hooks
    rows = attention_rows(lm, PROMPT)
    ids = lm.encode(PROMPT).prompt_ids
    assert rows.shape == (lm.n_layers, n_heads(lm), len(ids))
    assert rows.dtype == torch.float32 and rows.device.type == "cpu"
    torch.testing.assert_close(rows.sum(-1), torch.ones(rows.shape[:2]))  # rows come back on the CPU
    with torch.no_grad():
        out = lm.model(input_ids=torch.tensor([ids], device=device), output_attentions=True)
    expected = torch.stack([a[0, :, -1, :] for a in out.attentions]).float().cpu()
    assert torch.equal(rows, expected)


def test_attention_rows_needs_eager():
    from knowloc.models import load_model

    lm = load_model("tiny-llama", attn_implementation="sdpa")
    with pytest.raises(KnowlocError, match="eager"):
        attention_rows(lm, PROMPT)


# --- knowledge_synapses ---------------------------------------------------------------------------------------

def _rows() -> torch.Tensor:
    rows = torch.tensor([  # on the CPU, as attention_rows returns them
        [[0.50, 0.10, 0.20, 0.15, 0.05], [0.10, 0.10, 0.30, 0.30, 0.20]],
        [[0.90, 0.04, 0.03, 0.02, 0.01], [0.00, 0.40, 0.10, 0.25, 0.25]],
    ])
    return rows


def test_top_k_excludes_first_position_by_default():
    syn = knowledge_synapses(_rows(), k=2)
    assert syn == [(0, 0, 2), (0, 0, 3), (0, 1, 2), (0, 1, 3), (1, 0, 1), (1, 0, 2), (1, 1, 1), (1, 1, 3)]
    assert all(pos != 0 for _, _, pos in syn)


def test_top_k_includes_first_when_asked():
    syn = knowledge_synapses(_rows(), k=1, include_first=True)
    assert syn == [(0, 0, 0), (0, 1, 2), (1, 0, 0), (1, 1, 1)]


def test_top_k_ties_go_to_lower_position_and_k_caps_at_row_length():
    rows = torch.full((1, 1, 4), 0.25)  # on the CPU, as attention_rows returns them
    assert knowledge_synapses(rows, k=2) == [(0, 0, 1), (0, 0, 2)]
    assert knowledge_synapses(rows, k=10) == [(0, 0, 1), (0, 0, 2), (0, 0, 3)]
    assert knowledge_synapses(torch.ones(1, 1, 1), k=3) == []  # on the CPU, as attention_rows returns them


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_top_k_rejects_bad_k(bad):
    with pytest.raises(KnowlocError):
        knowledge_synapses(_rows(), k=bad)


def test_top_k_rejects_bad_rows():
    with pytest.raises(KnowlocError):
        knowledge_synapses(torch.ones(2, 3), k=1)  # on the CPU, as attention_rows returns them


def test_synapses_of_a_real_forward(tiny_models):
    lm = tiny_models("tiny-llama")
    rows = attention_rows(lm, PROMPT)
    syn = knowledge_synapses(rows, k=3)
    assert len(syn) == lm.n_layers * n_heads(lm) * 3
    for layer, head, pos in syn:
        others = [p for p in range(1, rows.shape[-1]) if (layer, head, p) not in syn]
        assert all(rows[layer, head, pos] >= rows[layer, head, p] for p in others)


# --- subject_token_positions ----------------------------------------------------------------------------------

CASES = [  # (template, subject): subject first, in the middle, last
    ("[X] is located in [Y].", "Egypt"),
    ("[X] is located in [Y].", "South America"),
    ("The capital of [X] is [Y].", "France"),
    ("The native language of [X] is [Y].", "Victor Hugo"),
    ("Tokyo is the capital city of [X] [Y].", "Japan"),
    ("The official language of [X] [Y]", "Spain"),
]


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-gemma"])  # without and with a BOS token
@pytest.mark.parametrize("template,subject", CASES)
def test_subject_positions_cover_exactly_the_subject(name, template, subject, tiny_models):
    lm = tiny_models(name)
    query = make_query(Fact("f", "P", subject, "obj"), template)
    positions = subject_token_positions(lm, query.text, query.subject_span)
    ids = lm.encode(query.text).prompt_ids
    assert positions == list(range(positions[0], positions[-1] + 1))  # contiguous
    assert lm.tokenizer.decode([ids[p] for p in positions]).strip() == subject
    if positions[0] > 0:
        assert subject not in lm.tokenizer.decode(list(ids[positions[0] - 1:positions[0]]))
    bos = lm.tokenizer.bos_token_id
    if ids[0] == bos:
        assert 0 not in positions
    if template.startswith("[X]"):
        assert positions[0] == (1 if ids[0] == bos else 0)
    if query.text.endswith(subject):
        assert positions[-1] == len(ids) - 1
    else:
        assert positions[-1] < len(ids) - 1


def test_subject_positions_reject_bad_spans(tiny_models):
    lm = tiny_models("tiny-gpt2")
    for span in [(5, 5), (-1, 3), (0, 99), (3,), "ab"]:
        with pytest.raises(KnowlocError):
            subject_token_positions(lm, PROMPT, span)


# --- related_and_irrelevant -----------------------------------------------------------------------------------

def _synapses():
    # 2 layers x 3 heads x positions 1..3 of a 7-token prompt; subject at positions 2 and 3
    return [(layer, head, pos) for layer in range(2) for head in range(3) for pos in (1, 2, 6)]


def test_related_are_the_synapses_at_subject_positions():
    related, _ = related_and_irrelevant(_synapses(), [2, 3], seed=0, n_positions=7)
    assert related == [(layer, head, 2) for layer in range(2) for head in range(3)]


def test_irrelevant_is_reproducible_matched_and_disjoint():
    related, irrelevant = related_and_irrelevant(_synapses(), [2, 3], seed=7, n_positions=7)
    again = related_and_irrelevant(_synapses(), [2, 3], seed=7, n_positions=7)
    assert again == (related, irrelevant)
    assert len(irrelevant) == len(related) == len(set(irrelevant))
    assert not set(irrelevant) & set(related)
    for layer in range(2):  # the same number per layer
        assert sum(e[0] == layer for e in irrelevant) == sum(e[0] == layer for e in related)
    assert all(pos not in (0, 2, 3) and pos < 7 for _, _, pos in irrelevant)
    assert all(head in range(3) for _, head, _ in irrelevant)
    draws = {tuple(related_and_irrelevant(_synapses(), [2, 3], seed=s, n_positions=7)[1]) for s in range(10)}
    assert len(draws) > 1  # the seed matters


def test_irrelevant_position_zero_only_when_asked():
    syn = [(0, 0, 1), (0, 1, 1)]
    for seed in range(20):
        _, irr = related_and_irrelevant(syn, [1], seed=seed, n_positions=3)
        assert all(pos == 2 for _, _, pos in irr)
    seen = set()
    for seed in range(20):
        _, irr = related_and_irrelevant(syn, [1], seed=seed, n_positions=3, include_first=True)
        seen |= {pos for _, _, pos in irr}
    assert seen == {0, 2}


def test_irrelevant_only_from_layers_with_related():
    syn = [(0, 0, 1), (1, 0, 4), (1, 1, 2)]
    related, irr = related_and_irrelevant(syn, [4], seed=0)  # n_positions inferred: 5
    assert related == [(1, 0, 4)]
    assert len(irr) == 1 and irr[0][0] == 1 and irr[0][2] in (1, 2, 3)


def test_irrelevant_errors():
    with pytest.raises(KnowlocError):
        related_and_irrelevant([(0, 0, 1)], [1], seed=0, n_positions=2)  # nothing left to draw from
    with pytest.raises(KnowlocError):
        related_and_irrelevant([(0, 0, 1)], [], seed=0)
    with pytest.raises(KnowlocError):
        related_and_irrelevant([(0, 0, 9)], [1], seed=0, n_positions=5)
    with pytest.raises(KnowlocError):
        related_and_irrelevant([(0, 0)], [1], seed=0)


def test_pipeline_on_a_query(tiny_models):
    lm = tiny_models("tiny-gemma")
    query = make_query(Fact("f", "P36", "France", "Paris"), "The capital of [X] is [Y].")
    rows = attention_rows(lm, query.text)
    subject = subject_token_positions(lm, query.text, query.subject_span)
    syn = knowledge_synapses(rows, k=3)
    related, irrelevant = related_and_irrelevant(syn, subject, seed=0, n_positions=rows.shape[-1])
    assert len(related) == len(irrelevant)
    assert all(pos in subject for _, _, pos in related)
    assert all(pos not in subject and pos != 0 for _, _, pos in irrelevant)


def test_a_layer_without_enough_non_subject_entries_has_no_matched_control():
    """A short prompt whose subject takes most positions: the control cannot be matched, a NotEnoughControls
    (a KnowlocError) says which layer; subject_related still names the related synapses."""
    from knowloc.attention import NotEnoughControls, subject_related

    syn = [(0, head, pos) for head in range(2) for pos in (1, 2)]  # subject at 1, 2; only position 3 is free
    with pytest.raises(NotEnoughControls, match="layer 0 has only 2 non-subject entries to draw 4"):
        related_and_irrelevant(syn, [1, 2], seed=0, n_positions=4)
    assert issubclass(NotEnoughControls, KnowlocError)
    assert subject_related(syn, [1, 2]) == syn and subject_related(syn, [2]) == [(0, 0, 2), (0, 1, 2)]


def test_the_attention_experiment_skips_a_query_without_a_matched_control(monkeypatch, device):
    """The study goes on: that query gives no paired rows (it once stopped a ParaRel study)."""
    from types import SimpleNamespace

    from knowloc.attention import NotEnoughControls
    from knowloc.study.experiments import attention as experiment

    def no_control(*args, **kwargs):
        raise NotEnoughControls("layer 21 has only 18 non-subject entries to draw 19 irrelevant ones from")

    rows = torch.zeros(1, 4, device=device)
    for name, value in (("related_and_irrelevant", no_control), ("attention_rows", lambda lm, p: rows),
                        ("knowledge_synapses", lambda rows, k: []), ("in_layer_range", lambda ctx, s, n: s),
                        ("subject_token_positions", lambda lm, p, span: [1]), ("subject_span", lambda f, q: (0, 1))):
        monkeypatch.setattr(experiment, name, value)
    lm = SimpleNamespace(encode=lambda p: SimpleNamespace(prompt_ids=[1, 2, 3]), device=device,
                         first_target_token=lambda o: 5, n_layers=2)
    ctx = SimpleNamespace(config=SimpleNamespace(attention=SimpleNamespace(k=3)), seed_for=lambda *a: 0)
    fact = SimpleNamespace(prompts=["Paris is in"], object="France", fact_id="f1")
    assert experiment.query_rows(ctx, "m", "ig", fact, 0, [(0, 1)], lm) == []
