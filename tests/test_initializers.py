import json

import keras
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from keras import ops

import keras_sparse as ks
from keras_sparse.initializers import SparseInitializer


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 40), st.integers(1, 40), st.floats(0.0, 0.95))
@example(1, 1, 0.75)
def test_exact_zero_count(rows, cols, sparsity):
    value = np.asarray(ops.convert_to_numpy(
        SparseInitializer("ones", sparsity, seed=3)((rows, cols))))
    # round(sparsity * n) with n the entry count (0.9 * 31 * 35 rounds the other way),
    # and at least one entry kept (a 1x1 kernel at 0.75 keeps its weight).
    n = rows * cols
    assert (value == 0).sum() == min(int(round(sparsity * n)), n - 1)


def test_survivors_are_rescaled_to_keep_variance():
    base = keras.initializers.RandomNormal(stddev=1.0, seed=1)
    value = np.asarray(ops.convert_to_numpy(SparseInitializer(base, 0.75, seed=0)((400, 400))))
    survivors = value[value != 0]
    np.testing.assert_allclose(survivors.std(), 1.0 / np.sqrt(0.25), rtol=0.03)
    # Variance of a unit's pre-activation matches the dense initializer's.
    np.testing.assert_allclose((value ** 2).sum(0).mean(), 400.0, rtol=0.05)
    unscaled = np.asarray(ops.convert_to_numpy(
        SparseInitializer("ones", 0.75, seed=0, rescale=False)((4, 4))))
    assert set(np.unique(unscaled)) <= {0.0, 1.0}


def test_sparse_layer_mask_matches_initial_zeros_and_stays_through_fit():
    init = SparseInitializer("he_normal", 0.8, seed=0)
    layer = ks.layers.SparseDense(16, kernel_initializer=init)
    model = keras.Sequential([keras.Input((32,)), layer, keras.layers.Dense(1)])
    kernel = ops.convert_to_numpy(layer.latent_weight("kernel"))
    mask = ops.convert_to_numpy(layer.get_mask("kernel"))
    np.testing.assert_array_equal(mask, kernel != 0)
    assert layer.sparsity == pytest.approx(0.8, abs=1 / 512)
    model.compile("adam", "mse")
    x = np.random.rand(64, 32).astype("float32")
    model.fit(x, x[:, :1], epochs=2, verbose=0)
    assert not ops.convert_to_numpy(layer.effective_weight("kernel"))[~mask].any()


def test_config_round_trip_and_bad_sparsity():
    init = SparseInitializer("he_normal", 0.5, seed=4)
    back = keras.saving.deserialize_keras_object(
        json.loads(json.dumps(keras.saving.serialize_keras_object(init))))
    np.testing.assert_array_equal(np.asarray(back((5, 5)) != 0), np.asarray(init((5, 5)) != 0))
    with pytest.raises(ValueError, match="sparsity"):
        SparseInitializer("ones", 1.0)
    with pytest.raises(ValueError, match="seed='a'"):
        SparseInitializer("ones", 0.5, seed="a")
    with pytest.raises(ValueError, match="rescale='no'"):
        SparseInitializer("ones", 0.5, rescale="no")
