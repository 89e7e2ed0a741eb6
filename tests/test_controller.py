"""SparsityController and the control rules: the penalty's coefficient is
steered so the exact sparsity ends at the target, with no coefficient given."""

import math
import warnings

import keras
import numpy as np
import pytest
from conftest import to_np

import keras_sparse as ks
from keras_sparse import controllers


# ------------------------------------------------------------------- rules
def test_pi_rule_is_velocity_form_on_log_lambda():
    rule = controllers.PI(kp=2.0, ki=1.0, retreat=1.0, max_change=10.0)
    state = {}
    first = rule.update(1.0, 0.5, 0.25, state)             # e = 0.5, no previous
    assert first == pytest.approx(math.exp(1.0 * 0.5))
    second = rule.update(first, 0.5, 0.45, state)           # e = 0.1, de = -0.4
    assert second == pytest.approx(first * math.exp(2.0 * -0.4 + 1.0 * 0.1))


def test_pi_rule_retreats_faster_and_clips():
    rule = controllers.PI(kp=0.0, ki=1.0, retreat=3.0, max_change=0.5)
    assert rule.update(1.0, 0.5, 0.6, {}) == pytest.approx(math.exp(-0.5))   # clipped
    rule = controllers.PI(kp=0.0, ki=1.0, retreat=3.0, max_change=5.0)
    assert rule.update(1.0, 0.5, 0.55, {}) == pytest.approx(math.exp(-0.3))  # 3 x (-0.1)


def test_relative_error_has_a_floor():
    assert controllers.relative_error(0.9, 0.45) == pytest.approx(0.5)
    assert controllers.relative_error(0.0, 0.01) == pytest.approx(-0.2)


def test_dual_ascent_is_exponentiated():
    rule = ks.controllers.DualAscent(rate=2.0, max_change=10.0)
    assert rule.update(0.1, 0.5, 0.25, {}) == pytest.approx(0.1 * math.exp(1.0))


@pytest.mark.parametrize("alias, cls", [("pi", controllers.PI), ("dual_ascent", controllers.DualAscent),
                                        ("dual", controllers.DualAscent), (None, controllers.PI)])
def test_aliases_and_round_trip(alias, cls):
    rule = ks.controllers.get(alias)
    assert type(rule) is cls
    again = ks.controllers.deserialize(ks.controllers.serialize(rule))
    assert type(again) is cls and again.get_config() == rule.get_config()


@pytest.mark.parametrize("kwargs", [{"kp": -1.0}, {"ki": 0.0}, {"retreat": 0.5}, {"max_change": 0}])
def test_pi_bad_arguments(kwargs):
    key, value = next(iter(kwargs.items()))
    with pytest.raises(ValueError, match=f"{key}={value!r}"):
        controllers.PI(**kwargs)


# ---------------------------------------------------------------- callback
def _data(n=256, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 20)).astype("float32")
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype("int32")
    return x, y


def _model(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((20,)),
        keras.layers.Dense(48, activation="relu", name="hidden"),
        keras.layers.Dense(32, activation="relu", name="hidden2"),
        keras.layers.Dense(2, name="out"),
    ])


def _compile(model, penalty="l1", **kwargs):
    optimizer = ks.optimizers.Proximal(
        keras.optimizers.Adam(1e-2), penalty,
        variables=ks.optimizers.kernels(model, exclude="out"), **kwargs)
    model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return optimizer


def _fit(model, controller, epochs=8, x=None, y=None):
    if x is None:
        x, y = _data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model.fit(x, y, epochs=epochs, batch_size=32, verbose=0, callbacks=[controller])


@pytest.mark.parametrize("penalty, target", [
    ("l1", 0.8),
    (ks.regularizers.GroupLasso(groups="units"), 0.5),
])
def test_ends_exactly_at_the_target_and_logs_lambda(penalty, target):
    model = _model()
    optimizer = _compile(model, penalty)
    controller = ks.callbacks.SparsityController(target)
    history = _fit(model, controller)
    kernels = [to_np(model.get_layer(n).kernel) for n in ("hidden", "hidden2")]
    if isinstance(penalty, str):
        total = sum(k.size for k in kernels)
        zeros = sum(int((k == 0).sum()) for k in kernels)
        assert zeros == math.ceil(target * total)
    else:
        units = sum(k.shape[1] for k in kernels)
        zero_units = sum(int((k == 0).all(axis=0).sum()) for k in kernels)
        assert zero_units == math.ceil(target * units)
    assert optimizer.sparsity() == pytest.approx(target, abs=0.005)
    for key in ("lambda", "controlled_sparsity", "target_sparsity"):
        assert key in history.history
    lambdas = [r["lambda"] for r in controller.trajectory]
    assert len(set(lambdas)) > 3            # the coefficient was steered
    assert lambdas[-1] == 0.0                # then released for the fine-tune
    assert history.history["target_sparsity"][-1] == pytest.approx(target)
    assert to_np(optimizer.coefficient) == 0.0
    # The output layer was not penalized.
    assert (to_np(model.get_layer("out").kernel) != 0).all()


def test_zeros_stay_after_the_hold_and_a_second_fit_only_fine_tunes():
    model = _model()
    optimizer = _compile(model)
    _fit(model, ks.callbacks.SparsityController(0.7))
    zeros = [to_np(model.get_layer(n).kernel) == 0 for n in ("hidden", "hidden2")]
    second = ks.callbacks.SparsityController(0.7)
    _fit(model, second, epochs=2)
    for name, zero in zip(("hidden", "hidden2"), zeros):
        kernel = to_np(model.get_layer(name).kernel)
        assert np.all(kernel[zero] == 0)
    assert second.trajectory == []           # held: nothing left to steer
    assert optimizer.sparsity() == pytest.approx(0.7, abs=0.005)


def test_dual_ascent_rule_and_without_projection():
    model = _model()
    optimizer = _compile(model)
    controller = ks.callbacks.SparsityController(
        0.6, controller="dual_ascent", project=False, ramp=0.5)
    _fit(model, controller, epochs=12)
    # Without the projection the sparsity is whatever the rule reached: near
    # the target, not exact; the coefficient is still positive.
    assert abs(optimizer.sparsity() - 0.6) < 0.15
    assert float(to_np(optimizer.coefficient)) > 0


def test_explicit_schedule_is_followed_without_projection():
    model = _model()
    _compile(model)
    schedule = ks.schedules.PolynomialDecay(0.0, 0.5, 0, 40, frequency=1)
    controller = ks.callbacks.SparsityController(0.5, schedule=schedule, update_freq=2)
    _fit(model, controller, epochs=6)
    targets = [r["target"] for r in controller.trajectory]
    steps = [r["step"] for r in controller.trajectory]
    assert targets == [pytest.approx(schedule.sparsity(s)) for s in steps]


def test_initial_coefficient_and_config_round_trip():
    controller = ks.callbacks.SparsityController(
        0.9, controller=ks.controllers.PI(kp=1.0), update_freq=5, initial_coefficient=0.5)
    again = ks.callbacks.SparsityController.from_config(controller.get_config())
    assert again.get_config() == controller.get_config()
    model = _model()
    optimizer = _compile(model)
    _fit(model, controller, epochs=4)         # 32 steps, the ramp ends at 16
    first = controller.trajectory[0]
    assert first["step"] == 5
    # The first update starts from the given coefficient, not the default.
    assert first["lambda"] >= 0.5 * math.exp(-0.5)
    assert optimizer is model.optimizer


@pytest.mark.parametrize("kwargs, match", [
    ({"target": 1.0}, "target=1.0"),
    ({"target": 0.5, "on": "bias"}, "on='bias'"),
    ({"target": 0.5, "update_freq": 0}, "update_freq"),
    ({"target": 0.5, "ramp": 0.0}, "ramp"),
    ({"target": 0.5, "controller": "fuzzy"}, "controller='fuzzy'"),
    ({"target": 0.5, "project": "yes"}, "project='yes'"),
    ({"target": 0.5, "initial_coefficient": -1.0}, "initial_coefficient=-1.0"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        ks.callbacks.SparsityController(**kwargs)


def test_nothing_to_steer_is_a_clear_error_and_leaves_the_model():
    model = _model()
    model.compile("adam", "mse")
    before = [w.copy() for w in model.get_weights()]
    x, y = _data(32)
    with pytest.raises(ValueError, match="Proximal"):
        model.fit(x, y.astype("float32")[:, None].repeat(2, 1), epochs=1, verbose=0,
                  callbacks=[ks.callbacks.SparsityController(0.5)])
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="on='weights'"):
        model.fit(x, y.astype("float32")[:, None].repeat(2, 1), epochs=1, verbose=0,
                  callbacks=[ks.callbacks.SparsityController(0.5, on="weights")])


def test_network_slimming_steers_batchnorm_scales_to_exact_zeros():
    """Slimming (Liu et al. 2017) without a lambda: L1 on the BatchNorm
    scales through Proximal, steered to half of the channels."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((20,)),
        keras.layers.Dense(32, name="hidden"),
        keras.layers.BatchNormalization(name="bn"),
        keras.layers.Activation("relu"),
        keras.layers.Dense(2, name="out"),
    ])
    optimizer = ks.optimizers.Proximal(
        keras.optimizers.Adam(1e-2), "l1", variables=ks.optimizers.PathMatches(r"(^|/)bn/gamma$"))
    model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    _fit(model, ks.callbacks.SparsityController(0.5))
    gamma = to_np(model.get_layer("bn").gamma)
    assert int((gamma == 0).sum()) == 16
    assert (to_np(model.get_layer("hidden").kernel) != 0).all()


@pytest.mark.slow
def test_steers_activation_penalties_to_the_target():
    """The issue's target on digits: test-set activation zeros within 2
    points of the requested 90 %."""
    from keras_sparse.demo import load_digits_split

    x_train, x_test, y_train, _ = load_digits_split(seed=0)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((64,)),
        keras.layers.Dense(300, activation="relu"), ks.layers.ActivitySparsity(name="a1"),
        keras.layers.Dense(10),
    ])
    model.compile(keras.optimizers.Adam(1e-3),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    controller = ks.callbacks.SparsityController(0.9)
    history = _fit(model, controller, epochs=20, x=x_train, y=y_train)
    assert "lambda" in history.history
    assert float(to_np(model.get_layer("a1").coefficient)) > 0
    probe = keras.Model(model.inputs, model.get_layer("a1").output)
    zeros = float((to_np(probe(x_test)) == 0).mean())
    assert abs(zeros - 0.9) < 0.02, zeros
    assert {r["name"] for r in controller.trajectory} == {"a1"}
