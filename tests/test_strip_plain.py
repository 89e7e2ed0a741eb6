"""ks.strip turns low-rank, column-sampled and head-masked layers into plain
Keras layers with the same outputs."""

import json
import os
import subprocess
import sys
import textwrap
import warnings
import zipfile

import keras
import numpy as np
import pytest

import keras_sparse as ks
from keras_sparse.layers import ColumnSampledDense
from keras_sparse.layers import HeadMaskedMultiHeadAttention
from keras_sparse.layers import LowRankConv2D
from keras_sparse.layers import LowRankDense


def _np(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


def _classes(config):
    found = set()

    def visit(node):
        if isinstance(node, dict):
            if "class_name" in node:
                found.add((node.get("module"), node["class_name"]))
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    visit(config)
    return found


def _assert_plain(model):
    text = json.dumps(model.get_config())
    assert "keras_sparse" not in text
    for module, _ in _classes(model.get_config()):
        assert module is None or module.split(".")[0] == "keras", module


def _strip_quietly(model, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        return ks.strip(model, **kwargs)


def _dense_model(kind, quantizer=None):
    keras.utils.set_random_seed(1)
    layers = [
        LowRankDense(12, rank=3, activation="relu", kernel_quantizer=quantizer, name="lr"),
        ColumnSampledDense(10, keep=5, method="norm", activation="tanh", name="cs"),
        LowRankDense(4, rank=2, use_bias=False, name="lr2"),
    ]
    if kind == "sequential":
        return keras.Sequential([keras.Input((16,))] + layers)
    inputs = keras.Input((16,))
    x = inputs
    for layer in layers:
        x = layer(x)
    return keras.Model(inputs, x)


def _randomize_bias(model):
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if getattr(layer, "bias", None) is not None:
            layer.bias.assign(rng.normal(size=layer.bias.shape).astype("float32"))


@pytest.mark.parametrize("kind", ["sequential", "functional"])
@pytest.mark.parametrize("factorized", ["two_layers", "dense"])
def test_dense_family_becomes_plain(kind, factorized):
    model = _dense_model(kind)
    _randomize_bias(model)
    x = np.random.default_rng(2).normal(size=(8, 16)).astype("float32")
    expected = _np(model(x))

    plain = _strip_quietly(model, factorized=factorized)

    _assert_plain(plain)
    np.testing.assert_allclose(_np(plain(x)), expected, rtol=1e-5, atol=1e-6)
    cs = plain.get_layer("cs")
    assert type(cs) is keras.layers.Dense
    kernel = _np(cs.kernel)
    dropped = np.setdiff1d(np.arange(12), model.get_layer("cs").kept_features)
    assert dropped.size == 7
    assert np.all(kernel[dropped] == 0.0)
    np.testing.assert_array_equal(kernel[model.get_layer("cs").kept_features],
                                  _np(model.get_layer("cs").kernel))
    lr = plain.get_layer("lr")
    if factorized == "dense":
        assert type(lr) is keras.layers.Dense
        np.testing.assert_allclose(_np(lr.kernel), _np(model.get_layer("lr").kernel), rtol=1e-6)
        assert lr.count_params() == 16 * 12 + 12
    else:
        assert type(lr) is keras.Sequential
        assert [type(l) for l in lr.layers] == [keras.layers.Dense, keras.layers.Dense]
        assert lr.layers[0].bias is None and lr.layers[0].activation is keras.activations.linear
        assert lr.layers[1].activation is keras.activations.relu
        assert lr.count_params() == 16 * 3 + 3 * 12 + 12
        np.testing.assert_array_equal(_np(lr.layers[0].kernel),
                                      _np(model.get_layer("lr").kernel_a))
    # The input is untouched.
    assert type(model.get_layer("lr")) is LowRankDense
    np.testing.assert_array_equal(_np(model(x)), expected)


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize("factorized", ["two_layers", "dense"])
def test_low_rank_conv_becomes_plain(data_format, factorized):
    if data_format == "channels_first" and keras.backend.backend() == "tensorflow":
        pytest.skip("TensorFlow's CPU conv has no channels_first kernel")
    keras.utils.set_random_seed(3)
    shape = (6, 6, 3) if data_format == "channels_last" else (3, 6, 6)
    inputs = keras.Input(shape)
    x = LowRankConv2D(8, 3, rank=2, padding="same", activation="relu",
                      data_format=data_format, name="conv")(inputs)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(3)(x)
    model = keras.Model(inputs, outputs)
    _randomize_bias(model)
    model.get_layer("conv").bias.assign(np.linspace(-1, 1, 8).astype("float32"))
    data = np.random.default_rng(4).normal(size=(4,) + shape).astype("float32")
    expected = _np(model(data))

    plain = _strip_quietly(model, factorized=factorized)

    _assert_plain(plain)
    np.testing.assert_allclose(_np(plain(data)), expected, rtol=1e-5, atol=1e-5)
    conv = plain.get_layer("conv")
    if factorized == "dense":
        assert type(conv) is keras.layers.Conv2D
        assert tuple(conv.kernel.shape) == (3, 3, 3, 8)
    else:
        assert type(conv) is keras.Sequential
        first, second = conv.layers
        assert type(first) is keras.layers.Conv2D and first.filters == 2 and first.bias is None
        channels_last = data_format == "channels_last"
        assert type(second) is (keras.layers.Dense if channels_last else keras.layers.Conv2D)
        assert conv.count_params() == 3 * 3 * 3 * 2 + 2 * 8 + 8


def test_quantized_low_rank_stores_quantized_factors():
    model = _dense_model("functional", quantizer=4)
    x = np.random.default_rng(5).normal(size=(8, 16)).astype("float32")
    expected = _np(model(x))
    source = model.get_layer("lr")
    quantized_a = _np(source.factor("kernel_a"))
    # The quantizer really changes the factor, so the test can tell.
    assert not np.allclose(quantized_a, _np(source.kernel_a))
    assert np.unique(quantized_a[:, 0]).size <= 16

    for factorized in ("two_layers", "dense"):
        plain = _strip_quietly(model, factorized=factorized)
        _assert_plain(plain)
        np.testing.assert_allclose(_np(plain(x)), expected, rtol=1e-5, atol=1e-6)
    two = _strip_quietly(model)
    np.testing.assert_array_equal(_np(two.get_layer("lr").layers[0].kernel), quantized_a)
    dense = _strip_quietly(model, factorized="dense")
    np.testing.assert_allclose(_np(dense.get_layer("lr").kernel), _np(source.kernel), rtol=1e-6)


def _attention_model():
    keras.utils.set_random_seed(6)
    inputs = keras.Input((5, 8))
    mha = HeadMaskedMultiHeadAttention(num_heads=4, key_dim=3, name="mha")
    x = mha(inputs, inputs)
    x = keras.layers.GlobalAveragePooling1D()(x)
    outputs = keras.layers.Dense(2, name="head")(x)
    return keras.Model(inputs, outputs)


def test_head_masked_attention_becomes_plain():
    model = _attention_model()
    mha = model.get_layer("mha")
    x = np.random.default_rng(7).normal(size=(3, 5, 8)).astype("float32")
    unmasked = _np(model(x))
    mha.set_head_mask([True, False, True, False])
    expected = _np(model(x))
    assert not np.allclose(unmasked, expected)

    plain = _strip_quietly(model)

    _assert_plain(plain)
    new = plain.get_layer("mha")
    assert type(new) is keras.layers.MultiHeadAttention
    assert new.num_heads == 4
    np.testing.assert_allclose(_np(plain(x)), expected, rtol=1e-5, atol=1e-6)
    for name in ("_query_dense", "_key_dense", "_value_dense"):
        kernel = _np(getattr(new, name).kernel)
        assert np.all(kernel[:, [1, 3]] == 0.0) and np.all(kernel[:, [0, 2]] != 0.0)
    out = _np(new._output_dense.kernel)
    assert np.all(out[[1, 3]] == 0.0) and np.all(out[[0, 2]] != 0.0)
    assert len(new.weights) == len(mha.weights) - 1  # no head_mask


def test_strip_after_fit_with_compiled_model():
    model = _dense_model("sequential")
    model.compile(optimizer="adam", loss="mse")
    rng = np.random.default_rng(8)
    x = rng.normal(size=(32, 16)).astype("float32")
    model.fit(x, rng.normal(size=(32, 4)).astype("float32"), epochs=1, verbose=0)
    plain = _strip_quietly(model)
    assert not plain.compiled
    np.testing.assert_allclose(_np(plain(x)), _np(model(x)), rtol=1e-5, atol=1e-6)


def test_stripped_file_loads_without_keras_sparse(tmp_path):
    model = _dense_model("functional", quantizer=4)
    _randomize_bias(model)
    x = np.random.default_rng(9).normal(size=(8, 16)).astype("float32")
    expected = _np(model(x))
    path = tmp_path / "plain.keras"
    _strip_quietly(model).save(path)
    with zipfile.ZipFile(path) as archive:
        config = json.loads(archive.read("config.json"))
    assert "keras_sparse" not in json.dumps(config)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", expected)
    script = textwrap.dedent(f"""
        import sys
        import numpy as np
        import keras
        model = keras.saving.load_model({str(path)!r})
        assert "keras_sparse" not in sys.modules, "keras_sparse was imported"
        x = np.load({str(tmp_path / "x.npy")!r})
        expected = np.load({str(tmp_path / "y.npy")!r})
        got = keras.ops.convert_to_numpy(model(x))
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
        print("ok")
    """)
    env = dict(os.environ, KERAS_BACKEND=keras.backend.backend())
    env.pop("PYTHONPATH", None)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env=env, cwd=str(tmp_path), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("ok")


def test_subclassed_model_keeps_them_with_a_warning():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.lr = LowRankDense(6, rank=2)

        def call(self, x):
            return self.lr(x)

    model = Net()
    model(np.zeros((1, 8), "float32"))
    with pytest.warns(UserWarning, match=r"LowRankDense"):
        stripped = ks.strip(model)
    assert type(stripped.lr) is LowRankDense


def test_bad_factorized_is_refused_before_anything():
    model = _dense_model("sequential")
    with pytest.raises(ValueError, match=r"factorized='svd'"):
        ks.strip(model, factorized="svd")


def test_nested_models():
    keras.utils.set_random_seed(10)
    inner = keras.Sequential([keras.Input((16,)), LowRankDense(8, rank=2, name="inner_lr")],
                             name="inner")
    inputs = keras.Input((16,))
    outputs = ColumnSampledDense(3, keep=4, name="cs")(inner(inputs))
    model = keras.Model(inputs, outputs)
    x = np.random.default_rng(11).normal(size=(4, 16)).astype("float32")
    plain = _strip_quietly(model)
    _assert_plain(plain)
    np.testing.assert_allclose(_np(plain(x)), _np(model(x)), rtol=1e-5, atol=1e-6)
    assert type(plain.get_layer("inner").get_layer("inner_lr")) is keras.Sequential


def test_low_rank_inside_a_nested_subclassed_model_is_named_in_the_warning():
    @keras.saving.register_keras_serializable(package="test_strip_plain")
    class Block(keras.Model):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.lr = LowRankDense(6, rank=2, name="block_lr")

        def call(self, x):
            return self.lr(x)

    inputs = keras.Input((8,))
    model = keras.Model(inputs, keras.layers.Dense(2)(Block(name="block")(inputs)))
    with pytest.warns(UserWarning, match=r"block_lr \(LowRankDense\)"):
        ks.strip(model)


def test_head_masked_attention_in_a_subclassed_model_is_stripped_in_place():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.mha = HeadMaskedMultiHeadAttention(num_heads=2, key_dim=4)
            self.out = keras.layers.Dense(3)

        def call(self, x):
            return self.out(self.mha(x, x))

    model = Net()
    x = np.random.default_rng(12).normal(size=(2, 5, 6)).astype("float32")
    model(x)
    model.mha.set_head_mask([False, True])
    expected = _np(model(x))
    count = len(model.weights)

    stripped = _strip_quietly(model)

    assert stripped is model
    assert type(model.mha) is keras.layers.MultiHeadAttention
    assert len(model.weights) == count - 1
    assert not any(v.name == "head_mask" for v in model.weights)
    np.testing.assert_allclose(_np(model(x)), expected, rtol=1e-5, atol=1e-6)
    assert np.all(_np(model.mha._value_dense.kernel)[:, 0] == 0.0)


def test_report_and_shrink_read_the_two_layer_form():
    """The stripped factorized model (nested Sequentials) is counted and
    rebuilt like any plain model."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((32,)), keras.layers.Dense(64, activation="relu"), keras.layers.Dense(10)])
    factorized = ks.factorize(model, rank=8)
    plain = ks.strip(factorized)
    x = np.random.default_rng(0).random((4, 32)).astype("float32")
    # 32*8 + 8*64 + 64 (first) + 64*8 + 8*10 + 10 (second)
    assert ks.report(plain, print_fn=None).totals["params"] == 1434
    shrunk = ks.shrink(plain)
    np.testing.assert_allclose(shrunk.predict(x, verbose=0), plain.predict(x, verbose=0),
                               rtol=1e-5, atol=1e-6)
