"""Quantization math: binary, ternary and k-bit quantizers with their
straight-through gradients.

Every function is pure math on tensors written with ``keras.ops``; it works
on TensorFlow, JAX and torch, under XLA. Gradients are set in one of two
ways:

* :func:`gated_straight_through` (``keras.ops.custom_gradient``) for the
  quantizers of one tensor whose gradient is the upstream gradient times an
  elementwise factor: forward ``value(x)``, backward
  ``upstream * slope(x)`` where ``gate(x)``, else 0. ``ste_sign`` is
  ``sign(x)`` forward and ``upstream * 1{|x| <= clip}`` backward. These run
  on every training step of a quantized layer, so the graph is kept small:
  TensorFlow on CPU runs without XLA by default, and there each extra
  elementwise op over a kernel costs time (``benchmarks/quant_overhead.py``).
* The identity::

      straight_through(value, surrogate) = stop_gradient(value)
                                           + (surrogate - stop_gradient(surrogate))

  whose forward value is exactly ``value`` (``s - s`` is exactly 0 for
  finite ``s``) and whose gradient is the gradient of ``surrogate``, for the
  quantizers with learned parameters (``lsq`` step, ``pact`` clip) or
  randomness, whose gradients reach more than one input.

Conventions shared by all functions:

* ``sign(0) = +1``: a binary weight is never 0.
* NaN propagates: every quantizer outputs NaN where its input is NaN (a
  diverged network keeps a NaN loss, so ``keras.callbacks.TerminateOnNaN``
  stops it), as Larq's ``sign(NaN) = NaN``. The binary and ternary
  quantizers treat infinities as numbers (``sign(-inf) = -1``). Finite
  outputs and the gradients are the same as without this rule.
* The output has the input's dtype. ``float16``/``bfloat16`` inputs are
  computed in ``float32`` and cast back, so scales and rounding do not
  depend on the half-precision format.
* Scales computed from the tensor itself (``alpha = mean|x|``, the range of
  a dynamic ``uniform``) are constants for the gradient (stop-gradient);
  learned scales (``lsq`` step, ``pact`` clip) receive their gradient.
* Mean magnitudes (the XNOR ``alpha``, the TWN threshold) are taken over the
  non-zero entries, so pruned weights (exact zeros) do not shrink them; on
  a dense float tensor this is the plain mean.
* Rounding is ``keras.ops.round``: half to even, as ``numpy.round``.
* Quantizing twice changes nothing: ``q(q(x)) == q(x)`` bit for bit for
  finite float32 ``x`` (statistics of ``q(x)`` such as its range or mean
  magnitude give back the grid of ``x``; learned scales are held fixed).
  The one exception is ``dorefa`` on weights with 4 or more bits, whose
  ``tanh`` moves the levels of an already quantized tensor.
* Every quantizer with integer levels has a ``*_codes`` function giving
  its :class:`AffineCodes` (the codes, offset and scale a packed export
  stores), computed with the same helpers as its forward pass, so that
  ``(codes + offset) * scale`` is the forward output bit for bit (eager or
  compiled on the same backend).
* ``output_axes`` names the axes that index output units (``(-1,)`` for a
  Dense kernel); per-channel statistics reduce over every other axis, and
  ``()`` means per-tensor.
"""


from keras_sparse.ops.quantize.base import AffineCodes
from keras_sparse.ops.quantize.base import check_bits  # noqa: F401
from keras_sparse.ops.quantize.base import gated_straight_through
from keras_sparse.ops.quantize.base import reduce_axes
from keras_sparse.ops.quantize.base import straight_through
from keras_sparse.ops.quantize.binary import approx_sign
from keras_sparse.ops.quantize.binary import magnitude_aware_sign
from keras_sparse.ops.quantize.binary import sign
from keras_sparse.ops.quantize.binary import magnitude_aware_sign_codes
from keras_sparse.ops.quantize.binary import sign_codes
from keras_sparse.ops.quantize.binary import ste_heaviside
from keras_sparse.ops.quantize.binary import ste_heaviside_codes
from keras_sparse.ops.quantize.binary import ste_sign
from keras_sparse.ops.quantize.binary import ste_tern
from keras_sparse.ops.quantize.binary import ste_tern_codes
from keras_sparse.ops.quantize.binary import stochastic_binary
from keras_sparse.ops.quantize.binary import swish_sign
from keras_sparse.ops.quantize.kbit import affine_grid
from keras_sparse.ops.quantize.kbit import dorefa
from keras_sparse.ops.quantize.kbit import dorefa_codes
from keras_sparse.ops.quantize.kbit import lsq
from keras_sparse.ops.quantize.kbit import lsq_initial_step
from keras_sparse.ops.quantize.kbit import lsq_codes
from keras_sparse.ops.quantize.kbit import lsq_levels
from keras_sparse.ops.quantize.kbit import pact
from keras_sparse.ops.quantize.kbit import pact_codes
from keras_sparse.ops.quantize.kbit import uniform
from keras_sparse.ops.quantize.kbit import uniform_codes

__all__ = [
    "straight_through",
    "gated_straight_through",
    "sign",
    "ste_sign",
    "approx_sign",
    "swish_sign",
    "magnitude_aware_sign",
    "stochastic_binary",
    "ste_tern",
    "uniform",
    "affine_grid",
    "dorefa",
    "lsq",
    "lsq_levels",
    "lsq_initial_step",
    "ste_heaviside",
    "pact",
    "reduce_axes",
    "AffineCodes",
    "sign_codes",
    "magnitude_aware_sign_codes",
    "ste_heaviside_codes",
    "ste_tern_codes",
    "uniform_codes",
    "dorefa_codes",
    "lsq_codes",
    "pact_codes",
]

