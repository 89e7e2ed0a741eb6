"""The sparse layer family: each class is :class:`SparseMixin` plus its Keras
parent, with the parent's full signature plus ``schedule``, ``pattern``,
``scorer`` and ``global_pruning``.

Layouts name the input axes (contracted with the layer input, used by N:M)
and the output axes (one index per output unit, used by channel pruning).
"""

import keras

from keras_sparse.config import PACKAGE
from keras_sparse.layers.base import Layout
from keras_sparse.layers.base import SparseMixin

_register = keras.saving.register_keras_serializable(package=PACKAGE)

_IN_OUT = Layout((-2,), (-1,))  # Dense (in, out), Conv (..., in, out)
_OUT_IN = Layout((-1,), (-2,))  # ConvTranspose (..., out, in)
_DEPTHWISE = Layout((), (-2, -1))  # (..., in_channels, depth_multiplier)

#: Keras class -> sparse class, for conversion. Filled below.
SPARSE_CLASS_FOR = {}


def _family(keras_cls):
    def decorator(cls):
        cls = _register(cls)
        SPARSE_CLASS_FOR[keras_cls] = cls
        return cls

    return decorator


@_family(keras.layers.Dense)
class SparseDense(SparseMixin, keras.layers.Dense):
    """``keras.layers.Dense`` with a masked kernel.

    Example:
    >>> layer = ks.layers.SparseDense(64, schedule=ks.schedules.ConstantSparsity(0.9))
    """

    sparse_weight_layouts = {"kernel": _IN_OUT}


@_family(keras.layers.Conv1D)
class SparseConv1D(SparseMixin, keras.layers.Conv1D):
    """``keras.layers.Conv1D`` with a masked kernel.

    Example:
    >>> ks.layers.SparseConv1D(16, 3, schedule=0.5)
    """

    sparse_weight_layouts = {"kernel": _IN_OUT}


@_family(keras.layers.Conv2D)
class SparseConv2D(SparseMixin, keras.layers.Conv2D):
    """``keras.layers.Conv2D`` with a masked kernel.

    Example:
    >>> ks.layers.SparseConv2D(32, 3, schedule=0.5, pattern="channel")
    """

    sparse_weight_layouts = {"kernel": _IN_OUT}


@_family(keras.layers.Conv3D)
class SparseConv3D(SparseMixin, keras.layers.Conv3D):
    """``keras.layers.Conv3D`` with a masked kernel.

    Example:
    >>> ks.layers.SparseConv3D(8, 3, schedule=0.5)
    """

    sparse_weight_layouts = {"kernel": _IN_OUT}


@_family(keras.layers.Conv1DTranspose)
class SparseConv1DTranspose(SparseMixin, keras.layers.Conv1DTranspose):
    """``keras.layers.Conv1DTranspose`` with a masked kernel.

    Its kernel is ``(k, filters, in_channels)``: the input axis is last.

    Example:
    >>> ks.layers.SparseConv1DTranspose(8, 3, schedule=0.5)
    """

    sparse_weight_layouts = {"kernel": _OUT_IN}


@_family(keras.layers.Conv2DTranspose)
class SparseConv2DTranspose(SparseMixin, keras.layers.Conv2DTranspose):
    """``keras.layers.Conv2DTranspose`` with a masked kernel.

    Its kernel is ``(kh, kw, filters, in_channels)``: the input axis is last.

    Example:
    >>> ks.layers.SparseConv2DTranspose(8, 3, schedule=0.5)
    """

    sparse_weight_layouts = {"kernel": _OUT_IN}


@_family(keras.layers.Conv3DTranspose)
class SparseConv3DTranspose(SparseMixin, keras.layers.Conv3DTranspose):
    """``keras.layers.Conv3DTranspose`` with a masked kernel.

    Example:
    >>> ks.layers.SparseConv3DTranspose(4, 3, schedule=0.5)
    """

    sparse_weight_layouts = {"kernel": _OUT_IN}


@_family(keras.layers.DepthwiseConv1D)
class SparseDepthwiseConv1D(SparseMixin, keras.layers.DepthwiseConv1D):
    """``keras.layers.DepthwiseConv1D`` with a masked depthwise kernel.

    Example:
    >>> ks.layers.SparseDepthwiseConv1D(3, schedule=0.5)
    """

    sparse_weight_layouts = {"kernel": _DEPTHWISE}


@_family(keras.layers.DepthwiseConv2D)
class SparseDepthwiseConv2D(SparseMixin, keras.layers.DepthwiseConv2D):
    """``keras.layers.DepthwiseConv2D`` with a masked depthwise kernel.

    Its kernel is ``(kh, kw, channels, depth_multiplier)``; output units for
    channel pruning are the ``(channel, multiplier)`` pairs. N:M is not
    defined for it (there is no input-channel reduction).

    Example:
    >>> ks.layers.SparseDepthwiseConv2D(3, schedule=0.5)
    """

    sparse_weight_layouts = {"kernel": _DEPTHWISE}


@_family(keras.layers.SeparableConv1D)
class SparseSeparableConv1D(SparseMixin, keras.layers.SeparableConv1D):
    """``keras.layers.SeparableConv1D`` with both kernels masked.

    Example:
    >>> ks.layers.SparseSeparableConv1D(16, 3, schedule=0.5)
    """

    sparse_weight_layouts = {"depthwise_kernel": _DEPTHWISE, "pointwise_kernel": _IN_OUT}


@_family(keras.layers.SeparableConv2D)
class SparseSeparableConv2D(SparseMixin, keras.layers.SeparableConv2D):
    """``keras.layers.SeparableConv2D`` with both kernels masked.

    Example:
    >>> ks.layers.SparseSeparableConv2D(16, 3, schedule=0.5)
    """

    sparse_weight_layouts = {"depthwise_kernel": _DEPTHWISE, "pointwise_kernel": _IN_OUT}


def _einsum_layout(equation):
    left, _, out = equation.replace("...", "").partition("->")
    inp, _, kernel = left.partition(",")
    inputs = tuple(i for i, c in enumerate(kernel) if c in inp and c not in out)
    outputs = tuple(i for i, c in enumerate(kernel) if c in out)
    return Layout(inputs, outputs)


@_family(keras.layers.EinsumDense)
class SparseEinsumDense(SparseMixin, keras.layers.EinsumDense):
    """``keras.layers.EinsumDense`` with a masked kernel.

    The layout is read from the equation: kernel axes shared with the input
    (and not the output) are input axes; kernel axes in the output are
    output units.

    Example:
    >>> ks.layers.SparseEinsumDense("ab,bc->ac", output_shape=64, schedule=0.5)
    """

    sparse_weight_layouts = {"kernel": _IN_OUT}

    def weight_layout(self, name):
        return _einsum_layout(self.equation)


@_family(keras.layers.Embedding)
class SparseEmbedding(SparseMixin, keras.layers.Embedding):
    """``keras.layers.Embedding`` with a masked embedding table.

    The table is ``(input_dim, output_dim)``; channel pruning removes
    embedding dimensions.

    Example:
    >>> ks.layers.SparseEmbedding(1000, 64, schedule=0.8)
    """

    sparse_weight_layouts = {"embeddings": Layout((0,), (-1,))}
