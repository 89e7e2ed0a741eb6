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
