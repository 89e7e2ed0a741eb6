"""The callback that runs every sparse layer's schedule inside ``fit``."""

import math

import keras

from keras_sparse import backend
from keras_sparse.config import PACKAGE
from keras_sparse.ops.masks import global_topk_masks
from keras_sparse.utils import sparse_layers


@keras.saving.register_keras_serializable(package=PACKAGE)
class Pruning(keras.callbacks.Callback):
    """Apply the schedule, pattern and scorer of every sparse layer during
    ``fit`` (weight pruning; not trial pruning).

    The training step is ``optimizer.iterations`` read at the start of each
    epoch plus the batch index, so a run resumed from a checkpoint (for
    example with ``BackupAndRestore``) continues with the same step and the
    same masks. Masks change only on update steps, before the batch is
    trained. Layers created with ``global_pruning=True`` share one magnitude
    threshold; their sparsity follows the first such layer's schedule.

    Sparsity is written into ``logs``: ``"sparsity"`` (all masked weights)
    after every batch and epoch, and ``"<layer name>/sparsity"`` per layer at
    the end of each epoch, so the progress bar, ``CSVLogger`` and
    ``TensorBoard`` show them with no extra code.

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

    def get_config(self):
        return {"log_per_layer": self.log_per_layer}

    # ----------------------------------------------------------------- hooks
    def on_train_begin(self, logs=None):
        self._layers = sparse_layers(self.model)
        for layer in self._layers:
            layer._pruning_callback_attached = True
        # Fill every layer's sparsity cache while the variables are readable
        # (on JAX they are not between steps without a state sync).
        backend.sync_model_state(self.model)
        self.overall_sparsity()

    def on_train_end(self, logs=None):
        self._reapply_masks()
        for layer in self._layers:
            layer._pruning_callback_attached = False

    def _reapply_masks(self):
        if not self._layers:
            return
        backend.sync_model_state(self.model)
        for layer in self._layers:
            layer.reapply_masks()

    def on_epoch_begin(self, epoch, logs=None):
        backend.sync_model_state(self.model)
        self._epoch_start_step = backend.read_int(self.model.optimizer.iterations)

    def on_train_batch_begin(self, batch, logs=None):
        steps = self._steps_in_call(self._epoch_start_step + batch)
        self.update_masks(steps)

    def on_train_batch_end(self, batch, logs=None):
        if logs is not None and self._layers:
            logs["sparsity"] = self.overall_sparsity()

    def on_epoch_end(self, epoch, logs=None):
        # Stored weights agree with the masks at every epoch boundary, so
        # checkpoints written at epoch end hold exact zeros.
        self._reapply_masks()
        if logs is None or not self._layers:
            return
        logs["sparsity"] = self.overall_sparsity()
        if self.log_per_layer:
            for layer in self._layers:
                logs[f"{layer.name}/sparsity"] = layer.sparsity

    # ----------------------------------------------------------------- logic
    def _steps_in_call(self, first):
        per_call = getattr(self.model, "steps_per_execution", 1) or 1
        return range(first, first + int(per_call))

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
        due = [
            (layer, step)
            for layer in independent
            for step in [_first_update(layer.schedule, steps)]
            if step is not None
        ]
        global_step = (
            _first_update(global_layers[0].schedule, steps) if global_layers else None
        )
        if not due and global_step is None:
            return []
        backend.sync_model_state(self.model)
        for layer, step in due:
            layer.prune_to(layer.schedule.sparsity(step))
        updated = [layer for layer, _ in due]
        if global_step is not None:
            prune_globally(global_layers, global_layers[0].schedule.sparsity(global_step))
            updated += global_layers
        return updated

    def overall_sparsity(self):
        """Fraction of removed weights over every masked weight (cached)."""
        total = removed = 0.0
        for layer in self._layers:
            for name in layer.sparse_weight_names:
                size = math.prod(layer.get_mask(name).shape)
                total += size
                removed += layer.weight_sparsity(name) * size
        return removed / total if total else 0.0


def _first_update(schedule, steps):
    for step in steps:
        if schedule.should_update(step):
            return step
    return None


def prune_globally(layers, sparsity):
    """Apply one magnitude threshold across every masked weight of ``layers``."""
    entries = [(layer, name) for layer in layers for name in layer.sparse_weight_names]
    scores = [layer.score_weight(name) for layer, name in entries]
    for (layer, name), mask in zip(entries, global_topk_masks(scores, sparsity)):
        layer.set_mask(name, mask)
