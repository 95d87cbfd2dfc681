"""LayerSpec: one grammar for --edit-layer, --lve-layers and --attention-layers (numbers, mid, everyN, a-b and
comma lists of them), checked once with the config and resolved once per model; every value the three flags
accepted before means what it meant."""

import pytest

from knowloc.errors import KnowlocError
from knowloc.study.config import StudyConfig
from knowloc.study.layers import LayerSpec


def resolve(value, n_layers=30, flag="--edit-layer"):
    return LayerSpec.parse(value, flag).resolve(n_layers)


@pytest.mark.parametrize("value, items, layers", [
    ("mid", ("mid",), [15]),
    ("mid,15", ("mid", "15"), [15]),  # one layer named twice is edited once
    ("0,6,12", ("0", "6", "12"), [0, 6, 12]),
    ("every3", ("every3",), list(range(0, 30, 3))),
    ("2-5", ("2-5",), [2, 3, 4, 5]),
    ("20-40", ("20-40",), list(range(20, 30))),  # a range is cut at the model's last layer
    ("7,mid,2-3", ("7", "mid", "2-3"), [7, 15, 2, 3]),  # in the order named
    (["MID", " 05 ", "every10"], ("mid", "5", "every10"), [15, 5, 0, 10, 20]),  # canonical spelling
    ("5, 5,05", ("5",), [5]),
    ("every100", ("every100",), [0]),
])
def test_grammar_and_resolution(value, items, layers):
    spec = LayerSpec.parse(value, "--edit-layer")
    assert spec.items == items and spec.resolve(30) == layers
    assert LayerSpec.parse(spec.text, "--edit-layer") == spec


@pytest.mark.parametrize("value, message", [
    ("middle", r"--edit-layer must be layer numbers or 'mid', 'everyN', 'a-b' \(comma-separated\), got 'middle'"),
    ("-1", r"--edit-layer must be >= 0, got -1"),
    ("every0", r"--edit-layer: 'everyN' needs a step N >= 1, got 'every0'"),
    ("everyx", r"'everyN' needs a step N >= 1"),
    ("5-2", r"--edit-layer: a range a-b needs 0 <= a <= b, got '5-2'"),
    ("1-2-3", "must be layer numbers"),
    ("3-", "must be layer numbers"),
    ("", "--edit-layer needs at least one layer"),
    (" , ", "--edit-layer needs at least one layer"),
])
def test_bad_syntax_is_one_line_naming_the_flag(value, message):
    with pytest.raises(KnowlocError, match=message) as err:
        LayerSpec.parse(value, "--edit-layer")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("value, item", [("30", "30"), ("mid,31", "31"), ("30-40", "30-40")])
def test_a_layer_the_model_lacks_is_one_line_at_resolution(value, item):
    spec = LayerSpec.parse(value, "--lve-layers")  # syntax fine: the model is not known yet
    with pytest.raises(KnowlocError, match=rf"--lve-layers {item} out of range: the model has 30 layers \(0-29\)"):
        spec.resolve(30)


def test_every_old_edit_layer_value_keeps_its_meaning_and_spelling():
    """--edit-layer took layer numbers (as int() reads them) and 'mid', kept as str(int) / 'mid', in the order
    given, each once; resolved in that order."""
    config = StudyConfig(edit_layer=["mid", "0", "+3", "MID", "03", "15"])
    assert config.edit_layer == ["mid", "0", "3", "15"]
    assert config.layers("edit_layer").resolve(30) == [15, 0, 3]  # 15 named twice (mid and 15): edited once
    assert StudyConfig().edit_layer == ["mid"] and StudyConfig().layers("edit_layer").resolve(31) == [15]


def test_every_old_lve_layers_value_keeps_its_meaning():
    """--lve-layers took layer numbers and 'everyN', resolved ascending and each once."""
    config = StudyConfig(lve_layers="6,every3,1")
    assert config.lve.layers == ["6", "every3", "1"]
    from knowloc.study.experiments.lve import lve_layers

    assert lve_layers(config, 10) == [0, 1, 3, 6, 9]
    assert StudyConfig().lve.layers == ["every3"] and lve_layers(StudyConfig(), 7) == [0, 3, 6]


def test_every_old_attention_layers_value_keeps_its_meaning():
    """--attention-layers took 'a-b' (kept as given), the synapses of layers a..b of the model; unset: all."""
    from knowloc.study.experiments.attention import manipulated_layers

    config = StudyConfig(attention_layers="1-2")
    assert config.attention.layers == "1-2" and manipulated_layers(config, 30) == {1, 2}
    assert manipulated_layers(StudyConfig(attention_layers="10-20"), 12) == {10, 11}  # cut at the last layer
    assert manipulated_layers(StudyConfig(), 12) is None
    assert StudyConfig(attention_layers="mid,every10").attention.layers == "mid,every10"  # the whole grammar
    assert StudyConfig(attention_layers=["2", "4-5"]).attention.layers == "2,4-5"


@pytest.mark.parametrize("field, flag", [("edit_layer", "--edit-layer"), ("lve_layers", "--lve-layers"),
                                         ("attention_layers", "--attention-layers")])
def test_each_flag_takes_the_whole_grammar_and_names_itself(field, flag):
    config = StudyConfig(**{field: "mid,0-1,every8"})
    assert config.layers(field).resolve(16) == [8, 0, 1]
    with pytest.raises(KnowlocError, match=f"{flag} must be layer numbers"):
        StudyConfig(**{field: "x"})
