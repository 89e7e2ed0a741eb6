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
