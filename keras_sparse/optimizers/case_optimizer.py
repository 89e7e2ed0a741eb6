"""CaseOptimizer: one Keras optimizer that routes each variable to the
sub-optimizer of the first predicate accepting it."""

import warnings

import keras
import numpy as np
from keras import ops

from keras_sparse.config import PACKAGE
from keras_sparse.optimizers.predicates import _serialize_predicate
from keras_sparse.optimizers.predicates import get_predicate
from keras_sparse.optimizers.wrapping import apply_variables

__all__ = ["CaseOptimizer"]


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
        trainable_variables = apply_variables(self, grads, trainable_variables)
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
            if isinstance(grad, np.ndarray):
                # torch's fused (foreach) updates need tensors; numpy
                # gradients work as on the other backends.
                grad = ops.convert_to_tensor(grad, dtype=variable.dtype)
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
