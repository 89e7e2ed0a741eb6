"""Masks over activations: the ``k`` largest entries of each example.

Weight masks (:mod:`keras_sparse.ops.masks`) are chosen once per update and
stored; activation masks are recomputed on every forward pass from the
values themselves, so they must be cheap, compile under XLA and give the
same answer on every backend.
"""

import math
import numbers

import numpy as np
from keras import ops

__all__ = ["top_k_count", "top_k_activation_mask"]


def top_k_count(size, k=None, fraction=None):
    """Number of entries kept among ``size``: ``k`` itself, or
    ``max(1, round(fraction * size))`` (halves round up) for a fraction.

    Args:
        size: number of entries the winners are chosen among.
        k: an int in ``[1, size]``, or ``None`` when ``fraction`` is given.
        fraction: a float in ``(0, 1]``, or ``None`` when ``k`` is given.

    Returns:
        The int ``k``.

    Raises:
        ValueError: when ``k > size`` (``k`` and ``fraction`` themselves are
            checked by the layer that takes them).

    Example:
    >>> top_k_count(64, fraction=0.1)
    6
    """
    if k is None:
        # A tiny tolerance: 0.1 * 10 is 1.0000000000000002 in floating point.
        return max(1, int(math.floor(fraction * size + 0.5 + 1e-9)))
    if k > size:
        raise ValueError(
            f"`k` cannot exceed the number of entries it is chosen among ({size}). "
            f"Received: k={k}"
        )
    return int(k)


def _keep_top_k_last(x, k):
    """Bool mask of the ``k`` largest entries along the last axis; among
    equal values the lower index wins, so exactly ``k`` are kept."""
    kth = ops.top_k(x, k, sorted=True)[0][..., k - 1 : k]
    above = ops.greater(x, kth)
    tied = ops.equal(x, kth)
    needed = k - ops.sum(ops.cast(above, "int32"), axis=-1, keepdims=True)
    tie_rank = ops.cumsum(ops.cast(tied, "int32"), axis=-1)
    return ops.logical_or(above, ops.logical_and(tied, ops.less_equal(tie_rank, needed)))


def top_k_activation_mask(x, k, axis=-1):
    """Bool mask keeping the ``k`` largest values of each example.

    With ``axis`` an int, the winners are chosen independently along that
    axis at every other position (e.g. among the channels of each pixel of a
    channels-last feature map); with ``axis=None`` they are chosen among all
    non-batch entries of each example. Among equal values the one with the
    lowest index (row-major over the chosen entries) wins, so exactly ``k``
    entries are ``True`` per group on every backend. NaN inputs give an
    unspecified mask.

    Args:
        x: a tensor of rank >= 2 (the first axis is the batch).
        k: a Python int in ``[1, size of the group]``.
        axis: an int axis other than the batch axis, or ``None``.

    Returns:
        A bool tensor of the shape of ``x``.

    Example:
    >>> mask = top_k_activation_mask(np.array([[3., 1., 3., 2.]]), 2)
    >>> keras.ops.convert_to_numpy(mask)
    array([[ True, False,  True, False]])
    """
    if not isinstance(k, numbers.Integral) or isinstance(k, bool) or k < 1:
        raise ValueError(f"`k` must be an int >= 1. Received: k={k!r}")
    x = ops.convert_to_tensor(x)
    rank = len(x.shape)
    if axis is None:
        size = int(np.prod(x.shape[1:]))
        top_k_count(size, k)
        flat = ops.reshape(x, (-1, size))
        return ops.reshape(_keep_top_k_last(flat, k), ops.shape(x))
    axis = axis % rank
    if axis == 0:
        raise ValueError(f"`axis` cannot be the batch axis. Received: axis={axis}")
    top_k_count(x.shape[axis], k)
    if axis == rank - 1:
        return _keep_top_k_last(x, k)
    moved = ops.moveaxis(x, axis, -1)
    return ops.moveaxis(_keep_top_k_last(moved, k), -1, axis)
