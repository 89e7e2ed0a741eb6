"""Floor 4: turn structured sparsity into a physically smaller model.

:func:`shrink` rebuilds a pruned model without its removed units, filters,
channels and attention heads (graph analysis in :mod:`.graph`, one rule per
layer type in :mod:`.rules`, the driver in :mod:`.core`).
"""

from keras_sparse.shrink.core import ShrinkInfo
from keras_sparse.shrink.core import shrink
from keras_sparse.shrink.structured import head_scores
from keras_sparse.shrink.structured import prune_channels
from keras_sparse.shrink.structured import prune_heads

__all__ = ["ShrinkInfo", "head_scores", "prune_channels", "prune_heads", "shrink"]
