"""``ks.sensitivity``: how much a model's metric suffers when one layer at a
time is pruned, the measurement behind ``ks.allocate(..., sensitivity=...)``.

Each prunable layer is pruned alone to each sparsity (magnitude scores,
the pattern's own mask function), the metric is evaluated, and the layer's
weights are put back exactly as they were (masks through the layer's own
mask writer, every other variable from a host copy). Nothing else of the
model changes: the optimizer and its slots are never touched.
"""

import json
import numbers

import keras
import numpy as np
from keras import ops

from keras_sparse import patterns as patterns_lib
from keras_sparse.checks import check_int
from keras_sparse.checks import pyplot
from keras_sparse.checks import check_model
from keras_sparse.checks import describe
from keras_sparse.checks import type_error
from keras_sparse.layers.base import SparseMixin
from keras_sparse.layers.base import check_pattern_fits
from keras_sparse.ops.masks import check_sparsity
from keras_sparse.selection import built_prunable_weights

__all__ = ["SensitivityTable", "sensitivity"]

#: Substrings of a metric name that mean "lower is better".
_LOWER_IS_BETTER = (
    "loss", "error", "crossentropy", "mse", "mae", "mape", "msle", "hinge", "huber",
    "cosh", "poisson", "divergence", "perplexity",
)


def _infer_greater_is_better(name):
    lowered = name.lower()
    return not any(word in lowered for word in _LOWER_IS_BETTER)


class SensitivityTable:
    """The measurements of :func:`sensitivity`.

    Attributes:
        rows: list of dicts, one per (layer, sparsity): ``layer`` (name),
            ``sparsity`` (asked), ``removed`` (weights removed: the mask keeps
            at least one), ``params`` (weights the layer's masks cover),
            ``metric`` (value with only that layer pruned) and ``delta``
            (``metric - baseline``).
        baseline: the metric of the model as it is.
        metric: the metric's name.
        greater_is_better: the metric's direction (accuracy: ``True``; a
            loss: ``False``).
        pattern: the pattern's alias or config used to prune.

    Example:
    >>> table = ks.sensitivity(model, (x_val, y_val), sparsities=(0.5, 0.9))
    >>> print(table)
    >>> ks.SensitivityTable.from_dict(json.loads(json.dumps(table.to_dict())))
    """

    def __init__(self, rows, baseline, metric="metric", greater_is_better=True,
                 pattern="unstructured"):
        self.rows = [dict(row) for row in rows]
        self.baseline = float(baseline)
        self.metric = str(metric)
        self.greater_is_better = bool(greater_is_better)
        self.pattern = pattern

    @property
    def layers(self):
        """Layer names in the order they were measured."""
        names = []
        for row in self.rows:
            if row["layer"] not in names:
                names.append(row["layer"])
        return names

    @property
    def sparsities(self):
        """The sparsities measured, sorted."""
        return sorted({row["sparsity"] for row in self.rows})

    def curve(self, layer):
        """``[(sparsity, metric), ...]`` of ``layer``, by increasing sparsity.

        Raises:
            ValueError: if the table has no row for ``layer``.
        """
        points = sorted((r["sparsity"], r["metric"]) for r in self.rows if r["layer"] == layer)
        if not points:
            raise ValueError(
                f"The sensitivity table has no row for layer {layer!r} (layers: "
                f"{self.layers}). Received: layer={layer!r}"
            )
        return points

    def degradation(self, layer):
        """``[(sparsity, loss of metric), ...]`` of ``layer``: how much worse
        than the baseline, positive when worse, whatever the direction."""
        sign = 1.0 if self.greater_is_better else -1.0
        return [(s, sign * (self.baseline - m)) for s, m in self.curve(layer)]

    def to_dict(self):
        """Plain, JSON-safe data (:meth:`from_dict` reads it back)."""
        return {
            "metric": self.metric,
            "greater_is_better": self.greater_is_better,
            "baseline": self.baseline,
            "pattern": self.pattern,
            "rows": [
                {key: (float(v) if isinstance(v, (float, np.floating)) else
                       int(v) if isinstance(v, (numbers.Integral, np.integer)) else v)
                 for key, v in row.items()}
                for row in self.rows
            ],
        }

    @classmethod
    def from_dict(cls, data):
        """The table that :meth:`to_dict` described.

        Raises:
            TypeError: if ``data`` is not a dict.
            ValueError: if it lacks ``rows`` or ``baseline``.
        """
        if not isinstance(data, dict):
            raise type_error("data", data, "a dict from SensitivityTable.to_dict()")
        missing = [key for key in ("rows", "baseline") if key not in data]
        if missing:
            raise ValueError(
                f"`data` lacks the keys {missing} of SensitivityTable.to_dict(). "
                f"Received: data with keys {sorted(data)}"
            )
        return cls(data["rows"], data["baseline"], data.get("metric", "metric"),
                   data.get("greater_is_better", True), data.get("pattern", "unstructured"))

    def plot(self, ax=None):
        """One line per layer: metric against sparsity, with the baseline.

        Args:
            ax: a matplotlib ``Axes`` (default: a new figure's).

        Returns:
            The ``Axes``.

        Raises:
            ImportError: without matplotlib (``pip install keras-sparse[plot]``).
        """
        plt = pyplot("SensitivityTable.plot")
        if ax is None:
            _, ax = plt.subplots()
        for layer in self.layers:
            points = [(0.0, self.baseline)] + self.curve(layer)
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=layer)
        ax.axhline(self.baseline, color="gray", linestyle="--", linewidth=1, label="dense")
        ax.set_xlabel("sparsity of the layer (others dense)")
        ax.set_ylabel(self.metric)
        ax.legend(fontsize="small")
        return ax

    def __str__(self):
        header = ("layer", "sparsity", "removed", "params", self.metric, "delta")
        lines = [[*header]]
        for row in self.rows:
            removed, params = row.get("removed"), row.get("params")
            lines.append([row["layer"], f"{100 * row['sparsity']:.1f}%",
                          "?" if removed is None else f"{removed:,}",
                          "?" if params is None else f"{params:,}",
                          f"{row['metric']:.4f}", f"{row.get('delta', row['metric'] - self.baseline):+.4f}"])
        widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
        text = [f"baseline {self.metric}: {self.baseline:.4f}"]
        for i, line in enumerate(lines):
            text.append("  ".join(
                c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(line, widths))))
            if i == 0:
                text.append("  ".join("-" * w for w in widths))
        return "\n".join(text)

    __repr__ = __str__

    def __eq__(self, other):
        return isinstance(other, SensitivityTable) and self.to_dict() == other.to_dict()


# ------------------------------------------------------------------ the data
def _check_sparsities(sparsities):
    if isinstance(sparsities, (numbers.Real, np.ndarray)) and not isinstance(
            sparsities, (bool, np.bool_)) and np.ndim(sparsities) == 0:
        sparsities = (sparsities,)
    if not isinstance(sparsities, (list, tuple, np.ndarray)) or len(sparsities) == 0:
        raise type_error("sparsities", sparsities, "a non-empty list of sparsities in [0, 1)")
    values = [check_sparsity(s, f"sparsities[{i}]") for i, s in enumerate(sparsities)]
    return sorted(set(values))


def _is_dataset(data):
    # tf.data without importing tensorflow here (the backend may be JAX).
    return type(data).__module__.startswith("tensorflow") and hasattr(data, "element_spec")


def _check_data(data):
    """``(kind, parts)``: ``"arrays"`` with ``(x, y, sample_weight)``, or
    ``"dataset"`` / ``"pydataset"`` with the data itself. Raises before the
    model is touched."""
    if isinstance(data, keras.utils.PyDataset):
        first = data[0] if len(data) else None
        if not isinstance(first, tuple) or len(first) < 2:
            raise ValueError(
                "`data` must yield (x, y) batches with labels: the metric compares "
                f"predictions with labels. Received: data whose first batch is "
                f"{describe(first)}"
            )
        return "pydataset", data
    if _is_dataset(data):
        spec = data.element_spec
        if not isinstance(spec, tuple) or len(spec) < 2:
            raise ValueError(
                "`data` must yield (x, y) elements with labels: the metric compares "
                f"predictions with labels. Received: data with element_spec={spec!r}"
            )
        return "dataset", data
    if isinstance(data, (tuple, list)) and len(data) in (2, 3) and all(
            not isinstance(part, (str, bytes)) for part in data):
        x, y = data[0], data[1]
        weight = data[2] if len(data) == 3 else None
        if y is None:
            raise ValueError(
                "`data` must hold labels: (x, y) with y not None. Received: data=(x, None)")
        sizes = {len(a) for a in keras.tree.flatten((x, y) if weight is None else (x, y, weight))}
        if len(sizes) != 1:
            raise ValueError(
                f"x, y (and sample weights) in `data` must have the same number of samples. "
                f"Received: sizes {sorted(sizes)}"
            )
        if sizes == {0}:
            raise ValueError("`data` holds no sample. Received: data of 0 samples")
        return "arrays", (x, y, weight)
    if isinstance(data, (np.ndarray, tuple, list)) or hasattr(data, "shape"):
        raise ValueError(
            "`data` must hold labels: pass (x, y), a tf.data.Dataset of (x, y) or a "
            f"keras.utils.PyDataset of (x, y) batches. Received: data={describe(data)}"
        )
    raise type_error(
        "data", data, "(x, y), a tf.data.Dataset or a keras.utils.PyDataset of (x, y) batches")


def _batches(kind, parts, batch_size):
    """``(x, y, sample_weight)`` batches as numpy structures."""
    if kind == "arrays":
        x, y, weight = parts
        n = len(keras.tree.flatten(x)[0])
        for start in range(0, n, batch_size):
            piece = slice(start, start + batch_size)
            yield (keras.tree.map_structure(lambda a: a[piece], x),
                   keras.tree.map_structure(lambda a: a[piece], y),
                   None if weight is None else weight[piece])
        return
    source = parts if kind == "dataset" else (parts[i] for i in range(len(parts)))
    for batch in source:
        batch = tuple(batch)
        yield (keras.tree.map_structure(np.asarray, batch[0]),
               keras.tree.map_structure(np.asarray, batch[1]),
               None if len(batch) < 3 or batch[2] is None else np.asarray(batch[2]))


# ---------------------------------------------------------------- the metric
def _accuracy_function(y_true, y_pred):
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_pred.ndim and y_pred.shape[-1] > 1:
        if y_true.ndim == y_pred.ndim and y_true.shape[-1] == y_pred.shape[-1]:
            return keras.metrics.categorical_accuracy(y_true, y_pred)
        return keras.metrics.sparse_categorical_accuracy(y_true, y_pred)
    return keras.metrics.binary_accuracy(y_true, y_pred)


def _resolve_metric(metric):
    """``(name, function(y_true, y_pred, sample_weight) -> float)`` for a
    metric given by the caller (not a compiled one)."""
    if isinstance(metric, str):
        if metric in ("accuracy", "acc"):
            return metric, _mean_of(_accuracy_function)
        try:
            resolved = keras.metrics.get(metric)
        except ValueError as error:
            raise ValueError(
                f"`metric` names no Keras metric ({error}). Received: metric={metric!r}"
            ) from None
        if isinstance(resolved, type):
            resolved = resolved()
        return metric, (_stateful(resolved) if isinstance(resolved, keras.metrics.Metric)
                        else _mean_of(resolved))
    if isinstance(metric, keras.metrics.Metric):
        return metric.name, _stateful(metric)
    if callable(metric):
        return getattr(metric, "__name__", type(metric).__name__), _mean_of(metric)
    raise type_error("metric", metric,
                     "None, a Keras metric (object or name) or a callable (y_true, y_pred)")


def _mean_of(function):
    def value(y_true, y_pred, weight):
        result = np.asarray(ops.convert_to_numpy(function(y_true, y_pred)), dtype=np.float64)
        if weight is None or result.ndim == 0:
            return float(np.mean(result))
        weight = np.broadcast_to(np.asarray(weight, np.float64).reshape(
            weight.shape + (1,) * (result.ndim - np.ndim(weight))), result.shape)
        return float(np.sum(result * weight) / np.sum(weight))
    return value


def _stateful(metric):
    def value(y_true, y_pred, weight):
        metric.reset_state()
        metric.update_state(y_true, y_pred, sample_weight=weight)
        return float(ops.convert_to_numpy(metric.result()))
    return value


def _concat(parts):
    return keras.tree.map_structure(lambda *a: np.concatenate(a, axis=0), *parts)


def _own_evaluator(model, kind, parts, batch_size, function):
    def evaluate():
        trues, preds, weights = [], [], []
        for x, y, weight in _batches(kind, parts, batch_size):
            preds.append(keras.tree.map_structure(
                lambda t: np.asarray(ops.convert_to_numpy(t)), model.predict_on_batch(x)))
            trues.append(y)
            weights.append(weight)
        weight = None if any(w is None for w in weights) else np.concatenate(weights)
        return function(_concat(trues), _concat(preds), weight)
    return evaluate


def _compiled_evaluator(model, kind, parts, batch_size):
    def evaluate():
        if kind == "arrays":
            x, y, weight = parts
            return model.evaluate(x, y, sample_weight=weight, batch_size=batch_size,
                                  verbose=0, return_dict=True)
        return model.evaluate(parts, verbose=0, return_dict=True)
    return evaluate


# ----------------------------------------------------------- prune and undo
def _host_copy(variable):
    # A copy, not a view: on TF a read can alias the variable's buffer.
    return np.array(ops.convert_to_numpy(variable), copy=True)


def _prune_alone(layer, entries, sparsity, pattern):
    """Prune ``layer``'s maskable weights to ``sparsity`` by magnitude.
    Returns ``(removed count, undo)``; ``undo()`` puts every variable of the
    layer back bit for bit."""
    masks = {name: layer.get_mask(name) for name, _, _ in entries} if (
        isinstance(layer, SparseMixin) and layer.has_masks) else {}
    mask_ids = {id(m) for m in masks.values()}
    saved = [(v, _host_copy(v)) for v in layer.weights if id(v) not in mask_ids]
    old_masks = {name: np.array(_host_copy(m), dtype=bool) for name, m in masks.items()}
    removed = 0
    for name, variable, layout in entries:
        value = _host_copy(variable)
        if name in old_masks:
            value = np.where(old_masks[name], value, np.zeros((), value.dtype))
        keep = np.asarray(ops.convert_to_numpy(
            pattern.mask(np.abs(value.astype(np.float32)), sparsity, layout)), dtype=bool)
        if name in old_masks:
            # Already-removed weights stay removed (they score 0 anyway).
            keep &= old_masks[name]
            layer.write_mask(name, keep)
        else:
            variable.assign(np.where(keep, value, np.zeros((), value.dtype)))
        removed += int(keep.size - np.count_nonzero(keep))

    def undo():
        for name, mask in old_masks.items():
            layer.write_mask(name, mask)
        for variable, value in saved:
            variable.assign(value)

    return removed, undo


def sensitivity(model, data, sparsities=(0.5, 0.9), metric=None, layers=None,
                pattern="unstructured", batch_size=128, verbose=1, mode="auto"):
    """Measure the metric with one layer at a time pruned to each sparsity.

    For every prunable layer (the layers ``ks.prune`` converts: ``Dense``,
    ``Conv*``, ``EinsumDense``, ``Embedding`` ..., plain or already sparse)
    and every sparsity: remove the layer's smallest-magnitude weights
    (``pattern``'s mask, at least one weight kept per tensor; the weights an
    already-sparse layer has removed stay removed, so a level below its
    sparsity changes nothing), evaluate, and restore the layer exactly. A
    layer that is only quantized (no mask) is pruned on its latent weight:
    a quantizer that maps 0 to a non-zero value makes that approximate.

    Args:
        model: a built Keras model.
        data: the evaluation data, with labels: ``(x, y)`` or ``(x, y,
            sample_weight)`` arrays, a ``tf.data.Dataset`` or a
            ``keras.utils.PyDataset`` of ``(x, y)`` batches. A held-out split
            (never the test set you report).
        sparsities: the fractions of each layer's weights to remove, each
            in ``[0, 1)``. Measure up to the sparsities ``ks.allocate`` will
            ask for: beyond the last one it extrapolates.
        metric: ``None``: the compiled model's first metric, or its loss if
            it has none (through ``model.evaluate``); the name of a compiled
            metric or ``"loss"``; else a Keras metric (object or name, e.g.
            ``"accuracy"``, ``"mse"``) or a callable ``(y_true, y_pred) ->
            float`` (averaged if it returns one value per sample).
        layers: which layers to measure, as in ``ks.prune`` (a name, a
            regular expression, a list of names or a callable).
        pattern: the pattern of the masks (``"unstructured"``, ``"2:4"``,
            ``"channel"`` ...).
        batch_size: batch size for array data.
        verbose: 0 silent, 1 a ``keras.utils.Progbar`` over the sweep.
        mode: ``"max"`` if a larger metric is better, ``"min"`` if smaller,
            ``"auto"``: from the name (losses and errors: ``"min"``).

    Returns:
        A :class:`SensitivityTable`.

    Raises:
        ValueError: for data without labels, a sparsity outside ``[0, 1)``,
            a model with no prunable layer or unbuilt layers, an uncompiled
            model without ``metric``; the model is left untouched.
        TypeError: for arguments of the wrong type.

    Example:
    >>> model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    >>> model.fit(x, y)
    >>> table = ks.sensitivity(model, (x_val, y_val), sparsities=(0.5, 0.8, 0.9, 0.95))
    >>> per_layer = ks.allocate(model, 0.9, sensitivity=table)
    """
    check_model(model)
    sparsities = _check_sparsities(sparsities)
    pattern = patterns_lib.get(pattern)
    batch_size = check_int(batch_size, "batch_size", minimum=1)
    if verbose not in (0, 1, 2) or isinstance(verbose, float):
        raise ValueError(f"`verbose` must be 0, 1 or 2. Received: verbose={verbose!r}")
    if mode not in ("auto", "max", "min"):
        raise ValueError(f"`mode` must be 'auto', 'max' or 'min'. Received: mode={mode!r}")
    units = built_prunable_weights(model, layers)
    check_pattern_fits(pattern, [(layer, {n: lay for n, _, lay in entries})
                                 for layer, entries in units])
    kind, parts = _check_data(data)
    compiled = getattr(model, "compiled", False)
    if metric is None and not compiled:
        raise ValueError(
            "`metric` is required for a model that is not compiled: pass a Keras "
            "metric (e.g. 'accuracy') or a callable (y_true, y_pred) -> float, or "
            "compile the model. Received: metric=None"
        )
    own = None
    if metric is not None and not (isinstance(metric, str) and compiled):
        own = _resolve_metric(metric)

    def run_compiled():
        return _compiled_evaluator(model, kind, parts, batch_size)()

    if own is None:
        logs = run_compiled()
        if metric is None:
            others = [key for key in logs if key != "loss"]
            key = others[0] if others else "loss"
        elif metric in logs:
            key = metric
        else:
            key = None
            own = _resolve_metric(metric)
        if key is not None:
            name = key

            def evaluate():
                return float(run_compiled()[key])

            baseline = float(logs[key])
    if own is not None:
        name, function = own
        evaluate = _own_evaluator(model, kind, parts, batch_size, function)
        baseline = evaluate()
    greater = _infer_greater_is_better(name) if mode == "auto" else mode == "max"

    progbar = keras.utils.Progbar(len(units) * len(sparsities), verbose=verbose,
                                  stateful_metrics=["delta"], unit_name="evaluation")
    rows, done = [], 0
    for layer, entries in units:
        params = int(sum(np.prod(v.shape) for _, v, _ in entries))
        for sparsity in sparsities:
            removed, undo = _prune_alone(layer, entries, sparsity, pattern)
            try:
                value = evaluate()
            finally:
                undo()
            rows.append(dict(layer=layer.name, sparsity=sparsity, removed=removed,
                             params=params, metric=value, delta=value - baseline))
            done += 1
            progbar.update(done, values=[("delta", value - baseline)])
    return SensitivityTable(rows, baseline, name, greater,
                            _jsonable(patterns_lib.serialize(pattern)))


def _jsonable(value):
    try:
        json.dumps(value)
        return value
    except TypeError:
        return repr(value)
