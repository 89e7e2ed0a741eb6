"""The callback that runs every sparse layer's schedule inside ``fit``."""

import math

import keras
import numpy as np
from keras import ops

from keras_sparse import backend
from keras_sparse.callbacks.optimizer_state import add_gradient_probes
from keras_sparse.callbacks.optimizer_state import remove_gradient_probes
from keras_sparse.config import PACKAGE
from keras_sparse.ops.drop_grow import variance_rescale
from keras_sparse.ops.masks import global_topk_masks
from keras_sparse.utils import layer_labels, sparse_layers


@keras.saving.register_keras_serializable(package=PACKAGE)
class Pruning(keras.callbacks.Callback):
    """Apply the schedule, pattern and scorer of every sparse layer during
    ``fit`` (weight pruning; not trial pruning).

    The training step is ``optimizer.iterations`` read at the start of each
    epoch plus the batch index, so a run resumed from a checkpoint (for
    example with ``BackupAndRestore``) continues with the same step and the
    same masks. Within one ``fit`` the step never goes back: a step the
    optimizer skipped (``LossScaleOptimizer`` on a non-finite gradient) does
    not advance ``iterations``, and the next epoch starts after the last
    batch seen, so no update step runs twice. Masks change only on update steps, before the batch is
    trained. Layers created with ``global_pruning=True`` share one magnitude
    threshold; their sparsity follows the first such layer's schedule.

    Sparsity is written into ``logs``: ``"sparsity"`` (all masked weights)
    after every batch and epoch, and ``"<layer name>/sparsity"`` per layer at
    the end of each epoch (where layers of nested models share a name, the
    label is their path, ``"<model>/<layer>/sparsity"``), so the progress
    bar, ``CSVLogger`` and ``TensorBoard`` show them with no extra code.

    Gradient-based scorers (``"saliency"``, ``"taylor"``, ``"movement"``)
    read the dense gradient of the last training step from a gradient probe
    the callback adds to their layers when training begins (the optimizer is
    rebuilt with the probes, keeping its state, and the train function
    remade); they are removed again when training ends, so the trained model
    saves and reloads like any other. The probes are empty until the first
    step of each ``fit``: an update due at that step (a resumed run, a second
    ``fit``) happens one step later, with a real gradient. Accumulating
    scorers (Taylor, movement) are summed after every step, on the weights
    after the step, until the schedule's last update; the sums live in the
    callback, so a resumed run restarts them. A scorer with ``rescale_survivors`` (random)
    rescales the kept weights of each unit when a mask is applied.

    Subclasses change *how* a layer's masks are updated by overriding
    :meth:`update_layer` (and :meth:`due_step` for their own timing);
    :class:`~keras_sparse.callbacks.SET` and
    :class:`~keras_sparse.callbacks.RigL` do.

    Args:
        log_per_layer: add per-layer sparsity to the epoch logs.

    Example:
    >>> model = ks.prune(model, 0.9)
    >>> model.fit(x, y, epochs=5, callbacks=[ks.callbacks.Pruning()])
    """

    def __init__(self, log_per_layer=True):
        super().__init__()
        if not isinstance(log_per_layer, bool):
            raise ValueError(
                f"`log_per_layer` must be a bool. Received: log_per_layer={log_per_layer!r}"
            )
        self.log_per_layer = log_per_layer
        self._layers = []
        self._epoch_start_step = 0
        self._next_step = None
        self._labels = None
        self._pending_steps = []
        self._waiting_for_build = False
        self._accumulated = {}
        self._probed = False
        self._gradient_ready = True
        self._deferred = {}

    def get_config(self):
        return {"log_per_layer": self.log_per_layer}

    # ----------------------------------------------------------------- hooks
    def on_train_begin(self, logs=None):
        self._layers = sparse_layers(self.model)
        for layer in self._layers:
            layer._pruning_callback_attached = True
        self._pending_steps = []
        self._next_step = None
        self._labels = None
        # An unbuilt subclassed model is built by the first traced step (on
        # TF after this hook): wait for it, then start.
        self._waiting_for_build = not all(layer.built for layer in self._layers)
        if not self._waiting_for_build:
            self._start()

    def _start(self):
        # Fill every layer's sparsity cache while the variables are readable
        # (on JAX they are not between steps without a state sync).
        backend.sync_model_state(self.model)
        self.overall_sparsity()
        self._accumulated = {}
        # Gradient probes hold zeros until this run's first step fills them.
        self._gradient_ready = False
        self._deferred = {}
        self._check_gradient_at_step_zero()
        probed = self.layers_needing_gradient()
        self._probed = bool(probed)
        if probed:
            add_gradient_probes(self.model, probed)

    def _check_gradient_at_step_zero(self):
        if backend.read_int(self.model.optimizer.iterations) != 0:
            return
        early = [
            layer.name for layer in self._layers
            if layer.schedule is not None
            and layer.scorer.needs_gradient
            and layer.schedule.should_update(0)
            and layer.schedule.sparsity(0) > 0
        ]
        if early:
            raise ValueError(
                "A gradient scorer cannot prune at step 0: no gradient exists before "
                "the first training step. Start the schedule later, or prune at "
                "initialization with ks.prune_at_init(model, data, sparsity, "
                f"scorer='snip'). Received: layers {early} pruning at step 0"
            )

    def layers_needing_gradient(self):
        """Layers that need a gradient probe during this run."""
        return [
            layer for layer in self._layers
            if layer.schedule is not None and layer.scorer.needs_gradient
        ]

    def on_train_end(self, logs=None):
        if self._deferred and self._gradient_ready:
            self.update_masks(())
        self._reapply_masks()
        for layer in self._layers:
            layer._pruning_callback_attached = False
        if self._probed:
            # Probes exist only while training: the trained model saves and
            # loads like one that never had them.
            remove_gradient_probes(self.model, self._layers)
            self._probed = False

    def _reapply_masks(self):
        if not self._layers:
            return
        backend.sync_model_state(self.model)
        for layer in self._layers:
            layer.reapply_masks()

    def on_epoch_begin(self, epoch, logs=None):
        backend.sync_model_state(self.model)
        start = backend.read_int(self.model.optimizer.iterations)
        if self._next_step is not None:
            start = max(start, self._next_step)
        self._epoch_start_step = start

    def on_train_batch_begin(self, batch, logs=None):
        steps = self._steps_in_call(self._epoch_start_step + batch)
        self._next_step = steps.stop
        if self._waiting_for_build:
            self._pending_steps.extend(steps)
            return
        self.update_masks(steps)

    def on_train_batch_end(self, batch, logs=None):
        if self._waiting_for_build:
            if not all(layer.built for layer in self._layers):
                return
            self._waiting_for_build = False
            self._start()
            # Updates due before the model existed happen now, once.
            self.update_masks(self._pending_steps)
            self._pending_steps = []
            return
        self._accumulate_scores()
        self._gradient_ready = True
        if logs is not None and self._layers:
            logs["sparsity"] = self.overall_sparsity()

    def _accumulate_scores(self):
        # The step just trained counts only towards a later update.
        trained = (self._next_step or 0) - 1
        layers = [
            layer for layer in self._layers
            if layer.schedule is not None and layer.scorer.accumulate
            and (self._deferred or layer.schedule.last_update_step() is None
                 or trained < layer.schedule.last_update_step())
        ] if self._layers else []
        if not layers:
            return
        backend.sync_model_state(self.model)
        for layer in layers:
            for name in layer.sparse_weight_names:
                score = layer.score_weight(name, layer.last_gradient(name))
                key = (id(layer), name)
                previous = self._accumulated.get(key)
                self._accumulated[key] = score if previous is None else ops.add(previous, score)

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

    # ----------------------------------------------------------------- logic
    def layer_labels(self):
        """The log label of each managed layer (in ``logs``): its name, or
        its path through the nested models where two share a name."""
        if self._labels is None:
            self._labels = layer_labels(self.model, self._layers)
        return self._labels

    def current_step(self):
        """The next training step as this callback counts it (the optimizer's
        ``iterations`` before the first batch of a ``fit``)."""
        if self._next_step is not None:
            return self._next_step
        return backend.read_int(self.model.optimizer.iterations)

    def _steps_per_call(self):
        return int(getattr(self.model, "steps_per_execution", 1) or 1)

    def _steps_in_call(self, first):
        """The optimizer steps (iteration counts before each step) of the
        call that starts at ``first``. The last call of an epoch can run
        fewer than ``steps_per_execution`` steps (Keras still reports the full
        range), so the range stops at the epoch's end."""
        last = first + self._steps_per_call()
        epoch_steps = (self.params or {}).get("steps")
        if epoch_steps:
            last = min(last, self._epoch_start_step + int(epoch_steps))
        return range(first, last)

    def update_masks(self, steps):
        """Update the masks of every layer that has an update step in
        ``steps`` (an iterable of training steps). Returns the layers
        updated."""
        if isinstance(steps, int):
            steps = (steps,)
        steps = tuple(steps)
        independent, global_layers = [], []
        for layer in self._layers:
            if layer.schedule is None:
                continue
            (global_layers if layer.global_pruning else independent).append(layer)
        pending = dict(self._deferred)
        for layer in independent:
            step = self.due_step(layer, steps)
            if step is not None:
                pending[id(layer)] = ([layer], step)
        if global_layers:
            step = self.due_step(global_layers[0], steps)
            if step is not None:
                pending["global"] = (global_layers, step)
        self._deferred = {}
        if not self._gradient_ready:
            # Ranking by a gradient waits for the first step of this run
            # (after a resume or in a second ``fit`` the probes start at 0).
            for key, (layers, step) in list(pending.items()):
                if any(layer.scorer.needs_gradient for layer in layers):
                    self._deferred[key] = pending.pop(key)
        if not pending:
            return []
        backend.sync_model_state(self.model)
        updated = []
        for key, (layers, step) in pending.items():
            if key == "global":
                self.update_global(layers, step)
            else:
                self.update_layer(layers[0], step)
            updated += layers
        return updated

    def due_step(self, layer, steps):
        """The first step of ``steps`` at which ``layer`` is updated, or
        ``None``. Default: the layer's schedule decides."""
        return _first_update(layer.schedule, steps)

    def update_layer(self, layer, step):
        """Recompute the masks of ``layer`` for training step ``step``
        (variables are synced). Default: the layer's scorer and pattern at
        the schedule's sparsity."""
        sparsity = layer.schedule.sparsity(step)
        for name in layer.sparse_weight_names:
            mask = layer.compute_mask_for(name, sparsity, self.scores(layer, name))
            self.apply_mask(layer, name, mask)

    def update_global(self, layers, step):
        """Update layers sharing one threshold (``global_pruning=True``)."""
        entries = [(layer, name) for layer in layers for name in layer.sparse_weight_names]
        scores = [self.scores(layer, name) for layer, name in entries]
        sparsity = layers[0].schedule.sparsity(step)
        for (layer, name), mask in zip(entries, global_topk_masks(scores, sparsity)):
            self.apply_mask(layer, name, mask)

    def scores(self, layer, name):
        """Importance of each entry of weight ``name`` under the layer's
        scorer: with the last step's gradient if the scorer needs one, and
        the sum since the last update for accumulating scorers."""
        scorer = layer.scorer
        if scorer.accumulate:
            key = (id(layer), name)
            total = self._accumulated.get(key)
            if total is None:
                total = layer.score_weight(name, layer.last_gradient(name))
            if scorer.reset_after_update:
                self._accumulated.pop(key, None)
            # A pruned entry stays pruned unless the sparsity goes down.
            floor = ops.full(ops.shape(total), -np.inf, dtype=total.dtype)
            return ops.where(ops.convert_to_tensor(layer.get_mask(name)), total, floor)
        if scorer.needs_gradient:
            return layer.score_weight(name, layer.last_gradient(name))
        return layer.score_weight(name)

    def apply_mask(self, layer, name, mask, rescale=None):
        """Assign ``mask``; rescale the survivors of each unit if ``rescale``
        (default: if the layer's scorer asks, see ``rescale_survivors``)."""
        if rescale is None:
            rescale = layer.scorer.rescale_survivors
        if rescale:
            # A host copy: on TF a read of the variable can alias its buffer.
            before = np.array(ops.convert_to_numpy(layer.get_mask(name)))
            layer.set_mask(name, mask)
            output_axes = layer.weight_layout(name).output_axes or tuple(
                range(before.ndim)
            )
            factor = variance_rescale(before, mask, output_axes)
            latent = layer.latent_weight(name)
            latent.assign(ops.multiply(latent, ops.cast(factor, latent.dtype)))
        else:
            layer.set_mask(name, mask)

    def overall_sparsity(self):
        """Fraction of removed weights over every masked weight (cached)."""
        entries = self._sized_entries()
        total = removed = 0.0
        for layer, name, size in entries:
            total += size
            removed += layer.weight_sparsity(name) * size
        return removed / total if total else 0.0

    def _sized_entries(self):
        # Runs after every batch: the sizes are computed once per layer list.
        cached = getattr(self, "_sized", None)
        if cached is None or cached[0] is not self._layers or len(cached[1]) != sum(
            len(layer.sparse_weight_names) for layer in self._layers
        ):
            entries = [
                (layer, name, math.prod(layer.get_mask(name).shape))
                for layer in self._layers
                for name in layer.sparse_weight_names
            ]
            self._sized = cached = (self._layers, entries)
        return cached[1]


def _first_update(schedule, steps):
    for step in steps:
        if schedule.should_update(step):
            return step
    return None


def prune_globally(layers, sparsity):
    """Apply one magnitude threshold across every masked weight of ``layers``
    (scorers that need no gradient)."""
    entries = [(layer, name) for layer in layers for name in layer.sparse_weight_names]
    scores = [layer.score_weight(name) for layer, name in entries]
    for (layer, name), mask in zip(entries, global_topk_masks(scores, sparsity)):
        layer.set_mask(name, mask)
