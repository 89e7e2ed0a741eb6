"""Column sampling: ColumnSampledDense, leverage scores against numpy,
sample_columns with least-squares refit, and shrink removing the producers
of unused features (model inputs included)."""

import json

import keras
import numpy as np
import pytest
from conftest import to_np
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

import keras_sparse as ks
from keras_sparse.column_sampling import least_squares_refit
from keras_sparse.layers.column_sampled import resolve_keep
from keras_sparse.ops import lowrank

ZERO = {"kernel_initializer": "zeros"}


def numpy_leverage(w, k):
    u, _, _ = np.linalg.svd(np.asarray(w, dtype="float64"), full_matrices=False)
    return np.sum(u[:, :k] ** 2, axis=1)


# ----------------------------------------------------------------- floor 1
@settings(max_examples=20)
@given(m=st.integers(2, 15), n=st.integers(1, 10), seed=st.integers(0, 10_000), data=st.data())
def test_leverage_scores_match_numpy_svd(m, n, seed, data):
    k = data.draw(st.integers(1, min(m, n)))
    w = np.random.default_rng(seed).standard_normal((m, n)).astype("float32")
    scores = to_np(lowrank.leverage_scores(w, k))
    np.testing.assert_allclose(scores, numpy_leverage(w, k), atol=1e-4)
    np.testing.assert_allclose(scores.sum(), k, atol=1e-4)
    assert np.all(scores >= -1e-6) and np.all(scores <= 1 + 1e-5)


@settings(max_examples=20)
@given(m=st.integers(2, 15), n=st.integers(1, 8), seed=st.integers(0, 10_000), data=st.data())
def test_select_columns_keeps_exactly_keep_features(m, n, seed, data):
    keep = data.draw(st.integers(1, m))
    w = np.random.default_rng(seed).standard_normal((m, n)).astype("float32")
    for method in lowrank.COLUMN_METHODS:
        chosen = lowrank.select_columns(w, keep, method, seed=seed)
        assert len(chosen) == keep == len(set(chosen.tolist()))
        assert list(chosen) == sorted(chosen) and chosen.min() >= 0 and chosen.max() < m
    norms = np.linalg.norm(w.astype("float64"), axis=1)
    expected = np.sort(np.lexsort((np.arange(m), -norms))[:keep])
    np.testing.assert_array_equal(lowrank.select_columns(w, keep, "norm"), expected)
    k = min(keep, n)
    leverage = numpy_leverage(w, k)
    chosen = lowrank.select_columns(w, keep, "leverage")
    # every kept feature scores at least as high as every dropped one
    dropped = np.setdiff1d(np.arange(m), chosen)
    if dropped.size:
        assert leverage[chosen].min() >= leverage[dropped].max() - 1e-5


def test_random_method_is_seeded():
    w = np.ones((20, 3), "float32")
    a = lowrank.select_columns(w, 5, "random", seed=3)
    assert np.array_equal(a, lowrank.select_columns(w, 5, "random", seed=3))
    assert not np.array_equal(a, lowrank.select_columns(w, 5, "random", seed=4))


@pytest.mark.parametrize("keep", [0, -1, 11, 0.0, 1.5, "3", True, None])
def test_bad_keep_raises(keep):
    with pytest.raises(ValueError, match="keep"):
        resolve_keep(keep, 10)
    with pytest.raises(ValueError, match="keep"):
        lowrank.select_columns(np.ones((10, 2)), keep if not isinstance(keep, float) else 11, "norm")


def test_resolve_keep():
    assert resolve_keep(0.5, 10) == 5
    assert resolve_keep(0.01, 10) == 1
    assert resolve_keep(1.0, 7) == 7
    assert resolve_keep(3, 10) == 3


# ----------------------------------------------------------------- layer
def test_column_sampled_dense_forward_and_state(tmp_path, rng):
    layer = ks.layers.ColumnSampledDense(4, keep=0.25, method="norm", activation="relu", name="cs")
    x = rng.standard_normal((6, 16)).astype("float32")
    layer(x)
    assert tuple(layer.kernel.shape) == (4, 4) and tuple(layer.column_indices.shape) == (4,)
    indices = np.array([9, 1, 14, 3])
    kernel = rng.standard_normal((4, 4)).astype("float32")
    bias = rng.standard_normal(4).astype("float32")
    layer.set_columns(indices, kernel, bias)
    order = np.argsort(indices)
    np.testing.assert_array_equal(layer.kept_features, np.sort(indices))
    expected = np.maximum(x[:, indices[order]] @ kernel[order] + bias, 0.0)
    np.testing.assert_allclose(to_np(layer(x)), expected, atol=1e-5)
    full = layer.full_kernel()
    assert full.shape == (16, 4) and np.count_nonzero(np.any(full != 0, axis=1)) == 4
    model = keras.Sequential([keras.Input((16,)), layer])
    json.dumps(keras.saving.serialize_keras_object(layer))
    path = str(tmp_path / "cs.keras")
    model.save(path)
    reloaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(to_np(reloaded(x)), to_np(model(x)))
    np.testing.assert_array_equal(reloaded.layers[-1].kept_features, np.sort(indices))
    row = ks.report(model, print_fn=None).rows[0]
    assert row["effective_flops"] == 2 * 4 * 4 and row["params"] == 4 * 4 + 4 + 4


@pytest.mark.parametrize("keep", [0, -3, np.int64(0)], ids=repr)
def test_unbuilt_layer_bad_keep_names_keep_and_no_feature_count(keep):
    # The input size is not known yet: the message must not invent one.
    with pytest.raises(ValueError) as info:
        ks.layers.ColumnSampledDense(4, keep=keep)
    message = str(info.value)
    assert f"keep={keep}" in message
    assert "input features)" not in message and "[1, " not in message


def test_built_layer_bad_keep_names_the_real_feature_count():
    with pytest.raises(ValueError) as info:
        ks.layers.ColumnSampledDense(3, keep=9)(np.zeros((1, 8), "float32"))
    assert "keep=9" in str(info.value) and "8 input features" in str(info.value)


def test_column_sampled_dense_bad_arguments():
    with pytest.raises(ValueError, match="keep"):
        ks.layers.ColumnSampledDense(3, keep=0)
    with pytest.raises(ValueError, match="method"):
        ks.layers.ColumnSampledDense(3, keep=2, method="svd")
    with pytest.raises(ValueError, match="keep"):
        ks.layers.ColumnSampledDense(3, keep=9)(np.zeros((1, 8), "float32"))
    layer = ks.layers.ColumnSampledDense(3, keep=2, **ZERO)
    layer(np.zeros((1, 8), "float32"))
    with pytest.raises(ValueError, match="indices"):
        layer.set_columns([1, 1], np.zeros((2, 3)))
    with pytest.raises(ValueError, match="indices"):
        layer.set_columns([1, 8], np.zeros((2, 3)))


# --------------------------------------------------------- sample_columns
def planted_problem(rng, n=400, features=32, latent=4):
    """Inputs that live in a ``latent``-dimensional subspace: a few kept
    features can reproduce the layer's output exactly after a refit."""
    z = rng.standard_normal((n, latent))
    x = (z @ rng.standard_normal((latent, features))).astype("float32")
    model = keras.Sequential([
        keras.Input((features,)),
        keras.layers.Dense(10, activation="tanh", name="first", **ZERO),
        keras.layers.Dense(3, name="out", **ZERO),
    ])
    model.get_layer("first").set_weights([
        (rng.standard_normal((features, 10)) / np.sqrt(features)).astype("float32"),
        rng.standard_normal(10).astype("float32") * 0.1,
    ])
    model.get_layer("out").set_weights([rng.standard_normal((10, 3)).astype("float32") * 0.3,
                                        np.zeros(3, "float32")])
    return model, x


def test_refit_lowers_output_error_on_planted_low_rank_problem(rng):
    model, x = planted_problem(rng)
    plain, plain_info = ks.sample_columns(model, 8, "leverage", layers=["first"], return_info=True)
    refit, info = ks.sample_columns(model, 8, "leverage", data=x, layers=["first"], ridge=0.0,
                                    return_info=True)
    assert len(info["first"]["kept"]) == len(plain_info["first"]["kept"]) == 8
    # same kept features, without and with the refit
    before, after = info["first"]["error_before_refit"], info["first"]["error_after_refit"]
    assert after < 1e-4 < before  # 8 features span the 4-dim input subspace
    error = lambda m: float(np.abs(to_np(m(x)) - to_np(model(x))).max())  # noqa: E731
    assert error(refit) < 1e-3 < error(plain)


def test_data_weights_features_by_their_scale(rng):
    # Feature 0 has the largest kernel row but is always 0 in the data.
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, name="d", **ZERO)])
    kernel = np.array([[9.0, 9.0], [1.0, 0.5], [0.2, 0.1], [0.6, 0.9]], "float32")
    model.get_layer("d").set_weights([kernel, np.zeros(2, "float32")])
    x = rng.standard_normal((64, 4)).astype("float32")
    x[:, 0] = 0.0
    _, without = ks.sample_columns(model, 2, "norm", return_info=True)
    _, with_data = ks.sample_columns(model, 2, "norm", data=x, return_info=True)
    assert 0 in without["d"]["kept"]
    assert with_data["d"]["kept"] == [1, 3]


def test_least_squares_refit_matches_numpy(rng):
    x = rng.standard_normal((50, 6))
    z = rng.standard_normal((50, 2))
    kernel, bias = least_squares_refit(x, z, [0, 2, 5])
    design = np.concatenate([x[:, [0, 2, 5]], np.ones((50, 1))], axis=1)
    reference = np.linalg.lstsq(design, z, rcond=None)[0]
    np.testing.assert_allclose(kernel, reference[:-1], atol=1e-10)
    np.testing.assert_allclose(bias, reference[-1], atol=1e-10)
    # ridge: the normal equations with the penalty on the kernel only
    kernel, bias = least_squares_refit(x, z, [0, 2, 5], ridge=0.1)
    gram = design.T @ design
    penalty = np.diag([0.1 * np.trace(gram[:3, :3]) / 3] * 3 + [0.0])
    reference = np.linalg.solve(gram + penalty, design.T @ z)
    np.testing.assert_allclose(kernel, reference[:-1], atol=1e-10)
    np.testing.assert_allclose(bias, reference[-1], atol=1e-10)
    plain = least_squares_refit(x, z, [0, 2, 5])[0]
    assert np.linalg.norm(kernel) < np.linalg.norm(plain)


def test_sample_then_shrink_drops_inputs_and_producers(tmp_path, rng):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((20,)),
        keras.layers.Dense(12, activation="relu", name="h1", **ZERO),
        keras.layers.Dense(8, activation="relu", name="h2", **ZERO),
        keras.layers.Dense(3, name="out", **ZERO),
    ])
    for layer in model.layers:
        kernel, bias = layer.get_weights()
        layer.set_weights([rng.standard_normal(kernel.shape).astype("float32") / 3,
                           rng.standard_normal(bias.shape).astype("float32") * 0.2])
    sampled, info = ks.sample_columns(model, {"h1": 10, "h2": 6}, "norm", return_info=True)
    assert [type(layer).__name__ for layer in sampled.layers] == ["ColumnSampledDense", "ColumnSampledDense", "Dense"]
    small, shrink_info = ks.shrink(sampled, return_info=True)
    kept_inputs = info["h1"]["kept"]
    name = next(iter(shrink_info.kept_inputs))
    assert shrink_info.kept_inputs[name] == kept_inputs
    assert shrink_info.dropped_inputs[name] == sorted(set(range(20)) - set(kept_inputs))
    # h1's units that h2 does not read are removed with their weights
    assert small.get_layer("h1").units == 6
    assert small.get_layer("h1").kernel.shape == (10, 6)
    x = rng.standard_normal((5, 20)).astype("float32")
    np.testing.assert_allclose(to_np(small(x[:, kept_inputs])), to_np(sampled(x)), atol=1e-5)
    assert all(type(layer) in (keras.layers.InputLayer, keras.layers.Dense) for layer in small.layers)
    with pytest.warns(UserWarning, match="removed input features"):
        ks.shrink(sampled)
    same_shape = ks.shrink(sampled, drop_inputs=False)
    assert tuple(same_shape.inputs[0].shape) == (None, 20)
    np.testing.assert_allclose(to_np(same_shape(x)), to_np(sampled(x)), atol=1e-5)


def test_sample_columns_bad_arguments(rng):
    model, _ = planted_problem(rng)
    with pytest.raises(ValueError, match="keep"):
        ks.sample_columns(model, 0)
    with pytest.raises(ValueError, match="keep"):
        ks.sample_columns(model, 33, layers=["first"])
    with pytest.raises(ValueError, match="keep"):
        ks.sample_columns(model, 1.5)
    with pytest.raises(ValueError, match="method"):
        ks.sample_columns(model, 4, method="cur")
    with pytest.raises(ValueError, match="ridge"):
        ks.sample_columns(model, 4, ridge=-1.0)
    with pytest.raises(ValueError, match="not selected"):
        ks.sample_columns(model, {"nope": 3})
    conv = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Conv2D(2, 3, name="c")])
    with pytest.raises(ValueError, match="Dense"):
        ks.sample_columns(conv, 1, layers=["c"])
    weights = [to_np(w).copy() for w in model.weights]
    ks.sample_columns(model, 4, data=rng.standard_normal((10, 32)).astype("float32"))
    for old, new in zip(weights, model.weights):
        np.testing.assert_array_equal(old, to_np(new))
