"""The gate side of a sparse layer: its ``gate`` (learned sparsity, see
:mod:`keras_sparse.gates`), the state the gate owns (``log_alpha`` or
thresholds, Lagrange multipliers, a seed generator) and the loss it adds
during training."""

import keras
from keras import ops

from keras_sparse import gates as gates_lib
from keras_sparse.layers.quantization import seed_states

__all__ = ["GatingMixin"]


class GatingMixin:
    """Gate configuration and state of
    :class:`~keras_sparse.layers.SparseMixin` (which inherits it; not used
    on its own). The gate applies to the latent weight before the
    quantizer and the mask: ``mask * quantizer(gate(latent))``."""

    def configure_gate(self, gate=None):
        """Set (or replace, or with ``None`` remove) this layer's gate.

        Validated before anything changes. On a built layer the gate's
        variables are created now (and a replaced gate's removed); compile
        the model again before ``fit``.

        Raises:
            ValueError: for an unknown gate, or a gate on a layer without
                masked weights.
        """
        gate = gates_lib.get(gate)
        if gate is not None and not self.sparse_weight_layouts:
            raise ValueError(
                f"Layer {self.name!r} ({type(self).__name__}) has no weight to gate. "
                f"Received: gate={gate!r}"
            )
        if self.built and gate != self.gate:
            self._drop_gate_state()
            self.gate = gate
            self._build_gate_state()
        self.gate = gate

    def _reset_gating(self):
        self.gate = None
        self._set_gate_state({})

    def _set_gate_state(self, state):
        with self._unlocked():
            self._gate_state = state
        object.__setattr__(self, "_fused_weights", {})

    def _build_gate_state(self):
        if self.gate is None or self._gate_state:
            return
        state = {}
        with self._unlocked():
            for name in self.sparse_weight_names:
                state[name] = self.gate.build(
                    self, tuple(self.latent_weight(name).shape), f"{name}_gate",
                    tuple(self.weight_layout(name).output_axes),
                )
        self._set_gate_state(state)

    def _drop_gate_state(self):
        for variable in self.gate_variables() + self.gate_seed_states():
            self._untrack_variable(variable)
        self._set_gate_state({})

    def gate_variables(self):
        """The variables of this layer's gate (``log_alpha`` or thresholds,
        multipliers, warm-up step)."""
        return [
            value
            for state in self._gate_state.values()
            for value in state.values()
            if isinstance(value, keras.Variable)
        ]

    def gate_seed_states(self):
        """The state variables of the gate's seed generators (saved with the
        layer so random draws continue identically after a round trip)."""
        return seed_states(self._gate_state)

    def gate_state(self, name):
        """The state dict of the gate of weight ``name`` (empty without a
        gate)."""
        return self._gate_state.get(name, {})

    def transform_weight(self, name, value):
        if self.gate is not None and name in self._gate_state:
            value = self.gate(value, self._gate_state[name], training=self._quantizer_training)
        return super().transform_weight(name, value)

    def gate_penalty(self):
        """The loss the gates add at one training step (``None`` without a
        gate or with nothing to add); advances their warm-up step."""
        if self.gate is None:
            return None
        total = None
        for name in self.sparse_weight_names:
            state = self._gate_state.get(name)
            if not state:
                continue
            term = self.gate.penalty(self.latent_weight(name), state)
            if term is not None:
                total = term if total is None else total + term
        return total

    @property
    def sparsity(self):
        """Fraction of removed entries over all masked weights: with a gate,
        the entries its deterministic (inference) value or the mask sets to
        exactly 0 (what ``strip`` leaves as zeros); otherwise the masks'."""
        if self.gate is None or not self._gate_state:
            return super().sparsity
        total = removed = 0
        for name in self.sparse_weight_names:
            gated = self.gate(self.latent_weight(name), self._gate_state[name], training=False)
            kept = ops.not_equal(gated, 0)
            mask = self.get_mask(name)
            if mask is not None:
                kept = ops.logical_and(kept, ops.convert_to_tensor(mask))
            size = int(ops.size(kept))
            total += size
            removed += size - int(ops.convert_to_numpy(ops.sum(ops.cast(kept, "int32"))))
        return removed / total if total else 0.0

    def expected_sparsity(self):
        """The gate's differentiable estimate of the layer's sparsity (the
        quantity its Lagrangian holds at the target), as a Python float;
        ``None`` without a gate."""
        if self.gate is None or not self._gate_state:
            return None
        total = count = 0.0
        for name in self.sparse_weight_names:
            size = float(ops.size(self.latent_weight(name)))
            value = self.gate.expected_sparsity(self.latent_weight(name), self._gate_state[name])
            total += float(ops.convert_to_numpy(value)) * size
            count += size
        return total / count if count else 0.0

