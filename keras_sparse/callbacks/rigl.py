"""RigL: SET's drop-and-grow with regrowth where the dense gradient is
largest."""

import keras
import numpy as np
from keras import ops

from keras_sparse.callbacks.dynamic_sparsity import SET
from keras_sparse.config import PACKAGE

__all__ = ["RigL"]


@keras.saving.register_keras_serializable(package=PACKAGE)
class RigL(SET):
    """Rigged Lottery: drop the smallest weights, regrow where the dense
    gradient is largest, at constant sparsity.

    Identical to :class:`SET` except for regrowth: the inactive entries
    with the largest ``|∂L/∂w|`` are grown, where the gradient is the dense
    gradient of the last training step's batch with respect to the effective
    weight (pruned entries included). It comes from a gradient probe
    (``SparseMixin.enable_gradient_probe``) added to the layers while
    updates remain and removed when training ends; adding it rebuilds the
    optimizer with its state and remakes the train function. Put ``RigL``
    before ``BackupAndRestore`` in the callback list (the checkpoint
    contains the probes).

    Defaults follow the paper: ``update_freq=100``, ``drop_fraction=0.3``
    with cosine decay, updates stopping at 75 % of training, ERK
    distribution (pass ``distribution="erk"`` to ``ks.prune``), random
    initial mask, regrown weights and their optimizer moments set to 0.

    Reference: U. Evci, T. Gale, J. Menick, P. S. Castro, E. Elsen,
    "Rigging the Lottery: Making All Tickets Winners", ICML 2020.

    Args: as :class:`SET`.

    Example:
    >>> model = ks.prune(model, 0.9, distribution="erk")
    >>> model.compile("adam", "sparse_categorical_crossentropy")
    >>> model.fit(x, y, epochs=20, callbacks=[
    ...     ks.callbacks.RigL(update_freq=100, drop_fraction=0.3)])
    """

    def layers_needing_gradient(self):
        if self.current_step() >= self._end_step:
            return []
        return self.managed_layers()

    def grow_scores(self, layer, name, step, key):
        """RigL: ``|∂L/∂w|`` of the last step.

        Entries whose gradient is exactly 0 (inputs that are always 0, units
        that did not fire on the batch) are tied; they get distinct negative
        scores drawn from the ``(seed, step, layer)`` generator, so when more
        weights must grow than have a non-zero gradient, the rest are chosen
        at random, as in RigL's reference code, instead of in index order
        (which would always fill the first rows).
        """
        scores = np.abs(np.asarray(ops.convert_to_numpy(layer.last_gradient(name))))
        if np.count_nonzero(scores) < scores.size:
            zero = np.flatnonzero(scores == 0)
            rng = np.random.default_rng([self._seed, int(step), *key])
            scores.flat[zero] = -1.0 - rng.random(zero.size, dtype=np.float32)
        return scores
