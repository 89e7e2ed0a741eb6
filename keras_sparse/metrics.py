"""Binary-network training metrics: the fraction of binary weights whose
sign flips between steps (:class:`FlipRatio`, a callback: it lives in
:mod:`keras_sparse.callbacks`, and is re-exported here under the name Larq
users know) and the functions it is built on.

Example:
>>> model.fit(x, y, callbacks=[ks.metrics.FlipRatio()])
"""

from keras_sparse.callbacks.flip_ratio import FlipRatio
from keras_sparse.callbacks.flip_ratio import flip_ratio
from keras_sparse.callbacks.flip_ratio import signs

__all__ = ["FlipRatio", "flip_ratio", "signs"]
