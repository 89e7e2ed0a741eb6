"""Random scores: static sparse initialization and random pruning."""

import numpy as np
from keras import ops

from keras_sparse import config as config_lib
from keras_sparse.scorers.base import REGISTRY
from keras_sparse.scorers.base import Scorer

__all__ = ["RandomScorer"]


@config_lib.register(REGISTRY, "random")
class RandomScorer(Scorer):
    """Uniform random scores; already-pruned entries rank last.

    A surviving (non-zero) entry scores ``1 + u`` and a pruned (zero) entry
    ``u``, with ``u ~ U[0, 1)``. So a pruning step keeps a uniformly random
    subset of the survivors, pruning again at the same sparsity changes
    nothing, and a rising schedule removes random survivors (random gradual
    pruning).

    With ``rescale=True`` (default) the surviving weights of each output
    unit are multiplied by ``sqrt(k_before / k_after)`` when a mask is
    applied, where ``k`` is the unit's number of active inputs (fan-in)
    before and after. A dense initializer scaled for fan-in ``n`` (Glorot,
    He, LeCun) then keeps its pre-activation variance on the sparse network:
    ``Var(sum_i w_i x_i) ∝ k Var(w)`` is unchanged (sparsity-aware
    initialization, Evci et al. 2022, "Gradient flow in sparse neural
    networks"). This is the rule ``ks.prune_at_init(model, None, s,
    scorer="random")`` uses for sparse initialization.

    Args:
        seed: integer seed of the scorer's numpy generator, or ``None`` to
            draw one from numpy's global generator (which
            ``keras.utils.set_random_seed`` seeds) at first use.
        rescale: scale survivors to keep each unit's variance.

    Example:
    >>> model = ks.prune_at_init(model, None, 0.9, scorer="random",
    ...                          distribution="erk")
    """

    data_independent = True

    def __init__(self, seed=None, rescale=True):
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"`seed` must be an integer or None. Received: seed={seed!r}")
        if not isinstance(rescale, bool):
            raise ValueError(f"`rescale` must be a bool. Received: rescale={rescale!r}")
        self.seed = seed
        self.rescale = rescale
        self._rng = None

    @property
    def rescale_survivors(self):
        return self.rescale

    def use_generator(self, rng):
        """Draw from the numpy ``Generator`` ``rng`` from now on (instead of
        the one made from ``seed``). Used by the sparsity methods so an
        initial random mask they make follows their own seed."""
        self._rng = rng

    def adopt_generator(self, rng):
        """:meth:`use_generator` when ``seed`` is ``None``: a given seed
        keeps deciding the scores."""
        if self.seed is None:
            self.use_generator(rng)

    def _generator(self):
        if self._rng is None:
            seed = self.seed if self.seed is not None else int(np.random.randint(2**31 - 1))
            self._rng = np.random.default_rng(seed)
        return self._rng

    def score(self, weight, gradient=None):
        weight = ops.convert_to_tensor(weight)
        noise = self._generator().random(tuple(weight.shape), dtype=np.float32)
        alive = np.asarray(ops.convert_to_numpy(weight)) != 0
        return ops.convert_to_tensor(noise + alive.astype(np.float32))

    def get_config(self):
        return {"seed": self.seed, "rescale": self.rescale}
