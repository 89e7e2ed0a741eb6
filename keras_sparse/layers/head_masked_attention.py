"""Attention heads as a prunable group.

``MultiHeadAttention`` is not in the sparse layer family: its unit of
structure is the *head*, not a kernel entry. ``HeadMaskedMultiHeadAttention``
is the Keras layer plus a boolean ``head_mask`` (one entry per head): the
output of a masked head is multiplied by zero before the output projection,
so the head contributes exactly nothing, in training and inference, and its
query/key/value weights receive no gradient. :func:`keras_sparse.prune_heads`
converts a model and chooses the heads; :func:`keras_sparse.shrink` rebuilds
a plain ``MultiHeadAttention`` with only the kept heads.
"""

import keras
import numpy as np
from keras import ops

from keras_sparse.config import PACKAGE

__all__ = ["HeadMaskedMultiHeadAttention"]


@keras.saving.register_keras_serializable(package=PACKAGE)
class HeadMaskedMultiHeadAttention(keras.layers.MultiHeadAttention):
    """``keras.layers.MultiHeadAttention`` whose heads can be switched off.

    Same arguments as the Keras layer. After ``build`` it holds a
    non-trainable boolean ``head_mask`` of shape ``(num_heads,)`` (all
    ``True``); :meth:`set_head_mask` changes it. A head with mask ``False``
    adds exactly zero to the output.

    Example:
    >>> mha = ks.layers.HeadMaskedMultiHeadAttention(num_heads=4, key_dim=8)
    >>> y = mha(x, x)
    >>> mha.set_head_mask([True, False, True, True])
    """

    def build(self, query_shape, value_shape, key_shape=None):
        super().build(query_shape, value_shape, key_shape)
        self.head_mask = self.add_weight(
            name="head_mask",
            shape=(self.num_heads,),
            initializer="ones",
            dtype="bool",
            trainable=False,
            autocast=False,
        )

    def set_head_mask(self, mask):
        """Set which heads are kept (a sequence of ``num_heads`` booleans)."""
        mask = np.asarray(mask, dtype=bool).reshape(-1)
        if mask.shape != (self.num_heads,):
            raise ValueError(
                f"`mask` must have {self.num_heads} entries (one per head). "
                f"Received: mask={mask.tolist()}"
            )
        self.head_mask.assign(mask)

    @property
    def kept_heads(self):
        """Indices of the heads whose mask is ``True``."""
        return np.nonzero(np.asarray(ops.convert_to_numpy(self.head_mask)))[0].tolist()

    def _compute_attention(self, query, key, value, attention_mask=None, training=None,
                           return_attention_scores=False, **kwargs):
        output, scores = super()._compute_attention(
            query, key, value, attention_mask, training, return_attention_scores, **kwargs
        )
        # output is (..., heads, value_dim): zero the masked heads.
        mask = ops.reshape(ops.cast(self.head_mask, output.dtype), (self.num_heads, 1))
        return ops.multiply(output, mask), scores
