"""Truncated-SVD factors and ks.factorize: Eckart-Young error, energy rank
against numpy, conversion only where it saves, exact on planted low-rank
kernels, bad arguments."""

import keras
import numpy as np
import pytest
from conftest import to_np
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

import keras_sparse as ks
from keras_sparse.ops import lowrank

ZERO = {"kernel_initializer": "zeros"}


def numpy_energy_rank(s, energy):
    power = np.asarray(s, dtype="float64") ** 2
    fraction = np.cumsum(power) / power.sum()
    return int(np.argmax(fraction >= energy - 1e-12) + 1)


# ----------------------------------------------------------------- floor 1
@settings(max_examples=20)
@given(m=st.integers(2, 12), n=st.integers(2, 12), seed=st.integers(0, 10_000), data=st.data())
def test_eckart_young_error_equals_discarded_singular_values(m, n, seed, data):
    rank = data.draw(st.integers(1, min(m, n)))
    w = np.random.default_rng(seed).standard_normal((m, n)).astype("float32")
    a, b = lowrank.lowrank_factors(w, rank)
    residual = w.astype("float64") - to_np(a).astype("float64") @ to_np(b).astype("float64")
    s = np.linalg.svd(w.astype("float64"), compute_uv=False)
    np.testing.assert_allclose(np.sum(residual**2), np.sum(s[rank:] ** 2), rtol=1e-4, atol=1e-4)
    spectral = np.linalg.norm(residual, 2)
    np.testing.assert_allclose(spectral, s[rank] if rank < len(s) else 0.0, rtol=1e-4, atol=1e-4)
    assert to_np(a).shape == (m, rank) and to_np(b).shape == (rank, n)


@settings(max_examples=30)
@given(
    values=st.lists(st.floats(0.0, 100.0, allow_nan=False), min_size=1, max_size=20),
    energy=st.floats(0.01, 1.0),
)
def test_rank_for_energy_matches_numpy(values, energy):
    s = np.sort(np.asarray(values))[::-1]
    if s.sum() == 0:
        assert lowrank.rank_for_energy(s, energy) == 1
        return
    assert lowrank.rank_for_energy(s, energy) == numpy_energy_rank(s, energy)


def test_rank_for_energy_bad_energy():
    for energy in (0.0, -0.1, 1.5, "0.9", True):
        with pytest.raises(ValueError, match="energy"):
            lowrank.rank_for_energy([3.0, 1.0], energy)


def test_check_rank():
    assert lowrank.check_rank(2, (4, 5)) == 2
    for rank in (0, 4, 5, 2.0, True):
        with pytest.raises(ValueError, match="rank"):
            lowrank.check_rank(rank, (4, 5))
    assert lowrank.check_rank(4, (4, 5), allow_full=True) == 4


# ------------------------------------------------------------ ks.factorize
def planted(rng, shape, rank):
    """A kernel whose (fan_in, out) view has exactly ``rank``."""
    fan_in = int(np.prod(shape[:-1]))
    left = rng.standard_normal((fan_in, rank))
    right = rng.standard_normal((rank, shape[-1]))
    return ((left @ right) / np.sqrt(fan_in * rank)).reshape(shape).astype("float32")


def make_model(rng):
    inputs = keras.Input((8, 8, 4))
    h = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv", **ZERO)(inputs)
    h = keras.layers.Flatten(name="flat")(h)
    h = keras.layers.Dense(64, activation="relu", name="dense", **ZERO)(h)
    h = keras.layers.Dense(3, name="tiny", **ZERO)(h)
    model = keras.Model(inputs, h)
    model.get_layer("conv").set_weights([planted(rng, (3, 3, 4, 16), 4), rng.standard_normal(16).astype("float32")])
    model.get_layer("dense").set_weights([planted(rng, (1024, 64), 6), rng.standard_normal(64).astype("float32")])
    model.get_layer("tiny").set_weights([rng.standard_normal((64, 3)).astype("float32") / 8, np.zeros(3, "float32")])
    return model


def test_planted_low_rank_is_exact_and_only_saving_layers_convert(tmp_path, rng):
    model = make_model(rng)
    before = [to_np(w).copy() for w in model.weights]
    small, info = ks.factorize(model, energy=0.999, return_info=True)
    assert info["conv"]["rank"] == 4 and info["conv"]["status"] == "factorized"
    assert info["dense"]["rank"] == 6 and info["dense"]["status"] == "factorized"
    # 64x3 at the rank keeping 99.9 %: 3 * (64 + 3) > 64 * 3, no saving
    assert info["tiny"]["status"].startswith("skipped")
    assert type(small.get_layer("conv")) is ks.layers.LowRankConv2D
    assert type(small.get_layer("dense")) is ks.layers.LowRankDense
    assert type(small.get_layer("tiny")) is keras.layers.Dense
    x = rng.standard_normal((4, 8, 8, 4)).astype("float32")
    np.testing.assert_allclose(to_np(small(x)), to_np(model(x)), atol=1e-4)
    expected = (36 * 4 + 4 * 16 + 16) + (1024 * 6 + 6 * 64 + 64) + (64 * 3 + 3)
    assert small.count_params() == expected
    assert ks.report(small, print_fn=None).totals["params"] == expected
    for old, new in zip(before, model.weights):
        np.testing.assert_array_equal(old, to_np(new))
    path = str(tmp_path / "factorized.keras")
    small.save(path)
    np.testing.assert_allclose(to_np(keras.saving.load_model(path)(x)), to_np(small(x)), atol=1e-6)


def test_energy_rank_and_error_match_numpy(rng):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((20,)), keras.layers.Dense(30, name="d", **ZERO)])
    kernel = rng.standard_normal((20, 30)).astype("float32")
    model.get_layer("d").set_weights([kernel, np.zeros(30, "float32")])
    s = np.linalg.svd(kernel.astype("float64"), compute_uv=False)
    for energy in (0.5, 0.8, 0.9):
        _, info = ks.factorize(model, energy=energy, return_info=True)
        rank = numpy_energy_rank(s, energy)
        row = info["d"]
        assert row["rank"] == rank
        np.testing.assert_allclose(row["error"], np.sqrt(np.sum(s[rank:] ** 2)), rtol=1e-4)
        np.testing.assert_allclose(row["energy"], np.sum(s[:rank] ** 2) / np.sum(s**2), rtol=1e-5)
        assert row["status"] == ("factorized" if rank * 50 < 600 else "skipped: no saving at this rank")


def test_explicit_rank_reproduces_truncated_svd(rng):
    model = keras.Sequential([keras.Input((12,)), keras.layers.Dense(10, activation="tanh", name="d", **ZERO)])
    kernel = rng.standard_normal((12, 10)).astype("float32")
    bias = rng.standard_normal(10).astype("float32")
    model.get_layer("d").set_weights([kernel, bias])
    small = ks.factorize(model, rank=3)
    u, s, vt = np.linalg.svd(kernel.astype("float64"), full_matrices=False)
    best = (u[:, :3] * s[:3]) @ vt[:3]
    x = rng.standard_normal((5, 12)).astype("float32")
    np.testing.assert_allclose(to_np(small(x)), np.tanh(x @ best + bias), atol=1e-5)
    per_layer = ks.factorize(model, rank={"d": 2}, return_info=True)[1]
    assert per_layer["d"]["rank"] == 2


def test_sparse_layers_use_effective_weights_and_quantizer_is_accepted(rng):
    model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(16, name="d", **ZERO)])
    model.get_layer("d").set_weights([rng.standard_normal((16, 16)).astype("float32"),
                                      np.zeros(16, "float32")])
    pruned = ks.prune(model, 0.5, pattern="channel")
    pruned.get_layer("d").prune_to(0.5)  # 8 zero columns: rank <= 8
    small, info = ks.factorize(pruned, energy=1.0, return_info=True)
    assert info["d"]["rank"] == 8
    x = rng.standard_normal((3, 16)).astype("float32")
    np.testing.assert_allclose(to_np(small(x)), to_np(pruned(x)), atol=1e-4)
    quantized = ks.factorize(model, rank=4, kernel_quantizer=8)
    layer = quantized.get_layer("d")
    assert isinstance(layer.kernel_quantizer, ks.quantizers.Uniform)
    assert layer.get_config()["kernel_quantizer"] is not None


@pytest.mark.parametrize("rank", [0, -2, 2.5, True, "4"], ids=repr)
def test_bad_rank_names_the_rank_not_an_invented_weight(rng, rank):
    with pytest.raises(ValueError) as info:
        ks.factorize(make_model(rng), rank=rank)
    message = str(info.value)
    assert f"rank={rank!r}" in message
    assert "(1, 1)" not in message and "shape" not in message


def test_bad_arguments(rng):
    model = make_model(rng)
    with pytest.raises(ValueError, match="rank"):
        ks.factorize(model, rank=3, layers=["tiny"])  # rank >= min(64, 3)
    with pytest.raises(ValueError, match="rank"):
        ks.factorize(model, rank=0)
    with pytest.raises(ValueError, match="energy"):
        ks.factorize(model, energy=1.2)
    with pytest.raises(ValueError, match="cannot be factorized"):
        ks.factorize(model, layers=["flat"])
    with pytest.raises(ValueError, match="not selected"):
        ks.factorize(model, rank={"nope": 2})
    with pytest.raises(ValueError, match="kernel_quantizer"):
        ks.factorize(model, kernel_quantizer="nope")

    class Sub(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(ValueError, match="Sequential and functional"):
        ks.factorize(Sub())
