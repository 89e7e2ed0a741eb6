"""Floor 3: callbacks that orchestrate sparsity during ``fit``.

:class:`Sparsity` owns the step, the mask updates and the logs;
``Pruning``, ``SET`` and ``RigL`` are its entries for one method each.
"""

from keras_sparse.callbacks.dynamic_sparsity import SET
from keras_sparse.callbacks.pruning import Pruning
from keras_sparse.callbacks.rigl import RigL
from keras_sparse.callbacks.sparsity import Sparsity

__all__ = ["Pruning", "RigL", "SET", "Sparsity"]
