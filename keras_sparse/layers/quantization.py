"""The quantizer side of a sparse layer: its ``kernel_quantizer`` and
``input_quantizer``, the state they own (LSQ steps, PACT clips, seeds) and
the transform they apply to the latent weights."""

import keras
from keras import ops

from keras_sparse import quantizers as quantizers_lib

__all__ = ["DenseBody", "QuantizationMixin", "SavesQuantizerSeeds", "seed_states"]


def seed_states(quantizer_state):
    """The state variables of the seed generators (``StochasticBinary``) in
    a layer's ``{tensor name: state dict}`` of quantizer state."""
    found = []
    for state in quantizer_state.values():
        for value in state.values():
            if isinstance(value, keras.random.SeedGenerator):
                found.append(value.state)
    return found


class SavesQuantizerSeeds:
    """Saving for a Keras layer with ``_quantizer_state`` (listed before
    ``keras.layers.Layer`` in its bases): Keras saves a layer's weights but
    not the state of its seed generators; this writes those after the
    weights, so random draws continue identically after a ``.keras`` round
    trip. A file written without them still loads (the seeds stay fresh)."""

    def _own_weights(self):
        return list(self._trainable_variables + self._non_trainable_variables)

    def _seed_variables(self):
        known = {id(v) for v in self._own_weights()}
        return [v for v in seed_states(self._quantizer_state) if id(v) not in known]

    def save_own_variables(self, store):
        for i, variable in enumerate(self._own_weights() + self._seed_variables()):
            store[f"{i}"] = variable

    def load_own_variables(self, store):
        weights, seeds = self._own_weights(), self._seed_variables()
        if not seeds or len(store.keys()) != len(weights) + len(seeds):
            # No seeds, or a file without them: Keras' own loading (and its
            # error for a count that matches neither).
            return super().load_own_variables(store)
        for i, variable in enumerate(weights + seeds):
            variable.assign(store[f"{i}"])


class DenseBody(SavesQuantizerSeeds):
    """``Dense``'s arguments, bias, activation and config, plus one
    ``kernel_quantizer`` with per-weight state, for layers that store their
    kernel in another form (factors, sampled rows) and so cannot inherit
    ``keras.layers.Dense`` itself. Listed before ``keras.layers.Layer`` in
    the bases; the subclass calls :meth:`_init_dense_body` from
    ``__init__``."""

    def _init_dense_body(self, activation=None, use_bias=True,
                         kernel_initializer="glorot_uniform", bias_initializer="zeros",
                         kernel_regularizer=None, bias_regularizer=None,
                         kernel_constraint=None, bias_constraint=None, kernel_quantizer=None):
        self.activation = keras.activations.get(activation)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.bias_regularizer = keras.regularizers.get(bias_regularizer)
        self.kernel_constraint = keras.constraints.get(kernel_constraint)
        self.bias_constraint = keras.constraints.get(bias_constraint)
        self.kernel_quantizer = quantizers_lib.get(kernel_quantizer, "kernel_quantizer")
        self._quantizer_state = {}
        self.input_spec = keras.layers.InputSpec(min_ndim=2)

    def _add_bias(self, units):
        """The ``(units,)`` bias, or ``None`` without ``use_bias``."""
        if not self.use_bias:
            return None
        return self.add_weight(
            name="bias",
            shape=(units,),
            initializer=self.bias_initializer,
            regularizer=self.bias_regularizer,
            constraint=self.bias_constraint,
        )

    def _build_kernel_quantizer(self, key, variable, name):
        """Create the quantizer state of ``variable`` under ``key``."""
        if self.kernel_quantizer is not None:
            self._quantizer_state[key] = self.kernel_quantizer.build(
                self, tuple(variable.shape), name, value=variable
            )

    def _initialize_kernel_quantizer(self, key, variable):
        """Re-initialize data-dependent quantizer state (an LSQ step) from
        ``variable``'s new value."""
        state = self._quantizer_state.get(key)
        if self.kernel_quantizer is not None and state:
            self.kernel_quantizer.initialize(state, variable)

    def _quantized(self, key, variable, training=None):
        """``variable`` as used in the forward pass, per output channel."""
        if self.kernel_quantizer is None:
            return ops.convert_to_tensor(variable)
        return self.kernel_quantizer(
            variable,
            state=self._quantizer_state.get(key) or None,
            output_axes=(-1,),
            training=training,
        )

    def _finish(self, outputs):
        """Add the bias and apply the activation (Dense's tail)."""
        if self.bias is not None:
            outputs = ops.add(outputs, self.bias)
        if self.activation is not None:
            outputs = self.activation(outputs)
        return outputs

    def _dense_body_config(self):
        """The config entries of :meth:`_init_dense_body`'s arguments."""
        config = {
            "activation": keras.activations.serialize(self.activation),
            "use_bias": self.use_bias,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "bias_initializer": keras.initializers.serialize(self.bias_initializer),
            "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
            "bias_regularizer": keras.regularizers.serialize(self.bias_regularizer),
            "kernel_constraint": keras.constraints.serialize(self.kernel_constraint),
            "bias_constraint": keras.constraints.serialize(self.bias_constraint),
        }
        config["kernel_quantizer"] = quantizers_lib.serialize(self.kernel_quantizer)
        return config


class QuantizationMixin:
    """Quantizer configuration and state of
    :class:`~keras_sparse.layers.SparseMixin` (which inherits it; not used
    on its own)."""

    # ------------------------------------------------------------------ config
    def configure_quantization(self, kernel_quantizer=None, input_quantizer=None):
        """Set (or replace) this layer's weight and input quantizers.

        Everything is validated before anything is changed. On a built
        layer, learnable quantizer state (an LSQ step, a PACT clip) is
        created now, and the state of replaced quantizers is removed.

        Raises:
            ValueError: for an unknown quantizer, a ``kernel_quantizer`` on
                a layer without masked weights, or an ``input_quantizer`` on
                a layer with integer inputs (``Embedding``).
        """
        kernel_quantizer = quantizers_lib.get(kernel_quantizer, "kernel_quantizer")
        input_quantizer = quantizers_lib.get(input_quantizer, "input_quantizer")
        if kernel_quantizer is not None and not self.sparse_weight_layouts:
            raise ValueError(
                f"Layer {self.name!r} ({type(self).__name__}) has no kernel to "
                f"quantize. Received: kernel_quantizer={kernel_quantizer!r}"
            )
        if input_quantizer is not None and isinstance(self, keras.layers.Embedding):
            raise ValueError(
                f"Layer {self.name!r} takes integer ids; they cannot be quantized. "
                f"Received: input_quantizer={input_quantizer!r}"
            )
        if self.built and (
            kernel_quantizer != self.kernel_quantizer or input_quantizer != self.input_quantizer
        ):
            self._drop_quantizer_state()
            self.kernel_quantizer = kernel_quantizer
            self.input_quantizer = input_quantizer
            self._build_quantizer_state(_built_input_shape(self), from_weights=True)
        self.kernel_quantizer = kernel_quantizer
        self.input_quantizer = input_quantizer

    def _reset_quantization(self):
        self.kernel_quantizer = None
        self.input_quantizer = None
        self._quantizer_training = None
        self._set_quantizer_state({})

    @property
    def quantized(self):
        """Whether the layer has a weight or input quantizer."""
        return self.kernel_quantizer is not None or self.input_quantizer is not None

    # ------------------------------------------------------- quantizer state
    def _set_quantizer_state(self, state):
        with self._unlocked():
            self._quantizer_state = state
        object.__setattr__(self, "_fused_weights", {})

    def _build_quantizer_state(self, input_shape=None, from_weights=False):
        """Let each quantizer create its state (variables made with
        ``add_weight``, so they train and save with the layer).
        ``from_weights``: the layer already holds trained weights and masks;
        initialize data-dependent state from the kept weights."""
        # Tag latent weights with their bit width (Larq's convention) so
        # optimizers can route them, e.g. CaseOptimizer's "binary" predicate.
        precision = None if self.kernel_quantizer is None else self.kernel_quantizer.precision
        for name in self.sparse_weight_names:
            self.latent_weight(name).precision = precision
        if self._quantizer_state:
            return
        state = {}
        with self._unlocked():
            if self.kernel_quantizer is not None:
                for name in self.sparse_weight_names:
                    latent = self.latent_weight(name)
                    mask = getattr(self, name + "_mask", None)
                    built = self.kernel_quantizer.build(
                        self, tuple(latent.shape), f"{name}_quantizer", value=latent
                    )
                    if built and from_weights and mask is not None:
                        self.kernel_quantizer.initialize(built, latent, mask)
                    state[name] = built
            if self.input_quantizer is not None:
                shape = _example_shape(input_shape)
                state["input"] = self.input_quantizer.build(self, shape, "input_quantizer")
        self._set_quantizer_state(state)

    def _drop_quantizer_state(self):
        for variable in self.quantizer_variables():
            self._untrack_variable(variable)
        self._set_quantizer_state({})

    def quantizer_variables(self):
        """The variables of this layer's quantizers (LSQ steps, PACT clips)."""
        found = []
        for state in self._quantizer_state.values():
            for value in state.values():
                if isinstance(value, keras.Variable):
                    found.append(value)
        return found

    def quantizer_seed_states(self):
        """The state variables of this layer's quantizer seed generators
        (``StochasticBinary``): not weights, but saved with the layer so
        random draws continue identically after a round trip."""
        return seed_states(self._quantizer_state)

    def quantizer_state(self, name):
        """The state dict of the quantizer of weight ``name`` (or
        ``"input"``); empty when the quantizer has none."""
        return self._quantizer_state.get(name, {})

    def initialize_quantizers(self):
        """Reset data-dependent quantizer state (the LSQ step) from the
        current latent weights and masks, e.g. after loading trained float
        weights into a freshly quantized layer."""
        if self.kernel_quantizer is None:
            return
        for name in self.sparse_weight_names:
            state = self._quantizer_state.get(name)
            if state:
                self.kernel_quantizer.initialize(
                    state, self.latent_weight(name), self.get_mask(name)
                )

    # ---------------------------------------------------------------- weights
    def transform_weight(self, name, value):
        """Hook applied to the latent weight before masking: the
        ``kernel_quantizer`` (identity without one). A quantizer that uses
        statistics of the tensor (a per-channel range or mean) sees
        ``mask * latent``, so pruned entries, which the optimizer's momentum
        moves between mask updates, do not change them; an elementwise one
        sees the latent weight (the mask applied afterwards zeroes them)."""
        if self.kernel_quantizer is None:
            return value
        if self._masks_before_quantizer(name):
            # `where`, not a product (cheaper here on TF/CPU; see
            # benchmarks/quant_overhead.py).
            value = ops.convert_to_tensor(value)
            mask = ops.convert_to_tensor(self.get_mask(name))
            value = ops.where(mask, value, ops.zeros((), value.dtype))
        return self.kernel_quantizer(
            value,
            state=self._quantizer_state.get(name) or None,
            output_axes=tuple(self.weight_layout(name).output_axes),
            training=self._quantizer_training,
        )

    def _masks_before_quantizer(self, name):
        """Whether the mask is applied to the latent weight before the
        quantizer (which then maps the zeros to exact zeros, so no mask is
        needed after it) rather than to the quantized weight."""
        quantizer = self.kernel_quantizer
        return (
            quantizer is not None
            and getattr(self, name + "_mask", None) is not None
            and (quantizer.keeps_zero or not quantizer.elementwise)
        )

    def _quantized_weight(self, name, raw):
        """``transform_weight(raw)`` where the mask keeps, exactly 0
        elsewhere: the part of the effective weight that
        :func:`backend.fuse` compiles."""
        value = ops.convert_to_tensor(self.transform_weight(name, raw))
        mask = getattr(self, name + "_mask", None)
        if mask is None or (
            self._masks_before_quantizer(name) and self.kernel_quantizer.keeps_zero
        ):
            return value
        # A select, not a product: a pruned entry is exactly 0 even when the
        # stored value is NaN or infinite (NaN * 0 = NaN), and it is one
        # pass less than a cast and a product.
        return ops.where(ops.convert_to_tensor(mask), value, ops.zeros((), value.dtype))


def _built_input_shape(layer):
    """The input shape a built layer was built with, if Keras recorded one."""
    shapes = getattr(layer, "_build_shapes_dict", None) or {}
    if len(shapes) == 1:
        return next(iter(shapes.values()))
    return None


def _example_shape(input_shape):
    """The shape of one example (batch axis dropped) or ``()`` if unknown."""
    if isinstance(input_shape, (tuple, list)) and input_shape and all(
        d is None or isinstance(d, int) for d in input_shape
    ):
        return tuple(input_shape[1:])
    return ()
