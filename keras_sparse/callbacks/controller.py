"""SparsityController: steer a penalty's coefficient so the sparsity it
produces follows a target, with no coefficient to tune by hand."""

import math
import numbers
import warnings

import keras
import numpy as np

from keras_sparse import backend
from keras_sparse import controllers as controllers_lib
from keras_sparse import schedules as schedules_lib
from keras_sparse.callbacks.sparsity import accumulation_steps
from keras_sparse.callbacks.sparsity import batches_applied
from keras_sparse.checks import check_bool
from keras_sparse.checks import check_int
from keras_sparse.checks import check_number
from keras_sparse.config import PACKAGE
from keras_sparse.ops.masks import check_sparsity
from keras_sparse.ops.prox import group_axes
from keras_sparse.optimizers.proximal import Proximal
from keras_sparse.utils import walk_layers

__all__ = ["SparsityController"]

_ON = ("weights", "activations")

#: Starting coefficient of a fresh run. The rules work on log λ and move it
#: by up to ``max_change`` per update, so a start below the useful range
#: costs a few updates, not accuracy (a start above it would prune at once).
_INITIAL = 1e-4

#: Coefficient updates over the ramp when ``update_freq`` is not given, and
#: the fewest steps between two: a penalty needs a few steps to show the
#: effect of a change, and updating faster winds the rule up in short runs.
_UPDATES = 50
_MIN_FREQ = 5


class _Channel:
    """One coefficient the controller steers and how to measure its effect."""

    def __init__(self, name, variable, measure, project=None):
        self.name = name
        self.variable = variable
        self.measure = measure
        self.project = project
        self.state = {}


def _read_float(variable):
    return float(np.asarray(backend.host_read(variable)).reshape(()))


class _WeightChannel(_Channel):
    """The penalized weights of a Proximal optimizer.

    The controller sees the fraction of weights (groups) that are zero *or
    will be* within ``horizon`` steps at the rate their magnitude fell since
    the last update: zeros follow a coefficient change with a delay, and a
    group penalty can empty many groups of similar norm at once.

    The last nonzero value of every weight is kept (a host copy of the
    penalized weights), so a projection that finds more zeros than the
    target gives the most recently removed back their values instead of
    restarting them at zero (a unit at zero may never receive a gradient
    again).
    """

    def __init__(self, optimizer, horizon):
        super().__init__("weights", optimizer.coefficient, self._measure, self._project)
        self.optimizer = optimizer
        self.horizon = horizon
        self.groups = getattr(optimizer.penalty, "groups", None)
        self._previous = None
        self._last_alive = None
        self._last_norm = None

    def _read(self):
        return self.optimizer.penalized_values()

    def _remember(self, values, norms):
        if self._last_alive is None:
            self._last_alive = [v.copy() for v in values]
            self._last_norm = [n.copy() for n in norms]
            return
        for i, (value, norm) in enumerate(zip(values, norms)):
            alive = norm > 0
            self._last_norm[i] = np.where(alive, norm, self._last_norm[i])
            self._last_alive[i] = np.where(self._expand(alive, value), value, self._last_alive[i])

    def _expand(self, per_group, value):
        if self.groups is None:
            return per_group.reshape(value.shape)
        axes = group_axes(value.ndim, self.groups)
        shape = [1 if a in axes else value.shape[a] for a in range(value.ndim)]
        return np.broadcast_to(per_group.reshape(shape), value.shape)

    def _measure(self, step=None):
        values, norms = self._read()
        flat = np.concatenate(norms) if norms else np.zeros(0)
        if flat.size == 0:
            return 0.0
        zero = flat == 0
        if step is None:
            return float(zero.mean())
        self._remember(values, norms)
        predicted = zero
        previous = self._previous
        if previous is not None and previous[1].shape == flat.shape and step > previous[0]:
            rate = (previous[1] - flat) / (step - previous[0])
            span = self.horizon * (step - previous[0])
            predicted = zero | ((rate > 0) & (flat <= rate * span))
        self._previous = (step, flat)
        return float(predicted.mean())

    def _project(self, target):
        """Exactly ``ceil(target · total)`` weights (groups) zero, then hold
        that support: the smallest magnitudes are removed; with more zeros
        than that, the zeros that were largest when last nonzero get their
        last values back."""
        values, norms = self._read()
        self._remember(values, norms)
        flat = np.concatenate(norms) if norms else np.zeros(0)
        last = np.concatenate(self._last_norm) if norms else np.zeros(0)
        count = min(flat.size, int(math.ceil(target * flat.size - 1e-9)))
        # Zeros first (smallest last magnitude first), then the rest by size.
        key = np.where(flat == 0, -1.0 / (1.0 + last), flat)
        drop = np.zeros(flat.size, bool)
        drop[np.argsort(key, kind="stable")[:count]] = True
        supports = []
        start = 0
        variables = self.optimizer.penalized_variables
        for i, (variable, value, norm) in enumerate(zip(variables, values, norms)):
            part = drop[start:start + norm.size]
            start += norm.size
            keep = self._expand(~part, value)
            restored = np.where(value == 0, self._last_alive[i], value)
            new = np.where(keep, restored, 0).astype(value.dtype)
            if not np.array_equal(new, value):
                backend.host_assign(variable, new)
            supports.append(np.array(keep))
        self.optimizer.hold_support(supports)


def _find_optimizer(optimizer):
    while optimizer is not None:
        if isinstance(optimizer, Proximal):
            return optimizer
        optimizer = getattr(optimizer, "inner_optimizer", None)
    return None


@keras.saving.register_keras_serializable(package=PACKAGE)
class SparsityController(keras.callbacks.Callback):
    """Steer a sparsity penalty's coefficient :math:`\\lambda` during ``fit``
    so that the sparsity it produces follows a target schedule and ends at
    the target. No :math:`\\lambda` to tune.

    **What it steers** (``on``):

    * ``"weights"``: the ``coefficient`` of the model's
      :class:`ks.optimizers.Proximal` optimizer. The sparsity is the fraction
      of exactly-zero weights (L1) or exactly-zero groups (group lasso: units,
      filters or input features) over the penalized variables. For network
      slimming, give ``Proximal`` an L1 penalty on the BatchNorm scales
      (``variables=ks.optimizers.PathMatches(r"gamma$")``).
    * ``"activations"``: the ``coefficient`` of every
      :class:`ks.layers.ActivitySparsity` layer (each steered on its own to
      the target), measured as the fraction of exact zeros in the layer's
      input in the last training batch.

    ``on=None`` picks ``"weights"`` when the optimizer is ``Proximal``, else
    ``"activations"`` when such layers exist.

    **How**: every ``update_freq`` training steps (optimizer updates), the
    controller measures the sparsity :math:`s`, compares it with the target
    of the step :math:`\\tau_t` and lets the rule (``controller``, default
    :class:`ks.controllers.PI` on :math:`\\log\\lambda`) set the next
    :math:`\\lambda`; the coefficient is a variable, so the change acts inside
    the compiled train step. The target rises as the cubic ramp of Zhu &
    Gupta (2017) from 0 at the first step of the run to ``target`` after a
    fraction ``ramp`` of the planned steps (``epochs × steps`` of ``fit``,
    counted from step 0 so a resumed run continues the ramp), then holds; ``schedule`` (a
    :class:`ks.schedules.PruningSchedule` over the absolute step) replaces
    the ramp. A fresh run starts from a small :math:`\\lambda`; a resumed run
    (a checkpoint, a second ``fit``) continues from the stored one.

    **At the end**, with ``project=True`` and weights, the smallest remaining
    weights (or groups) are set to zero so the final sparsity is exactly the
    target (rounded up to whole weights or groups) if the controller ended
    below it; a warning says when the measured sparsity was further than
    ``tolerance`` from the target before that projection, or above it.

    **Logs**: ``"lambda"`` (``"<layer>/lambda"`` for several activation
    layers), ``"controlled_sparsity"`` and ``"target_sparsity"`` after every
    batch and epoch (the progress bar, ``History``, ``CSVLogger`` and
    ``TensorBoard`` show them; put the controller before ``CSVLogger``).
    ``trajectory`` keeps every update as a dict ``step, name, lambda,
    sparsity, target``.

    Args:
        target: the final sparsity, in ``[0, 1)``.
        on: ``"weights"``, ``"activations"`` or ``None`` (see above).
        controller: the rule: ``"pi"`` (default), ``"dual_ascent"`` or a
            :class:`ks.controllers.Controller`.
        schedule: the target over the step instead of the cubic ramp.
        ramp: fraction of the planned steps over which the target rises.
        update_freq: training steps between two coefficient updates
            (``None``: 1/50 of the ramp, at least 5 steps, so the rule gets
            the same number of updates in a short and a long run).
        horizon: how many updates ahead the weights' sparsity is predicted
            (a weight or group counts as zero when its magnitude, falling at
            its rate since the last update, reaches zero within
            ``horizon × update_freq`` steps).
        project: zero the smallest remaining weights at the end so the
            target is met exactly (weights only).
        tolerance: gap between measured and target sparsity (before
            projection) above which a warning is given at the end.
        initial_coefficient: the starting :math:`\\lambda` of a fresh run
            (``None``: a small value the rule grows from).

    Example:
    >>> import numpy as np, keras, keras_sparse as ks
    >>> x = np.random.default_rng(0).normal(size=(256, 20)).astype("float32")
    >>> y = (x[:, 0] > 0).astype("int32")
    >>> model = keras.Sequential([keras.Input((20,)),
    ...     keras.layers.Dense(64, activation="relu"), keras.layers.Dense(2)])
    >>> model.compile(ks.optimizers.Proximal("adam", "l1"),
    ...     keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    >>> controller = ks.callbacks.SparsityController(0.8)
    >>> history = model.fit(x, y, epochs=10, verbose=0, callbacks=[controller])
    >>> round(model.optimizer.sparsity(), 2)
    0.8
    """

    def __init__(
        self,
        target,
        on=None,
        controller=None,
        schedule=None,
        ramp=0.5,
        update_freq=None,
        horizon=3,
        project=True,
        tolerance=0.02,
        initial_coefficient=None,
    ):
        super().__init__()
        self.target = check_sparsity(target, "target")
        if on is not None and on not in _ON:
            raise ValueError(f"`on` must be one of {_ON} or None. Received: on={on!r}")
        self.on = on
        self.controller = controllers_lib.get(controller)
        self.schedule = None if schedule is None else schedules_lib.get(schedule)
        self.ramp = check_number(ramp, "ramp", minimum=0.0, maximum=1.0, low_open=True)
        self.update_freq = check_int(update_freq, "update_freq", minimum=1, allow_none=True)
        self.horizon = check_number(horizon, "horizon", minimum=0.0)
        self.project = check_bool(project, "project")
        self.tolerance = check_number(tolerance, "tolerance", minimum=0.0)
        self.initial_coefficient = check_number(
            initial_coefficient, "initial_coefficient", minimum=0.0, low_open=True,
            allow_none=True,
        )
        self.trajectory = []
        self._channels = []
        self._last = {}
        self._held = False
        self._gaps = []

    def get_config(self):
        return {
            "target": self.target,
            "on": self.on,
            "controller": controllers_lib.serialize(self.controller),
            "schedule": None if self.schedule is None else schedules_lib.serialize(self.schedule),
            "ramp": self.ramp,
            "update_freq": self.update_freq,
            "horizon": self.horizon,
            "project": self.project,
            "tolerance": self.tolerance,
            "initial_coefficient": self.initial_coefficient,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    # ------------------------------------------------------------- planning
    def _find_channels(self):
        model = self.model
        optimizer = _find_optimizer(getattr(model, "optimizer", None))
        activation_layers = [
            layer for layer in walk_layers(model)
            if getattr(layer, "penalty_kind", None) == "activation"
        ]
        on = self.on
        if on is None:
            on = "weights" if optimizer is not None else (
                "activations" if activation_layers else None)
        if on == "weights":
            if optimizer is None:
                raise ValueError(
                    "SparsityController(on='weights') steers the coefficient of a "
                    "ks.optimizers.Proximal optimizer; compile the model with one, "
                    "e.g. model.compile(ks.optimizers.Proximal('adam', 'l1'), ...). "
                    f"Received: optimizer={getattr(model, 'optimizer', None)!r}"
                )
            if not optimizer.built:
                optimizer.build(model.trainable_variables)
            return [_WeightChannel(optimizer, self.horizon)]
        if on == "activations":
            if not activation_layers:
                raise ValueError(
                    "SparsityController(on='activations') needs at least one "
                    "ks.layers.ActivitySparsity layer in the model. Received: "
                    f"model={model.name!r} without one."
                )
            for layer in activation_layers:
                if not layer.built:
                    raise ValueError(
                        f"Layer {layer.name!r} is not built; build the model (call it "
                        "on data or give it an Input) before fit."
                    )
            return [
                _Channel(layer.name, layer.coefficient,
                         lambda step=None, layer=layer: layer.measured_sparsity())
                for layer in activation_layers
            ]
        raise ValueError(
            "SparsityController found nothing to steer: compile the model with a "
            "ks.optimizers.Proximal optimizer (weights) or add "
            "ks.layers.ActivitySparsity layers (activations). Received: "
            f"model={model.name!r}"
        )

    def target_at(self, step):
        """The target sparsity of training step ``step``."""
        if self.schedule is not None:
            return float(self.schedule.sparsity(step))
        if step >= self._end:
            return self.target
        progress = max(0.0, (step - self._begin) / max(1, self._end - self._begin))
        return self.target * (1.0 - (1.0 - progress) ** 3)

    def on_train_begin(self, logs=None):
        backend.sync_model_state(self.model)
        self._channels = self._find_channels()
        optimizer = self.model.optimizer
        self._k = accumulation_steps(optimizer)
        start = batches_applied(optimizer) // self._k
        params = self.params or {}
        planned = None
        if params.get("steps") and params.get("epochs"):
            planned = int(params["steps"]) * int(params["epochs"]) // self._k
        if self.schedule is None and not planned:
            raise ValueError(
                "SparsityController needs the planned number of steps for its "
                "target ramp (give fit `steps_per_epoch` for a dataset of unknown "
                "length) or an explicit `schedule`."
            )
        # The ramp is laid over the whole planned run (``epochs`` x ``steps``
        # from step 0), so a run resumed by ``BackupAndRestore`` continues it.
        self._begin = 0
        self._end = max(1, int(round(self.ramp * (planned or 1))))
        self._freq = self.update_freq or max(_MIN_FREQ, (self._end - self._begin) // _UPDATES)
        fresh = start == 0
        for channel in self._channels:
            current = _read_float(channel.variable)
            if self.initial_coefficient is not None and fresh:
                current = self.initial_coefficient
            elif fresh or not current > 0:
                current = _INITIAL
            backend.host_assign(channel.variable, np.asarray(current, "float32"))
            channel.state = {}
        self._last_update = start
        self._step = start
        self._last = {}
        self._gaps = []
        # A resumed run whose support is already held only fine-tunes.
        self._held = bool(
            self._projects() and start >= self._end
            and _find_optimizer(self.model.optimizer).holds_support
        )

    def on_epoch_begin(self, epoch, logs=None):
        backend.sync_model_state(self.model)
        self._epoch_start = batches_applied(self.model.optimizer)

    def on_train_batch_end(self, batch, logs=None):
        self._step = (self._epoch_start + batch + 1) // self._k
        if self._held:
            return self._log(logs)
        if self._projects() and self._step >= self._end:
            self._finish(self._step)
        elif self._step - self._last_update >= self._freq:
            self._last_update = self._step
            reached = self._update(self._step)
            # Zeros made past the target are rolled back by the projection;
            # holding the support at once keeps that rollback small.
            if reached and self._projects():
                self._finish(self._step)
        self._log(logs)

    def _projects(self):
        return self.project and self.schedule is None and all(
            c.project is not None for c in self._channels)

    def _finish(self, step):
        """End of the ramp: make the sparsity exactly the target, hold the
        support and set the coefficient to 0, so the rest of the run
        fine-tunes the sparse model."""
        backend.sync_model_state(self.model)
        for channel in self._channels:
            measured = float(channel.measure())
            if abs(measured - self.target) > self.tolerance:
                self._gaps.append((channel.name, measured))
            channel.project(self.target)
            backend.host_assign(channel.variable, np.asarray(0.0, "float32"))
            record = {"step": step, "name": channel.name, "lambda": 0.0,
                      "sparsity": float(channel.measure()), "target": self.target}
            self.trajectory.append(record)
            self._last[channel.name] = record
        self._held = True

    def on_epoch_end(self, epoch, logs=None):
        self._log(logs)

    def _update(self, step):
        backend.sync_model_state(self.model)
        target = self.target_at(step)
        for channel in self._channels:
            predicted = float(channel.measure(step))
            sparsity = float(channel.measure())
            coefficient = _read_float(channel.variable)
            new = self.controller.update(coefficient, target, predicted, channel.state)
            if not (isinstance(new, numbers.Real) and math.isfinite(new) and new > 0):
                raise ValueError(
                    f"The controller {self.controller!r} returned an invalid "
                    f"coefficient. Received: {new!r}"
                )
            backend.host_assign(channel.variable, np.asarray(new, "float32"))
            record = {"step": step, "name": channel.name, "lambda": float(new),
                      "sparsity": sparsity, "predicted": predicted, "target": target}
            self.trajectory.append(record)
            self._last[channel.name] = record
        return all(r["sparsity"] >= self.target for r in self._last.values())

    def _log(self, logs):
        if logs is None or not self._last:
            return
        records = list(self._last.values())
        if len(records) == 1:
            logs["lambda"] = records[0]["lambda"]
        else:
            for record in records:
                logs[f"{record['name']}/lambda"] = record["lambda"]
        logs["controlled_sparsity"] = float(np.mean([r["sparsity"] for r in records]))
        logs["target_sparsity"] = records[0]["target"]

    def on_train_end(self, logs=None):
        backend.sync_model_state(self.model)
        reached = self.schedule is not None or self._step >= self._end
        if self._projects() and not self._held and reached:
            self._finish(self._step)
        for name, measured in self._gaps:
            warnings.warn(
                f"SparsityController: {name} was at sparsity {measured:.4f} when "
                f"the ramp ended, {abs(measured - self.target):.4f} from the target "
                f"{self.target:.4f}; it was projected to the target. Train longer "
                "(or raise `ramp`) so the penalty does more of the selection.",
                stacklevel=2,
            )
        self._gaps = []
        if self._held:
            return
        for channel in self._channels:
            # One batch's zeros are noisy (activations): the mean of the
            # last few measurements says where the run ended.
            recent = [r["sparsity"] for r in self.trajectory if r["name"] == channel.name][-5:]
            measured = float(np.mean(recent)) if recent else float(channel.measure())
            if reached and abs(measured - self.target) > self.tolerance:
                warnings.warn(
                    f"SparsityController: {channel.name} ended at sparsity "
                    f"{measured:.4f}, {abs(measured - self.target):.4f} from the "
                    f"target {self.target:.4f} (tolerance {self.tolerance}); train "
                    "longer so the controller has time to settle.",
                    stacklevel=2,
                )
