"""Floor 1: pure tensor math (``keras.ops`` only, no variables, no layers)."""

from keras_sparse.ops.allocation import allocate_removals
from keras_sparse.ops.allocation import lamp_removals
from keras_sparse.ops.allocation import lamp_scores
from keras_sparse.ops.activations import top_k_activation_mask
from keras_sparse.ops.formulas import erk_densities
from keras_sparse.ops.formulas import polynomial_sparsity
from keras_sparse.ops.masks import block_mask
from keras_sparse.ops.masks import channel_mask
from keras_sparse.ops.masks import check_sparsity
from keras_sparse.ops.masks import global_topk_masks
from keras_sparse.ops.masks import mask_sparsity
from keras_sparse.ops.masks import nm_mask
from keras_sparse.ops.masks import topk_mask
from keras_sparse.ops.prox import group_soft_threshold
from keras_sparse.ops.prox import soft_threshold
from keras_sparse.ops.prox import zero_group_count

__all__ = [
    "allocate_removals",
    "block_mask",
    "channel_mask",
    "check_sparsity",
    "erk_densities",
    "global_topk_masks",
    "group_soft_threshold",
    "lamp_removals",
    "lamp_scores",
    "mask_sparsity",
    "nm_mask",
    "polynomial_sparsity",
    "soft_threshold",
    "top_k_activation_mask",
    "topk_mask",
    "zero_group_count",
]
