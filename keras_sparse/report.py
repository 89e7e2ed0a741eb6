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
