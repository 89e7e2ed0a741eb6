"""Quantizers: serializable objects that turn a float tensor into binary,
ternary or k-bit values with a straight-through gradient.

A quantizer holds hyperparameters only (floor 2); the math is in
:mod:`keras_sparse.ops.quantize`. Learnable quantizer state (the LSQ step,
the PACT clip, a random seed) belongs to the *layer* that uses the quantizer:
the layer calls :meth:`Quantizer.build` once per quantized tensor, which
creates the variables with ``layer.add_weight`` (so they are trained, saved
and restored with the layer) and returns them in a ``state`` dict the layer
passes back on every call. One quantizer instance can therefore serve many
layers.

Each quantizer declares ``precision``, the bits one value takes once
packed (1 for binary, 2 for ternary, ``bits`` for k-bit), which
:func:`keras_sparse.report` and binary optimizers read.

Strings accepted by :func:`get`: every alias below, plus ``"binary"``
(``SteSign()``: values exactly ±1, as Larq's BinaryNet layers) and
``"ternary"`` (``SteTern(ternary_weight_networks=True, scaled=True)``: the
TWN rule). An int ``k`` means ``k`` bits: ``1`` is ``SteSign()``, ``2``-``8``
is ``Uniform(bits=k)``.

Example:
>>> q = ks.quantizers.get("ste_sign")
>>> q([-0.3, 0.0, 2.0])
[-1., 1., 1.]
>>> ks.layers.SparseDense(64, kernel_quantizer="ste_sign", input_quantizer="ste_sign")
"""

from keras_sparse import config as config_lib
from keras_sparse.quantizers.base import REGISTRY
from keras_sparse.quantizers.base import AffineCodes
from keras_sparse.quantizers.base import Identity
from keras_sparse.quantizers.base import Quantizer
from keras_sparse.quantizers.binary import ApproxSign
from keras_sparse.quantizers.binary import MagnitudeAwareSign
from keras_sparse.quantizers.binary import SteSign
from keras_sparse.quantizers.binary import SteTern
from keras_sparse.quantizers.binary import StochasticBinary
from keras_sparse.quantizers.binary import SwishSign
from keras_sparse.quantizers.kbit import LSQ
from keras_sparse.quantizers.kbit import PACT
from keras_sparse.quantizers.kbit import DoReFa
from keras_sparse.quantizers.kbit import SteHeaviside
from keras_sparse.quantizers.kbit import Uniform

__all__ = [
    "Quantizer",
    "Identity",
    "SteSign",
    "ApproxSign",
    "SwishSign",
    "MagnitudeAwareSign",
    "StochasticBinary",
    "SteTern",
    "Uniform",
    "DoReFa",
    "LSQ",
    "SteHeaviside",
    "PACT",
    "REGISTRY",
    "AffineCodes",
    "get",
    "serialize",
]


# ---------------------------------------------------------------- lookup
def _parse(key):
    if key == "binary":
        return SteSign()
    if key == "ternary":
        return SteTern(ternary_weight_networks=True, scaled=True)
    return None


def get(identifier, arg_name="quantizer"):
    """Resolve a quantizer.

    Args:
        identifier: ``None``, a :class:`Quantizer`, an alias (``"ste_sign"``,
            ``"binary"``, ``"ternary"``, ...), an int number of bits (``1`` ->
            ``SteSign``, ``2``-``8`` -> ``Uniform(bits)``) or a serialized
            config dict.
        arg_name: the argument name used in error messages.

    Returns:
        A :class:`Quantizer` or ``None``.

    Raises:
        ValueError: naming ``arg_name`` and the value, for anything else.

    Example:
    >>> ks.quantizers.get(4)
    Uniform(bits=4, per_channel=True, symmetric=True, clip_value=None)
    """
    if identifier is None:
        return None
    if isinstance(identifier, int) and not isinstance(identifier, bool):
        if identifier == 1:
            return SteSign()
        if 2 <= identifier <= 8:
            return Uniform(bits=identifier)
        raise ValueError(
            f"An integer `{arg_name}` is a number of bits in [1, 8]. "
            f"Received: {arg_name}={identifier!r}"
        )
    return config_lib.lookup(identifier, Quantizer, REGISTRY, arg_name, parse_string=_parse)


def serialize(quantizer):
    """Serialize a quantizer (or ``None``) for a layer config."""
    return config_lib.serialize(quantizer)


deserialize, register = config_lib.family_api(Quantizer, REGISTRY, "quantizer", _parse)


__all__ += [n for n in ("get", "serialize", "deserialize", "register") if n not in __all__]
