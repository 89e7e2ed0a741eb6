"""Scorers: *what to keep*. A scorer maps a weight to per-entry importance.

Adding a pruning criterion is one class: subclass :class:`Scorer`, implement
:meth:`Scorer.score`, and register it with
``@config.register(REGISTRY, "alias")``. Patterns, schedules and
distributions combine with any scorer.

Aliases: ``"magnitude"``, ``"random"``, ``"saliency"`` (= ``"snip"``),
``"taylor"``, ``"movement"``.
"""

from keras_sparse.scorers.base import REGISTRY
from keras_sparse.scorers.base import MagnitudeScorer
from keras_sparse.scorers.base import Scorer
from keras_sparse.scorers.base import deserialize
from keras_sparse.scorers.base import get
from keras_sparse.scorers.base import register
from keras_sparse.scorers.base import serialize
from keras_sparse.scorers.gradient import MovementScorer
from keras_sparse.scorers.gradient import SaliencyScorer
from keras_sparse.scorers.gradient import TaylorScorer
from keras_sparse.scorers.random import RandomScorer

__all__ = [
    "MagnitudeScorer",
    "MovementScorer",
    "REGISTRY",
    "RandomScorer",
    "SaliencyScorer",
    "Scorer",
    "TaylorScorer",
    "get",
    "serialize",
]

# Group (structured) scorers for the Channel pattern.
from keras_sparse.scorers.structured import BatchNormGammaScorer  # noqa: E402
from keras_sparse.scorers.structured import L1NormScorer  # noqa: E402
from keras_sparse.scorers.structured import L2NormScorer  # noqa: E402
from keras_sparse.scorers.structured import TaylorChannelScorer  # noqa: E402

__all__ += ["BatchNormGammaScorer", "L1NormScorer", "L2NormScorer", "TaylorChannelScorer"]

__all__ += [n for n in ("get", "serialize", "deserialize", "register") if n not in __all__]
