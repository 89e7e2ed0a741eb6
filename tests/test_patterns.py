"""Sparsity patterns: lookup, weight checks, masks, effective sparsity."""

import json

import keras
import numpy as np
import pytest
from conftest import to_np

import keras_sparse as ks
from keras_sparse import patterns
from keras_sparse.patterns import Layout

DENSE = Layout(input_axes=(-2,), output_axes=(-1,))
CONV = Layout(input_axes=(-2,), output_axes=(-1,))
NO_INPUT = Layout(input_axes=(), output_axes=(-1,))
NO_OUTPUT = Layout(input_axes=(-2,), output_axes=())

# ---------------------------------------------------------------------------
# lookup


@pytest.mark.parametrize(
    "identifier,expected",
    [
        ("2:4", patterns.NByM(2, 4)),
        ("1:4", patterns.NByM(1, 4)),
        (" 4:8 ", patterns.NByM(4, 8)),
        ("n_by_m", patterns.NByM(2, 4)),
        ("channel", patterns.Channel()),
        ("neuron", patterns.Channel()),
        ("filter", patterns.Channel()),
        ("CHANNEL", patterns.Channel()),
        ("unstructured", patterns.Unstructured()),
        (None, patterns.Unstructured()),
    ],
    ids=repr,
)
def test_get(identifier, expected):
    got = ks.patterns.get(identifier)
    assert type(got) is type(expected)
    assert got == expected


def test_get_instance_is_returned_as_is():
    block = patterns.Block((4, 4))
    assert ks.patterns.get(block) is block


def test_get_block_needs_a_shape():
    with pytest.raises(ValueError, match=r"Block\(\(4, 4\)\)"):
        ks.patterns.get("block")
    with pytest.raises(ValueError, match="pattern="):
        ks.patterns.get(" Block ")


@pytest.mark.parametrize(
    "identifier,match",
    [
        ("diagonal", "pattern='diagonal'"),
        ("2:x", "pattern='2:x'"),
        (":4", "pattern=':4'"),
        ("4:2", r"pattern='4:2' \(n=4, m=2\)"),
        ("0:4", r"pattern='0:4' \(n=0, m=4\)"),
        (42, "pattern=42"),
        (ks.scorers.MagnitudeScorer(), "pattern=MagnitudeScorer"),
    ],
    ids=repr,
)
def test_get_invalid(identifier, match):
    with pytest.raises(ValueError, match=match):
        ks.patterns.get(identifier)


def test_get_unknown_lists_aliases():
    with pytest.raises(ValueError) as info:
        ks.patterns.get("nope")
    for alias in ["channel", "n_by_m", "unstructured"]:
        assert alias in str(info.value)


def test_get_dict_with_unknown_class():
    with pytest.raises(ValueError, match="pattern="):
        ks.patterns.get({"class_name": "NoSuchPattern", "config": {}})


# ---------------------------------------------------------------------------
# constructors


@pytest.mark.parametrize("n,m", [(4, 4), (5, 4), (0, 4), (2, 1)])
def test_nbym_invalid(n, m):
    with pytest.raises(ValueError, match=f"n={n}, m={m}"):
        patterns.NByM(n, m)


def test_nbym_accepts_numpy_integers():
    assert patterns.NByM(np.int64(2), np.int64(4)) == patterns.NByM(2, 4)


@pytest.mark.parametrize("block_shape", [(), (0, 2), (2, -1), (2.0, 2), (True, 2), ("2",)], ids=repr)
def test_block_invalid(block_shape):
    with pytest.raises(ValueError, match="block_shape="):
        patterns.Block(block_shape)


@pytest.mark.parametrize("block_shape", ["4x4", None, 2.5, (), (0, 2), [4, "4"]], ids=repr)
def test_block_invalid_reports_the_value_received(block_shape):
    # The message shows what was passed, not what it was turned into.
    with pytest.raises(ValueError) as info:
        patterns.Block(block_shape)
    assert f"block_shape={block_shape!r}" in str(info.value)


def test_block_int_shape_means_one_axis():
    assert patterns.Block(4) == patterns.Block((4,))
    with pytest.raises(ValueError, match="block_shape="):
        patterns.Block(0)


def test_block_accepts_list():
    assert patterns.Block([4, 1]) == patterns.Block((4, 1))
    assert patterns.Block([4, 1]).block_shape == (4, 1)


# ---------------------------------------------------------------------------
# check_weight


@pytest.mark.parametrize(
    "pattern,shape,layout",
    [
        (patterns.Unstructured(), (7, 3), DENSE),
        (patterns.Unstructured(), (5,), Layout((), ())),
        (patterns.NByM(2, 4), (8, 3), DENSE),
        (patterns.NByM(2, 4), (3, 3, 16, 5), CONV),
        (patterns.NByM(1, 2), (3, 10), Layout((-1,), (-2,))),
        (patterns.Channel(), (8, 3), DENSE),
        (patterns.Channel(), (10, 8), Layout((), (-1,))),
        (patterns.Block((4, 1)), (8, 3), DENSE),
        (patterns.Block((2, 2)), (3, 3, 4, 6), CONV),
    ],
    ids=repr,
)
def test_check_weight_accepts(pattern, shape, layout):
    pattern.check_weight(shape, layout)


@pytest.mark.parametrize(
    "pattern,shape,layout,match",
    [
        (patterns.NByM(2, 4), (6, 3), DENSE, "m=4 must divide the input dimension 6"),
        (patterns.NByM(2, 4), (3, 3, 6, 8), CONV, "input dimension 6"),
        (patterns.NByM(2, 4), (8, 8), NO_INPUT, "needs an input axis"),
        (patterns.Channel(), (8, 3), NO_OUTPUT, "needs an output axis"),
        (patterns.Block((4, 4)), (8, 6), DENSE, "does not divide"),
        (patterns.Block((2, 2, 2)), (4, 4), DENSE, "block_shape"),
    ],
    ids=repr,
)
def test_check_weight_rejects(pattern, shape, layout, match):
    with pytest.raises(ValueError, match=match):
        pattern.check_weight(shape, layout)


# ---------------------------------------------------------------------------
# masks through the pattern objects


def test_unstructured_mask(rng):
    scores = rng.normal(size=(8, 5)).astype("float32")
    mask = to_np(patterns.Unstructured().mask(scores, 0.4, DENSE))
    np.testing.assert_array_equal(mask, to_np(ks.ops.topk_mask(scores, 0.4)))
    assert (~mask).sum() == 16


def test_nbym_mask_uses_the_input_axis(rng):
    scores = rng.normal(size=(3, 3, 8, 4)).astype("float32")
    mask = to_np(patterns.NByM(2, 4).mask(scores, 0.5, CONV))
    groups = np.moveaxis(mask, -2, -1).reshape(-1, 4)
    np.testing.assert_array_equal(groups.sum(axis=1), 2)
    other = to_np(patterns.NByM(1, 2).mask(scores, 0.5, Layout((-1,), (-2,))))
    np.testing.assert_array_equal(other.reshape(-1, 2).sum(axis=1), 1)


def test_nbym_mask_ignores_the_sparsity_value(rng):
    scores = rng.normal(size=(8, 4)).astype("float32")
    low = to_np(patterns.NByM(2, 4).mask(scores, 0.1, DENSE))
    high = to_np(patterns.NByM(2, 4).mask(scores, 0.9, DENSE))
    np.testing.assert_array_equal(low, high)
    assert low.mean() == 0.5


def test_nbym_mask_at_zero_sparsity_keeps_everything(rng):
    mask = to_np(patterns.NByM(2, 4).mask(rng.normal(size=(8, 4)), 0.0, DENSE))
    assert mask.all()


def test_channel_mask_uses_output_axes(rng):
    scores = np.abs(rng.normal(size=(6, 10))).astype("float32")
    mask = to_np(patterns.Channel().mask(scores, 0.3, DENSE))
    assert (mask.all(axis=0) == mask.any(axis=0)).all()
    assert (~mask.any(axis=0)).sum() == 3
    rows = to_np(patterns.Channel().mask(scores, 0.5, Layout((-1,), (0,))))
    assert (rows.all(axis=1) == rows.any(axis=1)).all()
    assert (~rows.any(axis=1)).sum() == 3


def test_block_mask_through_pattern(rng):
    scores = rng.normal(size=(8, 6)).astype("float32")
    mask = to_np(patterns.Block((4, 1)).mask(scores, 0.5, DENSE))
    np.testing.assert_array_equal(mask, to_np(ks.ops.block_mask(scores, (4, 1), 0.5)))
    assert (~mask).sum() == 24


def test_base_pattern_is_abstract():
    with pytest.raises(NotImplementedError):
        patterns.Pattern().mask(np.ones(4), 0.5, DENSE)


# ---------------------------------------------------------------------------
# effective sparsity and global support


@pytest.mark.parametrize(
    "pattern,requested,expected",
    [
        (patterns.Unstructured(), 0.3, 0.3),
        (patterns.NByM(2, 4), 0.3, 0.5),
        (patterns.NByM(2, 4), 0.0, 0.0),
        (patterns.NByM(1, 4), 0.9, 0.75),
        (patterns.NByM(3, 4), 0.5, 0.25),
        (patterns.Channel(), 0.6, 0.6),
        (patterns.Block((2, 2)), 0.6, 0.6),
    ],
    ids=repr,
)
def test_effective_sparsity(pattern, requested, expected):
    assert pattern.effective_sparsity(requested) == pytest.approx(expected)


def test_effective_sparsity_matches_mask(rng):
    scores = rng.normal(size=(16, 8)).astype("float32")
    for pattern in [patterns.Unstructured(), patterns.NByM(1, 4), patterns.Channel()]:
        mask = pattern.mask(scores, 0.5, DENSE)
        assert ks.ops.mask_sparsity(mask) == pytest.approx(pattern.effective_sparsity(0.5))


@pytest.mark.parametrize(
    "pattern,fixed",
    [(patterns.Unstructured(), None), (patterns.NByM(2, 4), 0.5), (patterns.NByM(1, 8), 0.875),
     (patterns.Channel(), None), (patterns.Block((2, 2)), None), (patterns.FanIn(3), None)],
    ids=repr,
)
def test_fixed_sparsity(pattern, fixed):
    assert pattern.fixed_sparsity == (None if fixed is None else pytest.approx(fixed))
    if fixed is not None:
        assert pattern.effective_sparsity(0.1) == pattern.fixed_sparsity


CONV = Layout((0, 1, 2), (3,))


@pytest.mark.parametrize(
    "pattern,shape,layout,kept,expected",
    [
        # A bitmap (1 bit per entry) or 2-byte coordinates, whichever is smaller.
        (patterns.Unstructured(), (64, 32), DENSE, 100, 200),
        (patterns.Unstructured(), (64, 32), DENSE, 1000, 256),
        (patterns.Unstructured(), (4, 3), DENSE, 5, 2),
        (patterns.FanIn(3), (64, 32), DENSE, 96, 192),
        # ceil(log2 m) bits per kept entry.
        (patterns.NByM(2, 4), (64, 32), DENSE, 1024, 256),
        (patterns.NByM(1, 8), (64, 32), DENSE, 256, 96),
        # 1 bit per output unit / per block.
        (patterns.Channel(), (64, 32), DENSE, 640, 4),
        (patterns.Channel(), (3, 3, 16, 20), CONV, 100, 3),
        (patterns.Block((4, 4)), (64, 32), DENSE, 512, 16),
        (patterns.Block((2, 2)), (3, 3, 16, 20), CONV, 100, 90),
    ],
    ids=str,
)
def test_index_bytes(pattern, shape, layout, kept, expected):
    assert pattern.index_bytes(shape, kept, layout) == expected


def test_only_unstructured_supports_global():
    assert patterns.Unstructured.supports_global
    for cls in [patterns.NByM, patterns.Block, patterns.Channel]:
        assert not cls.supports_global


# ---------------------------------------------------------------------------
# config


EXAMPLES = [
    patterns.Unstructured(),
    patterns.NByM(1, 4),
    patterns.NByM(4, 8),
    patterns.Block((4, 1)),
    patterns.Block((1, 2, 2)),
    patterns.Channel(),
]


@pytest.mark.parametrize("pattern", EXAMPLES, ids=repr)
def test_config_round_trip(pattern):
    config = pattern.get_config()
    json.dumps(config)
    restored = type(pattern).from_config(config)
    assert restored == pattern
    serialized = keras.saving.serialize_keras_object(pattern)
    back = keras.saving.deserialize_keras_object(json.loads(json.dumps(serialized)))
    assert back == pattern
    assert ks.patterns.get(serialized) == pattern
    assert ks.patterns.serialize(pattern) == serialized


def test_block_round_trip_keeps_a_tuple():
    restored = patterns.Block.from_config(json.loads(json.dumps(patterns.Block((2, 4)).get_config())))
    assert restored.block_shape == (2, 4)


def test_repr():
    assert repr(patterns.NByM(2, 4)) == "NByM(n=2, m=4)"
    assert repr(patterns.Channel()) == "Channel()"
    assert repr(patterns.Unstructured()) == "Unstructured()"


def test_only_unstructured_is_unstructured_and_only_channel_removes_units():
    assert patterns.Unstructured.is_unstructured and not patterns.Unstructured.removes_units
    assert patterns.Channel.removes_units and not patterns.Channel.is_unstructured
    for cls in [patterns.NByM, patterns.Block, patterns.FanIn]:
        assert not cls.is_unstructured and not cls.removes_units
