"""Dynamic sparse training: SET, built on the ``Pruning`` callback (RigL,
its gradient-grown variant, is in ``rigl.py``).

Both keep every layer at a fixed sparsity (the target ``ks.prune`` gave it,
e.g. from an ERK or uniform distribution) and periodically move a fraction of
its connections: the smallest-magnitude active weights are dropped and the
same number of inactive ones are grown. SET grows at random, RigL where the
dense gradient is largest. Step counting, layer discovery, logs, resume and
the end-of-epoch re-zeroing are the ``Pruning`` callback's; these classes
only override how a layer is updated and when.
"""

import math
import numbers

import keras
import numpy as np
from keras import ops

from keras_sparse import backend
from keras_sparse import patterns as patterns_lib
from keras_sparse import scorers as scorers_lib
from keras_sparse.callbacks.optimizer_state import optimizer_slots
from keras_sparse.callbacks.optimizer_state import reset_optimizer_slots
from keras_sparse.callbacks.pruning import Pruning
from keras_sparse.config import PACKAGE
from keras_sparse.ops.drop_grow import check_decay
from keras_sparse.ops.drop_grow import drop_and_grow_arrays
from keras_sparse.ops.drop_grow import drop_fraction
from keras_sparse.ops.masks import global_topk_masks

__all__ = ["SET"]

#: Fraction of training after which updates stop when ``end_step`` is not
#: given (RigL's default).
DEFAULT_END_FRACTION = 0.75


def _check_positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer. Received: {name}={value!r}")
    return value


@keras.saving.register_keras_serializable(package=PACKAGE)
class SET(Pruning):
    """Sparse Evolutionary Training: drop the smallest weights, regrow at
    random, at constant sparsity.

    Use it alone in ``fit`` on a model from ``ks.prune``; each layer keeps
    the sparsity ``ks.prune`` assigned it (``distribution="erk"`` for the
    papers' set-up, or ``"uniform"``) and only its connectivity changes.
    The layers' schedules give the target sparsity; their timing is not
    used. Unstructured layers whose masks ``ks.prune_at_init`` fixed (no
    schedule) keep the sparsity of their mask.

    * **Start.** When training begins, a layer whose mask is not yet at its
      target is pruned to it with ``init_scorer`` (default ``"random"``: a
      random sparse network with the survivors rescaled by
      ``sqrt(k_before / k_after)`` per unit, see
      :class:`~keras_sparse.scorers.RandomScorer`). Masks already at target
      (from ``ks.prune_at_init`` or a restored checkpoint) are kept.
    * **Update** at every step ``t = begin_step + k * update_freq`` with
      ``begin_step < t < end_step``: in every layer, ``n = round(f(t) *
      active)`` active weights with the smallest ``|w|`` are dropped and
      ``n`` weights grown among all those not kept, the ones just dropped
      included (:func:`keras_sparse.ops.drop_grow.drop_and_grow`), so the
      number of active weights of each layer never changes. The update for
      step ``t`` runs right after step ``t - 1`` (so it uses that step's
      gradient, and a checkpoint written then already holds it).
    * **Newly grown weights start at 0**, and the optimizer slots (Adam's m
      and v, momentum, ...) of every inactive or newly grown entry are reset
      to 0. A weight dropped and grown again in the same update keeps its
      value and slots.
    * ``f(t)``: ``drop_fraction`` with ``decay`` (cosine by default,
      :func:`keras_sparse.ops.drop_grow.drop_fraction`).

    Regrowth draws from a generator seeded by ``(seed, step, layer)``, so a
    run resumed with ``BackupAndRestore`` makes the same choices. The current
    drop fraction is logged as ``"drop_fraction"`` at each epoch end.

    Reference: D. Mocanu et al., "Scalable training of artificial neural
    networks with adaptive sparse connectivity inspired by network science",
    Nature Communications 2018.

    Args:
        update_freq: steps between connectivity updates (ΔT).
        drop_fraction: initial fraction ``alpha`` of active weights replaced.
        end_step: last step (exclusive) with updates; ``None`` = 75 % of the
            steps of the ``fit`` call (pass it explicitly when training
            with several ``fit`` calls).
        begin_step: updates start after this step.
        decay: ``"cosine"`` (default), ``"linear"`` or ``"constant"``
            (SET's original fixed ζ).
        init_scorer: scorer for the initial mask (``"random"``,
            ``"magnitude"``, ...).
        seed: seed of the random choices; ``None`` draws one from numpy's
            global generator (seeded by ``keras.utils.set_random_seed``).
        log_per_layer: add per-layer sparsity to the epoch logs.
        regrow_dropped: whether a weight dropped in an update may be grown
            again in the same update (default ``True``, as in RigL's
            algorithm and reference code: it then simply stays, with its
            value and optimizer state). ``False`` grows only among the
            weights inactive before the update, so exactly ``n`` connections
            move.

    Example:
    >>> model = ks.prune(model, 0.9, distribution="erk")
    >>> model.compile("adam", "sparse_categorical_crossentropy")
    >>> model.fit(x, y, epochs=20, callbacks=[ks.callbacks.SET(update_freq=100)])
    """

    def __init__(
        self,
        update_freq=100,
        drop_fraction=0.3,
        end_step=None,
        begin_step=0,
        decay="cosine",
        init_scorer="random",
        seed=None,
        log_per_layer=True,
        regrow_dropped=True,
    ):
        super().__init__(log_per_layer=log_per_layer)
        if not isinstance(regrow_dropped, bool):
            raise ValueError(
                f"`regrow_dropped` must be a bool. Received: regrow_dropped={regrow_dropped!r}"
            )
        self.regrow_dropped = regrow_dropped
        self.update_freq = _check_positive_int(update_freq, "update_freq")
        if isinstance(drop_fraction, bool) or not isinstance(drop_fraction, numbers.Real) or not (
            0.0 < float(drop_fraction) <= 1.0
        ):
            raise ValueError(
                f"`drop_fraction` must be in (0, 1]. Received: drop_fraction={drop_fraction!r}"
            )
        self.drop_fraction = float(drop_fraction)
        if isinstance(begin_step, bool) or not isinstance(begin_step, int) or begin_step < 0:
            raise ValueError(
                f"`begin_step` must be a non-negative integer. Received: begin_step={begin_step!r}"
            )
        self.begin_step = begin_step
        if end_step is not None:
            if (
                isinstance(end_step, bool)
                or not isinstance(end_step, int)
                or end_step <= begin_step
            ):
                raise ValueError(
                    "`end_step` must be an integer greater than `begin_step`, or None. "
                    f"Received: end_step={end_step!r}, begin_step={begin_step}"
                )
        self.end_step = end_step
        self.decay = check_decay(decay)
        self.init_scorer = scorers_lib.get(init_scorer)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"`seed` must be an integer or None. Received: seed={seed!r}")
        self.seed = seed
        self._seed = seed if seed is not None else int(np.random.randint(2**31 - 1))
        self._end_step = end_step
        #: dict layer label (its name, see ``layer_labels``) -> (dropped, grown)
        #: of the last update.
        self.last_update = {}
        self._slot_cache = {}

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "update_freq": self.update_freq,
                "drop_fraction": self.drop_fraction,
                "end_step": self.end_step,
                "begin_step": self.begin_step,
                "decay": self.decay,
                "init_scorer": scorers_lib.serialize(self.init_scorer),
                "seed": self.seed,
                "regrow_dropped": self.regrow_dropped,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("init_scorer"), dict):
            config["init_scorer"] = scorers_lib.get(config["init_scorer"])
        return cls(**config)

    # ----------------------------------------------------------------- timing
    def resolved_end_step(self):
        """``end_step``, or the default computed when training began."""
        return self._end_step

    def fraction_at(self, step):
        """Drop fraction ``f(step)``."""
        return drop_fraction(
            step, self.drop_fraction, self.begin_step, self._end_step, self.decay
        )

    def is_update_step(self, step):
        """Whether connectivity is updated for training step ``step``."""
        return (
            self.begin_step < step < self._end_step
            and (step - self.begin_step) % self.update_freq == 0
        )

    # ------------------------------------------------------------------ hooks
    def on_train_begin(self, logs=None):
        self._slot_cache = {}
        if self.end_step is None:
            epochs = (self.params or {}).get("epochs")
            steps = (self.params or {}).get("steps")
            if not epochs or not steps:
                raise ValueError(
                    f"{type(self).__name__} needs `end_step` when the number of steps "
                    "per epoch is unknown. Received: end_step=None"
                )
            self._end_step = max(self.begin_step + 1, int(DEFAULT_END_FRACTION * epochs * steps))
        super().on_train_begin(logs)
        managed = self.managed_layers()
        for layer in managed:
            if type(layer.pattern) is not patterns_lib.Unstructured:
                raise ValueError(
                    f"{type(self).__name__} needs the unstructured pattern; layer "
                    f"{layer.name!r} has pattern={layer.pattern!r}."
                )
        self.initialize_masks(managed)

    def layers_needing_gradient(self):
        return []

    def _check_gradient_at_step_zero(self):
        # The layers' own scorers and schedule timing are not used.
        pass

    def managed_layers(self):
        """The layers whose connectivity this callback moves: those with a
        schedule, and the sparse unstructured ones without (masks fixed by
        ``ks.prune_at_init``)."""
        return [
            layer for layer in self._layers
            if layer.schedule is not None
            or (type(layer.pattern) is patterns_lib.Unstructured and layer.sparsity > 0)
        ]

    @staticmethod
    def _target(layer):
        if layer.schedule is None:
            return layer.sparsity
        return layer.schedule.target_sparsity

    def update_masks(self, steps):
        """Drop and grow in every managed layer at the first update step of
        ``steps``. Returns the layers updated."""
        steps = (steps,) if isinstance(steps, int) else tuple(steps)
        step = next((t for t in steps if self.is_update_step(t)), None)
        if step is None:
            return []
        backend.sync_model_state(self.model)
        layers = self.managed_layers()
        for layer in layers:
            self.update_layer(layer, step)
        return layers

    def on_train_batch_begin(self, batch, logs=None):
        # Updates run after the previous step (on_train_batch_end).
        pass

    def on_train_batch_end(self, batch, logs=None):
        # ``batch`` is the call's last index; an update for step t runs once
        # t steps are done.
        begin = self._epoch_start_step + batch - self._steps_per_call() + 1
        steps = [step + 1 for step in self._steps_in_call(begin)]
        if any(self.is_update_step(step) for step in steps):
            self.update_masks(steps)
        if logs is not None and self._layers:
            logs["sparsity"] = self.overall_sparsity()

    def _accumulate_scores(self):
        # The layers' own scorers are not used between updates.
        pass

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        if logs is not None:
            logs["drop_fraction"] = self.fraction_at(self.current_step())

    # ------------------------------------------------------------------ logic
    def initialize_masks(self, layers):
        """Prune layers not yet at their target with ``init_scorer``."""
        backend.sync_model_state(self.model)
        independent = [l for l in layers if not l.global_pruning and not self._at_target(l)]
        # Layers sharing one global budget are at target together, not one by one.
        global_layers = [l for l in layers if l.global_pruning]
        if global_layers and self._global_at_target(global_layers):
            global_layers = []
        for layer in independent:
            sparsity = self._target(layer)
            for name in layer.sparse_weight_names:
                scores = self.init_scorer.score(layer.masked_latent(name))
                mask = layer.compute_mask_for(name, sparsity, scores)
                self._apply_init_mask(layer, name, mask)
        if global_layers:
            entries = [(l, n) for l in global_layers for n in l.sparse_weight_names]
            scores = [self.init_scorer.score(l.masked_latent(n)) for l, n in entries]
            sparsity = self._target(global_layers[0])
            for (layer, name), mask in zip(entries, global_topk_masks(scores, sparsity)):
                self._apply_init_mask(layer, name, mask)

    def _apply_init_mask(self, layer, name, mask):
        self.apply_mask(layer, name, mask, rescale=self.init_scorer.rescale_survivors)

    @classmethod
    def _at_target(cls, layer):
        target = cls._target(layer)
        for name in layer.sparse_weight_names:
            size = math.prod(layer.get_mask(name).shape)
            if abs(layer.weight_sparsity(name) - target) * size > 1.0:
                return False
        return True

    @classmethod
    def _global_at_target(cls, layers):
        entries = [(l, n) for l in layers for n in l.sparse_weight_names]
        sizes = [math.prod(l.get_mask(n).shape) for l, n in entries]
        zeros = sum(l.weight_sparsity(n) * size for (l, n), size in zip(entries, sizes))
        return abs(zeros - cls._target(layers[0]) * sum(sizes)) <= len(entries)

    def update_layer(self, layer, step):
        """Drop and grow in every masked weight of ``layer`` for ``step``."""
        fraction = self.fraction_at(step)
        index = self._layers.index(layer)
        dropped_total = grown_total = 0
        for name_index, name in enumerate(layer.sparse_weight_names):
            latent = layer.latent_weight(name)
            old_mask = np.asarray(ops.convert_to_numpy(layer.get_mask(name)), dtype=bool)
            weights = np.asarray(ops.convert_to_numpy(latent))
            # Only the active entries' drop scores are read.
            drop_scores = np.abs(weights)
            grow_scores = self.grow_scores(layer, name, step, (index, name_index))
            new_mask, dropped, grown = drop_and_grow_arrays(
                old_mask, drop_scores, grow_scores, fraction,
                regrow_dropped=self.regrow_dropped,
            )
            # Active before and after (a weight dropped and grown again in
            # the same update keeps its value and optimizer state, as in
            # RigL's reference); newly grown weights start at 0 with zeroed
            # slots, dropped ones are zeroed.
            kept = old_mask & new_mask
            latent.assign(np.where(kept, weights, weights.dtype.type(0)))
            # The active count is unchanged, so the layer's cached sparsity
            # stays valid: assign the mask directly (``set_mask`` would
            # multiply the latent weight again).
            layer.get_mask(name).assign(new_mask)
            reset_optimizer_slots(self.model.optimizer, latent, kept,
                                  slots=self._slots_of(latent))
            dropped_total += int(np.count_nonzero(dropped))
            grown_total += int(np.count_nonzero(grown))
        self.last_update[self.layer_labels()[index]] = (dropped_total, grown_total)

    def _slots_of(self, variable):
        """``optimizer_slots`` of ``variable``, looked up once per optimizer
        (``fit`` may rebuild the optimizer when gradient probes come and go)."""
        optimizer = self.model.optimizer
        cached = self._slot_cache.get(id(variable))
        if cached is None or cached[0] is not optimizer or cached[1] is not variable:
            cached = (optimizer, variable, optimizer_slots(optimizer, variable))
            self._slot_cache[id(variable)] = cached
        return cached[2]

    def grow_scores(self, layer, name, step, key):
        """Scores of the candidates for regrowth (higher = grown first), a
        numpy array shaped like the weight.

        SET: uniform random, from a generator seeded by ``(seed, step,
        layer)`` so a resumed run draws the same values.
        """
        rng = np.random.default_rng([self._seed, int(step), *key])
        shape = tuple(layer.get_mask(name).shape)
        return rng.random(shape, dtype=np.float32)
