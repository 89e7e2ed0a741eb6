"""Distributions: per-layer sparsity from a model-level target."""

import json
import math

import keras
import numpy as np
import pytest

import keras_sparse as ks
from keras_sparse import distributions

SHAPES = {
    "conv1": [(3, 3, 1, 16)],
    "conv2": [(3, 3, 16, 32)],
    "dense1": [(800, 128)],
    "dense2": [(128, 10)],
}


def ref_erk_densities(shapes, density, power_scale=1.0):
    """Water-filling ERK by bisection (independent of the library's loop)."""
    sizes = np.array([math.prod(s) for s in shapes], dtype=np.float64)
    raw = np.array([(sum(s) / math.prod(s)) ** power_scale for s in shapes])
    budget = density * sizes.sum()
    lo, hi = 0.0, 1.0
    while (np.minimum(1, hi * raw) * sizes).sum() < budget and hi < 1e300:
        hi *= 2
    for _ in range(400):
        mid = (lo + hi) / 2
        if (np.minimum(1, mid * raw) * sizes).sum() < budget:
            lo = mid
        else:
            hi = mid
    return np.minimum(1.0, hi * raw)


def ref_erk_layers(shapes, sparsity, power_scale=1.0):
    flat = [(name, s) for name, group in shapes.items() for s in group]
    dens = ref_erk_densities([s for _, s in flat], 1 - sparsity, power_scale)
    kept, total = {}, {}
    for (name, s), d in zip(flat, dens):
        kept[name] = kept.get(name, 0) + d * math.prod(s)
        total[name] = total.get(name, 0) + math.prod(s)
    return {name: 1 - kept[name] / total[name] for name in shapes}


def total_pruned(shapes, sparsities):
    return sum(sparsities[name] * sum(math.prod(s) for s in group) for name, group in shapes.items())


def total_size(shapes):
    return sum(math.prod(s) for group in shapes.values() for s in group)


# ---------------------------------------------------------------------------
# uniform and global


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9])
def test_uniform(sparsity):
    got = distributions.Uniform().layer_sparsities(SHAPES, sparsity)
    assert got == {name: sparsity for name in SHAPES}
    assert not distributions.Uniform.is_global


def test_uniform_docstring_example():
    assert distributions.Uniform().layer_sparsities({"d": [(4, 2)]}, 0.5) == {"d": 0.5}


def test_global():
    d = distributions.Global()
    assert d.is_global
    assert d.layer_sparsities(SHAPES, 0.8) == {name: 0.8 for name in SHAPES}


# ---------------------------------------------------------------------------
# ERK


@pytest.mark.parametrize("sparsity", [0.5, 0.8, 0.9, 0.99])
@pytest.mark.parametrize("power_scale", [1.0, 0.5])
def test_erk_matches_reference(sparsity, power_scale):
    got = distributions.ERK(power_scale).layer_sparsities(SHAPES, sparsity)
    want = ref_erk_layers(SHAPES, sparsity, power_scale)
    assert set(got) == set(SHAPES)
    for name in SHAPES:
        assert got[name] == pytest.approx(max(want[name], 0.0), abs=1e-9)
        assert 0.0 <= got[name] < 1.0
    assert total_pruned(SHAPES, got) == pytest.approx(sparsity * total_size(SHAPES), rel=1e-6)


def test_erk_small_layers_are_denser():
    got = distributions.ERK().layer_sparsities(SHAPES, 0.9)
    # The 144-weight first conv would exceed density 1 and is kept dense.
    assert got["conv1"] == 0.0
    assert got["conv2"] < got["dense1"]
    assert got["dense2"] < got["dense1"]


def test_erk_docstring_example():
    got = distributions.ERK().layer_sparsities({"a": [(64, 300)], "b": [(300, 10)]}, 0.9)
    want = ref_erk_layers({"a": [(64, 300)], "b": [(300, 10)]}, 0.9)
    assert got == pytest.approx(want, abs=1e-9)
    assert got["a"] > got["b"]


def test_erk_layer_with_several_weights_gets_size_weighted_mean():
    # A SeparableConv2D-like layer: depthwise and pointwise kernels.
    shapes = {"sep": [(3, 3, 32, 1), (1, 1, 32, 64)], "dense": [(1024, 10)]}
    got = distributions.ERK().layer_sparsities(shapes, 0.8)
    dens = ref_erk_densities([(3, 3, 32, 1), (1, 1, 32, 64), (1024, 10)], 0.2)
    sep_kept = dens[0] * 288 + dens[1] * 2048
    assert got["sep"] == pytest.approx(1 - sep_kept / (288 + 2048), abs=1e-9)
    assert got["dense"] == pytest.approx(1 - dens[2], abs=1e-9)
    assert total_pruned(shapes, got) == pytest.approx(0.8 * total_size(shapes), rel=1e-6)


def test_erk_power_scale_zero_is_uniform():
    got = distributions.ERK(0.0).layer_sparsities(SHAPES, 0.7)
    assert got == pytest.approx({name: 0.7 for name in SHAPES}, abs=1e-12)


def test_erk_zero_sparsity_keeps_everything():
    got = distributions.ERK().layer_sparsities(SHAPES, 0.0)
    assert got == pytest.approx({name: 0.0 for name in SHAPES}, abs=1e-9)


def test_erk_empty():
    assert distributions.ERK().layer_sparsities({}, 0.9) == {}


def test_erk_single_layer_gets_the_target():
    got = distributions.ERK().layer_sparsities({"d": [(100, 50)]}, 0.9)
    assert got["d"] == pytest.approx(0.9, abs=1e-12)


# ---------------------------------------------------------------------------
# PerLayer


def test_per_layer():
    d = distributions.PerLayer({"dense1": 0.9, "dense2": 0.5, "missing": 0.3})
    # Unlisted layers are left out (not pruned); names without a weight too.
    assert d.layer_sparsities(SHAPES, None) == {"dense1": 0.9, "dense2": 0.5}
    assert distributions.PerLayer().layer_sparsities(SHAPES, 0.5) == {}


@pytest.mark.parametrize("value", [1.0, -0.1, "x", float("nan")], ids=repr)
def test_per_layer_invalid_value_names_the_layer(value):
    with pytest.raises(ValueError, match=r"distribution\['dense1'\]"):
        distributions.PerLayer({"dense1": value})


def test_per_layer_copies_its_input():
    source = {"a": 0.5}
    d = distributions.PerLayer(source)
    source["a"] = 0.9
    assert d.sparsities == {"a": 0.5}


# ---------------------------------------------------------------------------
# lookup and config


@pytest.mark.parametrize(
    "identifier,cls",
    [
        ("uniform", distributions.Uniform),
        (None, distributions.Uniform),
        ("global", distributions.Global),
        ("erk", distributions.ERK),
        (" ERK ", distributions.ERK),
        ("per_layer", distributions.PerLayer),
        ("lamp", distributions.LAMP),
    ],
    ids=repr,
)
def test_get_alias(identifier, cls):
    assert type(ks.distributions.get(identifier)) is cls


def test_get_plain_dict_is_per_layer():
    d = ks.distributions.get({"dense1": 0.9, "conv2": 0.5})
    assert d == distributions.PerLayer({"dense1": 0.9, "conv2": 0.5})
    assert ks.distributions.get({}) == distributions.PerLayer({})


def test_get_plain_dict_with_bad_value():
    with pytest.raises(ValueError, match=r"distribution\['d'\]=1.5"):
        ks.distributions.get({"d": 1.5})


@pytest.mark.parametrize(
    "identifier,match",
    [("erdos", "distribution='erdos'"), (0.5, "distribution=0.5"), (ks.patterns.Channel(), "distribution=Channel")],
    ids=repr,
)
def test_get_invalid(identifier, match):
    with pytest.raises(ValueError, match=match):
        ks.distributions.get(identifier)


EXAMPLES = [
    distributions.Uniform(),
    distributions.Global(),
    distributions.ERK(),
    distributions.ERK(0.5),
    distributions.PerLayer({"a": 0.5, "b": 0.25}),
    distributions.LAMP(),
]


@pytest.mark.parametrize("dist", EXAMPLES, ids=repr)
def test_config_round_trip(dist):
    config = dist.get_config()
    json.dumps(config)
    assert type(dist).from_config(config) == dist
    serialized = keras.saving.serialize_keras_object(dist)
    restored = keras.saving.deserialize_keras_object(json.loads(json.dumps(serialized)))
    assert restored == dist
    # A serialized config (it has "class_name") is not mistaken for a
    # per-layer dict.
    assert ks.distributions.get(serialized) == dist
    assert ks.distributions.serialize(dist) == serialized


def test_erk_power_scale_is_stored_as_float():
    assert distributions.ERK(1).get_config() == {"power_scale": 1.0}


def test_base_distribution_is_abstract():
    with pytest.raises(NotImplementedError):
        distributions.Distribution().layer_sparsities(SHAPES, 0.5)


def _small_model():
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((6,)), keras.layers.Dense(5, name="d1"),
                             keras.layers.Dense(3, name="d2")])


def test_prune_passes_weights_only_to_distributions_that_ask():
    seen = {}

    class ShapesOnly(distributions.Distribution):
        # Written before `weights` existed: it must keep working.
        def layer_sparsities(self, shapes, sparsity):
            seen["shapes_only"] = dict(shapes)
            return {name: sparsity for name in shapes}

    class ByWeights(distributions.Distribution):
        needs_weights = True

        def layer_sparsities(self, shapes, sparsity, weights=None):
            seen["weights"] = weights
            return {name: 0.5 if np.abs(weights[name][0]).mean() > 0.3 else 0.1
                    for name in shapes}

    model = _small_model()
    ks.prune(model, 0.5, distribution=ShapesOnly())
    assert seen["shapes_only"] == {"d1": [(6, 5)], "d2": [(5, 3)]}
    pruned = ks.prune(model, 0.5, distribution=ByWeights())
    for name in ("d1", "d2"):
        np.testing.assert_array_equal(seen["weights"][name][0],
                                      keras.ops.convert_to_numpy(model.get_layer(name).kernel))
    assert {layer.name: layer.schedule.target_sparsity for layer in pruned.layers} == {
        name: (0.5 if np.abs(seen["weights"][name][0]).mean() > 0.3 else 0.1)
        for name in ("d1", "d2")}


def test_lamp_reads_the_masked_weights_of_sparse_layers():
    model = ks.prune(_small_model(), 0.0, schedule=ks.schedules.ConstantSparsity(0.0))
    layer = model.get_layer("d1")
    mask = np.ones((6, 5), bool)
    mask[:, :4] = False  # 24 of 30 removed: they score 0 and go first
    layer.write_mask("kernel", mask)
    again = ks.prune(model, 0.6, distribution="lamp")  # 27 of 45 weights
    assert again.get_layer("d1").schedule.target_sparsity >= 24 / 30
