"""The sparse-layer mechanism shared by every layer of the family.

A sparse layer is a Keras layer subclass whose weight property (``kernel``,
``embeddings``, ...) returns the *effective* weight::

    effective = mask * transform(latent)

where ``latent`` is the float variable the optimizer trains and saves,
``transform`` is the layer's ``kernel_quantizer`` (identity when ``None``),
and ``mask`` is a compact non-trainable boolean variable, present only on
a layer that is pruned (see :class:`SparseMixin`'s ``masked``). An
``input_quantizer`` quantizes the layer input before the parent's ``call``. The Keras parent's own
``call`` reads the property, so the forward pass is the parent's, unchanged,
on every backend and under XLA.

Masks and gradient probes are handled in :mod:`.masking`, quantizers and
their state in :mod:`.quantization`; :class:`SparseMixin` inherits both.
"""

import contextlib
import functools
import inspect
import math
import warnings

import keras
from keras import ops

from keras_sparse import backend
from keras_sparse import gates as gates_lib
from keras_sparse import methods as methods_lib
from keras_sparse import patterns as patterns_lib
from keras_sparse import quantizers as quantizers_lib
from keras_sparse.initializers import SparseInitializer
from keras_sparse import schedules as schedules_lib
from keras_sparse import scorers as scorers_lib
from keras_sparse.checks import check_bool
from keras_sparse.layers.gating import GatingMixin
from keras_sparse.layers.cost import weights_cost_row
from keras_sparse.layers.masking import MaskingMixin
from keras_sparse.layers.masking import _gradient_tap
from keras_sparse.layers.quantization import QuantizationMixin

__all__ = [
    "SparseMixin",
    "Layout",
    "check_pattern_fits",
    "config_weight_shapes",
    "is_sparse_layer",
    "pattern_problems",
]

Layout = patterns_lib.Layout

#: Smallest weight (entries) whose quantizer and mask are fused into one
#: compiled kernel on TensorFlow: a fused call has a fixed launch cost that a
#: small kernel does not win back (``benchmarks/quant_overhead.py``, the
#: "op by op" rows).
FUSE_MIN_SIZE = 4096

#: Keyword arguments the mixin adds to every layer of the family.
SPARSE_ARGUMENTS = (
    "schedule",
    "pattern",
    "scorer",
    "global_pruning",
    "method",
    "kernel_quantizer",
    "input_quantizer",
    "masked",
    "gate",
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


def _conv_kernel_size(layer):
    return tuple(int(k) for k in layer.kernel_size)


def _dense_shapes(layer):
    return {"kernel": (None, int(layer.units))}


def _conv_shapes(layer):
    return {"kernel": _conv_kernel_size(layer) + (None, int(layer.filters))}


def _transpose_shapes(layer):
    return {"kernel": _conv_kernel_size(layer) + (int(layer.filters), None)}


def _depthwise_shapes(layer):
    return {"kernel": _conv_kernel_size(layer) + (None, int(layer.depth_multiplier))}


def _separable_shapes(layer):
    size = _conv_kernel_size(layer)
    return {
        "depthwise_kernel": size + (None, int(layer.depth_multiplier)),
        "pointwise_kernel": (1,) * len(size) + (None, int(layer.filters)),
    }


def _embedding_shapes(layer):
    return {"embeddings": (int(layer.input_dim), int(layer.output_dim))}


_CONFIG_SHAPES = {
    keras.layers.Dense: _dense_shapes,
    keras.layers.Conv1D: _conv_shapes,
    keras.layers.Conv2D: _conv_shapes,
    keras.layers.Conv3D: _conv_shapes,
    keras.layers.Conv1DTranspose: _transpose_shapes,
    keras.layers.Conv2DTranspose: _transpose_shapes,
    keras.layers.Conv3DTranspose: _transpose_shapes,
    keras.layers.DepthwiseConv1D: _depthwise_shapes,
    keras.layers.DepthwiseConv2D: _depthwise_shapes,
    keras.layers.SeparableConv1D: _separable_shapes,
    keras.layers.SeparableConv2D: _separable_shapes,
    keras.layers.Embedding: _embedding_shapes,
}


def config_weight_shapes(layer):
    """The shapes of ``layer``'s masked weights as far as its arguments
    tell before it is built: a dict ``name -> shape`` with ``None`` for a
    dimension that depends on the input (the input channels of a Dense or
    convolution kernel). Empty for a layer whose shapes the arguments do
    not give (``EinsumDense``, a user's own layer).

    ``layer`` is a Keras layer with a counterpart in the sparse family, or a
    sparse layer.
    """
    parent = layer._keras_parent if isinstance(layer, SparseMixin) else type(layer)
    shapes = next((_CONFIG_SHAPES[k] for k in parent.__mro__ if k in _CONFIG_SHAPES), None)
    if shapes is None:
        return {}
    try:
        return shapes(layer)
    except (AttributeError, TypeError, ValueError):
        return {}


def _shape_text(shape):
    return "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def pattern_problems(pattern, layer, layouts):
    """Why ``pattern`` cannot apply to the masked weights of ``layer``: a
    list of ``"layer 'name': its kernel of shape (...) ..."`` sentences,
    empty when it fits.

    Args:
        pattern: a :class:`keras_sparse.patterns.Pattern`.
        layer: a built layer (shapes of its variables) or an unbuilt one
            (shapes from :func:`config_weight_shapes`; a dimension that is
            not known yet passes and is checked when the layer is built).
        layouts: dict ``weight name -> Layout``.
    """
    if layer.built:
        if isinstance(layer, SparseMixin):
            shapes = {name: tuple(layer.latent_weight(name).shape) for name in layouts}
        else:
            shapes = {name: tuple(getattr(layer, name).shape) for name in layouts}
    else:
        shapes = config_weight_shapes(layer)
    problems = []
    for name, layout in layouts.items():
        shape = shapes.get(name)
        if shape is None:
            continue
        try:
            pattern.check_weight(shape, layout)
        except ValueError as error:
            reason = str(error).split(" Received: ")[0].rstrip(". ")
            problems.append(
                f"layer {layer.name!r}: its {name} of shape {_shape_text(shape)} does not "
                f"fit ({reason})"
            )
        except TypeError:
            # A pattern that cannot read unknown dimensions: checked at build.
            if None not in shape:
                raise
    return problems


def check_pattern_fits(pattern, layers_and_layouts):
    """Raise one ``ValueError`` naming every layer ``pattern`` cannot apply
    to (see :func:`pattern_problems`); ``layers_and_layouts`` is a list of
    ``(layer, {weight name: Layout})``."""
    problems = []
    for layer, layouts in layers_and_layouts:
        problems.extend(pattern_problems(pattern, layer, layouts))
    if problems:
        raise ValueError(
            f"The pattern cannot apply to {'; '.join(problems)}. Received: pattern={pattern!r}"
        )


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
        inspect.Parameter("method", inspect.Parameter.KEYWORD_ONLY, default=None),
        inspect.Parameter("kernel_quantizer", inspect.Parameter.KEYWORD_ONLY, default=None),
        inspect.Parameter("input_quantizer", inspect.Parameter.KEYWORD_ONLY, default=None),
        inspect.Parameter("masked", inspect.Parameter.KEYWORD_ONLY, default=None),
        inspect.Parameter("gate", inspect.Parameter.KEYWORD_ONLY, default=None),
    ]
    return inspect.Signature(params + ours + var_kw)


def _finishing_build(build):
    """Wrap a subclass's own ``build`` so masks are added even when it does
    not call ``super().build()`` (the usual Keras 3 custom-layer style)."""
    if getattr(build, "_keras_sparse_build", False):
        return build

    @functools.wraps(build)
    def wrapper(self, *args, **kwargs):
        with self._undone_if_failed():
            build(self, *args, **kwargs)
            self._finish_sparse_build(args[0] if args else kwargs.get("input_shape"))

    wrapper._keras_sparse_build = True
    return wrapper


class SparseMixin(GatingMixin, MaskingMixin, QuantizationMixin):
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
        masked: whether the layer carries masks (a ``<name>_mask`` variable
            per masked weight). ``None`` (default): masked iff it is pruned,
            i.e. it has a ``schedule`` or a weight drawn by a
            :class:`~keras_sparse.initializers.SparseInitializer`. A layer
            that is only quantized has no mask: its effective weight is
            ``kernel_quantizer(latent)``, with no pass over a mask. Pass
            ``True`` for masks that stay fixed with no schedule (what
            ``ks.prune_at_init`` leaves); it is saved in the config, so such
            a layer reloads with its masks. A config written before this
            argument existed loads as masked (every layer had masks then).
        gate: a :mod:`keras_sparse.gates` gate or alias (``"l0"``,
            ``"str"``): learned sparsity, trained by ``fit`` itself; the
            effective weight is ``mask * kernel_quantizer(gate(latent))``.

    Masks are stored as 1-byte bools and are not counted as parameters:
    ``layer.count_params()`` (and so the per-layer rows of
    ``model.summary()``) leaves out masks and gradient probes. Keras'
    model-level totals (``model.count_params()``, the "Total params" line of
    ``model.summary()``) sum ``model.weights``, which does include them (a
    mask is a non-trainable weight there, like a BatchNormalization moving
    mean); ``ks.report`` shows parameters without them and the masks' bytes
    separately.

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
        method=None,
        kernel_quantizer=None,
        input_quantizer=None,
        masked=None,
        gate=None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self._pruning_callback_attached = False
        self._warned_missing_callback = False
        self._mask_sparsity_cache = {}
        self._masked = False
        self._reset_quantization()
        self._reset_gating()
        self.configure_pruning(schedule, pattern, scorer, global_pruning, method=method,
                               masked=masked)
        self.configure_quantization(kernel_quantizer, input_quantizer)
        self.configure_gate(gate)

    # ------------------------------------------------------------------ config
    def configure_pruning(self, schedule=None, pattern="unstructured",
                          scorer="magnitude", global_pruning=False, method=None,
                          masked=None):
        """Set (or replace) this layer's schedule, pattern, scorer and
        sparsity method.

        Everything is validated before anything is changed. A layer becomes
        masked when it gets a schedule or a method (or ``masked=True``) and
        stays masked afterwards (``schedule=None`` then freezes its masks);
        on a built layer the masks are created now, all ``True``, and a
        gradient probe is added when the method or the scheduled scorer
        reads the dense gradient (removed when nothing does). A model holding
        the layer must then be compiled again, and on torch re-register its
        variables (:func:`keras_sparse.backend.track_variables`; ``ks.prune``
        does both).

        Args:
            masked: ``None`` keeps the masks the layer has and adds them if
                it is pruned (see :class:`SparseMixin`); ``True`` adds masks
                without a schedule; ``False`` asks for no mask.

        Raises:
            ValueError: for an invalid argument, ``masked=False`` with a
                schedule, or ``masked=False`` on a layer that has masks
                (``ks.strip`` removes them).
        """
        schedule = schedules_lib.get(schedule)
        pattern = patterns_lib.get(pattern)
        scorer = scorers_lib.get(scorer)
        method = None if method is None else methods_lib.get(method)
        global_pruning = check_bool(global_pruning, "global_pruning")
        if global_pruning and not pattern.supports_global:
            raise ValueError(
                "Global pruning only supports the unstructured pattern. "
                f"Received: pattern={pattern!r}"
            )
        if masked is not None and not isinstance(masked, bool):
            raise ValueError(f"`masked` must be a bool or None. Received: masked={masked!r}")
        if masked is False and (schedule is not None or method is not None):
            raise ValueError(
                "A pruning schedule or method needs masks. "
                f"Received: masked=False, schedule={schedule!r}, method={method!r}"
            )
        if masked is False and self.has_masks:
            raise ValueError(
                f"Layer {self.name!r} already has masks; ks.strip removes them. "
                "Received: masked=False"
            )
        check_pattern_fits(pattern, [(self, self._weight_layouts())])
        if masked is None:
            masked = (self._masked or schedule is not None or method is not None
                      or self._sparse_initialized())
        self.schedule = schedule
        self.pattern = pattern
        self.scorer = scorer
        self.global_pruning = bool(global_pruning)
        self.method = method
        self._masked = masked
        if self.built and getattr(self, "_masks_ready", False):
            if masked:
                self._add_masks()
            self._sync_gradient_probe()

    def _sync_gradient_probe(self):
        if self.wants_gradient_probe():
            if not self.has_gradient_probe:
                self.enable_gradient_probe()
        else:
            self.disable_gradient_probe()

    def _sparse_initialized(self):
        """Whether a masked weight is drawn by a SparseInitializer (the
        layer is then pruned from its first value)."""
        return any(
            isinstance(self._initializer_of(name), SparseInitializer)
            for name in self.sparse_weight_layouts
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "schedule": schedules_lib.serialize(self.schedule),
                "pattern": patterns_lib.serialize(self.pattern),
                "scorer": scorers_lib.serialize(self.scorer),
                "global_pruning": self.global_pruning,
                "method": None if self.method is None else keras.saving.serialize_keras_object(
                    self.method
                ),
                "kernel_quantizer": quantizers_lib.serialize(self.kernel_quantizer),
                "input_quantizer": quantizers_lib.serialize(self.input_quantizer),
                "masked": self._masked,
                "gate": gates_lib.serialize(self.gate),
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        if "schedule" in config and "masked" not in config:
            # Written before `masked` existed, when every layer had masks:
            # its saved variables include them.
            config = {**config, "masked": True}
        return super().from_config(config)

    # ------------------------------------------------------------------- state
    def build(self, input_shape=None):
        with self._undone_if_failed():
            super().build(input_shape)
            self._finish_sparse_build(input_shape)

    def _weight_layouts(self):
        return {name: self.weight_layout(name) for name in self.sparse_weight_layouts}

    @contextlib.contextmanager
    def _undone_if_failed(self):
        """Leave the layer unbuilt, as before, if the build inside fails
        (a pattern that does not fit the weight shapes the input gave):
        the variables it created are untracked and the built flag, the
        input spec and the state lock restored, so a later build (with
        another pattern or input) starts clean."""
        before = {id(v) for v in self._trainable_variables + self._non_trainable_variables}
        input_spec = self.input_spec
        tracked_parameters = backend.tracks_parameters(self)
        try:
            yield
        except Exception:
            if not tracked_parameters:
                backend.forget_parameters(self)
            created = [
                v for v in self._trainable_variables + self._non_trainable_variables
                if id(v) not in before
            ]
            for variable in created:
                self._untrack_variable(variable)
            self.built = False
            self._masks_ready = False
            tracker = getattr(self, "_tracker", None)
            if tracker is not None and tracker.locked:
                tracker.unlock()
            self.input_spec = input_spec
            raise

    def _finish_sparse_build(self, input_shape=None):
        check_pattern_fits(self.pattern, [(self, self._weight_layouts())])
        if self._masked:
            self._add_masks()
            # A kernel drawn by SparseInitializer is sparse from its first
            # value: start the mask from its zeros so training keeps them at
            # zero.
            for name in self.sparse_weight_layouts:
                if isinstance(self._initializer_of(name), SparseInitializer):
                    latent = ops.convert_to_tensor(self.latent_weight(name))
                    self.set_mask(name, ops.not_equal(latent, 0))
        self._build_quantizer_state(input_shape)
        self._build_gate_state()
        self._masks_ready = True
        if self.wants_gradient_probe():
            self.enable_gradient_probe()

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
        """The boolean mask variable of weight ``name``, or ``None`` when the
        layer has no masks (it is not pruned, see :attr:`has_masks`): every
        entry is then kept.

        Raises:
            ValueError: if the layer has no masked weight ``name``.
        """
        if name not in self.sparse_weight_layouts:
            raise ValueError(
                f"Layer {self.name!r} has no masked weight {name!r}; its masked weights "
                f"are {list(self.sparse_weight_layouts)}. Received: name={name!r}"
            )
        return getattr(self, name + "_mask", None)

    @property
    def is_masked(self):
        """Whether the layer is pruned and so carries masks (once built):
        it has a schedule or a method, was given ``masked=True`` or has a
        sparse initializer. A layer that is only quantized is not."""
        return bool(self._masked) or self.has_masks

    @property
    def has_masks(self):
        """Whether the mask variables exist (the layer is built and pruned;
        a layer that is only quantized has none)."""
        names = self.sparse_weight_names
        return bool(names) and all(
            getattr(self, name + "_mask", None) is not None for name in names
        )

    def count_params(self):
        """Parameters of the layer: its weights without masks and gradient
        probes (masks are 1-byte bools, probes scratch space of training;
        neither is a parameter of the model)."""
        if not self.built:
            return super().count_params()
        skip = {
            id(getattr(self, name + suffix))
            for name in self.sparse_weight_names
            for suffix in ("_mask", "_probe")
            if getattr(self, name + suffix, None) is not None
        }
        return int(sum(math.prod(v.shape) for v in self.weights if id(v) not in skip))

    def effective_weight(self, name):
        """``mask * transform_weight(latent)`` as a tensor."""
        getter = self._raw_getters.get(name)
        raw = getter(self) if getter is not None else self.latent_weight(name)
        quantizer = self.kernel_quantizer
        if (
            quantizer is not None
            and quantizer.fusable
            and self.gate is None
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

    def report_row(self):
        """This layer's row in :func:`keras_sparse.report`: its weights at
        their effective values, the index its pattern needs for the pruned
        ones, the packed size at its quantizer's precision and the FLOPs of
        the kept weights (see
        :func:`keras_sparse.layers.cost.weights_cost_row`)."""
        return weights_cost_row(self, masked=True)

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
        if training and self.gate is not None:
            penalty = self.gate_penalty()
            if penalty is not None:
                self.add_loss(penalty)
        if self.kernel_quantizer is None and self.gate is None:
            return super().call(inputs, **kwargs)
        # The kernel property has no `training` argument; stochastic
        # quantizers and gates read it from here during the parent's call.
        self._quantizer_training = training
        try:
            return super().call(inputs, **kwargs)
        finally:
            self._quantizer_training = None

    # ----------------------------------------------------------- conversion
    def _adopt(self, schedule=None, pattern="unstructured", scorer="magnitude",
               global_pruning=False, masked=None):
        """Finish an in-place class swap of an existing Keras layer.

        Moves plain-attribute weights to their latent slot, refreshes the
        call signature Keras cached, and, if the layer is built and pruned
        (see ``masked``), adds masks. The layer starts with no quantizer
        (see :meth:`configure_quantization`).
        """
        for name in self.sparse_weight_layouts:
            if name in self.__dict__:
                object.__setattr__(self, "_" + name, self.__dict__.pop(name))
        self._pruning_callback_attached = False
        self._warned_missing_callback = False
        self._mask_sparsity_cache = {}
        self._masked = False
        self._reset_quantization()
        self._reset_gating()
        refresh_call_signature(self)
        self.configure_pruning(schedule, pattern, scorer, global_pruning, masked=masked)
        if self.built:
            if self._masked:
                self._add_masks()
            self._masks_ready = True
        elif "build" in self.__dict__:
            # Keras' Layer.__new__ stored a wrapper of the *old* class's bound
            # build on the instance; finish our build after it.
            keras_build = self.__dict__["build"]

            @functools.wraps(keras_build)
            def build(*args, **kwargs):
                with self._undone_if_failed():
                    keras_build(*args, **kwargs)
                    self._finish_sparse_build(args[0] if args else kwargs.get("input_shape"))

            object.__setattr__(self, "build", build)
