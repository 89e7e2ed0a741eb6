"""Floor 4: convert whole models to the sparse family and back.

Sequential and functional models (also nested) are cloned with
``keras.models.clone_model`` and their weights copied layer by layer; the
input model is left untouched. Subclassed models cannot be cloned, so their
layers are converted in place (class swap plus new mask variables) and the
model's cached train/test/predict functions are reset so the next ``fit``
traces the masked forward pass. A subclassed model nested in a cloned one is
rebuilt from its config; sublayers it had made sparse in place are made
sparse again in the copy, with their settings, masks and weights (plain in
``ks.strip``).

:func:`convert` is the shared machinery: ``ks.prune`` and ``ks.quantize``
each validate their arguments into a *plan* (layer -> settings) and hand it
over, so the two compose in either order.
"""

import warnings

import numpy as np

from keras_sparse import backend
from keras_sparse import distributions as distributions_lib
from keras_sparse import methods as methods_lib
from keras_sparse import patterns as patterns_lib
from keras_sparse import schedules as schedules_lib
from keras_sparse import scorers as scorers_lib
from keras_sparse.at_init import _apply_initial_masks
from keras_sparse.checks import check_bool
from keras_sparse.checks import check_model
from keras_sparse.layers.base import SparseMixin
from keras_sparse.layers.base import check_pattern_fits
from keras_sparse.layers.base import refresh_call_signature
from keras_sparse.layers.sparse_layers import SPARSE_CLASS_FOR
from keras_sparse.layers.sparse_layers import sparse_class_for
from keras_sparse.cloning import clone
from keras_sparse.cloning import copy_weights
from keras_sparse.cloning import rebuild
from keras_sparse.cloning import reset_compiled_functions
from keras_sparse.ops.masks import check_sparsity
from keras_sparse.plain_forms import FACTORIZED_FORMS
from keras_sparse.plain_forms import has_plain_form
from keras_sparse.plain_forms import plain_form
from keras_sparse.plain_forms import set_plain_weights
from keras_sparse.plain_forms import strip_attention_in_place
from keras_sparse.layers.head_masked_attention import HeadMaskedMultiHeadAttention
from keras_sparse.selection import is_cloneable_model
from keras_sparse.selection import leaf_layers
from keras_sparse.selection import select_layers
from keras_sparse.selection import split_convertible
from keras_sparse.selection import warn_or_raise_unsupported
from keras_sparse.selection import weight_layout_map as _layout_map
from keras_sparse.selection import weight_shapes as _weight_shapes
from keras_sparse.selection import weight_values as _weight_values
from keras_sparse.utils import sparse_layers

__all__ = ["convert", "prune", "strip", "select_layers", "is_cloneable_model"]


def _plan(model, sparsity, schedule, pattern, scorer, distribution, layers, strict,
          method=None):
    """Validate every argument and decide each layer's settings, touching
    nothing. Returns the plan and whether selected layers were reported as
    unsupported (a warning was given)."""
    check_model(model)
    method = None if method is None else methods_lib.get(method)
    if sparsity is not None:
        sparsity = check_sparsity(sparsity)
    schedule = schedules_lib.get(schedule)
    pattern = patterns_lib.get(pattern)
    scorer = scorers_lib.get(scorer)
    if isinstance(layers, dict):
        distribution = layers
    distribution = distributions_lib.get(distribution)
    check_bool(strict, "strict")
    if distribution.is_global and not pattern.supports_global:
        raise ValueError(
            "distribution='global' needs the unstructured pattern. "
            f"Received: pattern={pattern!r}"
        )
    if sparsity is None:
        if pattern.fixed_sparsity is not None and schedule is None:
            sparsity = pattern.fixed_sparsity
        elif schedule is not None:
            sparsity = schedule.target_sparsity
        elif not distribution.own_sparsities:
            raise ValueError(
                "Give a target `sparsity` or a `schedule`. Received: sparsity=None"
            )
        else:
            sparsity = 0.0
    fixed = pattern.fixed_sparsity
    if fixed is not None and sparsity not in (0.0, fixed) and not (
        abs(sparsity - fixed) < 1e-9
    ):
        raise ValueError(
            f"pattern={pattern!r} fixes the sparsity at {fixed}; pass sparsity={fixed} "
            f"or None. Received: sparsity={sparsity}"
        )
    convertible, unsupported = split_convertible(model, select_layers(model, layers))
    warn_or_raise_unsupported(unsupported, strict, "no sparse counterpart", "make sparse")
    shapes = {layer.name: _weight_shapes(layer) for layer in convertible}
    if distribution.needs_shapes:
        unbuilt = [name for name, s in shapes.items() if not s]
        if unbuilt:
            raise ValueError(
                f"distribution={distribution!r} needs built layers; build the model "
                f"first (unbuilt: {unbuilt})."
            )
    if distribution.needs_weights:
        weights = {layer.name: _weight_values(layer) for layer in convertible}
        per_layer = distribution.layer_sparsities(shapes, sparsity, weights=weights)
    else:
        per_layer = distribution.layer_sparsities(shapes, sparsity)
    base = schedule if schedule is not None else schedules_lib.ConstantSparsity(sparsity)
    chosen = [layer for layer in convertible if layer.name in per_layer]
    # Every layer is checked before any is converted (a subclassed model is
    # converted in place): built layers on their weights, unbuilt ones on
    # what their arguments give; the rest is checked when they are built.
    check_pattern_fits(pattern, [(layer, _layout_map(layer)) for layer in chosen])
    plan = {}
    for layer in chosen:
        plan[id(layer)] = dict(
            schedule=base.with_target(per_layer[layer.name]),
            pattern=pattern,
            scorer=scorer,
            global_pruning=distribution.is_global,
            method=method,
        )
    if method is not None:
        for layer in convertible:
            if id(layer) in plan:
                method.check_pattern(pattern, layer.name)
    return plan, bool(unsupported)


def _sparse_from(layer, settings):
    # An already-sparse layer keeps its other settings (a quantized layer
    # keeps its quantizers when pruned, and the other way round).
    cls = sparse_class_for(type(layer))
    config = layer.get_config()
    config.update(settings)
    if config.get("schedule") is not None:
        # Pruning a layer that was only quantized: it needs masks now.
        config["masked"] = True
    return cls.from_config(config)


def convert(model, plan, configure):
    """Apply a validated conversion plan to ``model``.

    Args:
        model: a Sequential, functional (possibly nested) or subclassed model.
        plan: dict ``id(layer) -> settings``: keyword arguments of the sparse
            layer class for each layer to convert (e.g. ``schedule=...`` or
            ``kernel_quantizer=...``). Validate everything before calling:
            a failure here would leave a subclassed model half converted.
        configure: name of the :class:`SparseMixin` method that applies
            ``settings`` in place (``"configure_pruning"``,
            ``"configure_quantization"``).

    Returns:
        Sequential/functional models: a clone with the same weights (layers
        in ``plan`` become sparse-family layers built from their config plus
        ``settings``). Subclassed models: the same model, converted in place
        (plain layers are class-swapped; compile again before ``fit``).
    """
    if is_cloneable_model(model):

        def make_layer(layer):
            if id(layer) in plan:
                return _sparse_from(layer, plan[id(layer)])
            return rebuild(layer)

        return clone(model, make_layer, copy_weights)

    for layer in leaf_layers(model):
        settings = plan.get(id(layer))
        if settings is None:
            continue
        if not isinstance(layer, SparseMixin):
            layer.__class__ = sparse_class_for(type(layer))
            layer._adopt()
        getattr(layer, configure)(**settings)
    reset_compiled_functions(model)
    return model


def prune(
    model,
    sparsity=None,
    *,
    schedule=None,
    pattern="unstructured",
    scorer="magnitude",
    distribution="uniform",
    layers=None,
    strict=False,
    method=None,
    _warn_initial_masks=True,
):
    """Make the supported layers of ``model`` sparse.

    Args:
        model: a Sequential, functional (possibly nested) or subclassed model.
        sparsity: the target sparsity in ``[0, 1)``; ``None`` takes the
            schedule's target.
        schedule: when to update masks (default: ``ConstantSparsity`` at the
            target, every 100 steps from step 0). Its timing is kept and its
            target replaced by each layer's share from ``distribution``.
            tfmot schedules are accepted.
        pattern: ``"unstructured"``, ``"2:4"`` (any ``"N:M"``), ``"channel"``,
            ``ks.patterns.Block(shape)`` ...
        scorer: what to keep (``"magnitude"``; ``"random"`` with a
            schedule that prunes at step 0, e.g. ``OneShot(0)``, is a static
            sparse initialization: its masks are applied before ``prune``
            returns, survivors rescaled as :class:`ks.scorers.RandomScorer`
            says).
        distribution: ``"uniform"``, ``"global"``, ``"erk"``, ``"lamp"`` (from
            the weights ``model`` holds), or a dict ``layer name -> sparsity``
            (unlisted layers stay dense), e.g. what ``ks.allocate`` returns.
        layers: which layers to prune: a name, a regular expression, a list
            of names, a dict ``name -> sparsity`` or a callable.
        strict: raise instead of warning when a selected layer with a kernel
            has no sparse counterpart.
        method: how masks move during ``fit`` (a
            :class:`keras_sparse.methods.SparsityMethod` or alias:
            ``"gradual"``, ``"set"``, ``"rigl"``); ``None`` = gradual pruning
            with ``schedule``, ``pattern`` and ``scorer``. It is stored in each
            layer's config and run by ``ks.callbacks.Sparsity()``; whatever it
            needs (the gradient probes of RigL and of gradient scorers) is
            created now, inside the caller's distribution scope, so ``fit``
            never rebuilds the optimizer.

    Returns:
        For Sequential/functional models a new model with the same weights,
        compiled with the input's compile config (fresh optimizer state) if
        the input was compiled; a subclassed model is converted in place and returned
        (compile it again before ``fit``). Already-sparse layers are
        re-configured, never masked twice.

    Raises:
        ValueError: for an invalid argument; the model is left untouched.
            A pattern is checked on every selected layer before any is
            converted; on an unbuilt layer, a dimension its arguments do
            not give (the input size) is checked when it is built, and a
            failed build leaves the layer unbuilt.
        TypeError: for a ``model`` that is not a Keras model, or an argument
            of the wrong type (:class:`keras_sparse.checks.ArgumentTypeError`,
            also a ``ValueError``).

    Warns:
        UserWarning: once, when no selected layer can be pruned.

    Example:
    >>> model = ks.prune(model, 0.9, schedule=ks.schedules.PolynomialDecay(
    ...     0.0, 0.9, begin_step=0, end_step=2000))
    >>> model.compile("adam", "sparse_categorical_crossentropy")
    >>> model.fit(x, y, callbacks=[ks.callbacks.Pruning()])
    """
    plan, reported = _plan(model, sparsity, schedule, pattern, scorer, distribution, layers,
                           strict, method=method)
    if not plan and not reported:
        warnings.warn(_nothing_to_prune(layers, distribution), stacklevel=2)
    pruned = convert(model, plan, "configure_pruning")
    backend.track_variables(pruned)
    _apply_sparse_initialization(pruned, warn=_warn_initial_masks)
    return pruned


def _nothing_to_prune(layers, distribution):
    supported = ", ".join(sorted({cls.__name__ for cls in SPARSE_CLASS_FOR}))
    listed = ""
    if isinstance(distribution, dict) or isinstance(layers, dict):
        listed = " and listed in the per-layer sparsities"
    return (
        "ks.prune found no layer to prune: it looks for layers of the types "
        f"{supported} (their subclasses, or layers of the keras_sparse family) among the "
        f"layers selected by layers={layers!r}{listed}. Nothing is pruned."
    )


def _apply_sparse_initialization(model, warn=True):
    """Apply the step-0 masks of layers whose scorer does not depend on the
    weights or data (the random scorer: ``Scorer.data_independent``) right
    away (static sparse initialization): the returned model is then sparse
    before ``fit`` and its first step trains the sparse network."""
    chosen = [
        layer
        for layer in sparse_layers(model)
        if layer.built and layer.scorer.data_independent
    ]
    updated = _apply_initial_masks(chosen)
    if updated and warn:
        warnings.warn(
            "ks.prune applying random masks at conversion (scorer='random' with a "
            "schedule that prunes at step 0) is deprecated: make a model sparse before "
            "training with ks.prune_at_init(model, None, sparsity, scorer='random', "
            "distribution=...), whose masks stay fixed with no callback.",
            DeprecationWarning,
            stacklevel=3,
        )


def strip(model, factorized="two_layers"):
    """Replace every keras_sparse layer by plain Keras layers holding the
    effective weights (pruned entries stay exact zeros).

    The result loads with plain ``keras.saving.load_model``, with no
    keras_sparse object in its config, and is not compiled (nothing but the
    weights is shipped). Sequential and functional models are cloned (the
    input is untouched); subclassed models are stripped in place.

    Sparse (masked or quantized) layers become their Keras parent. The
    layers that are not masked copies of a Keras layer become these plain
    forms, with the same outputs:

    - ``LowRankDense`` / ``LowRankConv2D``: with
      ``factorized="two_layers"`` a ``keras.Sequential`` named after the
      layer: a ``Dense(rank)`` (or ``k x k`` ``Conv2D(rank)``) without bias,
      then a ``Dense`` (or ``1 x 1`` ``Conv2D`` for channels-first) with the
      bias and activation. It keeps the factors' size and computes exactly
      what the layer computed. With ``factorized="dense"`` one ``Dense`` /
      ``Conv2D`` holds the effective kernel ``A @ B`` (larger than the
      factors; equal outputs up to float rounding).
    - ``ColumnSampledDense``: a ``Dense`` whose kernel is zero outside the
      sampled input rows.
    - ``HeadMaskedMultiHeadAttention``: a ``MultiHeadAttention`` whose
      removed heads have zero weights (its outputs are equal; the attention
      scores of removed heads are not). ``ks.shrink`` removes them instead.

    Quantized weights are stored as their quantized float values (binary
    layers hold exactly ±1 or ±alpha; low-rank factors each quantized).
    Input quantizers have no plain Keras equivalent and are dropped, with a
    warning: the stripped model then computes on float inputs.

    What stays, with a warning naming it: in a subclassed model (stripped
    in place, so a layer cannot change into two) the low-rank and
    column-sampled layers (head-masked attention is stripped in place); in
    any model, the other keras_sparse layers that are not sparse copies of a
    Keras layer (activation-sparsity layers). Their configs name keras_sparse
    classes, so loading the file needs ``import keras_sparse``.

    Args:
        model: a Keras model.
        factorized: ``"two_layers"`` (default) or ``"dense"``: the plain
            form of a low-rank layer, as above.

    Returns:
        The stripped model (a new one unless ``model`` is subclassed).

    Example:
    >>> plain = ks.strip(model)
    >>> plain.save("model.keras")
    """
    check_model(model)
    if factorized not in FACTORIZED_FORMS:
        raise ValueError(
            f"`factorized` must be one of {FACTORIZED_FORMS}. Received: factorized={factorized!r}"
        )
    cloneable = is_cloneable_model(model)
    replaced = _cloned_leaf_ids(model) if cloneable else set()
    staying = [
        f"{layer.name} ({type(layer).__name__})" for layer in leaf_layers(model)
        if not isinstance(layer, SparseMixin)
        and type(layer).__module__.startswith("keras_sparse.")
        and not (id(layer) in replaced and has_plain_form(layer))
        and not (not cloneable and isinstance(layer, HeadMaskedMultiHeadAttention))
    ]
    if staying:
        warnings.warn(
            f"ks.strip keeps these keras_sparse layers, which have no plain Keras "
            f"equivalent here: {staying}. The stripped model's config names them, so "
            "loading it needs `import keras_sparse` (in a subclassed model, low-rank and "
            "column-sampled layers stay).",
            stacklevel=2,
        )
    dropped = [
        layer.name for layer in leaf_layers(model)
        if isinstance(layer, SparseMixin) and layer.input_quantizer is not None
    ]
    if dropped:
        warnings.warn(
            "ks.strip dropped the input quantizers of layers "
            f"{dropped}: plain Keras layers have none, so the stripped model "
            "computes on float inputs.",
            stacklevel=2,
        )
    if cloneable:

        def make_layer(layer):
            if isinstance(layer, SparseMixin):
                return layer._keras_parent.from_config(layer.plain_config())
            if has_plain_form(layer):
                return plain_form(layer, factorized)
            return rebuild(layer)

        def copy(old, new):
            if isinstance(old, SparseMixin):
                new.set_weights(old.stripped_weights())
            elif has_plain_form(old) and not has_plain_form(new):
                set_plain_weights(old, new)
            else:
                copy_weights(old, new)

        stripped = clone(model, make_layer, copy, mirror=False)
        if not stripped.compiled:
            return stripped
        # clone_model re-compiles a compiled input; a model to ship should not
        # carry a fresh optimizer (it would triple the .keras file).
        fresh = type(stripped).from_config(stripped.get_config())
        fresh.set_weights(stripped.get_weights())
        return fresh

    for layer in leaf_layers(model):
        if isinstance(layer, SparseMixin):
            _strip_in_place(layer)
        elif isinstance(layer, HeadMaskedMultiHeadAttention):
            strip_attention_in_place(layer)
    reset_compiled_functions(model)
    return model


def _cloned_leaf_ids(model):
    """Ids of the layers ``clone_model`` rebuilds one by one: those reached
    through Sequential and functional models only (a nested subclassed model
    is rebuilt from its config as a whole)."""
    ids = set()
    for layer in model.layers:
        if is_cloneable_model(layer):
            ids |= _cloned_leaf_ids(layer)
        else:
            ids.add(id(layer))
    return ids


def _strip_in_place(layer):
    values = layer.stripped_weights() if layer.built else None
    parent = layer._keras_parent
    auxiliary = layer.auxiliary_variables() if layer.built else []
    latents = {n: layer.latent_weight(n) for n in layer.sparse_weight_names} if layer.built else {}
    for variable in auxiliary:
        layer._untrack_variable(variable)
    for name in layer.sparse_weight_names:
        layer.__dict__.pop(name + "_mask", None)
        layer.__dict__.pop(name + "_probe", None)
    for attr in ("kernel_quantizer", "input_quantizer", "_quantizer_state", "_quantizer_training",
                 "gate", "_gate_state"):
        layer.__dict__.pop(attr, None)
    layer.__class__ = parent
    refresh_call_signature(layer)
    for name, variable in latents.items():
        if not isinstance(getattr(parent, name, None), property):
            object.__setattr__(layer, name, variable)
    if values is not None:
        for variable, value in zip(layer.weights, values):
            variable.assign(np.asarray(value))
