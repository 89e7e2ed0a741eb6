"""ks.auto_compress: the bisection, trial records, resuming, bad inputs and
the untouched input model."""

import json
import math
import os

import keras
import numpy as np
import pytest

import keras_sparse as ks
from keras_sparse import compression_search as auto_lib

pytest.importorskip("keras_tuner")


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype("float32")
    rng = np.random.default_rng(0)
    order = rng.permutation(len(x))
    x, y = x[order], y[order].astype("int32")
    return (x[:1400], y[:1400]), (x[1400:], y[1400:])


def _mlp():
    return keras.Sequential([
        keras.Input((64,)),
        keras.layers.Dense(32, activation="relu", name="hidden"),
        keras.layers.Dense(10, name="out"),
    ])


def _compile(model):
    model.compile(keras.optimizers.Adam(1e-3),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


@pytest.fixture(scope="module")
def trained_weights(digits):
    keras.utils.set_random_seed(0)
    model = _compile(_mlp())
    model.fit(*digits[0], epochs=8, batch_size=32, verbose=0)
    return model.get_weights()


@pytest.fixture
def trained(trained_weights):
    model = _compile(_mlp())
    model.set_weights(trained_weights)
    return model


def _weights(model):
    return [np.array(w, copy=True) for w in model.get_weights()]


def _assert_same(before, model):
    after = model.get_weights()
    assert len(before) == len(after)
    for a, b in zip(before, after):
        assert a.dtype == b.dtype and np.array_equal(a, b)


def _expected_levels(passes, max_sparsity=0.99, resolution=0.2):
    """The levels plain bisection in -log10(1 - s) tests, for a predicate."""
    low, high, tol = 0.0, -math.log10(1 - max_sparsity), math.log10(1 + resolution)
    levels = []
    while high - low >= tol:
        mid = (low + high) / 2
        level = round(1 - 10 ** -mid, 6)
        levels.append(level)
        if passes(level):
            low = mid
        else:
            high = mid
    return levels


# ----------------------------------------------------------- the bisection
def test_search_state_bisects_and_splits_with_running_trials():
    combo = (False, 0)
    state = auto_lib._search_state
    tol = math.log10(1.2)
    assert state([], [], combo, 0.9, 2.0, tol) == 1.0
    passed = ({"sparsity": auto_lib._level(1.0), "structured": False, "bits": 0},
              "COMPLETED", 0.95)
    failed = ({"sparsity": auto_lib._level(1.5), "structured": False, "bits": 0},
              "COMPLETED", 0.5)
    assert state([passed], [], combo, 0.9, 2.0, tol) == pytest.approx(1.5, abs=1e-4)
    assert state([passed, failed], [], combo, 0.9, 2.0, tol) == pytest.approx(1.25, abs=1e-4)
    # A crashed trial counts as failing; other combinations are ignored.
    crashed = (dict(failed[0]), "FAILED", None)
    other = ({"sparsity": auto_lib._level(1.9), "structured": True, "bits": 0},
             "COMPLETED", 0.99)
    assert state([passed, crashed, other], [], combo, 0.9, 2.0, tol) == pytest.approx(1.25, abs=1e-4)
    # A running trial at 1.0 splits the first bracket: the next worker takes
    # the middle of the widest part ([0, 1] and [1, 2] tie: the lower one).
    assert state([], [passed[0]], combo, 0.9, 2.0, tol) == pytest.approx(0.5, abs=1e-4)
    # Narrow bracket: wait while a trial runs inside it, else done.
    near = {"sparsity": auto_lib._level(1.0 + tol / 2), "structured": False, "bits": 0}
    tight = ({"sparsity": auto_lib._level(1.0 + tol * 0.9), "structured": False, "bits": 0},
             "COMPLETED", 0.5)
    assert state([passed, tight], [near], combo, 0.9, 2.0, tol) == "wait"
    assert state([passed, tight], [], combo, 0.9, 2.0, tol) == "done"


def test_bisection_finds_the_level_of_a_known_curve(trained, digits, monkeypatch):
    """Fine-tuning mocked to one-shot pruning and the metric to a step in
    the achieved sparsity: the trials are exactly plain bisection's."""
    edge = 0.93
    fits = []

    def fake_fine_tune(model, train, epochs, batch_size, callbacks):
        fits.append(epochs)
        return 0  # no step: auto_compress prunes to the allocation at once

    def fake_metric(model, validation, metric, batch_size):
        sparsity = ks.report(model, print_fn=None).totals["sparsity"]
        return 0.95 if sparsity < edge else 0.90

    monkeypatch.setattr(auto_lib, "_fine_tune", fake_fine_tune)
    monkeypatch.setattr(auto_lib, "_validation_metric", fake_metric)
    result = ks.auto_compress(trained, digits[0], validation_data=digits[1],
                              max_accuracy_drop=0.01, allocation="lamp")
    want = _expected_levels(lambda s: s < edge)
    # Levels are stored rounded to 6 decimals: the brackets agree to 1e-4.
    assert [row["sparsity"] for row in result.trials.rows] == pytest.approx(want, abs=1e-4)
    assert len(fits) == len(want)
    passing = [s for s in want if s < edge]
    assert result.best["sparsity"] == pytest.approx(max(passing), abs=1e-4)
    assert result.baseline == 0.95 and result.trials.threshold == pytest.approx(0.94)
    assert ks.report(result.model, print_fn=None).totals["sparsity"] == pytest.approx(
        max(passing), abs=1e-3)
    assert all(row["passed"] == (row["sparsity"] < edge) for row in result.trials.rows)


def test_bits_and_structured_get_their_own_brackets(trained, digits, monkeypatch):
    monkeypatch.setattr(auto_lib, "_fine_tune", lambda *a: 0)
    monkeypatch.setattr(auto_lib, "_validation_metric", lambda *a: 0.95)
    result = ks.auto_compress(trained, digits[0], validation_data=digits[1], bits=(None, 8),
                              structured=True, resolution=1.0, allocation="uniform")
    combos = [(row["structured"], row["bits"]) for row in result.trials.rows]
    per = len(_expected_levels(lambda s: True, resolution=1.0))
    assert combos == [(False, None)] * per + [(False, 8)] * per + [(True, None)] * per
    # Everything passes: the smallest of all wins.
    rows = result.trials.rows
    assert result.best["size_bytes"] == min(row["size_bytes"] for row in rows)
    float_rows = [row for row in rows if not row["structured"] and row["bits"] is None]
    int8_rows = [row for row in rows if row["bits"] == 8]
    assert [row["sparsity"] for row in float_rows] == [row["sparsity"] for row in int8_rows]
    # At 90 % the 8-bit values save more than the per-channel scales cost.
    assert int8_rows[0]["size_bytes"] < float_rows[0]["size_bytes"]
    structured = [row for row in result.trials.rows if row["structured"]]
    assert all(row["size_bytes"] < result.trials.dense_bytes for row in structured)


# ------------------------------------------------------------ real searches
@pytest.mark.slow
def test_search_records_every_trial(trained, digits, tmp_path):
    before = _weights(trained)
    result = ks.auto_compress(trained, digits[0], validation_data=digits[1],
                              max_accuracy_drop=0.02, fine_tune_epochs=1, resolution=1.0,
                              directory=str(tmp_path), project_name="p", seed=1)
    _assert_same(before, trained)
    rows = result.trials.rows
    trial_dirs = [d for d in os.listdir(tmp_path / "p") if d.startswith("trial_")]
    assert len(rows) == len(trial_dirs) == len(_expected_levels(lambda s: True, resolution=1.0))
    baseline = trained.evaluate(*digits[1], verbose=0, return_dict=True)["accuracy"]
    assert result.baseline == pytest.approx(baseline)
    for row in rows:
        assert row["status"] == "COMPLETED"
        assert row["fine_tune_epochs"] == 1 and row["seconds"] > 0
        assert row["achieved_sparsity"] == pytest.approx(row["sparsity"], abs=1e-3)
        assert row["size_bytes"] < result.trials.dense_bytes
        assert row["compression"] == pytest.approx(result.trials.dense_bytes / row["size_bytes"])
        assert row["passed"] == (row["val_metric"] >= baseline - 0.02)
        assert set(row["per_layer"]) == {"hidden", "out"}
        assert ks.allocation.removed_fraction(trained, row["per_layer"]) == pytest.approx(
            row["sparsity"], abs=1e-3)
    assert result.trials.fine_tune_epochs == len(rows)
    json.dumps(result.trials.to_dict())
    assert "accuracy" in str(result.trials)
    # The chosen model: compiled with the input's config, pruned, measured.
    assert result.best is not None and result.best["passed"]
    assert result.best["size_bytes"] == min(r["size_bytes"] for r in rows if r["passed"])
    model = result.model
    assert model.compiled and model is not trained
    assert model.get_compile_config()["loss"] == trained.get_compile_config()["loss"]
    totals = ks.report(model, print_fn=None).totals
    assert totals["packed_bytes"] == result.best["size_bytes"]
    logs = model.evaluate(*digits[1], verbose=0, return_dict=True)
    assert logs["accuracy"] == pytest.approx(result.best["val_metric"])
    plain = ks.strip(model)
    assert not any(ks.layers.is_sparse_layer(layer) for layer in plain.layers)
    np.testing.assert_allclose(plain.predict(digits[1][0], verbose=0),
                               model.predict(digits[1][0], verbose=0), atol=1e-5)


@pytest.mark.slow
def test_plot(trained, digits, monkeypatch):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    monkeypatch.setattr(auto_lib, "_fine_tune", lambda *a: 0)
    result = ks.auto_compress(trained, digits[0], validation_data=digits[1], resolution=1.0,
                              max_accuracy_drop=0.1)
    assert {row["passed"] for row in result.trials.rows} == {True, False}
    ax = result.trials.plot()
    points = sum(len(c.get_offsets()) for c in ax.collections)
    assert points == len(result.trials.rows) + 1  # the trials and the dense model


def test_plot_without_matplotlib_names_the_extra(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    trials = ks.CompressionTrials([], "accuracy", 0.9, 0.89, 100)
    with pytest.raises(ImportError, match=r"keras-sparse\[plot\]"):
        trials.plot()


@pytest.mark.slow
@pytest.mark.tf_only
def test_tf_data_datasets(trained, digits):
    import tensorflow as tf

    train = tf.data.Dataset.from_tensor_slices(digits[0]).batch(64)
    val = tf.data.Dataset.from_tensor_slices(digits[1]).batch(64)
    result = ks.auto_compress(trained, train, validation_data=val, resolution=2.0,
                              max_accuracy_drop=0.05, seed=0)
    assert len(result.trials.rows) == len(_expected_levels(lambda s: True, resolution=2.0))
    want = trained.evaluate(*digits[1], verbose=0, return_dict=True)["accuracy"]
    assert result.baseline == pytest.approx(want)
    for row in result.trials.rows:
        # Gradual pruning over the dataset's known length reaches the level.
        assert row["achieved_sparsity"] == pytest.approx(row["sparsity"], abs=1e-3)
        assert row["fine_tune_epochs"] == 1


@pytest.mark.slow
def test_resume_runs_no_finished_trial_again(trained, digits, tmp_path, monkeypatch):
    real = auto_lib._fine_tune
    calls = []

    def counting(model, train, epochs, batch_size, callbacks):
        calls.append(model)
        if len(calls) == 3 and killer["on"]:
            raise KeyboardInterrupt  # killed in the middle of the third trial
        return real(model, train, epochs, batch_size, callbacks)

    killer = {"on": True}
    monkeypatch.setattr(auto_lib, "_fine_tune", counting)
    kwargs = dict(validation_data=digits[1], fine_tune_epochs=1, resolution=0.5,
                  directory=str(tmp_path), project_name="p", seed=3)
    before = _weights(trained)
    with pytest.raises(KeyboardInterrupt):
        ks.auto_compress(trained, digits[0], **kwargs)
    _assert_same(before, trained)
    finished = auto_lib._rows(str(tmp_path / "p"), -1.0)
    done = [r for r in finished if r["status"] == "COMPLETED"]
    assert len(done) == 2 and len(finished) == 3  # the third was cut short
    killer["on"] = False
    calls.clear()
    result = ks.auto_compress(trained, digits[0], **kwargs)
    total = len(_expected_levels(lambda s: True, resolution=0.5))
    n = len(result.trials.rows)
    assert 3 <= n <= total
    # Only the cut-short trial and the new ones were fine-tuned.
    assert len(calls) == n - 2
    for old, new in zip(done, result.trials.rows):
        assert new["val_metric"] == old["val_metric"] and new["seconds"] == old["seconds"]
    # Finished search: a third call fine-tunes nothing and gives the same answer.
    calls.clear()
    again = ks.auto_compress(trained, digits[0], **kwargs)
    assert calls == []
    assert again.trials.rows == result.trials.rows and again.best == result.best
    np.testing.assert_array_equal(again.model.predict(digits[1][0], verbose=0),
                                  result.model.predict(digits[1][0], verbose=0))
    _assert_same(before, trained)


@pytest.mark.slow
def test_project_of_another_model_is_refused(trained, digits, tmp_path, monkeypatch):
    monkeypatch.setattr(auto_lib, "_fine_tune", lambda *a: 0)
    ks.auto_compress(trained, digits[0], validation_data=digits[1], resolution=2.0,
                     max_accuracy_drop=0.5, directory=str(tmp_path), project_name="p")
    other = _compile(keras.Sequential([keras.Input((64,)), keras.layers.Dense(10, name="d")]))
    with pytest.raises(ValueError, match="another model"):
        ks.auto_compress(other, digits[0], validation_data=digits[1],
                         directory=str(tmp_path), project_name="p")
    result = ks.auto_compress(other, digits[0], validation_data=digits[1], resolution=2.0,
                              directory=str(tmp_path), project_name="p", overwrite=True)
    assert result.trials.rows


# --------------------------------------------------------------- bad inputs
class Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(10)

    def call(self, x):
        return self.dense(x)


@pytest.mark.parametrize("kwargs, error, text", [
    (dict(max_accuracy_drop=-0.1), ValueError, "max_accuracy_drop=-0.1"),
    (dict(max_accuracy_drop=1.0), ValueError, "max_accuracy_drop=1.0"),
    (dict(max_accuracy_drop="1%"), TypeError, "max_accuracy_drop"),
    (dict(fine_tune_epochs=-1), ValueError, "fine_tune_epochs=-1"),
    (dict(max_trials=0), ValueError, "max_trials=0"),
    (dict(max_sparsity=1.0), ValueError, "max_sparsity=1.0"),
    (dict(resolution=-0.5), ValueError, "resolution=-0.5"),
    (dict(by="weights"), ValueError, "by='weights'"),
    (dict(allocation="erk"), ValueError, "allocation='erk'"),
    (dict(pruning="later"), ValueError, "pruning='later'"),
    (dict(bits=16), ValueError, "bits=16"),
    (dict(structured="yes"), TypeError, "structured"),
    (dict(metric=3), TypeError, "metric"),
    (dict(metric="auc"), ValueError, "metric='auc'"),
])
def test_bad_arguments(trained, digits, kwargs, error, text, monkeypatch, tmp_path):
    monkeypatch.setattr(auto_lib, "_fine_tune", lambda *a: pytest.fail("a trial ran"))
    before = _weights(trained)
    args = dict(validation_data=digits[1], directory=str(tmp_path))
    args.update(kwargs)
    with pytest.raises(error, match=text.replace("(", r"\(").replace(")", r"\)")):
        ks.auto_compress(trained, digits[0], **args)
    _assert_same(before, trained)


def test_bad_data_and_models(trained, digits):
    x, y = digits[0]
    with pytest.raises(ValueError, match="labels"):
        ks.auto_compress(trained, x, validation_data=digits[1])
    with pytest.raises(ValueError, match="labels"):
        ks.auto_compress(trained, digits[0], validation_data=digits[1][0])
    with pytest.raises(ValueError, match="labels"):
        ks.auto_compress(trained, (x, None), validation_data=digits[1])
    with pytest.raises(TypeError, match="model"):
        ks.auto_compress("model.keras", digits[0], validation_data=digits[1])
    with pytest.raises(ValueError, match="compiled"):
        ks.auto_compress(_mlp(), digits[0], validation_data=digits[1])
    nothing = _compile(keras.Sequential([keras.Input((64,)), keras.layers.Activation("relu")]))
    with pytest.raises(ValueError, match="no layer that can be pruned"):
        ks.auto_compress(nothing, digits[0], validation_data=digits[1])
    single = _compile(keras.Sequential([keras.Input((64,)), keras.layers.Dense(10)]))
    with pytest.raises(ValueError, match="structured=True"):
        ks.auto_compress(single, digits[0], validation_data=digits[1], structured=True)
    sub = Subclassed()
    sub(x[:2])
    _compile(sub)
    with pytest.raises(ValueError, match="Sequential or functional"):
        ks.auto_compress(sub, digits[0], validation_data=digits[1])


def test_failed_search_leaves_the_model_untouched(trained, digits, monkeypatch):
    def broken(model, train, epochs, batch_size, callbacks):
        for layer in model.layers:  # damage the trial's copy, then fail
            layer.set_weights([np.zeros_like(w) for w in layer.get_weights()])
        raise RuntimeError("fine-tune failed")

    monkeypatch.setattr(auto_lib, "_fine_tune", broken)
    before = _weights(trained)
    config = trained.get_config()
    with pytest.raises(RuntimeError, match="consecutive failures"):
        ks.auto_compress(trained, digits[0], validation_data=digits[1])
    _assert_same(before, trained)
    assert trained.get_config() == config
    assert not any(ks.layers.is_sparse_layer(layer) for layer in trained.layers)
    assert int(trained.optimizer.iterations.numpy()) == 0


# -------------------------------------------------------------- distributed
_DISTRIBUTED_SCRIPT = """
import json, sys
import keras, numpy as np
import keras_sparse as ks
from keras_sparse import compression_search as auto_lib

real, count = auto_lib._fine_tune, []
def counting(*args):
    count.append(1)
    return real(*args)
auto_lib._fine_tune = counting
rng = np.random.default_rng(0)
x = rng.normal(size=(256, 8)).astype("float32")
y = (x[:, 0] > 0).astype("int32")
keras.utils.set_random_seed(0)
model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"),
                          keras.layers.Dense(2)])
model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True),
              metrics=["accuracy"])
model.fit(x, y, epochs=3, verbose=0)
result = ks.auto_compress(model, (x, y), validation_data=(x, y), resolution=1.0,
                          max_accuracy_drop=0.05, directory=sys.argv[1], project_name="p",
                          seed=0)
print("RESULT " + json.dumps({"fine_tunes": len(count), "rows": result.trials.rows}))
"""


@pytest.mark.slow
def test_distributed_chief_serves_and_worker_runs_every_trial(tmp_path):
    """KerasTuner's distributed mode on one machine: a chief process and a
    worker process with the same script and a shared directory."""
    pytest.importorskip("grpc")
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = os.path.dirname(os.path.dirname(os.path.abspath(ks.__file__)))
    procs = {}
    for role in ("chief", "tuner0"):
        env = dict(os.environ, KERASTUNER_TUNER_ID=role, KERASTUNER_ORACLE_IP="127.0.0.1",
                   KERASTUNER_ORACLE_PORT=str(port),
                   PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
        procs[role] = subprocess.Popen(
            [sys.executable, "-c", _DISTRIBUTED_SCRIPT, str(tmp_path)], env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out = {}
    for role, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=240)
        assert proc.returncode == 0, stderr[-3000:]
        line = [s for s in stdout.splitlines() if s.startswith("RESULT ")][-1]
        out[role] = json.loads(line[len("RESULT "):])
    rows = out["chief"]["rows"]
    assert len(rows) == len(_expected_levels(lambda s: True, resolution=1.0))
    assert all(row["status"] == "COMPLETED" for row in rows)
    # The chief only serves the bisection; the worker fine-tuned every trial.
    assert out["chief"]["fine_tunes"] == 0
    assert out["tuner0"]["fine_tunes"] == len(rows)
    assert out["tuner0"]["rows"] == rows
