"""Shared pieces of the rules of :func:`keras_sparse.shrink`: numeric and
layer helpers, the base :class:`Rule` and :class:`BarrierRule` (a layer the
rules do not shrink). How the rules work is described in :mod:`.rules`.
"""

import keras
import numpy as np
from keras import ops

from keras_sparse.layers.base import SparseMixin

__all__ = ["ELEMENTWISE_ACTIVATIONS", "BarrierRule", "Rule", "activation_name", "plain_state"]

#: Activations applied entry by entry (a unit's output depends on its own
#: pre-activation only); the others (softmax, glu, ...) mix channels.
ELEMENTWISE_ACTIVATIONS = frozenset(
    "celu elu exponential gelu hard_shrink hard_sigmoid hard_silu hard_swish hard_tanh "
    "leaky_relu linear log_sigmoid mish relu relu6 selu sigmoid silu soft_shrink softplus "
    "softsign sparse_plus sparse_sigmoid squareplus swish tanh tanh_shrink threshold".split()
)


# ------------------------------------------------------------------ helpers
def _np(x):
    return np.asarray(ops.convert_to_numpy(x))


def activation_name(fn):
    if fn is None:
        return "linear"
    try:
        name = keras.activations.serialize(fn)
    except Exception:  # noqa: BLE001 - a user function Keras cannot name
        return None
    return name if isinstance(name, str) else None


def _is_elementwise(fn):
    return activation_name(fn) in ELEMENTWISE_ACTIVATIONS


def _apply(fn, values):
    """``fn`` on a float vector (constants), through Keras, as float64."""
    if fn is None or activation_name(fn) == "linear" or values.size == 0:
        return values
    out = fn(ops.convert_to_tensor(values.astype("float32")[None, :]))
    return _np(out)[0].astype("float64")


def plain_state(layer):
    """``(class, config, weights)`` of the plain Keras layer computing what
    ``layer`` computes in inference (sparse layers: effective weights)."""
    if isinstance(layer, SparseMixin):
        return layer._keras_parent, layer.plain_config(), [np.asarray(w) for w in layer.stripped_weights()]
    return type(layer), layer.get_config(), [_np(w) for w in layer.weights]


def _channels_last(layer):
    return getattr(layer, "data_format", "channels_last") in (None, "channels_last")


def _unsupported_sparse(layer):
    """Sparse layers with an input quantizer cannot become plain layers."""
    return isinstance(layer, SparseMixin) and getattr(layer, "input_quantizer", None) is not None


def _has_lora_or_quantization(layer):
    if getattr(layer, "lora_enabled", False):
        return True
    policy = getattr(layer, "dtype_policy", None)
    return getattr(policy, "quantization_mode", None) is not None


# -------------------------------------------------------------------- rules
class Rule:
    """Base rule: nothing is linked, pinned or demanded; outputs are LIVE."""

    #: whether the rule lets offsets of its inputs through linearly
    passes_offsets = False
    #: set by ``rebuild`` when the layer was replaced by its only input
    became_identity = False

    def __init__(self, node, graph):
        self.node = node
        self.graph = graph
        self.layer = node.layer

    @property
    def in_key(self):
        return self.node.inputs[0]

    @property
    def out_key(self):
        return self.node.outputs[0]

    def consts(self, ctx):
        for key in self.node.outputs:
            ctx.set_live(key)

    def links(self, ctx):
        pass

    def pins(self, ctx):
        pass

    def demand(self, ctx):
        pass

    def can_take_extra_bias(self):
        return False

    def describe(self):
        return type(self.layer).__name__

    def units(self):
        """Number of units/channels this layer owns (for the summary)."""
        return None

    def pruned_units(self):
        """Boolean mask of the output channels whose weights are all zero
        (pruned units), or ``None`` for layers without units."""
        return None

    def rebuild(self, ctx):
        raise NotImplementedError


class BarrierRule(Rule):
    """A layer the rules do not shrink: keeps every input and output channel;
    rebuilt as a copy (plain Keras class for sparse layers)."""

    def __init__(self, node, graph, reason=""):
        super().__init__(node, graph)
        self.reason = reason

    def pins(self, ctx):
        for key in self.node.inputs + self.node.outputs:
            ctx.pin(key)

    def rebuild(self, ctx):
        layer = self.layer
        if isinstance(layer, keras.layers.Layer) and not _unsupported_sparse(layer):
            cls, config, weights = plain_state(layer)
        elif isinstance(layer, keras.layers.Layer):
            cls, config, weights = type(layer), layer.get_config(), [_np(w) for w in layer.weights]
        else:  # a raw keras.ops operation: stateless, reuse it
            cls = config = weights = None
        args, kwargs = ctx.fill_args(self.node)
        outputs = ctx.call_layer(self.node, cls, config, weights, args, kwargs)
        for key, tensor in zip(self.node.outputs, keras.tree.flatten(outputs)):
            ctx.set_output(key, tensor)
