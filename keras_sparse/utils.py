"""Small model-walking helpers shared by callbacks and model tools."""

import keras
import numpy as np

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


def clone_replacing(model, plan, make_layer, set_weights):
    """Clone ``model`` with the layers in ``plan`` replaced and every weight
    carried over.

    Args:
        model: a Sequential or functional model (nested too).
        plan: dict ``id(layer) -> row`` of the layers to replace.
        make_layer: ``(layer, row) -> new layer`` for a planned layer (made
            with :func:`~keras_sparse.shrink.fast_init.from_config_zero_init`);
            the other layers are rebuilt from their configs.
        set_weights: ``(new layer, row) -> None`` fills a built planned
            layer; the others get a copy of their own weights.

    Returns:
        ``(clone, pairs)``, with ``pairs`` the ``(old, new)`` layers in clone
        order.
    """
    # keras_sparse.shrink imports this module: import it here, not at the top.
    from keras_sparse.shrink.fast_init import from_config_zero_init
    from keras_sparse.shrink.fast_init import restore_initializers

    pairs = []

    def clone_function(layer):
        if id(layer) in plan:
            new = make_layer(layer, plan[id(layer)])
        else:
            new = from_config_zero_init(layer.__class__, layer.get_config())
        pairs.append((layer, new))
        return new

    clone = keras.models.clone_model(model, clone_function=clone_function, recursive=True)
    for old, new in pairs:
        if old.built:
            if id(old) in plan:
                set_weights(new, plan[id(old)])
            else:
                new.set_weights([np.array(w) for w in old.get_weights()])
        restore_initializers(new)
    return clone, pairs
