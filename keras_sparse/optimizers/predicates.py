"""Variable predicates: which optimizer of a :class:`CaseOptimizer` trains
a variable (by its ``precision`` mark or its path), and the helpers that
find a model's quantized latent weights."""

import re

import keras

from keras_sparse.checks import check_int
from keras_sparse.checks import check_model
from keras_sparse.config import PACKAGE
from keras_sparse.config import ConfigObject

__all__ = [
    "IsBinary",
    "PathMatches",
    "binary_kernels",
    "quantized_weights",
    "get_predicate",
    "is_binary_variable",
    "variable_precision",
]


def variable_precision(variable):
    """Bits per weight the forward pass uses for ``variable``, or ``None``
    when it is used at full precision.

    A quantized layer of the family marks each latent weight it quantizes
    with the quantizer's ``precision`` (an attribute of the variable, read
    here and by the optimizers; ``None`` or absent means float).
    """
    precision = getattr(variable, "precision", None)
    return None if precision is None else int(precision)


def is_binary_variable(variable):
    """Whether ``variable`` is the latent weight of a 1-bit quantizer."""
    return variable_precision(variable) == 1


@keras.saving.register_keras_serializable(package=PACKAGE, name="IsBinary")
class IsBinary(ConfigObject):
    """Predicate: the variable is marked as 1-bit (alias ``"binary"``).

    True for a variable with the attribute ``precision == 1`` (Larq's
    convention: a quantized layer marks its latent kernel with its
    ``kernel_quantizer``'s precision), false for unmarked variables (biases,
    BatchNorm, float layers). To select the binary kernels of a model
    whatever its layers mark, use :func:`binary_kernels`.
    """

    def __call__(self, variable):
        return is_binary_variable(variable)


@keras.saving.register_keras_serializable(package=PACKAGE, name="PathMatches")
class PathMatches(ConfigObject):
    """Predicate: the variable's ``path`` (e.g. ``"sequential/dense_1/kernel"``)
    matches a regular expression (``re.search``).

    The path starts with the model's name, which can change when a model is
    rebuilt or reloaded (``sequential`` -> ``sequential_1``): match on the
    layer part, e.g. ``r"(^|/)dense_1/kernel$"``, not on ``"^sequential/"``.

    Args:
        pattern: a regular expression.

    Example:
    >>> ks.optimizers.PathMatches(r"(^|/)encoder/.*/kernel$")
    """

    def __init__(self, pattern):
        if not isinstance(pattern, str):
            raise ValueError(
                f"`pattern` must be a regular expression string. Received: pattern={pattern!r}"
            )
        try:
            self._regex = re.compile(pattern)
        except re.error as error:
            raise ValueError(
                f"`pattern` is not a valid regular expression ({error}). "
                f"Received: pattern={pattern!r}"
            ) from None
        self.pattern = pattern

    def __call__(self, variable):
        path = getattr(variable, "path", None) or getattr(variable, "name", "")
        return self._regex.search(path) is not None

    def get_config(self):
        return {"pattern": self.pattern}

    def __repr__(self):
        return f"PathMatches({self.pattern!r})"


@keras.saving.register_keras_serializable(package=PACKAGE, name="IsKernel")
class IsKernel(ConfigObject):
    """Predicate: the variable is a kernel (its name ends in ``kernel``:
    ``kernel``, ``depthwise_kernel``, ``pointwise_kernel``) of rank >= 2.
    Biases, BatchNorm parameters and gradient probes are not kernels.

    Example:
    >>> ks.optimizers.IsKernel()(model.layers[0].kernel)
    True
    """

    def __call__(self, variable):
        name = getattr(variable, "name", "") or ""
        return name.endswith("kernel") and len(getattr(variable, "shape", ())) >= 2

    def __repr__(self):
        return "IsKernel()"


_PREDICATES = {"binary": IsBinary, "kernels": IsKernel}


def quantized_weights(model, bits=1):
    """``(layer, name, variable)`` for every latent weight of ``model`` whose
    ``kernel_quantizer`` has ``precision == bits``, in a stable order."""
    from keras_sparse.layers.base import SparseMixin
    from keras_sparse.utils import walk_layers

    check_model(model)
    bits = check_int(bits, "bits", minimum=1)
    found = []
    for layer in walk_layers(model):
        quantizer = getattr(layer, "kernel_quantizer", None)
        if not isinstance(layer, SparseMixin) or quantizer is None or not layer.built:
            continue
        if int(quantizer.precision) != bits:
            continue
        for name in layer.sparse_weight_names:
            found.append((layer, name, layer.latent_weight(name)))
    return found


def _path_in_model(variable, model):
    """The variable's path without the model's name in front (a Sequential
    model's variables start with it, a functional model's do not), so a
    predicate still matches after a reload renames the model."""
    path = getattr(variable, "path", None) or variable.name
    prefix = f"{model.name}/"
    return path[len(prefix):] if path.startswith(prefix) else path


def binary_kernels(model):
    """A :class:`PathMatches` predicate accepting exactly the latent weights
    of ``model``'s layers with a 1-bit ``kernel_quantizer``.

    The expression matches each variable's path without its leading model
    name, so it keeps working after the model is saved and reloaded (or
    renamed). Call it once the model is built.

    Example:
    >>> optimizer = ks.optimizers.CaseOptimizer(
    ...     (ks.optimizers.binary_kernels(model), ks.optimizers.Bop()),
    ...     default=keras.optimizers.Adam(1e-3))
    """
    check_model(model)
    tails = []
    for _, _, variable in quantized_weights(model, bits=1):
        tails.append(re.escape(_path_in_model(variable, model)))
    if not tails:
        raise ValueError(
            "The model has no built layer with a 1-bit kernel_quantizer. "
            f"Received: model={getattr(model, 'name', model)!r}"
        )
    return PathMatches("(^|/)(" + "|".join(tails) + ")$")


def kernels(model, exclude=None):
    """A :class:`PathMatches` predicate accepting the kernels of ``model``'s
    built layers, except those of the layers named in ``exclude``.

    The usual ``exclude`` is the output layer: a group penalty on its units
    would remove classes. Matches paths without the leading model name, so
    the predicate survives a save and reload.

    Args:
        model: a built Keras model.
        exclude: a layer name or a list of layer names to leave out.

    Example:
    >>> optimizer = ks.optimizers.Proximal(
    ...     "adam", "group_lasso",
    ...     variables=ks.optimizers.kernels(model, exclude=model.layers[-1].name))
    """
    check_model(model)
    if exclude is None:
        exclude = []
    elif isinstance(exclude, str):
        exclude = [exclude]
    if not isinstance(exclude, (list, tuple)) or not all(isinstance(e, str) for e in exclude):
        raise ValueError(
            "`exclude` must be a layer name or a list of layer names. "
            f"Received: exclude={exclude!r}"
        )
    from keras_sparse.utils import walk_layers

    names = {layer.name for layer in walk_layers(model)}
    unknown = [e for e in exclude if e not in names]
    if unknown:
        raise ValueError(
            f"`exclude` names layers the model does not have: {unknown}. "
            f"Received: exclude={exclude!r}"
        )
    is_kernel = IsKernel()

    def tail(variable):
        return re.escape(_path_in_model(variable, model))

    left_out = {
        tail(v) for layer in walk_layers(model) if layer.name in exclude
        for v in layer.trainable_weights
    }
    tails = {
        tail(v) for layer in walk_layers(model) if layer.built
        for v in layer.trainable_weights if is_kernel(v)
    } - left_out
    if not tails:
        raise ValueError(
            "The model has no built layer with a kernel outside `exclude`. "
            f"Received: model={getattr(model, 'name', model)!r}, exclude={exclude!r}"
        )
    return PathMatches("(^|/)(" + "|".join(sorted(tails)) + ")$")


def get_predicate(identifier):
    """Resolve a variable predicate: ``"binary"``, a serialized predicate, or
    any callable ``variable -> bool``.

    A plain function works in memory; to save the model in ``.keras`` it must
    be registered with ``keras.saving.register_keras_serializable`` (lambdas
    cannot be saved).
    """
    if isinstance(identifier, str):
        key = identifier.strip().lower()
        if key in _PREDICATES:
            return _PREDICATES[key]()
        raise ValueError(
            f"Unknown predicate. Expected one of {sorted(_PREDICATES)} or a "
            f"callable `variable -> bool`. Received: predicate={identifier!r}"
        )
    if isinstance(identifier, dict):
        identifier = keras.saving.deserialize_keras_object(identifier)
    if callable(identifier):
        return identifier
    raise ValueError(
        "A predicate must be a callable `variable -> bool` or one of "
        f"{sorted(_PREDICATES)}. Received: predicate={identifier!r}"
    )


def _serialize_predicate(predicate):
    if getattr(predicate, "__name__", None) == "<lambda>":
        raise ValueError(
            "A CaseOptimizer with a lambda predicate cannot be serialized. Use "
            "'binary', ks.optimizers.PathMatches(...) or a function registered "
            "with keras.saving.register_keras_serializable. "
            f"Received: predicate={predicate!r}"
        )
    return keras.saving.serialize_keras_object(predicate)
