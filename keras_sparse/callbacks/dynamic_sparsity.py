"""``SET``: the drop-and-grow entry of the :class:`Sparsity` callback (RigL,
its gradient-grown variant, is in ``rigl.py``). The algorithm is
:class:`keras_sparse.methods.SET`; this class only keeps the callback's
signature and the accessors users had."""

import keras

from keras_sparse import methods as methods_lib
from keras_sparse.callbacks.sparsity import Sparsity
from keras_sparse.config import PACKAGE
from keras_sparse.methods import DEFAULT_END_FRACTION  # noqa: F401  (re-export)

__all__ = ["SET"]


@keras.saving.register_keras_serializable(package=PACKAGE)
class SET(Sparsity):
    """Sparse Evolutionary Training: drop the smallest weights, regrow at
    random, at constant sparsity.

    ``ks.callbacks.SET(...)`` is ``ks.callbacks.Sparsity(method=ks.methods.SET(...))``
    (:class:`keras_sparse.methods.SET` describes the algorithm). Use it alone
    in ``fit`` on a model from ``ks.prune``; each layer keeps the sparsity
    ``ks.prune`` assigned it (``distribution="erk"`` for the papers' set-up,
    or ``"uniform"``) and only its connectivity changes. The layers'
    schedules give the target sparsity; their timing is not used.
    Unstructured layers whose masks ``ks.prune_at_init`` fixed (no schedule)
    keep the sparsity of their mask.

    * **Start.** When training begins, a layer whose mask is not yet at its
      target is pruned to it with ``init_scorer`` (default ``"random"``: a
      random sparse network with the survivors rescaled by
      ``sqrt(k_before / k_after)`` per unit). Masks already at target are kept.
    * **Update** at every step ``t = begin_step + k * update_freq`` with
      ``begin_step < t < end_step``: in every layer, ``n = round(f(t) *
      active)`` active weights with the smallest ``|w|`` are dropped and
      ``n`` weights grown among all those not kept, the ones just dropped
      included, so the number of active weights of each layer never
      changes. The update for step ``t`` runs right after step ``t - 1``.
    * **Newly grown weights start at 0**, and the optimizer slots of every
      inactive or newly grown entry are reset to 0. A weight dropped and
      grown again in the same update keeps its value and slots.
    * ``f(t)``: ``drop_fraction`` with ``decay`` (cosine by default).

    Regrowth draws from a generator seeded by ``(seed, step, layer)``, so
    with a ``seed`` a run resumed with ``BackupAndRestore`` makes the same
    choices (with ``seed=None`` each callback draws a fresh one). The current
    drop fraction is logged as ``"drop_fraction"`` at each epoch end.

    Reference: D. Mocanu et al., "Scalable training of artificial neural
    networks with adaptive sparse connectivity inspired by network science",
    Nature Communications 2018.

    Args:
        update_freq: steps between connectivity updates (ΔT).
        drop_fraction: initial fraction ``alpha`` of active weights replaced.
        end_step: last step (exclusive) with updates; ``None`` = 75 % of the
            planned steps of the ``fit`` call (pass it explicitly when
            training with several ``fit`` calls).
        begin_step: updates start after this step.
        decay: ``"cosine"`` (default), ``"linear"`` or ``"constant"``.
        init_scorer: scorer for the initial mask (``"random"``,
            ``"magnitude"``, ...).
        seed: seed of the random choices (regrowth, and the initial mask
            when ``init_scorer`` is the alias ``"random"``); ``None`` takes
            fresh entropy, so runs differ. Either way the draws come from a
            private numpy generator: numpy's global random state
            (``np.random``) is neither used nor advanced.
        log_per_layer: add per-layer sparsity to the epoch logs.
        regrow_dropped: whether a weight dropped in an update may be grown
            again in the same update (default ``True``, as in RigL).

    Example:
    >>> model = ks.prune(model, 0.9, distribution="erk")
    >>> model.compile("adam", "sparse_categorical_crossentropy")
    >>> model.fit(x, y, epochs=20, callbacks=[ks.callbacks.SET(update_freq=100)])
    """

    method_class = methods_lib.SET

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
        method = self.method_class(
            update_freq=update_freq,
            drop_fraction=drop_fraction,
            end_step=end_step,
            begin_step=begin_step,
            decay=decay,
            init_scorer=init_scorer,
            seed=seed,
            regrow_dropped=regrow_dropped,
        )
        super().__init__(method=method, log_per_layer=log_per_layer)

    def get_config(self):
        config = {"log_per_layer": self.log_per_layer}
        config.update(self.method.get_config())
        return config

    def __getattr__(self, name):
        # The method's hyperparameters read as the callback's own
        # (``callback.update_freq``, ``callback.seed``, ...).
        if name in ("update_freq", "drop_fraction", "end_step", "begin_step", "decay",
                    "init_scorer", "seed", "regrow_dropped", "_seed"):
            return getattr(self.__dict__["method"], name)
        raise AttributeError(name)

    # ----------------------------------------------------------- accessors
    def _method_state(self):
        for method, _, state in self._plan:
            if method is self.method:
                return state
        if self.end_step is None:
            raise ValueError("`end_step` is known once training has begun.")
        return {"end_step": self.end_step}

    def resolved_end_step(self):
        """``end_step``, or the default computed when training began."""
        try:
            return self._method_state()["end_step"]
        except ValueError:
            return None

    def fraction_at(self, step):
        """Drop fraction ``f(step)``."""
        return self.method.fraction_at(step, self._method_state())

    def is_update_step(self, step):
        """Whether connectivity is updated for training step ``step``."""
        return self.method.is_update_step(step, self._method_state())

    def grow_scores(self, layer, name, step, key):
        """Scores of the candidates for regrowth (higher = grown first)."""
        return self.method.grow_scores(layer, name, step, key)

    def managed_layers(self):
        """The layers whose connectivity this callback moves."""
        return [layer for layer in self._layers if self.method.manages(layer)]

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        if logs is not None and self._plan:
            logs["drop_fraction"] = self.fraction_at(self.current_step())
