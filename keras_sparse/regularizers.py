"""Sparsity-inducing penalties: group lasso, L1 and network slimming.

Penalties push whole groups of weights (units, input features, filters) or
BatchNorm scales toward zero during ordinary training; :func:`threshold_groups`
then turns the near-zero groups into masks, so the sparsity is exact and a
structured ``ks.shrink`` can remove them.
"""

import math
import numbers

import keras
from keras import ops

from keras_sparse.checks import check_bool
from keras_sparse.checks import check_model
from keras_sparse.checks import check_number
from keras_sparse.config import PACKAGE
from keras_sparse.layers.base import SparseMixin
from keras_sparse.ops import prox as prox_ops
from keras_sparse.utils import walk_layers

__all__ = ["GroupLasso", "L1", "group_norms", "slimming", "threshold_groups", "get"]

_GROUPS = ("units", "filters", "inputs")


def _check_groups(groups):
    if groups not in _GROUPS:
        raise ValueError(f"`groups` must be one of {_GROUPS}. Received: groups={groups!r}")
    return groups


def _reduce_axes(rank, groups):
    """Axes summed inside one group. A Keras kernel is ``(..., in, out)``:
    a unit/filter is everything but the last axis, an input feature is
    everything but the second-to-last axis (a *row* of a Dense kernel)."""
    return prox_ops.group_axes(rank, groups)


@keras.saving.register_keras_serializable(package=PACKAGE, name="L1")
class L1(keras.regularizers.L1):
    """Keras' L1 penalty :math:`\lambda \sum |w|` (same arguments, same
    loss), which also answers its proximal step, so
    :class:`ks.optimizers.Proximal` can make weights exactly zero.

    Args:
        l1: the coefficient :math:`\lambda` (>= 0).

    Example:
    >>> layer = keras.layers.Dense(64, kernel_regularizer=ks.regularizers.L1(1e-4))
    """

    #: What :meth:`zero_fraction` counts: single weights.
    groups = None

    @property
    def l(self):
        return self.l1

    def prox(self, x, threshold):
        """The proximal step of ``threshold · ‖x‖₁`` (soft thresholding)."""
        return prox_ops.soft_threshold(x, threshold)

    def zero_count(self, x):
        """``(exactly-zero weights, weights)`` of ``x``."""
        return prox_ops.zero_group_count(x)


def group_norms(weight, groups="units"):
    """L2 norm of every group of ``weight`` (a Keras ``(..., in, out)`` kernel).

    Returns:
        A 1-D tensor: one norm per output unit (``"units"``/``"filters"``) or
        per input feature (``"inputs"``).
    """
    _check_groups(groups)
    weight = ops.convert_to_tensor(weight)
    return ops.sqrt(ops.sum(ops.square(weight), axis=_reduce_axes(len(weight.shape), groups)))


@keras.saving.register_keras_serializable(package=PACKAGE, name="GroupLasso")
class GroupLasso(keras.regularizers.Regularizer):
    """Group lasso (Yuan & Lin 2006; Wen et al. 2016, structured sparsity).

    .. math::
        \\Omega(W) = \\lambda \\sum_g \\sqrt{|g|}\\, \\lVert W_g \\rVert_2

    where the groups are output units, filters or input features and
    :math:`|g|` is the number of weights in a group. A small ``epsilon`` under
    the square root keeps the gradient finite at an all-zero group.

    Args:
        l: the coefficient :math:`\\lambda` (>= 0).
        groups: ``"units"`` (Dense neurons), ``"filters"`` (conv filters: the
            same axis, the last one) or ``"inputs"`` (input features: rows of
            a Dense kernel, input channels of a conv kernel).
        epsilon: smoothing inside the square root.

    Example:
    >>> layer = keras.layers.Dense(
    ...     64, kernel_regularizer=ks.regularizers.GroupLasso(1e-3, "units"))
    """

    def __init__(self, l=1e-3, groups="units", epsilon=1e-12):
        if isinstance(l, bool) or not isinstance(l, numbers.Real) or not float(l) >= 0:
            raise ValueError(f"`l` must be a number >= 0. Received: l={l!r}")
        self.l = float(l)
        self.groups = _check_groups(groups)
        # A negative epsilon makes the norm of an all-zero group NaN.
        if (
            isinstance(epsilon, bool)
            or not isinstance(epsilon, numbers.Real)
            or not float(epsilon) >= 0
        ):
            raise ValueError(f"`epsilon` must be a number >= 0. Received: epsilon={epsilon!r}")
        self.epsilon = float(epsilon)

    def prox(self, x, threshold):
        """The proximal step of ``threshold · Σ_g √|g| ‖x_g‖₂`` (block soft
        thresholding): groups become exactly zero."""
        return prox_ops.group_soft_threshold(x, threshold, self.groups)

    def zero_count(self, x):
        """``(exactly-zero groups, groups)`` of ``x``."""
        return prox_ops.zero_group_count(x, self.groups)

    def __call__(self, x):
        x = ops.convert_to_tensor(x)
        axes = _reduce_axes(len(x.shape), self.groups)
        size = math.prod(x.shape[a] for a in axes) if axes else 1
        norms = ops.sqrt(ops.sum(ops.square(x), axis=axes) + self.epsilon)
        return self.l * math.sqrt(size) * ops.sum(norms)

    def get_config(self):
        return {"l": self.l, "groups": self.groups, "epsilon": self.epsilon}


_ALIASES = {"group_lasso": GroupLasso, "l1": L1}


def get(identifier):
    """Resolve ``"group_lasso"``, ``"l1"``, an instance, or anything
    ``keras.regularizers.get`` accepts."""
    if isinstance(identifier, str) and identifier.lower() in _ALIASES:
        return _ALIASES[identifier.lower()]()
    return keras.regularizers.get(identifier)


def slimming(model, l=1e-4):
    """Network slimming (Liu et al. 2017): L1 on every BatchNormalization γ.

    Sets ``gamma_regularizer`` (config) and the γ variable's regularizer of
    every ``BatchNormalization`` layer in ``model``, in place, so the penalty
    enters the loss in ``fit``. Compile (again) after calling it. Typical
    :math:`\\lambda` is 1e-4 to 1e-5. Channels whose γ ends near zero can be
    removed with a channel mask on the producing convolution.

    Args:
        model: a Keras model.
        l: the L1 coefficient.

    Returns:
        The list of BatchNormalization layers regularized.

    Example:
    >>> ks.regularizers.slimming(model, 1e-4)
    >>> model.compile(...)
    """
    check_model(model)
    if isinstance(l, bool) or not isinstance(l, numbers.Real) or not float(l) >= 0:
        raise ValueError(f"`l` must be a number >= 0. Received: l={l!r}")
    regularized = []
    for layer in walk_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization) and layer.scale:
            layer.gamma_regularizer = L1(l)
            if layer.built:
                layer.gamma.regularizer = layer.gamma_regularizer
            regularized.append(layer)
    for attr in ("train_function", "test_function"):
        if getattr(model, attr, None) is not None:
            setattr(model, attr, None)
    return regularized


def threshold_groups(model, threshold=1e-3, groups="units", relative=True):
    """Turn near-zero groups of every sparse layer into masks.

    After training with :class:`GroupLasso`, a group whose L2 norm is at most
    ``threshold`` (times the layer's largest group norm when ``relative``) is
    masked out exactly; masks are only ever narrowed, never regrown. Layers
    without masks (only quantized) are left as they are: prune them first.

    Args:
        model: a model with sparse layers (``ks.prune(..., schedule=None)``
            gives masks with no schedule).
        threshold: the cut-off.
        groups: ``"units"``, ``"filters"`` or ``"inputs"``.
        relative: compare to ``threshold * max group norm`` per layer.

    Returns:
        dict ``layer name -> fraction of groups removed``.

    Example:
    >>> ks.regularizers.threshold_groups(model, 1e-2, groups="units")
    """
    check_model(model)
    _check_groups(groups)
    check_number(threshold, "threshold", minimum=0.0)
    check_bool(relative, "relative")
    removed = {}
    for layer in walk_layers(model):
        if not isinstance(layer, SparseMixin) or not layer.has_masks:
            continue
        fractions = []
        for name in layer.sparse_weight_names:
            weight = layer.masked_latent(name)
            norms = group_norms(weight, groups)
            cut = threshold * ops.max(norms) if relative else threshold
            keep_group = ops.greater(norms, cut)
            rank = len(weight.shape)
            axis = rank - 1 if groups in ("units", "filters") else rank - 2
            shape = [1] * rank
            shape[axis] = -1
            keep = ops.broadcast_to(ops.reshape(keep_group, shape), weight.shape)
            layer.set_mask(name, ops.logical_and(keep, ops.cast(layer.get_mask(name), "bool")))
            kept = float(ops.convert_to_numpy(ops.sum(ops.cast(keep_group, "float32"))))
            fractions.append(1.0 - kept / int(keep_group.shape[0]))
        removed[layer.name] = sum(fractions) / len(fractions)
    return removed
