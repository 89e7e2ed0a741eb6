"""Floor 3: callbacks that orchestrate sparsity during ``fit``.

:class:`Sparsity` owns the step, the mask updates and the logs;
``Pruning``, ``SET`` and ``RigL`` are its entries for one method each.
:class:`SparsityController` steers a penalty's coefficient to a target
sparsity. :class:`FlipRatio` logs the sign flips of binary weights (also
``ks.metrics.FlipRatio``).
"""

from keras_sparse.callbacks.controller import SparsityController
from keras_sparse.callbacks.dynamic_sparsity import SET
from keras_sparse.callbacks.flip_ratio import FlipRatio
from keras_sparse.callbacks.pruning import Pruning
from keras_sparse.callbacks.rigl import RigL
from keras_sparse.callbacks.sparsity import Sparsity

__all__ = ["FlipRatio", "Pruning", "RigL", "SET", "Sparsity", "SparsityController"]
