"""Learned sparsity: hard-concrete L0 gates, soft-threshold
reparametrization and the Lagrangian that holds an expected sparsity.

Pure ``keras.ops`` math; the variables (``log_alpha``, thresholds,
multipliers) belong to the layer that uses a :mod:`keras_sparse.gates` gate.
"""

import math

from keras import ops

__all__ = [
    "BETA",
    "GAMMA",
    "ZETA",
    "hard_concrete_sample",
    "hard_concrete_gate",
    "hard_concrete_keep_probability",
    "soft_threshold",
    "lagrangian",
    "warmup_target",
]

#: Hard-concrete temperature and stretch interval (Louizos et al. 2018).
BETA = 2.0 / 3.0
GAMMA = -0.1
ZETA = 1.1


def hard_concrete_sample(log_alpha, u, beta=BETA, gamma=GAMMA, zeta=ZETA):
    """A hard-concrete gate drawn from uniform noise ``u`` in ``(0, 1)``.

    .. math::
        s = \\sigma\\left((\\log u - \\log(1 - u) + \\log\\alpha) / \\beta\\right),
        \\quad z = \\min(1, \\max(0, s(\\zeta - \\gamma) + \\gamma))

    Differentiable in ``log_alpha`` (the reparametrization trick); exactly
    0 or 1 with nonzero probability.

    Reference: C. Louizos, M. Welling, D. Kingma, "Learning Sparse Neural
    Networks through L0 Regularization", ICLR 2018.

    Example:
    >>> hard_concrete_sample([0.0, 0.0], [0.5, 0.999])
    [0.5, 1.]
    """
    log_alpha = ops.convert_to_tensor(log_alpha)
    u = ops.cast(ops.convert_to_tensor(u), log_alpha.dtype)
    s = ops.sigmoid((ops.log(u) - ops.log(1.0 - u) + log_alpha) / beta)
    return ops.clip(s * (zeta - gamma) + gamma, 0.0, 1.0)


def hard_concrete_gate(log_alpha, gamma=GAMMA, zeta=ZETA):
    """The deterministic (inference) gate
    :math:`\\min(1, \\max(0, \\sigma(\\log\\alpha)(\\zeta - \\gamma) + \\gamma))`:
    exactly 0 where :math:`\\sigma(\\log\\alpha) \\le -\\gamma / (\\zeta - \\gamma)`.

    Example:
    >>> hard_concrete_gate([-5.0, 0.0, 5.0])
    [0., 0.5, 1.]
    """
    log_alpha = ops.convert_to_tensor(log_alpha)
    return ops.clip(ops.sigmoid(log_alpha) * (zeta - gamma) + gamma, 0.0, 1.0)


def hard_concrete_keep_probability(log_alpha, beta=BETA, gamma=GAMMA, zeta=ZETA):
    """The probability that a hard-concrete gate is nonzero, i.e. its
    expected L0 norm:
    :math:`\\sigma(\\log\\alpha - \\beta \\log(-\\gamma / \\zeta))`.

    Example:
    >>> hard_concrete_keep_probability([0.0])
    [0.8318]
    """
    log_alpha = ops.convert_to_tensor(log_alpha)
    return ops.sigmoid(log_alpha - beta * math.log(-gamma / zeta))


def soft_threshold(w, s):
    """Soft Threshold Reparametrization (STR):
    :math:`\\mathrm{sign}(w)\\,\\mathrm{ReLU}(|w| - \\sigma(s))`.

    Gradients (the ReLU's subgradient, 0 at the kink): ``1`` with respect
    to ``w`` where ``|w| > sigmoid(s)``, 0 elsewhere; with respect to ``s``,
    ``-sign(w) sigmoid'(s)`` summed over the entries that pass. ``s``
    broadcasts against ``w`` (one threshold per tensor or per unit).

    Reference: A. Kusupati et al., "Soft Threshold Weight
    Reparameterization for Learnable Sparsity", ICML 2020.

    Example:
    >>> soft_threshold([-1.0, 0.2, 0.6], 0.0)
    [-0.5, 0., 0.1]
    """
    w = ops.convert_to_tensor(w)
    threshold = ops.sigmoid(ops.cast(ops.convert_to_tensor(s), w.dtype))
    return ops.sign(w) * ops.relu(ops.abs(w) - threshold)


def lagrangian(expected, target, lambda1, lambda2):
    """The Lagrangian relaxation of ``expected == target`` (Wang et al.
    2020; CoFi, Xia et al. 2022):
    :math:`\\lambda_1 (e - t) + \\lambda_2 (e - t)^2`.

    Minimized over the model and maximized over ``lambda1``, ``lambda2``,
    it drives ``expected`` to ``target``.

    Example:
    >>> lagrangian(0.5, 0.9, 1.0, 10.0)
    1.2
    """
    gap = ops.convert_to_tensor(expected) - target
    return lambda1 * gap + lambda2 * ops.square(gap)


def warmup_target(step, target, warmup_steps):
    """The target at ``step``: linear from 0 to ``target`` over
    ``warmup_steps`` steps, then ``target`` (a tensor when ``step`` is).

    Example:
    >>> warmup_target(50.0, 0.9, 100)
    0.45
    """
    if warmup_steps <= 0:
        return ops.convert_to_tensor(target, "float32") + 0.0 * ops.convert_to_tensor(
            step, "float32")
    progress = ops.clip(ops.convert_to_tensor(step, "float32") / float(warmup_steps), 0.0, 1.0)
    return target * progress
