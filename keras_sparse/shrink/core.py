"""``ks.shrink``: rebuild a pruned model with the removed units gone.

The analysis runs on the flat graph (:mod:`.graph`) with one rule per node
(:mod:`.rules`):

1. *constants* (forward): which channels of every tensor are the same value
   everywhere, and that value, computed from the effective (masked) weights;
2. *links* (union-find): channels that are kept or removed together;
3. *keep* (backward, to a fixed point): model outputs, layers the rules
   cannot shrink, and every non-constant input a kept unit reads with a
   non-zero weight are kept; everything else is removed;
4. *rebuild* (forward): each rule makes its smaller plain Keras layer,
   absorbing what removed channels contributed (see :mod:`.rules`).

The result is verified against the input model on random inputs before it
is returned.

The steps live in :mod:`.analysis` (1 to 3, on the state of
:mod:`.context`), :mod:`.rebuild` (4) and :mod:`.verify` (the check); this
module holds the entry point and the shrink of subclassed models.
"""

import warnings

import keras
import numpy as np
from keras import tree

from keras_sparse import backend
from keras_sparse.checks import check_bool
from keras_sparse.checks import check_model
from keras_sparse.layers.base import SparseMixin
from keras_sparse.shrink.analysis import _analyse
from keras_sparse.shrink.graph import Graph
from keras_sparse.shrink.graph import is_walkable_graph_model
from keras_sparse.shrink.info import ShrinkInfo
from keras_sparse.shrink.rebuild import _input_name
from keras_sparse.shrink.rebuild import _rebuild
from keras_sparse.shrink.verify import VERIFY_TOLERANCE
from keras_sparse.shrink.verify import _as_list
from keras_sparse.shrink.verify import _verify

__all__ = ["shrink", "ShrinkInfo"]


# --------------------------------------------------------------- entry point
def _count_params(model):
    """Parameters of the plain model (masks and probes of sparse layers are
    not counted: they go away with ``strip``)."""
    from keras_sparse.utils import walk_layers

    auxiliary = set()
    for layer in walk_layers(model):
        if isinstance(layer, SparseMixin) and layer.built:
            auxiliary.update(id(v) for v in layer.auxiliary_variables())
    return int(sum(np.prod(v.shape) for v in model.weights if id(v) not in auxiliary))


def _shrink_graph(model, drop_inputs, verify, strict=False):
    info = ShrinkInfo()
    graph = Graph(model)
    ctx = _analyse(graph, drop_inputs)
    new_model = _rebuild(ctx, model, info)
    if strict and info.blocked:
        whole = [row["name"] for row in info.layers if row["status"] == "kept whole"]
        raise ValueError(
            f"shrink cannot remove every pruned unit (strict=True): {info.blocked} "
            f"(layer: units kept). A consumer needs those channels: a layer shrink cannot "
            f"follow (here: {whole or 'none'}), the other input of a residual Add, or a "
            f"model output. Received: strict={strict}"
        )
    info.params_before = _count_params(model)
    info.params_after = _count_params(new_model)
    if verify:
        selections = [
            np.asarray(info.kept_inputs[name]) if name in info.kept_inputs else None
            for name in [_input_name(kt) for kt in tree.flatten(new_model.inputs)]
        ]
        _verify(model, new_model, info, selections)
    return new_model, info


def shrink(model, *, drop_inputs=True, verify=True, strict=False, return_info=False):
    """Rebuild ``model`` with its pruned units, filters, channels and
    attention heads physically removed.

    Follows the graph through Dense, Conv1D/2D/3D, DepthwiseConv,
    SeparableConv, BatchNormalization, activations, Dropout, pooling, global
    pooling, Flatten/Reshape (channel indices expanded through the flatten),
    ZeroPadding/Cropping/UpSampling, residual ``Add`` (the union of the
    channels its inputs need), ``Concatenate`` (offsets), other merges,
    Embedding, MultiHeadAttention (heads), and this package's
    ``LowRankDense``/``LowRankConv2D``/``ColumnSampledDense``. Sparse layers
    are read through their masks, as in the forward pass. Any other layer
    is kept whole (all its channels) and copied.

    What is removed: a unit (a layer's output channel) that no kept layer
    reads with a non-zero weight, or that is *constant* (a unit whose
    kernel column is pruned outputs ``act(bias)`` everywhere). A constant
    unit's contribution is folded into the next layer's bias, so outputs are
    unchanged (not approximately: the check below holds them to float32
    rounding). In front of a ``same``-padded convolution one constant channel
    per tensor is kept as a carrier for the others (zero padding makes a
    constant input non-uniform at the borders). A layer with no unit left is
    removed; a residual branch whose output is constant becomes the
    identity (its constant is folded into a neighbouring bias, or added back
    with a ``Rescaling(1.0, offset=...)`` layer when there is none).

    Args:
        model: a built Sequential or functional model (nested sub-models are
            inlined), or a subclassed model: then only the Sequential and
            functional models it holds as attributes are shrunk (their
            inputs and outputs unchanged); the result is a new instance of
            its class (``cls.from_config(model.get_config())``, so
            ``__init__`` must accept its config) whose other layers hold the
            stripped weights of ``model``; pruned layers outside sub-models
            are listed in ``info.not_shrunk``.
        drop_inputs: also remove model input features no kept layer reads
            (e.g. after :func:`keras_sparse.sample_columns`); the new model
            then takes ``x[..., info.kept_inputs[name]]`` and a warning
            names the dropped features. ``False`` keeps the input shapes.
        verify: run both models on random inputs and raise ``RuntimeError``
            rather than return a model whose outputs differ.
        strict: raise ``ValueError`` if a pruned unit (all-zero weights)
            cannot be removed because the graph cannot be followed through
            one of its consumers (``info.blocked`` lists them otherwise).
        return_info: also return a :class:`ShrinkInfo`.

    Returns:
        A new, uncompiled functional model of plain Keras layers (only this
        package's low-rank layers stay themselves) that saves and loads as a
        plain ``.keras`` file; with ``return_info=True``, ``(model, info)``.
        The input model is never modified.

    Raises:
        ValueError: for an unbuilt model, a subclassed model that cannot be
            copied, or (``strict=True``) pruned units that cannot be removed.
        TypeError: for a ``model`` that is not a Keras model, or an argument
            of the wrong type (:class:`keras_sparse.checks.ArgumentTypeError`,
            also a ``ValueError``).

    Example:
    >>> pruned = ks.prune(model, 0.5, pattern="channel", layers=["conv1", "dense1"])
    >>> pruned.fit(x, y, callbacks=[ks.callbacks.Pruning()])
    >>> small = ks.shrink(pruned)
    >>> small.count_params() < model.count_params()
    True
    """
    check_model(model)
    for name, value in (("drop_inputs", drop_inputs), ("verify", verify), ("strict", strict),
                        ("return_info", return_info)):
        check_bool(value, name)
    if is_walkable_graph_model(model):
        new_model, info = _shrink_graph(model, drop_inputs, verify, strict)
    else:
        new_model, info = _shrink_subclassed(model, verify, strict)
    if info.dropped_inputs and not return_info:
        warnings.warn(
            f"shrink removed input features no layer reads: {info.dropped_inputs}. The new "
            f"model takes only the kept features ({ {k: len(v) for k, v in info.kept_inputs.items()} }); "
            "pass drop_inputs=False to keep the input shape, or return_info=True for the indices.",
            stacklevel=2,
        )
    return (new_model, info) if return_info else new_model


# --------------------------------------------------------------- subclassed
def _fresh_instance(model):
    """A new instance of ``model``'s class from its config, built on the
    input shape ``model`` was built with (plain Keras layers inside, as the
    class defines them)."""
    cls = type(model)
    shape = _build_input_shape(model)
    if shape is None:
        raise ValueError(
            f"shrink needs the subclassed model {model.name!r} built on one input of known "
            "shape (call it on a batch first)."
        )
    try:
        with keras.saving.custom_object_scope({cls.__name__: cls}):
            fresh = cls.from_config(model.get_config())
        fresh(np.zeros((1,) + tuple(d or 1 for d in shape[1:]), dtype="float32"))
    except Exception as error:  # noqa: BLE001 - any failure means "cannot copy"
        raise ValueError(
            f"shrink cannot copy the subclassed model {model.name!r} without modifying it: "
            f"{cls.__name__}.__init__ must accept the arguments of its get_config() "
            f"(Keras serialization). Original error: {error}"
        ) from error
    return fresh


def _graph_children(model):
    """``(container, key, sub-model)`` for each Sequential/functional model
    held directly by ``model`` (attribute, or item of a list attribute)."""
    found = []
    for name, value in list(backend.layer_attributes(model).items()):
        if name.startswith("_"):
            continue
        if is_walkable_graph_model(value):
            found.append((model, name, value))
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if is_walkable_graph_model(item):
                    found.append((value, i, item))
    return found


def _outside_layers(model, children):
    from keras_sparse.utils import walk_layers

    inside = set()
    for _, _, child in children:
        inside.add(id(child))
        inside.update(id(layer) for layer in walk_layers(child))
    return [layer for layer in walk_layers(model) if id(layer) not in inside]


def _plain_weights(layer):
    if isinstance(layer, SparseMixin):
        return [np.asarray(w) for w in layer.stripped_weights()]
    return [np.array(keras.ops.convert_to_numpy(w)) for w in layer.weights]


def _shrink_subclassed(model, verify, strict):
    """Shrink the Sequential/functional sub-models of a subclassed model.

    The result is a fresh instance of the model's class (from its config):
    its sub-models are replaced by the shrunk ones, and every other layer
    gets the (stripped) weights of the matching layer of ``model``, which is
    never modified."""
    if not model.built:
        raise ValueError(
            f"Model {model.name!r} must be built before shrinking. Received: model={model!r} "
            "(unbuilt)"
        )
    info = ShrinkInfo()
    info.params_before = _count_params(model)
    fresh = _fresh_instance(model)
    old_children = _graph_children(model)
    new_children = _graph_children(fresh)
    if [(k, c.name) for _, k, c in old_children] != [(k, c.name) for _, k, c in new_children]:
        raise ValueError(
            f"shrink cannot match the sub-models of {model.name!r} with a fresh instance of "
            f"{type(model).__name__} (they are created differently)."
        )
    old_rest = _outside_layers(model, old_children)
    new_rest = _outside_layers(fresh, new_children)
    if len(old_rest) != len(new_rest):
        raise ValueError(
            f"shrink cannot match the layers of {model.name!r} with a fresh instance of "
            f"{type(model).__name__}."
        )
    for old, new in zip(old_rest, new_rest):
        values = _plain_weights(old)
        if [v.shape for v in values] != [tuple(w.shape) for w in new.weights]:
            raise ValueError(
                f"shrink cannot match layer {old.name!r} of {model.name!r} with a fresh "
                f"instance of {type(model).__name__}."
            )
        new.set_weights(values)
    for (_, _, old_child), (container, key, new_child) in zip(old_children, new_children):
        small, child_info = _shrink_graph(old_child, drop_inputs=False, verify=verify, strict=strict)
        info.layers.extend(child_info.layers)
        info.offset_layers.extend(child_info.offset_layers)
        info.carriers += child_info.carriers
        info.blocked.update(child_info.blocked)
        if isinstance(container, list):
            list.__setitem__(container, key, small)
        else:
            object.__setattr__(container, key, small)
        fresh._tracker.replace_tracked_value("layers", new_child, small)
    info.not_shrunk = [
        layer.name for layer in old_rest
        if isinstance(layer, SparseMixin) and layer.built and layer.sparsity > 0
    ]
    info.params_after = _count_params(fresh)
    if verify:
        shape = _build_input_shape(model)
        rng = np.random.default_rng(0)
        x = rng.standard_normal((2,) + tuple(d or 5 for d in shape[1:])).astype("float32")
        reference = _as_list(model(x, training=False))
        found = _as_list(fresh(x, training=False))
        info.max_abs_diff = 0.0
        for a, b in zip(reference, found):
            diff = float(np.max(np.abs(a - b)))
            if not diff <= VERIFY_TOLERANCE * max(1.0, float(np.max(np.abs(a)))):
                raise RuntimeError(
                    f"shrink produced a model whose outputs differ by {diff:.3g}; it is not "
                    "returned (please report this)."
                )
            info.max_abs_diff = max(info.max_abs_diff, diff)
    return fresh, info


def _build_input_shape(model):
    shapes = getattr(model, "_build_shapes_dict", None) or {}
    if len(shapes) == 1:
        shape = next(iter(shapes.values()))
        if isinstance(shape, (tuple, list)) and all(d is None or isinstance(d, int) for d in shape):
            return tuple(shape)
    return None
