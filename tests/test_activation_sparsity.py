"""Sparse activations: TopKActivation (k-winners-take-all) and ActivitySparsity."""

import json
import os

import keras
import numpy as np
import pytest
from conftest import backend_grad
from conftest import backend_name
from conftest import to_np
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

import keras_sparse as ks
from keras_sparse.backend import sync_model_state
from keras_sparse.ops.activations import top_k_activation_mask
from keras_sparse.ops.activations import top_k_count


def reference_mask(x, k, axis=-1):
    """numpy: the k largest of each group, the lowest index first among ties."""
    x = np.asarray(x)
    if axis is None:
        flat = x.reshape(x.shape[0], -1)
        return reference_mask(flat, k).reshape(x.shape)
    moved = np.moveaxis(x, axis, -1)
    order = np.argsort(-moved, axis=-1, kind="stable")[..., :k]
    mask = np.zeros(moved.shape, bool)
    np.put_along_axis(mask, order, True, axis=-1)
    return np.moveaxis(mask, -1, axis)


# ----------------------------------------------------------------- floor 1
def test_top_k_count_rounds_fractions_half_up_and_keeps_one():
    assert top_k_count(64, fraction=0.1) == 6  # 6.4
    assert top_k_count(10, fraction=0.25) == 3  # 2.5 rounds up
    assert top_k_count(10, fraction=0.1) == 1  # 1.0000000000000002 in floats
    assert top_k_count(10, fraction=0.01) == 1
    assert top_k_count(10, fraction=1.0) == 10
    assert top_k_count(10, k=10) == 10
    with pytest.raises(ValueError, match="Received: k=11"):
        top_k_count(10, k=11)


@pytest.mark.parametrize(
    "shape,k,axis",
    [((5, 12), 3, -1), ((3, 4, 4, 6), 2, -1), ((3, 4, 4, 6), 5, None), ((3, 6, 4, 4), 2, 1)],
)
def test_mask_matches_numpy_with_ties(rng, shape, k, axis):
    # Few distinct values: most groups have ties at the k-th value.
    x = rng.integers(-2, 3, size=shape).astype("float32")
    mask = to_np(top_k_activation_mask(x, k, axis))
    np.testing.assert_array_equal(mask, reference_mask(x, k, axis))


def test_mask_all_equal_keeps_the_first_k():
    mask = to_np(top_k_activation_mask(np.ones((2, 6), "float32"), 4))
    np.testing.assert_array_equal(mask, [[1, 1, 1, 1, 0, 0]] * 2)


_SHAPES = [(4, 8), (2, 3, 3, 4)]


@settings(max_examples=200)
@given(
    shape_index=st.integers(0, len(_SHAPES) - 1),
    k_seed=st.integers(0, 10**6),
    values=st.lists(st.integers(-3, 3).filter(bool), min_size=72, max_size=72),
    whole=st.booleans(),
)
def test_exactly_k_nonzeros_per_group(shape_index, k_seed, values, whole):
    shape = _SHAPES[shape_index]
    size = int(np.prod(shape))
    x = np.array(values[:size], "float32").reshape(shape)  # no zeros, many ties
    axis = None if whole else -1
    group = int(np.prod(shape[1:])) if whole else shape[-1]
    k = 1 + k_seed % group
    layer = ks.layers.TopKActivation(k=k, axis=axis)
    out = to_np(layer(x))
    groups = out.reshape(shape[0], -1) if whole else out.reshape(-1, shape[-1])
    np.testing.assert_array_equal(np.count_nonzero(groups, axis=-1), k)
    np.testing.assert_array_equal(out, np.where(reference_mask(x, k, axis), x, 0))


# ----------------------------------------------------------------- TopKActivation
def test_k_winners_take_all_is_the_same_layer():
    assert ks.layers.KWinnersTakeAll is ks.layers.TopKActivation
    for alias in ("top_k_activation", "k_winners_take_all", " K_Winners_Take_All "):
        layer = ks.layers.get_sparse_activation(alias, k=3)
        assert isinstance(layer, ks.layers.TopKActivation) and layer.k == 3
    layer = ks.layers.get_sparse_activation("activity_sparsity", l=0.5)
    assert isinstance(layer, ks.layers.ActivitySparsity)
    with pytest.raises(ValueError, match="Received: identifier='relu'"):
        ks.layers.get_sparse_activation("relu")


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"k": 0}, "Received: k=0"),
        ({"k": -2}, "Received: k=-2"),
        ({"fraction": 0.0}, "Received: fraction=0.0"),
        ({"fraction": 1.5}, "Received: fraction=1.5"),
        ({}, "Received: k=None, fraction=None"),
        ({"k": 2, "fraction": 0.5}, "Received: k=2, fraction=0.5"),
        ({"k": 2, "axis": 0}, "Received: axis=0"),
    ],
)
def test_bad_arguments_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ks.layers.TopKActivation(**kwargs)


def test_bad_types_are_rejected():
    with pytest.raises(TypeError, match="Received: k=True"):
        ks.layers.TopKActivation(k=True)
    with pytest.raises(TypeError, match="Received: axis='c'"):
        ks.layers.TopKActivation(k=1, axis="c")


def test_k_larger_than_the_group_is_rejected_at_build():
    with pytest.raises(ValueError, match="exceed the number of entries it is chosen among \\(8\\)"):
        ks.layers.TopKActivation(k=9)(np.zeros((2, 8), "float32"))
    with pytest.raises(ValueError, match="Received: k=40"):
        keras.Sequential([keras.Input((3, 3, 4)), ks.layers.TopKActivation(k=40, axis=None)])
    # k=36 fits all 36 entries of the example (axis=None) but not 4 channels.
    ks.layers.TopKActivation(k=36, axis=None)(np.zeros((1, 3, 3, 4), "float32"))
    with pytest.raises(ValueError, match="Received: k=36"):
        ks.layers.TopKActivation(k=36)(np.zeros((1, 3, 3, 4), "float32"))
    with pytest.raises(ValueError, match="axis=3"):
        ks.layers.TopKActivation(k=1, axis=3)(np.zeros((2, 8), "float32"))


@pytest.mark.parametrize(
    "shape,kwargs",
    [
        ((6, 20), {"k": 4}),
        ((6, 20), {"fraction": 0.1}),
        ((2, 5, 5, 8), {"k": 2}),
        ((2, 5, 5, 8), {"fraction": 0.25, "axis": None}),
        ((2, 8, 5, 5), {"k": 3, "axis": 1}),
    ],
)
def test_layer_forward_and_gradient_match_numpy(rng, shape, kwargs):
    x = rng.normal(size=shape).astype("float32")
    x[0, ...] = np.round(x[0, ...])  # ties in one example
    layer = ks.layers.TopKActivation(**kwargs)
    axis = kwargs.get("axis", -1)
    group = int(np.prod(shape[1:])) if axis is None else shape[axis]
    k = kwargs.get("k") or top_k_count(group, fraction=kwargs["fraction"])
    mask = reference_mask(x, k, axis)
    np.testing.assert_array_equal(to_np(layer(x)), np.where(mask, x, 0))
    cotangent = rng.normal(size=shape).astype("float32")
    weights = keras.ops.convert_to_tensor(cotangent)
    (grad,) = backend_grad(lambda t: keras.ops.sum(layer(t) * weights), [x])
    np.testing.assert_allclose(grad, np.where(mask, cotangent, 0), rtol=0, atol=0)


def test_config_round_trip_and_mixed_precision():
    layer = ks.layers.TopKActivation(fraction=0.3, axis=None, name="kwta")
    restored = keras.saving.deserialize_keras_object(
        json.loads(json.dumps(keras.saving.serialize_keras_object(layer))))
    assert isinstance(restored, ks.layers.TopKActivation)
    assert restored.get_config() == layer.get_config()
    config = keras.saving.serialize_keras_object(layer)
    assert ks.layers.get_sparse_activation(config).fraction == 0.3
    half = ks.layers.TopKActivation(k=2, dtype="mixed_float16")
    out = half(np.array([[1.0, 4.0, 2.0, 3.0]], "float32"))
    assert keras.backend.standardize_dtype(out.dtype) == "float16"
    np.testing.assert_array_equal(to_np(out), [[0, 4, 0, 3]])


def _digits():
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.data / 16.0).astype("float32")
    y = data.target.astype("int32")
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    return x[:1400], y[:1400], x[1400:], y[1400:]


def _conv_model():
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(8, 3, padding="same")(inputs)
    h = ks.layers.TopKActivation(k=2)(h)  # 2 of 8 channels per pixel
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dense(32)(h)
    h = ks.layers.KWinnersTakeAll(fraction=0.25)(h)
    return keras.Model(inputs, keras.layers.Dense(10)(h))


@pytest.mark.slow
def test_topk_mlp_and_cnn_train_on_digits_and_survive_keras_round_trip(tmp_path):
    x, y, x_test, y_test = _digits()
    keras.utils.set_random_seed(0)
    mlp = keras.Sequential([
        keras.Input((64,)), keras.layers.Dense(128), ks.layers.TopKActivation(fraction=0.1),
        keras.layers.Dense(10),
    ])
    cnn = _conv_model()
    # Floors: 0.92-0.96 (MLP, 13 of 128 units kept) and 0.96-0.98 (CNN) were
    # measured over 4 seeds on each backend.
    for model, inputs, floor in ((mlp, x, 0.88), (cnn, x.reshape(-1, 8, 8, 1), 0.93)):
        model.compile(keras.optimizers.Adam(3e-3),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=["accuracy"])
        model.fit(inputs, y, epochs=15, batch_size=64, verbose=0)
        test_inputs = x_test.reshape((-1,) + inputs.shape[1:])
        accuracy = model.evaluate(test_inputs, y_test, verbose=0)[1]
        assert accuracy > floor, (model.name, accuracy)
        hidden = keras.Model(model.inputs[0], model.layers[-2].output)(test_inputs[:50])
        kept = np.count_nonzero(to_np(hidden).reshape(50, -1), axis=-1)
        np.testing.assert_array_equal(kept, 13 if model is mlp else 8)
        path = os.path.join(tmp_path, f"{model.name}.keras")
        model.save(path)
        loaded = keras.saving.load_model(path)
        np.testing.assert_array_equal(to_np(loaded.predict(test_inputs, verbose=0)),
                                      to_np(model.predict(test_inputs, verbose=0)))


@pytest.mark.tf_only
@pytest.mark.skipif(backend_name() != "tensorflow", reason="XLA on TensorFlow")
def test_topk_trains_under_xla():
    x, y, _, _ = _digits()
    model = _conv_model()
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  jit_compile=True)
    history = model.fit(x[:256].reshape(-1, 8, 8, 1), y[:256], epochs=3, batch_size=64, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    out = model.predict(x[:8].reshape(-1, 8, 8, 1), verbose=0)
    np.testing.assert_allclose(out, to_np(model(x[:8].reshape(-1, 8, 8, 1))), atol=1e-5)
    import tensorflow as tf

    maps = np.round(np.random.default_rng(2).normal(size=(4, 3, 3, 5)), 1).astype("float32")
    whole = ks.layers.TopKActivation(k=7, axis=None)
    compiled = tf.function(lambda t: whole(t), jit_compile=True)
    np.testing.assert_array_equal(
        compiled(maps).numpy(), np.where(reference_mask(maps, 7, None), maps, 0))


# ----------------------------------------------------------------- ActivitySparsity
def test_activity_sparsity_penalty_and_zero_fraction_match_numpy(rng):
    x = np.maximum(rng.normal(size=(16, 10)), 0).astype("float32")
    layer = ks.layers.ActivitySparsity(0.3)
    assert layer.penalty_kind == "activation"
    assert not layer.coefficient.trainable and layer.coefficient.dtype == "float32"
    assert layer.measured_sparsity() == 0.0
    np.testing.assert_array_equal(to_np(layer(x)), x)  # inference: identity, no loss
    assert not layer.losses and layer.measured_sparsity() == 0.0
    np.testing.assert_array_equal(to_np(layer(x, training=True)), x)
    (penalty,) = layer.losses
    np.testing.assert_allclose(to_np(penalty), 0.3 * np.abs(x).mean(), rtol=1e-6)
    assert layer.measured_sparsity() == pytest.approx(np.mean(x == 0), abs=1e-7)
    assert isinstance(layer.measured_sparsity(), float)


def test_activity_sparsity_under_mixed_precision():
    layer = ks.layers.ActivitySparsity(0.5, dtype="mixed_float16")
    x = np.array([[0.0, 1.5, -2.0, 0.0]], "float32")
    out = layer(x, training=True)
    assert keras.backend.standardize_dtype(out.dtype) == "float16"
    (penalty,) = layer.losses
    assert keras.backend.standardize_dtype(penalty.dtype) == "float32"
    np.testing.assert_allclose(to_np(penalty), 0.5 * 3.5 / 4, rtol=1e-6)
    assert layer.measured_sparsity() == 0.5


def test_activity_sparsity_bad_l_and_config():
    for bad, error in ((-0.1, ValueError), (float("nan"), ValueError), ("big", TypeError)):
        with pytest.raises(error, match="Received: l="):
            ks.layers.ActivitySparsity(bad)
    layer = ks.layers.ActivitySparsity(0.25)
    layer.coefficient.assign(0.5)
    restored = keras.saving.deserialize_keras_object(
        json.loads(json.dumps(keras.saving.serialize_keras_object(layer))))
    assert float(to_np(restored.coefficient)) == 0.5


def _penalized_model(l, jit_compile=None):
    if jit_compile is None:
        jit_compile = backend_name() == "tensorflow"
    keras.utils.set_random_seed(1)
    model = keras.Sequential([
        keras.Input((64,)), keras.layers.Dense(32, activation="relu"),
        ks.layers.ActivitySparsity(l), keras.layers.Dense(10),
    ])
    # A zero learning rate: every step sees the same weights, so the loss
    # differences are the penalty alone.
    model.compile(keras.optimizers.SGD(0.0),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  jit_compile=jit_compile)
    return model


def _mean_abs_hidden(model, x):
    return float(np.abs(to_np(model.layers[0](x))).mean())


@pytest.mark.slow
def test_coefficient_assigned_between_fits_changes_the_same_train_function():
    x, y, _, _ = _digits()
    x, y = x[:64], y[:64]
    model = _penalized_model(0.0)
    layer = model.layers[1]
    base = model.fit(x, y, batch_size=64, epochs=1, verbose=0).history["loss"][0]
    train_function = model.train_function
    hidden = to_np(model.layers[0](x))
    assert layer.measured_sparsity() == pytest.approx(np.mean(hidden == 0), abs=1e-6)
    layer.coefficient.assign(2.0)
    loss = model.fit(x, y, batch_size=64, epochs=1, verbose=0).history["loss"][0]
    assert model.train_function is train_function
    np.testing.assert_allclose(loss - base, 2.0 * np.abs(hidden).mean(), rtol=1e-4)
    data_loss = model.evaluate(x, y, verbose=0)  # evaluation: no penalty
    np.testing.assert_allclose(data_loss, base, rtol=1e-5)


class _SetCoefficient(keras.callbacks.Callback):
    """What a controller does: sync, assign between two batches, read."""

    def __init__(self, layer, value, after_batch):
        super().__init__()
        self.layer, self.value, self.after_batch = layer, value, after_batch
        self.losses, self.sparsity = [], []

    def on_train_batch_end(self, batch, logs=None):
        self.losses.append(logs["loss"])
        sync_model_state(self.model)
        self.sparsity.append(self.layer.measured_sparsity())
        if batch == self.after_batch:
            self.layer.coefficient.assign(self.value)


@pytest.mark.slow
@pytest.mark.parametrize("jit_compile", [False, True])
def test_coefficient_assigned_by_a_callback_between_batches(jit_compile):
    if jit_compile and backend_name() != "tensorflow":
        pytest.skip("XLA through jit_compile=True is TensorFlow's (JAX always compiles)")
    x, y, _, _ = _digits()
    x, y = np.concatenate([x[:32]] * 3), np.concatenate([y[:32]] * 3)  # 3 equal batches
    model = _penalized_model(0.0, jit_compile)
    callback = _SetCoefficient(model.layers[1], 3.0, after_batch=0)
    model.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0, callbacks=[callback])
    # The logged loss is the running mean over the epoch's batches.
    first, mean2, mean3 = callback.losses
    second, third = 2 * mean2 - first, 3 * mean3 - 2 * mean2
    penalty = 3.0 * _mean_abs_hidden(model, x[:32])
    np.testing.assert_allclose([second - first, third - first], [penalty, penalty], rtol=1e-3)
    hidden = to_np(model.layers[0](x[:32]))
    np.testing.assert_allclose(callback.sparsity, [np.mean(hidden == 0)] * 3, atol=1e-6)


@pytest.mark.slow
def test_activity_sparsity_keras_round_trip_keeps_the_coefficient(tmp_path):
    x, y, _, _ = _digits()
    model = _penalized_model(0.125)
    model.fit(x[:64], y[:64], batch_size=64, epochs=1, verbose=0)
    model.layers[1].coefficient.assign(0.75)
    path = os.path.join(tmp_path, "penalized.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    layer = loaded.layers[1]
    assert isinstance(layer, ks.layers.ActivitySparsity)
    assert float(to_np(layer.coefficient)) == 0.75
    assert layer.measured_sparsity() == model.layers[1].measured_sparsity() > 0
    np.testing.assert_array_equal(to_np(loaded.predict(x[:16], verbose=0)),
                                  to_np(model.predict(x[:16], verbose=0)))
