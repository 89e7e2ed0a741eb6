"""LowRankDense / LowRankConv2D: forward pass against numpy, sizes, saving,
training, quantized factors, report rows, bad arguments."""

import json

import keras
import numpy as np
import pytest
from conftest import to_np

import keras_sparse as ks

ZERO = {"kernel_initializer": "zeros"}


def set_factors(layer, rng, bias=True):
    a = rng.standard_normal(tuple(layer.kernel_a.shape)).astype("float32") * 0.5
    b = rng.standard_normal(tuple(layer.kernel_b.shape)).astype("float32") * 0.5
    c = rng.standard_normal(tuple(layer.bias.shape)).astype("float32") if bias else None
    layer.set_factors(a, b, c)
    return a, b, c


def conv2d_numpy(x, kernel, padding):
    """Stride-1 2-D convolution (cross-correlation), channels last."""
    kh, kw = kernel.shape[:2]
    if padding == "same":
        x = np.pad(x, ((0, 0), ((kh - 1) // 2, kh // 2), ((kw - 1) // 2, kw // 2), (0, 0)))
    n, h, w, _ = x.shape
    out = np.zeros((n, h - kh + 1, w - kw + 1, kernel.shape[-1]))
    for i in range(kh):
        for j in range(kw):
            out += np.einsum("nhwc,cf->nhwf", x[:, i:i + out.shape[1], j:j + out.shape[2]], kernel[i, j])
    return out


def test_low_rank_dense_matches_numpy(rng):
    layer = ks.layers.LowRankDense(6, rank=2, activation="relu", **ZERO)
    x = rng.standard_normal((5, 3, 8)).astype("float32")
    layer(x)
    a, b, c = set_factors(layer, rng)
    expected = np.maximum(x.astype("float64") @ a @ b + c, 0.0)
    np.testing.assert_allclose(to_np(layer(x)), expected, atol=1e-5)
    np.testing.assert_allclose(to_np(layer.kernel), a @ b, atol=1e-6)
    assert [tuple(w.shape) for w in layer.weights] == [(8, 2), (2, 6), (6,)]
    assert layer.compute_output_shape((None, 3, 8)) == (None, 3, 6)


@pytest.mark.parametrize("padding", ["valid", "same"])
def test_low_rank_conv_is_conv_then_pointwise(padding, rng):
    layer = ks.layers.LowRankConv2D(5, 3, rank=3, padding=padding, **ZERO)
    x = rng.standard_normal((2, 6, 7, 4)).astype("float32")
    out = layer(x)
    a, b, c = set_factors(layer, rng)
    full = (a.reshape(-1, 3) @ b).reshape(3, 3, 4, 5)
    expected = conv2d_numpy(x.astype("float64"), full, padding) + c
    np.testing.assert_allclose(to_np(layer(x)), expected, atol=1e-4)
    assert tuple(out.shape) == layer.compute_output_shape(x.shape)
    # the same as a Keras Conv2D holding the product kernel
    conv = keras.layers.Conv2D(5, 3, padding=padding)
    conv.build(x.shape)
    conv.set_weights([full.astype("float32"), c])
    np.testing.assert_allclose(to_np(layer(x)), to_np(conv(x)), atol=1e-5)


def test_low_rank_conv_strides_dilation_and_channels_first(rng):
    x = rng.standard_normal((2, 9, 9, 3)).astype("float32")
    for kwargs in ({"strides": 2}, {"dilation_rate": 2}):
        layer = ks.layers.LowRankConv2D(4, 3, rank=2, **kwargs, **ZERO)
        layer(x)
        a, b, c = set_factors(layer, rng)
        conv = keras.layers.Conv2D(4, 3, **kwargs)
        conv.build(x.shape)
        conv.set_weights([(a.reshape(-1, 2) @ b).reshape(3, 3, 3, 4), c])
        np.testing.assert_allclose(to_np(layer(x)), to_np(conv(x)), atol=1e-5)
        assert tuple(layer(x).shape) == layer.compute_output_shape(x.shape)
    if keras.backend.backend() == "tensorflow":
        return  # TensorFlow's CPU convolution has no channels_first kernel
    last = ks.layers.LowRankConv2D(4, 3, rank=2, **ZERO)
    last(x)
    a, b, c = set_factors(last, rng)
    first = ks.layers.LowRankConv2D(4, 3, rank=2, data_format="channels_first", **ZERO)
    xt = np.transpose(x, (0, 3, 1, 2))
    first(xt)
    first.set_factors(a, b, c)
    np.testing.assert_allclose(np.transpose(to_np(first(xt)), (0, 2, 3, 1)), to_np(last(x)), atol=1e-5)


def test_sizes_and_report_rows(rng):
    inputs = keras.Input((8, 8, 6))
    h = ks.layers.LowRankConv2D(10, 3, rank=4, padding="same", name="lrc", **ZERO)(inputs)
    h = keras.layers.Flatten()(h)
    out = ks.layers.LowRankDense(5, rank=3, name="lrd", **ZERO)(h)
    model = keras.Model(inputs, out)
    rows = {row["layer"]: row for row in ks.report(model, print_fn=None).rows}
    conv_params = 3 * 3 * 6 * 4 + 4 * 10 + 10
    assert rows["lrc"]["params"] == conv_params
    assert rows["lrc"]["dense_flops"] == 2 * (3 * 3 * 6 * 4 + 4 * 10) * 64
    dense_params = 640 * 3 + 3 * 5 + 5
    assert rows["lrd"]["params"] == dense_params
    assert rows["lrd"]["effective_flops"] == 2 * (640 * 3 + 3 * 5)
    assert model.count_params() == conv_params + dense_params


def test_config_round_trip_and_keras_file(tmp_path, rng):
    inputs = keras.Input((6, 6, 3))
    h = ks.layers.LowRankConv2D(6, 3, rank=2, activation="relu", name="lrc", **ZERO)(inputs)
    h = keras.layers.GlobalAveragePooling2D()(h)
    outputs = ks.layers.LowRankDense(4, rank=2, kernel_quantizer="ste_sign", name="lrd", **ZERO)(h)
    model = keras.Model(inputs, outputs)
    for layer in (model.get_layer("lrc"), model.get_layer("lrd")):
        set_factors(layer, rng)
        config = layer.get_config()
        json.dumps(keras.saving.serialize_keras_object(layer))
        assert type(layer).from_config(config).get_config() == config
    x = rng.standard_normal((2, 6, 6, 3)).astype("float32")
    path = str(tmp_path / "low_rank.keras")
    model.save(path)
    reloaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(to_np(reloaded(x)), to_np(model(x)))
    for old, new in zip(model.weights, reloaded.weights):
        np.testing.assert_array_equal(to_np(old), to_np(new))


def test_quantized_factors_are_binary(rng):
    layer = ks.layers.LowRankDense(4, rank=2, kernel_quantizer="ste_sign", use_bias=False, **ZERO)
    x = rng.standard_normal((3, 5)).astype("float32")
    layer(x)
    a, b, _ = set_factors(layer, rng, bias=False)
    sign = lambda v: np.where(v >= 0, 1.0, -1.0)  # noqa: E731
    np.testing.assert_allclose(to_np(layer(x)), x @ sign(a) @ sign(b), atol=1e-5)
    assert set(np.unique(to_np(layer.factor("kernel_a")))) <= {-1.0, 1.0}
    assert np.array_equal(to_np(layer.kernel_a), a)  # the latent float factor is kept


@pytest.mark.slow
def test_trains_from_scratch(rng):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((8, 8, 1)),
        ks.layers.LowRankConv2D(8, 3, rank=3, padding="same", activation="relu"),
        keras.layers.GlobalAveragePooling2D(),
        ks.layers.LowRankDense(4, rank=2),
    ])
    model.compile(keras.optimizers.Adam(1e-2), "mse")
    x = rng.standard_normal((32, 8, 8, 1)).astype("float32")
    y = rng.standard_normal((32, 4)).astype("float32")
    before = [to_np(w).copy() for w in model.trainable_weights]
    history = model.fit(x, y, epochs=5, batch_size=8, verbose=0)
    after = [to_np(w) for w in model.trainable_weights]
    assert all(not np.array_equal(a, b) for a, b in zip(before, after))
    assert history.history["loss"][-1] < history.history["loss"][0]


@pytest.mark.parametrize(
    "make, shape, match",
    [
        (lambda: ks.layers.LowRankDense(5, rank=5), (1, 8), "rank"),
        (lambda: ks.layers.LowRankDense(5, rank=9), (1, 8), "rank"),
        (lambda: ks.layers.LowRankConv2D(4, 1, rank=2), (1, 3, 3, 2), "rank"),
    ],
)
def test_rank_not_below_min_in_out_raises(make, shape, match):
    with pytest.raises(ValueError, match=match):
        make()(np.zeros(shape, "float32"))


@pytest.mark.parametrize("kwargs", [{"rank": 0}, {"rank": 1.5}, {"rank": True}, {"units": 0}])
def test_bad_constructor_arguments(kwargs):
    arguments = {"units": 4, "rank": 2, **kwargs}
    with pytest.raises(ValueError):
        ks.layers.LowRankDense(**arguments)
    with pytest.raises(ValueError, match="padding"):
        ks.layers.LowRankConv2D(4, 3, rank=2, padding="causal")
    with pytest.raises(ValueError, match="kernel_quantizer"):
        ks.layers.LowRankDense(4, rank=2, kernel_quantizer="no_such_quantizer")
