"""Optimizers for binary networks: Bop, and a case optimizer that routes each
variable to the optimizer meant for it.

A binary network has two kinds of trainable variables: the latent kernels of
binary layers (only their sign is used) and everything else (biases,
BatchNorm, float first/last layers). :class:`Bop` trains the first kind by
flipping signs; a normal optimizer trains the rest. :class:`CaseOptimizer`
puts the two together as one Keras optimizer, so ``model.compile`` and
``model.fit`` work as usual on every backend::

    optimizer = ks.optimizers.CaseOptimizer(
        (ks.optimizers.binary_kernels(model), ks.optimizers.Bop()),
        default=keras.optimizers.Adam(1e-3),
    )

A case's predicate looks at a variable only (the optimizer never sees the
layers): :func:`binary_kernels` builds one from a model, :class:`PathMatches`
selects by variable path, and ``"binary"`` (:class:`IsBinary`) accepts
variables that carry ``precision == 1`` as an attribute (Larq's convention
for the latent weights of binary layers).
"""

import math
import re
import warnings

import keras
from keras import ops

from keras_sparse.config import PACKAGE

__all__ = [
    "Bop",
    "CaseOptimizer",
    "IsBinary",
    "PathMatches",
    "binary_kernels",
    "quantized_weights",
    "get_predicate",
    "is_binary_variable",
    "variable_precision",
]


# ----------------------------------------------------------------- predicates
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
class IsBinary:
    """Predicate: the variable is marked as 1-bit (alias ``"binary"``).

    True for a variable with the attribute ``precision == 1`` (Larq's
    convention: a quantized layer marks its latent kernel with its
    ``kernel_quantizer``'s precision), false for unmarked variables (biases,
    BatchNorm, float layers). To select the binary kernels of a model
    whatever its layers mark, use :func:`binary_kernels`.
    """

    def __call__(self, variable):
        return is_binary_variable(variable)

    def get_config(self):
        return {}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __eq__(self, other):
        return type(self) is type(other)

    def __hash__(self):
        return hash(type(self).__name__)

    def __repr__(self):
        return "IsBinary()"


@keras.saving.register_keras_serializable(package=PACKAGE, name="PathMatches")
class PathMatches:
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

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __eq__(self, other):
        return type(self) is type(other) and self.pattern == other.pattern

    def __hash__(self):
        return hash((type(self).__name__, self.pattern))

    def __repr__(self):
        return f"PathMatches({self.pattern!r})"


_PREDICATES = {"binary": IsBinary}


def quantized_weights(model, bits=1):
    """``(layer, name, variable)`` for every latent weight of ``model`` whose
    ``kernel_quantizer`` has ``precision == bits``, in a stable order."""
    from keras_sparse.layers.base import SparseMixin
    from keras_sparse.utils import walk_layers

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
    tails = []
    for _, _, variable in quantized_weights(model, bits=1):
        path = getattr(variable, "path", None) or variable.name
        tail = path.split("/", 1)[1] if "/" in path else path
        tails.append(re.escape(tail))
    if not tails:
        raise ValueError(
            "The model has no built layer with a 1-bit kernel_quantizer. "
            f"Received: model={getattr(model, 'name', model)!r}"
        )
    return PathMatches("(^|/)(" + "|".join(tails) + ")$")


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


# ------------------------------------------------------------------------ Bop
def _check_positive(name, value, allow_zero=False, upper=None):
    bad = isinstance(value, bool) or not isinstance(value, (int, float))
    if not bad:
        bad = not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero)
        bad = bad or (upper is not None and value > upper)
    if bad:
        bound = ">= 0" if allow_zero else "> 0"
        limit = f" and <= {upper}" if upper is not None else ""
        raise ValueError(
            f"`{name}` must be a finite number {bound}{limit}. Received: {name}={value!r}"
        )


@keras.saving.register_keras_serializable(package=PACKAGE, name="Bop")
class Bop(keras.optimizers.Optimizer):
    """Binary optimizer, Bop (Helwegen et al. 2019, "Latent Weights Do Not
    Exist: Rethinking Binarized Neural Network Optimization").

    Bop keeps an exponential moving average :math:`m` of each binary
    weight's gradient and flips the weight's sign when the average is strong
    and points the same way as the weight (so a gradient step would move it
    across zero):

    .. math::
        m_t = (1 - \\gamma)\\, m_{t-1} + \\gamma\\, g_t

        w_t = \\begin{cases} -w_{t-1} & |m_t| > \\tau \\text{ and }
              \\operatorname{sign}(m_t) = \\operatorname{sign}(w_{t-1}) \\\\
              w_{t-1} & \\text{otherwise} \\end{cases}

    The flip keeps the magnitude, so a binary weight stays exactly where its
    quantizer reads it (``sign(w)``; ``mean|w|`` for magnitude-aware
    quantizers) and nothing else changes. An exact zero (a pruned position)
    stays zero. Bop is meant for binary latent weights only: use it inside
    :class:`CaseOptimizer` so the other variables get a normal optimizer.

    Args:
        threshold: :math:`\\tau`, the flip threshold (>= 0).
        gamma: :math:`\\gamma`, the adaptivity rate in (0, 1], or a
            ``keras.optimizers.schedules.LearningRateSchedule`` (it plays the
            part of the learning rate: ``optimizer.learning_rate`` is
            :math:`\\gamma`).
        name: the optimizer's name.
        **kwargs: other ``keras.optimizers.Optimizer`` arguments
            (``clipvalue``, ``gradient_accumulation_steps``, ...).

    Example:
    >>> optimizer = ks.optimizers.CaseOptimizer(
    ...     (ks.optimizers.binary_kernels(model), ks.optimizers.Bop(1e-8, 1e-4)),
    ...     default=keras.optimizers.Adam(1e-3))
    """

    def __init__(self, threshold=1e-8, gamma=1e-4, name="bop", **kwargs):
        _check_positive("threshold", threshold, allow_zero=True)
        if isinstance(gamma, (int, float)) and not isinstance(gamma, bool):
            _check_positive("gamma", gamma, upper=1.0)
            gamma = float(gamma)
        elif not callable(gamma):
            raise ValueError(
                "`gamma` must be a number in (0, 1] or a LearningRateSchedule. "
                f"Received: gamma={gamma!r}"
            )
        if kwargs.get("weight_decay"):
            raise ValueError(
                "Bop flips signs and has no use for weight decay. "
                f"Received: weight_decay={kwargs['weight_decay']!r}"
            )
        kwargs.pop("weight_decay", None)
        super().__init__(learning_rate=gamma, name=name, **kwargs)
        self.threshold = float(threshold)

    @property
    def gamma(self):
        """The current adaptivity rate :math:`\\gamma` (``learning_rate``)."""
        return self.learning_rate

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self._momentums = [
            self.add_variable_from_reference(variable, name="momentum")
            for variable in variables
        ]

    def update_step(self, gradient, variable, learning_rate):
        dtype = variable.dtype
        gamma = ops.cast(learning_rate, dtype)
        gradient = ops.cast(gradient, dtype)
        momentum_var = self._momentums[self._get_variable_index(variable)]
        momentum = ops.convert_to_tensor(momentum_var)
        weight = ops.convert_to_tensor(variable)
        # (1 - gamma) m + gamma g, written as m + gamma (g - m).
        momentum = ops.add(momentum, ops.multiply(gamma, ops.subtract(gradient, momentum)))
        self.assign(momentum_var, momentum)
        flip = ops.logical_and(
            ops.greater(ops.abs(momentum), ops.cast(self.threshold, dtype)),
            ops.equal(ops.sign(momentum), ops.sign(weight)),
        )
        self.assign(variable, ops.where(flip, ops.negative(weight), weight))

    def get_config(self):
        config = super().get_config()
        config["gamma"] = config.pop("learning_rate")
        config["threshold"] = self.threshold
        config.pop("weight_decay", None)
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        if "learning_rate" in config:
            config.setdefault("gamma", config.pop("learning_rate"))
        if isinstance(config.get("gamma"), dict):
            config["gamma"] = keras.saving.deserialize_keras_object(
                config["gamma"], custom_objects=custom_objects
            )
        return cls(**config)


# -------------------------------------------------------------- CaseOptimizer
@keras.saving.register_keras_serializable(package=PACKAGE, name="CaseOptimizer")
class CaseOptimizer(keras.optimizers.Optimizer):
    """One Keras optimizer made of several: each trainable variable goes to
    the optimizer of the first case whose predicate accepts it, or to
    ``default``.

    The typical use is a binary network: the latent kernels of binary layers
    to :class:`Bop` (select them with :func:`binary_kernels`), everything
    else (biases, BatchNorm, float layers) to Adam. Routing is decided once, when the optimizer is built on the model's
    variables; a case that matches no variable raises a warning (a binary
    layer that silently trains in float is the failure this guards against).
    Works in ``model.fit`` on every backend (on JAX through
    ``stateless_apply``), with mixed precision, and saves in ``.keras``
    files (the sub-optimizers' state included).

    ``learning_rate`` reads and sets the *default* optimizer's, so
    ``ReduceLROnPlateau`` and ``LearningRateScheduler`` act on it;
    ``iterations`` counts the steps of the case optimizer itself.

    Args:
        *cases: ``(predicate, optimizer)`` pairs. A predicate is a
            :class:`PathMatches` (what :func:`binary_kernels` returns),
            ``"binary"`` (:class:`IsBinary`), or any callable
            ``variable -> bool``.
        default: the optimizer for variables no case accepts (required).
        loss_scale_factor: a constant loss scale, passed to every
            sub-optimizer (they must not set their own).
        name: the optimizer's name.

    Example:
    >>> model.compile(
    ...     optimizer=ks.optimizers.CaseOptimizer(
    ...         (ks.optimizers.binary_kernels(model), ks.optimizers.Bop()),
    ...         default=keras.optimizers.Adam(1e-3)),
    ...     loss="sparse_categorical_crossentropy")
    """

    def __init__(self, *cases, default=None, loss_scale_factor=None, name=None):
        parsed = []
        for i, case in enumerate(cases):
            if not isinstance(case, (tuple, list)) or len(case) != 2:
                raise ValueError(
                    "Each case must be a (predicate, optimizer) pair. "
                    f"Received: cases[{i}]={case!r}"
                )
            parsed.append((get_predicate(case[0]), _check_optimizer(case[1], f"cases[{i}]")))
        if default is None:
            raise ValueError(
                "CaseOptimizer needs a `default` optimizer for the variables no "
                "case accepts. Received: default=None"
            )
        default = _check_optimizer(default, "default")
        optimizers = [optimizer for _, optimizer in parsed] + [default]
        if len({id(o) for o in optimizers}) != len(optimizers):
            raise ValueError(
                "Each case needs its own optimizer instance (an optimizer keeps "
                "per-variable state). Received the same optimizer twice."
            )
        for optimizer in optimizers:
            if optimizer.loss_scale_factor is not None and (
                optimizer.loss_scale_factor != loss_scale_factor
            ):
                raise ValueError(
                    "Set `loss_scale_factor` on the CaseOptimizer, not on a "
                    f"sub-optimizer. Received: {optimizer.name}.loss_scale_factor="
                    f"{optimizer.loss_scale_factor!r}"
                )
        super().__init__(learning_rate=0.0, name=name)
        self._predicates = [predicate for predicate, _ in parsed]
        self._optimizers = optimizers
        self._route = {}
        self.loss_scale_factor = loss_scale_factor

    # --------------------------------------------------------------- access
    @property
    def cases(self):
        """The ``(predicate, optimizer)`` pairs, in order."""
        return list(zip(self._predicates, self._optimizers[:-1]))

    @property
    def default(self):
        """The optimizer for variables no case accepts."""
        return self._optimizers[-1]

    @property
    def optimizers(self):
        """Every sub-optimizer, cases first, default last."""
        return list(self._optimizers)

    def optimizer_for(self, variable):
        """The sub-optimizer that trains ``variable`` (decided at build)."""
        if not self.built:
            return self._optimizers[self._choose(variable)]
        try:
            return self._optimizers[self._route[self._var_key(variable)]]
        except KeyError:
            raise ValueError(
                f"Variable {getattr(variable, 'path', variable)!r} is not one "
                "this optimizer was built with."
            ) from None

    def variables_of(self, optimizer):
        """The model variables routed to ``optimizer`` (after build)."""
        index = next(i for i, o in enumerate(self._optimizers) if o is optimizer)
        return [
            v for v in self._trainable_variables
            if self._route[self._var_key(v)] == index
        ]

    @property
    def learning_rate(self):
        return self.default.learning_rate

    @learning_rate.setter
    def learning_rate(self, value):
        self.default.learning_rate = value

    @property
    def loss_scale_factor(self):
        return getattr(self, "_loss_scale_factor", None)

    @loss_scale_factor.setter
    def loss_scale_factor(self, value):
        # One scale for the whole step: the loss is scaled once (by this
        # optimizer) and each sub-optimizer unscales its own gradients.
        self._loss_scale_factor = value
        for optimizer in getattr(self, "_optimizers", ()):
            optimizer.loss_scale_factor = value

    @property
    def variables(self):
        found = list(self._variables)
        for optimizer in self._optimizers:
            found.extend(optimizer.variables)
        return found

    # ---------------------------------------------------------------- build
    def _choose(self, variable):
        for i, predicate in enumerate(self._predicates):
            if predicate(variable):
                return i
        return len(self._optimizers) - 1

    def build(self, variables):
        if self.built:
            return
        variables = list(variables)
        groups = [[] for _ in self._optimizers]
        route = {}
        for variable in variables:
            index = self._choose(variable)
            route[self._var_key(variable)] = index
            groups[index].append(variable)
        for optimizer, group in zip(self._optimizers, groups):
            if optimizer.built:
                raise ValueError(
                    f"Sub-optimizer {optimizer.name!r} is already built; give "
                    "CaseOptimizer fresh optimizer instances."
                )
            optimizer.build(group)
        for predicate, group in zip(self._predicates, groups):
            if variables and not group:
                warnings.warn(
                    f"CaseOptimizer: the predicate {predicate!r} matched none of "
                    f"the {len(variables)} trainable variables; they all go to "
                    "the other cases or the default optimizer.",
                    stacklevel=2,
                )
        self._route = route
        super().build(variables)

    # ---------------------------------------------------------------- apply
    def apply(self, grads, trainable_variables=None):
        grads = list(grads)
        if not grads:
            return
        if trainable_variables is None:
            if not self.built:
                raise ValueError(
                    "When passing `grads` without `variables`, the optimizer "
                    "must already be built on a list of variables. Call "
                    "`optimizer.build(trainable_variables)` first."
                )
            trainable_variables = self._trainable_variables
        else:
            trainable_variables = list(trainable_variables)
            if not self.built:
                with keras.name_scope(self.name, caller=self):
                    self.build(trainable_variables)
                self.built = True
        if len(grads) != len(trainable_variables):
            raise ValueError(
                f"Received {len(grads)} gradients for {len(trainable_variables)} "
                "variables; they must match one to one."
            )
        groups = [([], []) for _ in self._optimizers]
        for grad, variable in zip(grads, trainable_variables):
            try:
                index = self._route[self._var_key(variable)]
            except KeyError:
                raise ValueError(
                    f"Unknown variable: {getattr(variable, 'path', variable)!r}. "
                    "This optimizer can only update the variables it was built "
                    "with; create a new optimizer for new variables."
                ) from None
            groups[index][0].append(grad)
            groups[index][1].append(variable)
        for optimizer, (sub_grads, sub_vars) in zip(self._optimizers, groups):
            # A sub-optimizer raises when every gradient it gets is None.
            if any(g is not None for g in sub_grads):
                optimizer.apply(sub_grads, sub_vars)
        self._iterations.assign_add(1)

    def finalize_variable_values(self, var_list):
        groups = [[] for _ in self._optimizers]
        for variable in var_list:
            index = self._route.get(self._var_key(variable))
            if index is not None:
                groups[index].append(variable)
        for optimizer, group in zip(self._optimizers, groups):
            if group:
                optimizer.finalize_variable_values(group)

    def set_weights(self, weights):
        if not self.built:
            raise ValueError(
                "Build the optimizer (`optimizer.build(trainable_variables)`) "
                "before calling `set_weights()`."
            )
        variables = self.variables
        if len(weights) != len(variables):
            raise ValueError(
                f"Expected {len(variables)} weights. Received {len(weights)}."
            )
        for variable, weight in zip(variables, weights):
            variable.assign(weight)

    # --------------------------------------------------------------- config
    def get_config(self):
        return {
            "name": self.name,
            "cases": [
                [_serialize_predicate(p), keras.saving.serialize_keras_object(o)]
                for p, o in self.cases
            ],
            "default": keras.saving.serialize_keras_object(self.default),
            "loss_scale_factor": self.loss_scale_factor,
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        cases = [
            (
                keras.saving.deserialize_keras_object(p, custom_objects=custom_objects)
                if isinstance(p, dict) else p,
                keras.saving.deserialize_keras_object(o, custom_objects=custom_objects),
            )
            for p, o in config.pop("cases", [])
        ]
        default = keras.saving.deserialize_keras_object(
            config.pop("default"), custom_objects=custom_objects
        )
        return cls(*cases, default=default, **config)


def _check_optimizer(optimizer, where):
    if isinstance(optimizer, (str, dict)):
        try:
            optimizer = keras.optimizers.get(optimizer)
        except ValueError:
            raise ValueError(
                f"Could not interpret an optimizer. Received: {where}={optimizer!r}"
            ) from None
    if not isinstance(optimizer, keras.optimizers.Optimizer):
        raise ValueError(
            f"Expected a keras.optimizers.Optimizer. Received: {where}={optimizer!r}"
        )
    if isinstance(optimizer, (CaseOptimizer, keras.optimizers.LossScaleOptimizer)):
        raise ValueError(
            "A CaseOptimizer's sub-optimizers must be plain optimizers (wrap the "
            f"CaseOptimizer instead). Received: {where}={optimizer!r}"
        )
    return optimizer
