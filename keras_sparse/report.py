"""``ks.report``: what a model really costs, per layer, dense vs effective.

A mask alone saves nothing at run time (dense kernels still multiply zeros).
The report therefore shows both columns: dense parameters, bytes and FLOPs,
and what a compressed export (sparse index + values) and a sparse kernel
would need. FLOPs count one multiply-accumulate as 2 FLOPs, per example.

For quantized layers it adds the weight precision (``bits``), the packed
size (values packed at 1, 2, 4 or 8 bits, plus the sparse index of pruned
weights and the float32 scales the quantizer needs) and the share of
multiply-accumulates whose weight and input are both binary (``1-bit MACs``,
the ones an XNOR-popcount kernel can run).

Every row comes from the layer itself (``report_row()``: keras_sparse
layers answer their own cost), from a function registered for its class
(:func:`register_cost`), or, for a plain Keras layer, from its weights
applied at every input position
(:func:`keras_sparse.layers.cost.weights_cost_row`).
"""

import keras
import numpy as np

from keras_sparse.checks import check_callable
from keras_sparse.checks import check_model
from keras_sparse.layers.cost import layer_macs  # noqa: F401 (public here too)
from keras_sparse.layers.cost import packed_width  # noqa: F401
from keras_sparse.layers.cost import stored_cost_row  # noqa: F401
from keras_sparse.layers.cost import weight_bits
from keras_sparse.layers.cost import weights_cost_row
from keras_sparse.utils import _children
from keras_sparse.utils import is_container
from keras_sparse.utils import walk_layers

__all__ = ["report", "Report", "activation_sparsity_rows", "layer_macs", "register_cost"]

_COLUMNS = (
    ("layer", "layer"),
    ("type", "type"),
    ("params", "params"),
    ("nonzeros", "nonzero"),
    ("sparsity", "sparsity"),
    ("pattern", "pattern"),
    ("bits", "bits"),
    ("dense_bytes", "dense B"),
    ("compressed_bytes", "compressed B"),
    ("packed_bytes", "packed B"),
    ("mask_bytes", "mask B"),
    ("dense_flops", "dense FLOPs"),
    ("effective_flops", "eff. FLOPs"),
    ("binary_mac_share", "1-bit MACs"),
)


#: layer class -> function(layer) -> row dict, for layers whose cost is not
#: "weights x positions" (low-rank, column-sampled, quantized ...).
_COST_FUNCTIONS = {}


def register_cost(layer_cls):
    """Decorator registering ``fn(layer) -> row`` as the cost model of
    ``layer_cls`` (and its subclasses) in :func:`report`, for a class you
    cannot edit; a layer class of your own defines ``report_row(self)``
    returning the row instead (the keras_sparse layers do). The row holds the
    keys ``params, nonzeros, masked_params, masked_nonzeros, pattern,
    dense_bytes, compressed_bytes, dense_flops, effective_flops, sparsity``
    (``layer`` and ``type`` are filled in) and optionally ``bits``,
    ``packed_bytes`` and ``binary_flops`` (default: the layer's weight
    precision, ``compressed_bytes`` and 0).

    Example:
    >>> from keras_sparse.report import register_cost
    >>> @register_cost(MyLayer)
    ... def _cost(layer): return {...}
    """

    def decorator(fn):
        _COST_FUNCTIONS[layer_cls] = fn
        return fn

    return decorator


def _cost_function(layer):
    """A function registered for the layer's class or a base class (an
    explicit registration wins), else the layer's own ``report_row`` (the
    protocol: a layer answers its cost)."""
    for klass in type(layer).__mro__:
        if klass in _COST_FUNCTIONS:
            return _COST_FUNCTIONS[klass]
    own = getattr(layer, "report_row", None)
    if callable(own):
        return lambda _: own()
    return None


def _layer_row(layer):
    cost = _cost_function(layer)
    # A layer without a cost of its own (a plain Keras layer) costs its
    # weights times the positions they are applied at.
    row = dict(cost(layer)) if cost is not None else weights_cost_row(layer)
    row.update(layer=layer.name, type=type(layer).__name__)
    row.setdefault("bits", weight_bits(layer))
    row.setdefault("packed_bytes", row["compressed_bytes"])
    row.setdefault("binary_flops", 0)
    row["binary_mac_share"] = _share(row["binary_flops"], row["effective_flops"])
    return row


def _share(part, whole):
    if part is None or whole is None:
        return None
    return part / whole if whole else 0.0


def _owns_weighted_layers(layer):
    """A composite layer (MultiHeadAttention, ...) whose weights all belong
    to sub-layers: those get the rows, so nothing is counted twice."""
    if _cost_function(layer) is not None:
        return False
    own = {id(v) for v in layer._trainable_variables + layer._non_trainable_variables}
    return not own and any(child.weights for child in _children(layer))


class Report:
    """Per-layer cost table with totals. ``str(report)`` is the table;
    :meth:`to_dict` gives plain data (for JSON).

    Attributes:
        rows: list of dicts, one per layer with weights (``masked_params``
            and ``masked_nonzeros`` count the masked weights only;
            ``mask_bytes`` is the memory of the layer's masks, which are not
            parameters).
        totals: dict with the column sums and the sparsity of the masked
            weights (biases and other unmasked weights excluded).
    """

    def __init__(self, rows, activations=None):
        self.rows = rows
        self.activations = activations
        totals = {key: 0 for key in ("params", "nonzeros", "masked_params", "masked_nonzeros",
                                     "dense_bytes", "compressed_bytes", "packed_bytes",
                                     "mask_bytes", "dense_flops", "effective_flops",
                                     "binary_flops")}
        for row in rows:
            row.setdefault("mask_bytes", 0)
            for key in totals:
                if totals[key] is not None:
                    totals[key] = None if row.get(key) is None else totals[key] + row[key]
        totals["binary_mac_share"] = _share(totals["binary_flops"], totals["effective_flops"])
        # Sparsity of the masked weights (as in each sparse row); a model with
        # no masked weight reports its fraction of zero parameters instead.
        if totals["masked_params"]:
            totals["sparsity"] = 1.0 - totals["masked_nonzeros"] / totals["masked_params"]
        else:
            totals["sparsity"] = (
                1.0 - totals["nonzeros"] / totals["params"] if totals["params"] else 0.0
            )
        self.totals = totals

    def to_dict(self):
        result = {"layers": list(self.rows), "totals": dict(self.totals)}
        if self.activations is not None:
            result["activations"] = [dict(row) for row in self.activations]
        return result

    def __str__(self):
        def fmt(key, value):
            if value is None:
                return "?"
            if key in ("sparsity", "binary_mac_share"):
                return f"{100 * value:.1f}%"
            if isinstance(value, int):
                return f"{value:,}"
            return str(value)

        table = [[title for _, title in _COLUMNS]]
        for row in self.rows + [dict(self.totals, layer="total", type="", pattern="", bits="")]:
            table.append([fmt(key, row.get(key, "")) for key, _ in _COLUMNS])
        widths = [max(len(r[i]) for r in table) for i in range(len(_COLUMNS))]
        lines = []
        for i, r in enumerate(table):
            lines.append("  ".join(
                c.ljust(w) if j < 2 or j == 5 else c.rjust(w)
                for j, (c, w) in enumerate(zip(r, widths))))
            if i == 0 or i == len(table) - 2:
                lines.append("  ".join("-" * w for w in widths))
        if self.activations is not None:
            lines += ["", _activation_table(self.activations)]
        return "\n".join(lines)

    __repr__ = __str__


def report(model, print_fn=print, data=None, batch_size=256):
    """Print and return a per-layer table of parameters, non-zeros, sparsity,
    pattern, weight bits, dense bytes, compressed-bytes estimate (values +
    index), packed bytes (quantized values packed at 1/2/4/8 bits + index +
    scales), the bytes of the training masks (not parameters: ``params``
    leaves them out), dense vs effective FLOPs per example and the share of binary
    (1-bit weight x 1-bit input) multiply-accumulates.

    With ``data``, a second table gives the activation sparsity measured on
    it (see :func:`activation_sparsity_rows`): for every Dense/Conv layer of
    the model's top-level graph, the fraction of exact zeros in its input and
    the FLOPs a kernel that skips zero inputs could save.

    Args:
        model: any built Keras model (sparse or not); with ``data``, a
            Sequential or functional one.
        print_fn: called with the table text; ``None`` to stay silent.
        data: model inputs (an array, or what ``model.predict`` takes) to
            measure activation sparsity on, in inference mode; ``None``
            leaves the activation table out.
        batch_size: batch size of the measurement.

    Returns:
        A :class:`Report`.

    Example:
    >>> r = ks.report(model)
    >>> r.totals["sparsity"]
    0.9
    """
    check_model(model)
    check_callable(print_fn, "print_fn", allow_none=True)
    rows = [
        _layer_row(layer)
        for layer in walk_layers(model)
        if not is_container(layer) and layer.weights and not _owns_weighted_layers(layer)
    ]
    activations = None
    if data is not None:
        activations = activation_sparsity_rows(model, data, rows, batch_size=batch_size)
    result = Report(rows, activations)
    if print_fn is not None:
        print_fn(str(result))
    return result


# ------------------------------------------------------------ activation sparsity
#: Layers whose multiply-accumulates scale with their non-zero inputs (the
#: keras_sparse layers of these kinds are subclasses).
_READS_INPUTS_IN_MACS = tuple(
    getattr(keras.layers, name)
    for name in ("Dense", "EinsumDense", "Conv1D", "Conv2D", "Conv3D", "Conv1DTranspose",
                 "Conv2DTranspose", "Conv3DTranspose", "DepthwiseConv1D", "DepthwiseConv2D",
                 "SeparableConv1D", "SeparableConv2D")
)


def _single_input(layer):
    """The one input tensor of ``layer`` in its model's graph, or ``None``
    (a layer called more than once has no single input)."""
    try:
        tensor = layer.input
    except (AttributeError, ValueError):
        return None
    return tensor if hasattr(tensor, "shape") and not isinstance(tensor, (list, tuple)) else None


def activation_sparsity_rows(model, data, rows, batch_size=256):
    """Measure, on ``data``, the zeros each Dense/Conv layer reads.

    For every Dense/Conv layer of the model's top-level graph (Keras' layers
    and their keras_sparse subclasses), the fraction ``s`` of exact zeros in
    its input over ``data`` (inference mode), and the FLOPs per example a
    kernel skipping zero inputs could save: ``s * effective FLOPs`` of that
    layer (a Dense with a fraction ``s`` of zero inputs needs ``(1 - s) *
    in * out`` multiply-accumulates; for a convolution each input entry
    takes part in the same number of them, padding aside). Nothing runs
    faster by itself: this is what a sparse-activation kernel could use.

    Args:
        model: a built Sequential or functional model.
        data: its inputs (what ``model.predict`` takes).
        rows: the report rows (:func:`report`); their ``effective_flops``
            give the FLOPs of each layer.
        batch_size: batch size of the measurement.

    Returns:
        A list of dicts, one per Dense/Conv layer: ``layer`` (the producer
        of the input: a layer name, or the model input's name), ``feeds``
        (the Dense/Conv layer), ``zeros`` (fraction), ``flops`` (its
        effective FLOPs per example, ``None`` when unknown) and
        ``saveable_flops``.

    Raises:
        ValueError: for a subclassed model (its graph is unknown).

    Example:
    >>> r = ks.report(model, data=x_test[:256])
    >>> r.activations[0]["zeros"]
    0.62
    """
    check_model(model)
    inputs = getattr(model, "inputs", None)
    if not inputs:
        raise ValueError(
            "Measuring activation sparsity (`data=`) needs a Sequential or functional "
            f"model with known inputs. Received: model={type(model).__name__} "
            f"(built={model.built})"
        )
    flops = {row["layer"]: row.get("effective_flops") for row in rows}
    consumers, tensors = [], []
    for layer in model.layers:
        if not isinstance(layer, _READS_INPUTS_IN_MACS):
            continue
        tensor = _single_input(layer)
        if tensor is None:
            continue
        if not any(tensor is t for t in tensors):
            tensors.append(tensor)
        consumers.append((layer, next(i for i, t in enumerate(tensors) if t is tensor)))
    if not consumers:
        return []
    probe = keras.Model(inputs[0] if len(inputs) == 1 else inputs, tensors)
    outputs = probe.predict(data, batch_size=batch_size, verbose=0)
    if len(tensors) == 1:
        outputs = [outputs]
    zeros = [float(np.mean(np.asarray(out) == 0)) for out in outputs]
    result = []
    for layer, index in consumers:
        history = getattr(tensors[index], "_keras_history", None)
        producer = history.operation.name if history is not None else tensors[index].name
        layer_flops = flops.get(layer.name)
        result.append(dict(
            layer=producer, feeds=layer.name, zeros=zeros[index], flops=layer_flops,
            saveable_flops=None if layer_flops is None else int(round(zeros[index] * layer_flops)),
        ))
    return result


def _activation_table(activations):
    """The text of the activation-sparsity section of a :class:`Report`."""
    header = ("layer", "feeds", "zeros", "next FLOPs", "saveable FLOPs")
    known = [row for row in activations if row["flops"] is not None]
    total_flops = sum(row["flops"] for row in known)
    total_saved = sum(row["saveable_flops"] for row in known)
    body = [
        (row["layer"], row["feeds"], f"{100 * row['zeros']:.1f}%",
         "?" if row["flops"] is None else f"{row['flops']:,}",
         "?" if row["saveable_flops"] is None else f"{row['saveable_flops']:,}")
        for row in activations
    ]
    share = f"{100 * total_saved / total_flops:.1f}%" if total_flops else "-"
    body.append(("total", "", share, f"{total_flops:,}", f"{total_saved:,}"))
    table = [header] + body
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    lines = ["activation sparsity on data (zeros a Dense/Conv layer reads)"]
    for i, r in enumerate(table):
        lines.append("  ".join(
            c.ljust(w) if j < 2 else c.rjust(w) for j, (c, w) in enumerate(zip(r, widths))))
        if i == 0 or i == len(table) - 2:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)
