"""Masks and gradient probes of a sparse layer: setting, scoring and
pruning the masks, their sparsity, the dense-gradient probe, and which of
these variables a checkpoint saves and ``strip`` drops."""

import math

import numpy as np
from keras import ops

from keras_sparse import backend
from keras_sparse.ops.drop_grow import variance_rescale
from keras_sparse.ops.masks import check_sparsity
from keras_sparse.ops.masks import mask_sparsity

__all__ = ["MaskingMixin"]


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


class _PendingSparsity:
    """The sparsity of a mask written by a compiled update: its kept count
    is a tensor read only when the sparsity is asked for."""

    __slots__ = ("kept", "size")

    def __init__(self, kept, size):
        self.kept = kept
        self.size = size

    def resolve(self):
        if not self.size:
            return 0.0
        return 1.0 - float(ops.convert_to_numpy(self.kept)) / self.size


def _select(mask, value):
    """``value`` where ``mask``, exactly 0 elsewhere: a select rather than a
    product, so a NaN or infinite stored weight at a pruned position gives 0
    (``NaN * 0`` is NaN)."""
    value = ops.convert_to_tensor(value)
    return ops.where(ops.convert_to_tensor(mask), value, ops.zeros((), value.dtype))


_SAME_SIZE_INT = {2: np.int16, 4: np.int32, 8: np.int64}


def _select_host(mask, weights):
    """``np.where(mask, weights, 0)`` for numpy arrays, as a bitwise AND of
    the float bits with an all-ones/all-zeros word (a select: a NaN or Inf
    at a pruned position gives +0.0). ``np.where`` branches per element and
    costs ten times as much on an irregular mask."""
    int_type = _SAME_SIZE_INT.get(weights.dtype.itemsize)
    if int_type is None or weights.dtype.kind != "f":
        return np.where(mask, weights, weights.dtype.type(0))
    words = np.negative(mask.view(np.int8), dtype=int_type)
    return np.bitwise_and(np.ascontiguousarray(weights).view(int_type), words).view(weights.dtype)


class MaskingMixin:
    """Masks, gradient probes and saved variables of
    :class:`~keras_sparse.layers.SparseMixin` (which inherits it; not used
    on its own)."""

    # ------------------------------------------------------------------- masks
    def _add_masks(self):
        self._add_state(
            "_mask", initializer="ones", trainable=False, dtype="bool", autocast=False
        )
        object.__setattr__(self, "_fused_weights", {})

    def masked_latent(self, name):
        """The latent weight where the mask keeps, exactly 0 elsewhere (no
        transform): what magnitude scores are taken on; the latent weight
        itself on a layer without masks."""
        mask = self.get_mask(name)
        if mask is None:
            return ops.convert_to_tensor(self.latent_weight(name))
        return _select(mask, self.latent_weight(name))

    def write_mask(self, name, mask, *, rescale=False, zero_grown=False):
        """The single writer of the masks of weight ``name``: assign
        ``mask`` (boolean, ``True`` = kept), zero the stored latent weight at
        removed positions (so stored weights, ``strip``, exports and reports
        agree with the mask) and keep the sparsity cache coherent.

        Args:
            name: the masked weight (``"kernel"``, ...).
            mask: a boolean tensor or array shaped like the weight.
            rescale: multiply each unit's surviving weights by
                ``sqrt(k_before / k_after)``, the ratio of its fan-in before
                and after (sparse initialization keeps the dense
                initializer's variance, see
                :func:`keras_sparse.ops.drop_grow.variance_rescale`).
            zero_grown: entries that become active start at 0 as well (what
                drop-and-grow methods want: a regrown weight starts from 0,
                not from where the optimizer's momentum left it).

        Returns:
            With ``zero_grown``, the numpy boolean array of entries active
            before and after (whose values, and optimizer slots, are kept);
            otherwise ``None``.
        """
        mask_var = self.get_mask(name)
        if mask_var is None:
            raise ValueError(
                f"Layer {self.name!r} has no masks (it is not pruned): give it "
                "masks first with `layer.configure_pruning(masked=True)` or "
                f"`ks.prune`. Received: name={name!r}"
            )
        if isinstance(mask, np.ndarray):
            mask = np.ascontiguousarray(mask, dtype=bool)
        else:
            mask = ops.cast(ops.convert_to_tensor(mask), "bool")
        if tuple(mask.shape) != tuple(mask_var.shape):
            raise ValueError(
                f"Mask shape {tuple(mask.shape)} does not match weight "
                f"{name!r} of shape {tuple(mask_var.shape)}. Received: mask"
            )
        latent = self.latent_weight(name)
        if isinstance(mask, np.ndarray) and not (rescale or zero_grown):
            # A mask computed on the host: one conversion, two assignments,
            # and the sparsity counted on the host (no device reduction).
            backend.write_mask_and_select(mask_var, latent, mask, _select_host)
            self._mask_sparsity_cache[name] = (
                1.0 - np.count_nonzero(mask) / mask.size if mask.size else 0.0)
            return None
        before = None
        if rescale or zero_grown:
            # A host copy: on TF a read of the variable can alias its buffer.
            before = np.array(ops.convert_to_numpy(mask_var), dtype=bool)
        kept = None
        if zero_grown:
            new = np.asarray(ops.convert_to_numpy(mask), dtype=bool)
            kept = before & new
            weights = np.asarray(ops.convert_to_numpy(latent))
            latent.assign(_select_host(kept, weights))
            mask_var.assign(new)
            self._mask_sparsity_cache[name] = mask_sparsity(new)
        else:
            self._assign_mask(name, mask)
            self._mask_sparsity_cache[name] = mask_sparsity(mask)
        if rescale:
            axes = self.weight_layout(name).output_axes or tuple(range(before.ndim))
            factor = variance_rescale(before, mask, axes)
            latent.assign(ops.multiply(latent, ops.cast(factor, latent.dtype)))
        return kept

    def _assign_mask(self, name, mask):
        """Assign boolean ``mask`` and zero the latent weight where it is
        ``False`` (eager or traced; the sparsity cache is the caller's)."""
        self.get_mask(name).assign(mask)
        latent = self.latent_weight(name)
        # Select, not multiply: a NaN or Inf at a pruned position becomes 0.
        # The variable is read first: recent JAX refuses a Keras variable
        # inside jnp.where ("Triggering __jax_array__() during
        # abstractification is no longer supported").
        value = ops.convert_to_tensor(latent)
        latent.assign(ops.where(mask, value, ops.zeros((), latent.dtype)))

    def write_masks_compiled(self, key, entries, rule, keep):
        """The compiled form of :meth:`write_mask` (no ``rescale``, no
        ``zero_grown``) for the masks of ``entries``, ``(layer, name)``
        pairs of this layer and, for a group sharing one threshold, of the
        others: ``rule(keep)`` (pure ``keras.ops``, reading the variables it
        needs) gives the new masks, and each layer assigns its own inside
        one compiled function (``backend.compile_update``), zeroing its
        latent weights as :meth:`write_mask` does.

        ``keep`` (an integer array, e.g. the number of entries to keep of
        each weight) is the function's argument, so the function is traced
        once per ``key`` and serves every sparsity of a schedule; this layer
        keeps it. The sparsity cache of each written mask is set from the
        kept count the function returns, read when the sparsity is next
        asked for (no host sync here).

        Returns:
            ``False`` if the backend has no compiled updates (nothing was
            written; use :meth:`write_mask`), else ``True``.
        """
        compiled = self.__dict__.get("_compiled_writes")
        if compiled is None:
            compiled = {}
            object.__setattr__(self, "_compiled_writes", compiled)
        function = compiled.get(key)
        if function is None:
            entries = tuple(entries)

            def update(keep):
                kept = []
                for (layer, name), mask in zip(entries, rule(keep)):
                    mask = ops.cast(mask, "bool")
                    layer._assign_mask(name, mask)
                    kept.append(ops.sum(ops.cast(mask, "int32")))
                return kept

            function = backend.compile_update(update)
            if function is None:
                return False
            compiled[key] = function
        kept = function(np.asarray(keep, dtype="int32"))
        for (layer, name), count in zip(entries, kept):
            size = math.prod(layer.get_mask(name).shape)
            layer._mask_sparsity_cache[name] = _PendingSparsity(count, size)
        return True

    def set_mask(self, name, mask):
        """Assign a boolean mask to weight ``name`` and zero the latent
        weight at removed positions (:meth:`write_mask` without options)."""
        self.write_mask(name, mask)

    def reapply_masks(self):
        """Zero the latent weights at removed positions again (optimizer
        momentum moves them between mask updates; the forward pass is masked
        anyway, but stored weights should agree with the masks)."""
        for name in self.sparse_weight_names:
            mask = self.get_mask(name)
            if mask is None:
                continue
            latent = self.latent_weight(name)
            latent.assign(_select(mask, latent))

    def score_weight(self, name, gradient=None):
        """Importance of each entry of weight ``name`` under this layer's
        scorer (not differentiable: scores rank entries for a mask update).
        Eagerly the masked weight is read once to the host and scored there
        when the scorer allows it (magnitude), which costs a fraction of a
        sequence of eager device ops; traced, it stays a tensor."""
        weight = self._host_masked_latent(name)
        if weight is None:
            weight = self.masked_latent(name)
        return self.scorer.score(weight, gradient)

    def _host_masked_latent(self, name):
        """:meth:`masked_latent` as a numpy array, or ``None`` when traced."""
        latent = self.latent_weight(name)
        if backend.is_traced(latent.value):
            return None
        weight = backend.host_read(latent)
        mask = self.get_mask(name)
        if mask is None:
            return weight
        return _select_host(np.ascontiguousarray(backend.host_read(mask), dtype=bool), weight)

    def compute_mask_for(self, name, sparsity, scores=None):
        """The mask this layer's pattern gives for ``sparsity``."""
        check_sparsity(sparsity)
        if scores is None:
            scores = self.score_weight(name)
        return self.pattern.mask(scores, sparsity, self.weight_layout(name))

    def prune_to(self, sparsity):
        """Recompute every mask at ``sparsity`` with this layer's scorer and
        pattern, and apply it (the layer must have masks: see
        :meth:`configure_pruning`)."""
        if not self.has_masks:
            raise ValueError(
                f"Layer {self.name!r} has no masks to prune: give it a schedule or "
                "masked=True (configure_pruning, ks.prune). "
                f"Received: sparsity={sparsity!r}"
            )
        for name in self.sparse_weight_names:
            self.set_mask(name, self.compute_mask_for(name, sparsity))

    def weight_sparsity(self, name):
        """Fraction of removed entries of weight ``name`` (Python float;
        0.0 without masks)."""
        value = self._mask_sparsity_cache.get(name)
        if value is None:
            mask = self.get_mask(name)
            value = 0.0 if mask is None else mask_sparsity(mask)
            self._mask_sparsity_cache[name] = value
        elif type(value) is _PendingSparsity:
            value = value.resolve()
            self._mask_sparsity_cache[name] = value
        return value

    @property
    def sparsity(self):
        """Fraction of removed entries over all masked weights of the layer
        (0.0 without masks)."""
        if not self.has_masks:
            return 0.0
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

    # ------------------------------------------------------------------ probes
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

    def disable_gradient_probe(self):
        """Remove the gradient probes (idempotent). Returns whether any
        existed. The model's optimizer must not have been built with them."""
        removed = False
        for name in self.sparse_weight_names:
            probe = getattr(self, name + "_probe", None)
            if probe is None:
                continue
            self._untrack_variable(probe)
            self.__dict__.pop(name + "_probe", None)
            removed = True
        return removed

    def wants_gradient_probe(self):
        """Whether this layer's pruning needs the dense gradient: its method
        (``ks.prune(..., method=...)``) or its scheduled scorer reads it."""
        method = getattr(self, "method", None)
        if method is not None:
            return bool(method.needs_gradient(self))
        return self.schedule is not None and self.scorer.needs_gradient

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
        return found + self.quantizer_variables() + self.gate_variables()

    # Keras' Dense/Conv save the *effective* kernel and check variable counts;
    # the generic Layer methods save every own variable: latent + mask.
    def _saved_variables(self):
        """The variables written by :meth:`save_own_variables`, in order:
        the layer's own weights (latent, masks, quantizer variables), then
        the states of quantizer seed generators (after the weights, so a
        file written before they were saved still lines up)."""
        # Gradient probes are scratch space of a training run (they hold the
        # last step's gradient), not model state: a checkpoint written while
        # a probe exists must load into a layer without one, and vice versa.
        probes = {
            id(getattr(self, n + "_probe"))
            for n in self.sparse_weight_names
            if getattr(self, n + "_probe", None) is not None
        }
        weights = [
            v for v in self._trainable_variables + self._non_trainable_variables
            if id(v) not in probes
        ]
        known = {id(v) for v in weights}
        return weights + [v for v in self._seed_states() if id(v) not in known]

    def _seed_states(self):
        """The states of the seed generators of the quantizers and gate."""
        return self.quantizer_seed_states() + self.gate_seed_states()

    def save_own_variables(self, store):
        for i, variable in enumerate(self._saved_variables()):
            store[f"{i}"] = variable

    def load_own_variables(self, store):
        variables = self._saved_variables()
        seeds = len(self._seed_states())
        # A file saved without the seed states: load the weights, keep the
        # fresh seeds.
        if seeds and len(store.keys()) == len(variables) - seeds:
            variables = variables[: len(variables) - seeds]
        if len(store.keys()) != len(variables):
            raise ValueError(
                f"Layer '{self.name}' expected {len(variables)} variables, but "
                f"received {len(store.keys())} variables during loading. "
                f"Expected: {[v.name for v in variables]}"
            )
        for i, variable in enumerate(variables):
            variable.assign(store[f"{i}"])
        self._mask_sparsity_cache = {}
