"""Dynamic sparse training: the drop-and-grow math, and SET / RigL inside
``model.fit``.

Fit-level tests watch every connectivity update from two small callbacks
around the algorithm's own: ``_Before`` (listed before it) sees the state the
update starts from, ``_After`` (listed after it) the state it produced, so
every claim is checked at every update, not only at the end.
"""

import math
import types

import keras
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from keras import ops

import keras_sparse as ks
from conftest import backend_grad
from keras_sparse.callbacks.optimizer_state import optimizer_slots
from keras_sparse.callbacks.optimizer_state import reset_optimizer_slots
from keras_sparse.ops import drop_grow
from keras_sparse.utils import sparse_layers

BATCH = 16
N = 96  # 6 steps per epoch


# ------------------------------------------------------------------ helpers
def _np(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


def _sync(model):
    if keras.backend.backend() == "jax":
        model.jax_state_sync()


def _step(model):
    return int(_np(model.optimizer.iterations))


def _data(seed=0, features=16, classes=4):
    rng = np.random.RandomState(seed)
    x = rng.randn(N, features).astype("float32")
    y = rng.randint(0, classes, size=N).astype("int32")
    return x, y


def _model(seed=0, sparsity=0.7, distribution="uniform", optimizer=None):
    keras.utils.set_random_seed(seed)
    dense = keras.Sequential([
        keras.Input((16,)),
        keras.layers.Dense(24, activation="relu", name="d1"),
        keras.layers.Dense(4, name="d2"),
    ])
    model = ks.prune(dense, sparsity, distribution=distribution)
    model.compile(
        optimizer=optimizer or keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def _mask(layer):
    return _np(layer.get_mask("kernel")).astype(bool)


def _latent(layer):
    return _np(layer.latent_weight("kernel")).copy()


def _reference_kernel_gradients(weights, x, y):
    """d(mean cross-entropy)/d(effective kernel) of the 2-layer ReLU MLP,
    written out with keras.ops and the backend's own autodiff (no
    keras_sparse code)."""
    (k1, b1), (k2, b2) = weights
    b1, b2 = ops.convert_to_tensor(b1), ops.convert_to_tensor(b2)
    x, labels = ops.convert_to_tensor(x), ops.convert_to_tensor(np.asarray(y)[:, None])

    def loss(kernel_1, kernel_2):
        h = ops.relu(ops.matmul(x, kernel_1) + b1)
        z = ops.matmul(h, kernel_2) + b2
        picked = ops.take_along_axis(z, labels, axis=1)[:, 0]
        return ops.mean(ops.logsumexp(z, axis=1) - picked)

    return backend_grad(loss, [k1, k2])


class _Before(keras.callbacks.Callback):
    """Listed before the algorithm: records the pre-update state and, for
    RigL, the dense gradient recomputed on the batch just trained."""

    def __init__(self, algorithm, x, y, reference_gradients=False):
        super().__init__()
        self.algorithm = algorithm
        self.x, self.y = x, y
        self.reference_gradients = reference_gradients
        self.state = None
        self._weights = None
        self._epoch_start = 0

    def on_epoch_begin(self, epoch, logs=None):
        _sync(self.model)
        self._epoch_start = _step(self.model)

    def on_train_batch_begin(self, batch, logs=None):
        if not self.reference_gradients:
            return
        _sync(self.model)
        layers = sparse_layers(self.model)
        self._weights = [
            (_np(layer.effective_weight("kernel")).copy(), _np(layer.bias).copy())
            for layer in layers
        ]

    def on_train_batch_end(self, batch, logs=None):
        step = self._epoch_start + batch + 1
        if not self.algorithm.is_update_step(step):
            self.state = None
            return
        _sync(self.model)
        layers = sparse_layers(self.model)
        state = {"step": step, "layers": {}}
        if self.reference_gradients:
            xb = self.x[batch * BATCH:(batch + 1) * BATCH]
            yb = self.y[batch * BATCH:(batch + 1) * BATCH]
            state["reference"] = _reference_kernel_gradients(self._weights, xb, yb)
        for layer in layers:
            state["layers"][layer.name] = dict(
                mask=_mask(layer),
                latent=_latent(layer),
                slots=[_np(slot).copy() for slot in optimizer_slots(
                    self.model.optimizer, layer.latent_weight("kernel"))],
                probe=_np(layer.last_gradient("kernel")).copy()
                if layer.has_gradient_probe else None,
            )
        self.state = state


class _After(keras.callbacks.Callback):
    """Listed after the algorithm: checks every update against the state
    ``_Before`` recorded."""

    def __init__(self, before, rigl):
        super().__init__()
        self.before = before
        self.rigl = rigl
        self.updates = []
        self.moved = 0
        self.regrown = 0

    def on_train_batch_end(self, batch, logs=None):
        state = self.before.state
        if state is None:
            return
        _sync(self.model)
        optimizer = self.model.optimizer
        for index, layer in enumerate(sparse_layers(self.model)):
            old = state["layers"][layer.name]
            old_mask, new_mask = old["mask"], _mask(layer)
            latent = _latent(layer)
            dropped = old_mask & ~new_mask
            grown = ~old_mask & new_mask
            stayed = old_mask & new_mask
            # The number of active weights never changes.
            assert new_mask.sum() == old_mask.sum(), (layer.name, state["step"])
            assert dropped.sum() == grown.sum()
            fraction = self.before.algorithm.fraction_at(state["step"])
            n = min(round(fraction * old_mask.sum()), (~old_mask).sum())
            assert grown.sum() <= n, (layer.name, state["step"])
            if not self.before.algorithm.regrow_dropped:
                assert grown.sum() == n, (layer.name, state["step"])
            # Dropped: among the n smallest |w| of the active weights (the
            # others of those n were grown again).
            magnitude = np.abs(old["latent"])
            active = np.flatnonzero(old_mask)
            smallest = np.zeros(old_mask.size, bool)
            smallest[active[np.argsort(magnitude.ravel()[active], kind="stable")[:n]]] = True
            smallest = smallest.reshape(old_mask.shape)
            assert not np.any(dropped & ~smallest), (layer.name, state["step"])
            # Newly grown weights start at 0 with zero optimizer slots; the
            # weights that stayed (dropped and grown again included) keep
            # their value.
            assert np.all(latent[grown] == 0.0)
            assert np.all(latent[~new_mask] == 0.0)
            np.testing.assert_array_equal(latent[stayed], old["latent"][stayed])
            slots = optimizer_slots(optimizer, layer.latent_weight("kernel"))
            assert slots, "no optimizer slot found"
            assert len(slots) == len(old["slots"])
            for slot, old_slot in zip(slots, old["slots"]):
                assert np.all(_np(slot)[grown] == 0.0), slot.path
                assert np.all(_np(slot)[~new_mask] == 0.0), slot.path
                np.testing.assert_array_equal(_np(slot)[stayed], old_slot[stayed])
            if self.rigl:
                reference = np.abs(state["reference"][index])
                # The probe holds the dense gradient of the batch just trained.
                np.testing.assert_allclose(
                    np.abs(old["probe"]), reference, rtol=1e-4, atol=1e-6
                )
                # RigL: the top-|g| positions among those not kept. Entries
                # with a zero gradient are tied and filled at random.
                expected = _reference_drop_grow(old_mask, magnitude, reference, fraction)
                tied = reference == 0
                assert np.array_equal(new_mask & ~tied, expected & ~tied), (
                    layer.name, state["step"])
                assert new_mask.sum() == expected.sum()
                self.regrown += int((smallest & new_mask).sum())
            self.moved += int(grown.sum())
        self.updates.append(state["step"])


# ------------------------------------------------------- floor 1: the math
def _reference_drop_grow(mask, drop, grow, fraction, regrow_dropped=True):
    """Sort-based drop-and-grow. Ties: the lower index is kept (so the later
    one is dropped first) and grown first."""
    shape = mask.shape
    mask = mask.ravel()
    active = np.flatnonzero(mask)
    n = min(int(round(fraction * active.size)), mask.size - active.size)
    # Stable sort of -score from the end = lowest score, later index first.
    drop_order = active[::-1][np.argsort(drop.ravel()[active][::-1], kind="stable")]
    new = mask.copy()
    new[drop_order[:n]] = False
    candidates = np.flatnonzero(~new if regrow_dropped else ~mask)
    grow_order = candidates[np.argsort(-grow.ravel()[candidates], kind="stable")]
    new[grow_order[:n]] = True
    return new.reshape(shape)


@given(
    st.integers(1, 60),
    st.floats(0.0, 1.0),
    st.floats(0.0, 1.0),
    st.integers(0, 2**31 - 1),
    st.booleans(),
    st.booleans(),
)
def test_drop_and_grow_matches_numpy_and_keeps_count(size, density, fraction, seed,
                                                     regrow_dropped, distinct):
    rng = np.random.default_rng(seed)
    mask = rng.random(size) < density
    if distinct:
        drop = rng.permutation(size).astype(np.float32)
        grow = rng.permutation(size).astype(np.float32)
    else:
        # Many ties: the index-order convention decides.
        drop = rng.integers(0, 3, size).astype(np.float32)
        grow = rng.integers(0, 3, size).astype(np.float32)
    new, dropped, grown = (_np(t) for t in drop_grow.drop_and_grow(
        mask, drop, grow, fraction, regrow_dropped=regrow_dropped))
    assert new.sum() == mask.sum()
    assert dropped.sum() == grown.sum()
    assert not np.any(grown & mask), "grown entries were inactive"
    assert not np.any(dropped & ~mask), "dropped entries were active"
    n = min(round(fraction * mask.sum()), size - mask.sum())
    assert grown.sum() <= n
    if not regrow_dropped:
        assert grown.sum() == n
    np.testing.assert_array_equal(
        new, _reference_drop_grow(mask, drop, grow, fraction, regrow_dropped))
    np.testing.assert_array_equal(new, (mask & ~dropped) | grown)


def test_dropped_weight_with_top_grow_score_is_regrown():
    # 4 active, n = 2: entries 1 and 2 (|w| 1 and 2) are dropped; entry 1 has
    # the highest grow score, so it is grown back and stays active.
    mask = np.array([True, True, True, True, False, False, False])
    drop = np.array([5.0, 1.0, 2.0, 6.0, 0.0, 0.0, 0.0])
    grow = np.array([0.0, 9.0, 0.0, 0.0, 3.0, 7.0, 1.0])
    new, dropped, grown = (_np(t) for t in drop_grow.drop_and_grow(mask, drop, grow, 0.5))
    np.testing.assert_array_equal(new, [True, True, False, True, False, True, False])
    np.testing.assert_array_equal(dropped, [False, False, True, False, False, False, False])
    np.testing.assert_array_equal(grown, [False, False, False, False, False, True, False])
    new, dropped, grown = (_np(t) for t in drop_grow.drop_and_grow(
        mask, drop, grow, 0.5, regrow_dropped=False))
    np.testing.assert_array_equal(new, [True, False, False, True, True, True, False])
    assert dropped.sum() == grown.sum() == 2


def test_drop_and_grow_ties_in_index_order():
    # The package convention: among equal scores the lower index is kept, so
    # the later one is dropped and the earlier one grown.
    mask = np.array([True, True, True, False, False, False])
    new, dropped, grown = drop_grow.drop_and_grow(mask, np.ones(6), np.zeros(6), 1 / 3,
                                                  regrow_dropped=False)
    np.testing.assert_array_equal(_np(dropped), [False, False, True, False, False, False])
    np.testing.assert_array_equal(_np(grown), [False, False, False, True, False, False])
    np.testing.assert_array_equal(_np(new), [True, True, False, True, False, False])
    # By default the dropped entry 2 is a candidate too, and the earliest
    # of the equal grow scores: it is grown back, nothing moves.
    new, dropped, grown = drop_grow.drop_and_grow(mask, np.ones(6), np.zeros(6), 1 / 3)
    np.testing.assert_array_equal(_np(new), mask)
    assert not _np(dropped).any() and not _np(grown).any()


def test_rigl_breaks_zero_gradient_ties_at_random():
    # 3 non-zero gradients, 13 zeros: nonzero scores are |g|; the zeros get
    # distinct negative scores, reproducible per (seed, step, layer).
    gradient = np.zeros((4, 4), np.float32)
    gradient[0, 1], gradient[2, 3], gradient[3, 0] = -0.5, 0.25, 2.0
    layer = types.SimpleNamespace(last_gradient=lambda name: gradient)
    rigl = ks.callbacks.RigL(seed=3)
    scores = rigl.grow_scores(layer, "kernel", 100, (0, 0))
    nonzero = gradient != 0
    np.testing.assert_array_equal(scores[nonzero], np.abs(gradient[nonzero]))
    assert np.all(scores[~nonzero] < 0)
    assert np.unique(scores[~nonzero]).size == 13
    np.testing.assert_array_equal(scores, rigl.grow_scores(layer, "kernel", 100, (0, 0)))
    assert not np.array_equal(scores, rigl.grow_scores(layer, "kernel", 200, (0, 0)))
    # Growing 8 into an empty mask: the 3 non-zero gradients first, then 5
    # zero-gradient entries at random (not the first 5 in index order).
    mask = np.zeros((4, 4), bool)
    mask[1, 1] = True
    grown_all = drop_grow._top_in(scores.ravel(), ~mask.ravel(), 8).reshape(4, 4)
    assert np.all(grown_all[nonzero])
    index_order = np.flatnonzero(~mask.ravel() & ~nonzero.ravel())[:5]
    chosen = np.flatnonzero((grown_all & ~nonzero).ravel())
    assert chosen.size == 5
    draws = []
    for step in range(100, 120):
        step_scores = rigl.grow_scores(layer, "kernel", step, (0, 0)).ravel()
        grown_step = drop_grow._top_in(step_scores, ~mask.ravel(), 8)
        assert np.all(grown_step[nonzero.ravel()])
        draws.append(np.flatnonzero(grown_step & ~nonzero.ravel()))
    assert any(not np.array_equal(d, index_order) for d in draws)
    assert len({tuple(d) for d in draws}) > 1


def test_drop_and_grow_caps_at_inactive_count_and_keeps_shape():
    mask = np.ones((3, 4), bool)
    mask[0, 0] = False
    new, dropped, grown = drop_grow.drop_and_grow(mask, np.arange(12.0).reshape(3, 4),
                                                  np.ones((3, 4)), 0.5)
    assert tuple(new.shape) == (3, 4)
    assert _np(grown).sum() == 1 and _np(dropped).sum() == 1
    assert _np(dropped)[0, 1]  # the smallest active |w|


def test_drop_and_grow_rejects_bad_arguments():
    with pytest.raises(ValueError, match="fraction=1.5"):
        drop_grow.drop_and_grow(np.ones(3, bool), np.ones(3), np.ones(3), 1.5)
    with pytest.raises(ValueError, match="shape"):
        drop_grow.drop_and_grow(np.ones(3, bool), np.ones(4), np.ones(3), 0.5)


def test_cosine_drop_fraction_formula():
    for step in (0, 10, 25, 50, 99, 100, 150):
        progress = min(1.0, step / 100)
        expected = 0.3 / 2 * (1 + math.cos(math.pi * progress))
        assert drop_grow.cosine_drop_fraction(step, 0.3, 0, 100) == pytest.approx(expected)
    assert drop_grow.drop_fraction(50, 0.3, 0, 100) == pytest.approx(0.15)
    assert drop_grow.drop_fraction(75, 0.4, 50, 100, "linear") == pytest.approx(0.2)
    assert drop_grow.drop_fraction(10**6, 0.3, 0, 100, "constant") == 0.3
    with pytest.raises(ValueError, match="decay='step'"):
        drop_grow.drop_fraction(0, 0.3, 0, 100, "step")


@pytest.mark.parametrize("shape", [(6, 5), (300, 300)])
def test_reset_optimizer_slots_on_host_and_device(shape):
    # (6, 5) is reset on the host, (300, 300) above HOST_RESET_MAX_SIZE on
    # the device: both zero exactly the entries not kept.
    variable = keras.Variable(np.ones(shape, "float32"), name="w")
    optimizer = keras.optimizers.Adam(0.1)
    optimizer.build([variable])
    slots = optimizer_slots(optimizer, variable)
    assert len(slots) == 2  # m and v
    rng = np.random.default_rng(0)
    values = [rng.random(shape).astype("float32") + 0.5 for _ in slots]
    for slot, value in zip(slots, values):
        slot.assign(value)
    keep = rng.random(shape) < 0.5
    for cached in (None, slots):
        touched = reset_optimizer_slots(optimizer, variable, keep, slots=cached)
        assert [id(t) for t in touched] == [id(t) for t in slots]
        for slot, value in zip(slots, values):
            np.testing.assert_array_equal(_np(slot), np.where(keep, value, 0.0))


# --------------------------------------------------------- config objects
@pytest.mark.parametrize("cls", [ks.callbacks.SET, ks.callbacks.RigL])
def test_config_round_trip(cls):
    callback = cls(update_freq=7, drop_fraction=0.2, end_step=300, begin_step=5,
                   decay="linear", init_scorer="magnitude", seed=3, regrow_dropped=False)
    config = callback.get_config()
    restored = cls.from_config(config)
    assert restored.get_config() == config
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(callback))
    assert type(restored) is cls and restored.get_config() == config
    assert issubclass(cls, ks.callbacks.Sparsity)


@pytest.mark.parametrize("kwargs, match", [
    (dict(update_freq=0), "update_freq=0"),
    (dict(drop_fraction=1.2), "drop_fraction=1.2"),
    (dict(drop_fraction=0.0), "drop_fraction=0.0"),
    (dict(drop_fraction="0.3"), "drop_fraction='0.3'"),
    (dict(drop_fraction=None), "drop_fraction=None"),
    (dict(end_step=5, begin_step=5), "end_step=5"),
    (dict(decay="exp"), "decay='exp'"),
    (dict(seed="a"), "seed='a'"),
    (dict(regrow_dropped=1), "regrow_dropped=1"),
])
def test_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ks.callbacks.RigL(**kwargs)


def test_update_steps_timing():
    rigl = ks.callbacks.RigL(update_freq=4, end_step=17, begin_step=2)
    assert [t for t in range(30) if rigl.is_update_step(t)] == [6, 10, 14]


# ---------------------------------------------------------------- in fit
@pytest.mark.slow
def test_rigl_in_fit_grows_top_gradient_and_resets_adam():
    x, y = _data()
    model = _model()
    rigl = ks.callbacks.RigL(update_freq=4, drop_fraction=0.5, end_step=16)
    before = _Before(rigl, x, y, reference_gradients=True)
    after = _After(before, rigl=True)
    history = model.fit(x, y, batch_size=BATCH, epochs=3, shuffle=False, verbose=0,
                        callbacks=[before, rigl, after])
    assert after.updates == [4, 8, 12]
    assert after.moved > 0
    # Some dropped weights were grown again (they kept their values, checked
    # by _After).
    assert after.regrown > 0
    for layer in sparse_layers(model):
        assert layer.sparsity == pytest.approx(round(0.7 * _mask(layer).size) / _mask(layer).size)
        # The probe exists only while training.
        assert not layer.has_gradient_probe
    assert history.history["drop_fraction"][-1] == 0.0
    assert history.history["sparsity"][-1] == pytest.approx(0.7, abs=0.01)


@pytest.mark.slow
def test_set_in_fit_with_sgd_momentum():
    x, y = _data()
    model = _model(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
    set_cb = ks.callbacks.SET(update_freq=3, drop_fraction=0.3, end_step=17, seed=1,
                              decay="constant", regrow_dropped=False)
    before = _Before(set_cb, x, y)
    after = _After(before, rigl=False)
    model.fit(x, y, batch_size=BATCH, epochs=3, shuffle=False, verbose=0,
              callbacks=[before, set_cb, after])
    assert after.updates == [3, 6, 9, 12, 15]
    assert after.moved > 0


@pytest.mark.slow
def test_set_is_reproducible_with_a_seed():
    x, y = _data()
    masks = []
    for _ in range(2):
        model = _model(seed=4)
        model.fit(x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0,
                  callbacks=[ks.callbacks.SET(update_freq=2, end_step=12, seed=5)])
        masks.append([_mask(layer) for layer in sparse_layers(model)])
    for a, b in zip(*masks):
        np.testing.assert_array_equal(a, b)


def _fit_dynamic(kind, seed, global_seed=None):
    """Fit with SET or RigL as a callback or as a method (the initial
    mask random, then drop-and-grow updates); ``global_seed`` reseeds
    numpy's global generator after the model is built and before the
    callback or method is made. Returns the masks, and numpy's global
    state from just before the callback or method was made."""
    x, y = _data()
    name, entry = kind.split("_")
    if entry == "method":
        keras.utils.set_random_seed(0)
        dense = keras.Sequential([keras.Input((16,)), keras.layers.Dense(24, activation="relu"),
                                  keras.layers.Dense(4)])
    else:
        model = _model()
    if global_seed is not None:
        np.random.seed(global_seed)
    state = np.random.get_state()
    settings = dict(update_freq=2, drop_fraction=0.5, end_step=10, seed=seed)
    if entry == "method":
        model = ks.prune(dense, 0.7, method=getattr(ks.methods, name)(**settings))
        model.compile(keras.optimizers.Adam(1e-2),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        callback = ks.callbacks.Sparsity()
    else:
        callback = getattr(ks.callbacks, name)(**settings)
    model.fit(x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0, callbacks=[callback])
    return [_mask(layer) for layer in sparse_layers(model)], state


def _same_state(a, b):
    return a[0] == b[0] and np.array_equal(a[1], b[1]) and tuple(a[2:]) == tuple(b[2:])


KINDS = ["SET_callback", "RigL_callback", "SET_method", "RigL_method"]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*need the dense gradient")
@pytest.mark.parametrize("kind", KINDS)
def test_seed_none_leaves_numpy_global_random_state_untouched(kind):
    masks, before = _fit_dynamic(kind, seed=None)
    assert _same_state(np.random.get_state(), before)
    # The run was random all the same: the initial mask and the updates.
    assert all(0 < m.mean() < 1 for m in masks)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*need the dense gradient")
@pytest.mark.parametrize("kind", KINDS)
def test_seed_alone_decides_the_masks(kind):
    # Different global numpy states: the same masks for the same seed (the
    # random initial mask included), other masks for another seed.
    first, _ = _fit_dynamic(kind, seed=5, global_seed=1)
    again, before = _fit_dynamic(kind, seed=5, global_seed=2)
    assert _same_state(np.random.get_state(), before)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    other, _ = _fit_dynamic(kind, seed=6, global_seed=1)
    assert any(not np.array_equal(a, b) for a, b in zip(first, other))


@pytest.mark.slow
def test_initial_mask_random_erk_with_variance_rescale():
    x, y = _data()
    model = _model(distribution="erk", sparsity=0.8)
    layers = sparse_layers(model)
    dense_kernels = [_latent(layer) for layer in layers]
    targets = [layer.schedule.target_sparsity for layer in layers]

    class FirstStep(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            if batch == 0 and not hasattr(self, "seen"):
                _sync(self.model)
                self.seen = [(_mask(layer), _latent(layer)) for layer in layers]

    first = FirstStep()
    model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0,
              callbacks=[ks.callbacks.RigL(update_freq=100, end_step=200), first])
    for (mask, latent), dense, target in zip(first.seen, dense_kernels, targets):
        assert (~mask).sum() == round(target * mask.size)
        # Survivors of unit j are scaled by sqrt(fan_in / k_j).
        k = mask.sum(axis=0)
        scale = np.sqrt(mask.shape[0] / np.maximum(k, 1))
        np.testing.assert_allclose(latent, np.where(mask, dense * scale, 0.0), rtol=1e-6)


@pytest.mark.slow
def test_backup_and_restore_resumes_rigl_with_identical_masks(tmp_path):
    x, y = _data()

    def run(callbacks, epochs=4):
        model = _model(seed=2)
        # The seed makes the resumed callback draw what the first one drew
        # (seed=None takes fresh entropy for each callback).
        rigl = ks.callbacks.RigL(update_freq=3, drop_fraction=0.4, end_step=22, seed=7)
        model.fit(x, y, batch_size=BATCH, epochs=epochs, shuffle=False, verbose=0,
                  callbacks=[rigl] + callbacks)
        return model

    class Interrupt(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 2:
                raise RuntimeError("interrupted")

    reference = run([])
    backup = str(tmp_path / "backup")
    with pytest.raises(RuntimeError, match="interrupted"):
        run([keras.callbacks.BackupAndRestore(backup), Interrupt()])
    resumed = run([keras.callbacks.BackupAndRestore(backup)])
    assert _step(resumed) == _step(reference) == 24
    for a, b in zip(sparse_layers(reference), sparse_layers(resumed)):
        # Step 12 (first of epoch 2) is an update: it ran before the backup.
        np.testing.assert_array_equal(_mask(a), _mask(b))
        np.testing.assert_allclose(_latent(a), _latent(b), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_trained_model_saves_and_reloads(tmp_path):
    x, y = _data()
    model = _model()
    model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0,
              callbacks=[ks.callbacks.RigL(update_freq=2, end_step=6)])
    path = str(tmp_path / "rigl.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    for a, b in zip(sparse_layers(model), sparse_layers(loaded)):
        np.testing.assert_array_equal(_mask(a), _mask(b))
    np.testing.assert_allclose(_np(model.predict(x, verbose=0)),
                               _np(loaded.predict(x, verbose=0)), rtol=1e-5, atol=1e-6)
    # A later plain fit (no callback) still works with the rebuilt optimizer.
    model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)


@pytest.mark.slow
def test_structured_pattern_is_rejected():
    x, y = _data()
    keras.utils.set_random_seed(0)
    dense = keras.Sequential([keras.Input((16,)), keras.layers.Dense(8, name="d")])
    model = ks.prune(dense, 0.5, pattern="channel")
    model.compile("adam", "mse")
    with pytest.raises(ValueError, match="unstructured"):
        model.fit(x, np.zeros((N, 8)), epochs=1, verbose=0,
                  callbacks=[ks.callbacks.SET(update_freq=2, end_step=4)])
