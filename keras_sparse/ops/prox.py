"""Proximal operators of sparsity penalties (floor 1, ``keras.ops`` only).

A proximal step ``prox_{t·Ω}(w) = argmin_u ½‖u − w‖² + t·Ω(u)`` after an
ordinary gradient step is what makes a penalty produce *exact* zeros
(proximal gradient descent; Parikh & Boyd 2014, §6.5): the subgradient of
``|w|`` in the loss only makes weights oscillate around zero.
"""

import math

from keras import ops

__all__ = ["soft_threshold", "group_soft_threshold", "group_axes", "zero_group_count"]


def soft_threshold(x, threshold):
    """Proximal operator of ``threshold · ‖x‖₁`` (elementwise shrinkage).

    .. math::
        \\operatorname{prox}(x)_i = \\operatorname{sign}(x_i)\\,\\max(|x_i| - t, 0)

    Args:
        x: a tensor.
        threshold: ``t >= 0``, a scalar (Python number or tensor).

    Returns:
        A tensor like ``x`` with every entry of magnitude ``<= t`` exactly 0.

    Example:
    >>> ks.ops.soft_threshold(np.array([-2.0, 0.5, 3.0]), 1.0)  # [-1, 0, 2]
    """
    x = ops.convert_to_tensor(x)
    t = ops.cast(threshold, x.dtype)
    return ops.sign(x) * ops.maximum(ops.abs(x) - t, ops.zeros((), x.dtype))


def group_axes(rank, groups):
    """Axes summed inside one group of a Keras ``(..., in, out)`` kernel:
    a unit/filter is everything but the last axis, an input feature
    everything but the second-to-last."""
    if groups not in ("units", "filters", "inputs"):
        raise ValueError(
            "`groups` must be one of ('units', 'filters', 'inputs'). "
            f"Received: groups={groups!r}"
        )
    if rank < 2:
        return tuple(range(rank))
    keep = rank - 1 if groups in ("units", "filters") else rank - 2
    return tuple(a for a in range(rank) if a != keep)


def group_soft_threshold(x, threshold, groups="units"):
    """Proximal operator of the group lasso ``t · Σ_g √|g| ‖x_g‖₂``.

    .. math::
        \\operatorname{prox}(x)_g = x_g\\,\\max\\Bigl(1 - \\frac{t\\sqrt{|g|}}
        {\\lVert x_g \\rVert_2}, 0\\Bigr)

    (block soft thresholding; Yuan & Lin 2006). A group whose norm is at most
    ``t·√|g|`` becomes exactly zero; the others shrink toward zero.

    Args:
        x: a Keras kernel ``(..., in, out)``.
        threshold: ``t >= 0``.
        groups: ``"units"``/``"filters"`` (the last axis) or ``"inputs"``.

    Returns:
        A tensor like ``x``.

    Example:
    >>> w = np.array([[3.0, 0.1], [4.0, 0.1]])
    >>> ks.ops.group_soft_threshold(w, 1.0)   # unit 0 scaled by 1-√2/5, unit 1 zero
    """
    x = ops.convert_to_tensor(x)
    axes = group_axes(len(x.shape), groups)
    size = math.prod(x.shape[a] for a in axes) if axes else 1
    t = ops.cast(threshold, x.dtype) * math.sqrt(size)
    norm = ops.sqrt(ops.sum(ops.square(x), axis=axes, keepdims=True))
    # Guard the division only: a zero group stays zero either way.
    safe = ops.where(norm > 0, norm, ops.ones_like(norm))
    scale = ops.maximum(1.0 - t / safe, ops.zeros((), x.dtype))
    return x * ops.where(norm > 0, scale, ops.zeros_like(scale))


def zero_group_count(x, groups=None):
    """Number of exactly-zero entries (``groups=None``) or exactly-zero
    groups of ``x`` and the total, as numpy integers: ``(zeros, total)``.

    Example:
    >>> ks.ops.zero_group_count(np.array([[0.0, 1.0], [0.0, 2.0]]), "units")
    (1, 2)
    """
    x = ops.convert_to_numpy(x)
    if groups is None:
        return int((x == 0).sum()), int(x.size)
    axes = group_axes(x.ndim, groups)
    nonzero = (x != 0).any(axis=axes) if axes else x != 0
    return int(nonzero.size - nonzero.sum()), int(nonzero.size)
