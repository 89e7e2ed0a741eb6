"""Floor 3: callbacks that orchestrate sparsity during ``fit``."""

from keras_sparse.callbacks.dynamic_sparsity import SET
from keras_sparse.callbacks.rigl import RigL
from keras_sparse.callbacks.pruning import Pruning

__all__ = ["Pruning", "RigL", "SET"]
