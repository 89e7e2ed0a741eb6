"""``Pruning``: the gradual-pruning entry of the :class:`Sparsity` callback."""

import keras

from keras_sparse.callbacks.sparsity import Sparsity
from keras_sparse.config import PACKAGE
from keras_sparse.ops.masks import global_topk_masks

__all__ = ["Pruning", "prune_globally"]


@keras.saving.register_keras_serializable(package=PACKAGE)
class Pruning(Sparsity):
    """Apply the schedule, pattern and scorer of every sparse layer during
    ``fit`` (weight pruning; not trial pruning).

    The :class:`~keras_sparse.callbacks.Sparsity` callback running each
    layer's own method (the one given to ``ks.prune(..., method=...)``, by
    default gradual pruning with the layer's schedule, pattern and scorer:
    :class:`~keras_sparse.methods.Gradual`); see it for the step (optimizer
    updates applied, so ``BackupAndRestore`` resumes with the same masks),
    the logs (``"sparsity"``, ``"<layer>/sparsity"``) and the checks.
    Masks change only on update steps, before the batch is trained. Layers
    created with ``global_pruning=True`` share one magnitude threshold; their
    sparsity follows the first such layer's schedule. Accumulating scorers
    (Taylor, movement) are summed after every step until the schedule's
    last update; the sums live in the callback, so a resumed run restarts
    them. A scorer with ``rescale_survivors`` (random) rescales the kept
    weights of each unit when a mask is applied.

    Args:
        log_per_layer: add per-layer sparsity to the epoch logs.

    Example:
    >>> model = ks.prune(model, 0.9)
    >>> model.fit(x, y, epochs=5, callbacks=[ks.callbacks.Pruning()])
    """

    def __init__(self, log_per_layer=True):
        super().__init__(method=None, log_per_layer=log_per_layer)

    def get_config(self):
        return {"log_per_layer": self.log_per_layer}


def prune_globally(layers, sparsity):
    """Apply one magnitude threshold across every masked weight of ``layers``
    (scorers that need no gradient)."""
    entries = [(layer, name) for layer in layers for name in layer.sparse_weight_names]
    scores = [layer.score_weight(name) for layer, name in entries]
    for (layer, name), mask in zip(entries, global_topk_masks(scores, sparsity)):
        layer.write_mask(name, mask)
