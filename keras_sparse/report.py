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
"""

import math

import keras
import numpy as np
from keras import ops

from keras_sparse.checks import check_callable
from keras_sparse.checks import check_model
from keras_sparse.layers.base import SparseMixin
from keras_sparse.layers.cost import stored_cost_row  # noqa: F401 (public here too)
from keras_sparse.utils import _children
from keras_sparse.utils import is_container
from keras_sparse.utils import walk_layers

__all__ = ["report", "Report", "layer_macs", "register_cost"]

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


def _input_shape(layer):
    shapes = getattr(layer, "_build_shapes_dict", None) or {}
    if len(shapes) == 1:
        shape = next(iter(shapes.values()))
        if isinstance(shape, (tuple, list)) and all(
            d is None or isinstance(d, int) for d in shape
        ):
            return tuple(shape)
    return None


def _positions(shape):
    """Product of the non-batch, non-channel dims of a channels-last shape."""
    if shape is None:
        return None
    dims = [d for d in shape[1:-1]]
    if any(d is None for d in dims):
        return None
    return int(math.prod(dims)) if dims else 1


def layer_macs(layer, weight_name, weight_size):
    """Multiply-accumulates per example that weight ``weight_name`` (with
    ``weight_size`` entries taking part) costs in ``layer``, or ``None``
    when the layer's input shape is unknown."""
    in_shape = _input_shape(layer)
    if in_shape is None or isinstance(layer, keras.layers.Embedding):
        return 0 if isinstance(layer, keras.layers.Embedding) else None
    channels_first = getattr(layer, "data_format", "channels_last") == "channels_first"
    if channels_first:
        in_shape = (in_shape[0],) + tuple(in_shape[2:]) + (in_shape[1],)
    if isinstance(layer, keras.layers.EinsumDense):
        out = layer.compute_output_shape(_input_shape(layer))
        out_units = math.prod(d for d in out[1:] if d is not None)
        kernel_out = math.prod(
            layer.kernel.shape[i]
            for i in (layer.weight_layout("kernel").output_axes
                      if isinstance(layer, SparseMixin) else ())
        ) or out[-1]
        return weight_size * max(1, out_units // max(1, kernel_out))
    transpose_types = tuple(
        getattr(keras.layers, n) for n in ("Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose")
    )
    if isinstance(layer, transpose_types):
        return weight_size * (_positions(in_shape) or 0)
    if len(in_shape) <= 2 or isinstance(layer, keras.layers.Dense):
        return weight_size * (_positions(in_shape) or 1)
    out_shape = tuple(layer.compute_output_shape(_input_shape(layer)))
    if channels_first:
        out_shape = (out_shape[0],) + tuple(out_shape[2:]) + (out_shape[1],)
    return weight_size * (_positions(out_shape) or 0)


def _compressed_bytes(size, kept, value_bytes, index_bytes):
    if kept == size:
        return size * value_bytes
    return kept * value_bytes + index_bytes


def packed_width(precision):
    """Bits one value occupies once packed: 1, 2, 4 or 8 (16 or 32 above)."""
    for width in (1, 2, 4, 8, 16):
        if precision <= width:
            return width
    return 32


def _packed_bytes(size, kept, bits, index_bytes, side_values):
    """Values packed at ``bits`` each: densely, or only the ``kept`` ones
    plus the sparse index, whichever is smaller; plus float32 side values."""
    dense = math.ceil(size * bits / 8)
    if kept < size:
        dense = min(dense, math.ceil(kept * bits / 8) + index_bytes)
    return dense + 4 * side_values


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
    """The layer's own ``report_row`` (the protocol: a layer answers its
    cost), else a function registered for its class or a base class."""
    own = getattr(layer, "report_row", None)
    if callable(own):
        return lambda _: own()
    for klass in type(layer).__mro__:
        if klass in _COST_FUNCTIONS:
            return _COST_FUNCTIONS[klass]
    return None


def _layer_row(layer):
    cost = _cost_function(layer)
    if cost is not None:
        row = dict(cost(layer))
        row.update(layer=layer.name, type=type(layer).__name__)
        row.setdefault("bits", _weight_bits(layer))
        row.setdefault("packed_bytes", row["compressed_bytes"])
        row.setdefault("binary_flops", 0)
        row["binary_mac_share"] = _share(row["binary_flops"], row["effective_flops"])
        return row
    sparse = isinstance(layer, SparseMixin)
    masks = {id(v) for v in layer.auxiliary_variables()} if sparse else set()
    latents = {id(layer.latent_weight(n)): n for n in layer.sparse_weight_names} if sparse else {}
    row = dict(layer=layer.name, type=type(layer).__name__, params=0, nonzeros=0,
               masked_params=0, masked_nonzeros=0,
               pattern=type(layer.pattern).__name__ if sparse else "-",
               dense_bytes=0, compressed_bytes=0, dense_flops=0, effective_flops=0,
               bits=_weight_bits(layer), packed_bytes=0, binary_flops=0)
    flops_known = True
    kernel_names = _kernel_names(layer)
    quantizer = getattr(layer, "kernel_quantizer", None) if sparse else None
    binary = bool(
        quantizer is not None and quantizer.precision == 1
        and layer.input_quantizer is not None and layer.input_quantizer.precision == 1
    )
    for variable in layer.weights:
        if id(variable) in masks:
            continue
        size = int(math.prod(variable.shape))
        value_bytes = np.dtype(variable.dtype).itemsize if variable.dtype != "bfloat16" else 2
        row["params"] += size
        row["dense_bytes"] += size * value_bytes
        name = latents.get(id(variable))
        if name is not None:
            value = ops.convert_to_numpy(layer.effective_weight(name))
            kept = int(np.count_nonzero(value))
            # The pattern answers what locating the kept entries costs.
            index = layer.pattern.index_bytes(
                tuple(variable.shape), kept, layer.weight_layout(name))
            row["compressed_bytes"] += _compressed_bytes(size, kept, value_bytes, index)
            if quantizer is None:
                bits, side = 8 * value_bytes, 0
            else:
                bits = packed_width(quantizer.precision)
                side = quantizer.side_values(
                    tuple(variable.shape), tuple(layer.weight_layout(name).output_axes))
            row["packed_bytes"] += _packed_bytes(size, kept, bits, index, side)
            row["masked_params"] += size
            row["masked_nonzeros"] += kept
        else:
            kept = int(np.count_nonzero(ops.convert_to_numpy(variable)))
            row["compressed_bytes"] += size * value_bytes
            row["packed_bytes"] += size * value_bytes
            name = kernel_names.get(id(variable))
        row["nonzeros"] += kept
        if name is not None:
            dense = layer_macs(layer, name, size)
            eff = layer_macs(layer, name, kept)
            if dense is None:
                flops_known = False
            else:
                row["dense_flops"] += 2 * dense
                row["effective_flops"] += 2 * eff
                if binary:
                    row["binary_flops"] += 2 * eff
    if not flops_known:
        row["dense_flops"] = row["effective_flops"] = row["binary_flops"] = None
    row["binary_mac_share"] = _share(row["binary_flops"], row["effective_flops"])
    if sparse:
        row["sparsity"] = layer.sparsity
        # Masks are not parameters; they take one byte per masked entry
        # while training (a layer that is only quantized has none).
        masks = [layer.get_mask(n) for n in layer.sparse_weight_names]
        row["mask_bytes"] = sum(
            int(math.prod(m.shape)) * np.dtype(m.dtype).itemsize for m in masks if m is not None
        )
    else:
        row["sparsity"] = 1.0 - row["nonzeros"] / row["params"] if row["params"] else 0.0
    return row


def _share(part, whole):
    if part is None or whole is None:
        return None
    return part / whole if whole else 0.0


def _weight_bits(layer):
    """Bits per value of the layer's main weights: the kernel quantizer's
    precision, else the width of the first weight's dtype."""
    quantizer = getattr(layer, "kernel_quantizer", None)
    if quantizer is not None and hasattr(quantizer, "precision"):
        return int(quantizer.precision)
    for variable in layer.weights:
        dtype = keras.backend.standardize_dtype(variable.dtype)
        if dtype != "bool":
            return 16 if dtype == "bfloat16" else 8 * np.dtype(dtype).itemsize
    return None


def _kernel_names(layer):
    """Variables of a plain Keras layer that take part in its MACs."""
    names = {}
    for name in ("kernel", "depthwise_kernel", "pointwise_kernel"):
        value = layer.__dict__.get(name, None) or layer.__dict__.get("_" + name, None)
        if value is not None and hasattr(value, "shape"):
            names[id(value)] = name
    return names


def _owns_weighted_layers(layer):
    """A composite layer (MultiHeadAttention, ...) whose weights all belong
    to sub-layers: those get the rows, so nothing is counted twice."""
    if _cost_function(layer) is not None or isinstance(layer, SparseMixin):
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

    def __init__(self, rows):
        self.rows = rows
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
        return {"layers": list(self.rows), "totals": dict(self.totals)}

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
        return "\n".join(lines)

    __repr__ = __str__


def report(model, print_fn=print):
    """Print and return a per-layer table of parameters, non-zeros, sparsity,
    pattern, weight bits, dense bytes, compressed-bytes estimate (values +
    index), packed bytes (quantized values packed at 1/2/4/8 bits + index +
    scales), the bytes of the training masks (not parameters: ``params``
    leaves them out), dense vs effective FLOPs per example and the share of binary
    (1-bit weight x 1-bit input) multiply-accumulates.

    Args:
        model: any built Keras model (sparse or not).
        print_fn: called with the table text; ``None`` to stay silent.

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
    result = Report(rows)
    if print_fn is not None:
        print_fn(str(result))
    return result
