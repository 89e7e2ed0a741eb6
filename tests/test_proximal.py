"""Proximal operators (floor 1) and the Proximal optimizer: exact zeros from
L1 and group-lasso penalties inside fit, on every backend."""

import math

import keras
import numpy as np
import pytest
from conftest import to_np
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import keras_sparse as ks
from keras_sparse.ops import prox


# ------------------------------------------------------------------ floor 1
def np_soft(x, t):
    return np.sign(x) * np.maximum(np.abs(x) - t, 0.0)


def np_group(x, t, axis_kept):
    axes = tuple(a for a in range(x.ndim) if a != axis_kept)
    size = math.prod(x.shape[a] for a in axes)
    norm = np.sqrt((x ** 2).sum(axis=axes, keepdims=True))
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where(norm > 0, np.maximum(1 - t * math.sqrt(size) / norm, 0), 0)
    return x * scale


@given(
    hnp.arrays(np.float32, (3, 5), elements=st.floats(-4, 4, width=32)),
    st.floats(0, 3),
)
def test_soft_threshold_matches_numpy_and_zeroes_the_small(x, t):
    out = to_np(prox.soft_threshold(x, t))
    np.testing.assert_allclose(out, np_soft(x, np.float32(t)), rtol=1e-6, atol=1e-6)
    assert np.all(out[np.abs(x) <= np.float32(t)] == 0)


def test_soft_threshold_zero_threshold_is_identity():
    x = np.array([-2.0, -0.0, 0.0, 1e-8, 3.0], "float32")
    np.testing.assert_array_equal(to_np(prox.soft_threshold(x, 0.0)), x)


@pytest.mark.parametrize("groups, kept", [("units", 1), ("filters", 3), ("inputs", 2)])
def test_group_soft_threshold_matches_numpy(groups, kept, rng):
    x = rng.normal(size=(3, 3, 4, 6)).astype("float32") if groups != "units" else (
        rng.normal(size=(8, 6)).astype("float32"))
    if groups == "units":
        x[:, 2] = 0.0            # an all-zero group stays zero (no NaN)
        x[:, 4] *= 1e-3          # a small group becomes exactly zero
    t = 0.05
    out = to_np(prox.group_soft_threshold(x, t, groups))
    np.testing.assert_allclose(out, np_group(x, t, kept), rtol=1e-5, atol=1e-6)
    assert not np.isnan(out).any()
    if groups == "units":
        assert np.all(out[:, 2] == 0) and np.all(out[:, 4] == 0)


def test_zero_group_count_counts_exact_zeros():
    x = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, -0.0]])
    assert prox.zero_group_count(x) == (5, 6)
    assert prox.zero_group_count(x, "units") == (2, 3)
    assert prox.zero_group_count(x, "inputs") == (1, 2)


def test_group_axes_rejects_unknown_groups():
    with pytest.raises(ValueError, match="groups='rows'"):
        prox.group_axes(2, "rows")


# ------------------------------------------------------------- optimizer
def _model(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((6,)),
        keras.layers.Dense(5, activation="relu", name="hidden"),
        keras.layers.Dense(3, name="out"),
    ])


def test_one_step_is_the_inner_step_then_the_prox(rng):
    """SGD(lr) + prox: w1 = prox_{lr*l}(w0 - lr*g), biases untouched."""
    model = _model()
    x = rng.normal(size=(16, 6)).astype("float32")
    y = rng.normal(size=(16, 3)).astype("float32")
    reference = _model()
    reference.set_weights(model.get_weights())
    lr, l = 0.1, 0.5
    reference.compile(keras.optimizers.SGD(lr), "mse")
    reference.train_on_batch(x, y)
    model.compile(ks.optimizers.Proximal(keras.optimizers.SGD(lr), "l1", l=l), "mse")
    model.train_on_batch(x, y)
    for ours, ref in zip(model.layers, reference.layers):
        np.testing.assert_allclose(
            to_np(ours.kernel), np_soft(to_np(ref.kernel), lr * l), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(to_np(ours.bias), to_np(ref.bias), rtol=1e-6)
    assert (to_np(model.layers[0].kernel) == 0).any()


def test_group_lasso_zeroes_whole_units_and_only_selected_variables(rng):
    model = _model()
    x = rng.normal(size=(32, 6)).astype("float32")
    y = rng.normal(size=(32, 3)).astype("float32")
    optimizer = ks.optimizers.Proximal(
        keras.optimizers.SGD(0.1), ks.regularizers.GroupLasso(groups="units"), l=2.0,
        variables=ks.optimizers.kernels(model, exclude="out"))
    model.compile(optimizer, "mse")
    model.fit(x, y, epochs=3, batch_size=8, verbose=0)
    hidden = to_np(model.get_layer("hidden").kernel)
    columns_zero = (hidden == 0).all(axis=0)
    assert columns_zero.all()                      # a strong penalty empties every unit
    assert (to_np(model.get_layer("out").kernel) != 0).all()   # excluded
    assert [v.path for v in optimizer.penalized_variables] == [
        model.get_layer("hidden").kernel.path]
    assert optimizer.sparsity() == 1.0
    values, norms = optimizer.penalized_values()
    np.testing.assert_array_equal(values[0], hidden)
    assert norms[0].shape == (5,) and np.all(norms[0] == 0)


def test_hold_support_keeps_zeros_while_the_rest_trains(rng):
    model = _model()
    x = rng.normal(size=(32, 6)).astype("float32")
    y = rng.normal(size=(32, 3)).astype("float32")
    optimizer = ks.optimizers.Proximal(keras.optimizers.Adam(1e-2), "l1", l=0.0)
    model.compile(optimizer, "mse")
    model.train_on_batch(x, y)
    kernel = model.get_layer("hidden").kernel
    value = to_np(kernel).copy()
    value[:, :2] = 0.0
    kernel.assign(value)
    optimizer.hold_support(True)
    model.fit(x, y, epochs=2, batch_size=8, verbose=0)
    after = to_np(kernel)
    assert np.all(after[:, :2] == 0)
    assert np.all(after[:, 2:] != value[:, 2:])
    optimizer.hold_support(False)
    model.fit(x, y, epochs=1, batch_size=8, verbose=0)
    assert (to_np(kernel)[:, :2] != 0).any()


def test_prox_runs_on_update_steps_only_with_gradient_accumulation(rng):
    model = _model()
    x = rng.normal(size=(8, 6)).astype("float32")
    y = rng.normal(size=(8, 3)).astype("float32")
    inner = keras.optimizers.SGD(0.0, gradient_accumulation_steps=2)
    model.compile(ks.optimizers.Proximal(inner, "l1", l=1.0), "mse")
    inner.learning_rate = 0.1
    before = to_np(model.get_layer("hidden").kernel).copy()
    model.train_on_batch(x, y)          # accumulates only: no update, no prox
    np.testing.assert_array_equal(to_np(model.get_layer("hidden").kernel), before)


def test_config_and_keras_file_round_trip(tmp_path, rng):
    model = _model()
    optimizer = ks.optimizers.Proximal(
        keras.optimizers.Adam(1e-3), ks.regularizers.GroupLasso(groups="inputs"), l=0.25,
        variables=ks.optimizers.kernels(model, exclude="out"))
    model.compile(optimizer, "mse")
    x = rng.normal(size=(8, 6)).astype("float32")
    model.train_on_batch(x, rng.normal(size=(8, 3)).astype("float32"))
    optimizer.coefficient.assign(0.75)
    optimizer.hold_support(True)
    config = keras.saving.serialize_keras_object(optimizer)
    clone = keras.saving.deserialize_keras_object(config)
    assert isinstance(clone, ks.optimizers.Proximal)
    assert clone.penalty.groups == "inputs" and clone.initial_coefficient == 0.25
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded.optimizer, ks.optimizers.Proximal)
    assert float(to_np(loaded.optimizer.coefficient)) == pytest.approx(0.75)
    assert len(loaded.optimizer.variables) == len(optimizer.variables)
    for a, b in zip(loaded.optimizer.variables, optimizer.variables):
        np.testing.assert_array_equal(to_np(a), to_np(b))
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"penalty": "l2"}, "penalty='l2'"),
        ({"penalty": keras.regularizers.L2(0.1)}, "penalty="),
        ({"l": -1.0}, "l=-1.0"),
        ({"l": "big"}, "l='big'"),
        ({"optimizer": "nope"}, "optimizer='nope'"),
        ({"variables": 3}, "predicate=3"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        ks.optimizers.Proximal(**kwargs)


def test_rejects_wrapping_twice_and_built_optimizers():
    with pytest.raises(ValueError, match="already a Proximal"):
        ks.optimizers.Proximal(ks.optimizers.Proximal())
    built = keras.optimizers.SGD()
    built.build([keras.Variable(np.zeros((2, 2), "float32"))])
    with pytest.raises(ValueError, match="already built"):
        ks.optimizers.Proximal(built)


def test_no_selected_variable_is_an_error():
    model = _model()
    optimizer = ks.optimizers.Proximal(
        "sgd", "l1", variables=ks.optimizers.PathMatches("no_such_variable"))
    with pytest.raises(ValueError, match="no trainable variable"):
        optimizer.build(model.trainable_variables)


def test_kernels_predicate_rejects_unknown_layers():
    model = _model()
    with pytest.raises(ValueError, match="does not have"):
        ks.optimizers.kernels(model, exclude="missing")
    predicate = ks.optimizers.kernels(model, exclude=["out"])
    assert predicate(model.get_layer("hidden").kernel)
    assert not predicate(model.get_layer("out").kernel)
    assert not predicate(model.get_layer("hidden").bias)


def test_keras_l1_instance_is_accepted_and_is_still_keras_l1():
    optimizer = ks.optimizers.Proximal("sgd", keras.regularizers.L1(0.3))
    assert isinstance(optimizer.penalty, keras.regularizers.L1)
    assert optimizer.initial_coefficient == pytest.approx(0.3)
    assert float(to_np(ks.regularizers.L1(0.2)(np.array([1.0, -2.0])))) == pytest.approx(0.6)


def test_kernels_predicate_on_a_functional_model():
    """Functional variables have no model name in their paths."""
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    h = keras.layers.Flatten()(h)
    model = keras.Model(inputs, keras.layers.Dense(10, name="logits")(h))
    predicate = ks.optimizers.kernels(model, exclude="logits")
    assert predicate(model.get_layer("conv").kernel)
    assert not predicate(model.get_layer("logits").kernel)
