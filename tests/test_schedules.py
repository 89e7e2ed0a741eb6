"""Pruning schedules: timing, sparsity values, config, lookup, tfmot import."""

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

import keras_sparse as ks
from keras_sparse import schedules

# ---------------------------------------------------------------------------
# ConstantSparsity


def test_constant_sparsity_timing():
    s = schedules.ConstantSparsity(0.8, begin_step=10, end_step=310, frequency=100)
    updates = [t for t in range(0, 1000) if s.should_update(t)]
    assert updates == [10, 110, 210, 310]
    assert s.sparsity(9) == 0.0
    assert s.sparsity(10) == 0.8
    assert s.sparsity(5000) == 0.8
    assert s.last_update_step() == 310


def test_constant_sparsity_end_step_not_a_multiple():
    s = schedules.ConstantSparsity(0.5, begin_step=0, end_step=250, frequency=100)
    assert [t for t in range(1000) if s.should_update(t)] == [0, 100, 200]


def test_constant_sparsity_without_end():
    s = schedules.ConstantSparsity(0.5, begin_step=0, frequency=7)
    assert s.should_update(0) and s.should_update(7000) and not s.should_update(7001)
    assert s.last_update_step() is None


def test_constant_sparsity_call_and_docstring():
    s = schedules.ConstantSparsity(0.8, begin_step=0, frequency=100)
    assert s(200) == (True, 0.8)
    assert s(201) == (False, 0.8)
    assert s(np.int64(300)) == (True, 0.8)
    update, value = s(200)
    assert type(update) is bool and type(value) is float


# ---------------------------------------------------------------------------
# PolynomialDecay


def gmp(t, s_i, s_f, t0, t1, p):
    frac = min(1.0, max(0.0, (t - t0) / (t1 - t0)))
    return s_f + (s_i - s_f) * (1 - frac) ** p


def test_polynomial_decay_updates_and_values():
    s = schedules.PolynomialDecay(0.0, 0.9, begin_step=0, end_step=1000, frequency=300)
    # end_step is not a multiple of the frequency but is still an update step.
    assert [t for t in range(3000) if s.should_update(t)] == [0, 300, 600, 900, 1000]
    for t in [0, 300, 500, 900, 1000, 1500]:
        assert s.sparsity(t) == pytest.approx(gmp(t, 0.0, 0.9, 0, 1000, 3))
    assert s(500) == (False, pytest.approx(0.7875))
    assert s(1000) == (True, pytest.approx(0.9))
    assert s.last_update_step() == 1000


def test_polynomial_decay_docstring_example():
    s = schedules.PolynomialDecay(0.0, 0.9, begin_step=0, end_step=1000)
    assert s(500) == (True, pytest.approx(0.7875))


def test_polynomial_decay_with_begin_step_and_power():
    s = schedules.PolynomialDecay(0.2, 0.8, begin_step=100, end_step=700, power=2, frequency=200)
    assert [t for t in range(2000) if s.should_update(t)] == [100, 300, 500, 700]
    assert s.sparsity(0) == pytest.approx(0.2)
    assert s.sparsity(400) == pytest.approx(gmp(400, 0.2, 0.8, 100, 700, 2))
    assert s.sparsity(700) == pytest.approx(0.8)
    assert s.final_sparsity == 0.8 == s.target_sparsity


# ---------------------------------------------------------------------------
# OneShot


def test_one_shot():
    s = schedules.OneShot(5, 0.7)
    assert [t for t in range(100) if s.should_update(t)] == [5]
    assert s.sparsity(4) == 0.0
    assert s.sparsity(5) == 0.7 and s.sparsity(10**6) == 0.7
    assert s.last_update_step() == 5
    assert schedules.OneShot(0, 0.9)(0) == (True, 0.9)


# ---------------------------------------------------------------------------
# with_target


@pytest.mark.parametrize(
    "schedule",
    [
        schedules.ConstantSparsity(0.5, 10, 500, 20),
        schedules.PolynomialDecay(0.1, 0.5, 10, 500, 2, 20),
        schedules.OneShot(3, 0.5),
    ],
    ids=lambda s: type(s).__name__,
)
def test_with_target_keeps_timing(schedule):
    clone = schedule.with_target(0.75)
    assert type(clone) is type(schedule)
    assert clone.target_sparsity == 0.75
    assert schedule.target_sparsity == 0.5  # the original is untouched
    for t in range(0, 600):
        assert clone.should_update(t) == schedule.should_update(t)
    assert clone.sparsity(10**6) == pytest.approx(0.75)
    assert clone.last_update_step() == schedule.last_update_step()
    restored = type(schedule).from_config(clone.get_config())
    assert restored == clone
    with pytest.raises(ValueError, match="1.0"):
        schedule.with_target(1.0)


def test_with_target_polynomial_config():
    clone = schedules.PolynomialDecay(0.0, 0.5, 0, 100).with_target(0.9)
    assert clone.get_config()["final_sparsity"] == 0.9
    assert clone.final_sparsity == 0.9


# ---------------------------------------------------------------------------
# config and serialization

EXAMPLES = [
    schedules.ConstantSparsity(0.7, begin_step=10, end_step=500, frequency=50),
    schedules.ConstantSparsity(),
    schedules.PolynomialDecay(0.1, 0.8, begin_step=5, end_step=105, power=2, frequency=10),
    schedules.PolynomialDecay(),
    schedules.OneShot(3, 0.6),
]


@pytest.mark.parametrize("schedule", EXAMPLES, ids=repr)
def test_config_round_trip(schedule):
    config = schedule.get_config()
    json.dumps(config)
    restored = type(schedule).from_config(config)
    assert restored == schedule
    assert restored.get_config() == config
    for t in [0, 3, 10, 50, 105, 500, 1000]:
        assert restored(t) == schedule(t)


@pytest.mark.parametrize("schedule", EXAMPLES, ids=repr)
def test_keras_serialization_round_trip(schedule):
    serialized = keras.saving.serialize_keras_object(schedule)
    assert serialized["registered_name"] == f"keras_sparse>{type(schedule).__name__}"
    restored = keras.saving.deserialize_keras_object(json.loads(json.dumps(serialized)))
    assert restored == schedule
    assert schedules.serialize(schedule) == serialized
    assert schedules.get(serialized) == schedule


def test_serialize_none():
    assert schedules.serialize(None) is None


# ---------------------------------------------------------------------------
# lookup


@pytest.mark.parametrize(
    "alias,cls",
    [
        ("constant_sparsity", schedules.ConstantSparsity),
        ("constant", schedules.ConstantSparsity),
        ("polynomial_decay", schedules.PolynomialDecay),
        ("gmp", schedules.PolynomialDecay),
        ("one_shot", schedules.OneShot),
        ("  GMP ", schedules.PolynomialDecay),
    ],
)
def test_get_alias(alias, cls):
    s = ks.schedules.get(alias)
    assert type(s) is cls
    assert s == cls()


def test_get_none_and_instance():
    assert ks.schedules.get(None) is None
    s = schedules.OneShot(2, 0.5)
    assert ks.schedules.get(s) is s


@pytest.mark.parametrize("value", [0.5, 0, 0.0, 0.999, np.float64(0.25)], ids=repr)
def test_get_number_is_constant_sparsity(value):
    s = ks.schedules.get(value)
    assert s == schedules.ConstantSparsity(float(value))


@pytest.mark.parametrize("value", [np.float32(0.5), np.int64(0)], ids=repr)
def test_get_numpy_scalar_is_constant_sparsity(value):
    assert ks.schedules.get(value) == schedules.ConstantSparsity(float(value))


@pytest.mark.parametrize(
    "identifier,match",
    [
        (1.5, "schedule=1.5"),
        (-0.1, "schedule=-0.1"),
        (float("nan"), "schedule=nan"),
        (True, "schedule=True"),
        ("cosine_annealing", "schedule='cosine_annealing'"),
        ([0.5], r"schedule=\[0.5\]"),
        ({"foo": 1}, "schedule="),
        (ks.patterns.NByM(2, 4), "schedule=NByM"),
    ],
    ids=repr,
)
def test_get_invalid(identifier, match):
    with pytest.raises(ValueError, match=match):
        ks.schedules.get(identifier)


def test_get_unknown_alias_lists_known_ones():
    with pytest.raises(ValueError) as info:
        ks.schedules.get("nope")
    for alias in ["constant", "gmp", "one_shot", "polynomial_decay"]:
        assert alias in str(info.value)


def test_get_dict_of_other_family_is_rejected():
    serialized = keras.saving.serialize_keras_object(ks.patterns.NByM(2, 4))
    with pytest.raises(ValueError, match="schedule="):
        ks.schedules.get(serialized)


# ---------------------------------------------------------------------------
# argument validation


@pytest.mark.parametrize(
    "cls,kwargs,name",
    [
        (schedules.ConstantSparsity, {"target_sparsity": 1.0}, "target_sparsity"),
        (schedules.ConstantSparsity, {"target_sparsity": -0.5}, "target_sparsity"),
        (schedules.ConstantSparsity, {"target_sparsity": "x"}, "target_sparsity"),
        (schedules.ConstantSparsity, {"begin_step": -1}, "begin_step"),
        (schedules.ConstantSparsity, {"begin_step": 1.5}, "begin_step"),
        (schedules.ConstantSparsity, {"begin_step": True}, "begin_step"),
        (schedules.ConstantSparsity, {"end_step": -2}, "end_step"),
        (schedules.ConstantSparsity, {"begin_step": 10, "end_step": 5}, "end_step"),
        (schedules.ConstantSparsity, {"frequency": 0}, "frequency"),
        (schedules.ConstantSparsity, {"frequency": -3}, "frequency"),
        (schedules.ConstantSparsity, {"frequency": 2.5}, "frequency"),
        (schedules.ConstantSparsity, {"frequency": True}, "frequency"),
        (schedules.PolynomialDecay, {"initial_sparsity": 1.0}, "initial_sparsity"),
        (schedules.PolynomialDecay, {"final_sparsity": 1.2}, "final_sparsity"),
        (schedules.PolynomialDecay, {"final_sparsity": float("nan")}, "final_sparsity"),
        (schedules.PolynomialDecay, {"begin_step": -5}, "begin_step"),
        (schedules.PolynomialDecay, {"end_step": -1}, "end_step"),
        (schedules.PolynomialDecay, {"begin_step": 10, "end_step": 10}, "end_step"),
        (schedules.PolynomialDecay, {"power": 0}, "power"),
        (schedules.PolynomialDecay, {"power": -1}, "power"),
        (schedules.PolynomialDecay, {"power": float("inf")}, "power"),
        (schedules.PolynomialDecay, {"power": float("-inf")}, "power"),
        (schedules.PolynomialDecay, {"power": float("nan")}, "power"),
        (schedules.PolynomialDecay, {"power": 0.0}, "power"),
        (schedules.PolynomialDecay, {"power": np.float32("inf")}, "power"),
        (schedules.PolynomialDecay, {"frequency": 0}, "frequency"),
        (schedules.OneShot, {"step": -1}, "step"),
        (schedules.OneShot, {"step": 2.0}, "step"),
        (schedules.OneShot, {"target_sparsity": 1.0}, "target_sparsity"),
    ],
    ids=lambda v: v.__name__ if isinstance(v, type) else repr(v),
)
def test_invalid_arguments_name_the_argument(cls, kwargs, name):
    with pytest.raises(ValueError) as info:
        cls(**kwargs)
    assert f"{name}=" in str(info.value)


@pytest.mark.parametrize("power", [float("inf"), float("nan"), 0, -2.5])
def test_polynomial_decay_bad_power_names_the_value(power):
    with pytest.raises(ValueError) as info:
        schedules.PolynomialDecay(power=power)
    assert f"power={power!r}" in str(info.value)
    assert "finite" in str(info.value)


def test_polynomial_decay_decreasing_sparsity_warns_as_tfmot_accepts_it():
    with pytest.warns(UserWarning, match="final_sparsity") as record:
        s = schedules.PolynomialDecay(0.8, 0.2, begin_step=0, end_step=100, frequency=10)
    message = str(record[0].message)
    assert "initial_sparsity=0.8" in message and "final_sparsity=0.2" in message
    assert s(0) == (True, 0.8) and s(100) == (True, 0.2)
    assert s.get_config()["initial_sparsity"] == 0.8


def test_polynomial_decay_checks_every_argument_before_setting_any():
    s = schedules.PolynomialDecay(0.1, 0.5, begin_step=0, end_step=100, power=2, frequency=10)
    config = s.get_config()
    with pytest.raises(ValueError, match="power=inf"):
        s.__init__(0.3, 0.6, begin_step=5, end_step=50, power=float("inf"), frequency=5)
    assert s.get_config() == config


@pytest.mark.parametrize("power", [None, "3"], ids=repr)
def test_polynomial_decay_non_numeric_power(power):
    with pytest.raises(ValueError, match="power="):
        schedules.PolynomialDecay(power=power)


def test_base_class_is_abstract():
    base = schedules.PruningSchedule()
    with pytest.raises(NotImplementedError):
        base(0)
    assert base.last_update_step() is None


# ---------------------------------------------------------------------------
# tfmot schedules

TFMOT_MODULE = "tensorflow_model_optimization.python.core.sparsity.keras.pruning_schedule"


def _fake_tfmot_class(name, keys):
    """A stand-in with tfmot's module path and its get_config format."""

    def __init__(self, **kwargs):
        self.kwargs = kwargs

    def get_config(self):
        return {"class_name": type(self).__name__, "config": {k: self.kwargs[k] for k in keys}}

    return type(name, (), {"__init__": __init__, "get_config": get_config, "__module__": TFMOT_MODULE})


FakeConstant = _fake_tfmot_class(
    "ConstantSparsity", ["target_sparsity", "begin_step", "end_step", "frequency"]
)
FakePolynomial = _fake_tfmot_class(
    "PolynomialDecay",
    ["initial_sparsity", "final_sparsity", "power", "begin_step", "end_step", "frequency"],
)


def test_fake_tfmot_constant_sparsity_is_converted():
    fake = FakeConstant(target_sparsity=0.6, begin_step=20, end_step=-1, frequency=40)
    s = ks.schedules.get(fake)
    assert s == schedules.ConstantSparsity(0.6, begin_step=20, end_step=-1, frequency=40,
                                           step_origin=1)


def test_fake_tfmot_polynomial_decay_is_converted():
    # tfmot configs can hold numpy scalars; they are converted to Python types.
    fake = FakePolynomial(
        initial_sparsity=np.float32(0.25),
        final_sparsity=0.75,
        power=2,
        begin_step=np.int64(5),
        end_step=105,
        frequency=10,
    )
    s = ks.schedules.get(fake)
    assert type(s) is schedules.PolynomialDecay
    assert s.get_config() == {
        "initial_sparsity": 0.25,
        "final_sparsity": 0.75,
        "begin_step": 5,
        "end_step": 105,
        "power": 2,
        "frequency": 10,
        "step_origin": 1,
    }


def test_fake_tfmot_flat_config_is_converted():
    # Accept a get_config without the {"class_name", "config"} wrapper too.
    cls = type(
        "ConstantSparsity",
        (),
        {
            "__module__": TFMOT_MODULE,
            "get_config": lambda self: {
                "target_sparsity": 0.5,
                "begin_step": 0,
                "end_step": 100,
                "frequency": 10,
            },
        },
    )
    assert ks.schedules.get(cls()) == schedules.ConstantSparsity(0.5, 0, 100, 10, step_origin=1)


def test_fake_tfmot_unknown_schedule_rejected():
    other = _fake_tfmot_class("CustomSchedule", [])
    with pytest.raises(ValueError, match="ConstantSparsity and PolynomialDecay"):
        ks.schedules.get(other())


def test_fake_tfmot_invalid_values_rejected():
    fake = FakeConstant(target_sparsity=1.0, begin_step=0, end_step=-1, frequency=100)
    with pytest.raises(ValueError, match="target_sparsity"):
        ks.schedules.get(fake)


_TFMOT_SCRIPT = textwrap.dedent(
    """
    import json
    import numpy as np
    import tensorflow_model_optimization as tfmot
    import keras_sparse as ks

    pairs = {
        "constant": tfmot.sparsity.keras.ConstantSparsity(0.5, 10, 200, 20),
        "constant_no_end": tfmot.sparsity.keras.ConstantSparsity(0.3, 0, -1, 7),
        "polynomial": tfmot.sparsity.keras.PolynomialDecay(
            0.1, 0.8, 5, 105, power=2, frequency=10),
    }
    out = {}
    for key, theirs in pairs.items():
        ours = ks.schedules.get(theirs)
        rows = []
        # tfmot's step t is the batch this library counts as t - 1.
        for step in [1, 4, 5, 10, 15, 25, 30, 55, 100, 105, 190, 200, 210, 1000]:
            update, value = theirs(step)
            rows.append([step, bool(np.asarray(update)), float(np.asarray(value)),
                         *map(lambda v: v if isinstance(v, bool) else float(v),
                              ours(step - 1))])
        out[key] = {"class": type(ours).__name__, "config": ours.get_config(), "rows": rows}
    print("RESULT" + json.dumps(out))
    """
)


@pytest.mark.tf_only
@pytest.mark.skipif(
    importlib.util.find_spec("tensorflow_model_optimization") is None,
    reason="tensorflow_model_optimization is not installed",
)
def test_real_tfmot_schedules_are_converted():
    # Importing tfmot sets TF_USE_LEGACY_KERAS=1 for the whole process, so the
    # comparison runs in a child interpreter.
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run(
        [sys.executable, "-c", _TFMOT_SCRIPT],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT")][-1]
    out = json.loads(line[len("RESULT") :])

    assert out["constant"]["class"] == "ConstantSparsity"
    # Converted schedules count steps as tfmot does (its first batch is 1).
    assert out["constant"]["config"] == {
        "target_sparsity": 0.5, "begin_step": 10, "end_step": 200, "frequency": 20,
        "step_origin": 1,
    }
    assert out["constant_no_end"]["config"]["end_step"] == -1
    assert out["polynomial"]["class"] == "PolynomialDecay"
    assert out["polynomial"]["config"] == {
        "initial_sparsity": 0.1, "final_sparsity": 0.8, "begin_step": 5,
        "end_step": 105, "power": 2, "frequency": 10, "step_origin": 1,
    }
    for key in ["constant", "constant_no_end"]:
        for step, their_update, their_value, our_update, our_value in out[key]["rows"]:
            assert our_update == their_update, (key, step)
            if step >= out[key]["config"]["begin_step"]:
                assert our_value == pytest.approx(their_value, abs=1e-6), (key, step)
    for step, their_update, their_value, our_update, our_value in out["polynomial"]["rows"]:
        assert our_value == pytest.approx(their_value, abs=1e-6), step
        # Same update steps (converted schedules keep tfmot's rule: no extra
        # update at end_step).
        assert our_update == their_update, step


# ---------------------------------------------------------------------------
# boundaries, numpy integers, per-layer targets


@pytest.mark.parametrize(
    "schedule",
    [
        schedules.ConstantSparsity(0.5, begin_step=0, end_step=250, frequency=100),
        schedules.ConstantSparsity(0.5, begin_step=7, end_step=30, frequency=4),
        schedules.ConstantSparsity(0.5, begin_step=5, end_step=5, frequency=3),
        schedules.PolynomialDecay(0.0, 0.5, begin_step=3, end_step=20, frequency=6),
        schedules.OneShot(4, 0.5),
    ],
    ids=repr,
)
def test_last_update_step_is_the_last_step_that_updates(schedule):
    updates = [t for t in range(1000) if schedule.should_update(t)]
    assert schedule.last_update_step() == updates[-1]


def test_numpy_integer_steps_are_accepted_as_python_ints():
    steps = np.ceil(np.float64(95) / 16).astype(int) * 3  # np.int64(18)
    constant = schedules.ConstantSparsity(0.5, np.int64(2), steps, np.int32(4))
    assert constant == schedules.ConstantSparsity(0.5, 2, 18, 4)
    polynomial = schedules.PolynomialDecay(0.0, 0.5, np.int64(0), steps, np.int64(2), np.int64(3))
    assert polynomial == schedules.PolynomialDecay(0.0, 0.5, 0, 18, 2, 3)
    assert schedules.OneShot(np.int64(3), 0.5) == schedules.OneShot(3, 0.5)
    for schedule in (constant, polynomial):
        json.dumps(schedule.get_config())
        assert all(type(v) in (int, float) for v in schedule.get_config().values())
    json.dumps(schedules.PolynomialDecay(power=np.float32(1.5)).get_config())
    with pytest.raises(ValueError, match="begin_step=np.False_|begin_step=False"):
        schedules.ConstantSparsity(0.5, begin_step=np.bool_(False))


def test_with_target_below_the_initial_sparsity_never_prunes_past_the_target():
    schedule = schedules.PolynomialDecay(0.5, 0.9, begin_step=0, end_step=100, frequency=10)
    for target in (0.0, 0.3):
        clone = schedule.with_target(target)
        assert max(clone.sparsity(t) for t in range(0, 200)) == pytest.approx(target)
        assert type(clone).from_config(clone.get_config()) == clone
    assert schedule.with_target(0.95).initial_sparsity == 0.5
    assert schedule.initial_sparsity == 0.5


def test_erk_layer_kept_dense_stays_dense_under_polynomial_decay():
    model = keras.Sequential([
        keras.Input((4,)),
        keras.layers.Dense(64, name="a"),
        keras.layers.Dense(64, name="b"),
        keras.layers.Dense(2, name="c"),
    ])
    schedule = schedules.PolynomialDecay(0.5, 0.6, begin_step=0, end_step=100, frequency=10)
    pruned = ks.prune(model, 0.6, schedule=schedule, distribution="erk")
    for layer in ks.utils.sparse_layers(pruned):
        target = layer.schedule.target_sparsity
        assert max(layer.schedule.sparsity(t) for t in range(0, 101, 10)) == pytest.approx(target)
    assert min(l.schedule.target_sparsity for l in ks.utils.sparse_layers(pruned)) == 0.0


def _tfmot_should_prune(step, begin, end, frequency):
    """tfmot's rule, on its own step count (the first batch is step 1)."""
    return step >= begin and (end == -1 or step <= end) and (step - begin) % frequency == 0


def _tfmot_polynomial(step, initial, final, begin, end, power):
    p = min(1.0, max(0.0, (step - begin) / (end - begin)))
    return final + (initial - final) * (1 - p) ** power


@pytest.mark.parametrize("begin,end,frequency", [(0, 100, 10), (3, 57, 7), (0, 30, 100)])
def test_tfmot_schedules_keep_tfmot_step_origin(begin, end, frequency):
    # Batch b (0-based) is tfmot's step b + 1: a converted schedule prunes at
    # the batches tfmot prunes at, to tfmot's sparsity there.
    poly = ks.schedules.get(FakePolynomial(initial_sparsity=0.1, final_sparsity=0.8, power=3,
                                           begin_step=begin, end_step=end, frequency=frequency))
    const = ks.schedules.get(FakeConstant(target_sparsity=0.5, begin_step=begin, end_step=end,
                                          frequency=frequency))
    updates = []
    for batch in range(end + 20):
        tfmot_step = batch + 1
        due = _tfmot_should_prune(tfmot_step, begin, end, frequency)
        assert poly.should_update(batch) == due, batch
        assert const.should_update(batch) == due, batch
        if due:
            updates.append(batch)
            assert poly.sparsity(batch) == pytest.approx(
                _tfmot_polynomial(tfmot_step, 0.1, 0.8, begin, end, 3))
    assert poly.last_update_step() == (updates[-1] if updates else poly.last_update_step())
    restored = schedules.PolynomialDecay.from_config(poly.get_config())
    assert restored == poly and restored.step_origin == 1


def test_step_origin_is_validated():
    with pytest.raises(ValueError, match="step_origin"):
        schedules.PolynomialDecay(0.0, 0.5, 0, 10, step_origin=2)
