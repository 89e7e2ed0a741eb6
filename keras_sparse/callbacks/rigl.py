"""``RigL``: SET's drop-and-grow with regrowth where the dense gradient is
largest (the algorithm is :class:`keras_sparse.methods.RigL`)."""

import keras

from keras_sparse import methods as methods_lib
from keras_sparse.callbacks.dynamic_sparsity import SET
from keras_sparse.config import PACKAGE

__all__ = ["RigL"]


@keras.saving.register_keras_serializable(package=PACKAGE)
class RigL(SET):
    """Rigged Lottery: drop the smallest weights, regrow where the dense
    gradient is largest, at constant sparsity.

    ``ks.callbacks.RigL(...)`` is ``ks.callbacks.Sparsity(method=ks.methods.RigL(...))``.
    Identical to :class:`SET` except for regrowth: the inactive entries with
    the largest ``|dL/dw|`` are grown, the dense gradient of the last
    training step with respect to the effective weight (pruned entries
    included), read from the layers' gradient probes. Create them when
    converting: ``ks.prune(model, 0.9, distribution="erk",
    method=ks.methods.RigL(...))`` (then ``fit`` with
    ``ks.callbacks.Sparsity()`` or this callback); without them, they are
    added when training begins (rebuilding the optimizer, with a warning)
    and removed when it ends.

    Zero-gradient ties are broken at random (see
    :class:`keras_sparse.methods.RigL`; the reference code breaks them by
    lower index), and the optimizer step is taken on update steps too (the
    references skip it).

    Defaults follow the paper: ``update_freq=100``, ``drop_fraction=0.3``
    with cosine decay, updates stopping at 75 % of training, ERK
    distribution (pass ``distribution="erk"`` to ``ks.prune``), random
    initial mask, regrown weights and their optimizer moments set to 0.

    Reference: U. Evci, T. Gale, J. Menick, P. S. Castro, E. Elsen,
    "Rigging the Lottery: Making All Tickets Winners", ICML 2020.

    Args: as :class:`SET`.

    Example:
    >>> model = ks.prune(model, 0.9, distribution="erk", method="rigl")
    >>> model.compile("adam", "sparse_categorical_crossentropy")
    >>> model.fit(x, y, epochs=20, callbacks=[
    ...     ks.callbacks.RigL(update_freq=100, drop_fraction=0.3)])
    """

    method_class = methods_lib.RigL
