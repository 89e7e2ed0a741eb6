"""Per-layer-type rules of :func:`keras_sparse.shrink`.

Every node of the flat graph gets one rule. A rule answers four questions
about its layer, channel by channel (the last axis of every tensor):

1. ``consts``: which output channels are *constant* (the same value at every
   position of every example, e.g. a unit whose kernel column is all zero
   outputs ``act(bias)``), and their value, given which input channels are;
2. ``links``: which channels must be kept or removed together (a
   BatchNorm's channel ``c`` with its input's channel ``c``, every input of a
   residual ``Add``, a Flatten's features with their channel...);
3. ``pins`` and ``demand``: which channels must be kept (a layer the rules
   cannot shrink keeps all its inputs and outputs; a kept unit keeps every
   non-constant input it reads with a non-zero weight);
4. ``rebuild``: build the smaller layer for the kept channels, absorbing
   what the removed ones contributed.

How removed channels stay exact: a removed channel is either never read
with a non-zero weight, or constant. A constant channel's contribution is
folded into the next layer's bias (``Dense``, ``valid`` or ``1x1``
convolutions: exact). A ``same``-padded convolution sees zero padding at the
borders, so a constant input is *not* constant after it; there one removed
constant channel of the tensor, the *carrier*, is kept, and the other
removed constant channels are folded into the carrier's kernel slice scaled
by ``value / carrier value`` (exact, since all are uniform images).
Removing a whole input of a residual ``Add`` (a pruned branch) leaves a
per-channel *offset*; offsets travel through linear layers (pooling,
flatten, add, concatenate) and are absorbed by the next layer with a bias
(Dense, convolution, BatchNorm's mean), folded into the producer of the
other ``Add`` input when that is a linear layer with a bias, or added back by
a ``keras.layers.Rescaling(1.0, offset=...)`` layer before anything
non-linear.

The rules live in :mod:`.rules_base` (helpers, :class:`Rule`,
:class:`BarrierRule`), :mod:`.rules_kernel` (Dense, convolutions, low-rank
and column-sampled layers), :mod:`.rules_depthwise` (depthwise and separable
convolutions), :mod:`.rules_channel` (channelwise layers, Flatten, merges)
and :mod:`.rules_sequence` (Embedding, MultiHeadAttention); this module
picks the rule of each node (:func:`rule_for`).
"""

import math

import keras
import numpy as np

from keras_sparse.layers.base import SparseMixin
from keras_sparse.shrink.rules_base import ELEMENTWISE_ACTIVATIONS
from keras_sparse.shrink.rules_base import BarrierRule
from keras_sparse.shrink.rules_base import Rule  # noqa: F401
from keras_sparse.shrink.rules_base import _channels_last
from keras_sparse.shrink.rules_base import _has_lora_or_quantization
from keras_sparse.shrink.rules_base import _is_elementwise
from keras_sparse.shrink.rules_base import _unsupported_sparse
from keras_sparse.shrink.rules_base import activation_name  # noqa: F401
from keras_sparse.shrink.rules_base import plain_state  # noqa: F401
from keras_sparse.shrink.rules_channel import AddRule
from keras_sparse.shrink.rules_channel import ChannelwiseRule
from keras_sparse.shrink.rules_channel import ConcatenateRule
from keras_sparse.shrink.rules_channel import FlattenRule
from keras_sparse.shrink.rules_channel import MergeRule
from keras_sparse.shrink.rules_depthwise import DepthwiseRule
from keras_sparse.shrink.rules_depthwise import SeparableRule
from keras_sparse.shrink.rules_kernel import KernelRule
from keras_sparse.shrink.rules_kernel import _kernel_adapter
from keras_sparse.shrink.rules_sequence import AttentionRule
from keras_sparse.shrink.rules_sequence import EmbeddingRule

__all__ = ["rule_for", "ELEMENTWISE_ACTIVATIONS"]


# ------------------------------------------------------------ dispatching
_SHIFT_TYPES = tuple(
    getattr(keras.layers, name)
    for name in (
        "Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D", "GaussianNoise",
        "GaussianDropout", "AlphaDropout", "ActivityRegularization", "Identity",
        "MaxPooling1D", "MaxPooling2D", "MaxPooling3D", "AveragePooling1D", "AveragePooling2D",
        "AveragePooling3D", "GlobalAveragePooling1D", "GlobalAveragePooling2D",
        "GlobalAveragePooling3D", "GlobalMaxPooling1D", "GlobalMaxPooling2D", "GlobalMaxPooling3D",
        "UpSampling1D", "UpSampling2D", "UpSampling3D", "Cropping1D", "Cropping2D", "Cropping3D",
        "RepeatVector",
    )
    if hasattr(keras.layers, name)
)
_PAD_TYPES = (keras.layers.ZeroPadding1D, keras.layers.ZeroPadding2D, keras.layers.ZeroPadding3D)
_ACTIVATION_LAYERS = (keras.layers.ReLU, keras.layers.LeakyReLU, keras.layers.ELU)
_MERGES = {
    keras.layers.Subtract: "Subtract",
    keras.layers.Average: "Average",
    keras.layers.Multiply: "Multiply",
    keras.layers.Maximum: "Maximum",
    keras.layers.Minimum: "Minimum",
}


def _same_channels(graph, node):
    keys = node.inputs + node.outputs
    channels = [graph.tensors[k].channels for k in keys]
    return None not in channels and len(set(channels)) == 1


def _same_shapes(graph, node):
    shapes = [graph.tensors[k].shape[1:] for k in node.inputs + node.outputs]
    return len(set(shapes)) == 1


def rule_for(node, graph):
    """The rule of ``node`` (a :class:`BarrierRule` when nothing fits)."""
    layer = node.layer
    tensors = [graph.tensors[k] for k in node.inputs + node.outputs]
    if not isinstance(layer, keras.layers.Layer):
        return BarrierRule(node, graph, "operation")
    if _unsupported_sparse(layer) or _has_lora_or_quantization(layer):
        return BarrierRule(node, graph, "quantized input")
    if any(t.channels is None for t in tensors) and not isinstance(
        layer, (keras.layers.Embedding, keras.layers.MultiHeadAttention)
    ):
        return BarrierRule(node, graph, "no channel axis")
    single = len(node.inputs) == 1 and len(node.outputs) == 1
    kind = type(layer)
    if isinstance(layer, keras.layers.MultiHeadAttention) and type(layer).__name__ in (
        "MultiHeadAttention", "HeadMaskedMultiHeadAttention"
    ):
        if graph.tensors[node.outputs[0]].channels is None:
            return BarrierRule(node, graph, "no channel axis")
        return AttentionRule(node, graph)
    if single:
        adapter = _kernel_adapter(layer)
        if adapter is not None:
            return KernelRule(node, graph, adapter)
        plain = layer._keras_parent if isinstance(layer, SparseMixin) else kind
        if plain in (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D) and _channels_last(layer):
            return DepthwiseRule(node, graph)
        if plain in (keras.layers.SeparableConv1D, keras.layers.SeparableConv2D) and _channels_last(layer):
            return SeparableRule(node, graph)
        if plain is keras.layers.Embedding:
            return EmbeddingRule(node, graph)
    if single and _same_channels(graph, node):
        if kind in _SHIFT_TYPES and _channels_last(layer):
            return ChannelwiseRule(node, graph, "shift")
        if kind in _PAD_TYPES and _channels_last(layer):
            return ChannelwiseRule(node, graph, "pad")
        if kind in _ACTIVATION_LAYERS or (
            kind is keras.layers.Activation and _is_elementwise(layer.activation)
        ):
            fn = layer.activation if kind is keras.layers.Activation else layer
            return ChannelwiseRule(node, graph, "nonlinear", fn)
        if kind is keras.layers.BatchNormalization and layer.axis in (-1, len(tensors[0].shape) - 1):
            return ChannelwiseRule(node, graph, "batchnorm")
        if kind is keras.layers.Rescaling and np.ndim(layer.scale) <= 1 and np.ndim(layer.offset) <= 1:
            return ChannelwiseRule(node, graph, "rescaling")
        if kind is keras.layers.Reshape and tensors[0].shape[-1] == tensors[1].shape[-1]:
            return ChannelwiseRule(node, graph, "shift")
    if single and kind in (keras.layers.Flatten, keras.layers.Reshape) and _channels_last(layer):
        in_t, out_t = tensors
        if len(out_t.shape) == 2 and out_t.channels % in_t.channels == 0 and (
            math.prod(in_t.shape[1:]) == out_t.channels
        ):
            return FlattenRule(node, graph)
    if kind is keras.layers.Concatenate and len(node.outputs) == 1:
        rank = len(tensors[0].shape)
        if layer.axis in (-1, rank - 1):
            return ConcatenateRule(node, graph)
    if kind is keras.layers.Add and len(node.outputs) == 1 and _same_shapes(graph, node):
        return AddRule(node, graph)
    if kind in _MERGES and len(node.outputs) == 1 and _same_shapes(graph, node):
        return MergeRule(node, graph, _MERGES[kind])
    return BarrierRule(node, graph, "unsupported layer")
