"""Weight constraints for low-precision training.

A binary layer trains a float latent weight ``w`` and uses ``sign(w)`` in the
forward pass. With a straight-through estimator whose gradient is cancelled
where :math:`|w| > 1`, a latent weight that drifts beyond the clip can never
come back; :class:`WeightClip` keeps it inside (Courbariaux et al. 2016,
BinaryConnect; Larq's ``weight_clip``).
"""

import math

import keras
from keras import ops

from keras_sparse.config import PACKAGE

__all__ = ["WeightClip", "get"]


@keras.saving.register_keras_serializable(package=PACKAGE, name="WeightClip")
class WeightClip(keras.constraints.Constraint):
    """Clip every weight into ``[-clip_value, clip_value]`` after each update.

    .. math::
        w \\leftarrow \\min(\\max(w, -c), c)

    The usual companion of a ``ste_sign`` kernel quantizer (whose gradient
    is zero where :math:`|w| > 1`): with ``clip_value=1`` a latent weight
    always stays where it still receives a gradient.

    Args:
        clip_value: the bound :math:`c` (a finite number > 0).

    Example:
    >>> layer = ks.layers.SparseDense(
    ...     64, kernel_quantizer="ste_sign",
    ...     kernel_constraint=ks.constraints.WeightClip(1.0))
    """

    def __init__(self, clip_value=1.0):
        if (
            isinstance(clip_value, bool)
            or not isinstance(clip_value, (int, float))
            or not math.isfinite(clip_value)
            or clip_value <= 0
        ):
            raise ValueError(
                "`clip_value` must be a finite number > 0. "
                f"Received: clip_value={clip_value!r}"
            )
        self.clip_value = float(clip_value)

    def __call__(self, w):
        w = ops.convert_to_tensor(w)
        return ops.clip(w, -self.clip_value, self.clip_value)

    def get_config(self):
        return {"clip_value": self.clip_value}

    def __eq__(self, other):
        return type(self) is type(other) and self.clip_value == other.clip_value

    def __hash__(self):
        return hash((type(self).__name__, self.clip_value))

    def __repr__(self):
        return f"WeightClip(clip_value={self.clip_value!r})"


_ALIASES = {"weight_clip": WeightClip}


def get(identifier):
    """Resolve ``"weight_clip"``, a :class:`WeightClip`, a serialized config
    or anything ``keras.constraints.get`` accepts."""
    if isinstance(identifier, str) and identifier.strip().lower() in _ALIASES:
        return _ALIASES[identifier.strip().lower()]()
    return keras.constraints.get(identifier)
