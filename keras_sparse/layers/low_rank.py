"""Low-rank layers: a kernel stored as the product of two thin factors.

``LowRankDense(units, rank)`` computes ``x @ A @ B + bias`` with
``A: (in, rank)`` and ``B: (rank, units)``; ``LowRankConv2D(filters,
kernel_size, rank)`` is a ``k x k`` convolution with ``rank`` filters followed
by a ``1 x 1`` convolution to ``filters`` (one bias, one activation, at the
end). Both cost ``rank * (in + out)`` weights instead of ``in * out``, and
their FLOPs fall in the same ratio, in plain Keras on every backend.

Train them from scratch, or convert trained ``Dense``/``Conv2D`` layers with
:func:`keras_sparse.factorize` (truncated SVD). A ``kernel_quantizer`` (see
:mod:`keras_sparse.quantizers`) quantizes each factor; the float factors are
what is trained and saved.
"""

import math

import keras
import numpy as np
from keras import ops

from keras_sparse.config import PACKAGE
from keras_sparse.layers.cost import stored_cost_row
from keras_sparse.layers.quantization import DenseBody

__all__ = ["LowRankDense", "LowRankConv2D"]


def _check_positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer. Received: {name}={value!r}")
    return int(value)


def _check_rank_for(rank, in_features, out_features, layer_name):
    if rank >= min(in_features, out_features):
        raise ValueError(
            f"Layer {layer_name!r}: `rank` must be < min(in, out) = "
            f"{min(in_features, out_features)} (in={in_features}, out={out_features}); "
            f"a larger rank costs more than the full kernel. Received: rank={rank}"
        )


class _FactorizedKernel(DenseBody, keras.layers.Layer):
    """Shared machinery: two factor variables, an optional quantizer on each,
    and ``Dense``'s bias and activation (:class:`DenseBody`). Subclasses
    create the factors and implement ``call``."""

    def __init__(
        self,
        rank,
        activation=None,
        use_bias=True,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        activity_regularizer=None,
        kernel_constraint=None,
        bias_constraint=None,
        kernel_quantizer=None,
        **kwargs,
    ):
        super().__init__(activity_regularizer=activity_regularizer, **kwargs)
        self.rank = _check_positive_int(rank, "rank")
        self._init_dense_body(
            activation, use_bias, kernel_initializer, bias_initializer, kernel_regularizer,
            bias_regularizer, kernel_constraint, bias_constraint, kernel_quantizer,
        )

    def _add_factor(self, name, shape):
        return self.add_weight(
            name=name,
            shape=shape,
            initializer=self.kernel_initializer,
            regularizer=self.kernel_regularizer,
            constraint=self.kernel_constraint,
        )

    def _build_quantizers(self):
        for name in ("kernel_a", "kernel_b"):
            self._build_kernel_quantizer(name, getattr(self, name), f"{name}_quantizer")

    def set_factors(self, kernel_a, kernel_b, bias=None):
        """Assign both factors (and the bias), then re-initialize
        data-dependent quantizer state (an LSQ step) from them."""
        for variable, value in ((self.kernel_a, kernel_a), (self.kernel_b, kernel_b)):
            value = np.asarray(value, dtype="float32")
            if value.shape != tuple(variable.shape):
                raise ValueError(
                    f"Layer {self.name!r}: expected a factor of shape {tuple(variable.shape)}. "
                    f"Received: shape={value.shape}"
                )
            variable.assign(value)
        if bias is not None:
            if self.bias is None:
                raise ValueError(f"Layer {self.name!r} has no bias (use_bias=False).")
            self.bias.assign(np.asarray(bias, dtype="float32"))
        for name in self._quantizer_state:
            self._initialize_kernel_quantizer(name, getattr(self, name))

    def factor(self, name, training=None):
        """Factor ``"kernel_a"`` or ``"kernel_b"`` as used in the forward
        pass (quantized when the layer has a ``kernel_quantizer``)."""
        return self._quantized(name, getattr(self, name), training)

    def get_config(self):
        config = super().get_config()
        config["rank"] = self.rank
        config.update(self._dense_body_config())
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class LowRankDense(_FactorizedKernel):
    """A ``Dense`` layer whose kernel is the product of two factors.

    ``outputs = activation(inputs @ kernel_a @ kernel_b + bias)`` with
    ``kernel_a: (in, rank)`` and ``kernel_b: (rank, units)``: ``rank * (in +
    units)`` weights and ``2 * rank * (in + units)`` FLOPs per example
    instead of ``in * units`` and ``2 * in * units``.

    Args:
        units: output dimension.
        rank: inner dimension; must be ``< min(in, units)`` (checked when the
            layer is built).
        activation, use_bias, kernel_initializer, bias_initializer,
        kernel_regularizer, bias_regularizer, activity_regularizer,
        kernel_constraint, bias_constraint: as ``keras.layers.Dense`` (the
            kernel arguments apply to both factors).
        kernel_quantizer: a :mod:`keras_sparse.quantizers` quantizer (or
            alias / bits) applied to each factor, per output channel.

    Call arguments:
        inputs: a tensor ``(..., in)``.
        training: passed to a stochastic quantizer.

    Returns:
        A tensor ``(..., units)``.

    Example:
    >>> layer = ks.layers.LowRankDense(256, rank=16, activation="relu")
    >>> layer(np.zeros((2, 512))).shape
    (2, 256)
    """

    def __init__(self, units, rank, **kwargs):
        super().__init__(rank, **kwargs)
        self.units = _check_positive_int(units, "units")

    def build(self, input_shape):
        in_features = input_shape[-1]
        if in_features is None:
            raise ValueError(
                f"Layer {self.name!r} needs a known last input dimension. "
                f"Received: input_shape={input_shape}"
            )
        _check_rank_for(self.rank, in_features, self.units, self.name)
        self.kernel_a = self._add_factor("kernel_a", (in_features, self.rank))
        self.kernel_b = self._add_factor("kernel_b", (self.rank, self.units))
        self.bias = self._add_bias(self.units)
        self._build_quantizers()
        self.input_spec = keras.layers.InputSpec(min_ndim=2, axes={-1: in_features})

    @property
    def kernel(self):
        """The equivalent full kernel ``kernel_a @ kernel_b`` ``(in, units)``."""
        return ops.matmul(self.factor("kernel_a"), self.factor("kernel_b"))

    def call(self, inputs, training=None):
        hidden = ops.matmul(inputs, self.factor("kernel_a", training))
        return self._finish(ops.matmul(hidden, self.factor("kernel_b", training)))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.units,)

    def report_row(self):
        """This layer's row in :func:`keras_sparse.report`: its stored
        parameters and bytes and the FLOPs it computes."""
        return _low_rank_dense_cost(self)

    def get_config(self):
        config = super().get_config()
        config["units"] = self.units
        return config


def _tuple(value, n, name):
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = (int(value),) * n
    value = tuple(value)
    if len(value) != n or not all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1 for v in value
    ):
        raise ValueError(
            f"`{name}` must be a positive int or a tuple of {n} positive ints. "
            f"Received: {name}={value!r}"
        )
    return tuple(int(v) for v in value)


def conv_output_size(size, kernel, stride, padding, dilation):
    """Output length of one spatial axis of a convolution (``None`` if unknown)."""
    if size is None:
        return None
    if padding == "same":
        return -(-size // stride)
    effective = (kernel - 1) * dilation + 1
    return max(0, -(-(size - effective + 1) // stride))


@keras.saving.register_keras_serializable(package=PACKAGE)
class LowRankConv2D(_FactorizedKernel):
    """A ``Conv2D`` factored into a ``k x k`` convolution with ``rank``
    filters and a ``1 x 1`` convolution to ``filters``.

    ``kernel_a`` is ``(kh, kw, in, rank)`` (no bias), ``kernel_b`` is
    ``(rank, filters)``; bias and activation come at the end. This is exact
    for a kernel of rank ``rank`` in its ``(kh*kw*in, filters)`` matrix view,
    so :func:`keras_sparse.factorize` converts a trained ``Conv2D`` by a
    truncated SVD of that view. Weights and FLOPs: ``rank * (kh*kw*in +
    filters)`` per output position instead of ``kh*kw*in*filters``.

    Args:
        filters: output channels.
        kernel_size, strides, padding, data_format, dilation_rate: as
            ``keras.layers.Conv2D`` (``groups`` is not supported).
        rank: the inner number of channels; must be ``< min(kh*kw*in,
            filters)``.
        activation, use_bias, kernel_initializer, bias_initializer,
        kernel_regularizer, bias_regularizer, activity_regularizer,
        kernel_constraint, bias_constraint, kernel_quantizer: as
            :class:`LowRankDense`.

    Call arguments:
        inputs: a 4-D tensor.
        training: passed to a stochastic quantizer.

    Example:
    >>> layer = ks.layers.LowRankConv2D(64, 3, rank=8, padding="same")
    >>> layer(np.zeros((1, 16, 16, 32))).shape
    (1, 16, 16, 64)
    """

    def __init__(
        self,
        filters,
        kernel_size,
        rank,
        strides=(1, 1),
        padding="valid",
        data_format=None,
        dilation_rate=(1, 1),
        **kwargs,
    ):
        super().__init__(rank, **kwargs)
        self.filters = _check_positive_int(filters, "filters")
        self.kernel_size = _tuple(kernel_size, 2, "kernel_size")
        self.strides = _tuple(strides, 2, "strides")
        self.dilation_rate = _tuple(dilation_rate, 2, "dilation_rate")
        padding = str(padding).lower()
        if padding not in ("valid", "same"):
            raise ValueError(
                f"`padding` must be 'valid' or 'same'. Received: padding={padding!r}"
            )
        self.padding = padding
        data_format = data_format or keras.config.image_data_format()
        if data_format not in ("channels_last", "channels_first"):
            raise ValueError(
                "`data_format` must be 'channels_last' or 'channels_first'. "
                f"Received: data_format={data_format!r}"
            )
        self.data_format = data_format
        self.input_spec = keras.layers.InputSpec(ndim=4)

    @property
    def _channel_axis(self):
        return -1 if self.data_format == "channels_last" else 1

    def build(self, input_shape):
        in_channels = input_shape[self._channel_axis]
        if in_channels is None:
            raise ValueError(
                f"Layer {self.name!r} needs a known number of input channels. "
                f"Received: input_shape={input_shape}"
            )
        _check_rank_for(
            self.rank, math.prod(self.kernel_size) * in_channels, self.filters, self.name
        )
        self.kernel_a = self._add_factor("kernel_a", self.kernel_size + (in_channels, self.rank))
        self.kernel_b = self._add_factor("kernel_b", (self.rank, self.filters))
        self.bias = self._add_bias(self.filters)
        self._build_quantizers()
        self.input_spec = keras.layers.InputSpec(ndim=4, axes={self._channel_axis: in_channels})

    @property
    def kernel(self):
        """The equivalent full ``Conv2D`` kernel ``(kh, kw, in, filters)``."""
        a = self.factor("kernel_a")
        shape = tuple(a.shape)
        full = ops.matmul(ops.reshape(a, (-1, shape[-1])), self.factor("kernel_b"))
        return ops.reshape(full, shape[:-1] + (self.filters,))

    def call(self, inputs, training=None):
        hidden = ops.conv(
            inputs,
            self.factor("kernel_a", training),
            strides=self.strides,
            padding=self.padding,
            data_format=self.data_format,
            dilation_rate=self.dilation_rate,
        )
        kernel_b = self.factor("kernel_b", training)
        if self.data_format == "channels_last":
            outputs = ops.matmul(hidden, kernel_b)
            return self._finish(outputs)
        outputs = ops.conv(
            hidden,
            ops.reshape(kernel_b, (1, 1, self.rank, self.filters)),
            data_format=self.data_format,
        )
        if self.bias is not None:
            outputs = ops.add(outputs, ops.reshape(self.bias, (1, self.filters, 1, 1)))
        return self.activation(outputs) if self.activation is not None else outputs

    def compute_output_shape(self, input_shape):
        if self.data_format == "channels_last":
            spatial = input_shape[1:3]
        else:
            spatial = input_shape[2:4]
        out = tuple(
            conv_output_size(n, k, s, self.padding, d)
            for n, k, s, d in zip(spatial, self.kernel_size, self.strides, self.dilation_rate)
        )
        if self.data_format == "channels_last":
            return (input_shape[0],) + out + (self.filters,)
        return (input_shape[0], self.filters) + out

    def report_row(self):
        """This layer's row in :func:`keras_sparse.report`: its stored
        parameters and bytes and the FLOPs it computes."""
        return _low_rank_conv_cost(self)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "filters": self.filters,
                "kernel_size": self.kernel_size,
                "strides": self.strides,
                "padding": self.padding,
                "data_format": self.data_format,
                "dilation_rate": self.dilation_rate,
            }
        )
        return config


# ---------------------------------------------------------------- report
def _built_input_shape(layer):
    shapes = getattr(layer, "_build_shapes_dict", None) or {}
    if len(shapes) == 1:
        shape = next(iter(shapes.values()))
        if isinstance(shape, (tuple, list)):
            return tuple(shape)
    return None


def _value_bytes(variable):
    return 2 if variable.dtype == "bfloat16" else np.dtype(variable.dtype).itemsize


def factorized_cost_row(layer, positions):
    """Report row of a factorized layer: real parameters and FLOPs (the
    factors, as computed), with ``positions`` output positions per example
    (``None`` when unknown)."""
    macs = math.prod(layer.kernel_a.shape) + math.prod(layer.kernel_b.shape)
    return stored_cost_row(
        layer, [layer.kernel_a, layer.kernel_b], macs, positions, pattern=f"rank {layer.rank}"
    )


def _low_rank_dense_cost(layer):
    shape = _built_input_shape(layer)
    positions = None
    if shape is not None and all(d is not None for d in shape[1:-1]):
        positions = int(math.prod(shape[1:-1])) if len(shape) > 2 else 1
    return factorized_cost_row(layer, positions)


def _low_rank_conv_cost(layer):
    shape = _built_input_shape(layer)
    positions = None
    if shape is not None:
        out = layer.compute_output_shape(shape)
        spatial = out[1:3] if layer.data_format == "channels_last" else out[2:4]
        if all(d is not None for d in spatial):
            positions = int(math.prod(spatial))
    return factorized_cost_row(layer, positions)
