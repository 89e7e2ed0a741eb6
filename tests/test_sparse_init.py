"""Static sparse initialization: random masks from step 0 (uniform or ERK),
the variance-preserving rescale, the Martens-style ``FanIn`` pattern and
``ks.apply_initial_masks``."""

import math

import keras
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import keras_sparse as ks
from keras_sparse.ops import drop_grow
from keras_sparse.utils import sparse_layers

IN_OUT = ks.patterns.Layout((-2,), (-1,))


def _np(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


def _sync(model):
    if keras.backend.backend() == "jax":
        model.jax_state_sync()


def _mask(layer, name="kernel"):
    return _np(layer.get_mask(name)).astype(bool)


def _latent(layer, name="kernel"):
    return _np(layer.latent_weight(name)).copy()


def _erk_reference(shapes, density):
    """ERK densities with the saturation re-solve, in plain numpy."""
    sizes = np.array([math.prod(s) for s in shapes], dtype=np.float64)
    raw = np.array([sum(s) / math.prod(s) for s in shapes], dtype=np.float64)
    dense = np.zeros(len(shapes), bool)
    while True:
        budget = density * sizes.sum() - sizes[dense].sum()
        eps = budget / (raw[~dense] * sizes[~dense]).sum()
        over = ~dense & (eps * raw > 1.0)
        if not over.any():
            break
        dense |= over
    return np.where(dense, 1.0, eps * raw)


def _mlp(widths=(64, 300, 100, 10), seed=0):
    keras.utils.set_random_seed(seed)
    layers = [keras.Input((widths[0],))]
    layers += [keras.layers.Dense(w, activation="relu", name=f"d{i}")
               for i, w in enumerate(widths[1:-1])]
    layers += [keras.layers.Dense(widths[-1], name="out")]
    return keras.Sequential(layers)


class _AtFirstStep(keras.callbacks.Callback):
    """After ``Pruning``: the masks and weights the first step trains with."""

    def on_train_batch_begin(self, batch, logs=None):
        if not hasattr(self, "state"):
            _sync(self.model)
            self.state = [(_mask(l), _latent(l)) for l in sparse_layers(self.model)]


def _expected_rescaled(dense_kernel, mask):
    k = mask.sum(axis=0)
    return np.where(mask, dense_kernel * np.sqrt(mask.shape[0] / np.maximum(k, 1)), 0.0)


# ------------------------------------------------- ks.prune + OneShot(0)
@pytest.mark.slow
@pytest.mark.parametrize("sparsity", [0.9, 0.5])  # 0.5: the 100x10 layer saturates
def test_random_erk_static_init_in_fit(sparsity):
    model = _mlp()
    dense_kernels = [_np(layer.kernel) for layer in model.layers]
    shapes = [k.shape for k in dense_kernels]
    densities = _erk_reference(shapes, 1.0 - sparsity)
    assert (densities == 1.0).any() == (sparsity == 0.5)
    sparse = ks.prune(model, sparsity, schedule=ks.schedules.OneShot(0), scorer="random",
                      distribution="erk")
    sparse.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = np.random.RandomState(0).rand(64, 64).astype("float32")
    y = np.arange(64) % 10
    first = _AtFirstStep()
    sparse.fit(x, y, batch_size=32, epochs=2, verbose=0,
               callbacks=[ks.callbacks.Pruning(), first])
    for (mask, latent), kernel, density in zip(first.state, dense_kernels, densities):
        n = mask.size
        assert mask.sum() == n - round((1.0 - min(density, 0.999999)) * n)
        np.testing.assert_allclose(latent, _expected_rescaled(kernel, mask), rtol=1e-6)
    kept = sum(m.sum() for m, _ in first.state)
    total = sum(m.size for m, _ in first.state)
    assert abs(kept - (1.0 - sparsity) * total) <= len(shapes)
    # The masks stay fixed afterwards.
    for layer, (mask, _) in zip(sparse_layers(sparse), first.state):
        np.testing.assert_array_equal(_mask(layer), mask)


def test_uniform_random_init_every_layer_at_target():
    model = ks.prune(_mlp(), 0.8, schedule=ks.schedules.OneShot(0), scorer="random")
    ks.apply_initial_masks(model)
    for layer in sparse_layers(model):
        mask = _mask(layer)
        assert (~mask).sum() == round(0.8 * mask.size)


@pytest.mark.parametrize("distribution", ["uniform", "erk"])
def test_prune_applies_a_random_step_zero_mask_before_returning(distribution):
    model = _mlp((16, 24, 4))
    kernels = [_np(layer.kernel) for layer in model.layers]
    sparse = ks.prune(model, 0.75, schedule=ks.schedules.OneShot(0), scorer="random",
                      distribution=distribution)
    masks = [_mask(layer) for layer in sparse_layers(sparse)]
    kept = sum(int(m.sum()) for m in masks)
    total = sum(m.size for m in masks)
    assert abs(kept - 0.25 * total) <= len(masks)
    for layer, mask, kernel in zip(sparse_layers(sparse), masks, kernels):
        assert np.all(_np(layer.effective_weight("kernel"))[~mask] == 0.0)
        np.testing.assert_allclose(_latent(layer), _expected_rescaled(kernel, mask), rtol=1e-6)
    # Applying again changes nothing (no second rescale).
    ks.apply_initial_masks(sparse)
    for layer, mask, kernel in zip(sparse_layers(sparse), masks, kernels):
        np.testing.assert_array_equal(_mask(layer), mask)
        np.testing.assert_allclose(_latent(layer), _expected_rescaled(kernel, mask), rtol=1e-6)


def test_prune_leaves_masks_of_later_or_magnitude_schedules_to_the_callback():
    model = _mlp((16, 24, 4))
    later = ks.prune(model, 0.75, schedule=ks.schedules.ConstantSparsity(0.75, begin_step=10),
                     scorer="random")
    magnitude = ks.prune(model, 0.75, schedule=ks.schedules.OneShot(0))
    for sparse in (later, magnitude):
        assert all(_mask(layer).all() for layer in sparse_layers(sparse))


def test_random_masks_differ_between_layers_and_seeds():
    model = ks.prune(_mlp((32, 32, 32, 32)), 0.5, schedule=ks.schedules.OneShot(0),
                     scorer=ks.scorers.RandomScorer(seed=7))
    ks.apply_initial_masks(model)
    a, b = (_mask(layer) for layer in sparse_layers(model)[:2])
    assert not np.array_equal(a, b)
    again = ks.prune(_mlp((32, 32, 32, 32)), 0.5, schedule=ks.schedules.OneShot(0),
                     scorer=ks.scorers.RandomScorer(seed=7))
    ks.apply_initial_masks(again)
    np.testing.assert_array_equal(_mask(sparse_layers(again)[0]), a)


@pytest.mark.slow
def test_apply_initial_masks_is_consistent_with_the_callback():
    model = _mlp((16, 24, 4))
    kernels = [_np(layer.kernel) for layer in model.layers]
    sparse = ks.prune(model, 0.75, schedule=ks.schedules.OneShot(0), scorer="random",
                      distribution="erk")
    updated = ks.apply_initial_masks(sparse)
    assert len(updated) == 2
    applied = [(_mask(l), _latent(l)) for l in sparse_layers(sparse)]
    for (mask, latent), kernel in zip(applied, kernels):
        np.testing.assert_allclose(latent, _expected_rescaled(kernel, mask), rtol=1e-6)
    # Before fit: the effective kernel already has the zeros.
    for layer, (mask, _) in zip(sparse_layers(sparse), applied):
        assert np.all(_np(layer.effective_weight("kernel"))[~mask] == 0.0)
    assert ks.report(sparse, print_fn=None).totals["sparsity"] > 0.5
    # The callback's own step-0 update keeps them (no second rescale).
    sparse.compile("sgd", "mse")
    first = _AtFirstStep()
    sparse.fit(np.ones((8, 16), "float32"), np.zeros((8, 4)), epochs=1, verbose=0,
               callbacks=[ks.callbacks.Pruning(), first])
    for (mask, latent), (mask0, latent0) in zip(first.state, applied):
        np.testing.assert_array_equal(mask, mask0)
        np.testing.assert_allclose(latent, latent0, rtol=1e-6)


def test_variance_of_preactivations_is_preserved():
    keras.utils.set_random_seed(0)
    dense = keras.Sequential([keras.Input((1024,)), keras.layers.Dense(512, use_bias=False)])
    x = np.random.RandomState(1).randn(256, 1024).astype("float32")
    dense_var = _np(dense(x)).var()
    sparse = ks.prune(dense, 0.95, schedule=ks.schedules.OneShot(0), scorer="random")
    ks.apply_initial_masks(sparse)
    sparse_var = _np(sparse(x)).var()
    assert sparse_var == pytest.approx(dense_var, rel=0.05)
    plain = ks.prune(dense, 0.95, schedule=ks.schedules.OneShot(0),
                     scorer=ks.scorers.RandomScorer(rescale=False))
    ks.apply_initial_masks(plain)
    assert _np(plain(x)).var() == pytest.approx(0.05 * dense_var, rel=0.1)


# ------------------------------------------------------- floor-1 helpers
def test_unit_fan_in_and_variance_rescale_on_a_conv_kernel():
    rng = np.random.default_rng(0)
    before = rng.random((3, 3, 4, 5)) < 0.8
    after = before & (rng.random((3, 3, 4, 5)) < 0.5)
    after[..., 4] = False  # a unit left with no input
    k0 = before.reshape(-1, 5).sum(0)
    k1 = after.reshape(-1, 5).sum(0)
    np.testing.assert_array_equal(drop_grow.unit_fan_in(before), k0)
    factor = _np(drop_grow.variance_rescale(before, after))
    expected = np.where(k1 > 0, np.sqrt(k0 / np.maximum(k1, 1)), 1.0)
    np.testing.assert_allclose(factor, np.broadcast_to(expected, (3, 3, 4, 5)), rtol=1e-6)
    # Output units on another axis (ConvTranspose layout).
    np.testing.assert_array_equal(drop_grow.unit_fan_in(before, (-2,)),
                                  before.transpose(0, 1, 3, 2).reshape(-1, 4).sum(0))


def _fan_in_reference(scores, keep):
    flat = scores.reshape(-1, scores.shape[-1])
    mask = np.zeros_like(flat, bool)
    for unit in range(flat.shape[1]):
        order = np.argsort(-flat[:, unit], kind="stable")
        mask[order[:keep], unit] = True
    return mask.reshape(scores.shape)


@given(
    st.lists(st.integers(1, 5), min_size=1, max_size=3),
    st.integers(1, 6),
    st.data(),
)
def test_fan_in_mask_matches_numpy(in_shape, units, data):
    shape = tuple(in_shape) + (units,)
    fan_in = math.prod(in_shape)
    keep = data.draw(st.integers(1, fan_in))
    scores = np.random.default_rng(fan_in * 7 + units).integers(0, 4, shape).astype("float32")
    mask = _np(drop_grow.fan_in_mask(scores, keep))
    np.testing.assert_array_equal(mask.reshape(-1, units).sum(0), keep)
    np.testing.assert_array_equal(mask, _fan_in_reference(scores, keep))


def test_fan_in_mask_rejects_bad_keep():
    with pytest.raises(ValueError, match="keep=5"):
        drop_grow.fan_in_mask(np.ones((4, 2)), 5)


# ------------------------------------------------------------- FanIn
def test_fan_in_pattern_exact_k_per_unit():
    scores = np.random.default_rng(0).random((20, 7))
    mask = _np(ks.patterns.FanIn(3).mask(scores, 0.5, IN_OUT))
    np.testing.assert_array_equal(mask.sum(axis=0), 3)
    # The sparsity only switches it on.
    assert _np(ks.patterns.FanIn(3).mask(scores, 0.0, IN_OUT)).all()
    derived = _np(ks.patterns.FanIn().mask(scores, 0.9, IN_OUT))
    np.testing.assert_array_equal(derived.sum(axis=0), 2)  # round(0.1 * 20)
    tiny = _np(ks.patterns.FanIn().mask(scores, 0.99, IN_OUT))
    np.testing.assert_array_equal(tiny.sum(axis=0), 1)  # never a unit with no input


def test_fan_in_pattern_config_and_checks():
    pattern = ks.patterns.FanIn(15)
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(pattern))
    assert restored == pattern
    assert ks.patterns.get("fan_in") == ks.patterns.FanIn()
    with pytest.raises(ValueError, match="k=0"):
        ks.patterns.FanIn(0)
    with pytest.raises(ValueError, match="fan-in 8"):
        ks.patterns.FanIn(9).check_weight((8, 4), IN_OUT)
    with pytest.raises(ValueError, match="output axis"):
        ks.patterns.FanIn(2).check_weight((8, 4), ks.patterns.Layout((-2,), ()))


def test_martens_sparse_init_on_dense_and_conv():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((8, 8, 3)),
        keras.layers.Conv2D(6, 3, name="conv"),
        keras.layers.Flatten(),
        keras.layers.Dense(10, name="dense"),
    ])
    kernels = {layer.name: _np(layer.kernel) for layer in model.layers if layer.weights}
    sparse = ks.prune(model, 0.5, schedule=ks.schedules.OneShot(0),
                      pattern=ks.patterns.FanIn(15), scorer="random")
    ks.apply_initial_masks(sparse)
    for layer in sparse_layers(sparse):
        mask, latent = _mask(layer), _latent(layer)
        units = mask.shape[-1]
        fan_in = mask.size // units
        np.testing.assert_array_equal(mask.reshape(-1, units).sum(0), 15)
        np.testing.assert_allclose(
            latent, np.where(mask, kernels[layer.name] * np.sqrt(fan_in / 15), 0.0), rtol=1e-6)
