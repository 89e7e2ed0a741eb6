"""Sparsity methods (floor 2) and the one ``Sparsity`` callback: the old
entry points (``Pruning``, ``SET``, ``RigL`` callbacks) and the new one
(``ks.prune(..., method=...)`` + ``ks.callbacks.Sparsity()``) give identical
masks; probes exist from conversion; a new method is one class."""

import keras
import numpy as np
import pytest

import keras_sparse as ks
from conftest import to_np
from keras_sparse.utils import sparse_layers

BATCH = 16


def _data():
    rng = np.random.RandomState(0)
    return rng.randn(128, 16).astype("float32"), rng.randint(0, 4, size=128)


def _dense():
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((16,)), keras.layers.Dense(32, activation="relu"),
                             keras.layers.Dense(4)])


def _compile(model):
    model.compile(keras.optimizers.Adam(1e-2),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def _fit(model, callback, epochs=2):
    x, y = _data()
    model.fit(x, y, batch_size=BATCH, epochs=epochs, shuffle=False, verbose=0,
              callbacks=[callback])
    return [to_np(layer.get_mask("kernel")).astype(bool) for layer in sparse_layers(model)]


SCHEDULE = ks.schedules.PolynomialDecay(0.0, 0.75, begin_step=2, end_step=12, frequency=2)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["gmp", "global", "erk", "2:4", "taylor", "movement"])
def test_gradual_old_and_new_entry_points_give_identical_masks(case):
    kwargs = dict(schedule=SCHEDULE)
    if case in ("global", "erk"):
        kwargs["distribution"] = case
    elif case == "2:4":
        kwargs = dict(pattern="2:4", schedule=ks.schedules.ConstantSparsity(0.5, 2, -1, 4))
    elif case in ("taylor", "movement"):
        kwargs["scorer"] = case
    sparsity = 0.5 if case == "2:4" else 0.75
    old = _fit(_compile(ks.prune(_dense(), sparsity, **kwargs)), ks.callbacks.Pruning())
    new = _fit(_compile(ks.prune(_dense(), sparsity, method="gradual", **kwargs)),
               ks.callbacks.Sparsity())
    default = _fit(_compile(ks.prune(_dense(), sparsity, **kwargs)), ks.callbacks.Sparsity())
    for a, b, c in zip(old, new, default):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
    assert not all(m.all() for m in old)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["SET", "RigL"])
def test_drop_and_grow_old_and_new_entry_points_give_identical_masks(name):
    settings = dict(update_freq=2, drop_fraction=0.5, end_step=14, seed=3)
    callback = getattr(ks.callbacks, name)(**settings)
    old_model = _compile(ks.prune(_dense(), 0.8, distribution="erk"))
    with pytest.warns(UserWarning, match="need the dense gradient") if name == "RigL" else (
        _no_warning()
    ):
        old = _fit(old_model, callback)
    method = getattr(ks.methods, name)(**settings)
    new_model = _compile(ks.prune(_dense(), 0.8, distribution="erk", method=method))
    optimizer = new_model.optimizer
    new = _fit(new_model, ks.callbacks.Sparsity())
    assert new_model.optimizer is optimizer  # nothing rebuilt during fit
    for a, b in zip(old, new):
        np.testing.assert_array_equal(a, b)
    # The method hyperparameters the callback exposed are the method's.
    assert callback.update_freq == 2 and callback.method == method
    for layer in sparse_layers(new_model):
        assert layer.has_gradient_probe == (name == "RigL")
    for layer in sparse_layers(old_model):
        assert not layer.has_gradient_probe  # added for the fit, removed after


class _no_warning:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_rigl_method_model_saves_without_probes_and_reloads(tmp_path):
    model = _compile(ks.prune(_dense(), 0.8, method=ks.methods.RigL(update_freq=3, end_step=9)))
    assert all(layer.has_gradient_probe for layer in sparse_layers(model))
    path = str(tmp_path / "rigl.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    for a, b in zip(sparse_layers(model), sparse_layers(loaded)):
        assert b.method == a.method and b.has_gradient_probe
        np.testing.assert_array_equal(to_np(a.get_mask("kernel")), to_np(b.get_mask("kernel")))
        np.testing.assert_array_equal(to_np(a.latent_weight("kernel")),
                                      to_np(b.latent_weight("kernel")))
    x, _ = _data()
    np.testing.assert_allclose(to_np(model(x[:8])), to_np(loaded(x[:8])), rtol=1e-6)


def test_gradient_scorer_gets_probe_at_conversion_and_loses_it_without_schedule():
    model = ks.prune(_dense(), 0.5, scorer="taylor")
    layer = sparse_layers(model)[0]
    assert layer.has_gradient_probe
    layer.configure_pruning(schedule=None, scorer="taylor")
    assert not layer.has_gradient_probe


@pytest.mark.parametrize("alias,cls", [("gradual", ks.methods.Gradual), ("gmp", ks.methods.Gradual),
                                       ("set", ks.methods.SET), ("rigl", ks.methods.RigL)])
def test_method_aliases_and_config_round_trip(alias, cls):
    method = ks.methods.get(alias)
    assert type(method) is cls
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(method))
    assert restored == method and type(restored) is cls
    callback = ks.callbacks.Sparsity(method=alias)
    assert ks.callbacks.Sparsity.from_config(callback.get_config()).method == method


@pytest.mark.parametrize("bad", [dict(method="nope"), dict(method=3), dict(log_per_layer="yes")])
def test_sparsity_callback_rejects_bad_arguments(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        ks.callbacks.Sparsity(**bad)


@pytest.mark.parametrize("bad,arg", [(dict(update_freq=0), "update_freq"),
                                     (dict(drop_fraction=1.5), "drop_fraction"),
                                     (dict(end_step=0), "end_step"),
                                     (dict(seed="x"), "seed"),
                                     (dict(regrow_dropped=1), "regrow_dropped")])
def test_drop_and_grow_methods_reject_bad_arguments(bad, arg):
    with pytest.raises(ValueError, match=arg):
        ks.methods.RigL(**bad)


def test_structured_pattern_with_drop_and_grow_method_rejected_before_conversion():
    dense = _dense()
    with pytest.raises(ValueError, match="unstructured"):
        ks.prune(dense, 0.5, pattern="channel", method="set")
    assert not sparse_layers(dense)


class EveryOther(ks.methods.SparsityMethod):
    """A new method is one class: prune every other input row at ``step``."""

    def __init__(self, step=3):
        self.step = step

    def get_config(self):
        return {"step": self.step}

    def due(self, step, group, state):
        return step == self.step

    def update(self, step, group, state):
        layer = group[0]
        mask = np.ones(tuple(layer.get_mask("kernel").shape), bool)
        mask[::2] = False
        return [ks.methods.MaskUpdate(layer, "kernel", mask)]


@pytest.mark.slow
def test_a_new_method_is_one_class():
    model = _compile(ks.prune(_dense(), 0.5))
    masks = _fit(model, ks.callbacks.Sparsity(method=EveryOther(step=3)), epochs=1)
    for mask in masks:
        assert not mask[::2].any() and mask[1::2].all()
    for layer in sparse_layers(model):
        kernel = to_np(layer.latent_weight("kernel"))
        assert np.all(kernel[::2] == 0)


# ------------------------------------------- objects answer for themselves
class _AnyEntries(ks.patterns.Pattern):
    """A user-defined pattern with no structure: drop-and-grow accepts it
    because it says so, not because of its class."""

    is_unstructured = True

    def mask(self, scores, sparsity, layout):
        return ks.patterns.Unstructured().mask(scores, sparsity, layout)


def test_drop_and_grow_methods_ask_the_pattern():
    from types import SimpleNamespace

    model = ks.prune(_dense(), 0.5, pattern=_AnyEntries(), method="set")
    layers = sparse_layers(model)
    assert len(layers) == 2 and all(type(layer.pattern) is _AnyEntries for layer in layers)
    method = ks.methods.SET()
    # Masks fixed before training (no schedule): drop-and-grow takes over
    # unstructured layers only.
    fixed = SimpleNamespace(pattern=_AnyEntries(), schedule=None, sparsity=0.5)
    assert method.manages(fixed)
    assert not method.manages(SimpleNamespace(pattern=ks.patterns.Channel(), schedule=None,
                                              sparsity=0.5))
    assert not method.manages(SimpleNamespace(pattern=_AnyEntries(), schedule=None, sparsity=0.0))
    method.check_pattern(_AnyEntries(), "d")
    for pattern in (ks.patterns.Channel(), ks.patterns.NByM(2, 4), ks.patterns.FanIn(2)):
        with pytest.raises(ValueError, match="unstructured"):
            method.check_pattern(pattern, "d")


def test_method_seeds_the_scorer_it_builds_unless_it_has_a_seed():
    w = np.ones((6, 5), "float32")
    draws = []
    for global_seed in (1, 2):
        np.random.seed(global_seed)
        draws.append(to_np(ks.methods.SET(seed=3).init_scorer.score(w)))
    np.testing.assert_array_equal(draws[0], draws[1])
    other = to_np(ks.methods.SET(seed=4).init_scorer.score(w))
    assert not np.array_equal(draws[0], other)
    # A scorer's own seed wins; a scorer given as an object is left alone.
    config = ks.scorers.serialize(ks.scorers.RandomScorer(seed=7))
    own = to_np(ks.methods.SET(seed=3, init_scorer=config).init_scorer.score(w))
    np.testing.assert_array_equal(own, to_np(ks.scorers.RandomScorer(seed=7).score(w)))
    given = ks.scorers.RandomScorer()
    assert ks.methods.SET(seed=3, init_scorer=given).init_scorer is given
    assert given._rng is None
    # A scorer that draws nothing ignores the generator.
    rng = np.random.default_rng(0)
    state = rng.bit_generator.state
    assert ks.scorers.MagnitudeScorer().adopt_generator(rng) is None
    assert rng.bit_generator.state == state
