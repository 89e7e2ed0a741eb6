"""Integration tests for ``ks.callbacks.Pruning`` inside ``model.fit``.

Every test checks the state of the real training loop from a small callback
placed after ``Pruning`` in the callback list (callbacks run in list order),
so the assertions see exactly what the next training step uses.
"""

import csv
import math

import keras
import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

import keras_sparse as ks
from keras_sparse.callbacks.pruning import prune_globally
from keras_sparse.utils import sparse_layers

BATCH = 16


# ---------------------------------------------------------------- helpers
def _sync(model):
    # On JAX, fit keeps the live state outside the variables until synced.
    if keras.backend.backend() == "jax":
        model.jax_state_sync()


def _np(value):
    return np.asarray(keras.ops.convert_to_numpy(value))


def _step(model):
    return int(_np(model.optimizer.iterations))


def _data(n=96, features=16, classes=4, seed=0):
    rng = np.random.RandomState(seed)
    x = rng.randn(n, features).astype("float32")
    y = rng.randint(0, classes, size=n)
    return x, y


def _mlp(seed=0, features=16, hidden=(24,), classes=4):
    keras.utils.set_random_seed(seed)
    layers = [keras.Input((features,))]
    layers += [
        keras.layers.Dense(h, activation="relu", name=f"d{i + 1}")
        for i, h in enumerate(hidden)
    ]
    layers += [keras.layers.Dense(classes, name=f"d{len(hidden) + 1}")]
    return keras.Sequential(layers)


def _compile(model, optimizer="adam"):
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def _sparse(model):
    return sparse_layers(model)


def _mask(layer):
    return _np(layer.get_mask("kernel")).astype(bool)


def _latent(layer):
    return _np(layer.latent_weight("kernel"))


def _pruned_count(layer):
    return int((~_mask(layer)).sum())


def _state(model):
    _sync(model)
    return {
        layer.name: (_latent(layer), _mask(layer), _np(layer.bias))
        for layer in _sparse(model)
    }


def _unit_size(pattern, shape):
    """Weights removed together by ``pattern`` (the rounding granularity)."""
    if isinstance(pattern, ks.patterns.Block):
        return math.prod(pattern.block_shape)
    if isinstance(pattern, ks.patterns.Channel):
        return math.prod(shape[:-1])
    return 1


class ZeroChecker(keras.callbacks.Callback):
    """Placed after ``Pruning``: at every batch, checks that

    * masks change only on the schedule's update steps, and at those steps
      have the scheduled sparsity (within one weight, or one block / unit
      for structured patterns) and zero latent
      weights at every pruned position;
    * after every training step the effective kernel is exactly zero at
      pruned positions, and the mask is the one the step trained with;
    * with ``latent_zero_always`` (plain SGD: a masked entry gets a zero
      gradient), pruned latent weights stay zero after every step;
    * at every epoch end the stored latent weights are zero where pruned.
    """

    def __init__(self, latent_zero_always=False):
        super().__init__()
        self.latent_zero_always = latent_zero_always
        self.update_steps = []
        self.steps_checked = 0
        self.saw_moved_latent = False
        self._masks = None

    def on_train_batch_begin(self, batch, logs=None):
        _sync(self.model)
        step = _step(self.model)
        layers = _sparse(self.model)
        masks = {layer.name: _mask(layer) for layer in layers}
        schedule = layers[0].schedule
        if schedule.should_update(step):
            self.update_steps.append(step)
            for layer in layers:
                mask = masks[layer.name]
                latent = _latent(layer)
                assert np.all(latent[~mask] == 0.0), (layer.name, step)
                target = layer.pattern.effective_sparsity(layer.schedule.sparsity(step))
                unit = _unit_size(layer.pattern, mask.shape)
                assert abs((~mask).sum() - target * mask.size) <= unit, (layer.name, step)
        elif self._masks is not None:
            for name, mask in masks.items():
                np.testing.assert_array_equal(mask, self._masks[name], err_msg=name)
        self._masks = masks

    def on_train_batch_end(self, batch, logs=None):
        _sync(self.model)
        for layer in _sparse(self.model):
            mask = _mask(layer)
            np.testing.assert_array_equal(mask, self._masks[layer.name])
            effective = _np(layer.kernel)
            assert np.all(effective[~mask] == 0.0), layer.name
            np.testing.assert_array_equal(effective, _latent(layer) * mask)
            moved = bool(np.any(_latent(layer)[~mask] != 0.0))
            self.saw_moved_latent |= moved
            if self.latent_zero_always:
                assert not moved, layer.name
        self.steps_checked += 1

    def on_epoch_end(self, epoch, logs=None):
        # Checkpoints are written at epoch end: stored weights hold exact
        # zeros at pruned positions there.
        _sync(self.model)
        for layer in _sparse(self.model):
            assert np.all(_latent(layer)[~_mask(layer)] == 0.0), (layer.name, epoch)


def _forward(model, x):
    """numpy forward pass of a ReLU MLP from latent * mask."""
    _sync(model)
    h = x
    layers = _sparse(model)
    for i, layer in enumerate(layers):
        h = h @ (_latent(layer) * _mask(layer)) + _np(layer.bias)
        if i < len(layers) - 1:
            h = np.maximum(h, 0.0)
    return h


# ------------------------------------------------- zeros, every optimizer
OPTIMIZERS = {
    "sgd": lambda: keras.optimizers.SGD(0.1),
    "sgd_momentum": lambda: keras.optimizers.SGD(0.1, momentum=0.9),
    "adam": lambda: keras.optimizers.Adam(1e-2),
    "adamw": lambda: keras.optimizers.AdamW(1e-2, weight_decay=0.05),
}


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_pruned_positions_zero_every_step(optimizer):
    x, y = _data()
    target = 0.7  # 0.7 * 384 and 0.7 * 96 are not integers: checks rounding
    schedule = ks.schedules.PolynomialDecay(0.0, target, begin_step=0, end_step=11, frequency=3)
    model = ks.prune(_mlp(), target, schedule=schedule)
    _compile(model, OPTIMIZERS[optimizer]())
    checker = ZeroChecker(latent_zero_always=optimizer == "sgd")
    model.fit(x, y, batch_size=BATCH, epochs=3, shuffle=False, verbose=0,
              callbacks=[ks.callbacks.Pruning(), checker])

    assert checker.update_steps == [0, 3, 6, 9, 11]
    assert checker.steps_checked == 18
    for layer in _sparse(model):
        n = _mask(layer).size
        assert abs(_pruned_count(layer) - target * n) <= 1, layer.name
        assert _pruned_count(layer) == round(target * n)
    # The compiled forward pass uses the masks.
    np.testing.assert_allclose(
        _np(model.predict(x, verbose=0)), _forward(model, x), rtol=1e-5, atol=1e-5
    )
    # Momentum moves stored pruned weights between mask updates (the forward
    # pass is masked anyway); plain SGD gives them a zero gradient.
    assert checker.saw_moved_latent == (optimizer != "sgd")
    # Stored weights agree with the masks at the end of training.
    for layer in _sparse(model):
        assert np.all(_latent(layer)[~_mask(layer)] == 0.0), layer.name


@pytest.mark.slow
def test_schedule_beginning_after_step_zero():
    # No mask update at the first steps: the logged sparsity must still be
    # readable (on JAX the variables are stale between steps).
    x, y = _data()
    schedule = ks.schedules.PolynomialDecay(0.0, 0.5, begin_step=2, end_step=5, frequency=3)
    model = _compile(ks.prune(_mlp(), 0.5, schedule=schedule))
    checker = ZeroChecker()
    history = model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0,
                        callbacks=[ks.callbacks.Pruning(), checker])
    assert checker.update_steps == [2, 5]
    assert history.history["sparsity"][-1] == pytest.approx(0.5)


def _check_nm(mask, n, m):
    kept = mask.reshape(mask.shape[0] // m, m, mask.shape[1]).sum(axis=1)
    np.testing.assert_array_equal(kept, n)


def _check_block(mask, block, sparsity):
    rows, cols = mask.shape
    br, bc = block
    blocks = mask.reshape(rows // br, br, cols // bc, bc).transpose(0, 2, 1, 3)
    blocks = blocks.reshape(rows // br, cols // bc, br * bc)
    assert np.all(blocks.all(axis=-1) | ~blocks.any(axis=-1)), "mixed block"
    removed = int((~blocks.any(axis=-1)).sum())
    assert removed == round(sparsity * (blocks.shape[0] * blocks.shape[1]))


def _check_channel(mask, sparsity):
    assert np.all(mask.all(axis=0) | ~mask.any(axis=0)), "mixed column"
    removed = int((~mask.any(axis=0)).sum())
    assert removed == round(sparsity * mask.shape[1])


@pytest.mark.slow
@pytest.mark.parametrize("pattern", ["2:4", "block", "channel"])
def test_structured_patterns_exact_after_fit(pattern):
    x, y = _data()
    sparsity = 0.5
    pattern_obj = ks.patterns.Block((4, 4)) if pattern == "block" else pattern
    schedule = ks.schedules.PolynomialDecay(0.0, sparsity, begin_step=0, end_step=8, frequency=4)
    # d1 (16, 24) and d2 (24, 8): 4 divides every dimension.
    model = ks.prune(_mlp(classes=8), sparsity, schedule=schedule, pattern=pattern_obj)
    _compile(model)
    checker = ZeroChecker()
    model.fit(x, y % 8, batch_size=BATCH, epochs=2, shuffle=False, verbose=0,
              callbacks=[ks.callbacks.Pruning(), checker])
    assert checker.update_steps == [0, 4, 8]
    for layer in _sparse(model):
        mask = _mask(layer)
        if pattern == "2:4":
            _check_nm(mask, 2, 4)
        elif pattern == "block":
            _check_block(mask, (4, 4), sparsity)
        else:
            _check_channel(mask, sparsity)
        assert layer.sparsity == pytest.approx(sparsity, abs=1e-12)


# --------------------------------------------------- save / load / resume
def _gmp_model(seed=0):
    schedule = ks.schedules.PolynomialDecay(0.0, 0.8, begin_step=0, end_step=20, frequency=3)
    model = ks.prune(_mlp(seed), 0.8, schedule=schedule)
    return _compile(model, keras.optimizers.Adam(1e-2))


def _assert_same_state(a, b, exact=True):
    state_a, state_b = _state(a), _state(b)
    assert state_a.keys() == state_b.keys()
    for name in state_a:
        for value_a, value_b in zip(state_a[name], state_b[name]):
            if exact or value_a.dtype == bool:
                np.testing.assert_array_equal(value_a, value_b, err_msg=name)
            else:
                np.testing.assert_allclose(value_a, value_b, rtol=1e-5, atol=1e-6,
                                           err_msg=name)


@pytest.mark.slow
def test_keras_round_trip_mid_training(tmp_path):
    x, y = _data()
    model = _gmp_model()
    model.fit(x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0,
              callbacks=[ks.callbacks.Pruning()])
    assert _step(model) == 12
    sparsities = [layer.sparsity for layer in _sparse(model)]
    assert all(0.0 < s < 0.8 for s in sparsities)  # mid-schedule

    path = str(tmp_path / "mid.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)

    assert [type(layer) for layer in loaded.layers] == [type(layer) for layer in model.layers]
    _assert_same_state(model, loaded)
    assert _step(loaded) == _step(model)
    for a, b in zip(model.optimizer.variables, loaded.optimizer.variables):
        np.testing.assert_array_equal(_np(a), _np(b))
    for a, b in zip(_sparse(model), _sparse(loaded)):
        assert a.schedule == b.schedule
        assert a.pattern == b.pattern
        assert b.sparsity == a.sparsity
    np.testing.assert_array_equal(
        _np(model.predict(x, verbose=0)), _np(loaded.predict(x, verbose=0))
    )

    # Continue both for the same batches: same schedule step, same masks.
    for m in (model, loaded):
        m.fit(x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0,
              callbacks=[ks.callbacks.Pruning()])
    assert _step(model) == _step(loaded) == 24
    _assert_same_state(model, loaded, exact=False)
    for layer in _sparse(model):
        assert _pruned_count(layer) == round(0.8 * _mask(layer).size)


class _Interrupt(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            raise RuntimeError("interrupted")


@pytest.mark.slow
def test_backup_and_restore_resumes_schedule(tmp_path):
    x, y = _data()
    reference = _gmp_model(seed=3)
    reference.fit(x, y, batch_size=BATCH, epochs=4, shuffle=False, verbose=0,
                  callbacks=[ks.callbacks.Pruning()])

    backup_dir = str(tmp_path / "backup")
    interrupted = _gmp_model(seed=3)
    with pytest.raises(RuntimeError, match="interrupted"):
        interrupted.fit(
            x, y, batch_size=BATCH, epochs=4, shuffle=False, verbose=0,
            callbacks=[ks.callbacks.Pruning(),
                       keras.callbacks.BackupAndRestore(backup_dir),
                       _Interrupt(epoch=2)],
        )
    assert _step(interrupted) == 12

    resumed = _gmp_model(seed=3)
    history = resumed.fit(
        x, y, batch_size=BATCH, epochs=4, shuffle=False, verbose=0,
        callbacks=[ks.callbacks.Pruning(), keras.callbacks.BackupAndRestore(backup_dir)],
    )
    assert history.epoch == [2, 3]  # really resumed, not retrained
    assert _step(resumed) == _step(reference) == 24
    _assert_same_state(reference, resumed, exact=False)
    for layer in _sparse(resumed):
        assert _pruned_count(layer) == round(0.8 * _mask(layer).size)


# ----------------------------------------------- logs, CSV, checkpoints
@pytest.fixture(scope="module")
def logged_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("logged")
    x, y = _data()
    model = _gmp_model()
    paths = dict(
        csv=str(tmp / "log.csv"),
        full=str(tmp / "ckpt.keras"),
        weights=str(tmp / "ckpt.weights.h5"),
    )
    history = model.fit(
        x, y, batch_size=BATCH, epochs=4, shuffle=False, verbose=0,
        callbacks=[
            ks.callbacks.Pruning(),
            keras.callbacks.CSVLogger(paths["csv"]),
            keras.callbacks.ModelCheckpoint(paths["full"]),
            keras.callbacks.ModelCheckpoint(paths["weights"], save_weights_only=True),
        ],
    )
    return model, history, paths, x


@pytest.mark.slow
def test_history_has_sparsity_logs(logged_run):
    model, history, _, _ = logged_run
    logs = history.history
    assert "sparsity" in logs
    for layer in _sparse(model):
        key = f"{layer.name}/sparsity"
        assert key in logs
        assert len(logs[key]) == 4
        assert logs[key][-1] == pytest.approx(layer.sparsity)
    sizes = {layer.name: _mask(layer).size for layer in _sparse(model)}
    removed = sum(_pruned_count(layer) for layer in _sparse(model))
    assert logs["sparsity"][-1] == pytest.approx(removed / sum(sizes.values()))
    # Gradual schedule: the logged sparsity never decreases.
    assert np.all(np.diff(logs["sparsity"]) >= 0)


@pytest.mark.slow
def test_csv_logger_has_sparsity_columns(logged_run):
    model, history, paths, _ = logged_run
    with open(paths["csv"], newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4
    assert "sparsity" in rows[0]
    for layer in _sparse(model):
        assert f"{layer.name}/sparsity" in rows[0]
    logged = [float(r["sparsity"]) for r in rows]
    np.testing.assert_allclose(logged, history.history["sparsity"], rtol=1e-6)


@pytest.mark.slow
def test_model_checkpoint_with_sparse_model(logged_run):
    model, _, paths, x = logged_run
    loaded = keras.saving.load_model(paths["full"])
    _assert_same_state(model, loaded)
    assert _step(loaded) == _step(model)
    np.testing.assert_array_equal(
        _np(model.predict(x, verbose=0)), _np(loaded.predict(x, verbose=0))
    )

    fresh = _gmp_model(seed=5)
    fresh.optimizer.build(fresh.trainable_variables)
    fresh.load_weights(paths["weights"])
    _assert_same_state(model, fresh)
    assert _step(fresh) == _step(model)


# ---------------------------------------------------------- distributions
def _wide_model(seed=0):
    """Three Dense layers with different weight scales (so a global
    threshold prunes them differently)."""
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((16,)),
        keras.layers.Dense(32, activation="relu", name="d1"),
        keras.layers.Dense(32, activation="relu", name="d2"),
        keras.layers.Dense(4, name="d3"),
    ])
    scale = {"d1": 3.0, "d2": 1.0, "d3": 0.3}
    for layer in model.layers:
        kernel, bias = layer.get_weights()
        layer.set_weights([kernel * scale[layer.name], bias])
    return model


def _global_reference(scores, sparsity):
    """numpy global magnitude top-k: remove round(s * total) lowest scores,
    ties kept in concatenation order; every tensor first keeps its best entry
    (the at-least-one rule), the rest of the budget goes by the threshold."""
    flat = np.concatenate([s.ravel() for s in scores])
    keep = max(len(scores), flat.size - int(round(sparsity * flat.size)))
    kept = np.zeros(flat.size, bool)
    start = 0
    for s in scores:
        kept[start + int(np.argmax(s.ravel()))] = True
        start += s.size
    order = [i for i in np.argsort(-flat, kind="stable") if not kept[i]]
    kept[order[:keep - len(scores)]] = True
    out, start = [], 0
    for s in scores:
        out.append(kept[start:start + s.size].reshape(s.shape))
        start += s.size
    return out


class _Snapshot(keras.callbacks.Callback):
    """Placed before ``Pruning``: records |latent * mask| before each batch."""

    def on_train_batch_begin(self, batch, logs=None):
        _sync(self.model)
        self.scores = [np.abs(_latent(l) * _mask(l)) for l in _sparse(self.model)]


class _GlobalChecker(keras.callbacks.Callback):
    def __init__(self, snapshot):
        super().__init__()
        self.snapshot = snapshot
        self.checked = []

    def on_train_batch_begin(self, batch, logs=None):
        _sync(self.model)
        layers = _sparse(self.model)
        step = _step(self.model)
        if not layers[0].schedule.should_update(step):
            return
        expected = _global_reference(self.snapshot.scores, layers[0].schedule.sparsity(step))
        for layer, mask in zip(layers, expected):
            np.testing.assert_array_equal(_mask(layer), mask, err_msg=f"{layer.name} {step}")
        self.checked.append(step)


# Few distinct shapes: each new shape is a new compilation on JAX.
@settings(max_examples=15)
@given(
    dims=st.lists(st.sampled_from([1, 4, 7]), min_size=2, max_size=4),
    sparsity=st.floats(0.0, 0.99),
    seed=st.integers(0, 2**16),
)
def test_global_threshold_equals_numpy_reference(dims, sparsity, seed):
    rng = np.random.RandomState(seed)
    layers = []
    for fan_in, units in zip(dims[:-1], dims[1:]):
        layer = ks.layers.SparseDense(units, global_pruning=True, masked=True)
        layer.build((None, fan_in))
        # Different scales per layer, as in a real network.
        layer.latent_weight("kernel").assign(rng.randn(fan_in, units) * rng.uniform(0.1, 3.0))
        layers.append(layer)
    scores = [np.abs(_latent(layer)) for layer in layers]
    prune_globally(layers, sparsity)
    total = sum(s.size for s in scores)
    removed = 0
    for layer, expected in zip(layers, _global_reference(scores, sparsity)):
        np.testing.assert_array_equal(_mask(layer), expected)
        assert np.all(_latent(layer)[~expected] == 0.0)
        removed += int((~expected).sum())
    assert removed == min(round(sparsity * total), total - len(scores))


@pytest.mark.slow
def test_global_distribution_matches_numpy_top_k():
    x, y = _data()
    target = 0.7
    schedule = ks.schedules.PolynomialDecay(0.0, target, begin_step=0, end_step=8, frequency=4)
    model = ks.prune(_wide_model(), target, schedule=schedule, distribution="global")
    assert all(layer.global_pruning for layer in _sparse(model))
    _compile(model)
    snapshot = _Snapshot()
    checker = _GlobalChecker(snapshot)
    model.fit(x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0,
              callbacks=[snapshot, ks.callbacks.Pruning(), checker])
    assert checker.checked == [0, 4, 8]

    layers = _sparse(model)
    total = sum(_mask(layer).size for layer in layers)
    removed = sum(_pruned_count(layer) for layer in layers)
    assert abs(removed - target * total) <= 1
    sparsities = [layer.sparsity for layer in layers]
    # Large weights (d1) survive, small ones (d3) go first.
    assert sparsities[0] < sparsities[1] < sparsities[2]


@pytest.mark.slow
def test_erk_distribution_matches_erk_densities():
    x, y = _data()
    target = 0.8
    model = ks.prune(_wide_model(), target, distribution="erk")
    layers = _sparse(model)
    shapes = [tuple(_latent(layer).shape) for layer in layers]
    densities = ks.ops.erk_densities(shapes, 1.0 - target)
    for layer, density in zip(layers, densities):
        assert layer.schedule.target_sparsity == pytest.approx(1.0 - density)
    _compile(model)
    model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0,
              callbacks=[ks.callbacks.Pruning()])
    for layer, density in zip(layers, densities):
        n = _mask(layer).size
        assert abs(_pruned_count(layer) - (1.0 - density) * n) <= 1, layer.name
    kept = sum(_mask(layer).sum() for layer in layers)
    total = sum(math.prod(s) for s in shapes)
    assert abs(kept - (1.0 - target) * total) <= len(layers)
    assert len({round(layer.sparsity, 3) for layer in layers}) == len(layers)
