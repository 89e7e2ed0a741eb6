"""Floor 4: ``ks.gate`` gives the layers of an existing model a learned
sparsity gate (:mod:`keras_sparse.gates`): hard-concrete L0 gates or soft
thresholds, trained by the ordinary ``model.fit`` with no pruning callback.

It uses the conversion machinery of ``ks.prune`` and ``ks.quantize``
(:func:`keras_sparse.convert.convert`), so the three compose: a gated layer
keeps its masks and quantizers, and pruning or quantizing a gated model
keeps its gates and what they learned.
"""

import warnings

from keras_sparse import backend
from keras_sparse import gates as gates_lib
from keras_sparse.checks import check_bool
from keras_sparse.checks import check_model
from keras_sparse.convert import convert
from keras_sparse.ops.masks import check_sparsity
from keras_sparse.selection import select_layers
from keras_sparse.selection import split_convertible
from keras_sparse.selection import warn_or_raise_unsupported

__all__ = ["gate"]


def gate(model, gate, sparsity=None, *, layers=None, strict=False):
    """Give the supported layers of ``model`` a learned sparsity gate.

    Each converted layer computes with ``gate(latent)`` (times its mask and
    through its quantizer, if it has them). With a target ``sparsity`` the
    gate's Lagrangian holds each layer's expected sparsity at it (after a
    warm-up, see :class:`keras_sparse.gates.Gate`); without one the gate's
    own regularization decides. No callback is needed: ``fit`` trains the
    gates with the weights. ``ks.strip`` afterwards stores the
    deterministic gate's exact zeros in a plain model and ``ks.report``
    counts them.

    Args:
        model: a Sequential, functional (possibly nested) or subclassed model.
        gate: a :class:`keras_sparse.gates.Gate` or alias: ``"l0"``
            (:class:`~keras_sparse.gates.HardConcrete`) or ``"str"``
            (:class:`~keras_sparse.gates.SoftThreshold`).
        sparsity: the target sparsity of every gated layer, in ``[0, 1)``;
            ``None`` keeps the gate's own (``None`` there too: learned).
        layers: which layers to gate: a name, a regular expression, a list
            of names, a callable, or a dict ``name -> sparsity`` (each layer
            its own target; unlisted layers are left as they are).
        strict: raise instead of warning when a selected layer with a
            kernel has no counterpart in the layer family.

    Returns:
        For Sequential/functional models a new model with the same weights
        (compiled with the input's compile config if the input was
        compiled); a subclassed model is converted in place and returned
        (compile it again before ``fit``).

    Raises:
        ValueError: for an invalid argument; the model is left untouched.

    Example:
    >>> model = ks.gate(model, "l0", 0.9)
    >>> model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    >>> model.fit(x, y, epochs=30)
    >>> ks.report(model)              # counts the gates' exact zeros
    >>> plain = ks.strip(model)       # plain Dense layers holding them
    """
    check_model(model)
    resolved = gates_lib.get(gate, "gate")
    if resolved is None:
        raise ValueError(f"Give a gate (e.g. 'l0' or 'str'). Received: gate={gate!r}")
    if sparsity is not None:
        sparsity = check_sparsity(sparsity)
    check_bool(strict, "strict")
    targets = {}
    if isinstance(layers, dict):
        targets = {name: check_sparsity(value) for name, value in layers.items()}
    convertible, unsupported = split_convertible(model, select_layers(model, layers))
    warn_or_raise_unsupported(unsupported, strict, "no counterpart that can be gated", "gate")
    plan = {}
    for layer in convertible:
        target = targets.get(layer.name, sparsity)
        chosen = resolved if target is None else resolved.with_sparsity(target)
        plan[id(layer)] = {"gate": chosen}
    if not plan:
        warnings.warn("ks.gate found no layer to gate.", stacklevel=2)
    gated = convert(model, plan, "configure_gate")
    backend.track_variables(gated)
    return gated
