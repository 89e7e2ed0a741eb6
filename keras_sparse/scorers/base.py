"""The scorer base class, the alias registry and the magnitude scorer."""

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
            callback then collects a gradient for the layer.
    """

    needs_gradient = False

    def score(self, weight, gradient=None):
        """Per-entry importance, same shape as ``weight``."""
        raise NotImplementedError


@config_lib.register(_REGISTRY, "magnitude")
class MagnitudeScorer(Scorer):
    """``|w|``: magnitude pruning (Han et al. 2015; Zhu & Gupta 2017).

    Example:
    >>> ks.scorers.get("magnitude").score(np.array([-3.0, 1.0]))
    [3.0, 1.0]
    """

    def score(self, weight, gradient=None):
        return ops.abs(weight)


def get(identifier):
    """Resolve a scorer from an instance, an alias or a config dict."""
    if identifier is None:
        identifier = "magnitude"
    return config_lib.lookup(identifier, Scorer, _REGISTRY, "scorer")


serialize = config_lib.serialize
