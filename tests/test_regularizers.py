import json

import keras
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from keras import ops

import keras_sparse as ks
from conftest import backend_grad
from keras_sparse import regularizers as R


def _ref_group_lasso(w, l, groups):
    axis = w.ndim - 1 if groups in ("units", "filters") else w.ndim - 2
    moved = np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)
    return l * np.sqrt(moved.shape[1]) * np.sqrt((moved ** 2).sum(1)).sum()


def _ref_group_lasso_grad(w, l, groups):
    axis = w.ndim - 1 if groups in ("units", "filters") else w.ndim - 2
    moved = np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)
    norms = np.sqrt((moved ** 2).sum(1, keepdims=True))
    grad = l * np.sqrt(moved.shape[1]) * moved / norms
    shape = np.moveaxis(w, axis, 0).shape
    return np.moveaxis(grad.reshape(shape), 0, axis)


def _grad(fn, w):
    return backend_grad(fn, [w])[0]


@pytest.mark.parametrize("groups", ["units", "filters", "inputs"])
@pytest.mark.parametrize("shape", [(6, 4), (3, 3, 5, 4)])
def test_group_lasso_value_and_gradient_match_numpy(groups, shape):
    w = np.random.default_rng(0).normal(size=shape).astype("float32")
    reg = R.GroupLasso(0.01, groups)
    np.testing.assert_allclose(float(reg(w)), _ref_group_lasso(w, 0.01, groups), rtol=1e-5)
    np.testing.assert_allclose(_grad(reg, w), _ref_group_lasso_grad(w, 0.01, groups),
                               rtol=1e-4, atol=1e-7)


def test_inputs_groups_are_rows_of_a_dense_kernel():
    w = np.zeros((5, 3), "float32")
    w[2, :] = [3.0, 4.0, 0.0]  # one input feature (a row), norm 5
    norms = ops.convert_to_numpy(R.group_norms(w, "inputs"))
    np.testing.assert_allclose(norms, [0, 0, 5, 0, 0])
    np.testing.assert_allclose(float(R.GroupLasso(1.0, "inputs")(w)), np.sqrt(3) * 5, rtol=1e-6)
    np.testing.assert_allclose(float(R.GroupLasso(1.0, "units")(w)),
                               np.sqrt(5) * (3 + 4), rtol=1e-6)


def test_gradient_is_finite_at_a_zero_group():
    w = np.zeros((4, 2), "float32")
    assert np.isfinite(_grad(R.GroupLasso(0.1), w)).all()


def test_group_lasso_config_round_trip_and_aliases():
    reg = R.GroupLasso(0.5, "inputs")
    text = json.dumps(keras.saving.serialize_keras_object(reg))
    back = keras.saving.deserialize_keras_object(json.loads(text))
    assert isinstance(back, R.GroupLasso) and back.get_config() == reg.get_config()
    assert isinstance(R.get("group_lasso"), R.GroupLasso)
    assert isinstance(R.get("l1"), keras.regularizers.L1)
    assert issubclass(R.L1, keras.regularizers.L1)


@pytest.mark.parametrize("kwargs, arg", [
    ({"l": -1.0}, "l="), ({"groups": "rows"}, "groups="),
    ({"epsilon": -1e-3}, "epsilon=-0.001"), ({"epsilon": "tiny"}, "epsilon='tiny'"),
])
def test_bad_arguments_raise(kwargs, arg):
    with pytest.raises(ValueError, match=arg):
        R.GroupLasso(**kwargs)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 6), st.integers(1, 6), st.floats(0.0, 2.0))
def test_group_lasso_is_nonnegative_and_homogeneous(rows, cols, scale):
    w = np.random.default_rng(rows * 7 + cols).normal(size=(rows, cols)).astype("float32")
    reg = R.GroupLasso(0.3, "units", epsilon=0.0)
    value = float(reg(w))
    assert value >= 0
    np.testing.assert_allclose(float(reg(w * scale)), scale * value, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("l", [-1.0, float("nan"), "1e-4"])
def test_slimming_rejects_bad_coefficient(l):
    model = keras.Sequential([keras.Input((4,)), keras.layers.BatchNormalization()])
    with pytest.raises(ValueError, match="l="):
        R.slimming(model, l)


def test_numpy_scalar_coefficients_are_accepted():
    reg = R.GroupLasso(np.float32(1e-3), "units")
    assert reg.l == pytest.approx(1e-3) and type(reg.l) is float
    model = keras.Sequential([keras.Input((4,)), keras.layers.BatchNormalization()])
    (bn,) = R.slimming(model, np.float64(1e-4))
    assert float(bn.gamma_regularizer.l1) == pytest.approx(1e-4)


def test_threshold_groups_masks_small_units_exactly():
    layer = ks.layers.SparseDense(4, masked=True)
    layer.build((None, 3))
    kernel = np.array([[1.0, 1e-6, 2.0, 0.0], [1.0, -1e-6, 2.0, 0.0], [1.0, 0.0, 2.0, 0.0]], "float32")
    layer.latent_weight("kernel").assign(kernel)
    model = keras.Sequential([keras.Input((3,)), layer])
    removed = R.threshold_groups(model, 1e-3, groups="units")
    assert removed == {layer.name: 0.5}
    mask = ops.convert_to_numpy(layer.get_mask("kernel"))
    np.testing.assert_array_equal(mask, np.array([[1, 0, 1, 0]] * 3, bool))
    assert not ops.convert_to_numpy(layer.latent_weight("kernel"))[:, 1].any()


@pytest.mark.slow
def test_slimming_adds_l1_on_gamma_to_the_loss():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3),
                              keras.layers.BatchNormalization(), keras.layers.Dense(1)])
    bn = R.slimming(model, 1e-2)
    assert len(bn) == 1
    gamma = ops.convert_to_numpy(bn[0].gamma)
    np.testing.assert_allclose(float(sum(ops.convert_to_numpy(x) for x in model.losses)),
                               1e-2 * np.abs(gamma).sum(), rtol=1e-6)
    config = model.layers[1].get_config()
    assert config["gamma_regularizer"]["class_name"] == "L1"
    model.compile("sgd", "mse")
    x = np.random.rand(32, 4).astype("float32")
    model.fit(x, x[:, :1], epochs=1, verbose=0)
