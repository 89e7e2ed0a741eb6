"""Floor 3: callbacks that orchestrate sparsity during ``fit``."""

from keras_sparse.callbacks.pruning import Pruning

__all__ = ["Pruning"]
