"""Gradient-based scorers: saliency (SNIP), first-order Taylor, movement.

Each reads ``gradient``, the dense gradient of the loss with respect to the
*effective* weight (pruned entries included). Inside ``fit`` the
``ks.callbacks.Pruning`` callback gets it from the layer's gradient probe
(created when such a scorer is in use); at initialization
``ks.prune_at_init`` computes it on a batch.
"""

from keras import ops

from keras_sparse import config as config_lib
from keras_sparse.scorers.base import REGISTRY
from keras_sparse.scorers.base import Scorer

__all__ = ["SaliencyScorer", "TaylorScorer", "MovementScorer"]


def _need_gradient(scorer, gradient):
    if gradient is None:
        raise ValueError(
            f"{type(scorer).__name__} needs the gradient of the loss with respect "
            "to the weight. Received: gradient=None"
        )
    return ops.convert_to_tensor(gradient)


def _product(weight, gradient):
    weight = ops.convert_to_tensor(weight)
    return ops.multiply(ops.cast(gradient, weight.dtype), weight)


@config_lib.register(REGISTRY, "saliency", "snip")
class SaliencyScorer(Scorer):
    """Connection saliency ``|g ⊙ w|`` on the current gradient.

    .. math::
        s_{ij} = \\left|\\frac{\\partial L}{\\partial w_{ij}}\\, w_{ij}\\right|

    the first-order estimate of the loss change when ``w_ij`` is removed.
    Used once at initialization this is SNIP.

    Reference: N. Lee, T. Ajanthan, P. Torr, "SNIP: Single-shot Network
    Pruning based on Connection Sensitivity", ICLR 2019.

    Example:
    >>> ks.scorers.get("snip").score(np.array([2., -1.]), np.array([0.5, 3.]))
    [1.0, 3.0]
    """

    needs_gradient = True
    traceable = True

    def score(self, weight, gradient=None):
        return ops.abs(_product(weight, _need_gradient(self, gradient)))


@config_lib.register(REGISTRY, "taylor")
class TaylorScorer(Scorer):
    """First-order Taylor importance accumulated between mask updates.

    .. math::
        s_{ij} = \\sum_{t \\in (t_{k-1}, t_k]} \\left| g^{(t)}_{ij} w^{(t)}_{ij} \\right|

    The ``Pruning`` callback adds :meth:`score` after every training step
    and ranks on the sum at the next update, then restarts the sum.

    Reference: P. Molchanov et al., "Importance Estimation for Neural
    Network Pruning", CVPR 2019 (first-order Taylor criterion); also
    Molchanov et al., ICLR 2017.

    Example:
    >>> ks.prune(model, 0.8, schedule=ks.schedules.PolynomialDecay(0, 0.8, 0, 1000),
    ...          scorer="taylor")
    """

    needs_gradient = True
    accumulate = True
    reset_after_update = True

    def score(self, weight, gradient=None):
        return ops.abs(_product(weight, _need_gradient(self, gradient)))


@config_lib.register(REGISTRY, "movement")
class MovementScorer(Scorer):
    """Movement pruning: keep the weights moving away from zero.

    .. math::
        s_{ij} = -\\sum_{t} g^{(t)}_{ij}\\, w^{(t)}_{ij}

    summed over the whole run (not restarted at updates): a weight whose
    gradient step pushes it away from zero gains score. Entries already
    pruned are not revived by a later update.

    Reference: V. Sanh, T. Wolf, A. Rush, "Movement Pruning: Adaptive
    Sparsity by Fine-Tuning", NeurIPS 2020.

    Example:
    >>> ks.prune(model, 0.9, schedule=ks.schedules.PolynomialDecay(0, 0.9, 0, 1000),
    ...          scorer="movement")
    """

    needs_gradient = True
    accumulate = True
    reset_after_update = False

    def score(self, weight, gradient=None):
        return ops.negative(_product(weight, _need_gradient(self, gradient)))
