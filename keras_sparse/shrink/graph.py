"""A flat view of a Sequential/functional model's graph for :func:`shrink`.

Nested Sequential/functional sub-models are inlined (their layers become
nodes of one flat graph), so a channel can be followed across model
boundaries. Tensors are identified by integer keys; a layer called several
times (shared) appears in several nodes.
"""

import keras
from keras import tree

__all__ = ["Graph", "GraphNode", "GraphTensor", "is_walkable_graph_model"]


def is_walkable_graph_model(model):
    """Whether ``model``'s layer graph can be walked node by node: a
    Sequential (its subclasses too) or a plain functional model. Unlike
    :func:`keras_sparse.selection.is_cloneable_model`, a Sequential subclass
    counts: only its graph is read.

    Args:
        model: a Keras model.

    Returns:
        bool.
    """
    return isinstance(model, keras.Sequential) or type(model).__name__ == "Functional"


class GraphTensor:
    """One tensor of the flat graph.

    Attributes:
        key: integer id.
        shape: symbolic shape (batch axis included).
        dtype: dtype string.
        channels: size of the last axis, or ``None`` when the tensor has no
            channel axis the analysis can follow (rank < 2, unknown size).
        producer: index of the producing node, ``None`` for model inputs.
        consumers: indices of the nodes reading it (with repeats).
    """

    def __init__(self, key, keras_tensor, producer):
        self.key = key
        self.shape = tuple(keras_tensor.shape)
        self.dtype = keras_tensor.dtype
        last = self.shape[-1] if len(self.shape) >= 2 else None
        self.channels = last if isinstance(last, int) and last > 0 else None
        self.producer = producer
        self.consumers = []
        self.keras_tensor = keras_tensor

    def __repr__(self):
        return f"GraphTensor({self.key}, shape={self.shape})"


class GraphNode:
    """One layer call: ``layer`` applied to ``inputs`` (tensor keys in the
    order of ``keras_node.arguments.keras_tensors``), giving ``outputs``."""

    def __init__(self, index, layer, keras_node, inputs, outputs):
        self.index = index
        self.layer = layer
        self.keras_node = keras_node
        self.inputs = inputs
        self.outputs = outputs
        self.call_count = 1  # number of nodes sharing ``layer`` (set later)
        self.rule = None

    @property
    def shared(self):
        return self.call_count > 1

    def __repr__(self):
        return f"GraphNode({self.index}, {self.layer.name})"


class Graph:
    """The flat graph of ``model`` (inputs, nodes in topological order,
    outputs). Raises ``ValueError`` for a model whose graph cannot be
    walked (subclassed)."""

    def __init__(self, model):
        if not is_walkable_graph_model(model):
            raise ValueError(
                "shrink follows the graph of Sequential and functional models; "
                f"got a {type(model).__name__}. Received: model={model.name!r}"
            )
        if not model.built or not getattr(model, "outputs", None):
            raise ValueError(
                f"Model {model.name!r} must be built (give it an Input) before shrinking. "
                f"Received: model={model!r} (unbuilt)"
            )
        self.model = model
        self.tensors = {}
        self.nodes = []
        self._alias = {}
        self._next_key = 0
        self.input_keys = []
        for kt in tree.flatten(model.inputs):
            key = self._new_tensor(kt, None)
            self._alias[((), id(kt))] = key
            self.input_keys.append(key)
        self.output_keys = self._walk(model, ())
        counts = {}
        for node in self.nodes:
            counts[id(node.layer)] = counts.get(id(node.layer), 0) + 1
        for node in self.nodes:
            node.call_count = counts[id(node.layer)]
        for node in self.nodes:
            for key in node.inputs:
                self.tensors[key].consumers.append(node.index)

    # ------------------------------------------------------------ building
    def _new_tensor(self, keras_tensor, producer):
        key = self._next_key
        self._next_key += 1
        self.tensors[key] = GraphTensor(key, keras_tensor, producer)
        return key

    def _key(self, scope, keras_tensor):
        return self._alias[(scope, id(keras_tensor))]

    def _walk(self, model, scope):
        """Add the nodes of ``model`` (its inputs already aliased in
        ``scope``); return the keys of its outputs."""
        for keras_node in _topological_nodes(model):
            layer = keras_node.operation
            in_keys = [self._key(scope, kt) for kt in keras_node.arguments.keras_tensors]
            if is_walkable_graph_model(layer):
                inner_scope = scope + (id(keras_node),)
                inner_inputs = tree.flatten(layer.inputs)
                if len(inner_inputs) != len(in_keys):
                    raise ValueError(
                        f"Cannot follow the call of sub-model {layer.name!r}: "
                        f"{len(in_keys)} tensors for {len(inner_inputs)} inputs."
                    )
                for kt, key in zip(inner_inputs, in_keys):
                    self._alias[(inner_scope, id(kt))] = key
                out_keys = self._walk(layer, inner_scope)
                for kt, key in zip(keras_node.outputs, out_keys):
                    self._alias[(scope, id(kt))] = key
                continue
            index = len(self.nodes)
            out_keys = []
            for kt in keras_node.outputs:
                key = self._new_tensor(kt, index)
                self._alias[(scope, id(kt))] = key
                out_keys.append(key)
            self.nodes.append(GraphNode(index, layer, keras_node, in_keys, out_keys))
        return [self._key(scope, kt) for kt in tree.flatten(model.outputs)]

    # ------------------------------------------------------------- queries
    def producer(self, key):
        index = self.tensors[key].producer
        return None if index is None else self.nodes[index]

    def consumers(self, key):
        return [self.nodes[i] for i in self.tensors[key].consumers]

    def is_output(self, key):
        return key in self.output_keys


def _topological_nodes(model):
    """The call nodes of ``model`` in dependency order (inputs excluded)."""
    order, seen = [], set()
    inputs = {id(kt) for kt in tree.flatten(model.inputs)}

    def visit(keras_tensor):
        if id(keras_tensor) in inputs:
            return
        history = getattr(keras_tensor, "_keras_history", None)
        if history is None or history.operation is None:
            raise ValueError(
                f"Model {model.name!r}: a tensor is not connected to the model inputs."
            )
        node = history.operation._inbound_nodes[history.node_index]
        if id(node) in seen:
            return
        if node.is_input:
            raise ValueError(
                f"Model {model.name!r}: input {keras_tensor.name!r} is not a model input."
            )
        seen.add(id(node))
        stack = [(node, iter(node.arguments.keras_tensors))]
        # Iterative DFS (deep models would exceed Python's recursion limit).
        while stack:
            current, pending = stack[-1]
            advanced = False
            for parent in pending:
                if id(parent) in inputs:
                    continue
                hist = getattr(parent, "_keras_history", None)
                if hist is None or hist.operation is None:
                    raise ValueError(
                        f"Model {model.name!r}: a tensor is not connected to the model inputs."
                    )
                parent_node = hist.operation._inbound_nodes[hist.node_index]
                if id(parent_node) in seen:
                    continue
                seen.add(id(parent_node))
                stack.append((parent_node, iter(parent_node.arguments.keras_tensors)))
                advanced = True
                break
            if not advanced:
                stack.pop()
                order.append(current)

    for keras_tensor in tree.flatten(model.outputs):
        visit(keras_tensor)
    return order
