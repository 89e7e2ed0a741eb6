"""Small model-walking helpers shared by callbacks and model tools."""

import keras

from keras_sparse.layers.base import SparseMixin


def walk_layers(model):
    """Every layer inside ``model`` (recursively, each once), excluding the
    model itself."""
    seen, result = set(), []

    def visit(layer):
        for child in _children(layer):
            if id(child) in seen:
                continue
            seen.add(id(child))
            result.append(child)
            visit(child)

    visit(model)
    return result


def _children(layer):
    flatten = getattr(layer, "_flatten_layers", None)
    if flatten is not None:
        return list(flatten(include_self=False, recursive=False))
    return list(getattr(layer, "layers", []))


def layer_labels(model, layers):
    """A distinct label for each of ``layers`` (inside ``model``), for logs
    and per-layer tables: the layer's name, or, where two of ``layers``
    share a name (same-named layers in different nested models), the names
    of the models enclosing it and its own joined by ``"/"``
    (``"encoder/proj"``), with ``"#2"``, ``"#3"`` appended if even those
    agree. Returns a list in the order of ``layers``."""
    paths = {}

    def visit(layer, prefix):
        for child in _children(layer):
            if id(child) in paths:
                continue
            paths[id(child)] = prefix + (child.name,)
            visit(child, prefix + (child.name,))

    visit(model, ())
    names = [layer.name for layer in layers]
    labels = [
        "/".join(paths.get(id(layer), (layer.name,))) if names.count(layer.name) > 1
        else layer.name
        for layer in layers
    ]
    seen = {}
    for index, label in enumerate(labels):
        seen[label] = seen.get(label, 0) + 1
        if labels.count(label) > 1 and seen[label] > 1:
            labels[index] = f"{label}#{seen[label]}"
    return labels


def sparse_layers(model):
    """The sparse layers inside ``model``, in a stable order."""
    return [layer for layer in walk_layers(model) if isinstance(layer, SparseMixin)]


def is_container(layer):
    """Whether ``layer`` is a model (its children are converted, not it)."""
    return isinstance(layer, keras.Model)


_KERNEL_LAYER_KEYS = (
    "kernel_initializer", "bias_initializer", "kernel_regularizer", "bias_regularizer",
    "activity_regularizer", "kernel_constraint", "bias_constraint", "dtype",
)


def kernel_layer_arguments(layer):
    """The arguments a re-parametrized replacement (low-rank, column-sampled)
    takes over from a Dense/Conv layer: activation, bias, initializers,
    regularizers, constraints, name, dtype and trainability. Sparse layers
    give their plain Keras config."""
    config = layer.plain_config() if isinstance(layer, SparseMixin) else layer.get_config()
    arguments = {key: config.get(key) for key in _KERNEL_LAYER_KEYS}
    arguments.update(
        activation=config["activation"],
        use_bias=config["use_bias"],
        name=config["name"],
        trainable=config.get("trainable", True),
    )
    return config, arguments
