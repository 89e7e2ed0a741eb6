"""The scorer base class, the alias registry and the magnitude scorer."""

import numpy as np
from keras import ops

from keras_sparse import config as config_lib

#: alias -> class; every scorer module registers here.
REGISTRY = {}
_REGISTRY = REGISTRY

__all__ = ["Scorer", "MagnitudeScorer", "REGISTRY", "get", "serialize"]


class Scorer(config_lib.ConfigObject):
    """Base class for importance scores (higher = keep).

    Attributes:
        needs_gradient: whether :meth:`score` reads ``gradient``; the
            callback then collects a gradient for the layer (the dense
            gradient of the loss with respect to the effective weight, from
            the layer's gradient probe).
        accumulate: the callback sums :meth:`score` over every training
            step and ranks on the sum at each mask update (Taylor and
            movement pruning); otherwise it scores once, at the update.
        reset_after_update: with ``accumulate``, restart the sum after
            each mask update (``False`` sums over the whole run).
        rescale_survivors: after a mask update the surviving weights of
            each unit are scaled by ``sqrt(k_before / k_after)``, the ratio
            of the unit's fan-in before and after
            (:func:`keras_sparse.ops.drop_grow.variance_rescale`), which
            keeps the variance a dense initializer chose.
        traceable: :meth:`score` is pure ``keras.ops`` on its arguments
            (no host reads, no random draws), so a mask update may compute
            it inside a compiled function (read once at trace time, a host
            value would be frozen into the trace).
        data_independent: the scores do not depend on the values of the
            weights (only on which are non-zero) nor on data, so a mask made
            before training is as good as one made later: ``ks.prune``
            applies a step-0 mask of such a scorer at conversion (static
            sparse initialization).
        reads_batchnorm: the scores come from the BatchNormalization that
            follows the layer (network slimming): such a scorer has a
            ``bind(batchnorm_layer)`` method returning itself, and
            :func:`keras_sparse.prune_channels` finds that layer in the
            graph and scores each pruned layer with a bound copy.
    """

    needs_gradient = False
    accumulate = False
    reset_after_update = True
    rescale_survivors = False
    traceable = False
    data_independent = False
    reads_batchnorm = False

    def score(self, weight, gradient=None):
        """Per-entry importance, same shape as ``weight``."""
        raise NotImplementedError

    def adopt_generator(self, rng):
        """Draw random numbers from ``rng`` unless the scorer has its own
        seed.

        A sparsity method that builds its scorer from an alias or a config
        calls this, so the scorer's draws follow the method's seed. A scorer
        that draws nothing (the default) ignores it.

        Args:
            rng: a ``numpy.random.Generator``.

        Returns:
            None.

        Example:
        >>> scorer = ks.scorers.get("random")
        >>> scorer.adopt_generator(np.random.default_rng(0))
        """


@config_lib.register(_REGISTRY, "magnitude")
class MagnitudeScorer(Scorer):
    """``|w|``: magnitude pruning (Han et al. 2015; Zhu & Gupta 2017).

    Example:
    >>> ks.scorers.get("magnitude").score(np.array([-3.0, 1.0]))
    [3.0, 1.0]
    """

    traceable = True

    def score(self, weight, gradient=None):
        if isinstance(weight, np.ndarray):
            return np.abs(weight)
        return ops.abs(weight)


def get(identifier):
    """Resolve a scorer from an instance, an alias or a config dict."""
    if identifier is None:
        identifier = "magnitude"
    return config_lib.lookup(identifier, Scorer, _REGISTRY, "scorer")


serialize = config_lib.serialize


deserialize, register = config_lib.family_api(Scorer, _REGISTRY, "scorer")


__all__ += [n for n in ("get", "serialize", "deserialize", "register") if n not in __all__]
