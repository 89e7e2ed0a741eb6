"""Proximal: any Keras optimizer followed by the proximal step of a sparsity
penalty, so L1 and group lasso give exact zeros inside ``model.fit``."""

import keras
import numpy as np
from keras import ops

from keras_sparse import backend
from keras_sparse.checks import check_bool
from keras_sparse.checks import check_number
from keras_sparse.config import PACKAGE
from keras_sparse.ops.prox import group_axes
from keras_sparse.optimizers.predicates import _serialize_predicate
from keras_sparse.optimizers.predicates import get_predicate
from keras_sparse.optimizers.wrapping import apply_variables

__all__ = ["Proximal"]


def _penalty(identifier):
    # Imported here: regularizers sit beside the optimizers on floor 3 and
    # import the layers, which the optimizers package does not need.
    from keras_sparse import regularizers

    if isinstance(identifier, dict):
        identifier = keras.saving.deserialize_keras_object(identifier)
    if isinstance(identifier, str):
        key = identifier.strip().lower()
        if key not in ("l1", "group_lasso"):
            raise ValueError(
                "`penalty` must be 'l1', 'group_lasso' or a regularizer with a "
                f"`prox` method. Received: penalty={identifier!r}"
            )
        identifier = regularizers.get(key)
    if type(identifier) is keras.regularizers.L1:
        identifier = regularizers.L1(float(identifier.l1))
    for method in ("prox", "zero_count"):
        if not callable(getattr(identifier, method, None)):
            raise ValueError(
                "`penalty` must be 'l1', 'group_lasso' or a regularizer with "
                f"`prox` and `zero_count` methods (ks.regularizers.L1, "
                f"ks.regularizers.GroupLasso). Received: penalty={identifier!r}"
            )
    return identifier


def _check_inner(optimizer):
    if isinstance(optimizer, (str, dict)):
        try:
            optimizer = keras.optimizers.get(optimizer)
        except ValueError:
            raise ValueError(
                f"Could not interpret an optimizer. Received: optimizer={optimizer!r}"
            ) from None
    if not isinstance(optimizer, keras.optimizers.Optimizer):
        raise ValueError(
            f"Expected a keras.optimizers.Optimizer. Received: optimizer={optimizer!r}"
        )
    if isinstance(optimizer, Proximal):
        raise ValueError(
            "The optimizer is already a Proximal optimizer; give it one penalty "
            f"instead of wrapping it twice. Received: optimizer={optimizer!r}"
        )
    if optimizer.built:
        raise ValueError(
            f"Give Proximal a fresh optimizer (not yet built). Received: "
            f"optimizer={optimizer.name!r}, already built."
        )
    return optimizer


@keras.saving.register_keras_serializable(package=PACKAGE, name="Proximal")
class Proximal(keras.optimizers.Optimizer):
    """Any Keras optimizer, then the proximal step of a sparsity penalty.

    Proximal gradient descent (Parikh & Boyd 2014; for group lasso, Yuan &
    Lin 2006): after ``optimizer`` updates the weights, every selected
    variable :math:`w` is replaced by

    .. math::
        w \\leftarrow \\operatorname{prox}_{\\eta_t \\lambda \\Omega}(w)

    where :math:`\\eta_t` is the optimizer's current learning rate,
    :math:`\\lambda` the coefficient and :math:`\\Omega` the penalty: L1
    (soft thresholding, single weights become exactly 0) or group lasso
    (block soft thresholding, whole units, filters or input features become
    exactly 0). Unlike the same penalty added to the loss, which with Adam
    leaves weights near but not at zero, no threshold has to be chosen
    afterwards. With an adaptive optimizer (Adam, RMSprop) the step is the
    same prox scaled by the learning rate only (not by the per-weight
    preconditioner): :math:`\\lambda` is then in units of the normalised
    update, so values near 0.01–1 matter whatever the gradient scale.

    ``coefficient`` (:math:`\\lambda`) is a variable of this optimizer, so
    it is saved with the optimizer state (``.keras`` files, checkpoints) and a
    change between steps acts inside the compiled train step on every
    backend: :class:`ks.callbacks.SparsityController` steers it to a target
    sparsity, so no :math:`\\lambda` has to be tuned by hand.

    With ``gradient_accumulation_steps``, the prox runs on update steps only.
    ``learning_rate`` and ``iterations`` are the wrapped optimizer's, so
    learning-rate callbacks act on it.

    Args:
        optimizer: the optimizer making the gradient step (an instance not
            yet built, or a name such as ``"adam"``).
        penalty: ``"l1"``, ``"group_lasso"`` (units) or a
            :class:`ks.regularizers.L1` / :class:`ks.regularizers.GroupLasso`
            instance (its ``groups`` decide what becomes zero).
        l: the initial coefficient :math:`\\lambda >= 0`; ``None`` takes the
            penalty's own (``l1`` / ``l``).
        variables: which trainable variables the penalty acts on: a
            predicate ``variable -> bool`` (see
            :func:`ks.optimizers.kernels`, which can leave out the output
            layer), ``"kernels"`` (every kernel of rank >= 2; the default).
        name: the optimizer's name.

    Example:
    >>> model.compile(
    ...     optimizer=ks.optimizers.Proximal("adam", "group_lasso", l=0.05),
    ...     loss="sparse_categorical_crossentropy")
    >>> model.fit(x, y, epochs=5)   # some units of every kernel are exactly 0
    """

    def __init__(self, optimizer="adam", penalty="l1", l=None, variables=None,
                 precondition=True, name=None):
        optimizer = _check_inner(optimizer)
        penalty = _penalty(penalty)
        if l is None:
            l = float(penalty.l)
        l = check_number(l, "l", minimum=0.0)
        predicate = get_predicate("kernels" if variables is None else variables)
        super().__init__(learning_rate=0.0, name=name)
        self.inner_optimizer = optimizer
        self.penalty = penalty
        self.initial_coefficient = l
        self.variable_predicate = predicate
        self.precondition = check_bool(precondition, "precondition")
        self._penalized_indices = ()
        self._second_moments = ()

    # --------------------------------------------------------------- access
    @property
    def learning_rate(self):
        return self.inner_optimizer.learning_rate

    @learning_rate.setter
    def learning_rate(self, value):
        if getattr(self, "inner_optimizer", None) is not None:
            self.inner_optimizer.learning_rate = value

    @property
    def iterations(self):
        return self.inner_optimizer.iterations

    @property
    def loss_scale_factor(self):
        inner = getattr(self, "inner_optimizer", None)
        return None if inner is None else inner.loss_scale_factor

    @loss_scale_factor.setter
    def loss_scale_factor(self, value):
        # The wrapped optimizer scales and unscales; Keras' base __init__
        # sets this to None before the wrapped optimizer exists.
        if getattr(self, "inner_optimizer", None) is not None:
            self.inner_optimizer.loss_scale_factor = value

    @property
    def variables(self):
        return list(self._variables) + list(self.inner_optimizer.variables)

    @property
    def penalized_variables(self):
        """The model variables the proximal step acts on (after build)."""
        return [self._trainable_variables[i] for i in self._penalized_indices]

    def sparsity(self):
        """Fraction of exactly-zero weights (L1) or groups (group lasso)
        over the penalized variables, read now (a Python float)."""
        zeros = total = 0
        for variable in self.penalized_variables:
            z, n = self.penalty.zero_count(backend.host_read(variable))
            zeros += z
            total += n
        return zeros / total if total else 0.0

    def hold_support(self, supports=True):
        """Fix which penalized weights may be nonzero in every later step.

        Args:
            supports: ``True``: the weights nonzero now (the exact zeros stay
                zero: a fine-tune of the sparse model, usually with the
                coefficient set to 0); ``False``: every weight may move again;
                or a list of bool arrays, one per penalized variable
                (:attr:`penalized_variables` order).
        """
        variables = self.penalized_variables
        if supports is True:
            supports = [backend.host_read(v) != 0 for v in variables]
        elif supports is False:
            supports = [np.ones(v.shape, bool) for v in variables]
        elif not isinstance(supports, (list, tuple)) or len(supports) != len(variables):
            raise ValueError(
                "`supports` must be True, False or one bool array per penalized "
                f"variable ({len(variables)}). Received: supports={supports!r}"
            )
        arrays = []
        for variable, support in zip(variables, supports):
            support = np.asarray(support, bool)
            if support.shape != tuple(variable.shape):
                raise ValueError(
                    f"A support for {variable.path!r} must have shape "
                    f"{tuple(variable.shape)}. Received: shape={support.shape}"
                )
            arrays.append(support)
        for holder, support in zip(self._supports, arrays):
            backend.host_assign(holder, support)

    @property
    def holds_support(self):
        """Whether some weight is held at zero by :meth:`hold_support`."""
        return any(not backend.host_read(s).all() for s in self._supports)

    def penalized_values(self):
        """Host (numpy) values of the :attr:`penalized_variables` and, for
        each, ``|w|`` of every weight (L1) or the L2 norm of every group
        (group lasso), flattened: a zero is an exact zero.

        Returns:
            ``(values, norms)``, two lists in :attr:`penalized_variables`
            order.
        """
        groups = getattr(self.penalty, "groups", None)
        values = [np.asarray(backend.host_read(v)) for v in self.penalized_variables]
        if groups is None:
            norms = [np.abs(v).reshape(-1) for v in values]
        else:
            norms = [
                np.sqrt(np.square(v).sum(axis=group_axes(v.ndim, groups))).reshape(-1)
                for v in values
            ]
        return values, norms

    # ---------------------------------------------------------------- build
    def build(self, variables):
        if self.built:
            return
        variables = list(variables)
        self.inner_optimizer.build(variables)
        super().build(variables)
        # Indices, not the variables: a list of variables set as an attribute
        # would be tracked as this optimizer's own.
        self._penalized_indices = tuple(
            i for i, v in enumerate(variables) if self.variable_predicate(v)
        )
        self.coefficient = self.add_variable(
            (), initializer=keras.initializers.Constant(self.initial_coefficient),
            dtype="float32", name="coefficient",
        )
        # The diagonal preconditioner of an adaptive optimizer: its running
        # second moment (Adam, Nadam, RMSprop: "velocity"; Adagrad:
        # "accumulator"), found by Keras' slot naming.
        slots = {v.path.split("/", 1)[-1]: j for j, v in enumerate(self.inner_optimizer.variables)}
        moments = []
        for i in self._penalized_indices:
            key = variables[i].path.replace("/", "_")
            found = [slots.get(f"{key}_{suffix}") for suffix in ("velocity", "accumulator")]
            found = [j for j in found if j is not None]
            moments.append(found[0] if found and self.precondition else None)
        self._second_moments = tuple(moments)
        # Which weights may be nonzero: all until `hold_support` fixes the
        # zeros found then (a fine-tune after the penalty has done its work).
        self._supports = [
            self.add_variable(
                variables[i].shape, initializer="ones", dtype="bool",
                name=variables[i].path.replace("/", "_") + "_support",
            )
            for i in self._penalized_indices
        ]
        if variables and not self._penalized_indices:
            raise ValueError(
                "Proximal: no trainable variable is selected by `variables`="
                f"{self.variable_predicate!r}; the penalty would do nothing."
            )

    # ---------------------------------------------------------------- apply
    def apply(self, grads, trainable_variables=None):
        grads = list(grads)
        if not grads:
            return
        trainable_variables = apply_variables(self, grads, trainable_variables)
        inner = self.inner_optimizer
        inner.apply(grads, trainable_variables)
        step = ops.cast(inner._get_current_learning_rate(), "float32")
        step = step * ops.cast(self.coefficient, "float32")
        accumulate = inner.gradient_accumulation_steps
        if accumulate:
            # The weights changed only if this batch completed an update.
            done = ops.equal(ops.mod(inner._iterations, accumulate), 0)
            step = step * ops.cast(done, "float32")
        keys = {self._var_key(v) for v in trainable_variables}
        slots = self.inner_optimizer.variables
        epsilon = float(getattr(inner, "epsilon", 1e-7) or 1e-7)
        beta_2 = getattr(inner, "beta_2", None)
        correction = 1.0
        if beta_2 is not None:
            t = ops.cast(inner.iterations, "float32")
            correction = ops.sqrt(1.0 - ops.power(ops.cast(beta_2, "float32"), t))
        for variable, support, moment in zip(
            self.penalized_variables, self._supports, self._second_moments
        ):
            if self._var_key(variable) in keys:
                threshold = ops.cast(step, variable.dtype)
                if moment is not None:
                    second = ops.cast(slots[moment].value, variable.dtype)
                    groups = getattr(self.penalty, "groups", None)
                    if groups is not None:
                        # One preconditioner per group (its mean second
                        # moment), or the group would shrink unevenly and not
                        # reach zero as a whole.
                        axes = group_axes(len(variable.shape), groups)
                        second = ops.mean(second, axis=axes, keepdims=True)
                    scale = ops.sqrt(second) + epsilon
                    threshold = threshold * ops.cast(correction, variable.dtype) / scale
                value = self.penalty.prox(variable, threshold)
                variable.assign(ops.where(support.value, value, ops.zeros_like(value)))
        self._iterations.assign_add(1)

    def finalize_variable_values(self, var_list):
        self.inner_optimizer.finalize_variable_values(var_list)

    # --------------------------------------------------------------- config
    def get_config(self):
        return {
            "name": self.name,
            "optimizer": keras.saving.serialize_keras_object(self.inner_optimizer),
            "penalty": keras.saving.serialize_keras_object(self.penalty),
            "l": self.initial_coefficient,
            "variables": _serialize_predicate(self.variable_predicate),
            "precondition": self.precondition,
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        config["optimizer"] = keras.saving.deserialize_keras_object(
            config["optimizer"], custom_objects=custom_objects
        )
        variables = config.get("variables")
        if isinstance(variables, dict):
            config["variables"] = keras.saving.deserialize_keras_object(
                variables, custom_objects=custom_objects
            )
        return cls(**config)
