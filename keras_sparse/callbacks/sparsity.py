"""The one callback that owns the training step, mask updates and the
sparsity logs during ``fit``; ``Pruning``, ``SET`` and ``RigL`` are thin
entries over it."""

import math
import warnings

import keras

from keras_sparse import backend
from keras_sparse import methods as methods_lib
from keras_sparse.callbacks.optimizer_state import add_gradient_probes
from keras_sparse.callbacks.optimizer_state import optimizer_slots
from keras_sparse.callbacks.optimizer_state import remove_gradient_probes
from keras_sparse.callbacks.optimizer_state import reset_optimizer_slots
from keras_sparse.config import PACKAGE
from keras_sparse.utils import layer_labels, sparse_layers

__all__ = ["Sparsity", "accumulation_steps"]

#: How far below its target (in entries) a layer may end before
#: ``on_train_end`` warns: the mask functions round ``sparsity * n``.
_TARGET_SLACK = 1.0

#: Largest ``groups x planned steps`` for which the update steps of a run
#: are listed when training begins (a normal batch is then one dict lookup);
#: longer runs ask each method's ``due`` at every batch.
_DUE_TABLE_MAX = 2_000_000


def _inner(optimizer):
    while getattr(optimizer, "inner_optimizer", None) is not None:
        optimizer = optimizer.inner_optimizer
    return optimizer


def accumulation_steps(optimizer):
    """The optimizer's ``gradient_accumulation_steps`` (1 without)."""
    return int(getattr(_inner(optimizer), "gradient_accumulation_steps", None) or 1)


def batches_applied(optimizer):
    """Batches the optimizer has applied (accumulated or not). With gradient
    accumulation Keras' ``iterations`` counts updates (one per
    ``gradient_accumulation_steps`` batches); its batch counter is
    ``_iterations``."""
    inner = _inner(optimizer)
    if accumulation_steps(inner) > 1:
        raw = getattr(inner, "_iterations", None)
        if raw is not None:
            return backend.read_int(raw)
        return backend.read_int(optimizer.iterations) * accumulation_steps(inner)
    return backend.read_int(optimizer.iterations)


@keras.saving.register_keras_serializable(package=PACKAGE)
class Sparsity(keras.callbacks.Callback):
    """Run a sparsity method during ``fit``: the single owner of the training
    step, of the mask updates and of the sparsity logs.

    **The step** is the number of optimizer updates applied (Keras'
    ``optimizer.iterations``: with ``gradient_accumulation_steps=k`` one
    update per ``k`` batches; an update due at step ``t`` runs before the
    first batch of that update). It is read when each epoch begins and
    advanced by the batches of the epoch,
    so a run resumed from a checkpoint (``BackupAndRestore``,
    ``ModelCheckpoint``) or a second ``fit`` continues exactly, with
    ``steps_per_execution`` each step is seen once, and the step never goes
    back within a ``fit`` (a step a loss-scale optimizer skipped does not
    advance ``iterations``; the next epoch starts after the last batch seen).

    **What changes** is decided by ``method`` (a
    :class:`~keras_sparse.methods.SparsityMethod`): when it is due, it
    returns new masks and each layer writes its own (``write_mask``, which
    also zeroes the stored weights); entries that drop-and-grow methods
    regrow start at 0 with their optimizer slots reset. ``method=None`` runs
    each layer's own method: the one given to ``ks.prune(..., method=...)``,
    else gradual pruning with the layer's schedule, pattern and scorer
    (:class:`~keras_sparse.methods.Gradual`).

    **Gradients**: methods and scorers that read the dense gradient (RigL,
    saliency, Taylor, movement) use the gradient probes ``ks.prune`` creates
    when it is told the method (``method=`` or a gradient ``scorer=``), so
    the optimizer and the train function are never rebuilt during ``fit``
    and training works under ``tf.distribute.MirroredStrategy`` with ``fit``
    called outside the scope. A model converted without them still trains:
    the probes are then added when training begins (rebuilding the
    optimizer, with its state) and removed when it ends, with a warning
    that names the conversion-time path. Probes are empty until the first
    step of each ``fit``: an update due then waits one step for a real
    gradient.

    **Checks**: when training begins on a model without a masked sparse
    layer, a warning says the callback has nothing to update (the model was
    not converted, or the unconverted one was passed to ``fit``); when
    training begins and Keras knows the planned number of
    steps, a warning names every layer whose schedule cannot reach its final
    sparsity in the planned steps (its last update step and the planned last
    step); when training ends, a warning names every layer that ended below
    its target.

    **Logs**: ``"sparsity"`` (all masked weights) after every batch and
    epoch, and ``"<layer>/sparsity"`` per layer at the end of each epoch
    (the path through nested models where two layers share a name), so the
    progress bar, ``CSVLogger`` and ``TensorBoard`` show them with no extra
    code. Put this callback before ``CSVLogger`` in the callback list.

    Args:
        method: a :class:`~keras_sparse.methods.SparsityMethod`, an alias
            (``"gradual"``, ``"set"``, ``"rigl"``) or ``None`` (each layer's
            own).
        log_per_layer: add per-layer sparsity to the epoch logs.

    Example:
    >>> model = ks.prune(model, 0.9, distribution="erk", method=ks.methods.RigL())
    >>> model.compile("adam", "sparse_categorical_crossentropy")
    >>> model.fit(x, y, epochs=5, callbacks=[ks.callbacks.Sparsity()])
    """

    def __init__(self, method=None, log_per_layer=True):
        super().__init__()
        if not isinstance(log_per_layer, bool):
            raise ValueError(
                f"`log_per_layer` must be a bool. Received: log_per_layer={log_per_layer!r}"
            )
        self.method = None if method is None else methods_lib.get(method)
        self.log_per_layer = log_per_layer
        self._layers = []
        self._labels = None
        self._plan = []
        self._epoch_start_batch = 0
        self._next_batch = None
        self._pending_steps = []
        self._waiting_for_build = False
        self._probed_during_fit = []
        self._gradient_ready = True
        self._deferred = {}
        self._sized = None
        self._k = None
        self._due_at = None
        self._observers = []
        #: dict layer label -> what the method reported about its last
        #: update (``(dropped, grown)`` for SET and RigL).
        self.last_update = {}

    def get_config(self):
        return {
            "method": methods_lib.serialize(self.method),
            "log_per_layer": self.log_per_layer,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    # -------------------------------------------------------------- methods
    def method_of(self, layer):
        """The method that moves ``layer``'s masks in this run."""
        if self.method is not None:
            return self.method
        return getattr(layer, "method", None) or _DEFAULT_METHOD

    def _build_plan(self):
        """``[(method, group, state)]`` for this run."""
        # Layers whose methods are equal (each layer of a converted model
        # holds its own copy) share one method object and one run state.
        by_method = []
        for layer in self._layers:
            method = self.method_of(layer)
            for known, members in by_method:
                if known is method or known == method:
                    members.append(layer)
                    break
            else:
                by_method.append((method, [layer]))
        plan = []
        params = self._training_params()
        for method, layers in by_method:
            managed = [layer for layer in layers if method.manages(layer)]
            for layer in managed:
                method.check_pattern(layer.pattern, layer.name)
            state = method.begin(managed, params)
            for group in method.groups(managed):
                plan.append((method, tuple(group), state))
        return plan

    def _training_params(self):
        params = dict(self.params or {})
        params["accumulation"] = self._accumulation()
        params["layers"] = list(self._layers)
        params["start"] = self.current_step()
        return params

    def _accumulation(self):
        # Fixed for one fit: read when training begins, not at every batch.
        if self._k is not None:
            return self._k
        optimizer = getattr(self.model, "optimizer", None)
        return accumulation_steps(optimizer) if optimizer is not None else 1

    # ----------------------------------------------------------------- hooks
    def on_train_begin(self, logs=None):
        self._k = None
        self._k = self._accumulation()
        self._due_at = None
        self._observers = []
        self._layers = [
            layer for layer in sparse_layers(self.model) if getattr(layer, "is_masked", True)
        ]
        if not self._layers:
            warnings.warn(
                f"{type(self).__name__} found no sparse layer with masks in model "
                f"{self.model.name!r}: it has nothing to update during this fit. Convert "
                "the model first, e.g. `model = ks.prune(model, sparsity)`, and pass the "
                "converted model to `fit`.",
                stacklevel=2,
            )
        for layer in self._layers:
            layer._pruning_callback_attached = True
        self._pending_steps = []
        self._next_batch = None
        self._labels = None
        self._sized = None
        self._plan = []
        # An unbuilt subclassed model is built by the first traced step (on
        # TF after this hook): wait for it, then start.
        self._waiting_for_build = not all(layer.built for layer in self._layers)
        if not self._waiting_for_build:
            self._start()

    def _start(self):
        backend.sync_model_state(self.model)
        self.overall_sparsity()
        self._gradient_ready = False
        self._deferred = {}
        self._plan = self._build_plan()
        self._check_gradient_at_step_zero()
        self._ensure_gradient_probes()
        self._check_reachable()
        self._observers = [
            (method, group, state) for method, group, state in self._plan
            if type(method).observe is not methods_lib.SparsityMethod.observe
        ]
        self._due_at = self._due_table()
        for method, group, state in self._plan:
            self._write(method.start(group, state))

    def _due_table(self):
        """``(first, last, {step: [plan index, ...]})``: the update steps of
        every group over this fit's planned steps (``due`` is a function of
        the step, the group and the run state), or ``None`` when the plan is
        unknown or too long to list."""
        epochs, steps = (self.params or {}).get("epochs"), (self.params or {}).get("steps")
        if not epochs or not steps or not self._plan:
            return None
        initial = int(getattr(self.model, "_initial_epoch", None) or 0)
        done = backend.read_int(self.model.optimizer.iterations)
        remaining = max(0, int(epochs) - initial) * int(steps)
        first = done // self._accumulation()
        # Methods running after a step see the step after the last one.
        last = (done + remaining) // self._accumulation()
        if (last - first + 1) * len(self._plan) > _DUE_TABLE_MAX:
            return None
        table = {}
        for index, (method, group, state) in enumerate(self._plan):
            for step in range(first, last + 1):
                if method.due(step, group, state):
                    table.setdefault(step, []).append(index)
        return first, last, table

    def _ensure_gradient_probes(self):
        needing = [
            layer
            for method, group, _ in self._plan
            for layer in group
            if method.needs_gradient(layer) and not layer.has_gradient_probe
        ]
        if not needing:
            self._probed_during_fit = []
            return
        warnings.warn(
            "Layers "
            f"{[layer.name for layer in needing]} need the dense gradient, but the model "
            "was converted without gradient probes: they are added now, which rebuilds "
            "the optimizer (not possible under tf.distribute with `fit` outside the "
            "strategy scope). Convert with the method instead, e.g. "
            "`ks.prune(model, sparsity, method=ks.methods.RigL(...))` or "
            "`ks.prune(..., scorer='taylor')`, then fit with `ks.callbacks.Sparsity()`.",
            stacklevel=3,
        )
        add_gradient_probes(self.model, needing)
        self._probed_during_fit = needing

    def _check_gradient_at_step_zero(self):
        if self.current_step() != 0:
            return
        early = [
            layer.name
            for method, group, state in self._plan
            if not method.runs_after_step and method.due(0, group, state)
            for layer in group
            if method.needs_gradient(layer) and layer.schedule.sparsity(0) > 0
        ]
        if early:
            raise ValueError(
                "A gradient scorer cannot prune at step 0: no gradient exists before "
                "the first training step. Start the schedule later, or prune at "
                "initialization with ks.prune_at_init(model, data, sparsity, "
                f"scorer='snip'). Received: layers {early} pruning at step 0"
            )

    def _check_reachable(self):
        epochs, steps = (self.params or {}).get("epochs"), (self.params or {}).get("steps")
        if not epochs or not steps:
            return
        # The epochs of this fit, from the one it starts at (a resumed run
        # starts later), and the batches already trained.
        initial = int(getattr(self.model, "_initial_epoch", None) or 0)
        remaining = max(0, int(epochs) - initial) * int(steps)
        done = batches_applied(self.model.optimizer)
        planned_last = (done + remaining) // self._accumulation() - 1
        late = []
        for method, group, state in self._plan:
            for layer in group:
                last = method.last_update_step(layer, state)
                target = method.final_sparsity(layer)
                if last is None or last <= planned_last:
                    continue
                reached = method.sparsity_at(planned_last, layer, state)
                if reached < target - 1e-9:
                    late.append(
                        f"{layer.name!r} (end_step={last}, planned last step={planned_last}, "
                        f"reaches {reached:.3f} of {target:.3f})"
                    )
        if late:
            warnings.warn(
                "These layers will not reach their final sparsity in this fit: "
                + "; ".join(late)
                + ". The step is the number of optimizer updates, counted from 0 "
                "(tfmot schedules keep tfmot's count from 1). Lower `end_step` or "
                "train longer.",
                stacklevel=3,
            )

    def on_train_end(self, logs=None):
        if self._deferred and self._gradient_ready and not self._waiting_for_build:
            self.update_masks(())
        self._reapply_masks()
        self._check_targets()
        for layer in self._layers:
            layer._pruning_callback_attached = False
        if self._probed_during_fit:
            remove_gradient_probes(self.model, self._layers)
            self._probed_during_fit = []

    def _check_targets(self):
        short = []
        for method, group, state in self._plan:
            entries = [
                (layer, name, math.prod(layer.get_mask(name).shape))
                for layer in group for name in layer.sparse_weight_names
            ]
            if len(group) > 1 or group[0].global_pruning:
                # One budget over the group: per-layer shares differ.
                target = method.final_sparsity(group[0])
                total = sum(size for _, _, size in entries)
                zeros = sum(layer.weight_sparsity(name) * size for layer, name, size in entries)
                if target * total - zeros > _TARGET_SLACK * len(entries):
                    short.append(
                        f"{[layer.name for layer in group]} at {zeros / total:.3f} "
                        f"(global target {target:.3f})"
                    )
                continue
            target = method.final_sparsity(group[0])
            for layer, name, size in entries:
                if (target - layer.weight_sparsity(name)) * size > _TARGET_SLACK:
                    short.append(
                        f"{layer.name!r} {name} at {layer.weight_sparsity(name):.3f} "
                        f"(target {target:.3f})"
                    )
        if short:
            warnings.warn(
                "Training ended below the target sparsity: " + "; ".join(short)
                + f" at step {self.current_step()}.",
                stacklevel=2,
            )

    def _reapply_masks(self):
        if not self._layers:
            return
        backend.sync_model_state(self.model)
        for layer in self._layers:
            layer.reapply_masks()

    def on_epoch_begin(self, epoch, logs=None):
        backend.sync_model_state(self.model)
        start = batches_applied(self.model.optimizer)
        if self._next_batch is not None:
            start = max(start, self._next_batch)
        self._epoch_start_batch = start

    def on_train_batch_begin(self, batch, logs=None):
        first = self._epoch_start_batch + batch
        batches = self._batches_in_call(first)
        self._next_batch = batches.stop
        steps = self._steps_starting_in(batches)
        if self._waiting_for_build:
            self._pending_steps.extend(steps)
            return
        self.update_masks(steps, after_step=False)

    def on_train_batch_end(self, batch, logs=None):
        if self._waiting_for_build:
            if not all(layer.built for layer in self._layers):
                return
            self._waiting_for_build = False
            self._start()
            self.update_masks(self._pending_steps)
            self._pending_steps = []
            return
        begin = self._epoch_start_batch + batch - self._batches_per_call() + 1
        batches = self._batches_in_call(begin)
        self._observe(batches)
        self._gradient_ready = True
        # The update for step t of a method that runs after the previous
        # step happens once the batch completing step t - 1 is trained.
        k = self._accumulation()
        steps = [(b + 1) // k for b in batches if (b + 1) % k == 0]
        self.update_masks(steps, after_step=True)
        if logs is not None and self._layers:
            logs["sparsity"] = self.overall_sparsity()

    def _observe(self, batches):
        k = self._accumulation()
        active = self._observers
        if not active:
            return
        trained = [b // k for b in batches if (b + 1) % k == 0]
        if not trained:
            return
        backend.sync_model_state(self.model)
        for method, group, state in active:
            method.observe(group, state, trained[-1])

    def on_epoch_end(self, epoch, logs=None):
        # Stored weights agree with the masks at every epoch boundary, so
        # checkpoints written at epoch end hold exact zeros.
        self._reapply_masks()
        if logs is None or not self._layers:
            return
        logs["sparsity"] = self.overall_sparsity()
        if self.log_per_layer:
            for layer, label in zip(self._layers, self.layer_labels()):
                logs[f"{label}/sparsity"] = layer.sparsity

    # ----------------------------------------------------------------- steps
    def current_step(self):
        """The next training step (optimizer updates applied so far)."""
        if self._next_batch is not None:
            return self._next_batch // self._accumulation()
        return batches_applied(self.model.optimizer) // self._accumulation()

    def _batches_per_call(self):
        return int(getattr(self.model, "steps_per_execution", 1) or 1)

    def _batches_in_call(self, first):
        """The batches (``iterations`` before each) of the call starting at
        ``first``; the last call of an epoch can run fewer than
        ``steps_per_execution`` batches, so the range stops at the epoch's end."""
        last = first + self._batches_per_call()
        epoch_steps = (self.params or {}).get("steps")
        if epoch_steps:
            last = min(last, self._epoch_start_batch + int(epoch_steps))
        return range(first, last)

    def _steps_starting_in(self, batches):
        """Optimizer steps whose first batch is in ``batches``."""
        k = self._accumulation()
        return [b // k for b in batches if b % k == 0]

    # ---------------------------------------------------------------- update
    def update_masks(self, steps, after_step=None):
        """Update every group due at a step of ``steps`` (its first due
        step). ``after_step``: only methods running after (``True``) or
        before (``False``) the step; ``None``: both. Returns the layers
        updated."""
        if isinstance(steps, int):
            steps = (steps,)
        steps = tuple(steps)
        due_at = self._due_at
        if due_at is not None and all(due_at[0] <= t <= due_at[1] for t in steps):
            if not self._deferred and not any(t in due_at[2] for t in steps):
                return []
            pending = dict(self._deferred)
            self._deferred = {}
            first_due = {}
            for t in steps:
                for index in due_at[2].get(t, ()):
                    method = self._plan[index][0]
                    if after_step is not None and method.runs_after_step != after_step:
                        continue
                    first_due.setdefault(index, t)
            pending.update(first_due)
        else:
            pending = dict(self._deferred)
            self._deferred = {}
            for index, (method, group, state) in enumerate(self._plan):
                if after_step is not None and method.runs_after_step != after_step:
                    continue
                step = next((t for t in steps if method.due(t, group, state)), None)
                if step is not None:
                    pending[index] = step
        if not self._gradient_ready:
            for index in list(pending):
                method, group, _ = self._plan[index]
                if not method.runs_after_step and any(
                    method.needs_gradient(layer) for layer in group
                ):
                    self._deferred[index] = pending.pop(index)
        if not pending:
            return []
        backend.sync_model_state(self.model)
        updated = []
        for index, step in pending.items():
            method, group, state = self._plan[index]
            for layer in self._update_group(method, group, state, step):
                updated.append(layer)
        return updated

    def _update_group(self, method, group, state, step):
        if len(group) == 1 or method.updates_each_layer:
            for layer in group:
                self.update_layer(layer, step)
        else:
            self._apply(method, group, state, step)
        return group

    def update_layer(self, layer, step):
        """Recompute the masks of ``layer`` for step ``step`` with its
        method (variables are synced). A layer sharing a global threshold
        is updated with its whole group."""
        for method, group, state in self._plan:
            if any(member is layer for member in group):
                if method.updates_each_layer:
                    group = (layer,)
                self._apply(method, group, state, step)
                return
        raise ValueError(f"Layer {layer.name!r} is not managed by this callback.")

    def _apply(self, method, group, state, step):
        """Write the masks ``method`` gives ``group`` for ``step``: as one
        compiled function where the method and the backend allow
        (``method.compiled_update``, ``backend.compile_update``), else
        eagerly."""
        if backend.compiles_updates():
            compiled = method.compiled_update(step, group, state)
            if compiled is not None:
                key, entries, rule, keep = compiled
                if entries[0][0].write_masks_compiled(key, entries, rule, keep):
                    return
        self._write(method.update(step, group, state))

    def _write(self, updates):
        reported = {}
        for update in updates:
            kept = update.layer.write_mask(
                update.name, update.mask, rescale=update.rescale, zero_grown=update.zero_grown
            )
            if update.zero_grown:
                latent = update.layer.latent_weight(update.name)
                optimizer = self.model.optimizer
                reset_optimizer_slots(
                    optimizer, latent, kept, slots=self._slots_of(optimizer, latent)
                )
            if update.info is not None:
                previous = reported.get(id(update.layer))
                reported[id(update.layer)] = (
                    update.info if previous is None
                    else tuple(a + b for a, b in zip(previous, update.info))
                )
        if reported:
            labels = dict(zip(map(id, self._layers), self.layer_labels()))
            for layer in {id(u.layer): u.layer for u in updates}.values():
                if id(layer) in reported:
                    self.last_update[labels.get(id(layer), layer.name)] = reported[id(layer)]

    def _slots_of(self, optimizer, variable):
        cache = self.__dict__.setdefault("_slot_cache", {})
        cached = cache.get(id(variable))
        if cached is None or cached[0] is not optimizer or cached[1] is not variable:
            cached = (optimizer, variable, optimizer_slots(optimizer, variable))
            cache[id(variable)] = cached
        return cached[2]

    # ------------------------------------------------------------------ logs
    def layer_labels(self):
        """The log label of each managed layer: its name, or its path
        through the nested models where two share a name."""
        if self._labels is None:
            self._labels = layer_labels(self.model, self._layers)
        return self._labels

    def overall_sparsity(self):
        """Fraction of removed weights over every masked weight (cached)."""
        total = removed = 0.0
        for layer, name, size in self._sized_entries():
            total += size
            removed += layer.weight_sparsity(name) * size
        return removed / total if total else 0.0

    def _sized_entries(self):
        cached = self._sized
        if cached is None or cached[0] is not self._layers:
            entries = [
                (layer, name, math.prod(layer.get_mask(name).shape))
                for layer in self._layers
                for name in layer.sparse_weight_names
            ]
            self._sized = cached = (self._layers, entries)
        return cached[1]


_DEFAULT_METHOD = methods_lib.Gradual()
