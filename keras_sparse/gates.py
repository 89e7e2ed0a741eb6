"""Gates: learned sparsity, trained by the ordinary ``model.fit``.

A gate reparametrizes a layer's masked weights so that training itself
decides which entries are zero, with no hand-set threshold and no pruning
callback: the effective weight is ``mask * quantizer(gate(latent))``.

* :class:`HardConcrete` (alias ``"l0"``): a stochastic hard-concrete gate
  per weight or per unit with a trainable ``log_alpha`` (Louizos et al.
  2018). With ``sparsity``, a Lagrangian whose multipliers are trained by
  gradient ascent holds the expected sparsity at the requested value.
* :class:`SoftThreshold` (alias ``"str"``): a soft threshold
  ``sign(w) relu(|w| - sigmoid(s))`` with a trainable ``s`` per layer or per
  unit (Kusupati et al. 2020); a decay on ``s`` raises the threshold, and
  the sparsity is whatever training settles on (or, with ``sparsity``, the
  Lagrangian holds a smooth estimate of it).

A gate holds hyperparameters only (floor 2); the math is in
:mod:`keras_sparse.ops.gates`. Its state (``log_alpha``, thresholds, the
multipliers, the warm-up step and a seed generator) belongs to the layer:
the layer calls :meth:`Gate.build` once per gated weight, which creates the
variables with ``layer.add_weight`` (trained, saved and restored with the
layer) and returns them in a ``state`` dict the layer passes back.

Outside training the gate is deterministic and exact zeros are exact:
``ks.strip`` stores them in the plain model and ``ks.report`` counts them.

Example:
>>> model = ks.gate(model, "l0", 0.9)    # expected sparsity 0.9
>>> model.compile("adam", "sparse_categorical_crossentropy")
>>> model.fit(x, y, epochs=30)
>>> plain = ks.strip(model)
"""

import keras
from keras import ops

from keras_sparse import config as config_lib
from keras_sparse.checks import check_int
from keras_sparse.checks import check_number
from keras_sparse.ops import gates as gate_ops
from keras_sparse.ops.masks import check_sparsity

__all__ = [
    "Gate",
    "HardConcrete",
    "SoftThreshold",
    "REGISTRY",
    "get",
    "serialize",
    "deserialize",
    "register",
]

#: alias -> class.
REGISTRY = {}


def _gate_shape(shape, output_axes, per):
    """The shape of the gate variable of a weight of ``shape``: the weight's
    own (``"weight"``), one entry per output unit broadcast over the other
    axes (``"unit"``) or a scalar (``"tensor"``)."""
    if per == "weight":
        return tuple(shape)
    if per == "tensor":
        return ()
    ndim = len(shape)
    axes = {a % ndim for a in (output_axes if output_axes else (-1,))}
    return tuple(d if i in axes else 1 for i, d in enumerate(shape))


class Gate(config_lib.ConfigObject):
    """Base class of gates.

    Subclasses implement :meth:`build_gate` (their own variables),
    :meth:`__call__` (the gated weight) and :meth:`expected_sparsity` (a
    differentiable estimate the Lagrangian holds at ``sparsity``).

    Args:
        sparsity: the sparsity to reach, in ``[0, 1)``, or ``None`` (no
            Lagrangian: the sparsity is learned).
        per: ``"weight"``, ``"unit"`` (one gate per output unit: whole
            units or filters are removed) or ``"tensor"``.
        warmup_steps: the Lagrangian's target goes linearly from 0 to
            ``sparsity`` over this many training steps of the layer.
        lambda1_rate: step size of ``lambda1``'s gradient ascent.
        lambda2_rate: step size of ``lambda2``'s gradient ascent.

    The multipliers ``lambda1``, ``lambda2`` are non-trainable variables of
    the layer updated at each training step by their own rule, gradient
    ascent on the Lagrangian: ``lambda2 += lambda2_rate * (e - t)^2`` (a
    stiffness that only grows, so ``e`` follows the warm-up closely) and,
    once the warm-up is over, ``lambda1 += lambda1_rate * (e - t)`` (it
    removes the remaining offset; integrating during the warm-up, while the
    gates lag the rising target, made ``e`` overshoot). They do not go
    through the model's optimizer (whose normalization, e.g. Adam's, would
    set their speed) and save with the layer.
    """

    #: Values of ``per`` a gate accepts.
    granularities = ("weight", "unit", "tensor")

    def __init__(self, sparsity=None, per="weight", warmup_steps=1000, lambda1_rate=0.05,
                 lambda2_rate=50.0):
        self.sparsity = None if sparsity is None else check_sparsity(sparsity)
        if per not in self.granularities:
            raise ValueError(
                f"`per` must be one of {list(self.granularities)}. Received: per={per!r}"
            )
        self.per = per
        self.warmup_steps = check_int(warmup_steps, "warmup_steps", minimum=0)
        self.lambda1_rate = check_number(lambda1_rate, "lambda1_rate", minimum=0.0)
        self.lambda2_rate = check_number(lambda2_rate, "lambda2_rate", minimum=0.0)

    def get_config(self):
        return {
            "sparsity": self.sparsity,
            "per": self.per,
            "warmup_steps": self.warmup_steps,
            "lambda1_rate": self.lambda1_rate,
            "lambda2_rate": self.lambda2_rate,
        }

    def with_sparsity(self, sparsity):
        """A copy of this gate with another target ``sparsity``."""
        return type(self).from_config({**self.get_config(), "sparsity": sparsity})

    def gate_shape(self, shape, output_axes=None):
        """The shape of this gate's variable for a weight of ``shape``."""
        return _gate_shape(shape, output_axes, self.per)

    # ------------------------------------------------------------- state
    def build(self, layer, shape, name, output_axes=None):
        """Create the gate's state for one weight of ``layer``.

        Args:
            layer: the Keras layer owning the state (``layer.add_weight``).
            shape: the weight's shape.
            name: prefix for variable names, e.g. ``"kernel_gate"``.
            output_axes: the weight's output axes (``per="unit"``).

        Returns:
            The state dict passed back to :meth:`__call__` and
            :meth:`penalty`.
        """
        state = self.build_gate(layer, shape, name, output_axes)
        if self.sparsity is not None:
            for key in ("lambda1", "lambda2", "step"):
                state[key] = layer.add_weight(
                    name=f"{name}_{key}", shape=(), initializer="zeros", trainable=False
                )
        return state

    def build_gate(self, layer, shape, name, output_axes=None):
        raise NotImplementedError

    def __call__(self, w, state, training=None):
        """The gated weight (stochastic only when ``training``)."""
        raise NotImplementedError

    def expected_sparsity(self, w, state):
        """A differentiable estimate of the fraction of zero entries."""
        raise NotImplementedError

    def regularization(self, w, state):
        """The gate's own penalty, without the Lagrangian (default 0)."""
        return None

    def penalty(self, w, state):
        """The loss this gate adds at one training step: its own
        regularization plus, with ``sparsity``, the Lagrangian
        ``lambda1 (e - t) + lambda2 (e - t)^2`` with ``t`` warming up to
        ``sparsity``. Advances the warm-up step and takes the multipliers'
        ascent step. ``None`` when there is nothing to add."""
        terms = []
        own = self.regularization(w, state)
        if own is not None:
            terms.append(own)
        if self.sparsity is not None:
            step, lambda1, lambda2 = state["step"], state["lambda1"], state["lambda2"]
            # Copies: the loss of this step uses the values before the
            # updates below, and on torch a read shares the variable's
            # storage, which the in-place update would change under autograd.
            step_value, lambda1_value, lambda2_value = (
                ops.copy(ops.convert_to_tensor(v)) for v in (step, lambda1, lambda2))
            target = gate_ops.warmup_target(step_value, self.sparsity, self.warmup_steps)
            expected = self.expected_sparsity(w, state)
            terms.append(gate_ops.lagrangian(expected, target, lambda1_value, lambda2_value))
            gap = ops.stop_gradient(expected - target)
            # lambda1 integrates the gap only once the target stops moving:
            # during the warm-up the gates lag the rising target, and the
            # integral wound up then overshoots the target afterwards.
            settled = ops.cast(step_value >= float(self.warmup_steps), gap.dtype)
            lambda1.assign(lambda1_value + self.lambda1_rate * settled * gap)
            lambda2.assign(lambda2_value + self.lambda2_rate * ops.square(gap))
            step.assign(step_value + 1.0)
        if not terms:
            return None
        total = terms[0]
        for term in terms[1:]:
            total = total + term
        return total


@config_lib.register(REGISTRY, "l0", "hard_concrete")
class HardConcrete(Gate):
    """Hard-concrete L0 gates (Louizos et al. 2018): the effective weight
    is ``z * w`` with a gate ``z`` in ``[0, 1]`` per weight (or per output
    unit) and a trainable ``log_alpha``.

    Training draws ``u ~ U(0, 1)`` from a seed generator the layer owns and
    uses :func:`~keras_sparse.ops.gates.hard_concrete_sample`; otherwise
    the gate is :func:`~keras_sparse.ops.gates.hard_concrete_gate`, exactly
    0 where ``sigmoid(log_alpha) <= 1/12``. The expected sparsity is one
    minus the mean of
    :func:`~keras_sparse.ops.gates.hard_concrete_keep_probability`
    (``beta = 2/3``, ``gamma = -0.1``, ``zeta = 1.1``).

    With ``sparsity``, a Lagrangian (Wang et al. 2020; CoFi, Xia et al.
    2022) drives the expected sparsity to it: the target warms up from 0
    over ``warmup_steps``; the multipliers are variables of the layer
    updated by gradient ascent at each step (see :class:`Gate`). As gates
    settle at 0 or 1, the realised (deterministic) sparsity meets the
    expected one; ``benchmarks/learned_sparsity.py`` measures both.

    ``log_alpha`` has to travel from ``initial_log_alpha`` to below about
    -2.4 for a gate to close: with Adam that takes roughly
    ``(initial_log_alpha + 2.4) / learning_rate`` steps, so give the gates
    a learning rate of ``1e-2`` or more: the model's, or their own through
    :class:`keras_sparse.optimizers.CaseOptimizer` with
    ``PathMatches("log_alpha")``. ``benchmarks/learned_sparsity.py`` uses
    ``2e-2``, with which the gates settle closer to 0 and 1 (the realised
    sparsity then meets the expected one).

    Args:
        sparsity: expected sparsity to reach, or ``None`` (then
            ``l0_penalty`` alone sets how sparse the layer gets).
        per: ``"weight"`` (one gate per entry) or ``"unit"`` (one gate per
            output unit or filter: whole units are removed; leave the
            output layer out, e.g. ``ks.gate(..., layers=[...])``, or it
            may remove classes).
        warmup_steps: steps over which the target rises from 0.
        lambda1_rate, lambda2_rate: step sizes of the multipliers' ascent.
        initial_log_alpha: starting ``log_alpha``; the default keeps every
            gate open (deterministic gate 1) at the start.
        l0_penalty: coefficient of the expected density ``1 - e`` added to
            the loss (Louizos' L0 regularization; 0 by default).
        seed: optional int seed of the layer's seed generator.

    Example:
    >>> layer = ks.layers.SparseDense(64, gate=ks.gates.HardConcrete(0.9, per="unit"))
    """

    granularities = ("weight", "unit")

    def __init__(self, sparsity=None, per="weight", warmup_steps=1000, lambda1_rate=0.05,
                 lambda2_rate=50.0, initial_log_alpha=2.5, l0_penalty=0.0, seed=None):
        super().__init__(sparsity, per, warmup_steps, lambda1_rate, lambda2_rate)
        self.initial_log_alpha = check_number(initial_log_alpha, "initial_log_alpha")
        self.l0_penalty = check_number(l0_penalty, "l0_penalty", minimum=0.0)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"`seed` must be an int or None. Received: seed={seed!r}")
        self.seed = seed

    def get_config(self):
        return {
            **super().get_config(),
            "initial_log_alpha": self.initial_log_alpha,
            "l0_penalty": self.l0_penalty,
            "seed": self.seed,
        }

    def build_gate(self, layer, shape, name, output_axes=None):
        log_alpha = layer.add_weight(
            name=f"{name}_log_alpha",
            shape=self.gate_shape(shape, output_axes),
            initializer=keras.initializers.Constant(self.initial_log_alpha),
            trainable=True,
        )
        seed = keras.random.SeedGenerator(self.seed, name=f"{name}_seed")
        return {"log_alpha": log_alpha, "seed_generator": seed}

    def gate(self, state, training=None):
        """The gate values (shaped like ``log_alpha``)."""
        log_alpha = ops.convert_to_tensor(state["log_alpha"])
        if not training:
            return gate_ops.hard_concrete_gate(log_alpha)
        # Keep u inside (0, 1): log(0) would give -inf and a NaN gradient.
        u = keras.random.uniform(
            tuple(log_alpha.shape), minval=1e-6, maxval=1.0 - 1e-6,
            dtype=log_alpha.dtype, seed=state["seed_generator"],
        )
        return gate_ops.hard_concrete_sample(log_alpha, u)

    def __call__(self, w, state, training=None):
        w = ops.convert_to_tensor(w)
        return w * ops.cast(self.gate(state, training), w.dtype)

    def expected_sparsity(self, w, state):
        keep = gate_ops.hard_concrete_keep_probability(ops.convert_to_tensor(state["log_alpha"]))
        return 1.0 - ops.mean(keep)

    def regularization(self, w, state):
        if not self.l0_penalty:
            return None
        return self.l0_penalty * (1.0 - self.expected_sparsity(w, state))


@config_lib.register(REGISTRY, "str", "soft_threshold")
class SoftThreshold(Gate):
    """Soft Threshold Reparametrization (STR, Kusupati et al. 2020): the
    effective weight is ``sign(w) relu(|w| - sigmoid(s))`` with a trainable
    threshold parameter ``s`` per layer (or per output unit).

    ``s`` starts very negative (``initial_threshold``: the threshold
    ``sigmoid(s)`` is then about ``exp(s)``, so almost nothing is zero at
    first) and an L2 decay ``threshold_decay * s^2`` pulls it up while the
    loss pulls it down: the sparsity is what they settle on, larger for a
    larger decay or a longer run. Entries below the threshold are exact
    zeros, in training and after it.

    With ``sparsity``, the Lagrangian of :class:`Gate` holds a smooth
    estimate of the sparsity, the mean of
    ``sigmoid((sigmoid(s) - |w|) / (temperature * mean|w|))``, at the
    target (set ``threshold_decay=0`` then).

    Args:
        sparsity: sparsity to hold, or ``None`` (learned).
        per: ``"tensor"`` (one threshold per weight, the paper's choice)
            or ``"unit"`` (one per output unit or filter).
        warmup_steps: steps over which the target rises from 0.
        lambda1_rate, lambda2_rate: step sizes of the multipliers' ascent.
        initial_threshold: the paper's ``s_init``.
        threshold_decay: coefficient of the L2 penalty on ``s``.
        temperature: width of the smooth sparsity estimate.

    Example:
    >>> layer = ks.layers.SparseDense(64, gate=ks.gates.SoftThreshold(threshold_decay=1e-3))
    """

    granularities = ("tensor", "unit")

    def __init__(self, sparsity=None, per="tensor", warmup_steps=1000, lambda1_rate=0.05,
                 lambda2_rate=50.0, initial_threshold=-8.0, threshold_decay=1e-4,
                 temperature=0.1):
        super().__init__(sparsity, per, warmup_steps, lambda1_rate, lambda2_rate)
        self.initial_threshold = check_number(initial_threshold, "initial_threshold")
        self.threshold_decay = check_number(threshold_decay, "threshold_decay", minimum=0.0)
        self.temperature = check_number(temperature, "temperature", minimum=0.0, low_open=True)

    def get_config(self):
        return {
            **super().get_config(),
            "initial_threshold": self.initial_threshold,
            "threshold_decay": self.threshold_decay,
            "temperature": self.temperature,
        }

    def build_gate(self, layer, shape, name, output_axes=None):
        threshold = layer.add_weight(
            name=f"{name}_threshold",
            shape=self.gate_shape(shape, output_axes),
            initializer=keras.initializers.Constant(self.initial_threshold),
            trainable=True,
        )
        return {"threshold": threshold}

    def __call__(self, w, state, training=None):
        return gate_ops.soft_threshold(w, state["threshold"])

    def expected_sparsity(self, w, state):
        w = ops.abs(ops.convert_to_tensor(w))
        threshold = ops.sigmoid(ops.cast(ops.convert_to_tensor(state["threshold"]), w.dtype))
        width = self.temperature * ops.stop_gradient(ops.mean(w)) + 1e-12
        return ops.mean(ops.sigmoid((threshold - w) / width))

    def regularization(self, w, state):
        if not self.threshold_decay:
            return None
        return self.threshold_decay * ops.sum(ops.square(ops.convert_to_tensor(state["threshold"])))


# ---------------------------------------------------------------- lookup
def get(identifier, arg_name="gate"):
    """Resolve a gate: ``None``, a :class:`Gate`, an alias (``"l0"``,
    ``"hard_concrete"``, ``"str"``, ``"soft_threshold"``) or a serialized
    config dict.

    Raises:
        ValueError: naming ``arg_name`` and the value, for anything else.

    Example:
    >>> ks.gates.get("l0")
    HardConcrete(sparsity=None, per='weight', warmup_steps=1000, lambda1_rate=0.05, lambda2_rate=50.0, initial_log_alpha=2.5, l0_penalty=0.0, seed=None)
    """
    if identifier is None:
        return None
    return config_lib.lookup(identifier, Gate, REGISTRY, arg_name)


def serialize(gate):
    """Serialize a gate (or ``None``) for a layer config."""
    return config_lib.serialize(gate)


deserialize, register = config_lib.family_api(Gate, REGISTRY, "gate")
