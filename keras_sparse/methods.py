"""Floor 2: sparsity methods, the one answer to *when* masks change and *what*
they become.

A method is a hyperparameter-only object (serializable, with a snake_case
alias) that the :class:`~keras_sparse.callbacks.Sparsity` callback asks, at
every training step, whether a group of layers is due for an update and, if
so, for their new masks. It never writes anything: the callback hands the
masks to each layer's single writer (``SparseMixin.write_mask``), and keeps
the step, the logs and any run state. Adding a method (a controller, a new
drop-and-grow rule) is one subclass of :class:`SparsityMethod`.

The protocol (every argument is given by the callback):

* ``needs_gradient(layer)``: whether the layer needs a gradient probe (the
  dense gradient of the last step); probes are created when the model is
  converted (``ks.prune(..., method=...)``), never during ``fit``.
* ``groups(layers)``: the layers updated together (one global threshold,
  or each layer alone).
* ``begin(layers, params)``: run state for one ``fit`` (a dict) from the
  training plan (``params``: ``epochs``, ``steps`` per epoch, the first
  step ``start`` and the optimizer ``accumulation``).
* ``due(step, group, state)``: whether masks change for training step
  ``step`` (counted in optimizer updates applied).
* ``start(group, state)``: masks to write when training begins (SET's
  initial random masks), a list of :class:`MaskUpdate`.
* ``update(step, group, state)``: the new masks for ``step``.
* ``observe(group, state)``: called after every training step while the
  method may still update (accumulating scorers sum their scores here).
* ``final_sparsity(layer)`` and ``last_update_step(layer, state)``: what the
  callback checks against the planned run (a schedule that cannot reach its
  target is reported when training begins, a layer below target when it
  ends).

Layers are used only through their documented ``SparseMixin`` methods
(``masked_latent``, ``get_mask``, ``last_gradient``, ``compute_mask_for``,
``score_weight``, ``schedule``, ``pattern``, ``scorer``); this module does
not import them.

JaxPruner's ``BaseUpdater`` is the model (one object answers when and
what); its algorithm-name strings are not: methods are objects, aliases
resolve to them.
"""

import math
import numbers
from typing import NamedTuple

import numpy as np
from keras import ops

from keras_sparse import backend
from keras_sparse import config as config_lib
from keras_sparse import scorers as scorers_lib
from keras_sparse.ops import compiled as compiled_ops
from keras_sparse.ops.drop_grow import check_decay
from keras_sparse.ops.drop_grow import drop_and_grow_arrays
from keras_sparse.ops.drop_grow import drop_fraction as drop_fraction_formula
from keras_sparse.ops.masks import global_topk_masks

__all__ = [
    "SparsityMethod",
    "MaskUpdate",
    "Gradual",
    "SET",
    "RigL",
    "DEFAULT_END_FRACTION",
    "get",
    "serialize",
]

_REGISTRY = {}

#: Fraction of the planned steps after which SET/RigL updates stop when no
#: ``end_step`` is given (RigL's default).
DEFAULT_END_FRACTION = 0.75


class MaskUpdate(NamedTuple):
    """A new mask for weight ``name`` of ``layer``, with how to write it.

    ``rescale``: scale each unit's surviving weights to keep its variance
    (sparse initialization). ``zero_grown``: entries that become active start
    at 0 and their optimizer slots are reset (drop-and-grow). ``info``: what
    the method reports about the update (e.g. ``(dropped, grown)``).
    """

    layer: object
    name: str
    mask: object
    rescale: bool = False
    zero_grown: bool = False
    info: object = None


def _check_positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer. Received: {name}={value!r}")
    return int(value)


class SparsityMethod(config_lib.ConfigObject):
    """Base class of sparsity methods (see the module docstring for the
    protocol). Subclasses override :meth:`due` and :meth:`update`, and the
    other hooks when they need them.

    Attributes:
        runs_after_step: ``True`` if the update for step ``t`` runs right
            after step ``t - 1`` is trained (so it reads that step's gradient
            and a checkpoint written then already holds it); ``False`` if it
            runs just before step ``t``.
    """

    runs_after_step = False
    #: ``True`` if :meth:`update` decides each layer of a group on its own
    #: (the group only shares :meth:`start`).
    updates_each_layer = False

    def needs_gradient(self, layer):
        """Whether ``layer`` needs a gradient probe for this method."""
        return False

    def groups(self, layers):
        """Groups of layers whose masks are decided together: each layer
        alone, and one group of the layers sharing a global budget
        (``global_pruning=True``)."""
        independent = [(layer,) for layer in layers if not layer.global_pruning]
        shared = tuple(layer for layer in layers if layer.global_pruning)
        return independent + ([shared] if shared else [])

    def check_pattern(self, pattern, layer_name):
        """Raise ``ValueError`` if a layer with ``pattern`` cannot be
        trained by this method (default: every pattern can)."""

    def manages(self, layer):
        """Whether this method moves the masks of ``layer``."""
        return layer.schedule is not None

    def begin(self, layers, params):
        """Run state of one ``fit`` (a dict the callback keeps)."""
        return {}

    def due(self, step, group, state):
        raise NotImplementedError

    def start(self, group, state):
        """Masks to write when training begins (default: none)."""
        return []

    def update(self, step, group, state):
        raise NotImplementedError

    def observe(self, group, state, step):
        """Called after each trained step ``step`` (default: nothing)."""

    def compiled_update(self, step, group, state):
        """The update for ``step`` as a traceable rule, or ``None`` (the
        default: the callback writes the masks of :meth:`update`).

        Returns ``(key, entries, rule, keep)``: ``rule(keep)`` computes the
        new masks of ``entries`` (``(layer, name)`` pairs) with
        ``keras.ops`` only, reading the variables it needs, and ``keep`` (a
        list of Python ints) is everything in it that changes from one
        update to the next. The layers write the masks in one compiled
        function traced once per ``key`` (``SparseMixin.write_masks_compiled``),
        with the same result as writing the masks of :meth:`update` (no
        ``rescale``, no ``zero_grown``).
        """
        return None

    def final_sparsity(self, layer):
        """The sparsity ``layer`` should end at."""
        if layer.schedule is None:
            return layer.sparsity
        return layer.schedule.target_sparsity

    def last_update_step(self, layer, state):
        """The last step at which ``layer``'s masks change, or ``None``."""
        return None

    def sparsity_at(self, step, layer, state):
        """The sparsity ``layer`` has after the updates up to ``step``."""
        return self.final_sparsity(layer)


@config_lib.register(_REGISTRY, "gradual", "gmp")
class Gradual(SparsityMethod):
    """Each layer's own schedule, pattern and scorer: gradual magnitude
    pruning (Zhu & Gupta 2017) and every schedule/scorer/pattern combination,
    one-shot pruning included (``ks.schedules.OneShot``).

    Updates run just before the step the schedule names. Layers created
    with ``global_pruning=True`` share one magnitude threshold and follow
    the first such layer's schedule. Gradient scorers (saliency, Taylor,
    movement) read the layer's gradient probe; accumulating scorers sum
    their scores after every step until the schedule's last update, and a
    pruned entry stays pruned unless the sparsity goes down.

    Example:
    >>> model = ks.prune(model, 0.9, method=ks.methods.Gradual())
    >>> model.fit(x, y, callbacks=[ks.callbacks.Sparsity()])
    """

    def needs_gradient(self, layer):
        return layer.scorer.needs_gradient

    def begin(self, layers, params):
        return {"accumulated": {}}

    def due(self, step, group, state):
        schedule = group[0].schedule
        return schedule is not None and schedule.should_update(step)

    def last_update_step(self, layer, state):
        return None if layer.schedule is None else layer.schedule.last_update_step()

    def sparsity_at(self, step, layer, state):
        schedule = layer.schedule
        if schedule is None:
            return layer.sparsity
        last = None
        for t in _update_steps_up_to(schedule, step):
            last = t
        return 0.0 if last is None else schedule.sparsity(last)

    def observe(self, group, state, step):
        layer = group[0]
        if not layer.scorer.accumulate:
            return
        last = layer.schedule.last_update_step()
        if last is not None and step >= last:
            return
        for member in group:
            for name in member.sparse_weight_names:
                score = member.score_weight(name, member.last_gradient(name))
                key = (id(member), name)
                previous = state["accumulated"].get(key)
                state["accumulated"][key] = score if previous is None else ops.add(previous, score)

    def scores(self, layer, name, state):
        """Importance of each entry of weight ``name`` of ``layer``."""
        scorer = layer.scorer
        if scorer.accumulate:
            key = (id(layer), name)
            total = state["accumulated"].get(key)
            if total is None:
                total = layer.score_weight(name, layer.last_gradient(name))
            if scorer.reset_after_update:
                state["accumulated"].pop(key, None)
            floor = ops.full(ops.shape(total), -np.inf, dtype=total.dtype)
            return ops.where(ops.convert_to_tensor(layer.get_mask(name)), total, floor)
        if scorer.needs_gradient:
            return layer.score_weight(name, layer.last_gradient(name))
        return layer.score_weight(name)

    def update(self, step, group, state):
        sparsity = group[0].schedule.sparsity(step)
        entries = [(layer, name) for layer in group for name in layer.sparse_weight_names]
        scores = [self.scores(layer, name, state) for layer, name in entries]
        if len(group) > 1 or group[0].global_pruning:
            masks = global_topk_masks(scores, sparsity)
        else:
            masks = [
                layer.compute_mask_for(name, sparsity, score)
                for (layer, name), score in zip(entries, scores)
            ]
        return [
            MaskUpdate(layer, name, mask, rescale=layer.scorer.rescale_survivors)
            for (layer, name), mask in zip(entries, masks)
        ]


    def compiled_update(self, step, group, state):
        """Magnitude-like scorers (``traceable``, not accumulating, no
        rescaling) with a pattern that has a traced mask (unstructured,
        channel) and global groups: one rule per group, the counts kept
        (``Pattern.dynamic_keep``) as its argument. Groups larger than
        ``backend.COMPILED_UPDATE_MAX_SIZE`` entries stay eager (faster there,
        see ``benchmarks/pruning_overhead.py``)."""
        for layer in group:
            scorer = layer.scorer
            if not scorer.traceable or scorer.accumulate or scorer.rescale_survivors:
                return None
        entries = tuple((layer, name) for layer in group for name in layer.sparse_weight_names)
        total = sum(math.prod(layer.get_mask(name).shape) for layer, name in entries)
        if not backend.compiles_updates(total):
            return None
        sparsity = group[0].schedule.sparsity(step)
        shared = len(group) > 1 or group[0].global_pruning
        if shared:
            nonempty = sum(1 for layer, name in entries if math.prod(layer.get_mask(name).shape))
            keep = [compiled_ops.keep_count(sparsity, total, nonempty)]
        else:
            layer = group[0]
            keep = [
                layer.pattern.dynamic_keep(
                    sparsity, tuple(layer.get_mask(name).shape), layer.weight_layout(name))
                for name in layer.sparse_weight_names
            ]
            if any(k is None for k in keep):
                return None
        key = (type(self), shared) + tuple(
            (id(layer), name, id(layer.scorer), id(layer.pattern)) for layer, name in entries
        )

        def scores():
            return [
                layer.score_weight(
                    name, layer.last_gradient(name) if layer.scorer.needs_gradient else None)
                for layer, name in entries
            ]

        if shared:
            def rule(keep):
                return compiled_ops.global_topk_masks_dynamic(scores(), keep[0])
        else:
            def rule(keep):
                return [
                    layer.pattern.dynamic_mask(score, keep[i], layer.weight_layout(name))
                    for i, ((layer, name), score) in enumerate(zip(entries, scores()))
                ]
        return key, entries, rule, keep


def _update_steps_up_to(schedule, step):
    """The update steps of ``schedule`` in ``[0, step]`` (bounded work: the
    schedule's frequency and ends are used where it has them)."""
    begin = getattr(schedule, "begin_step", None)
    frequency = getattr(schedule, "frequency", None)
    origin = getattr(schedule, "step_origin", 0)
    if begin is not None and frequency:
        start = max(0, begin - origin)
        candidates = list(range(start, step + 1, frequency))
        last = schedule.last_update_step()
        if last is not None and last <= step:
            candidates.append(last)
        return sorted(t for t in set(candidates) if schedule.should_update(t))
    return [t for t in range(step + 1) if schedule.should_update(t)]


@config_lib.register(_REGISTRY, "set", name="SETMethod")
class SET(SparsityMethod):
    """Sparse Evolutionary Training: drop the smallest active weights and
    grow as many at random, at constant sparsity.

    Every unstructured layer with masks is managed: it keeps the sparsity
    ``ks.prune`` assigned it (its schedule's target; layers whose masks
    ``ks.prune_at_init`` fixed keep their mask's sparsity). When training
    begins, a layer not yet at its target is pruned to it with
    ``init_scorer``. The update for step ``t = begin_step + k * update_freq``
    (``begin_step < t < end_step``) runs right after step ``t - 1``:
    ``n = round(f(t) * active)`` active weights with the smallest ``|w|``
    are dropped and ``n`` grown among the entries not kept (the ones just
    dropped included unless ``regrow_dropped=False``); grown weights start
    at 0 with their optimizer slots reset.

    Reference: D. Mocanu et al., Nature Communications 2018.

    Args: as :class:`keras_sparse.callbacks.SET`.

    Example:
    >>> model = ks.prune(model, 0.9, distribution="erk", method=ks.methods.SET(update_freq=100))
    >>> model.fit(x, y, callbacks=[ks.callbacks.Sparsity()])
    """

    runs_after_step = True
    updates_each_layer = True

    def __init__(
        self,
        update_freq=100,
        drop_fraction=0.3,
        end_step=None,
        begin_step=0,
        decay="cosine",
        init_scorer="random",
        seed=None,
        regrow_dropped=True,
    ):
        self.update_freq = _check_positive_int(update_freq, "update_freq")
        if isinstance(drop_fraction, bool) or not isinstance(drop_fraction, numbers.Real) or not (
            0.0 < float(drop_fraction) <= 1.0
        ):
            raise ValueError(
                f"`drop_fraction` must be in (0, 1]. Received: drop_fraction={drop_fraction!r}"
            )
        self.drop_fraction = float(drop_fraction)
        if isinstance(begin_step, bool) or not isinstance(begin_step, numbers.Integral) or (
            begin_step < 0
        ):
            raise ValueError(
                f"`begin_step` must be a non-negative integer. Received: begin_step={begin_step!r}"
            )
        self.begin_step = int(begin_step)
        if end_step is not None and (
            isinstance(end_step, bool)
            or not isinstance(end_step, numbers.Integral)
            or end_step <= begin_step
        ):
            raise ValueError(
                "`end_step` must be an integer greater than `begin_step`, or None. "
                f"Received: end_step={end_step!r}, begin_step={begin_step}"
            )
        self.end_step = None if end_step is None else int(end_step)
        self.decay = check_decay(decay)
        scorer = scorers_lib.get(init_scorer)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)):
            raise ValueError(f"`seed` must be an integer or None. Received: seed={seed!r}")
        if not isinstance(regrow_dropped, bool):
            raise ValueError(
                f"`regrow_dropped` must be a bool. Received: regrow_dropped={regrow_dropped!r}"
            )
        self.init_scorer = scorer
        self.seed = None if seed is None else int(seed)
        self.regrow_dropped = regrow_dropped
        # A private generator: numpy's global random state is never read or
        # advanced. Fresh entropy when `seed` is None. The run's seed is drawn
        # once per method object, so every fit of one callback agrees.
        self._rng = np.random.default_rng(self.seed)
        self._seed = self.seed if self.seed is not None else int(self._rng.integers(2**31 - 1))
        if not isinstance(init_scorer, scorers_lib.Scorer):
            # A random initial mask made here (from an alias or a config)
            # draws from the method's seed too, not from numpy's global state.
            scorer.adopt_generator(np.random.default_rng([self._seed, 2**31]))

    def get_config(self):
        return {
            "update_freq": self.update_freq,
            "drop_fraction": self.drop_fraction,
            "end_step": self.end_step,
            "begin_step": self.begin_step,
            "decay": self.decay,
            "init_scorer": scorers_lib.serialize(self.init_scorer),
            "seed": self.seed,
            "regrow_dropped": self.regrow_dropped,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("init_scorer"), dict):
            config["init_scorer"] = scorers_lib.get(config["init_scorer"])
        return cls(**config)

    # ----------------------------------------------------------- protocol
    def manages(self, layer):
        if not layer.pattern.is_unstructured:
            return layer.schedule is not None
        return layer.schedule is not None or layer.sparsity > 0

    def check_pattern(self, pattern, layer_name):
        """Drop-and-grow needs the unstructured pattern."""
        if not pattern.is_unstructured:
            raise ValueError(
                f"{type(self).__name__} needs the unstructured pattern; layer "
                f"{layer_name!r} has pattern={pattern!r}."
            )

    def begin(self, layers, params):
        end = self.end_step
        if end is None:
            epochs, steps = params.get("epochs"), params.get("steps")
            if not epochs or not steps:
                raise ValueError(
                    f"{type(self).__name__} needs `end_step` when the number of steps "
                    "per epoch is unknown. Received: end_step=None"
                )
            planned = int(epochs * steps) // max(1, int(params.get("accumulation", 1)))
            end = max(self.begin_step + 1, int(DEFAULT_END_FRACTION * planned))
        every = params.get("layers", layers)
        return {"end_step": end, "index": {id(layer): i for i, layer in enumerate(every)}}

    def fraction_at(self, step, state):
        """Drop fraction ``f(step)``."""
        return drop_fraction_formula(
            step, self.drop_fraction, self.begin_step, state["end_step"], self.decay
        )

    def is_update_step(self, step, state):
        return (
            self.begin_step < step < state["end_step"]
            and (step - self.begin_step) % self.update_freq == 0
        )

    def due(self, step, group, state):
        return self.is_update_step(step, state)

    def last_update_step(self, layer, state):
        end = state.get("end_step")
        if end is None:
            return None
        steps = (end - 1 - self.begin_step) // self.update_freq
        return self.begin_step + steps * self.update_freq if steps > 0 else None

    @staticmethod
    def target(layer):
        return layer.sparsity if layer.schedule is None else layer.schedule.target_sparsity

    def final_sparsity(self, layer):
        return self.target(layer)

    def sparsity_at(self, step, layer, state):
        return self.target(layer)

    def start(self, group, state):
        """Prune the layers not yet at their target with ``init_scorer``
        (layers sharing one global budget are pruned together, with one
        threshold, unless they are at target together)."""
        entries = [(layer, name) for layer in group for name in layer.sparse_weight_names]
        sizes = [math.prod(layer.get_mask(name).shape) for layer, name in entries]
        if len(group) > 1 or group[0].global_pruning:
            target = self.target(group[0])
            zeros = sum(l.weight_sparsity(n) * size for (l, n), size in zip(entries, sizes))
            if abs(zeros - target * sum(sizes)) <= len(entries):
                return []
            scores = [self.init_scorer.score(l.masked_latent(n)) for l, n in entries]
            masks = global_topk_masks(scores, target)
            return [
                MaskUpdate(l, n, m, rescale=self.init_scorer.rescale_survivors)
                for (l, n), m in zip(entries, masks)
            ]
        layer = group[0]
        target = self.target(layer)
        if all(
            abs(layer.weight_sparsity(name) - target) * size <= 1.0
            for (_, name), size in zip(entries, sizes)
        ):
            return []
        updates = []
        for name in layer.sparse_weight_names:
            scores = self.init_scorer.score(layer.masked_latent(name))
            mask = layer.compute_mask_for(name, target, scores)
            updates.append(MaskUpdate(layer, name, mask, rescale=self.init_scorer.rescale_survivors))
        return updates

    def update(self, step, group, state):
        layer = group[0]
        fraction = self.fraction_at(step, state)
        index = state["index"].get(id(layer), 0)
        updates = []
        for name_index, name in enumerate(layer.sparse_weight_names):
            old_mask = np.asarray(ops.convert_to_numpy(layer.get_mask(name)), dtype=bool)
            weights = np.asarray(ops.convert_to_numpy(layer.latent_weight(name)))
            grow = self.grow_scores(layer, name, step, (index, name_index))
            new_mask, dropped, grown = drop_and_grow_arrays(
                old_mask, np.abs(weights), grow, fraction, regrow_dropped=self.regrow_dropped
            )
            info = (int(np.count_nonzero(dropped)), int(np.count_nonzero(grown)))
            updates.append(MaskUpdate(layer, name, new_mask, zero_grown=True, info=info))
        return updates

    def grow_scores(self, layer, name, step, key):
        """Scores of the candidates for regrowth (higher = grown first), a
        numpy array shaped like the weight. SET: uniform random, from a
        generator seeded by ``(seed, step, layer)`` so a resumed run draws
        the same values."""
        rng = np.random.default_rng([self._seed, int(step), *key])
        shape = tuple(layer.get_mask(name).shape)
        return rng.random(shape, dtype=np.float32)


@config_lib.register(_REGISTRY, "rigl", name="RigLMethod")
class RigL(SET):
    """Rigged Lottery: SET with regrowth where the dense gradient of the last
    step is largest (Evci et al., ICML 2020). Only the grow scores differ.

    Entries whose gradient is exactly 0 are tied; this library breaks those
    ties at random (distinct negative scores drawn from the ``(seed, step,
    layer)`` generator), so when more weights must grow than have a non-zero
    gradient the rest are spread over the layer. RigL's reference code and
    JaxPruner break them by lower index instead (they fill the first rows).
    The optimizer step is taken on update steps too (the references skip it
    on mask-update steps).

    Example:
    >>> model = ks.prune(model, 0.9, distribution="erk", method=ks.methods.RigL())
    >>> model.fit(x, y, callbacks=[ks.callbacks.Sparsity()])
    """

    def needs_gradient(self, layer):
        return True

    def grow_scores(self, layer, name, step, key):
        """``|dL/dw|`` of the last step; zero-gradient entries get distinct
        negative scores from the ``(seed, step, layer)`` generator."""
        scores = np.abs(np.asarray(ops.convert_to_numpy(layer.last_gradient(name))))
        if np.count_nonzero(scores) < scores.size:
            zero = np.flatnonzero(scores == 0)
            rng = np.random.default_rng([self._seed, int(step), *key])
            scores.flat[zero] = -1.0 - rng.random(zero.size, dtype=np.float32)
        return scores


def get(identifier):
    """Resolve a method: ``None`` gives :class:`Gradual`; an alias
    (``"gradual"``/``"gmp"``, ``"set"``, ``"rigl"``), a config dict or an
    instance."""
    if identifier is None:
        return Gradual()
    return config_lib.lookup(identifier, SparsityMethod, _REGISTRY, "method")


serialize = config_lib.serialize


deserialize, register = config_lib.family_api(SparsityMethod, _REGISTRY, "method")


__all__ += [n for n in ("get", "serialize", "deserialize", "register") if n not in __all__]
