"""Group scorers for structured (channel / filter / neuron) pruning.

With the ``Channel`` pattern a unit's score is the *sum* of its entries'
scores, so each scorer here returns per-entry values whose sum over a unit is
the unit's criterion:

* :class:`L1NormScorer` (``"l1_norm"``): ``|w|``, the unit's L1 norm
  (Li et al. 2017, "Pruning Filters for Efficient ConvNets");
* :class:`L2NormScorer` (``"l2_norm"``): ``w**2``, the unit's squared L2
  norm (same ranking as the L2 norm);
* :class:`BatchNormGammaScorer` (``"bn_gamma"``): ``|gamma|`` of the
  BatchNormalization that follows the layer (network slimming, Liu et al.
  2017), spread evenly over the unit's entries;
* :class:`TaylorChannelScorer` (``"taylor_channel"``): ``|g * w|``, so a
  unit's score is the first-order Taylor estimate of the loss change summed
  over its weights (Molchanov et al. 2017/2019); needs the gradient ``g``.

``bn_gamma`` needs to know the BatchNorm, and ``taylor_channel`` a gradient:
:func:`keras_sparse.prune_channels` finds the BatchNorm in the graph (and
binds a scorer per layer) and computes the gradient on a batch.
"""

import math

from keras import ops

from keras_sparse import config as config_lib
from keras_sparse.checks import type_error
from keras_sparse.scorers.base import REGISTRY
from keras_sparse.scorers.base import Scorer

__all__ = ["L1NormScorer", "L2NormScorer", "BatchNormGammaScorer", "TaylorChannelScorer"]


@config_lib.register(REGISTRY, "l1_norm")
class L1NormScorer(Scorer):
    r"""Unit L1 norm (Li et al. 2017): per entry ``|w|``, so a unit's score
    under the ``Channel`` pattern is :math:`\|w_u\|_1`.

    Example:
    >>> ks.prune(model, 0.5, pattern="channel", scorer="l1_norm")
    """

    traceable = True

    def score(self, weight, gradient=None):
        return ops.abs(weight)


@config_lib.register(REGISTRY, "l2_norm")
class L2NormScorer(Scorer):
    r"""Unit L2 norm: per entry ``w**2``, so a unit's score under the
    ``Channel`` pattern is :math:`\|w_u\|_2^2` (the same ranking as
    :math:`\|w_u\|_2`).

    Example:
    >>> ks.prune(model, 0.5, pattern="channel", scorer="l2_norm")
    """

    traceable = True

    def score(self, weight, gradient=None):
        return ops.square(weight)


@config_lib.register(REGISTRY, "taylor_channel")
class TaylorChannelScorer(Scorer):
    r"""First-order Taylor criterion per unit (Molchanov et al. 2017, 2019):
    per entry :math:`|g \odot w|`, summed over the unit by the ``Channel``
    pattern.

    ``needs_gradient`` is true: the scorer must be given the gradient of the
    loss with respect to the effective weight. :func:`keras_sparse.prune_channels`
    computes it on a batch (``data=(x, y)``); inside ``fit`` it is whatever
    gradient the pruning callback provides.

    Example:
    >>> ks.prune_channels(model, 0.5, scorer="taylor_channel", data=(x, y))
    """

    needs_gradient = True

    def score(self, weight, gradient=None):
        if gradient is None:
            raise ValueError(
                "The taylor_channel scorer needs the loss gradient of the weight. Use "
                "ks.prune_channels(model, sparsity, scorer='taylor_channel', data=(x, y)) "
                "for one-shot pruning. Received: gradient=None"
            )
        return ops.abs(ops.multiply(weight, ops.cast(gradient, weight.dtype)))


@config_lib.register(REGISTRY, "bn_gamma")
class BatchNormGammaScorer(Scorer):
    r"""Network slimming (Liu et al. 2017): a unit's score is
    :math:`|\gamma_u|` of the BatchNormalization that normalizes it.

    The scorer reads the BatchNorm layer it is bound to
    (:meth:`bind`); :func:`keras_sparse.prune_channels` finds it in the
    graph and binds one scorer per pruned layer. The per-entry score is
    :math:`|\gamma_u| / n_u` (``n_u`` entries per unit), so the ``Channel``
    pattern's sum is :math:`|\gamma_u|`. Train with an L1 penalty on
    :math:`\gamma` (``1e-4``..``1e-5``) so that unimportant channels get a
    small :math:`\gamma`.

    Args:
        batchnorm: name of the BatchNormalization layer (kept in the config;
            the layer itself must be bound again after loading).

    Example:
    >>> pruned = ks.prune_channels(model, 0.5, scorer="bn_gamma", layers=["conv1"])
    """

    reads_batchnorm = True

    def __init__(self, batchnorm=None):
        if batchnorm is not None and not isinstance(batchnorm, str):
            raise type_error("batchnorm", batchnorm, "the name of a BatchNormalization layer")
        self.batchnorm = batchnorm
        self._layer = None

    def bind(self, batchnorm_layer):
        """Read ``gamma`` from ``batchnorm_layer``; returns ``self``."""
        if not getattr(batchnorm_layer, "scale", False):
            raise ValueError(
                f"BatchNormalization {batchnorm_layer.name!r} has no gamma (scale=False). "
                f"Received: batchnorm={batchnorm_layer.name!r}"
            )
        self._layer = batchnorm_layer
        self.batchnorm = batchnorm_layer.name
        return self

    def get_config(self):
        return {"batchnorm": self.batchnorm}

    def unit_scores(self):
        """``|gamma|`` as a 1-D tensor."""
        if self._layer is None:
            raise ValueError(
                "The bn_gamma scorer is not bound to a BatchNormalization layer. Use "
                "ks.prune_channels(model, sparsity, scorer='bn_gamma'), or call "
                f"scorer.bind(batchnorm_layer). Received: batchnorm={self.batchnorm!r}"
            )
        return ops.abs(ops.convert_to_tensor(self._layer.gamma))

    def score(self, weight, gradient=None):
        gamma = self.unit_scores()
        shape = tuple(weight.shape)
        units = int(gamma.shape[0])
        if units == shape[-1]:
            per_unit = gamma
        elif len(shape) >= 2 and units == shape[-2] * shape[-1]:
            per_unit = ops.reshape(gamma, shape[-2:])  # depthwise (channel, multiplier)
        else:
            raise ValueError(
                f"BatchNormalization {self.batchnorm!r} has {units} channels, which do not "
                f"match the output units of a weight of shape {shape}."
            )
        entries = math.prod(shape) // units
        per_unit = ops.cast(per_unit, weight.dtype) / entries
        return ops.broadcast_to(per_unit, shape)
