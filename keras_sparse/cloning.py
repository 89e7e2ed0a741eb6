"""Cloning a converted model: ``clone_model`` with a layer factory, then
the weights copied layer by layer (latent weights, masks, probes and
quantizer state). A nested subclassed model is rebuilt from its config as
a whole; sublayers it had made sparse in place are made sparse again in the
copy (or left plain, for ``ks.strip``).

The model-surgery helpers shared by the model tools live here too:
:func:`clone_replacing` (rebuild a model with some layers replaced) and
zero-initialised construction (:func:`from_config_zero_init`,
:func:`restore_initializers`): tools that build layers only to overwrite
their weights create them with ``"zeros"`` initializers (a random
initializer compiles a program per shape on JAX) and put the layer's own
initializers back once it is built, its config unchanged.
"""

import keras
import numpy as np

from keras_sparse import backend
from keras_sparse.layers.base import SparseMixin
from keras_sparse.selection import is_cloneable_model
from keras_sparse.selection import leaf_layers


def _auxiliary(layer):
    return layer.auxiliary_variables() if isinstance(layer, SparseMixin) else []


def _assign(dst, src):
    # A host copy: on JAX, assigning one variable to another shares the
    # buffer, which the new model's first step then donates.
    dst.assign(np.array(keras.ops.convert_to_numpy(src)))


def copy_weights(source, target):
    """Copy ``source``'s weights into ``target`` (same Keras parent).

    The Keras parent's weights are copied in order; masks and probes by
    name; quantizer state only when both layers use the same quantizer (it
    is initialized from the copied weights otherwise); gate state when both
    use the same gate (a new gate starts from its initial values).
    """
    skip_source = {id(v) for v in _auxiliary(source)}
    skip_target = {id(v) for v in _auxiliary(target)}
    sources = [v for v in source.weights if id(v) not in skip_source]
    targets = [v for v in target.weights if id(v) not in skip_target]
    if len(sources) != len(targets):
        raise RuntimeError(
            f"Cannot copy weights of layer {source.name!r}: {len(sources)} source "
            f"variables for {len(targets)} target variables."
        )
    for src, dst in zip(sources, targets):
        _assign(dst, src)
    if not isinstance(target, SparseMixin):
        return
    if isinstance(source, SparseMixin):
        for name in target.sparse_weight_names:
            for suffix in ("_mask", "_probe"):
                src = getattr(source, name + suffix, None)
                dst = getattr(target, name + suffix, None)
                if src is not None and dst is not None:
                    _assign(dst, src)
        target._mask_sparsity_cache = {}
    initialize = False
    for key in target._quantizer_state:
        quantizer = target.input_quantizer if key == "input" else target.kernel_quantizer
        same = isinstance(source, SparseMixin) and quantizer == (
            source.input_quantizer if key == "input" else source.kernel_quantizer
        )
        source_state = source.quantizer_state(key) if same else {}
        for item, dst in target.quantizer_state(key).items():
            if not isinstance(dst, keras.Variable):
                continue
            if item in source_state:
                _assign(dst, source_state[item])
            elif key != "input":
                initialize = True
    if initialize:
        target.initialize_quantizers()
    if isinstance(source, SparseMixin) and source.gate is not None and source.gate == target.gate:
        # The gate's learned state (log_alpha or thresholds, multipliers,
        # warm-up step) moves with the weights when the gate is the same.
        for name in target.sparse_weight_names:
            source_state = source.gate_state(name)
            for item, dst in target.gate_state(name).items():
                src = source_state.get(item)
                if isinstance(dst, keras.Variable) and src is not None:
                    _assign(dst, src)
                elif isinstance(dst, keras.random.SeedGenerator) and src is not None:
                    _assign(dst.state, src.state)


def rebuild(layer):
    """A fresh copy of a layer that is not converted. A weightless layer
    Keras will not rebuild from its config (a ``Lambda`` wrapping a Python
    lambda is refused in safe mode) is reused as it is: it holds no state
    the two models could share."""
    try:
        return layer.__class__.from_config(layer.get_config())
    except (ValueError, TypeError):
        if layer.weights:
            raise
        return layer


def _holds_sparse_layers(layer):
    """A layer ``clone_model`` rebuilds from its config as a whole (a nested
    subclassed model) whose sublayers were made sparse in place."""
    return (
        not isinstance(layer, SparseMixin)
        and not is_cloneable_model(layer)
        and any(isinstance(leaf, SparseMixin) for leaf in leaf_layers(layer))
    )


def _mirror_sparse(source, target):
    """Class-swap the plain ``target`` (rebuilt from config) into
    ``source``'s sparse class with the same settings."""
    config = source.get_config()
    target.__class__ = type(source)
    target._adopt(config["schedule"], config["pattern"], config["scorer"],
                  config["global_pruning"], masked=config["masked"])
    target.configure_quantization(config["kernel_quantizer"], config["input_quantizer"])
    target.configure_gate(config.get("gate"))


def _copy_holder(old, new, copy, mirror):
    """Copy a rebuilt layer that holds sparse layers leaf by leaf; with
    ``mirror``, its sparse leaves become sparse again first (same settings,
    masks copied), otherwise (``ks.strip``) they stay plain."""
    olds, news = leaf_layers(old), leaf_layers(new)
    same = len(olds) == len(news) and all(
        type(n) in (type(o), getattr(o, "_keras_parent", None)) for o, n in zip(olds, news)
    )
    if not same:
        raise ValueError(
            f"Layer {old.name!r} ({type(old).__name__}) holds keras_sparse layers, and "
            "its from_config() rebuilds different sublayers, so they cannot be copied "
            "into the new model. Received: sublayers "
            f"{[type(o).__name__ for o in olds]} rebuilt as {[type(n).__name__ for n in news]}"
        )
    for source, target in zip(olds, news):
        if mirror and isinstance(source, SparseMixin) and not isinstance(target, SparseMixin):
            _mirror_sparse(source, target)
        if source.built:
            copy(source, target)


def clone(model, make_layer, copy, mirror=True):
    """Clone the Sequential/functional ``model`` with ``make_layer(layer)``
    making each new layer, then ``copy(old, new)`` for every built pair.
    ``mirror``: a nested subclassed model's sparse sublayers are sparse in
    the copy too (``False``: plain, as ``ks.strip`` wants)."""
    pairs = []

    def clone_function(layer):
        new = make_layer(layer)
        pairs.append((layer, new))
        return new

    cloned = keras.models.clone_model(model, clone_function=clone_function, recursive=True)
    for old, new in pairs:
        if not old.built:
            continue
        if _holds_sparse_layers(old):
            _copy_holder(old, new, copy, mirror)
        else:
            copy(old, new)
    return cloned


def reset_compiled_functions(model):
    """Drop ``model``'s traced train/test/predict functions (after a layer
    changed class in place), so the next call traces the new forward pass,
    and register the variables the change added or removed with the backend
    (:func:`keras_sparse.backend.track_variables`)."""
    backend.track_variables(model)
    for attr in ("train_function", "test_function", "predict_function"):
        if hasattr(model, attr):
            setattr(model, attr, None)


# ------------------------------------------------------------ construction
def _initializer_keys(config):
    return [k for k, v in config.items() if k.endswith("_initializer") and v is not None]


def from_config_zero_init(cls, config):
    """``cls.from_config(config)`` with every ``*_initializer`` set to
    ``"zeros"``; call :func:`restore_initializers` after building."""
    keys = _initializer_keys(config)
    quick = dict(config)
    for key in keys:
        quick[key] = "zeros"
    layer = cls.from_config(quick)
    layer._keras_sparse_initializers = {key: config[key] for key in keys}
    return layer


def restore_initializers(layer):
    """Put back the initializers a :func:`from_config_zero_init` layer was
    configured with (no-op for other layers)."""
    saved = layer.__dict__.pop("_keras_sparse_initializers", None)
    if not saved:
        return layer
    for key, value in saved.items():
        initializer = keras.initializers.get(value)
        for attr in (key, "_" + key):
            if attr in layer.__dict__ or hasattr(type(layer), attr) or hasattr(layer, attr):
                object.__setattr__(layer, attr, initializer)
                break
    return layer


def clone_replacing(model, plan, make_layer, set_weights):
    """Clone ``model`` with the layers in ``plan`` replaced and every weight
    carried over.

    Args:
        model: a Sequential or functional model (nested too).
        plan: dict ``id(layer) -> row`` of the layers to replace.
        make_layer: ``(layer, row) -> new layer`` for a planned layer (made
            with :func:`from_config_zero_init`);
            the other layers are rebuilt from their configs.
        set_weights: ``(new layer, row) -> None`` fills a built planned
            layer; the others get a copy of their own weights.

    Returns:
        ``(clone, pairs)``, with ``pairs`` the ``(old, new)`` layers in clone
        order.
    """
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
