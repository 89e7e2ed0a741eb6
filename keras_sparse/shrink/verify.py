"""Output check of :func:`keras_sparse.shrink`: the input and the shrunk
model run on the same random inputs.
"""

import keras
import numpy as np
from keras import tree

#: Relative tolerance of the final output check (float32 arithmetic in a
#: different order, bias folding).
VERIFY_TOLERANCE = 1e-4


def _random_inputs(model, rng):
    values = []
    for kt in tree.flatten(model.inputs):
        shape = tuple(2 if i == 0 else (d if d is not None else 5) for i, d in enumerate(kt.shape))
        if "int" in str(kt.dtype) or "bool" in str(kt.dtype):
            values.append(np.zeros(shape, dtype=kt.dtype))
        else:
            values.append(rng.standard_normal(shape).astype(kt.dtype))
    return values


def _as_list(outputs):
    return [np.asarray(keras.ops.convert_to_numpy(o), dtype="float64") for o in tree.flatten(outputs)]


def _call(model, values):
    inputs = values[0] if len(values) == 1 else values
    struct = getattr(model, "_inputs_struct", None)
    if struct is not None and not isinstance(model, keras.Sequential):
        inputs = tree.pack_sequence_as(struct, values)
    return _as_list(model(inputs, training=False))


def _verify(model, new_model, info, selections=None):
    rng = np.random.default_rng(0)
    values = _random_inputs(model, rng)
    reference = _call(model, values)
    if selections is not None:
        values = [v[..., s] if s is not None else v for v, s in zip(values, selections)]
    found = _call(new_model, values)
    worst = 0.0
    for ref, new in zip(reference, found):
        if ref.shape != new.shape:
            raise RuntimeError(
                f"shrink produced outputs of shape {new.shape} instead of {ref.shape} "
                "(internal error; the input model is unchanged)."
            )
        diff = float(np.max(np.abs(ref - new))) if ref.size else 0.0
        scale = max(1.0, float(np.max(np.abs(ref))) if ref.size else 1.0)
        if not diff <= VERIFY_TOLERANCE * scale:
            raise RuntimeError(
                f"shrink produced a model whose outputs differ from the input model's by "
                f"{diff:.3g} on random inputs; it is not returned (please report this)."
            )
        worst = max(worst, diff)
    info.max_abs_diff = worst
