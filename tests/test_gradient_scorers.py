"""Gradient-based scorers (saliency, Taylor, movement), the random scorer,
and how the ``Pruning`` callback feeds them inside ``fit``.

Fit-level tests recompute every expected mask in numpy from what the
training loop really had: a checker listed *before* ``Pruning`` reads the
gradient probe and the weights at an update step and predicts the mask; one
listed *after* it compares.
"""

import keras
import numpy as np
import pytest

import keras_sparse as ks
from keras_sparse.callbacks.optimizer_state import optimizer_slots
from keras_sparse.callbacks.optimizer_state import rebuild_optimizer
from keras_sparse.utils import sparse_layers

BATCH = 16


def _np(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


def _sync(model):
    if keras.backend.backend() == "jax":
        model.jax_state_sync()


def _step(model):
    return int(_np(model.optimizer.iterations))


def _data(n=96, seed=0):
    rng = np.random.RandomState(seed)
    return rng.randn(n, 16).astype("float32"), rng.randint(0, 4, size=n)


def _model(scorer, schedule, seed=0):
    keras.utils.set_random_seed(seed)
    dense = keras.Sequential([
        keras.Input((16,)),
        keras.layers.Dense(24, activation="relu", name="d1"),
        keras.layers.Dense(4, name="d2"),
    ])
    model = ks.prune(dense, schedule.target_sparsity, schedule=schedule, scorer=scorer)
    model.compile(keras.optimizers.Adam(1e-2),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def _topk_numpy(scores, sparsity):
    """Keep the n - round(s n) largest, ties to the lower flat index."""
    flat = scores.ravel()
    keep = flat.size - int(round(sparsity * flat.size))
    order = np.argsort(-flat, kind="stable")
    mask = np.zeros(flat.size, bool)
    mask[order[:keep]] = True
    return mask.reshape(scores.shape)


# ------------------------------------------------------------- the math
def test_scorer_formulas_match_numpy(rng):
    w = rng.standard_normal((5, 3)).astype("float32")
    g = rng.standard_normal((5, 3)).astype("float32")
    w[0, 0] = 0.0
    g[1, 1] = 0.0
    np.testing.assert_allclose(_np(ks.scorers.get("saliency").score(w, g)), np.abs(g * w))
    np.testing.assert_allclose(_np(ks.scorers.get("snip").score(w, g)), np.abs(g * w))
    np.testing.assert_allclose(_np(ks.scorers.get("taylor").score(w, g)), np.abs(g * w))
    np.testing.assert_allclose(_np(ks.scorers.get("movement").score(w, g)), -(g * w))


def test_docstring_example():
    np.testing.assert_allclose(
        _np(ks.scorers.get("snip").score(np.array([2.0, -1.0]), np.array([0.5, 3.0]))),
        [1.0, 3.0],
    )


@pytest.mark.parametrize("alias", ["saliency", "taylor", "movement"])
def test_gradient_scorers_declare_and_require_a_gradient(alias):
    scorer = ks.scorers.get(alias)
    assert scorer.needs_gradient
    with pytest.raises(ValueError, match="gradient=None"):
        scorer.score(np.ones(3))


def test_accumulation_flags():
    assert type(ks.scorers.get("snip")) is ks.scorers.SaliencyScorer
    assert not ks.scorers.get("saliency").accumulate
    assert ks.scorers.get("taylor").accumulate and ks.scorers.get("taylor").reset_after_update
    assert ks.scorers.get("movement").accumulate
    assert not ks.scorers.get("movement").reset_after_update
    assert not ks.scorers.get("magnitude").needs_gradient


@pytest.mark.parametrize("obj", [
    ks.scorers.SaliencyScorer(), ks.scorers.TaylorScorer(), ks.scorers.MovementScorer(),
    ks.scorers.RandomScorer(seed=3, rescale=False),
])
def test_config_round_trip(obj):
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(obj))
    assert type(restored) is type(obj) and restored == obj


def test_random_scorer_ranks_survivors_first_and_is_seeded():
    w = np.array([0.0, 1.0, 0.0, -2.0, 3.0, 0.0])
    scores = _np(ks.scorers.RandomScorer(seed=0).score(w))
    assert scores[w != 0].min() >= 1.0 > scores[w == 0].max()
    np.testing.assert_array_equal(scores, _np(ks.scorers.RandomScorer(seed=0).score(w)))
    # Pruning again at the same sparsity keeps exactly the survivors.
    np.testing.assert_array_equal(_topk_numpy(scores, 0.5), w != 0)
    with pytest.raises(ValueError, match="seed=1.5"):
        ks.scorers.RandomScorer(seed=1.5)


# ------------------------------------------------------- optimizer state
def _built(optimizer, shape=(4, 3)):
    kernel = keras.Variable(np.ones(shape, "float32"), name="kernel")
    bias = keras.Variable(np.ones(shape[-1:], "float32"), name="bias")
    optimizer.build([kernel, bias])
    return optimizer, kernel, bias


@pytest.mark.parametrize("make, count", [
    (lambda: keras.optimizers.Adam(), 2),
    (lambda: keras.optimizers.Adam(amsgrad=True), 3),
    (lambda: keras.optimizers.AdamW(), 2),
    (lambda: keras.optimizers.SGD(momentum=0.9), 1),
    (lambda: keras.optimizers.SGD(), 0),
    (lambda: keras.optimizers.RMSprop(momentum=0.5), 2),
    (lambda: keras.optimizers.Adagrad(), 1),
    (lambda: keras.optimizers.LossScaleOptimizer(keras.optimizers.Adam()), 2),
])
def test_optimizer_slots_found_per_variable(make, count):
    optimizer, kernel, bias = _built(make())
    slots = optimizer_slots(optimizer, kernel)
    assert len(slots) == count
    assert all(tuple(s.shape) == (4, 3) for s in slots)
    bias_slots = optimizer_slots(optimizer, bias)
    assert len(bias_slots) == count
    assert not {id(s) for s in slots} & {id(s) for s in bias_slots}


def test_optimizer_slots_of_an_unbuilt_optimizer_are_empty():
    assert optimizer_slots(keras.optimizers.Adam(), keras.Variable(np.ones(3))) == []


def test_rebuild_optimizer_keeps_state_and_learns_new_variables():
    x, y = _data()
    model = _model("magnitude", ks.schedules.ConstantSparsity(0.5, frequency=1000))
    model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0, callbacks=[ks.callbacks.Pruning()])
    _sync(model)
    before = {v.path: _np(v).copy() for v in model.optimizer.variables}
    for layer in sparse_layers(model):
        layer.enable_gradient_probe()
    new = rebuild_optimizer(model)
    assert model.optimizer is new
    after = {v.path: _np(v) for v in new.variables}
    assert after.keys() == before.keys()  # probes get no slots
    for path, value in before.items():
        np.testing.assert_array_equal(after[path], value, err_msg=path)
    assert _step(model) == 6


# ------------------------------------------------------------ inside fit
class _Expect(keras.callbacks.Callback):
    """Before ``Pruning``: at update steps, predict the mask in numpy from
    the probe gradient, the masked weights and (for accumulating scorers)
    the sums this callback keeps itself."""

    def __init__(self, kind):
        super().__init__()
        self.kind = kind
        self.sums = {}
        self.expected = None
        self._epoch_start = 0

    def on_epoch_begin(self, epoch, logs=None):
        _sync(self.model)
        self._epoch_start = _step(self.model)

    def _terms(self, layer):
        w = _np(layer.masked_latent("kernel"))
        g = _np(layer.last_gradient("kernel"))
        return -(g * w) if self.kind == "movement" else np.abs(g * w)

    def on_train_batch_begin(self, batch, logs=None):
        step = self._epoch_start + batch
        layers = sparse_layers(self.model)
        schedule = layers[0].schedule
        self.expected = None
        if not schedule.should_update(step) or step == 0:
            return
        _sync(self.model)
        sparsity = schedule.sparsity(step)
        self.expected = {}
        for layer in layers:
            if self.kind == "saliency":
                scores = self._terms(layer)
            else:
                scores = self.sums[layer.name].copy()
                scores[~_np(layer.get_mask("kernel")).astype(bool)] = -np.inf
                if self.kind == "taylor":
                    del self.sums[layer.name]
            self.expected[layer.name] = _topk_numpy(scores, sparsity)

    def on_train_batch_end(self, batch, logs=None):
        if self.kind == "saliency":
            return
        _sync(self.model)
        for layer in sparse_layers(self.model):
            term = self._terms(layer)
            self.sums[layer.name] = self.sums.get(layer.name, 0.0) + term


class _Compare(keras.callbacks.Callback):
    def __init__(self, expect):
        super().__init__()
        self.expect = expect
        self.checked = 0

    def on_train_batch_begin(self, batch, logs=None):
        if not self.expect.expected:
            return
        _sync(self.model)
        for layer in sparse_layers(self.model):
            mask = _np(layer.get_mask("kernel")).astype(bool)
            np.testing.assert_array_equal(mask, self.expect.expected[layer.name],
                                          err_msg=layer.name)
        self.checked += 1


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["saliency", "taylor", "movement"])
def test_gradient_scorer_masks_in_fit(kind):
    x, y = _data()
    schedule = ks.schedules.PolynomialDecay(0.0, 0.75, begin_step=2, end_step=14, frequency=4)
    model = _model(kind, schedule)
    expect = _Expect(kind)
    compare = _Compare(expect)
    history = model.fit(x, y, batch_size=BATCH, epochs=3, shuffle=False, verbose=0,
                        callbacks=[expect, ks.callbacks.Pruning(), compare])
    assert compare.checked == 4  # steps 2, 6, 10, 14
    assert history.history["sparsity"][-1] == pytest.approx(0.75, abs=0.01)
    for layer in sparse_layers(model):
        # Created by ks.prune (the scorer reads gradients), kept after fit;
        # a checkpoint does not store them.
        assert layer.has_gradient_probe


@pytest.mark.slow
def test_gradient_scorer_model_saves_reloads_and_trains_again(tmp_path):
    x, y = _data()
    schedule = ks.schedules.PolynomialDecay(0.0, 0.5, begin_step=1, end_step=8, frequency=3)
    model = _model("taylor", schedule)
    model.fit(x, y, batch_size=BATCH, epochs=2, verbose=0, callbacks=[ks.callbacks.Pruning()])
    path = str(tmp_path / "taylor.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(_np(model.predict(x, verbose=0)),
                               _np(loaded.predict(x, verbose=0)), rtol=1e-5, atol=1e-6)
    # A second fit adds the probes again; the optimizer keeps its state.
    model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0, callbacks=[ks.callbacks.Pruning()])
    assert _step(model) == 18


@pytest.mark.slow
def test_magnitude_pruning_adds_no_probe():
    x, y = _data()
    model = _model("magnitude", ks.schedules.ConstantSparsity(0.5, frequency=2))
    n_before = len(model.trainable_variables)

    class Count(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            assert len(self.model.trainable_variables) == n_before

    model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0,
              callbacks=[ks.callbacks.Pruning(), Count()])


@pytest.mark.slow
def test_gradient_scorer_cannot_prune_at_step_zero():
    x, y = _data()
    model = _model("saliency", ks.schedules.OneShot(0, 0.5))
    with pytest.raises(ValueError, match="prune_at_init"):
        model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0,
                  callbacks=[ks.callbacks.Pruning()])


class _ExpectAt(keras.callbacks.Callback):
    """Before ``Pruning``: at batch ``batch`` of the run, predict the
    saliency mask from the gradient the probes hold."""

    def __init__(self, batch, sparsity):
        super().__init__()
        self.batch, self.sparsity = batch, sparsity
        self.expected = None

    def on_train_batch_begin(self, batch, logs=None):
        if batch != self.batch:
            return
        _sync(self.model)
        self.expected = {}
        for layer in sparse_layers(self.model):
            g = _np(layer.last_gradient("kernel"))
            assert np.abs(g).sum() > 0
            w = _np(layer.masked_latent("kernel"))
            self.expected[layer.name] = _topk_numpy(np.abs(g * w), self.sparsity)


class _MasksAt(keras.callbacks.Callback):
    def __init__(self, batch):
        super().__init__()
        self.batch = batch
        self.masks = None

    def on_train_batch_begin(self, batch, logs=None):
        if batch == self.batch:
            _sync(self.model)
            self.masks = {
                layer.name: _np(layer.get_mask("kernel")).astype(bool)
                for layer in sparse_layers(self.model)
            }


@pytest.mark.slow
def test_update_due_at_the_first_step_of_a_second_fit_uses_a_real_gradient():
    x, y = _data()
    # Update steps 2 (sparsity 0) and 6 (0.5); the second fit starts at 6.
    schedule = ks.schedules.PolynomialDecay(0.0, 0.5, begin_step=2, end_step=6, frequency=4)
    model = _model("saliency", schedule)
    model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0,
              callbacks=[ks.callbacks.Pruning()])
    assert _step(model) == 6
    # The probes are empty at step 6: no mask may be chosen from them.
    expect, first, after = _ExpectAt(batch=1, sparsity=0.5), _MasksAt(batch=0), _MasksAt(batch=1)
    model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0,
              callbacks=[expect, ks.callbacks.Pruning(), first, after])
    assert all(mask.all() for mask in first.masks.values())
    assert set(after.masks) == set(expect.expected) == {"d1", "d2"}
    for name, mask in after.masks.items():
        np.testing.assert_array_equal(mask, expect.expected[name], err_msg=name)


@pytest.mark.parametrize("kind", ["taylor", "movement"])
def test_scores_stop_accumulating_after_the_last_update(kind):
    x, y = _data()  # 6 steps per epoch, 18 in all
    schedule = ks.schedules.PolynomialDecay(0.0, 0.5, begin_step=2, end_step=6, frequency=2)
    model = _model(kind, schedule)
    callback = ks.callbacks.Pruning()
    scored = []
    for layer in sparse_layers(model):
        original = layer.score_weight

        def record(name, *args, _original=original, **kwargs):
            scored.append(callback.current_step())
            return _original(name, *args, **kwargs)

        layer.score_weight = record
    model.fit(x, y, batch_size=BATCH, epochs=3, shuffle=False, verbose=0,
              callbacks=[callback])
    # Summed after each of steps 0..5 (the callback's step is then 1..6),
    # for both layers; the sum after step 5 feeds the last update, at step 6,
    # and no step after it is scored.
    assert sorted(scored) == sorted(list(range(1, 7)) * 2)
