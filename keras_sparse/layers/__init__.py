"""Floor 3: the sparse layer family."""

from keras_sparse.layers.base import Layout
from keras_sparse.layers.base import SparseMixin
from keras_sparse.layers.base import is_sparse_layer
from keras_sparse.layers.sparse_layers import SPARSE_CLASS_FOR
from keras_sparse.layers.sparse_layers import SparseConv1D
from keras_sparse.layers.sparse_layers import SparseConv1DTranspose
from keras_sparse.layers.sparse_layers import SparseConv2D
from keras_sparse.layers.sparse_layers import SparseConv2DTranspose
from keras_sparse.layers.sparse_layers import SparseConv3D
from keras_sparse.layers.sparse_layers import SparseConv3DTranspose
from keras_sparse.layers.sparse_layers import SparseDense
from keras_sparse.layers.sparse_layers import SparseDepthwiseConv1D
from keras_sparse.layers.sparse_layers import SparseDepthwiseConv2D
from keras_sparse.layers.sparse_layers import SparseEinsumDense
from keras_sparse.layers.sparse_layers import SparseEmbedding
from keras_sparse.layers.sparse_layers import SparseSeparableConv1D
from keras_sparse.layers.sparse_layers import SparseSeparableConv2D
from keras_sparse.layers.sparse_layers import sparse_class_for

__all__ = [
    "Layout",
    "SPARSE_CLASS_FOR",
    "SparseConv1D",
    "SparseConv1DTranspose",
    "SparseConv2D",
    "SparseConv2DTranspose",
    "SparseConv3D",
    "SparseConv3DTranspose",
    "SparseDense",
    "SparseDepthwiseConv1D",
    "SparseDepthwiseConv2D",
    "SparseEinsumDense",
    "SparseEmbedding",
    "SparseMixin",
    "SparseSeparableConv1D",
    "SparseSeparableConv2D",
    "is_sparse_layer",
    "sparse_class_for",
]
from keras_sparse.layers.column_sampled import ColumnSampledDense  # noqa: E402
from keras_sparse.layers.head_masked_attention import HeadMaskedMultiHeadAttention  # noqa: E402
from keras_sparse.layers.low_rank import LowRankConv2D  # noqa: E402
from keras_sparse.layers.low_rank import LowRankDense  # noqa: E402

__all__ += ["ColumnSampledDense", "HeadMaskedMultiHeadAttention", "LowRankConv2D", "LowRankDense"]
from keras_sparse.layers.activation_sparsity import ActivitySparsity  # noqa: E402
from keras_sparse.layers.activation_sparsity import KWinnersTakeAll  # noqa: E402
from keras_sparse.layers.activation_sparsity import TopKActivation  # noqa: E402
from keras_sparse.layers.activation_sparsity import get_sparse_activation  # noqa: E402

__all__ += ["ActivitySparsity", "KWinnersTakeAll", "TopKActivation", "get_sparse_activation"]
