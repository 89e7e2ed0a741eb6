"""``ks.auto_compress``: the most compressed model whose validation
accuracy stays within a given drop of the dense model's, found by a search
with short fine-tunes run as KerasTuner trials.

The accuracy of a pruned and briefly fine-tuned model falls, roughly
monotonically, as its sparsity grows. The search bisects the sparsity level
in log-density (``u = -log10(1 - sparsity)``: 0.9, 0.99 and 0.999 are equal
steps): the bracket is the highest level that passed and the lowest level
above it that failed (at first the dense model, which passes by definition,
and ``max_sparsity``), and each trial tests the middle of it. Each level is
split over the layers by :func:`keras_sparse.allocate` from one
:func:`keras_sparse.sensitivity` table measured on the validation data
before the search (no training). Trials are run by a KerasTuner ``Oracle``
(the bisection) and a ``BaseTuner`` (prune, fine-tune, evaluate), so the
project directory makes a search resumable and KerasTuner's distributed
mode spreads trials over machines.
"""

import functools
import glob
import json
import math
import os
import shutil
import tempfile
import time
import warnings

import keras
import numpy as np

from keras_sparse import callbacks as callbacks_lib
from keras_sparse import schedules as schedules_lib
from keras_sparse.allocation import allocate
from keras_sparse.checks import check_bool
from keras_sparse.checks import check_int
from keras_sparse.checks import pyplot
from keras_sparse.checks import check_model
from keras_sparse.checks import check_number
from keras_sparse.checks import type_error
from keras_sparse.convert import prune
from keras_sparse.layers.base import SparseMixin
from keras_sparse.quantize import quantize
from keras_sparse.report import report
from keras_sparse.selection import is_cloneable_model
from keras_sparse.selection import prunable_weights
from keras_sparse.selection import built_prunable_weights
from keras_sparse.sensitivity import SensitivityTable
from keras_sparse.sensitivity import _check_data
from keras_sparse.sensitivity import sensitivity
from keras_sparse.shrink import prune_channels
from keras_sparse.shrink import shrink

__all__ = ["CompressionResult", "CompressionTrials", "auto_compress"]

#: Levels of the sensitivity table behind the per-layer allocation.
SENSITIVITY_LEVELS = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99)
_ALLOCATIONS = ("sensitivity", "lamp", "uniform")
_PRUNING = ("gradual", "one_shot")
_SETTINGS_FILE = "auto_compress.json"
_MODEL_FILE = "model.keras"
_ALLOCATION_FILE = "per_layer.json"
#: Per-trial figures, in table order (all reported to the oracle as floats).
_MEASURES = ("achieved_sparsity", "size_bytes", "compression", "params", "flops",
             "val_metric", "fine_tune_epochs", "seconds")


def _import_keras_tuner():
    try:
        import keras_tuner
    except ImportError as error:
        raise ImportError(
            "ks.auto_compress runs its trials with KerasTuner: install the `auto` extra "
            "(pip install 'keras-sparse[auto]') or keras-tuner itself."
        ) from error
    return keras_tuner


def _u(sparsity):
    return -math.log10(1.0 - sparsity)


def _level(u):
    return round(1.0 - 10.0 ** (-u), 6)


# ------------------------------------------------------------- the results
class CompressionTrials:
    """Every trial of :func:`auto_compress`, one row each.

    Attributes:
        rows: list of dicts in trial order: ``trial_id``, ``status``
            (KerasTuner's: ``"COMPLETED"``, ``"FAILED"`` ...), ``sparsity``
            (the level asked), ``structured``, ``bits`` (``None``: float
            weights), ``achieved_sparsity`` (``ks.report``'s sparsity of the
            masked weights; for a structured trial the share of prunable
            weights removed by shrinking), ``size_bytes`` (``ks.report``'s
            ``packed_bytes``: values at their bit width plus the sparse
            index), ``compression`` (dense bytes / ``size_bytes``),
            ``params`` (non-zero parameters), ``flops`` (effective FLOPs per
            example), ``val_metric``, ``passed`` (within the allowed drop),
            ``fine_tune_epochs``, ``seconds`` (the trial's wall time) and
            ``per_layer`` (the sparsity asked of each layer: ``ks.allocate``'s
            split, or the channel fraction of a structured trial). Figures of
            a trial that did not complete are ``None``.
        metric: the validation metric's name.
        baseline: the dense model's validation metric.
        threshold: the lowest passing value (``baseline - max_accuracy_drop``).
        dense_bytes: ``ks.report``'s ``dense_bytes`` of the dense model.

    Example:
    >>> result = ks.auto_compress(model, (x, y), validation_data=(x_val, y_val))
    >>> print(result.trials)
    >>> json.dumps(result.trials.to_dict())
    >>> result.trials.plot()
    """

    def __init__(self, rows, metric, baseline, threshold, dense_bytes):
        self.rows = [dict(row) for row in rows]
        self.metric = str(metric)
        self.baseline = float(baseline)
        self.threshold = float(threshold)
        self.dense_bytes = int(dense_bytes)

    @property
    def fine_tune_epochs(self):
        """Fine-tune epochs spent over all completed trials."""
        return int(sum(row["fine_tune_epochs"] or 0 for row in self.rows))

    def to_dict(self):
        """Plain, JSON-safe data."""
        return {"metric": self.metric, "baseline": self.baseline, "threshold": self.threshold,
                "dense_bytes": self.dense_bytes, "rows": [dict(row) for row in self.rows]}

    def plot(self, ax=None):
        """Validation metric against size: passing trials filled, failing
        hollow, the dense model and the threshold as lines.

        Args:
            ax: a matplotlib ``Axes`` (default: a new figure's).

        Returns:
            The ``Axes``.

        Raises:
            ImportError: without matplotlib (``pip install keras-sparse[plot]``).
        """
        plt = pyplot("CompressionTrials.plot")
        if ax is None:
            _, ax = plt.subplots()
        done = [row for row in self.rows if row["val_metric"] is not None]
        for passed in (True, False):
            chosen = [row for row in done if row["passed"] == passed]
            ax.scatter([row["size_bytes"] for row in chosen], [row["val_metric"] for row in chosen],
                       marker="o", edgecolors="C0", facecolors="C0" if passed else "none",
                       label="within the drop" if passed else "beyond the drop")
        ax.scatter([self.dense_bytes], [self.baseline], color="gray", marker="s", label="dense")
        ax.axhline(self.threshold, color="gray", linestyle="--", linewidth=1, label="threshold")
        ax.set_xscale("log")
        ax.set_xlabel("size (bytes, ks.report packed_bytes)")
        ax.set_ylabel(f"validation {self.metric}")
        ax.legend(fontsize="small")
        return ax

    def __str__(self):
        header = ("trial", "status", "sparsity", "structured", "bits", "achieved", "bytes",
                  "x smaller", "FLOPs", self.metric, "passed", "epochs", "s")
        lines = [list(header)]

        def fmt(value, kind):
            if value is None:
                return "-"
            if kind == "pct":
                return f"{100 * value:.2f}%"
            if kind == "int":
                return f"{int(value):,}"
            if kind == "x":
                return f"{value:.2f}"
            if kind == "acc":
                return f"{value:.4f}"
            if kind == "s":
                return f"{value:.1f}"
            return str(value)

        for row in self.rows:
            lines.append([
                str(row["trial_id"]), row["status"], fmt(row["sparsity"], "pct"),
                str(row["structured"]), "float" if row["bits"] is None else str(row["bits"]),
                fmt(row["achieved_sparsity"], "pct"), fmt(row["size_bytes"], "int"),
                fmt(row["compression"], "x"), fmt(row["flops"], "int"),
                fmt(row["val_metric"], "acc"), fmt(row["passed"], ""),
                fmt(row["fine_tune_epochs"], "int"), fmt(row["seconds"], "s")])
        widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
        text = [f"dense {self.metric}: {self.baseline:.4f}, threshold {self.threshold:.4f}, "
                f"dense bytes {self.dense_bytes:,}"]
        for i, line in enumerate(lines):
            text.append("  ".join(c.rjust(w) for c, w in zip(line, widths)))
            if i == 0:
                text.append("  ".join("-" * w for w in widths))
        return "\n".join(text)

    __repr__ = __str__


class CompressionResult:
    """What :func:`auto_compress` found.

    Attributes:
        model: the most compressed model that passed, compiled with the
            input model's compile config: a pruned model (masks; ``ks.strip``
            gives plain layers) or, for a structured trial, the shrunk plain
            model. The dense copy when no trial passed.
        trials: a :class:`CompressionTrials` table of every trial.
        best: the chosen row of ``trials.rows`` (``None`` if none passed).
        baseline: the dense model's validation metric.
        directory: the KerasTuner project directory (``None`` when the search
            ran in a temporary directory, removed afterwards).

    Example:
    >>> result = ks.auto_compress(model, (x, y), validation_data=(x_val, y_val))
    >>> result.best["sparsity"], result.best["val_metric"]
    >>> plain = ks.strip(result.model)
    """

    def __init__(self, model, trials, best, baseline, directory):
        self.model = model
        self.trials = trials
        self.best = best
        self.baseline = baseline
        self.directory = directory

    def __repr__(self):
        if self.best is None:
            return f"CompressionResult(no trial within the drop; {len(self.trials.rows)} trials)"
        return (f"CompressionResult(sparsity={self.best['sparsity']}, structured="
                f"{self.best['structured']}, bits={self.best['bits']}, "
                f"{self.trials.metric}={self.best['val_metric']:.4f}, "
                f"{self.best['compression']:.2f}x smaller; {len(self.trials.rows)} trials, "
                f"{self.trials.fine_tune_epochs} fine-tune epochs)")


# ------------------------------------------------------------- the search
def _search_state(trials, ongoing, combo, threshold, u_max, tolerance):
    """The next ``u`` to test for ``combo``, or ``"wait"`` (trials running,
    nothing left to split) or ``"done"``.

    ``trials``: ``[(values, status, val_metric)]``; ``ongoing``: the values
    of running trials."""
    passed, failed = [0.0], []
    for values, status, value in trials:
        if _combo(values) != combo:
            continue
        u = _u(values["sparsity"])
        if status == "COMPLETED" and value is not None and value >= threshold:
            passed.append(u)
        elif status in ("COMPLETED", "FAILED"):
            failed.append(u)
    low = max(passed)
    high = min([u for u in failed if u > low] + [u_max])
    running = sorted(_u(v["sparsity"]) for v in ongoing if _combo(v) == combo)
    points = [low] + [u for u in running if low < u < high] + [high]
    a, b = max(zip(points, points[1:]), key=lambda pair: pair[1] - pair[0])
    if b - a >= tolerance:
        return (a + b) / 2.0
    return "wait" if len(points) > 2 else "done"


def _combo(values):
    return (bool(values.get("structured", False)), int(values.get("bits", 0)))


@functools.cache
def _oracle_class(keras_tuner):
    class CompressionOracle(keras_tuner.Oracle):
        """Bisection over the sparsity level, one bracket per
        (structured, bits) combination, with the running trials' levels
        splitting the bracket so several workers test different levels."""

        def __init__(self, combos, threshold, max_sparsity, tolerance, max_trials=None):
            super().__init__(objective=keras_tuner.Objective("compression", "max"),
                             max_trials=max_trials, max_consecutive_failed_trials=3)
            self.combos = [tuple(c) for c in combos]
            self.threshold = float(threshold)
            self.u_max = _u(max_sparsity)
            self.max_sparsity = max_sparsity
            self.tolerance = float(tolerance)
            self.hyperparameters.Float("sparsity", 0.0, max_sparsity)
            self.hyperparameters.Boolean("structured", default=False)
            self.hyperparameters.Choice("bits", sorted({b for _, b in self.combos} | {0}))

        def _history(self):
            out = []
            running = {t.trial_id for t in self.ongoing_trials.values()}
            for trial in self.trials.values():
                if trial.trial_id in running:
                    continue
                value = None
                if trial.metrics.exists("val_metric"):
                    value = trial.metrics.get_last_value("val_metric")
                out.append((trial.hyperparameters.values, trial.status, value))
            return out, [t.hyperparameters.values for t in self.ongoing_trials.values()]

        def populate_space(self, trial_id):
            history, ongoing = self._history()
            waiting = False
            for combo in self.combos:
                state = _search_state(history, ongoing, combo, self.threshold, self.u_max,
                                      self.tolerance)
                if state == "wait":
                    waiting = True
                elif state != "done":
                    return {"status": "RUNNING", "values": {
                        "sparsity": min(_level(state), self.max_sparsity),
                        "structured": combo[0], "bits": combo[1]}}
            return {"status": "IDLE" if waiting else "STOPPED"}

        def score_trial(self, trial):
            super().score_trial(trial)
            value = trial.metrics.get_last_value("val_metric")
            if value is None or value < self.threshold:
                trial.score = 0.0

    return CompressionOracle


@functools.cache
def _tuner_class(keras_tuner):
    class CompressionTuner(keras_tuner.engine.base_tuner.BaseTuner):
        """Runs one trial: prune, fine-tune, evaluate, measure."""

        def __init__(self, oracle, run, threshold, **kwargs):
            super().__init__(oracle, **kwargs)
            self._run = run
            self._threshold = threshold
            self._asked = False

        def pre_create_trial(self):
            # The oracle answered IDLE last time (other workers' trials are
            # running): wait a little instead of asking again at once.
            if self._asked:
                time.sleep(0.5)
            self._asked = True

        def on_trial_begin(self, trial):
            self._asked = False

        def run_trial(self, trial, *args, **kwargs):
            start = time.perf_counter()
            model, measures, per_layer = self._run(trial.hyperparameters.values, trial.trial_id)
            measures["seconds"] = time.perf_counter() - start
            with open(os.path.join(self.get_trial_dir(trial.trial_id), _ALLOCATION_FILE),
                      "w") as f:
                json.dump(per_layer, f)
            if measures["val_metric"] >= self._threshold:
                self.save_model(trial.trial_id, model)
            return {key: float(value) for key, value in measures.items()}

        def save_model(self, trial_id, model, step=0):
            model.save(os.path.join(self.get_trial_dir(trial_id), _MODEL_FILE))

        def load_model(self, trial):
            path = os.path.join(self.get_trial_dir(trial.trial_id), _MODEL_FILE)
            return keras.models.load_model(path, compile=False)

    return CompressionTuner


# -------------------------------------------------------------- one trial
def _steps_per_epoch(kind, parts, batch_size):
    if kind == "arrays":
        return max(1, math.ceil(len(keras.tree.flatten(parts[0])[0]) / batch_size))
    try:
        steps = len(parts)
    except TypeError:
        return None
    return steps if steps > 0 else None


def _fine_tune(model, train, epochs, batch_size, callbacks):
    """Fit ``model`` for ``epochs`` on ``train`` (``(kind, parts)``);
    returns the epochs run."""
    kind, parts = train
    if epochs == 0:
        return 0
    if kind == "arrays":
        x, y, weight = parts
        model.fit(x, y, sample_weight=weight, batch_size=batch_size, epochs=epochs, verbose=0,
                  callbacks=callbacks)
    else:
        # A dataset brings its own order (Keras warns that shuffle is ignored).
        model.fit(parts, epochs=epochs, verbose=0, callbacks=callbacks, shuffle=False)
    return epochs


def _validation_metric(model, validation, metric, batch_size):
    kind, parts = validation
    if kind == "arrays":
        x, y, weight = parts
        logs = model.evaluate(x, y, sample_weight=weight, batch_size=batch_size, verbose=0,
                              return_dict=True)
    else:
        logs = model.evaluate(parts, verbose=0, return_dict=True)
    if metric not in logs:
        raise ValueError(
            f"`metric` is not among the model's compiled metrics {sorted(logs)}: compile the "
            f"model with it or name one of those. Received: metric={metric!r}"
        )
    return float(logs[metric])


def _measure(model, dense_bytes, dense_prunable):
    totals = report(model, print_fn=None).totals
    size = totals["packed_bytes"]
    measures = dict(size_bytes=size, compression=dense_bytes / size if size else float("inf"),
                    params=totals["nonzeros"],
                    flops=-1 if totals["effective_flops"] is None else totals["effective_flops"])
    if totals["masked_params"]:
        measures["achieved_sparsity"] = totals["sparsity"]
    else:
        kept = sum(int(np.prod(v.shape)) for _, entries in prunable_weights(model)
                   for _, v, _ in entries)
        measures["achieved_sparsity"] = 1.0 - kept / dense_prunable if dense_prunable else 0.0
    return measures


def _output_layers(model):
    names = set()
    for tensor in model.outputs:
        history = getattr(tensor, "_keras_history", None)
        if history is not None:
            names.add(history[0].name)
    return names


class _TrialRunner:
    """Builds and measures the model of one trial from the dense copy."""

    def __init__(self, dense, table, settings, train, validation):
        self.dense = dense
        self.table = table
        self.settings = settings
        self.train = train
        self.validation = validation
        totals = report(dense, print_fn=None).totals
        self.dense_bytes = totals["dense_bytes"]
        self.dense_prunable = sum(int(np.prod(v.shape)) for _, entries in prunable_weights(dense)
                                  for _, v, _ in entries)
        self.compile_config = dense.get_compile_config()

    def per_layer(self, level):
        s = self.settings
        if s["allocation"] == "uniform":
            return {layer.name: level for layer, _ in prunable_weights(self.dense)}
        table = self.table if s["allocation"] == "sensitivity" else None
        return allocate(self.dense, level, by=s["by"], sensitivity=table)

    def _schedule(self, target):
        s = self.settings
        steps = _steps_per_epoch(*self.train, s["batch_size"])
        if s["pruning"] == "one_shot" or steps is None or s["fine_tune_epochs"] == 0:
            return schedules_lib.OneShot(0, target)
        total = steps * s["fine_tune_epochs"]
        end = max(1, total // 2)
        return schedules_lib.PolynomialDecay(0.0, target, 0, end, frequency=max(1, end // 10))

    def __call__(self, values, trial_id):
        s = self.settings
        if s["seed"] is not None:
            keras.utils.set_random_seed(s["seed"] + int(trial_id))
        level = float(values["sparsity"])
        structured, bits = _combo(values)
        if structured:
            hidden = [layer.name for layer, _ in prunable_weights(self.dense)
                      if layer.name not in _output_layers(self.dense)]
            per_layer = {name: level for name in hidden}
            model = prune_channels(self.dense, level, layers=hidden)
            model.compile_from_config(self.compile_config)
            epochs = _fine_tune(model, self.train, s["fine_tune_epochs"], s["batch_size"], [])
            model = shrink(model)
            model.compile_from_config(self.compile_config)
        else:
            source = quantize(self.dense, bits) if bits else self.dense
            per_layer = self.per_layer(level)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = prune(source, None, distribution=per_layer,
                              schedule=self._schedule(max(per_layer.values())))
            if not model.compiled:
                model.compile_from_config(self.compile_config)
            epochs = _fine_tune(model, self.train, s["fine_tune_epochs"], s["batch_size"],
                                [callbacks_lib.Pruning(log_per_layer=False)])
            if epochs == 0:
                # No step ran, so no scheduled update happened: prune now.
                for layer in model.layers:
                    if isinstance(layer, SparseMixin) and layer.name in per_layer:
                        layer.prune_to(per_layer[layer.name])
        measures = _measure(model, self.dense_bytes, self.dense_prunable)
        measures["val_metric"] = _validation_metric(model, self.validation, s["metric"],
                                                    s["batch_size"])
        measures["fine_tune_epochs"] = epochs
        return model, measures, per_layer


# ---------------------------------------------------------------- checks
def _check_bits(bits):
    widths = (bits,) if bits is None or isinstance(bits, (int, np.integer)) else bits
    if not isinstance(widths, (tuple, list)) or not widths:
        raise type_error("bits", bits, "None, 8 or a tuple of them, e.g. (None, 8)")
    out = []
    for b in widths:
        if b is None:
            out.append(0)
        elif isinstance(b, (int, np.integer)) and not isinstance(b, bool) and 2 <= b <= 8:
            out.append(int(b))
        else:
            raise ValueError(
                f"`bits` holds weight widths: None (float) or an int in [2, 8]. "
                f"Received: bits={bits!r}"
            )
    return sorted(set(out))


def _check_model(model):
    check_model(model)
    if not is_cloneable_model(model):
        raise ValueError(
            "`model` must be a Sequential or functional model: auto_compress copies it for "
            f"each trial with keras.models.clone_model, which refuses subclassed models. "
            f"Received: model={model.name!r} of type {type(model).__name__}"
        )
    if not getattr(model, "compiled", False) or model.get_compile_config() is None:
        raise ValueError(
            "`model` must be compiled (loss, optimizer and metrics): every trial fine-tunes "
            f"a copy with the same compile config. Received: model={model.name!r}, not compiled"
        )
    built_prunable_weights(model)
    return model


def _fingerprint(model):
    return [[layer.name, [list(v.shape) for _, v, _ in entries]]
            for layer, entries in prunable_weights(model)]


# ------------------------------------------------------------ the function
def auto_compress(
    model,
    data,
    *,
    validation_data,
    max_accuracy_drop=0.01,
    baseline_accuracy=None,
    metric="accuracy",
    fine_tune_epochs=1,
    batch_size=32,
    max_sparsity=0.99,
    resolution=0.2,
    by="params",
    allocation="sensitivity",
    pruning="gradual",
    structured=False,
    bits=None,
    max_trials=None,
    directory=None,
    project_name="auto_compress",
    overwrite=False,
    seed=None,
    verbose=0,
):
    """The most compressed copy of ``model`` whose validation accuracy
    stays within ``max_accuracy_drop`` of the dense model's.

    The dense model's validation metric is measured first (or taken from
    ``baseline_accuracy``); a trial passes when its metric is at least
    ``baseline - max_accuracy_drop`` (absolute). A trial prunes a copy of
    the dense model to one sparsity level, split over the layers by
    ``ks.allocate(copy, level, by=by, sensitivity=table)`` (``table``:
    ``ks.sensitivity`` on ``validation_data`` at
    ``SENSITIVITY_LEVELS``, measured once before the search), fine-tunes it
    for ``fine_tune_epochs`` epochs with a gradual schedule (from 0 to the
    level over the first half, ``ks.callbacks.Pruning``) or one-shot, and
    evaluates it on ``validation_data``. The level is bisected in
    log-density: each trial tests the middle of the bracket between the
    highest level that passed (first the dense model) and the lowest above
    it that failed (first ``max_sparsity``, untested), until the kept
    fractions at its ends differ by less than ``resolution`` (relative):
    with the defaults, 5 trials. ``structured=True`` adds a bracket of
    channel pruning (``ks.prune_channels`` of every prunable layer but the
    outputs, fine-tune, ``ks.shrink``), and each width in ``bits`` a bracket
    of unstructured pruning with quantization-aware fine-tuning
    (``ks.quantize(copy, bits)``). Among the passing trials the smallest by
    ``ks.report``'s ``packed_bytes`` wins.

    **Resuming.** Trials are KerasTuner trials kept in
    ``directory/project_name`` (one ``trial_*/trial.json`` each, the model
    of every passing trial in ``trial_*/model.keras``, the baseline and the
    sensitivity table in ``auto_compress.json``). Calling ``auto_compress``
    again with the same ``directory`` and ``project_name`` (after a kill,
    or to read the result again) continues the search: finished trials are
    not run again, a trial cut short is run again, and the baseline and the
    table are read back rather than measured (the threshold is the stored
    baseline minus this call's ``max_accuracy_drop``: another drop re-judges
    the finished trials and the bisection continues from there).
    ``overwrite=True`` starts afresh. With ``directory=None`` the search runs in a temporary
    directory that is removed at the end.

    **Many machines.** KerasTuner's distributed mode: run the same script
    (same arguments, same data) on every machine, with a shared
    ``directory`` (a network file system: the chief writes the trial
    records, the workers the models) and these environment variables:
    ``KERASTUNER_ORACLE_IP`` and ``KERASTUNER_ORACLE_PORT`` (the chief's
    address and a free port, the same everywhere) and
    ``KERASTUNER_TUNER_ID``: ``"chief"`` on one process, which serves the
    bisection and runs no trial, and a distinct ID (``"tuner0"``,
    ``"tuner1"``, ...) on each worker. Each worker asks the chief for a
    level, fine-tunes and reports; levels running elsewhere split the
    bracket, so ``n`` workers test ``n`` levels at once. The chief's call
    returns when the search ends, with every trial; a worker's call returns
    when no level is left for it, with the trials finished by then.
    Example, two workers::

        KERASTUNER_TUNER_ID=chief  KERASTUNER_ORACLE_IP=10.0.0.1 KERASTUNER_ORACLE_PORT=8000 python search.py
        KERASTUNER_TUNER_ID=tuner0 KERASTUNER_ORACLE_IP=10.0.0.1 KERASTUNER_ORACLE_PORT=8000 python search.py
        KERASTUNER_TUNER_ID=tuner1 KERASTUNER_ORACLE_IP=10.0.0.1 KERASTUNER_ORACLE_PORT=8000 python search.py

    ``model`` itself is never modified: every trial works on a copy
    (``keras.models.clone_model`` + weights), also when the search fails.

    Args:
        model: a compiled, built Sequential or functional Keras model, trained
            (pruning starts from its weights). Its compile config (loss,
            optimizer, metrics) is used to fine-tune each copy.
        data: training data for the fine-tunes: ``(x, y)``, ``(x, y,
            sample_weight)``, a ``tf.data.Dataset`` or a
            ``keras.utils.PyDataset`` of ``(x, y)`` batches.
        validation_data: the data of the accuracy, in the same forms.
        max_accuracy_drop: allowed absolute drop of the metric, in ``[0, 1)``.
        baseline_accuracy: the reference value (default: ``model``'s metric
            on ``validation_data``).
        metric: the name of a compiled metric in ``model.evaluate``'s logs,
            higher is better (``"accuracy"``).
        fine_tune_epochs: epochs of ``fit`` per trial (``0``: one-shot, no
            training).
        batch_size: batch size of ``fit`` and ``evaluate`` on arrays.
        max_sparsity: the highest level tried, in ``(0, 1)``.
        resolution: stop a bracket when the kept fractions at its ends differ
            by less than this factor minus one (``0.2``: 20 %).
        by: what the level measures, as in ``ks.allocate``: ``"params"``,
            ``"flops"`` or ``"bytes"``.
        allocation: ``"sensitivity"`` (``ks.allocate`` with the table),
            ``"lamp"`` (``ks.allocate`` without one) or ``"uniform"``.
        pruning: ``"gradual"`` or ``"one_shot"`` (masks set at the first
            step, then fine-tuned).
        structured: also search channel pruning + ``ks.shrink``.
        bits: weight widths to search with unstructured pruning: ``None``
            (float only), ``8``, or a tuple such as ``(None, 8)``.
        max_trials: stop after this many trials in all (default: when every
            bracket reaches ``resolution``).
        directory: KerasTuner's directory (see Resuming); ``None``: temporary.
        project_name: KerasTuner's project name inside ``directory``.
        overwrite: discard a previous search in the same project.
        seed: seeds each trial (``seed + trial number``) for reproducible
            fine-tunes; ``None`` leaves the random state alone.
        verbose: KerasTuner's progress display (0: silent).

    Returns:
        A :class:`CompressionResult`: ``model`` (compiled, pruned), ``trials``
        (a :class:`CompressionTrials` table), ``best``, ``baseline``.

    Raises:
        ValueError: for an argument out of range, data without labels, a
            subclassed, uncompiled or unprunable model, a metric the model
            does not compute, or a project directory holding a search on
            another model; checked before any trial runs.
        TypeError: for a ``model`` that is not a Keras model or an argument of
            the wrong type.
        ImportError: without keras-tuner (``pip install keras-sparse[auto]``).

    Example:
    >>> result = ks.auto_compress(model, (x_train, y_train),
    ...                           validation_data=(x_val, y_val),
    ...                           max_accuracy_drop=0.01, directory="search")
    >>> print(result.trials)
    >>> result.model.fit(x_train, y_train, callbacks=[ks.callbacks.Pruning()])
    >>> small = ks.strip(result.model)
    """
    _check_model(model)
    max_accuracy_drop = check_number(max_accuracy_drop, "max_accuracy_drop", 0.0, 1.0)
    if max_accuracy_drop >= 1.0:
        raise ValueError(
            f"`max_accuracy_drop` must be in [0, 1). Received: max_accuracy_drop={max_accuracy_drop!r}")
    baseline_accuracy = check_number(baseline_accuracy, "baseline_accuracy", allow_none=True)
    if not isinstance(metric, str):
        raise type_error("metric", metric, "the name of a compiled metric, e.g. 'accuracy'")
    fine_tune_epochs = check_int(fine_tune_epochs, "fine_tune_epochs", 0)
    batch_size = check_int(batch_size, "batch_size", 1)
    max_sparsity = check_number(max_sparsity, "max_sparsity", 0.0, 1.0, low_open=True)
    if max_sparsity >= 1.0:
        raise ValueError(f"`max_sparsity` must be in (0, 1). Received: max_sparsity={max_sparsity!r}")
    resolution = check_number(resolution, "resolution", 0.0, low_open=True)
    if by not in ("params", "flops", "bytes"):
        raise ValueError(f"`by` must be 'params', 'flops' or 'bytes'. Received: by={by!r}")
    if allocation not in _ALLOCATIONS:
        raise ValueError(f"`allocation` must be one of {_ALLOCATIONS}. Received: allocation={allocation!r}")
    if pruning not in _PRUNING:
        raise ValueError(f"`pruning` must be one of {_PRUNING}. Received: pruning={pruning!r}")
    structured = check_bool(structured, "structured")
    widths = _check_bits(bits)
    max_trials = check_int(max_trials, "max_trials", 1, allow_none=True)
    if directory is not None and not isinstance(directory, (str, os.PathLike)):
        raise type_error("directory", directory, "None or a path")
    if not isinstance(project_name, str) or not project_name:
        raise type_error("project_name", project_name, "a non-empty string")
    overwrite = check_bool(overwrite, "overwrite")
    seed = check_int(seed, "seed", 0, allow_none=True)
    if structured and not [layer for layer, _ in prunable_weights(model)
                           if layer.name not in _output_layers(model)]:
        raise ValueError(
            "structured=True prunes the channels of prunable layers that do not produce the "
            f"model's outputs, and `model` has none. Received: structured=True, "
            f"model={model.name!r}"
        )
    train = _check_data(data)
    validation = _check_data(validation_data)
    keras_tuner = _import_keras_tuner()

    combos = [(False, b) for b in widths] + ([(True, 0)] if structured else [])
    temporary = directory is None
    root = tempfile.mkdtemp(prefix="auto_compress_") if temporary else os.fspath(directory)
    project_dir = os.path.join(root, project_name)
    if overwrite and os.path.isdir(project_dir):
        shutil.rmtree(project_dir)
    try:
        dense = keras.models.clone_model(model)
        dense.set_weights(model.get_weights())
        saved = _read_settings(project_dir, overwrite)
        if saved is not None:
            if saved["fingerprint"] != json.loads(json.dumps(_fingerprint(dense))):
                raise ValueError(
                    f"The project {project_dir!r} holds a search on another model (other "
                    "prunable layers or shapes): pass overwrite=True or another project_name. "
                    f"Received: project_name={project_name!r}"
                )
            baseline = saved["baseline"]
            table = None if saved["table"] is None else SensitivityTable.from_dict(saved["table"])
        else:
            baseline = _validation_metric(dense, validation, metric, batch_size)
            table = None
            if allocation == "sensitivity":
                table = sensitivity(dense, validation_data, sparsities=SENSITIVITY_LEVELS,
                                    metric=metric, batch_size=batch_size, verbose=verbose)
        if baseline_accuracy is not None:
            baseline = baseline_accuracy
        threshold = baseline - max_accuracy_drop
        os.makedirs(project_dir, exist_ok=True)
        if saved is None:
            _write_settings(project_dir, {
                "baseline": baseline, "fingerprint": _fingerprint(dense),
                "table": None if table is None else table.to_dict()})
        settings = dict(metric=metric, fine_tune_epochs=fine_tune_epochs, batch_size=batch_size,
                        by=by, allocation=allocation, pruning=pruning, seed=seed)
        runner = _TrialRunner(dense, table, settings, train, validation)
        oracle = _oracle_class(keras_tuner)(combos, threshold, max_sparsity,
                                            math.log10(1.0 + resolution), max_trials)
        tuner = _tuner_class(keras_tuner)(
            oracle, runner, threshold, directory=root, project_name=project_name,
            overwrite=False)
        tuner.search(verbose=verbose)
        rows = _rows(project_dir, threshold)
        trials = CompressionTrials(rows, metric, baseline, threshold, runner.dense_bytes)
        best = _best(rows)
        if best is None:
            warnings.warn(
                f"No trial kept validation {metric} within max_accuracy_drop="
                f"{max_accuracy_drop} of {baseline:.4f}: the result is the dense copy.",
                stacklevel=2)
            chosen = dense
        else:
            chosen = _best_model(tuner, project_dir, best, runner)
            chosen.compile_from_config(runner.compile_config)
        return CompressionResult(chosen, trials, best, baseline,
                                 None if temporary else project_dir)
    finally:
        if temporary:
            shutil.rmtree(root, ignore_errors=True)


def _read_settings(project_dir, overwrite):
    path = os.path.join(project_dir, _SETTINGS_FILE)
    if overwrite or not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def _write_settings(project_dir, payload):
    path = os.path.join(project_dir, _SETTINGS_FILE)
    with open(path + ".tmp", "w") as f:
        json.dump(payload, f)
    os.replace(path + ".tmp", path)


def _rows(project_dir, threshold):
    rows = []
    for path in sorted(glob.glob(os.path.join(project_dir, "trial_*", "trial.json"))):
        with open(path) as f:
            state = json.load(f)
        values = state["hyperparameters"]["values"]
        metrics = state.get("metrics", {}).get("metrics", {})

        def last(name):
            observations = metrics.get(name, {}).get("observations", [])
            if not observations:
                return None
            value = observations[-1]["value"]
            return value[0] if isinstance(value, list) else value

        row = dict(trial_id=state["trial_id"], status=state["status"],
                   sparsity=float(values["sparsity"]),
                   structured=bool(values.get("structured", False)),
                   bits=int(values.get("bits", 0)) or None)
        for name in _MEASURES:
            row[name] = last(name)
        for name in ("size_bytes", "params", "flops", "fine_tune_epochs"):
            if row[name] is not None:
                row[name] = int(row[name])
        row["passed"] = None if row["val_metric"] is None else bool(row["val_metric"] >= threshold)
        allocation_path = os.path.join(os.path.dirname(path), _ALLOCATION_FILE)
        row["per_layer"] = None
        if os.path.exists(allocation_path):
            with open(allocation_path) as f:
                row["per_layer"] = json.load(f)
        rows.append(row)
    return rows


def _best(rows):
    passing = [row for row in rows if row["status"] == "COMPLETED" and row["passed"]]
    if not passing:
        return None
    return min(passing, key=lambda row: (row["size_bytes"], -row["val_metric"], row["trial_id"]))


def _best_model(tuner, project_dir, best, runner):
    path = os.path.join(project_dir, f"trial_{best['trial_id']}", _MODEL_FILE)
    if os.path.exists(path):
        return keras.models.load_model(path, compile=False)
    warnings.warn(
        f"The model of trial {best['trial_id']} is not in {project_dir!r} (another machine "
        "ran it, or the file was removed): running the trial again.", stacklevel=3)
    model, _, _ = runner({"sparsity": best["sparsity"], "structured": best["structured"],
                       "bits": best["bits"] or 0}, best["trial_id"])
    return model
