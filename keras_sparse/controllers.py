"""Floor 2: control rules that steer a penalty coefficient to a target.

A rule is a hyperparameter-only object. :class:`ks.callbacks.SparsityController`
measures the sparsity a penalty produces, compares it with the target of the
current step and asks the rule for the next coefficient. Rules work on
``u = log λ``: a coefficient spans orders of magnitude (its right scale
depends on the optimizer, the learning rate and the data), and a step in
``u`` is a relative change whatever that scale, so the same defaults serve
an MLP and a CNN, Adam and SGD.
"""

import math

from keras_sparse import config as config_lib
from keras_sparse.checks import check_number

__all__ = ["Controller", "PI", "DualAscent", "get", "serialize", "deserialize", "register"]

_REGISTRY = {}


class Controller(config_lib.ConfigObject):
    """Base class: the next coefficient from the sparsity error.

    ``target`` and ``measured`` are the sparsity wanted at this step and the
    one measured (``measured < target``: not sparse enough yet, the
    coefficient must grow). ``state`` is a dict the rule keeps between calls
    (created empty by the caller for each run).
    """

    def update(self, coefficient, target, measured, state):
        """The next coefficient (a Python float > 0)."""
        raise NotImplementedError


def relative_error(target, measured, floor=0.05):
    """``(target − measured) / max(target, floor)``: the error relative to
    the target, so a rule moves as fast toward 10 % as toward 90 %."""
    return (target - measured) / max(target, floor)


@config_lib.register(_REGISTRY, "pi", name="PIController")
class PI(Controller):
    """Proportional-integral control of ``u = log λ`` (velocity form).

    .. math::
        u_{k+1} = u_k + k_p (e_k - e_{k-1}) + k_i e_k, \\qquad \\lambda = e^{u}

    The integral term drives the error to zero in steady state; the
    proportional term reacts to the error's change, which damps the overshoot
    of the integral term alone (the sparsity follows a coefficient change
    with a delay of a few steps). Each change of ``u`` is clipped to
    ``±max_change`` per update.

    Args:
        kp: proportional gain (on ``u``, per unit of sparsity error).
        ki: integral gain.
        max_change: largest change of ``u`` in one update.

    Example:
    >>> rule = ks.controllers.PI(kp=4.0, ki=1.0)
    >>> state = {}
    >>> rule.update(0.01, 0.5, 0.2, state) > 0.01   # below target: λ grows
    True
    """

    def __init__(self, kp=2.0, ki=1.0, horizon=0.0, retreat=2.0, max_change=0.5):
        self.kp = check_number(kp, "kp", minimum=0.0)
        self.ki = check_number(ki, "ki", minimum=0.0, low_open=True)
        self.horizon = check_number(horizon, "horizon", minimum=0.0)
        self.retreat = check_number(retreat, "retreat", minimum=1.0)
        self.max_change = check_number(max_change, "max_change", minimum=0.0, low_open=True)

    def update(self, coefficient, target, measured, state):
        # Predict the sparsity `horizon` updates ahead from its last change:
        # it follows the coefficient with a delay, and zeros made by a too
        # large coefficient do not come back when it falls again.
        slope = measured - state.get("measured", measured)
        target_slope = target - state.get("target", target)
        predicted = measured + self.horizon * slope
        ahead = target + self.horizon * target_slope
        error = relative_error(ahead, predicted)
        previous = state.get("error", error)
        change = self.kp * (error - previous) + self.ki * error
        if error < 0:
            change *= self.retreat
        change = max(-self.max_change, min(self.max_change, change))
        state.update(error=error, measured=measured, target=target)
        return math.exp(math.log(coefficient) + change)

    def get_config(self):
        return {"kp": self.kp, "ki": self.ki, "horizon": self.horizon,
                "retreat": self.retreat, "max_change": self.max_change}


@config_lib.register(_REGISTRY, "dual_ascent", "dual", name="DualAscentController")
class DualAscent(Controller):
    """Exponentiated dual ascent on the Lagrange multiplier of the sparsity
    constraint ``sparsity >= target``.

    .. math::
        \\lambda_{k+1} = \\lambda_k \\exp(\\eta\\, e_k)

    The multiplier grows while the constraint is violated and shrinks once it
    holds with slack (multiplicative updates keep it positive; Kivinen &
    Warmuth 1997). Equivalent to the integral term of :class:`PI` alone.

    Args:
        rate: the step size :math:`\\eta`.
        max_change: largest change of ``log λ`` in one update.

    Example:
    >>> ks.controllers.DualAscent(rate=2.0).update(1.0, 0.5, 0.8, {}) < 1.0
    True
    """

    def __init__(self, rate=2.0, max_change=1.0):
        self.rate = check_number(rate, "rate", minimum=0.0, low_open=True)
        self.max_change = check_number(max_change, "max_change", minimum=0.0, low_open=True)

    def update(self, coefficient, target, measured, state):
        error = relative_error(target, measured)
        change = max(-self.max_change, min(self.max_change, self.rate * error))
        return math.exp(math.log(coefficient) + change)

    def get_config(self):
        return {"rate": self.rate, "max_change": self.max_change}


def get(identifier):
    """Resolve a control rule from an instance, an alias (``"pi"``,
    ``"dual_ascent"``) or a serialized config; ``None`` gives :class:`PI`."""
    if identifier is None:
        identifier = "pi"
    return config_lib.lookup(identifier, Controller, _REGISTRY, "controller")


serialize = config_lib.serialize

deserialize, register = config_lib.family_api(Controller, _REGISTRY, "controller")
