"""Sparsity patterns: *which shape* the kept weights form.

A pattern turns per-weight scores and a sparsity into a boolean mask, using
the weight's layout (which axes are inputs and which are output units).

Every pattern keeps at least one weight per mask, and one group (block,
unit) where it has groups, at any sparsity below 1. ``Unstructured``,
``Block``, ``Channel`` and ``FanIn`` take ``allow_empty=True`` to remove
``round(sparsity * count)`` entries or groups even when that is all of them.
"""

import collections
import math
import numbers

from keras import ops

from keras_sparse import config as config_lib
from keras_sparse.ops import compiled as compiled_ops
from keras_sparse.ops import masks as mask_ops

_REGISTRY = {}

__all__ = ["Layout", "Pattern", "Unstructured", "NByM", "Block", "Channel", "get"]

Layout = collections.namedtuple("Layout", ["input_axes", "output_axes"])
Layout.__doc__ = """Axes of a weight tensor: ``input_axes`` are the axes that
are contracted with the layer input (``(-2,)`` for a Dense kernel), and
``output_axes`` index output units (``(-1,)`` for a Dense kernel). Either may
be empty when the notion does not apply."""


class Pattern(config_lib.ConfigObject):
    """Base class. Subclasses implement :meth:`mask`; a structured pattern
    also answers the cost of its sparse index (:meth:`index_bytes`), and
    class attributes say what the tools that read masks may rely on
    (``is_unstructured``, ``removes_units``)."""

    #: Whether layers with this pattern may share one global threshold.
    supports_global = False

    #: Whether any set of entries of the requested size is a mask of this
    #: pattern (no groups, blocks or per-unit counts), so drop-and-grow
    #: methods (SET, RigL) may remove and regrow single entries.
    is_unstructured = False

    #: Whether every mask keeps or removes whole output units (all entries
    #: that share an index along ``Layout.output_axes``), so
    #: :func:`keras_sparse.prune_channels` accepts the pattern and
    #: :func:`keras_sparse.shrink` removes the units it drops.
    removes_units = False

    #: The sparsity every mask of this pattern has, whatever is requested
    #: (N:M: ``1 - n/m``), or ``None`` when the requested one is followed.
    fixed_sparsity = None

    def mask(self, scores, sparsity, layout):
        """Boolean keep-mask for ``scores`` at ``sparsity``."""
        raise NotImplementedError

    def check_weight(self, shape, layout):
        """Raise ``ValueError`` if this pattern cannot apply to ``shape``.

        A dimension of ``shape`` may be ``None``: unknown until the layer is
        built (its input channels); it passes, and is checked again on the
        built weight."""

    def effective_sparsity(self, sparsity):
        """The sparsity the mask will really have for a requested one."""
        return sparsity

    def index_bytes(self, shape, kept, layout):
        """Bytes of the sparse index locating the ``kept`` non-zero entries
        of a weight of ``shape`` in a compressed export (for
        :func:`keras_sparse.report`).

        Any entry may be zero here, so the index is the smaller of a bitmap
        (1 bit per entry) and a list of coordinates (``ceil(log2(size) / 8)``
        bytes each); structured patterns override this with the cost of
        their own structure.

        Args:
            shape: the weight's shape (ints).
            kept: its number of non-zero entries.
            layout: its :class:`Layout`.

        Returns:
            An int.

        Example:
        >>> ks.patterns.Unstructured().index_bytes((64, 32), 100, Layout((0,), (1,)))
        200
        """
        size = math.prod(shape)
        coordinate = max(1, math.ceil(math.log2(max(size, 2)) / 8))
        return min(math.ceil(size / 8), kept * coordinate)

    def dynamic_keep(self, sparsity, shape, layout):
        """The count :meth:`dynamic_mask` takes for ``sparsity`` on a weight
        of ``shape`` (a Python int), or ``None`` if this pattern has no
        traced mask (mask updates then run eagerly)."""
        return None

    def dynamic_mask(self, scores, keep, layout):
        """The mask of :meth:`mask` with the sparsity given as ``keep``, a
        scalar integer tensor from :meth:`dynamic_keep`: pure ``keras.ops``
        with no shape depending on ``keep``, so one trace serves every
        sparsity."""
        raise NotImplementedError


def _check_allow_empty(allow_empty):
    if not isinstance(allow_empty, bool):
        raise ValueError(
            f"`allow_empty` must be a bool. Received: allow_empty={allow_empty!r}"
        )
    return allow_empty


def _allow_empty_config(pattern):
    """``allow_empty`` in a config only when set, so default configs (and
    reprs) stay as they were."""
    return {"allow_empty": True} if pattern.allow_empty else {}


@config_lib.register(_REGISTRY, "unstructured")
class Unstructured(Pattern):
    """Any individual weight may be removed (top-k of the scores).

    Args:
        allow_empty: let a mask remove every weight (by default at least one
            is kept).

    Example:
    >>> ks.patterns.get("unstructured")
    Unstructured()
    """

    supports_global = True
    is_unstructured = True

    def __init__(self, allow_empty=False):
        self.allow_empty = _check_allow_empty(allow_empty)

    def mask(self, scores, sparsity, layout):
        return mask_ops.topk_mask(scores, sparsity, allow_empty=self.allow_empty)

    def get_config(self):
        return _allow_empty_config(self)

    def dynamic_keep(self, sparsity, shape, layout):
        return compiled_ops.keep_count(sparsity, math.prod(shape), 0 if self.allow_empty else 1)

    def dynamic_mask(self, scores, keep, layout):
        return compiled_ops.topk_mask_dynamic(scores, keep)


@config_lib.register(_REGISTRY, "n_by_m")
class NByM(Pattern):
    """N:M sparsity: ``n`` weights kept in each group of ``m`` consecutive
    weights along the input axis (``"2:4"`` is the sparse-tensor-core format).

    The sparsity is fixed at ``1 - n/m``; the schedule only decides when the
    pattern is applied (at the first update with a non-zero sparsity).

    Args:
        n: weights kept per group.
        m: group size; must divide the kernel's input dimension.

    Example:
    >>> ks.patterns.get("2:4")
    NByM(n=2, m=4)
    """

    def __init__(self, n=2, m=4):
        mask_ops.check_nm(n, m)
        self.n = n
        self.m = m

    def check_weight(self, shape, layout):
        if not layout.input_axes:
            raise ValueError(
                f"N:M sparsity needs an input axis; this weight of shape "
                f"{tuple(shape)} has none. Received: pattern={self!r}"
            )
        axis = layout.input_axes[-1]
        if shape[axis] is not None and shape[axis] % self.m:
            raise ValueError(
                f"N:M groups of m={self.m} must divide the input dimension "
                f"{shape[axis]} of a weight of shape {tuple(shape)}. "
                f"Received: pattern={self!r}"
            )

    def mask(self, scores, sparsity, layout):
        if sparsity <= 0.0:
            return mask_ops.topk_mask(scores, 0.0)
        return mask_ops.nm_mask(scores, self.n, self.m, axis=layout.input_axes[-1])

    @property
    def fixed_sparsity(self):
        return 1.0 - self.n / self.m

    def effective_sparsity(self, sparsity):
        return self.fixed_sparsity if sparsity > 0 else 0.0

    def index_bytes(self, shape, kept, layout):
        """``ceil(log2 m)`` bits per kept entry: its position in its group."""
        return math.ceil(kept * math.ceil(math.log2(self.m)) / 8)

    def get_config(self):
        return {"n": self.n, "m": self.m}


@config_lib.register(_REGISTRY, "block")
class Block(Pattern):
    """Whole blocks of ``block_shape`` kept or removed.

    ``block_shape`` is left-padded with ones to the kernel's rank, so
    ``Block((4, 1))`` on a Dense kernel removes runs of 4 input features for
    one unit, and on a Conv2D kernel acts on the last two axes.

    Args:
        block_shape: tuple of positive ints dividing the kernel shape.
        allow_empty: let a mask remove every block (by default at least one
            is kept).

    Example:
    >>> ks.patterns.Block((4, 4))
    Block(block_shape=(4, 4))
    """

    def __init__(self, block_shape=(1, 1), allow_empty=False):
        given = block_shape
        if isinstance(block_shape, numbers.Integral):
            block_shape = (block_shape,)
        block_shape = tuple(block_shape) if isinstance(block_shape, (tuple, list)) else ()
        if not block_shape or any(
            isinstance(b, bool) or not isinstance(b, numbers.Integral) or b < 1
            for b in block_shape
        ):
            raise ValueError(
                "`block_shape` must be a non-empty tuple of positive integers. "
                f"Received: block_shape={given!r}"
            )
        self.block_shape = tuple(int(b) for b in block_shape)
        self.allow_empty = _check_allow_empty(allow_empty)

    def check_weight(self, shape, layout):
        mask_ops.full_block_shape(self.block_shape, shape)

    def mask(self, scores, sparsity, layout):
        return mask_ops.block_mask(
            scores, self.block_shape, sparsity, allow_empty=self.allow_empty
        )

    def get_config(self):
        return {"block_shape": list(self.block_shape), **_allow_empty_config(self)}

    def index_bytes(self, shape, kept, layout):
        """1 bit per block."""
        block = (1,) * (len(shape) - len(self.block_shape)) + self.block_shape
        return math.ceil(math.prod(d // b for d, b in zip(shape, block)) / 8)

    def __repr__(self):
        empty = ", allow_empty=True" if self.allow_empty else ""
        return f"Block(block_shape={self.block_shape}{empty})"


@config_lib.register(_REGISTRY, "channel", "neuron", "filter")
class Channel(Pattern):
    """Whole output units removed: neurons of a Dense layer, filters of a
    convolution, rows of an embedding's output dimension.

    A unit's score is the sum of its weights' scores (the L1 norm with the
    magnitude scorer, Li et al. 2017).

    Args:
        allow_empty: let a mask remove every unit (by default at least one
            is kept).

    Example:
    >>> ks.patterns.get("channel")
    Channel()
    """

    removes_units = True

    def __init__(self, allow_empty=False):
        self.allow_empty = _check_allow_empty(allow_empty)

    def check_weight(self, shape, layout):
        if not layout.output_axes:
            raise ValueError(
                f"Channel pruning needs an output axis; this weight of shape "
                f"{tuple(shape)} has none. Received: pattern={self!r}"
            )

    def mask(self, scores, sparsity, layout):
        return mask_ops.channel_mask(
            scores, sparsity, axes=layout.output_axes, allow_empty=self.allow_empty
        )

    def get_config(self):
        return _allow_empty_config(self)

    def index_bytes(self, shape, kept, layout):
        """1 bit per output unit."""
        return math.ceil(math.prod(shape[a] for a in layout.output_axes) / 8)

    def dynamic_keep(self, sparsity, shape, layout):
        rank = len(shape)
        units = math.prod(int(shape[a % rank]) for a in set(a % rank for a in layout.output_axes))
        return compiled_ops.keep_count(sparsity, units, 0 if self.allow_empty else 1)

    def dynamic_mask(self, scores, keep, layout):
        scores = ops.convert_to_tensor(scores)
        rank = len(scores.shape)
        axes = {a % rank for a in layout.output_axes}
        reduce_axes = tuple(a for a in range(rank) if a not in axes)
        unit_scores = ops.cast(scores, "float32")
        if reduce_axes:
            unit_scores = ops.sum(unit_scores, axis=reduce_axes, keepdims=True)
        keep_units = compiled_ops.topk_mask_dynamic(unit_scores, keep)
        return ops.broadcast_to(keep_units, scores.shape)


def _parse(text):
    if ":" in text:
        left, _, right = text.partition(":")
        if left.strip().isdigit() and right.strip().isdigit():
            n, m = int(left), int(right)
            if not 0 < n < m:
                raise ValueError(
                    f"N:M sparsity needs 0 < n < m. Received: pattern={text!r} (n={n}, m={m})"
                )
            return NByM(n, m)
    return None


def get(identifier):
    """Resolve a pattern from an instance, an alias (``"unstructured"``,
    ``"channel"``), ``"N:M"`` (e.g. ``"2:4"``) or a config dict."""
    if identifier is None:
        identifier = "unstructured"
    if isinstance(identifier, str) and identifier.strip().lower() == "block":
        raise ValueError(
            "The block pattern needs a shape: use ks.patterns.Block((4, 4)). "
            f"Received: pattern={identifier!r}"
        )
    return config_lib.lookup(identifier, Pattern, _REGISTRY, "pattern", _parse)


serialize = config_lib.serialize


from keras_sparse.ops import drop_grow as _drop_grow  # noqa: E402


def _fan_in(shape, output_axes):
    rank = len(shape)
    outs = {a % rank for a in output_axes}
    fan_in = 1
    for axis, size in enumerate(shape):
        if axis not in outs:
            if size is None:
                return None
            fan_in *= int(size)
    return fan_in


@config_lib.register(_REGISTRY, "fan_in")
class FanIn(Pattern):
    """Every output unit keeps the same number of inputs (Martens-style
    sparse connectivity).

    With ``k`` given, each unit keeps exactly ``k`` inputs (Martens 2010
    used 15), whatever the requested sparsity (which only has to be
    non-zero for the pattern to apply). With ``k=None`` each unit keeps
    ``max(1, round((1 - sparsity) * fan_in))`` inputs, so the layer has the
    requested sparsity spread evenly over its units. A unit's inputs are all
    entries of the weight outside its output axes (for a convolution: kernel
    positions times input channels); within a unit the highest scores are
    kept.

    For sparse initialization combine it with the random scorer, which also
    rescales the kept weights by ``sqrt(fan_in / k)``::

        ks.prune_at_init(model, None, 0.9, pattern=ks.patterns.FanIn(15),
                         scorer="random")

    Reference: J. Martens, "Deep learning via Hessian-free optimization",
    ICML 2010 (sparse initialization).

    Args:
        k: inputs kept per unit, or ``None`` to derive it from the sparsity.
        allow_empty: with ``k=None``, keep ``round((1 - sparsity) * fan_in)``
            inputs per unit even when that is 0.

    Example:
    >>> ks.patterns.FanIn(15)
    FanIn(k=15)
    """

    def __init__(self, k=None, allow_empty=False):
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            raise ValueError(f"`k` must be a positive integer or None. Received: k={k!r}")
        self.k = k
        self.allow_empty = _check_allow_empty(allow_empty)

    def check_weight(self, shape, layout):
        if not layout.output_axes:
            raise ValueError(
                f"FanIn needs an output axis; this weight of shape {tuple(shape)} "
                f"has none. Received: pattern={self!r}"
            )
        fan_in = _fan_in(shape, layout.output_axes)
        if self.k is not None and fan_in is not None and self.k > fan_in:
            raise ValueError(
                f"FanIn(k={self.k}) exceeds the fan-in {fan_in} of a weight of shape "
                f"{tuple(shape)}. Received: pattern={self!r}"
            )

    def mask(self, scores, sparsity, layout):
        if sparsity <= 0.0:
            return mask_ops.topk_mask(scores, 0.0)
        fan_in = _fan_in(tuple(scores.shape), layout.output_axes)
        if self.k is not None:
            keep = self.k
        else:
            keep = round((1.0 - sparsity) * fan_in)
            keep = keep if self.allow_empty else max(1, keep)
        return _drop_grow.fan_in_mask(scores, min(keep, fan_in), layout.output_axes)

    def get_config(self):
        return {"k": self.k, **_allow_empty_config(self)}


__all__ += ["FanIn"]


deserialize, register = config_lib.family_api(Pattern, _REGISTRY, "pattern", _parse)


__all__ += [n for n in ("get", "serialize", "deserialize", "register") if n not in __all__]
