"""The sparse-layer mechanism shared by every layer of the family.

A sparse layer is a Keras layer subclass whose weight property (``kernel``,
``embeddings``, ...) returns the *effective* weight::

    effective = mask * transform(latent)

where ``latent`` is the float variable the optimizer trains and saves,
``transform`` is the layer's ``kernel_quantizer`` (identity when ``None``),
and ``mask`` is a compact non-trainable boolean variable. An
``input_quantizer`` quantizes the layer input before the parent's ``call``. The Keras parent's own
``call`` reads the property, so the forward pass is the parent's, unchanged,
on every backend and under XLA.
"""

import contextlib
import functools
import inspect
import math
import warnings

import keras
from keras import ops

from keras_sparse import backend
from keras_sparse import patterns as patterns_lib
from keras_sparse import quantizers as quantizers_lib
from keras_sparse.initializers import SparseInitializer
from keras_sparse import schedules as schedules_lib
from keras_sparse import scorers as scorers_lib
from keras_sparse.ops.masks import check_sparsity
from keras_sparse.ops.masks import mask_sparsity

__all__ = ["SparseMixin", "Layout", "is_sparse_layer"]

Layout = patterns_lib.Layout

#: Smallest weight (entries) whose quantizer and mask are fused into one
#: compiled kernel on TensorFlow: a fused call has a fixed launch cost that a
#: small kernel does not win back (measured on a 100 x 10 kernel: +19 us
#: fused against +9 us op by op per training step).
FUSE_MIN_SIZE = 4096

#: Keyword arguments the mixin adds to every layer of the family.
SPARSE_ARGUMENTS = (
    "schedule",
    "pattern",
    "scorer",
    "global_pruning",
    "kernel_quantizer",
    "input_quantizer",
)

_MISSING_CALLBACK = (
    "A keras_sparse layer with a pruning schedule is training without the "
    "`ks.callbacks.Pruning()` callback: its masks are not updating. Pass "
    "`callbacks=[ks.callbacks.Pruning()]` to `fit`."
)


def is_sparse_layer(layer):
    """Whether ``layer`` belongs to the sparse layer family."""
    return isinstance(layer, SparseMixin)


def refresh_call_signature(layer):
    """Recompute what Keras cached about ``layer.call`` (after a class swap)."""
    layer._call_signature = inspect.signature(layer.call)
    layer.call_signature_parameters = list(layer._call_signature.parameters)
    layer._call_has_training_arg = "training" in layer.call_signature_parameters
    layer._call_has_mask_arg = "mask" in layer.call_signature_parameters
    if hasattr(layer, "_call_has_context_arg"):
        layer._call_has_context_arg = {
            arg: arg in layer.call_signature_parameters
            for arg in layer._call_has_context_arg
        }


def _weight_property(name):
    latent_attr = "_" + name

    def fget(self):
        return self.effective_weight(name)

    def fset(self, value):
        setattr(self, latent_attr, value)

    fget._keras_sparse = True
    return property(fget, fset, doc=f"Effective ``{name}``: mask x transform(latent).")


def _keras_parent(cls):
    for klass in cls.__mro__[1:]:
        if issubclass(klass, keras.layers.Layer) and not issubclass(klass, SparseMixin):
            return klass
    return keras.layers.Layer


def _merged_signature(parent):
    params = list(inspect.signature(parent.__init__).parameters.values())[1:]
    var_kw = [p for p in params if p.kind is inspect.Parameter.VAR_KEYWORD]
    params = [p for p in params if p.kind is not inspect.Parameter.VAR_KEYWORD]
    ours = [
        inspect.Parameter("schedule", inspect.Parameter.KEYWORD_ONLY, default=None),
        inspect.Parameter("pattern", inspect.Parameter.KEYWORD_ONLY, default="unstructured"),
        inspect.Parameter("scorer", inspect.Parameter.KEYWORD_ONLY, default="magnitude"),
        inspect.Parameter("global_pruning", inspect.Parameter.KEYWORD_ONLY, default=False),
        inspect.Parameter("kernel_quantizer", inspect.Parameter.KEYWORD_ONLY, default=None),
        inspect.Parameter("input_quantizer", inspect.Parameter.KEYWORD_ONLY, default=None),
    ]
    return inspect.Signature(params + ours + var_kw)


def _finishing_build(build):
    """Wrap a subclass's own ``build`` so masks are added even when it does
    not call ``super().build()`` (the usual Keras 3 custom-layer style)."""
    if getattr(build, "_keras_sparse_build", False):
        return build

    @functools.wraps(build)
    def wrapper(self, *args, **kwargs):
        build(self, *args, **kwargs)
        self._finish_sparse_build(args[0] if args else kwargs.get("input_shape"))

    wrapper._keras_sparse_build = True
    return wrapper


def _gradient_tap(value, probe):
    """``value`` unchanged in the forward pass; the upstream gradient goes
    both to ``value`` and to ``probe`` (the same as ``value + (probe -
    stop_gradient(probe))``, without two elementwise passes over the kernel)."""

    @ops.custom_gradient
    def tap(value, probe):
        def grad(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            return upstream, upstream

        return value, grad

    return tap(value, probe)


class SparseMixin:
    """Mixin that gives a Keras layer masked (and transformable) weights.

    Subclass it *before* the Keras parent and declare which weights are
    masked and their layout::

        class SparseDense(ks.layers.SparseMixin, keras.layers.Dense):
            sparse_weight_layouts = {"kernel": ks.patterns.Layout((-2,), (-1,))}

    For each declared name the mixin installs a property returning the
    effective weight; the latent variable lives in ``_<name>`` (where Keras
    ``Dense``/``Conv`` already keep it) and the mask in ``<name>_mask``. A
    user's own layer opts in the same way, provided its ``call`` reads the
    weight through ``self.<name>``.

    Args (added to the Keras parent's):
        schedule: a :mod:`keras_sparse.schedules` schedule, a float (constant
            sparsity) or ``None`` (mask stays as it is).
        pattern: a :mod:`keras_sparse.patterns` pattern or alias.
        scorer: a :mod:`keras_sparse.scorers` scorer or alias.
        global_pruning: rank this layer's weights together with every other
            layer that has ``global_pruning=True`` (one threshold).
        kernel_quantizer: a :mod:`keras_sparse.quantizers` quantizer, alias
            or number of bits applied to every masked weight: the effective
            weight is ``mask * kernel_quantizer(latent)``; the latent float
            weight is what is trained and saved.
        input_quantizer: a quantizer applied to the layer input (per
            tensor) before the parent's ``call``.

    Example:
    >>> layer = ks.layers.SparseDense(64, kernel_quantizer="ste_sign",
    ...                               input_quantizer="ste_sign")
    """

    #: dict weight name -> Layout; set by each concrete layer.
    sparse_weight_layouts = {}
    _raw_getters = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        parent = _keras_parent(cls)
        cls._keras_parent = parent
        for name in cls.sparse_weight_layouts:
            existing = getattr(cls, name, None)
            if isinstance(existing, property) and getattr(existing.fget, "_keras_sparse", False):
                continue
            cls._raw_getters = dict(getattr(cls, "_raw_getters", {}))
            cls._raw_getters[name] = existing.fget if isinstance(existing, property) else None
            setattr(cls, name, _weight_property(name))
        if parent is not keras.layers.Layer:
            cls.__signature__ = _merged_signature(parent)
        call_params = inspect.signature(parent.call).parameters
        cls._parent_call_has_training = "training" in call_params
        if "build" in cls.__dict__:
            cls.build = _finishing_build(cls.__dict__["build"])

    def __init__(
        self,
        *args,
        schedule=None,
        pattern="unstructured",
        scorer="magnitude",
        global_pruning=False,
        kernel_quantizer=None,
        input_quantizer=None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self._pruning_callback_attached = False
        self._warned_missing_callback = False
        self._mask_sparsity_cache = {}
        self._reset_quantization()
        self.configure_pruning(schedule, pattern, scorer, global_pruning)
        self.configure_quantization(kernel_quantizer, input_quantizer)

    # ------------------------------------------------------------------ config
    def configure_pruning(self, schedule=None, pattern="unstructured",
                          scorer="magnitude", global_pruning=False):
        """Set (or replace) this layer's schedule, pattern and scorer.

        Everything is validated before anything is changed.
        """
        schedule = schedules_lib.get(schedule)
        pattern = patterns_lib.get(pattern)
        scorer = scorers_lib.get(scorer)
        if global_pruning and not pattern.supports_global:
            raise ValueError(
                "Global pruning only supports the unstructured pattern. "
                f"Received: pattern={pattern!r}"
            )
        if self.built:
            for name in self.sparse_weight_layouts:
                pattern.check_weight(
                    tuple(self.latent_weight(name).shape), self.weight_layout(name)
                )
        self.schedule = schedule
        self.pattern = pattern
        self.scorer = scorer
        self.global_pruning = bool(global_pruning)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "schedule": schedules_lib.serialize(self.schedule),
                "pattern": patterns_lib.serialize(self.pattern),
                "scorer": scorers_lib.serialize(self.scorer),
                "global_pruning": self.global_pruning,
                "kernel_quantizer": quantizers_lib.serialize(self.kernel_quantizer),
                "input_quantizer": quantizers_lib.serialize(self.input_quantizer),
            }
        )
        return config

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

    # ------------------------------------------------------------------- state
    def build(self, input_shape=None):
        super().build(input_shape)
        self._finish_sparse_build(input_shape)

    def _finish_sparse_build(self, input_shape=None):
        for name in self.sparse_weight_layouts:
            self.pattern.check_weight(
                tuple(self.latent_weight(name).shape), self.weight_layout(name)
            )
        self._add_masks()
        # A kernel drawn by SparseInitializer is sparse from its first value:
        # start the mask from its zeros so training keeps them at zero.
        for name in self.sparse_weight_layouts:
            if isinstance(self._initializer_of(name), SparseInitializer):
                latent = ops.convert_to_tensor(self.latent_weight(name))
                self.set_mask(name, ops.not_equal(latent, 0))
        self._build_quantizer_state(input_shape)

    def _initializer_of(self, name):
        for attr in (name + "_initializer", name.replace("_kernel", "") + "_initializer",
                     "depthwise_initializer"):
            if attr in self.__dict__:
                return self.__dict__[attr]
        return None

    @contextlib.contextmanager
    def _unlocked(self):
        # Dense.build() may lock the layer when LoRA is enabled, and a layer
        # converted in place is already locked; masks and quantizer state
        # belong to the layer, so unlock just to add them.
        tracker = getattr(self, "_tracker", None)
        was_locked = bool(tracker is not None and tracker.locked)
        if was_locked:
            tracker.unlock()
        try:
            yield
        finally:
            if was_locked:
                tracker.lock()

    def _add_state(self, suffix, **kwargs):
        """Add a ``<name><suffix>`` variable shaped like each masked weight."""
        with self._unlocked():
            for name in self.sparse_weight_layouts:
                if getattr(self, name + suffix, None) is not None:
                    continue
                latent = self.latent_weight(name)
                variable = self.add_weight(
                    name=name + suffix, shape=tuple(latent.shape), **kwargs
                )
                setattr(self, name + suffix, variable)

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

    def _add_masks(self):
        self._add_state(
            "_mask", initializer="ones", trainable=False, dtype="bool", autocast=False
        )
        object.__setattr__(self, "_fused_weights", {})

    def enable_gradient_probe(self):
        """Add a gradient probe to every masked weight (idempotent).

        The probe ``p`` is a zero trainable variable with
        ``overwrite_with_gradient=True`` entering the effective weight as
        ``mask * w + (p - stop_gradient(p))`` (computed as one custom-gradient
        identity): the forward pass is unchanged,
        and after each optimizer step ``p`` holds the dense gradient of the
        loss with respect to the effective weight, pruned entries included
        (what RigL regrowth and saliency scorers need). The optimizer keeps
        no slots for it. Call before ``compile``/``fit``, or remake the
        train function afterwards (``Pruning`` callbacks do this).
        """
        if not self.built:
            raise ValueError(
                f"Layer {self.name!r} must be built before adding a gradient probe."
            )
        self._add_state(
            "_probe",
            initializer="zeros",
            trainable=True,
            dtype=self.latent_weight(self.sparse_weight_names[0]).dtype,
            overwrite_with_gradient=True,
        )

    @property
    def has_gradient_probe(self):
        """Whether :meth:`enable_gradient_probe` was called."""
        return all(
            getattr(self, n + "_probe", None) is not None for n in self.sparse_weight_names
        )

    def last_gradient(self, name):
        """The dense gradient of weight ``name`` from the last training step
        (needs :meth:`enable_gradient_probe`)."""
        probe = getattr(self, name + "_probe", None)
        if probe is None:
            raise ValueError(
                f"Layer {self.name!r} has no gradient probe; call "
                "enable_gradient_probe() first."
            )
        return ops.convert_to_tensor(probe)

    def auxiliary_variables(self):
        """Masks, probes and quantizer variables: state the Keras parent
        layer does not have."""
        found = []
        for name in self.sparse_weight_names:
            for suffix in ("_mask", "_probe"):
                variable = getattr(self, name + suffix, None)
                if variable is not None:
                    found.append(variable)
        return found + self.quantizer_variables()

    # Keras' Dense/Conv save the *effective* kernel and check variable counts;
    # the generic Layer methods save every own variable: latent + mask.
    def _saved_variables(self):
        # Gradient probes are scratch space of a training run (they hold the
        # last step's gradient), not model state: a checkpoint written while
        # a probe exists must load into a layer without one, and vice versa.
        probes = {
            id(getattr(self, n + "_probe"))
            for n in self.sparse_weight_names
            if getattr(self, n + "_probe", None) is not None
        }
        return [
            v for v in self._trainable_variables + self._non_trainable_variables
            if id(v) not in probes
        ]

    def save_own_variables(self, store):
        for i, variable in enumerate(self._saved_variables()):
            store[f"{i}"] = variable

    def load_own_variables(self, store):
        variables = self._saved_variables()
        if len(store.keys()) != len(variables):
            raise ValueError(
                f"Layer '{self.name}' expected {len(variables)} variables, but "
                f"received {len(store.keys())} variables during loading. "
                f"Expected: {[v.name for v in variables]}"
            )
        for i, variable in enumerate(variables):
            variable.assign(store[f"{i}"])
        self._mask_sparsity_cache = {}

    # ---------------------------------------------------------------- weights
    @property
    def sparse_weight_names(self):
        """Names of the masked weights, e.g. ``("kernel",)``."""
        return tuple(self.sparse_weight_layouts)

    def weight_layout(self, name):
        """The :class:`Layout` of weight ``name``."""
        return self.sparse_weight_layouts[name]

    def latent_weight(self, name):
        """The trained float variable behind weight ``name``."""
        return getattr(self, "_" + name)

    def get_mask(self, name):
        """The boolean mask variable of weight ``name``."""
        return getattr(self, name + "_mask")

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
            # `where`, not a product: measured 2-3x cheaper here on TF/CPU.
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
        """``mask * transform_weight(raw)``: the part of the effective
        weight that :func:`backend.fuse` compiles."""
        value = ops.convert_to_tensor(self.transform_weight(name, raw))
        mask = getattr(self, name + "_mask", None)
        if mask is None or (
            self._masks_before_quantizer(name) and self.kernel_quantizer.keeps_zero
        ):
            return value
        if self.kernel_quantizer is not None:
            # Fused with the quantizer, a select is one pass less than a
            # cast and a product.
            return ops.where(ops.convert_to_tensor(mask), value, ops.zeros((), value.dtype))
        return ops.multiply(value, ops.cast(mask, value.dtype))

    def effective_weight(self, name):
        """``mask * transform_weight(latent)`` as a tensor."""
        getter = self._raw_getters.get(name)
        raw = getter(self) if getter is not None else self.latent_weight(name)
        quantizer = self.kernel_quantizer
        if (
            quantizer is not None
            and quantizer.fusable
            and backend.fusing()
            and math.prod(raw.shape) >= FUSE_MIN_SIZE
        ):
            # One compiled kernel for the quantizer and the mask (forward and
            # gradient) instead of one pass per op; the mask and quantizer
            # state are read inside, the latent weight is the argument.
            training = self._quantizer_training
            key = (name, training if training is None or isinstance(training, bool) else "tensor")
            fused = self._fused_weights.get(key)
            if fused is None:
                fused = backend.fuse(functools.partial(self._quantized_weight, name))
                self._fused_weights[key] = fused
            value = fused(backend.read(raw))
        else:
            value = self._quantized_weight(name, raw)
        probe = getattr(self, name + "_probe", None)
        if probe is not None:
            # Adds exactly zero to the forward pass; the optimizer overwrites
            # the probe with d(loss)/d(effective weight), the dense gradient.
            value = _gradient_tap(value, ops.cast(probe, value.dtype))
        return value

    def masked_latent(self, name):
        """``mask * latent`` (no transform): what magnitude scores are taken on."""
        latent = ops.convert_to_tensor(self.latent_weight(name))
        return ops.multiply(latent, ops.cast(self.get_mask(name), latent.dtype))

    def set_mask(self, name, mask):
        """Assign a boolean mask to weight ``name`` and zero the latent weight
        at removed positions (so stored weights, ``strip`` and reports agree)."""
        mask_var = self.get_mask(name)
        mask = ops.cast(ops.convert_to_tensor(mask), "bool")
        if tuple(mask.shape) != tuple(mask_var.shape):
            raise ValueError(
                f"Mask shape {tuple(mask.shape)} does not match weight "
                f"{name!r} of shape {tuple(mask_var.shape)}. Received: mask"
            )
        mask_var.assign(mask)
        latent = self.latent_weight(name)
        latent.assign(ops.multiply(latent, ops.cast(mask, latent.dtype)))
        self._mask_sparsity_cache[name] = mask_sparsity(mask)

    def reapply_masks(self):
        """Zero the latent weights at removed positions again (optimizer
        momentum moves them between mask updates; the forward pass is masked
        anyway, but stored weights should agree with the masks)."""
        for name in self.sparse_weight_names:
            latent = self.latent_weight(name)
            latent.assign(ops.multiply(latent, ops.cast(self.get_mask(name), latent.dtype)))

    def score_weight(self, name, gradient=None):
        """Importance of each entry of weight ``name`` under this layer's scorer."""
        return self.scorer.score(self.masked_latent(name), gradient)

    def compute_mask_for(self, name, sparsity, scores=None):
        """The mask this layer's pattern gives for ``sparsity``."""
        check_sparsity(sparsity)
        if scores is None:
            scores = self.score_weight(name)
        return self.pattern.mask(scores, sparsity, self.weight_layout(name))

    def prune_to(self, sparsity):
        """Recompute every mask at ``sparsity`` with this layer's scorer and
        pattern, and apply it."""
        for name in self.sparse_weight_names:
            self.set_mask(name, self.compute_mask_for(name, sparsity))

    def weight_sparsity(self, name):
        """Fraction of removed entries of weight ``name`` (Python float)."""
        if name not in self._mask_sparsity_cache:
            self._mask_sparsity_cache[name] = mask_sparsity(self.get_mask(name))
        return self._mask_sparsity_cache[name]

    @property
    def sparsity(self):
        """Fraction of removed entries over all masked weights of the layer."""
        total = removed = 0
        for name in self.sparse_weight_names:
            size = int(ops.size(self.get_mask(name)))
            total += size
            removed += self.weight_sparsity(name) * size
        return removed / total if total else 0.0

    def stripped_weights(self):
        """The weights of the plain Keras parent layer, in its order: the
        effective value for every masked weight, the variable's value for the
        rest (bias, ...)."""
        effective = {
            id(self.latent_weight(name)): name for name in self.sparse_weight_names
        }
        auxiliary = {id(v) for v in self.auxiliary_variables()}
        values = []
        for variable in self.weights:
            if id(variable) in auxiliary:
                continue
            if id(variable) in effective:
                value = self.effective_weight(effective[id(variable)])
                values.append(ops.convert_to_numpy(ops.cast(value, variable.dtype)))
            else:
                values.append(ops.convert_to_numpy(variable))
        return values

    def plain_config(self):
        """The config of the Keras parent layer (our arguments removed)."""
        config = self.get_config()
        for key in SPARSE_ARGUMENTS:
            config.pop(key, None)
        return config

    # -------------------------------------------------------------------- call
    def call(self, inputs, training=None, **kwargs):
        if (
            training
            and self.schedule is not None
            and not self._pruning_callback_attached
            and not self._warned_missing_callback
        ):
            self._warned_missing_callback = True
            warnings.warn(_MISSING_CALLBACK, stacklevel=2)
        if self._parent_call_has_training:
            kwargs["training"] = training
        if self.input_quantizer is not None:
            recorder = self.__dict__.get("_calibration_inputs")
            if recorder is not None:
                # ks.calibrate runs the model eagerly and reads the inputs.
                recorder.append(ops.convert_to_numpy(inputs))
            inputs = self.input_quantizer(
                inputs,
                state=self._quantizer_state.get("input") or None,
                output_axes=(),
                training=training,
            )
        if self.kernel_quantizer is None:
            return super().call(inputs, **kwargs)
        # The kernel property has no `training` argument; stochastic
        # quantizers read it from here during the parent's call.
        self._quantizer_training = training
        try:
            return super().call(inputs, **kwargs)
        finally:
            self._quantizer_training = None

    # ----------------------------------------------------------- conversion
    def _adopt(self, schedule=None, pattern="unstructured", scorer="magnitude",
               global_pruning=False):
        """Finish an in-place class swap of an existing Keras layer.

        Moves plain-attribute weights to their latent slot, refreshes the
        call signature Keras cached, and adds masks if the layer is built.
        The layer starts with no quantizer (see
        :meth:`configure_quantization`).
        """
        for name in self.sparse_weight_layouts:
            if name in self.__dict__:
                object.__setattr__(self, "_" + name, self.__dict__.pop(name))
        self._pruning_callback_attached = False
        self._warned_missing_callback = False
        self._mask_sparsity_cache = {}
        self._reset_quantization()
        refresh_call_signature(self)
        self.configure_pruning(schedule, pattern, scorer, global_pruning)
        if self.built:
            self._add_masks()
        elif "build" in self.__dict__:
            # Keras' Layer.__new__ stored a wrapper of the *old* class's bound
            # build on the instance; finish our build after it.
            keras_build = self.__dict__["build"]

            @functools.wraps(keras_build)
            def build(*args, **kwargs):
                keras_build(*args, **kwargs)
                self._finish_sparse_build(args[0] if args else kwargs.get("input_shape"))

            object.__setattr__(self, "build", build)


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
