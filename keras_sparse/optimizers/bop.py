"""Bop, the binary optimizer that flips the signs of latent weights."""

import math

import keras
from keras import ops

from keras_sparse.config import PACKAGE

__all__ = ["Bop"]


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
