"""Sparse activations (functional sparsity) as layers.

Weight sparsity removes connections; activation sparsity leaves the weights
dense and makes most *outputs* of a layer zero for each example, so the next
layer reads only a few non-zero inputs (Ahmad & Scheinkman 2019, "How Can We
Be So Dense?"; Makhzani & Frey 2013, "k-Sparse Autoencoders").

- :class:`TopKActivation` (also ``KWinnersTakeAll``) keeps exactly ``k``
  entries of each example and zeroes the rest: a hard, exact constraint.
- :class:`ActivitySparsity` is an identity layer that adds an L1 penalty on
  its input to the loss: a soft push toward zeros (with ReLU before it, the
  zeros are exact). Its coefficient is a variable, so a callback can change
  it while ``fit`` runs.

:func:`keras_sparse.report` with ``data=`` measures the zeros each layer
hands to the next Dense/Conv layer and the multiply-accumulates they could
save.
"""

import keras
import numpy as np
from keras import ops

from keras_sparse.checks import check_int
from keras_sparse.checks import check_number
from keras_sparse.checks import type_error
from keras_sparse.config import PACKAGE
from keras_sparse.ops.activations import top_k_activation_mask
from keras_sparse.ops.activations import top_k_count

__all__ = ["ActivitySparsity", "KWinnersTakeAll", "TopKActivation", "get_sparse_activation"]

#: snake_case alias -> layer class, for :func:`get_sparse_activation`.
ALIASES = {}


def _register(*aliases):
    def decorator(cls):
        cls = keras.saving.register_keras_serializable(package=PACKAGE)(cls)
        for alias in aliases:
            ALIASES[alias] = cls
        return cls

    return decorator


@_register("top_k_activation", "k_winners_take_all")
class TopKActivation(keras.layers.Layer):
    """Keeps the ``k`` largest values of each example and zeroes the rest
    (k-winners-take-all).

    .. math::
        y_i = x_i \\text{ if } x_i \\text{ is among the } k \\text{ largest
        of its group, else } 0

    A group is the entries along ``axis`` at one position (``axis=-1`` on a
    ``(batch, units)`` Dense output: the units of each example; on a
    channels-last ``(batch, h, w, c)`` feature map: the channels of each
    pixel), or all non-batch entries of an example (``axis=None``). Exactly
    ``k`` entries are kept in every group: among equal values the one with the
    lowest index wins (row-major over the group), on every backend. The
    largest *values* win, not the largest magnitudes, so place the layer on
    pre-activations (``Dense(..., activation=None)``) or after a ReLU.

    The gradient flows through the kept entries only (it is 1 there and 0
    elsewhere); the choice of winners itself has no gradient.

    Reference: Ahmad & Scheinkman 2019, "How Can We Be So Dense? The Benefits
    of Using Highly Sparse Representations"; Makhzani & Frey 2013,
    "k-Sparse Autoencoders".

    Args:
        k: number of entries kept per group (an int >= 1, at most the group
            size). Give ``k`` or ``fraction``, not both.
        fraction: share of the group kept, a float in ``(0, 1]``; ``k`` is
            ``max(1, round(fraction * size))`` with halves rounded up.
        axis: the axis the winners are chosen along (any axis but the batch
            axis), or ``None`` for all non-batch axes together.
        **kwargs: base layer arguments (``name``, ``dtype``, ...).

    Call arguments:
        inputs: a tensor of rank >= 2 whose group size is known when the
            layer is built.

    Returns:
        A tensor of the shape of ``inputs`` with ``size - k`` zeros per group.

    Raises:
        ValueError: for ``k < 1``, ``k`` larger than the group (when the
            layer is built), a fraction outside ``(0, 1]``, both or neither
            of ``k`` and ``fraction``, or the batch axis as ``axis``.

    Example:
    >>> layer = ks.layers.TopKActivation(k=2)
    >>> keras.ops.convert_to_numpy(layer(np.array([[3., 1., 3., 2.]])))
    array([[3., 0., 3., 0.]], dtype=float32)
    """

    def __init__(self, k=None, fraction=None, axis=-1, **kwargs):
        if (k is None) == (fraction is None):
            raise ValueError(
                "Give exactly one of `k` (entries kept) and `fraction` (share kept). "
                f"Received: k={k!r}, fraction={fraction!r}"
            )
        k = check_int(k, "k", minimum=1, allow_none=True)
        fraction = check_number(
            fraction, "fraction", minimum=0.0, maximum=1.0, low_open=True, allow_none=True
        )
        if axis is not None:
            axis = check_int(axis, "axis")
            if axis == 0:
                raise ValueError(f"`axis` cannot be the batch axis 0. Received: axis={axis}")
        super().__init__(**kwargs)
        self.k = k
        self.fraction = fraction
        self.axis = axis
        self.supports_masking = True

    def group_size(self, input_shape):
        """Number of entries the winners are chosen among, for inputs of
        ``input_shape`` (batch included)."""
        rank = len(input_shape)
        if rank < 2:
            raise ValueError(
                "`TopKActivation` needs inputs of rank >= 2 (batch first). "
                f"Received: input_shape={tuple(input_shape)}"
            )
        if self.axis is None:
            dims = tuple(input_shape[1:])
        else:
            if not -rank <= self.axis < rank or self.axis % rank == 0:
                raise ValueError(
                    f"`axis` must be a non-batch axis of inputs of rank {rank}. "
                    f"Received: axis={self.axis}"
                )
            dims = (input_shape[self.axis],)
        if any(d is None for d in dims):
            raise ValueError(
                "`TopKActivation` needs the size of the axes it chooses among when it is "
                f"built. Received: input_shape={tuple(input_shape)}, axis={self.axis}"
            )
        return int(np.prod(dims))

    def kept_count(self, input_shape):
        """The ``k`` used for inputs of ``input_shape``.

        Raises:
            ValueError: when ``k`` exceeds the group size.
        """
        return top_k_count(self.group_size(input_shape), self.k, self.fraction)

    def build(self, input_shape):
        self.kept_count(input_shape)  # rejects a k larger than the group now
        self.built = True

    def call(self, inputs):
        # From the static shape at every call: a layer called on inputs of
        # another size chooses among those.
        kept = self.kept_count(inputs.shape)
        mask = ops.stop_gradient(top_k_activation_mask(inputs, kept, self.axis))
        return ops.where(mask, inputs, ops.zeros_like(inputs))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(k=self.k, fraction=self.fraction, axis=self.axis)
        return config


#: The name used by Ahmad & Scheinkman (2019) for the same layer.
KWinnersTakeAll = TopKActivation


@_register("activity_sparsity")
class ActivitySparsity(keras.layers.Layer):
    """Identity layer adding an L1 penalty on its input to the training loss.

    .. math::
        \\text{loss} \\mathrel{+}= l \\cdot \\frac{1}{N} \\sum_{b, i} |a_{b,i}|

    the mean of ``|a|`` over the batch and every entry (so ``l`` does not
    depend on the batch size or the layer width). Place it after an
    activation (after a ReLU the penalty drives outputs to exact zeros). The
    penalty is added in training only (``fit``, or a call with
    ``training=True``): ``evaluate`` reports the data loss.

    ``l`` lives in :attr:`coefficient`, a non-trainable float32 scalar
    variable of the layer: assign it between ``fit`` calls or from a
    callback and the compiled train step uses the new value at its next
    step (on JAX, call ``model.jax_state_sync()`` first, see
    :func:`keras_sparse.backend.sync_model_state`). It is saved with the
    model.

    In training the layer also records the fraction of exact zeros of its
    input in the last batch, in a non-trainable variable (updated inside the
    train step, like BatchNormalization's moving statistics); read it with
    :meth:`measured_sparsity`.

    The layer follows the protocol a sparsity controller uses:
    ``coefficient`` (the variable), ``measured_sparsity()`` and
    ``penalty_kind = "activation"``.

    Args:
        l: the coefficient (a number >= 0).
        **kwargs: base layer arguments (``name``, ``dtype``, ...).

    Call arguments:
        inputs: any float tensor.
        training: whether the penalty and the zero count apply.

    Returns:
        ``inputs`` unchanged.

    Example:
    >>> model = keras.Sequential([
    ...     keras.Input((64,)), keras.layers.Dense(128, activation="relu"),
    ...     ks.layers.ActivitySparsity(1e-2), keras.layers.Dense(10)])
    >>> model.layers[1].coefficient.assign(5e-2)  # a stronger push
    """

    penalty_kind = "activation"

    def __init__(self, l=0.0, **kwargs):  # noqa: E741 - Keras' name for the coefficient
        l = check_number(l, "l", minimum=0.0)
        super().__init__(**kwargs)
        self._initial_l = l
        self.supports_masking = True
        # Created here, not in build: a controller may assign the coefficient
        # before the model has seen data. No autocast (as BatchNormalization's
        # moving statistics): under a mixed policy on torch an assignment
        # inside `call` would go to a float16 copy and be lost.
        self.coefficient = self.add_weight(
            shape=(), initializer=keras.initializers.Constant(l), dtype="float32",
            trainable=False, autocast=False, name="coefficient",
        )
        self.zero_fraction = self.add_weight(
            shape=(), initializer="zeros", dtype="float32", trainable=False,
            autocast=False, name="zero_fraction",
        )

    def build(self, input_shape):
        self.built = True

    def penalty(self, inputs):
        """The loss term ``l * mean(|inputs|)`` (a float32 scalar)."""
        mean_abs = ops.mean(ops.abs(ops.cast(inputs, "float32")))
        return self.coefficient * mean_abs

    def call(self, inputs, training=None):
        if training:
            self.add_loss(self.penalty(inputs))
            self.zero_fraction.assign(
                ops.mean(ops.cast(ops.equal(inputs, ops.zeros_like(inputs)), "float32"))
            )
        return inputs

    def measured_sparsity(self):
        """Fraction of exact zeros of the input in the last training batch
        (0.0 before any), as a Python float. On JAX inside ``fit``, sync the
        model state first (``model.jax_state_sync()``)."""
        return float(ops.convert_to_numpy(self.zero_fraction))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        try:
            l = float(ops.convert_to_numpy(self.coefficient))  # noqa: E741
        except (TypeError, AttributeError):
            # On JAX inside fit the variable has no value until the state is
            # synced: the value given at construction stands in.
            l = self._initial_l  # noqa: E741
        config.update(l=l)
        return config


def get_sparse_activation(identifier, **kwargs):
    """An activation-sparsity layer from a layer, an alias or a config.

    Args:
        identifier: a :class:`TopKActivation` / :class:`ActivitySparsity`
            instance (returned as is), a snake_case alias
            (``"top_k_activation"``, ``"k_winners_take_all"``,
            ``"activity_sparsity"``) or a serialized config dict.
        **kwargs: constructor arguments, with an alias only.

    Returns:
        The layer.

    Raises:
        ValueError: for an unknown alias or a config of another kind.

    Example:
    >>> ks.layers.get_sparse_activation("k_winners_take_all", fraction=0.1)
    <TopKActivation ...>
    """
    if isinstance(identifier, str):
        key = identifier.strip().lower()
        if key not in ALIASES:
            raise ValueError(
                f"Unknown activation-sparsity layer. Expected one of {sorted(ALIASES)}. "
                f"Received: identifier={identifier!r}"
            )
        return ALIASES[key](**kwargs)
    if kwargs:
        raise type_error(
            "identifier", identifier, "an alias string when keyword arguments are given")
    layer = identifier
    if isinstance(identifier, dict):
        try:
            layer = keras.saving.deserialize_keras_object(identifier)
        except (TypeError, ValueError) as error:
            raise ValueError(
                f"Could not deserialize `identifier` ({error}). Received: identifier={identifier!r}"
            ) from None
    if isinstance(layer, (TopKActivation, ActivitySparsity)):
        return layer
    raise ValueError(
        "Could not interpret `identifier` as an activation-sparsity layer. "
        f"Received: identifier={identifier!r}"
    )
