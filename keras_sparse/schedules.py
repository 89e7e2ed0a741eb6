"""Pruning schedules: *when* masks are updated and to *what* sparsity.

A schedule is a pure function of the training step (``optimizer.iterations``)::

    should_update, sparsity = schedule(step)

Schedules from ``tensorflow_model_optimization`` (``ConstantSparsity``,
``PolynomialDecay``) are accepted anywhere a schedule is expected and are
converted to their keras_sparse equivalent by :func:`get`.
"""

import copy
import math
import numbers
import warnings

import numpy as np

from keras_sparse import config as config_lib
from keras_sparse.ops.formulas import polynomial_sparsity
from keras_sparse.ops.masks import check_sparsity

_REGISTRY = {}

__all__ = [
    "PruningSchedule",
    "ConstantSparsity",
    "PolynomialDecay",
    "OneShot",
    "get",
    "serialize",
]


def _is_integer(value):
    # numpy integers (e.g. a step count from np.ceil(...).astype(int)) too.
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def _check_step(value, name, allow_negative_one=False):
    if not _is_integer(value):
        raise ValueError(f"`{name}` must be an integer. Received: {name}={value!r}")
    value = int(value)
    if value < 0 and not (allow_negative_one and value == -1):
        raise ValueError(f"`{name}` must be >= 0. Received: {name}={value}")
    return value


def _check_origin(origin):
    if origin not in (0, 1) or isinstance(origin, bool):
        raise ValueError(
            "`step_origin` must be 0 (the first batch is step 0) or 1 (tfmot's count). "
            f"Received: step_origin={origin!r}"
        )
    return int(origin)


def _check_frequency(frequency):
    if not _is_integer(frequency) or frequency < 1:
        raise ValueError(
            f"`frequency` must be a positive integer. Received: frequency={frequency!r}"
        )
    return int(frequency)


class PruningSchedule(config_lib.ConfigObject):
    """Base class: subclasses implement ``should_update`` and ``sparsity``.

    ``target_sparsity`` is the sparsity the schedule ends at; ``ks.prune``
    uses :meth:`with_target` to give each layer its own target (ERK or a
    per-layer dict) while keeping the timing.
    """

    target_sparsity = 0.0

    def should_update(self, step):
        """Whether masks are recomputed before training step ``step``."""
        raise NotImplementedError

    def sparsity(self, step):
        """Sparsity the masks should have at ``step``."""
        raise NotImplementedError

    def __call__(self, step):
        step = int(step)
        return self.should_update(step), self.sparsity(step)

    def last_update_step(self):
        """The last step at which masks change, or ``None`` if unbounded."""
        return None

    def with_target(self, sparsity):
        """A copy of this schedule whose final sparsity is ``sparsity``."""
        clone = copy.copy(self)
        clone.target_sparsity = check_sparsity(sparsity)
        return clone


@config_lib.register(_REGISTRY, "constant_sparsity", "constant")
class ConstantSparsity(PruningSchedule):
    """Prune to a fixed sparsity every ``frequency`` steps.

    Updates happen at ``begin_step + k * frequency`` up to ``end_step``
    (``-1`` = no end).

    Args:
        target_sparsity: sparsity in ``[0, 1)``.
        begin_step: first update step.
        end_step: last step at which updates may happen, or ``-1``.
        frequency: steps between updates.
        step_origin: the number of the first training batch in this
            schedule's count: 0 (this library's) or 1 (tfmot's, whose
            ``UpdatePruningStep`` counts the first batch as step 1). Schedules
            converted from tfmot objects get 1, so a tfmot recipe prunes at
            the same batches, to the same sparsity, as in tfmot (its rule too:
            no extra update at ``end_step``).

    Example:
    >>> ks.schedules.ConstantSparsity(0.8, begin_step=0, frequency=100)(200)
    (True, 0.8)
    """

    def __init__(self, target_sparsity=0.0, begin_step=0, end_step=-1, frequency=100,
                 step_origin=0):
        self.step_origin = _check_origin(step_origin)
        self.target_sparsity = check_sparsity(target_sparsity, "target_sparsity")
        self.begin_step = _check_step(begin_step, "begin_step")
        self.end_step = _check_step(end_step, "end_step", allow_negative_one=True)
        if self.end_step != -1 and self.end_step < self.begin_step:
            raise ValueError(
                "`end_step` must be >= `begin_step` or -1. "
                f"Received: end_step={end_step}, begin_step={begin_step}"
            )
        self.frequency = _check_frequency(frequency)

    def should_update(self, step):
        step = step + self.step_origin
        if step < self.begin_step:
            return False
        if self.end_step != -1 and step > self.end_step:
            return False
        return (step - self.begin_step) % self.frequency == 0

    def sparsity(self, step):
        return self.target_sparsity if step + self.step_origin >= self.begin_step else 0.0

    def last_update_step(self):
        if self.end_step == -1:
            return None
        updates = (self.end_step - self.begin_step) // self.frequency
        return self.begin_step + updates * self.frequency - self.step_origin

    def get_config(self):
        config = {
            "target_sparsity": self.target_sparsity,
            "begin_step": self.begin_step,
            "end_step": self.end_step,
            "frequency": self.frequency,
        }
        if self.step_origin:
            config["step_origin"] = self.step_origin
        return config


@config_lib.register(_REGISTRY, "polynomial_decay", "gmp")
class PolynomialDecay(PruningSchedule):
    """Gradual magnitude pruning (GMP), Zhu & Gupta 2017.

    .. math::
        s_t = s_f + (s_i - s_f)\\left(1 - \\frac{t - t_0}{t_1 - t_0}\\right)^p

    Masks are updated every ``frequency`` steps from ``begin_step`` and once
    more exactly at ``end_step``, so the final sparsity is always reached.

    Args:
        initial_sparsity: ``s_i``, sparsity at ``begin_step``.
        final_sparsity: ``s_f``, sparsity from ``end_step`` on. Below
            ``initial_sparsity`` the sparsity decreases over the schedule,
            which is accepted (as in tfmot) with a ``UserWarning``.
        begin_step: ``t_0``.
        end_step: ``t_1`` (> ``begin_step``).
        power: ``p`` (3 in the paper), a positive finite number.
        frequency: steps between mask updates.
        step_origin: the number of the first training batch in this
            schedule's count: 0 (this library's) or 1 (tfmot's, whose
            ``UpdatePruningStep`` counts the first batch as step 1). Schedules
            converted from tfmot objects get 1, so a tfmot recipe prunes at
            the same batches, to the same sparsity, as in tfmot (its rule too:
            no extra update at ``end_step``).

    Example:
    >>> s = ks.schedules.PolynomialDecay(0.0, 0.9, begin_step=0, end_step=1000)
    >>> s(500)
    (True, 0.7875)
    """

    def __init__(
        self,
        initial_sparsity=0.0,
        final_sparsity=0.9,
        begin_step=0,
        end_step=1000,
        power=3,
        frequency=100,
        step_origin=0,
    ):
        # Every argument is checked before any attribute is set.
        origin = _check_origin(step_origin)
        initial = check_sparsity(initial_sparsity, "initial_sparsity")
        final = check_sparsity(final_sparsity, "final_sparsity")
        begin = _check_step(begin_step, "begin_step")
        end = _check_step(end_step, "end_step")
        if end <= begin:
            raise ValueError(
                "`end_step` must be greater than `begin_step`. "
                f"Received: end_step={end_step}, begin_step={begin_step}"
            )
        if isinstance(power, (bool, np.bool_)) or not isinstance(power, numbers.Real) or not (
            math.isfinite(power) and power > 0
        ):
            raise ValueError(
                f"`power` must be a positive finite number. Received: power={power!r}"
            )
        frequency = _check_frequency(frequency)
        if final < initial:
            # tfmot accepts this too; the masks then regrow over time.
            warnings.warn(
                "`final_sparsity` is below `initial_sparsity`: the sparsity decreases "
                f"from {initial} to {final} over the schedule. Received: "
                f"initial_sparsity={initial_sparsity!r}, final_sparsity={final_sparsity!r}",
                UserWarning,
                stacklevel=2,
            )
        self.step_origin = origin
        self.initial_sparsity = initial
        self.target_sparsity = final
        self.begin_step = begin
        self.end_step = end
        self.power = int(power) if isinstance(power, numbers.Integral) else float(power)
        self.frequency = frequency

    @property
    def final_sparsity(self):
        return self.target_sparsity

    def should_update(self, step):
        step = step + self.step_origin
        if step < self.begin_step or step > self.end_step:
            return False
        if (step - self.begin_step) % self.frequency == 0:
            return True
        # tfmot's rule (step_origin=1) has no extra update at end_step.
        return step == self.end_step and not self.step_origin

    def sparsity(self, step):
        return polynomial_sparsity(
            step + self.step_origin,
            self.initial_sparsity,
            self.target_sparsity,
            self.begin_step,
            self.end_step,
            self.power,
        )

    def last_update_step(self):
        if self.step_origin:
            updates = (self.end_step - self.begin_step) // self.frequency
            return self.begin_step + updates * self.frequency - self.step_origin
        return self.end_step

    def with_target(self, sparsity):
        """A copy ending at ``sparsity``; its initial sparsity is capped at
        that target, so a layer is never pruned beyond its own share (a
        layer a distribution keeps dense stays dense)."""
        clone = super().with_target(sparsity)
        clone.initial_sparsity = min(self.initial_sparsity, clone.target_sparsity)
        return clone

    def get_config(self):
        config = {
            "initial_sparsity": self.initial_sparsity,
            "final_sparsity": self.target_sparsity,
            "begin_step": self.begin_step,
            "end_step": self.end_step,
            "power": self.power,
            "frequency": self.frequency,
        }
        if self.step_origin:
            config["step_origin"] = self.step_origin
        return config


@config_lib.register(_REGISTRY, "one_shot")
class OneShot(PruningSchedule):
    """Prune once, at ``step``, to ``target_sparsity``; masks stay fixed after.

    ``OneShot(0)`` gives a static sparse network from the first training step
    (sparse initialization when combined with ``scorer="random"``).

    Args:
        step: the single update step.
        target_sparsity: sparsity in ``[0, 1)`` (``ks.prune`` fills it in).

    Example:
    >>> ks.schedules.OneShot(0, 0.9)(0)
    (True, 0.9)
    """

    def __init__(self, step=0, target_sparsity=0.0):
        self.step = _check_step(step, "step")
        self.target_sparsity = check_sparsity(target_sparsity, "target_sparsity")

    def should_update(self, step):
        return step == self.step

    def sparsity(self, step):
        return self.target_sparsity if step >= self.step else 0.0

    def last_update_step(self):
        return self.step

    def get_config(self):
        return {"step": self.step, "target_sparsity": self.target_sparsity}


def _from_tfmot(obj):
    """Translate a tfmot schedule object by its config, without importing tfmot."""
    module = type(obj).__module__ or ""
    if not module.startswith("tensorflow_model_optimization"):
        return None
    name = type(obj).__name__
    cfg = obj.get_config()
    cfg = cfg.get("config", cfg)
    if name == "ConstantSparsity":
        return ConstantSparsity(
            float(cfg["target_sparsity"]),
            int(cfg["begin_step"]),
            int(cfg["end_step"]),
            int(cfg["frequency"]),
            step_origin=1,
        )
    if name == "PolynomialDecay":
        return PolynomialDecay(
            float(cfg["initial_sparsity"]),
            float(cfg["final_sparsity"]),
            int(cfg["begin_step"]),
            int(cfg["end_step"]),
            cfg["power"],
            int(cfg["frequency"]),
            step_origin=1,
        )
    raise ValueError(
        "Only tfmot's ConstantSparsity and PolynomialDecay schedules can be "
        f"converted. Received: schedule={obj!r}"
    )


def get(identifier):
    """Resolve a schedule.

    Accepts ``None`` (no pruning: ``None`` is returned), a float (a
    ``ConstantSparsity`` at that sparsity), an alias, a config dict, a
    :class:`PruningSchedule`, or a tfmot schedule object.
    """
    if identifier is None:
        return None
    if isinstance(identifier, numbers.Real) and not isinstance(identifier, (bool, np.bool_)):
        return ConstantSparsity(check_sparsity(identifier, "schedule"))
    converted = _from_tfmot(identifier)
    if converted is not None:
        return converted
    return config_lib.lookup(identifier, PruningSchedule, _REGISTRY, "schedule")


serialize = config_lib.serialize


deserialize, register = config_lib.family_api(PruningSchedule, _REGISTRY, "schedule")


__all__ += [n for n in ("get", "serialize", "deserialize", "register") if n not in __all__]
