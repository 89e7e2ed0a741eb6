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
registers them by Keras class (:func:`register_rule`) and picks the rule of
each node through its class's MRO (:func:`rule_for`).
"""

import math

import keras
import numpy as np

from keras_sparse.layers.base import SparseMixin
from keras_sparse.layers.column_sampled import ColumnSampledDense
from keras_sparse.layers.head_masked_attention import HeadMaskedMultiHeadAttention
from keras_sparse.layers.low_rank import LowRankConv2D
from keras_sparse.layers.low_rank import LowRankDense
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
from keras_sparse.shrink.rules_kernel import column_sampled_adapter
from keras_sparse.shrink.rules_kernel import low_rank_adapter
from keras_sparse.shrink.rules_sequence import AttentionRule
from keras_sparse.shrink.rules_sequence import EmbeddingRule

__all__ = ["rule_for", "register_rule", "registered_rule", "ELEMENTWISE_ACTIVATIONS"]


# ------------------------------------------------------------ registry
#: Keras layer class -> (factory, needs_channels). Resolved through the MRO.
_RULES = {}


def register_rule(layer_class, needs_channels=True, computed_by=("call",)):
    """Register the rule of ``layer_class`` (a decorator of the factory).

    ``factory(node, graph, tensors)`` returns a :class:`Rule` for a node of a
    ``layer_class`` layer, or ``None`` when this instance does not fit the
    rule (the node then gets a :class:`BarrierRule`). A layer gets the rule of
    the first class of its MRO with one, so a subclass of a registered class
    gets its parent's rule, unless a class of its own between them overrides
    one of the methods in ``computed_by`` (its computation is then unknown
    and the layer is kept whole).

    Args:
        layer_class: a ``keras.layers.Layer`` subclass.
        needs_channels: the rule needs a channel axis on every input and
            output (otherwise the node is a barrier).
        computed_by: the methods that make the layer's output; a subclass
            that overrides one of them does not get the rule.

    Returns:
        A decorator that registers ``factory`` and returns it.

    Example:
    >>> @register_rule(keras.layers.Identity)
    ... def _identity(node, graph, tensors):
    ...     return ChannelwiseRule(node, graph, "shift")
    """
    if not (isinstance(layer_class, type) and issubclass(layer_class, keras.layers.Layer)):
        raise TypeError(
            "A shrink rule is registered for a keras.layers.Layer subclass. "
            f"Received: layer_class={layer_class!r}"
        )

    def decorator(factory):
        _RULES[layer_class] = (factory, needs_channels, tuple(computed_by))
        return factory

    return decorator


def registered_rule(layer):
    """``(class, factory, needs_channels)`` of the first class of
    ``type(layer).__mro__`` with a rule, or ``None`` (also when a class
    before it overrides a method that computes the output). A sparse
    class's ``call`` runs its parent's on the effective weights, so it
    keeps the parent's computation."""
    mro = type(layer).__mro__
    for index, cls in enumerate(mro):
        entry = _RULES.get(cls)
        if entry is None:
            continue
        factory, needs_channels, computed_by = entry
        for below in mro[:index]:
            if issubclass(below, SparseMixin):
                continue
            if any(name in vars(below) for name in computed_by):
                return None
        return cls, factory, needs_channels
    return None


# ------------------------------------------------------------ the rules
def _single(node):
    return len(node.inputs) == 1 and len(node.outputs) == 1


def _same_channels(graph, node):
    keys = node.inputs + node.outputs
    channels = [graph.tensors[k].channels for k in keys]
    return None not in channels and len(set(channels)) == 1


def _same_shapes(graph, node):
    shapes = [graph.tensors[k].shape[1:] for k in node.inputs + node.outputs]
    return len(set(shapes)) == 1


def _channelwise(node, graph):
    return _single(node) and _same_channels(graph, node)


def _attention(node, graph, tensors):
    if graph.tensors[node.outputs[0]].channels is None:
        return BarrierRule(node, graph, "no channel axis")
    return AttentionRule(node, graph)


# The head-masked layer computes its attention itself (it masks the heads);
# the attention rule knows it. Other subclasses that do are kept whole.
_ATTENTION_COMPUTED_BY = ("call", "_compute_attention", "_masked_softmax")
for _cls in (keras.layers.MultiHeadAttention, HeadMaskedMultiHeadAttention):
    register_rule(_cls, needs_channels=False, computed_by=_ATTENTION_COMPUTED_BY)(_attention)


def _kernel(adapter_of):
    def factory(node, graph, tensors):
        if not _single(node):
            return None
        adapter = adapter_of(node.layer)
        return None if adapter is None else KernelRule(node, graph, adapter)

    return factory


for _cls in (keras.layers.Dense, keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D):
    register_rule(_cls)(_kernel(_kernel_adapter))
for _cls in (LowRankDense, LowRankConv2D):
    register_rule(_cls)(_kernel(low_rank_adapter))
register_rule(ColumnSampledDense)(_kernel(column_sampled_adapter))


def _depthwise(node, graph, tensors):
    if _single(node) and _channels_last(node.layer):
        return DepthwiseRule(node, graph)
    return None


def _separable(node, graph, tensors):
    if _single(node) and _channels_last(node.layer):
        return SeparableRule(node, graph)
    return None


for _cls in (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D):
    register_rule(_cls)(_depthwise)
for _cls in (keras.layers.SeparableConv1D, keras.layers.SeparableConv2D):
    register_rule(_cls)(_separable)


@register_rule(keras.layers.Embedding, needs_channels=False)
def _embedding(node, graph, tensors):
    return EmbeddingRule(node, graph) if _single(node) else None


def _shift(node, graph, tensors):
    if _channelwise(node, graph) and _channels_last(node.layer):
        return ChannelwiseRule(node, graph, "shift")
    return None


def _pad(node, graph, tensors):
    if _channelwise(node, graph) and _channels_last(node.layer):
        return ChannelwiseRule(node, graph, "pad")
    return None


for _name in (
    "Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D", "GaussianNoise",
    "GaussianDropout", "AlphaDropout", "ActivityRegularization", "Identity",
    "MaxPooling1D", "MaxPooling2D", "MaxPooling3D", "AveragePooling1D", "AveragePooling2D",
    "AveragePooling3D", "GlobalAveragePooling1D", "GlobalAveragePooling2D",
    "GlobalAveragePooling3D", "GlobalMaxPooling1D", "GlobalMaxPooling2D", "GlobalMaxPooling3D",
    "UpSampling1D", "UpSampling2D", "UpSampling3D", "Cropping1D", "Cropping2D", "Cropping3D",
    "RepeatVector",
):
    if hasattr(keras.layers, _name):
        register_rule(getattr(keras.layers, _name))(_shift)
for _cls in (keras.layers.ZeroPadding1D, keras.layers.ZeroPadding2D, keras.layers.ZeroPadding3D):
    register_rule(_cls)(_pad)


def _activation_layer(node, graph, tensors):
    if _channelwise(node, graph):
        return ChannelwiseRule(node, graph, "nonlinear", node.layer)
    return None


for _cls in (keras.layers.ReLU, keras.layers.LeakyReLU, keras.layers.ELU):
    register_rule(_cls)(_activation_layer)


@register_rule(keras.layers.Activation)
def _activation(node, graph, tensors):
    if _channelwise(node, graph) and _is_elementwise(node.layer.activation):
        return ChannelwiseRule(node, graph, "nonlinear", node.layer.activation)
    return None


@register_rule(keras.layers.BatchNormalization)
def _batchnorm(node, graph, tensors):
    if _channelwise(node, graph) and node.layer.axis in (-1, len(tensors[0].shape) - 1):
        return ChannelwiseRule(node, graph, "batchnorm")
    return None


@register_rule(keras.layers.Rescaling)
def _rescaling(node, graph, tensors):
    layer = node.layer
    if _channelwise(node, graph) and np.ndim(layer.scale) <= 1 and np.ndim(layer.offset) <= 1:
        return ChannelwiseRule(node, graph, "rescaling")
    return None


def _flatten(node, graph, tensors):
    if not (_single(node) and _channels_last(node.layer)):
        return None
    in_t, out_t = tensors
    if len(out_t.shape) == 2 and out_t.channels % in_t.channels == 0 and (
        math.prod(in_t.shape[1:]) == out_t.channels
    ):
        return FlattenRule(node, graph)
    return None


register_rule(keras.layers.Flatten)(_flatten)


@register_rule(keras.layers.Reshape)
def _reshape(node, graph, tensors):
    if _channelwise(node, graph) and tensors[0].shape[-1] == tensors[1].shape[-1]:
        return ChannelwiseRule(node, graph, "shift")
    return _flatten(node, graph, tensors)


@register_rule(keras.layers.Concatenate)
def _concatenate(node, graph, tensors):
    if len(node.outputs) == 1 and node.layer.axis in (-1, len(tensors[0].shape) - 1):
        return ConcatenateRule(node, graph)
    return None


@register_rule(keras.layers.Add)
def _add(node, graph, tensors):
    if len(node.outputs) == 1 and _same_shapes(graph, node):
        return AddRule(node, graph)
    return None


def _merge(name):
    def factory(node, graph, tensors):
        if len(node.outputs) == 1 and _same_shapes(graph, node):
            return MergeRule(node, graph, name)
        return None

    return factory


for _name in ("Subtract", "Average", "Multiply", "Maximum", "Minimum"):
    register_rule(getattr(keras.layers, _name))(_merge(_name))


# ------------------------------------------------------------ dispatching
def rule_for(node, graph):
    """The rule of ``node``: the registered rule of its layer's class (see
    :func:`register_rule`), or a :class:`BarrierRule` when nothing fits."""
    layer = node.layer
    tensors = [graph.tensors[k] for k in node.inputs + node.outputs]
    if not isinstance(layer, keras.layers.Layer):
        return BarrierRule(node, graph, "operation")
    if _unsupported_sparse(layer) or _has_lora_or_quantization(layer):
        return BarrierRule(node, graph, "quantized input")
    entry = registered_rule(layer)
    if entry is None:
        return BarrierRule(node, graph, "unsupported layer")
    _, factory, needs_channels = entry
    if needs_channels and any(t.channels is None for t in tensors):
        return BarrierRule(node, graph, "no channel axis")
    rule = factory(node, graph, tensors)
    return BarrierRule(node, graph, "unsupported layer") if rule is None else rule
