"""Sparse initialization: a kernel that is sparse from its first value."""

import math

import keras
import numpy as np
from keras import ops

from keras_sparse.config import PACKAGE
from keras_sparse.ops.masks import check_sparsity
from keras_sparse.ops.masks import topk_mask

__all__ = ["SparseInitializer", "sparse_init_mask"]


def sparse_init_mask(shape, sparsity, seed=None):
    """A random boolean mask with exactly ``round(sparsity * n)`` zeros, at
    most ``n - 1`` (one entry is always kept, as in every mask)."""
    rng = np.random.default_rng(seed)
    return topk_mask(rng.random(shape).astype("float32"), sparsity)


@keras.saving.register_keras_serializable(package=PACKAGE, name="SparseInitializer")
class SparseInitializer(keras.initializers.Initializer):
    """Draw from ``base`` and zero a random ``sparsity`` fraction of entries.

    The survivors are multiplied by :math:`1/\\sqrt{1-s}` so the variance of
    each unit's pre-activation matches the dense initializer: with a fraction
    :math:`1-s` of the fan-in left,
    :math:`\\mathrm{Var}(\\sum_i w_i x_i) = (1-s)\\,n\\,\\mathrm{Var}(w)`, and the
    factor restores :math:`n\\,\\mathrm{Var}(w)` (the rule of Evci et al.
    2020, "sparse-aware" scaling, equivalent to using the sparse fan-in in
    Glorot/He).

    Used as the ``kernel_initializer`` of a keras_sparse layer, the layer's
    mask is set from the initial zeros when it is built, so mask and kernel
    agree from the first step. On a plain Keras layer the zeros are only a
    starting point (training makes them non-zero).

    Args:
        base: the dense initializer (name, config or instance).
        sparsity: fraction of zeros, in ``[0, 1)``.
        seed: random seed of the mask (the base keeps its own seed).
        rescale: apply the :math:`1/\\sqrt{1-s}` factor.

    Example:
    >>> init = ks.initializers.SparseInitializer("he_normal", 0.9, seed=0)
    >>> layer = ks.layers.SparseDense(256, kernel_initializer=init)
    """

    def __init__(self, base="glorot_uniform", sparsity=0.9, seed=None, rescale=True):
        self.base = keras.initializers.get(base)
        self.sparsity = check_sparsity(sparsity)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
            raise ValueError(
                f"`seed` must be a non-negative integer or None. Received: seed={seed!r}"
            )
        if not isinstance(rescale, bool):
            raise ValueError(f"`rescale` must be a bool. Received: rescale={rescale!r}")
        self.seed = seed
        self.rescale = rescale

    def __call__(self, shape, dtype=None):
        value = self.base(shape, dtype=dtype)
        mask = sparse_init_mask(tuple(shape), self.sparsity, self.seed)
        value = ops.multiply(value, ops.cast(mask, value.dtype))
        if self.rescale:
            value = ops.multiply(value, 1.0 / math.sqrt(1.0 - self.sparsity))
        return value

    def get_config(self):
        return {
            "base": keras.initializers.serialize(self.base),
            "sparsity": self.sparsity,
            "seed": self.seed,
            "rescale": self.rescale,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["base"] = keras.initializers.deserialize(config["base"])
        return cls(**config)
