"""Which layers of a model ``ks.prune`` and ``ks.quantize`` convert: the
layer selector, and the split of the selection into convertible layers and
layers reported as unsupported."""

import re
import warnings

import keras
import numpy as np
from keras import ops

from keras_sparse.checks import type_error
from keras_sparse.layers.base import SparseMixin
from keras_sparse.layers.sparse_layers import SparseEinsumDense
from keras_sparse.layers.sparse_layers import sparse_class_for
from keras_sparse.utils import is_container
from keras_sparse.utils import walk_layers

__all__ = [
    "is_cloneable_model",
    "built_prunable_weights",
    "prunable_weights",
    "select_layers",
    "split_convertible",
    "warn_or_raise_unsupported",
    "weight_layout_map",
    "weight_shapes",
    "weight_values",
]


def is_cloneable_model(model):
    """Whether ``keras.models.clone_model`` rebuilds ``model`` as the same
    class: exactly a Sequential or a plain functional model (a subclass of
    either would come back as its base class).

    Args:
        model: a Keras model.

    Returns:
        bool.
    """
    return type(model) is keras.Sequential or type(model).__name__ == "Functional"


def leaf_layers(model):
    return [layer for layer in walk_layers(model) if not is_container(layer)]


def select_layers(model, layers):
    """Resolve a layer selector against ``model``'s (nested) layers.

    Args:
        layers: ``None`` (all), a name or regular expression (full match), a
            list of names, a dict whose keys are names, or a callable
            ``layer -> bool``.

    Returns:
        The selected layers, in model order.

    Raises:
        ValueError: if a name matches no layer.
        ArgumentTypeError: for a selector of another type, or a list
            holding something other than names.
    """
    candidates = leaf_layers(model)
    names = [layer.name for layer in candidates]
    if layers is None:
        return candidates
    if callable(layers) and not isinstance(layers, (str, dict)):
        return [layer for layer in candidates if layers(layer)]
    if isinstance(layers, str):
        if layers in names:
            return [layer for layer in candidates if layer.name == layers]
        try:
            pattern = re.compile(layers)
        except re.error:
            pattern = None
        chosen = [
            layer for layer in candidates if pattern and pattern.fullmatch(layer.name)
        ]
        if not chosen:
            raise ValueError(
                f"`layers` matches no layer of the model (layers: {names}). "
                f"Received: layers={layers!r}"
            )
        return chosen
    if isinstance(layers, (list, tuple, set, dict)):
        wanted = list(layers)
        if not all(isinstance(n, str) for n in wanted):
            raise type_error("layers", layers, "a list of layer names (strings)")
        missing = [n for n in wanted if n not in names]
        if missing:
            raise ValueError(
                f"`layers` names layers the model does not have: {missing} "
                f"(layers: {names}). Received: layers={layers!r}"
            )
        return [layer for layer in candidates if layer.name in set(wanted)]
    raise type_error(
        "layers", layers,
        "None, a name, a regular expression, a list of names, a dict or a callable",
    )


def _rebuilt_owners(model):
    """For a Sequential/functional model: ``id(layer) -> owner`` for every
    layer nested inside another layer or a subclassed model. ``clone_model``
    recreates the owner from its config, with fresh sublayers, so those
    layers cannot be converted."""
    owners = {}

    def visit(container):
        for layer in container.layers:
            if isinstance(layer, keras.Sequential) or any(
                cls.__name__ == "Functional" for cls in type(layer).__mro__
            ):
                visit(layer)
            else:
                for inner in walk_layers(layer):
                    owners.setdefault(id(inner), layer)

    visit(model)
    return owners


def supports(layer):
    return isinstance(layer, SparseMixin) or sparse_class_for(type(layer)) is not None


def has_kernel_like_weights(layer):
    return any(len(w.shape) >= 2 for w in layer.weights)


def split_convertible(model, selected):
    """``(convertible, unsupported)`` for the ``selected`` layers of
    ``model``: the layers with a sparse/quantized counterpart that the
    conversion can reach, and the layers to report (kernel-like weights and
    no counterpart, or the owner of a layer the clone would recreate)."""
    owners = _rebuilt_owners(model) if is_cloneable_model(model) else {}
    convertible = [layer for layer in selected if supports(layer) and id(layer) not in owners]
    unsupported = []
    for layer in selected:
        if supports(layer) or has_kernel_like_weights(layer):
            layer = owners.get(id(layer), layer)
            if not supports(layer) and all(layer is not u for u in unsupported):
                unsupported.append(layer)
    return convertible, unsupported


def _sparse_class(layer):
    return type(layer) if isinstance(layer, SparseMixin) else sparse_class_for(type(layer))


def weight_shapes(layer):
    """Shapes of the weights ``ks.prune`` masks in ``layer`` (a plain layer
    with a sparse counterpart or a sparse layer); ``[]`` while unbuilt."""
    if not layer.built:
        return []
    if isinstance(layer, SparseMixin):
        return [tuple(layer.latent_weight(n).shape) for n in layer.sparse_weight_names]
    cls = sparse_class_for(type(layer))
    return [tuple(getattr(layer, name).shape) for name in cls.sparse_weight_layouts]


def weight_layout_map(layer):
    """dict ``weight name -> Layout`` of the weights ``ks.prune`` masks."""
    cls = _sparse_class(layer)
    if issubclass(cls, SparseEinsumDense):
        # The layout of an einsum kernel depends on the equation.
        return {"kernel": cls.weight_layout(layer, "kernel")}
    return dict(cls.sparse_weight_layouts)


def _weight_variables(layer):
    """``(name, variable)`` of each maskable weight of a built layer: the
    latent variable of a sparse layer, the Keras variable of a plain one."""
    if isinstance(layer, SparseMixin):
        return [(n, layer.latent_weight(n)) for n in layer.sparse_weight_names]
    return [(n, getattr(layer, n)) for n in sparse_class_for(type(layer)).sparse_weight_layouts]


def weight_values(layer):
    """Host (numpy) values of the weights ``ks.prune`` masks in a built
    ``layer``, in the order of :func:`weight_shapes`: a sparse layer's
    latent weights with its removed entries at exactly 0, a plain layer's
    weights."""
    if isinstance(layer, SparseMixin):
        return [
            np.array(ops.convert_to_numpy(layer.masked_latent(n)))
            for n in layer.sparse_weight_names
        ]
    return [np.array(ops.convert_to_numpy(v)) for _, v in _weight_variables(layer)]


def prunable_weights(model, layers=None):
    """The layers of ``model`` that ``ks.prune`` can make sparse (among the
    ``layers`` selected, as ``ks.prune`` selects them), each with its
    maskable weights.

    Returns:
        A list of ``(layer, [(weight name, variable, layout), ...])`` in
        model order; the variable is the latent one of a sparse layer.
        Unbuilt layers have an empty weight list.
    """
    convertible, _ = split_convertible(model, select_layers(model, layers))
    found = []
    for layer in convertible:
        if not layer.built:
            found.append((layer, []))
            continue
        layouts = weight_layout_map(layer)
        found.append((layer, [(n, v, layouts[n]) for n, v in _weight_variables(layer)]))
    return found


def warn_or_raise_unsupported(unsupported, strict, missing, action, stacklevel=3):
    """Say which selected layers a model tool skips: one warning naming
    them, or with ``strict`` a ``ValueError``. ``missing`` completes
    "These layers have ..." and ``action`` "skipped layers it cannot ...";
    ``stacklevel`` is the warning's, counted from this function."""
    if not unsupported:
        return
    names = ", ".join(f"{layer.name} ({type(layer).__name__})" for layer in unsupported)
    if strict:
        raise ValueError(
            f"These layers have {missing}: {names}. Pass strict=False "
            f"to skip them. Received: strict={strict}"
        )
    warnings.warn(f"keras_sparse skipped layers it cannot {action}: {names}.", stacklevel=stacklevel)


def built_prunable_weights(model, layers=None):
    """:func:`prunable_weights`, for a tool that needs weight values: a
    ``ValueError`` when no selected layer can be pruned or one is unbuilt."""
    units = prunable_weights(model, layers)
    if not units:
        raise ValueError(
            "`model` has no layer that can be pruned among the layers selected by "
            f"layers={layers!r} (ks.prune supports Dense, Conv*, EinsumDense, Embedding "
            f"... and the keras_sparse layers). Received: model={model.name!r}"
        )
    unbuilt = [layer.name for layer, entries in units if not entries]
    if unbuilt:
        raise ValueError(
            f"`model` must be built (call it on data or build it): layers {unbuilt} have "
            f"no weights yet. Received: model={model.name!r}"
        )
    return units
