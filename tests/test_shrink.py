"""ks.shrink: pruned units physically removed, outputs unchanged.

Every test compares the shrunk model with the masked model on random inputs
(max abs diff <= 1e-5 in float32) and checks the parameter count against a
closed form. Constants of removed units are made zero where a test needs an
exact closed form (no carrier channel), and non-zero where it exercises the
folding.
"""

import json

import keras
import numpy as np
import pytest
from conftest import to_np
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

import keras_sparse as ks
from keras_sparse.shrink import head_scores
from keras_sparse.utils import walk_layers

L = keras.layers
TOL = 1e-5
# Layers start from zero initializers and get numpy random weights from
# `set_biases` (on JAX every random initializer compiles an XLA program).
Z = {"kernel_initializer": "zeros"}


# ---------------------------------------------------------------- helpers
def set_biases(model, rng, sign=None, scale=0.3):
    """Random weights: kernels ~ N(0, 1/fan_in), biases (and BatchNorm
    statistics) uniform; ``sign`` forces biases negative (-1: removed ReLU
    units output exactly 0) or positive (+1)."""
    for layer in walk_layers(model):
        if isinstance(layer, keras.Model):
            continue
        for variable in layer.weights:
            name = variable.path.split("/")[-1]
            shape = tuple(variable.shape)
            if "kernel" in name and variable.dtype == "float32":
                fan_in = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
                if name == "depthwise_kernel" or (len(shape) == 4 and "depthwise" in variable.path):
                    fan_in = int(np.prod(shape[:-2]))
                if layer.__class__.__name__.endswith("MultiHeadAttention"):
                    fan_in = shape[0] if "output" not in variable.path else shape[0] * shape[1]
                values = rng.standard_normal(shape) / np.sqrt(max(fan_in, 1))
                variable.assign(values.astype("float32"))
            elif name == "bias" or name == "beta":
                value = rng.uniform(0.05, scale, shape) if sign else rng.uniform(-scale, scale, shape)
                variable.assign((value * (sign or 1)).astype("float32"))
            elif name == "gamma":
                variable.assign(rng.uniform(0.5, 1.5, shape).astype("float32"))
            elif name == "moving_variance":
                variable.assign(rng.uniform(0.5, 2.0, shape).astype("float32"))
            elif name == "moving_mean" and sign is None:
                variable.assign(rng.uniform(-0.2, 0.2, shape).astype("float32"))


def mask_units(model, plan):
    """``plan``: {layer name: removed unit indices}; the model is converted
    with the channel pattern and those units' kernels masked."""
    pruned = ks.prune(model, 0.0, pattern="channel", layers=list(plan))
    layers = {layer.name: layer for layer in walk_layers(pruned)}
    for name, removed in plan.items():
        layer = layers[name]
        for weight in layer.sparse_weight_names:
            if weight == "depthwise_kernel":
                continue  # SeparableConv: its units are the pointwise filters
            mask = np.ones(layer.get_mask(weight).shape, dtype=bool)
            mask[..., list(removed)] = False
            layer.set_mask(weight, mask)
    return pruned


def half(n):
    return list(range(0, n, 2))


def outputs(model, x):
    return to_np(model(x, training=False))


def assert_same_outputs(reference, shrunk, x, x_new=None):
    ref = outputs(reference, x)
    new = outputs(shrunk, x if x_new is None else x_new)
    assert ref.shape == new.shape
    np.testing.assert_allclose(new, ref, atol=TOL, rtol=0)


def assert_plain_keras(model, tmp_path, x):
    """No keras_sparse class in the config; reloads with plain Keras."""
    text = json.dumps(model.get_config(), default=str)
    assert "keras_sparse" not in text
    path = str(tmp_path / "shrunk.keras")
    model.save(path)
    reloaded = keras.saving.load_model(path)
    np.testing.assert_allclose(outputs(reloaded, x), outputs(model, x), atol=1e-6, rtol=0)
    return reloaded


def weights_of(model):
    return [np.array(to_np(w)) for w in model.weights]


# ------------------------------------------------------------------- MLP
def make_mlp(widths=(16, 32, 24, 5)):
    layers = [keras.Input((widths[0],))]
    for i, width in enumerate(widths[1:-1]):
        layers.append(L.Dense(width, activation="relu", **Z, name=f"d{i + 1}"))
    layers.append(L.Dense(widths[-1], **Z, name="out"))
    return keras.Sequential(layers, name="mlp")


def test_mlp_outputs_params_and_plain_reload(tmp_path, rng):
    keras.utils.set_random_seed(0)
    model = make_mlp()
    set_biases(model, rng)  # removed ReLU units output relu(b) != 0: folded
    pruned = mask_units(model, {"d1": half(32), "d2": half(24)})
    before = weights_of(pruned)
    x = rng.standard_normal((8, 16)).astype("float32")
    small, info = ks.shrink(pruned, return_info=True)
    assert [layer.units for layer in small.layers[1:]] == [16, 12, 5]
    assert small.count_params() == (16 * 16 + 16) + (16 * 12 + 12) + (12 * 5 + 5)
    assert info.params_after == small.count_params()
    assert info.params_before == model.count_params()
    assert_same_outputs(pruned, small, x)
    assert all(type(layer) is L.Dense for layer in small.layers[1:])
    assert_plain_keras(small, tmp_path, x)
    # the input model is never modified
    for old, new in zip(before, weights_of(pruned)):
        np.testing.assert_array_equal(old, new)
    assert type(pruned.get_layer("d1")).__name__ == "SparseDense"


@settings(max_examples=8)
@given(
    widths=st.lists(st.integers(2, 10), min_size=1, max_size=3),
    seed=st.integers(0, 10_000),
)
def test_mlp_property_random_unit_masks(widths, seed):
    rng = np.random.default_rng(seed)
    keras.utils.set_random_seed(seed % 1000)
    model = make_mlp((6,) + tuple(widths) + (3,))
    set_biases(model, rng)
    plan, kept = {}, []
    for i, width in enumerate(widths):
        removed = [u for u in range(width) if rng.random() < 0.5]
        if len(removed) == width:
            removed = removed[1:]
        plan[f"d{i + 1}"] = removed
        kept.append(width - len(removed))
    pruned = mask_units(model, plan)
    small = ks.shrink(pruned)
    x = rng.standard_normal((5, 6)).astype("float32")
    assert_same_outputs(pruned, small, x)
    sizes = [6] + kept + [3]
    expected = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))
    assert small.count_params() == expected


def test_fully_pruned_hidden_layer_keeps_one_constant_unit(rng):
    # The output of a fully pruned hidden layer is constant; the next layer
    # still needs an input tensor, so one (constant) unit stays.
    keras.utils.set_random_seed(1)
    model = make_mlp((8, 6, 5, 3))
    set_biases(model, rng)
    pruned = mask_units(model, {"d2": list(range(5))})
    small = ks.shrink(pruned)
    x = rng.standard_normal((4, 8)).astype("float32")
    assert_same_outputs(pruned, small, x)
    assert small.get_layer("d2").units == 1
    assert np.all(to_np(small.get_layer("d2").kernel) == 0)


# ------------------------------------------------------------------- CNN
def make_cnn():
    inputs = keras.Input((8, 8, 3))
    h = L.Conv2D(16, 3, padding="same", use_bias=False, **Z, name="c1")(inputs)
    h = L.BatchNormalization(name="bn1")(h)
    h = L.ReLU(name="relu1")(h)
    h = L.Conv2D(12, 3, padding="same", activation="relu", **Z, name="c2")(h)
    h = L.MaxPooling2D(name="pool")(h)
    h = L.Conv2D(10, 3, padding="valid", activation="relu", **Z, name="c3")(h)
    h = L.Flatten(name="flatten")(h)
    h = L.Dropout(0.3, name="drop")(h)
    h = L.Dense(20, activation="relu", **Z, name="d1")(h)
    return keras.Model(inputs, L.Dense(4, **Z, name="out")(h), name="cnn")


CNN_PLAN = {"c1": half(16), "c2": half(12), "c3": half(10), "d1": half(20)}


def test_cnn_batchnorm_flatten_closed_form(tmp_path, rng):
    keras.utils.set_random_seed(2)
    model = make_cnn()
    set_biases(model, rng, sign=-1)  # removed units are exactly 0: no carrier
    pruned = mask_units(model, CNN_PLAN)
    x = rng.standard_normal((4, 8, 8, 3)).astype("float32")
    small, info = ks.shrink(pruned, return_info=True)
    assert_same_outputs(pruned, small, x)
    assert info.carriers == 0 and not info.blocked
    assert small.get_layer("c1").filters == 8
    assert small.get_layer("c2").filters == 6
    assert small.get_layer("c3").filters == 5
    # flatten: 2x2 positions x 5 kept channels
    assert small.get_layer("d1").kernel.shape == (20, 10)
    expected = (9 * 3 * 8) + 4 * 8 + (9 * 8 * 6 + 6) + (9 * 6 * 5 + 5) + (20 * 10 + 10) + (10 * 4 + 4)
    assert small.count_params() == expected
    assert_plain_keras(small, tmp_path, x)


def test_cnn_nonzero_constants_keep_one_carrier(rng):
    keras.utils.set_random_seed(3)
    model = make_cnn()
    set_biases(model, rng, sign=+1)  # every removed unit outputs a positive constant
    pruned = mask_units(model, CNN_PLAN)
    x = rng.standard_normal((4, 8, 8, 3)).astype("float32")
    small, info = ks.shrink(pruned, return_info=True)
    assert_same_outputs(pruned, small, x)
    # c1's removed channels reach the same-padded c2 as constants != 0: one
    # carrier; c2's reach the valid c3 through pooling: folded into its bias.
    assert info.carriers == 1
    assert small.get_layer("c1").filters == 9
    assert small.get_layer("c2").filters == 6
    assert small.get_layer("c3").filters == 5
    assert small.get_layer("d1").units == 10


# -------------------------------------------------------------- residual
def make_residual(projection=False, second_block=True):
    inputs = keras.Input((6, 6, 4))
    stem = L.Conv2D(8, 3, padding="same", activation="relu", **Z, name="stem")(inputs)
    b = L.Conv2D(8, 3, padding="same", **Z, name="b1")(stem)
    b = L.BatchNormalization(name="bn_b1")(b)
    b = L.ReLU(name="relu_b1")(b)
    b = L.Conv2D(8, 3, padding="same", **Z, name="b2")(b)
    b = L.BatchNormalization(name="bn_b2")(b)
    x = L.Add(name="add1")([stem, b])
    x = L.ReLU(name="relu1")(x)
    if not second_block:
        return keras.Model(inputs, L.Dense(3, **Z, name="out")(L.GlobalAveragePooling2D(name="gap")(x)))
    if projection:
        shortcut = L.Conv2D(8, 1, **Z, name="proj")(x)
        shortcut = L.BatchNormalization(name="bn_proj")(shortcut)
    else:
        shortcut = x
    e = L.Conv2D(8, 3, padding="same", **Z, name="e1")(x)
    e = L.BatchNormalization(name="bn_e1")(e)
    y = L.Add(name="add2")([shortcut, e])
    y = L.ReLU(name="relu2")(y)
    y = L.GlobalAveragePooling2D(name="gap")(y)
    return keras.Model(inputs, L.Dense(3, **Z, name="out")(y), name="residual")


def test_residual_add_keeps_union_of_channels(rng):
    keras.utils.set_random_seed(4)
    model = make_residual(second_block=False)
    set_biases(model, rng)
    stem = model.get_layer("stem")
    stem.bias.assign(-np.abs(to_np(stem.bias)) - 0.05)  # removed stem units output 0
    pruned = mask_units(model, {"stem": [0, 1, 2, 3], "b2": [2, 3, 4, 5]})
    x = rng.standard_normal((3, 6, 6, 4)).astype("float32")
    small, info = ks.shrink(pruned, return_info=True)
    assert_same_outputs(pruned, small, x)
    # add1 channel c is needed when either input is live there: union
    # {4..7} | {0, 1, 6, 7}; channels 2, 3 are constant in both: removed.
    assert small.get_layer("stem").filters == 6
    assert small.get_layer("b2").filters == 6
    assert small.get_layer("bn_b2").moving_mean.shape == (6,)
    assert small.get_layer("b1").kernel.shape == (3, 3, 6, 8)
    assert small.get_layer("out").kernel.shape == (6, 3)
    assert info.blocked == {"stem": 2, "b2": 2}


def test_identity_path_shares_channels_across_blocks(rng):
    # With a second residual block, add1's constant channels are read by the
    # next block's live branch through the identity path: they stay.
    keras.utils.set_random_seed(4)
    model = make_residual()
    set_biases(model, rng)
    pruned = mask_units(model, {"stem": [0, 1, 2, 3], "b2": [2, 3, 4, 5]})
    small = ks.shrink(pruned)
    assert_same_outputs(pruned, small, rng.standard_normal((3, 6, 6, 4)).astype("float32"))
    assert small.get_layer("stem").filters == 8


@pytest.mark.parametrize("projection", [False, True])
def test_pruned_residual_branch_becomes_identity(projection, rng):
    keras.utils.set_random_seed(5)
    model = make_residual(projection)
    set_biases(model, rng)
    pruned = mask_units(model, {"e1": list(range(8))})
    x = rng.standard_normal((3, 6, 6, 4)).astype("float32")
    small, info = ks.shrink(pruned, return_info=True)
    assert_same_outputs(pruned, small, x)
    names = [layer.name for layer in small.layers]
    assert "e1" not in names and "bn_e1" not in names and "add2" not in names
    status = {row["name"]: row["status"] for row in info.layers}
    assert status["e1"] == "removed" and status["add2"] == "removed (identity)"
    if projection:
        # the branch's constant went into the projection's BatchNorm beta
        assert info.offset_layers == []
    else:
        # a ReLU output cannot take a bias: a Rescaling adds the constant back
        assert len(info.offset_layers) == 1
        assert isinstance(small.get_layer(info.offset_layers[0]), L.Rescaling)
    assert small.count_params() == model.count_params() - (9 * 8 * 8 + 8) - 4 * 8


def test_pruned_branch_with_zero_output_is_plain_identity(rng):
    keras.utils.set_random_seed(6)
    inputs = keras.Input((10,))
    h = L.Dense(10, activation="relu", **Z, name="h")(inputs)
    branch = L.Dense(10, activation="relu", **Z, name="branch")(h)
    branch = L.Dense(10, use_bias=False, **Z, name="branch_out")(branch)
    y = L.Add(name="add")([h, branch])
    model = keras.Model(inputs, L.Dense(2, **Z, name="out")(y))
    set_biases(model, rng)
    pruned = mask_units(model, {"branch_out": list(range(10))})
    small, info = ks.shrink(pruned, return_info=True)
    x = rng.standard_normal((4, 10)).astype("float32")
    assert_same_outputs(pruned, small, x)
    assert [layer.name for layer in small.layers[1:]] == ["h", "out"]
    assert info.offset_layers == []


# ----------------------------------------------------------- concatenate
def test_concatenate_inception_offsets(rng):
    keras.utils.set_random_seed(7)
    inputs = keras.Input((8, 8, 4))
    a = L.Conv2D(6, 1, activation="relu", **Z, name="a")(inputs)
    b = L.Conv2D(6, 3, padding="same", activation="relu", **Z, name="b")(inputs)
    c = L.MaxPooling2D(3, strides=1, padding="same", name="pool")(inputs)
    c = L.Conv2D(4, 1, activation="relu", **Z, name="c")(c)
    merged = L.Concatenate(name="cat")([a, b, c])
    h = L.Conv2D(8, 3, padding="same", activation="relu", **Z, name="after")(merged)
    model = keras.Model(inputs, L.Dense(2, **Z, name="out")(L.GlobalMaxPooling2D(name="gmp")(h)))
    set_biases(model, rng, sign=-1)
    pruned = mask_units(model, {"a": [0, 1, 2], "b": [1, 3, 5], "c": [0, 3], "after": half(8)})
    x = rng.standard_normal((3, 8, 8, 4)).astype("float32")
    small = ks.shrink(pruned)
    assert_same_outputs(pruned, small, x)
    after = small.get_layer("after")
    assert after.kernel.shape == (3, 3, 3 + 3 + 2, 4)
    # the kept rows of `after` are the kept channels at their concat offsets
    kept_rows = [3, 4, 5] + [6 + 0, 6 + 2, 6 + 4] + [12 + 1, 12 + 2]
    original = to_np(pruned.get_layer("after").kernel)
    np.testing.assert_array_equal(to_np(after.kernel), original[:, :, kept_rows][..., [1, 3, 5, 7]])
    expected = (4 * 3 + 3) + (9 * 4 * 3 + 3) + (4 * 2 + 2) + (9 * 8 * 4 + 4) + (4 * 2 + 2)
    assert small.count_params() == expected


# -------------------------------------------------------------- mobilenet
def test_mobilenet_depthwise_and_separable(rng):
    keras.utils.set_random_seed(8)
    inputs = keras.Input((8, 8, 3))
    h = L.Conv2D(8, 3, padding="same", activation="relu", **Z, name="stem")(inputs)
    h = L.DepthwiseConv2D(3, padding="same", use_bias=False, depthwise_initializer="zeros", name="dw")(h)
    h = L.BatchNormalization(name="bn_dw")(h)
    h = L.ReLU(6.0, name="relu_dw")(h)
    h = L.Conv2D(12, 1, use_bias=False, **Z, name="pw")(h)
    h = L.BatchNormalization(name="bn_pw")(h)
    h = L.ReLU(6.0, name="relu_pw")(h)
    h = L.SeparableConv2D(10, 3, padding="same", activation="relu", depthwise_initializer="zeros",
                           pointwise_initializer="zeros", name="sep")(h)
    h = L.GlobalAveragePooling2D(name="gap")(h)
    model = keras.Model(inputs, L.Dense(3, **Z, name="out")(h))
    set_biases(model, rng, sign=-1)
    pruned = mask_units(model, {"stem": half(8), "pw": half(12), "sep": half(10)})
    x = rng.standard_normal((3, 8, 8, 3)).astype("float32")
    small, info = ks.shrink(pruned, return_info=True)
    assert_same_outputs(pruned, small, x)
    assert not info.blocked and info.carriers == 0
    assert small.get_layer("dw").kernel.shape == (3, 3, 4, 1)
    assert small.get_layer("sep").depthwise_kernel.shape == (3, 3, 6, 1)
    assert small.get_layer("sep").pointwise_kernel.shape == (1, 1, 6, 5)
    expected = (27 * 4 + 4) + 9 * 4 + 4 * 4 + 4 * 6 + 4 * 6 + (9 * 6 + 6 * 5 + 5) + (5 * 3 + 3)
    assert small.count_params() == expected


# ------------------------------------------------------------ transformer
def make_transformer(dim=16, heads=4, key_dim=8):
    inputs = keras.Input((6, dim))
    att = L.MultiHeadAttention(heads, key_dim, **Z, name="mha")(inputs, inputs)
    h = L.LayerNormalization(name="ln1")(L.Add(name="add1")([inputs, att]))
    f = L.Dense(32, activation="gelu", **Z, name="ff1")(h)
    f = L.Dense(dim, **Z, name="ff2")(f)
    h = L.LayerNormalization(name="ln2")(L.Add(name="add2")([h, f]))
    h = L.GlobalAveragePooling1D(name="gap")(h)
    return keras.Model(inputs, L.Dense(3, **Z, name="out")(h), name="transformer")


def test_transformer_pruned_heads(tmp_path, rng):
    keras.utils.set_random_seed(9)
    model = make_transformer()
    set_biases(model, rng, scale=0.1)
    pruned = ks.prune_heads(model, heads={"mha": [1, 3]})
    pruned = mask_units(pruned, {"ff1": half(32)})
    x = rng.standard_normal((3, 6, 16)).astype("float32")
    small, info = ks.shrink(pruned, return_info=True)
    assert_same_outputs(pruned, small, x)
    mha = small.get_layer("mha")
    assert type(mha) is L.MultiHeadAttention and mha.num_heads == 2
    dim, key_dim = 16, 8
    per_head = 3 * (dim * key_dim + key_dim) + key_dim * dim
    expected = (2 * per_head + dim) + 2 * 2 * dim + (dim * 16 + 16) + (16 * dim + dim) + (dim * 3 + 3)
    assert small.count_params() == expected
    assert {row["name"]: row["units_after"] for row in info.layers}["mha"] == 2
    assert_plain_keras(small, tmp_path, x)


def test_all_heads_pruned_removes_attention(rng):
    keras.utils.set_random_seed(10)
    model = make_transformer()
    set_biases(model, rng, scale=0.1)
    pruned = ks.prune_heads(model, heads={"mha": [0, 1, 2, 3]})
    x = rng.standard_normal((3, 6, 16)).astype("float32")
    small = ks.shrink(pruned)
    assert_same_outputs(pruned, small, x)
    assert "mha" not in [layer.name for layer in small.layers]


def test_prune_heads_by_score_and_head_mask_zeroes_contribution(rng):
    keras.utils.set_random_seed(11)
    model = make_transformer()
    set_biases(model, rng, scale=0.1)
    pruned = ks.prune_heads(model, 0.5, scorer="l2_norm")
    mha = pruned.get_layer("mha")
    scores = head_scores(model.get_layer("mha"), "l2_norm")
    assert sorted(mha.kept_heads) == sorted(np.argsort(scores)[2:].tolist())
    # a masked head contributes exactly nothing: zeroing its output projection
    # in the plain model gives the same outputs
    plain = keras.models.clone_model(model)
    plain.set_weights(model.get_weights())
    kernel = to_np(plain.get_layer("mha")._output_dense.kernel).copy()
    kernel[[h for h in range(4) if h not in mha.kept_heads]] = 0.0
    plain.get_layer("mha")._output_dense.kernel.assign(kernel)
    x = rng.standard_normal((2, 6, 16)).astype("float32")
    np.testing.assert_allclose(outputs(pruned, x), outputs(plain, x), atol=1e-6)


def test_prune_heads_by_sparsity_keeps_one_head_and_removes_nan_heads_first(rng):
    keras.utils.set_random_seed(13)
    model = make_transformer()
    set_biases(model, rng, scale=0.1)
    # round(0.99 * 4) = 4 heads: the layer keeps its best one.
    pruned = ks.prune_heads(model, 0.99)
    scores = head_scores(model.get_layer("mha"), "l1_norm")
    assert pruned.get_layer("mha").kept_heads == [int(np.argmax(scores))]
    # A head whose weights hold NaN scores NaN and goes before finite ones.
    mha = model.get_layer("mha")
    kernel = to_np(mha._query_dense.kernel).copy()
    best = int(np.argmax(scores))
    kernel[:, best, 0] = np.nan
    mha._query_dense.kernel.assign(kernel)
    pruned = ks.prune_heads(model, 0.25)
    assert best not in pruned.get_layer("mha").kept_heads
    assert len(pruned.get_layer("mha").kept_heads) == 3


# ------------------------------------------------------- model structure
def test_nested_submodel_is_inlined(rng):
    keras.utils.set_random_seed(12)
    inner = keras.Sequential(
        [keras.Input((12,)), L.Dense(10, activation="relu", **Z, name="i1"), L.Dense(6, **Z, name="i2")],
        name="inner",
    )
    inputs = keras.Input((8,))
    h = L.Dense(12, activation="tanh", **Z, name="o1")(inputs)
    model = keras.Model(inputs, L.Dense(2, **Z, name="o2")(inner(h)))
    set_biases(model, rng)
    set_biases(inner, rng)
    pruned = mask_units(model, {"o1": [0, 5], "i1": half(10)})
    small = ks.shrink(pruned)
    x = rng.standard_normal((4, 8)).astype("float32")
    assert_same_outputs(pruned, small, x)
    assert small.get_layer("o1").units == 10 and small.get_layer("i1").units == 5


@keras.saving.register_keras_serializable(package="test_shrink")
class Wrapped(keras.Model):
    def __init__(self, units=8, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.body = keras.Sequential(
            [keras.Input((6,)), L.Dense(units, activation="relu", **Z, name="h1"), L.Dense(4, **Z, name="h2")],
            name="body",
        )
        self.head = L.Dense(2, **Z, name="head")

    def call(self, x):
        return self.head(self.body(x))

    def get_config(self):
        return {**super().get_config(), "units": self.units}


def test_subclassed_model_shrinks_submodels(rng):
    keras.utils.set_random_seed(13)
    model = Wrapped()
    x = rng.standard_normal((4, 6)).astype("float32")
    model(x)
    set_biases(model, rng)
    ks.prune(model, 0.5, pattern="channel", layers=["h1", "head"])  # in place
    for layer in (model.body.get_layer("h1"), model.head):
        layer.prune_to(0.5)
    reference = outputs(model, x)
    small, info = ks.shrink(model, return_info=True)
    np.testing.assert_allclose(outputs(small, x), reference, atol=TOL)
    assert small.body.get_layer("h1").units == 4
    assert model.body.get_layer("h1").kernel.shape == (6, 8)  # original untouched
    assert info.not_shrunk == ["head"]
    assert type(small.head) is L.Dense  # the rest is stripped


def test_subclassed_model_that_cannot_be_copied_raises(rng):
    class Bare(keras.Model):
        def __init__(self):
            super().__init__()
            self.body = keras.Sequential([keras.Input((3,)), L.Dense(2)])

        def call(self, x):
            return self.body(x)

    model = Bare()
    model(np.zeros((1, 3), "float32"))
    with pytest.raises(ValueError, match="cannot copy"):
        ks.shrink(model)


def test_layer_the_graph_cannot_follow(rng):
    keras.utils.set_random_seed(14)
    inputs = keras.Input((8,))
    h = L.Dense(6, activation="relu", **Z, name="h")(inputs)
    h = L.LayerNormalization(name="ln")(h)  # mixes channels: kept whole
    model = keras.Model(inputs, L.Dense(2, **Z, name="out")(h))
    set_biases(model, rng)
    pruned = mask_units(model, {"h": [0, 1, 2]})
    small, info = ks.shrink(pruned, return_info=True)
    assert_same_outputs(pruned, small, rng.standard_normal((3, 8)).astype("float32"))
    assert info.blocked == {"h": 3}
    assert {row["name"]: row["status"] for row in info.layers}["ln"] == "kept whole"
    with pytest.raises(ValueError, match="strict=True"):
        ks.shrink(pruned, strict=True)


def test_bad_arguments():
    unbuilt = keras.Sequential([L.Dense(3)])
    with pytest.raises(ValueError, match="built"):
        ks.shrink(unbuilt)
    with pytest.raises(ValueError, match="Keras model"):
        ks.shrink(L.Dense(3))
    model = make_mlp((4, 3, 2))
    with pytest.raises(ValueError, match="drop_inputs"):
        ks.shrink(model, drop_inputs="yes")


def test_unpruned_model_is_unchanged(rng):
    model = make_mlp((5, 7, 2))
    set_biases(model, rng)
    small, info = ks.shrink(model, return_info=True)
    assert small.count_params() == model.count_params()
    assert small is not model
    assert {row["status"] for row in info.layers} == {"unchanged"}


# ------------------------------------------------- structured scorers
def test_norm_scorers_rank_units_like_numpy(rng):
    w = rng.standard_normal((5, 3, 8)).astype("float32")
    for alias, power in (("l1_norm", 1), ("l2_norm", 2)):
        scorer = ks.scorers.get(alias)
        np.testing.assert_allclose(to_np(scorer.score(w)), np.abs(w) ** power, rtol=1e-6)
        mask = to_np(ks.patterns.Channel().mask(scorer.score(w), 0.5, ks.patterns.Layout((-2,), (-1,))))
        unit = np.sum(np.abs(w) ** power, axis=(0, 1))
        kept = np.sort(np.argsort(-unit, kind="stable")[:4])
        np.testing.assert_array_equal(np.nonzero(mask[0, 0])[0], kept)
        assert keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(scorer)) == scorer


def make_conv_bn():
    inputs = keras.Input((6, 6, 2))
    h = L.Conv2D(8, 3, padding="same", use_bias=False, **Z, name="conv")(inputs)
    h = L.BatchNormalization(name="bn")(h)
    h = L.ReLU(name="relu")(h)
    h = L.GlobalAveragePooling2D(name="gap")(h)
    return keras.Model(inputs, L.Dense(3, **Z, name="out")(h))


def test_prune_channels_bn_gamma_keeps_largest_gammas(rng):
    model = make_conv_bn()
    set_biases(model, rng)
    gamma = np.array([0.9, -0.1, 0.5, 0.05, -1.2, 0.3, 0.01, 0.7], "float32")
    model.get_layer("bn").gamma.assign(gamma)
    pruned = ks.prune_channels(model, 0.5, scorer="bn_gamma", layers=["conv"])
    layer = pruned.get_layer("conv")
    kept = np.nonzero(np.any(to_np(layer.get_mask("kernel")), axis=(0, 1, 2)))[0]
    np.testing.assert_array_equal(kept, [0, 2, 4, 7])
    assert layer.schedule is None  # fixed masks: plain fit keeps them
    assert layer.scorer.batchnorm == "bn"
    small = ks.shrink(pruned)
    assert small.get_layer("conv").filters == 4 and small.get_layer("bn").gamma.shape == (4,)
    x = rng.standard_normal((3, 6, 6, 2)).astype("float32")
    assert_same_outputs(pruned, small, x)


def test_bn_gamma_needs_a_batchnorm():
    with pytest.raises(ValueError, match="not bound"):
        ks.scorers.get("bn_gamma").score(np.ones((3, 2), "float32"))
    model = make_mlp((4, 6, 2))
    with pytest.raises(ValueError, match="BatchNormalization"):
        ks.prune_channels(model, 0.5, scorer="bn_gamma", layers=["d1"])


def test_prune_channels_taylor_matches_numpy_gradient(rng):
    model = keras.Sequential([keras.Input((5,)), L.Dense(6, **Z, name="d")])
    kernel = rng.standard_normal((5, 6)).astype("float32")
    bias = rng.standard_normal(6).astype("float32")
    model.get_layer("d").set_weights([kernel, bias])
    x = rng.standard_normal((16, 5)).astype("float32")
    t = rng.standard_normal((16, 6)).astype("float32")
    pruned = ks.prune_channels(model, 0.5, scorer="taylor_channel", data=(x, t), loss="mse")
    y = x.astype("float64") @ kernel + bias
    gradient = 2.0 / (16 * 6) * x.astype("float64").T @ (y - t)
    unit = np.sum(np.abs(gradient * kernel), axis=0)
    expected = np.sort(np.argsort(-unit)[:3])
    kept = np.nonzero(np.any(to_np(pruned.get_layer("d").get_mask("kernel")), axis=0))[0]
    np.testing.assert_array_equal(kept, expected)
    with pytest.raises(ValueError, match="data"):
        ks.prune_channels(model, 0.5, scorer="taylor_channel")
    with pytest.raises(ValueError, match="gradient"):
        ks.scorers.get("taylor_channel").score(np.ones((2, 2), "float32"))


class _LargestEntryUnits(ks.patterns.Pattern):
    """A user-defined structured pattern: units ranked by their largest
    entry score (``Channel`` ranks by the sum)."""

    removes_units = True

    def mask(self, scores, sparsity, layout):
        scores = to_np(scores)
        axes = {a % scores.ndim for a in layout.output_axes}
        unit = scores.max(axis=tuple(a for a in range(scores.ndim) if a not in axes), keepdims=True)
        keep = max(1, round((1.0 - sparsity) * unit.size))
        threshold = np.sort(unit.ravel())[::-1][keep - 1]
        return np.broadcast_to(unit >= threshold, scores.shape)


def test_prune_channels_with_a_user_defined_unit_pattern(rng):
    model = keras.Sequential([keras.Input((6,)), L.Dense(8, activation="relu", **Z, name="h"),
                              L.Dense(3, **Z, name="out")])
    set_biases(model, rng)
    # Units 0-3: one large entry (largest max, smallest L1 norm); units 4-7:
    # many medium entries. Channel + l1_norm would keep 4-7.
    kernel = np.full((6, 8), 0.01, "float32") + rng.uniform(0, 1e-3, (6, 8)).astype("float32")
    kernel[0, :4] = [3.0, 3.1, 3.2, 3.3]
    kernel[:, 4:] += 1.0
    model.get_layer("h").kernel.assign(kernel)
    pruned = ks.prune_channels(model, 0.5, scorer="l1_norm", pattern=_LargestEntryUnits(),
                               layers=["h"])
    layer = pruned.get_layer("h")
    assert type(layer.pattern) is _LargestEntryUnits and layer.schedule is None
    kept = np.nonzero(np.any(to_np(layer.get_mask("kernel")), axis=0))[0]
    np.testing.assert_array_equal(kept, [0, 1, 2, 3])
    small = ks.shrink(pruned)
    assert small.get_layer("h").units == 4
    assert_same_outputs(pruned, small, rng.standard_normal((5, 6)).astype("float32"))
    with pytest.raises(ValueError, match="removes_units"):
        ks.prune_channels(model, 0.5, pattern="unstructured", layers=["h"])


class _BatchNormBetaScorer(ks.scorers.Scorer):
    """A user-defined scorer reading the following BatchNorm: ``|beta|``."""

    reads_batchnorm = True

    def __init__(self):
        self.layer = None

    def bind(self, batchnorm_layer):
        self.layer = batchnorm_layer
        return self

    def score(self, weight, gradient=None):
        beta = np.abs(to_np(self.layer.beta))
        return np.broadcast_to(beta, tuple(weight.shape)).astype("float32")


def test_prune_channels_binds_any_scorer_that_reads_batchnorm(rng):
    model = make_conv_bn()
    set_biases(model, rng)
    beta = np.array([0.1, 0.9, -0.8, 0.05, 0.2, -0.7, 0.6, 0.0], "float32")
    model.get_layer("bn").beta.assign(beta)
    model.get_layer("bn").gamma.assign(np.linspace(2.0, 0.1, 8).astype("float32"))
    given = _BatchNormBetaScorer()
    pruned = ks.prune_channels(model, 0.5, scorer=given, layers=["conv"])
    layer = pruned.get_layer("conv")
    kept = np.nonzero(np.any(to_np(layer.get_mask("kernel")), axis=(0, 1, 2)))[0]
    np.testing.assert_array_equal(kept, [1, 2, 5, 6])
    # Each pruned layer gets its own bound copy; the given scorer is unbound.
    assert type(layer.scorer) is _BatchNormBetaScorer and layer.scorer is not given
    assert layer.scorer.layer is pruned.get_layer("bn") and given.layer is None
    with pytest.raises(ValueError, match="BatchNormalization"):
        ks.prune_channels(make_mlp((4, 6, 2)), 0.5, scorer=_BatchNormBetaScorer(), layers=["d1"])


@pytest.mark.slow
def test_gradual_channel_pruning_in_fit_then_shrink(rng):
    keras.utils.set_random_seed(0)
    model = make_cnn()
    set_biases(model, rng)
    pruned = ks.prune(
        model, 0.5, pattern="channel", scorer="l2_norm", layers=["c1", "c2", "d1"],
        schedule=ks.schedules.PolynomialDecay(0.0, 0.5, begin_step=0, end_step=6, frequency=2),
    )
    pruned.compile("adam", "mse")
    x = rng.standard_normal((32, 8, 8, 3)).astype("float32")
    y = rng.standard_normal((32, 4)).astype("float32")
    pruned.fit(x, y, batch_size=8, epochs=3, callbacks=[ks.callbacks.Pruning()], verbose=0)
    small = ks.shrink(pruned)
    assert_same_outputs(pruned, small, x[:4])
    assert small.get_layer("c2").filters <= 7 and small.get_layer("d1").units == 10
    small.compile("adam", "mse")
    small.fit(x, y, epochs=1, verbose=0)  # the shrunk model trains as a plain model


def test_shared_layers_shrink_consistently(rng):
    a, b = keras.Input((8,), name="a"), keras.Input((8,), name="b")
    s1 = L.Dense(10, activation="relu", **Z, name="s1")
    s2 = L.Dense(6, activation="relu", **Z, name="s2")
    merged = L.Concatenate(name="cat")([s2(s1(a)), s2(s1(b))])
    model = keras.Model([a, b], L.Dense(2, **Z, name="out")(merged))
    set_biases(model, rng)
    pruned = mask_units(model, {"s1": [0, 1, 2, 3], "s2": [1, 2]})
    small, info = ks.shrink(pruned, return_info=True)
    x = [rng.standard_normal((4, 8)).astype("float32") for _ in range(2)]
    np.testing.assert_allclose(outputs(small, x), outputs(pruned, x), atol=TOL)
    assert small.get_layer("s1").units == 6 and small.get_layer("s2").units == 4
    assert not info.blocked


def test_embedding_causal_conv_and_low_rank_consumer(rng):
    inputs = keras.Input((12,), dtype="int32")
    h = L.Embedding(20, 8, embeddings_initializer="zeros", name="emb")(inputs)
    h = L.Conv1D(6, 3, padding="causal", activation="relu", **Z, name="c1d")(h)
    h = L.GlobalMaxPooling1D(name="gmp")(h)
    h = ks.layers.LowRankDense(5, rank=2, **Z, name="lr")(h)
    model = keras.Model(inputs, L.Dense(2, **Z, name="out")(h))
    set_biases(model, rng)
    model.get_layer("emb").set_weights([rng.standard_normal((20, 8)).astype("float32")])
    model.get_layer("lr").set_factors(rng.standard_normal((6, 2)), rng.standard_normal((2, 5)),
                                      rng.standard_normal(5))
    pruned = mask_units(model, {"emb": [0, 3, 5], "c1d": [1, 4]})
    small = ks.shrink(pruned)
    x = rng.integers(0, 20, (4, 12)).astype("int32")
    np.testing.assert_allclose(outputs(small, x), outputs(pruned, x), atol=TOL)
    assert small.get_layer("emb").output_dim == 5
    assert small.get_layer("c1d").kernel.shape == (3, 5, 4)
    # the low-rank layer keeps its factors, minus the rows of removed inputs
    assert type(small.get_layer("lr")) is ks.layers.LowRankDense
    assert small.get_layer("lr").kernel_a.shape == (4, 2)


def test_raw_operations_and_stateless_lambda_are_copied(rng):
    # Built with a sparse layer directly: ks.prune clones the model, and
    # Keras refuses to clone a Lambda holding a Python lambda in safe mode.
    inputs = keras.Input((6,))
    dense = ks.layers.SparseDense(8, activation="relu", pattern="channel", **Z, name="h",
                                  masked=True)
    h = dense(inputs)
    h = keras.ops.multiply(h, 2.0)  # a raw operation: kept whole
    h = L.Lambda(lambda t: t - 1.0, name="shift")(h)
    model = keras.Model(inputs, L.Dense(2, **Z, name="out")(h))
    set_biases(model, rng)
    mask = np.ones((6, 8), dtype=bool)
    mask[:, :2] = False
    dense.set_mask("kernel", mask)
    small, info = ks.shrink(model, return_info=True)
    assert_same_outputs(model, small, rng.standard_normal((3, 6)).astype("float32"))
    assert info.blocked == {"h": 2}
    assert small.get_layer("shift") is model.get_layer("shift")  # stateless: shared


# ------------------------------------------------- rules through the MRO
class _ScaledDense(L.Dense):
    """A Dense subclass that keeps Dense's computation (no ``call``)."""

    def __init__(self, units, note="", **kwargs):
        super().__init__(units, **kwargs)
        self.note = note

    def get_config(self):
        return {**super().get_config(), "note": self.note}


class _DoublingDense(L.Dense):
    """A Dense subclass with a ``call`` of its own: the rules cannot know it."""

    def call(self, inputs):
        return super().call(inputs) * 2.0


def test_rules_resolve_through_the_mro():
    from keras_sparse.shrink.rules import register_rule
    from keras_sparse.shrink.rules import registered_rule

    class MyBatchNorm(L.BatchNormalization):
        pass

    assert registered_rule(_ScaledDense(3))[0] is L.Dense
    assert registered_rule(ks.layers.SparseDense(3))[0] is L.Dense
    assert registered_rule(ks.layers.SparseDepthwiseConv2D(3))[0] is L.DepthwiseConv2D
    assert registered_rule(MyBatchNorm())[0] is L.BatchNormalization
    assert registered_rule(_DoublingDense(3)) is None
    assert registered_rule(L.LayerNormalization()) is None

    class PlainAttention(L.MultiHeadAttention):
        pass

    class OwnScores(L.MultiHeadAttention):
        def _compute_attention(self, *args, **kwargs):
            return super()._compute_attention(*args, **kwargs)

    assert registered_rule(PlainAttention(2, 4))[0] is L.MultiHeadAttention
    assert registered_rule(OwnScores(2, 4)) is None
    masked = ks.layers.HeadMaskedMultiHeadAttention(2, 4)
    assert registered_rule(masked)[0] is ks.layers.HeadMaskedMultiHeadAttention
    with pytest.raises(TypeError, match="layer_class=3"):
        register_rule(3)


def test_dense_subclass_gets_the_dense_rule(rng):
    keras.utils.set_random_seed(15)
    model = keras.Sequential([
        keras.Input((16,)),
        _DoublingDense(12, activation="relu", **Z, name="d2"),
        _ScaledDense(32, note="kept", activation="relu", **Z, name="d1"),
        L.Dense(5, **Z, name="out"),
    ])
    set_biases(model, rng)
    for name in ("d1", "d2"):
        kernel = to_np(model.get_layer(name).kernel).copy()
        kernel[:, ::2] = 0.0  # half of each layer's units read nothing
        model.get_layer(name).kernel.assign(kernel)
    x = rng.standard_normal((8, 16)).astype("float32")
    small, info = ks.shrink(model, return_info=True)
    assert_same_outputs(model, small, x)
    d1, d2 = small.get_layer("d1"), small.get_layer("d2")
    # The subclass keeps its class and its own argument, with half the units.
    assert type(d1) is _ScaledDense and d1.note == "kept" and d1.units == 16
    # The subclass with its own call is kept whole.
    assert type(d2) is _DoublingDense and d2.units == 12
    status = {row["name"]: row["status"] for row in info.layers}
    assert status["d2"] == "kept whole"
