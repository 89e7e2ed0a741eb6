"""The layer contract: checks every layer of the sparse family must pass.

Keras' own ``run_layer_test`` lives in the private ``keras.src.testing``;
this is a small public equivalent, extended with what a sparse layer adds
(masks, latent weights, saving both). Run it on your own layers that subclass
:class:`keras_sparse.layers.SparseMixin`.
"""

import json
import os
import tempfile

import keras
import numpy as np
from keras import ops

__all__ = ["run_layer_test"]


def run_layer_test(
    layer_cls,
    init_kwargs,
    input_shape=None,
    input_data=None,
    expected_output_shape=None,
    expected_num_trainable_weights=None,
    expected_num_non_trainable_weights=None,
    run_training_check=True,
    run_mixed_precision_check=True,
    sparsity=0.5,
):
    """Run the layer contract on ``layer_cls``; raise ``AssertionError`` on
    the first failed check.

    Checks, in order:

    1. ``build`` creates the expected weights; every masked weight has a
       ``bool`` mask of the latent weight's shape (1 byte per weight). The
       layer is made with ``masked=True`` unless ``init_kwargs`` gives
       ``masked``; made with ``masked=False`` (when it has no schedule) it
       has no mask, ``has_masks`` is false and ``count_params()`` is the
       same (masks are not parameters).
    2. An eager call and a symbolic call (``keras.Input``) give the expected
       output shape.
    3. ``get_config``/``from_config`` and a JSON round trip
       (``serialize_keras_object`` -> ``json.dumps`` -> deserialize) give the
       same config.
    4. After ``prune_to(sparsity)`` the effective and latent weights are zero
       wherever the mask is ``False``, and a ``.keras`` round trip inside a
       one-layer model restores latent weights, masks and outputs
       bit-identically.
    5. One ``model.fit`` step changes the trainable weights and keeps pruned
       latent weights at zero (with ``ks.callbacks.Pruning()`` if the layer
       has a schedule).
    6. The forward pass runs under the ``"mixed_float16"`` policy: outputs in
       the compute dtype, float variables in float32, masks still ``bool``.

    Custom layers must be registered with
    ``keras.saving.register_keras_serializable`` for checks 3 and 4.

    Args:
        layer_cls: the layer class.
        init_kwargs: dict of constructor arguments.
        input_shape: full input shape including the batch size, e.g.
            ``(2, 8)``; float32 normal data is generated. Give this or
            ``input_data``.
        input_data: an input array (use it for integer inputs).
        expected_output_shape: expected output shape (``None`` entries
            match anything).
        expected_num_trainable_weights: expected ``len(trainable_weights)``.
        expected_num_non_trainable_weights: expected
            ``len(non_trainable_weights)`` (masks included).
        run_training_check: run check 5.
        run_mixed_precision_check: run check 6.
        sparsity: sparsity the masks are pruned to before saving.

    Example:
    >>> from keras_sparse import testing
    >>> testing.run_layer_test(
    ...     ks.layers.SparseDense,
    ...     {"units": 4},
    ...     input_shape=(2, 8),
    ...     expected_output_shape=(2, 4),
    ...     expected_num_trainable_weights=2,
    ...     expected_num_non_trainable_weights=1,
    ... )
    """
    from keras_sparse.callbacks import Pruning
    from keras_sparse.layers import SparseMixin

    if (input_shape is None) == (input_data is None):
        raise ValueError(
            "Pass exactly one of `input_shape` and `input_data`. "
            f"Received: input_shape={input_shape}, input_data={input_data!r}"
        )
    if input_data is None:
        rng = np.random.default_rng(0)
        input_data = rng.standard_normal(tuple(input_shape)).astype("float32")
    x = ops.convert_to_numpy(input_data)
    input_dtype = str(x.dtype)

    def new_layer(**extra):
        kwargs = {**init_kwargs, **extra}
        if isinstance(layer_cls, type) and issubclass(layer_cls, SparseMixin):
            kwargs.setdefault("masked", True)
        layer = layer_cls(**kwargs)
        _check(isinstance(layer, SparseMixin), f"{layer_cls.__name__} does not subclass SparseMixin")
        return layer

    def new_model(layer):
        inputs = keras.Input(shape=x.shape[1:], dtype=input_dtype)
        return keras.Model(inputs, layer(inputs))

    def check_weights(layer):
        _check(layer.built, f"{layer.name} is not built")
        for expected, found, kind in (
            (expected_num_trainable_weights, layer.trainable_weights, "trainable"),
            (expected_num_non_trainable_weights, layer.non_trainable_weights, "non-trainable"),
        ):
            _check(
                expected is None or len(found) == expected,
                f"Expected {expected} {kind} weights, found {len(found)}: "
                f"{[w.path for w in found]}",
            )
        non_trainable = {id(w) for w in layer.non_trainable_weights}
        for name in layer.sparse_weight_names:
            mask = getattr(layer, name + "_mask", None)
            _check(
                mask is not None,
                f"Weight {name!r} has no mask (does the layer's build() call super().build()?)",
            )
            _check(mask.dtype == "bool", f"Mask of {name!r} has dtype {mask.dtype}, not bool")
            _check(id(mask) in non_trainable, f"Mask of {name!r} is trainable")
            _check(
                tuple(mask.shape) == tuple(layer.latent_weight(name).shape),
                f"Mask of {name!r} has shape {tuple(mask.shape)}, latent weight "
                f"{tuple(layer.latent_weight(name).shape)}",
            )
        _check(layer.has_masks or not layer.sparse_weight_names,
               f"{layer.name}.has_masks is False though its masks exist")

    def check_shape(output):
        if expected_output_shape is None:
            return
        shape = tuple(output.shape)
        _check(
            len(shape) == len(expected_output_shape)
            and all(e is None or e == s for e, s in zip(expected_output_shape, shape)),
            f"Expected output shape {tuple(expected_output_shape)}, received {shape}",
        )

    # 1. Build, with masks and (unless a schedule needs them) without.
    layer = new_layer()
    layer.build(x.shape)
    check_weights(layer)
    if init_kwargs.get("schedule") is None and "masked" not in init_kwargs:
        plain = new_layer(masked=False)
        plain.build(x.shape)
        _check(not plain.has_masks, f"{plain.name} built with masked=False has masks")
        for name in plain.sparse_weight_names:
            _check(
                getattr(plain, name + "_mask", None) is None and plain.get_mask(name) is None,
                f"Weight {name!r} has a mask though the layer was made with masked=False",
            )
        _check(
            plain.count_params() == layer.count_params(),
            f"count_params() is {layer.count_params()} with masks and "
            f"{plain.count_params()} without (masks are not parameters)",
        )
        _check(
            layer_cls.from_config(plain.get_config()).get_config().get("masked") is False,
            "get_config/from_config lost masked=False",
        )

    # 2. Symbolic and eager calls.
    layer = new_layer()
    check_shape(layer(keras.Input(batch_shape=x.shape, dtype=input_dtype)))
    check_weights(layer)
    layer = new_layer()
    check_shape(layer(x))
    check_weights(layer)

    # 3. Config round trips.
    config = layer.get_config()
    revived = layer_cls.from_config(config)
    _check_same_config(config, revived.get_config(), "get_config/from_config")
    text = json.dumps(keras.saving.serialize_keras_object(layer))
    revived = keras.saving.deserialize_keras_object(json.loads(text))
    _check(type(revived) is layer_cls, f"JSON round trip gave {type(revived).__name__}")
    _check_same_config(config, revived.get_config(), "JSON round trip")
    for arg in ("schedule", "pattern", "scorer", "global_pruning"):
        _check(
            getattr(revived, arg) == getattr(layer, arg),
            f"Config round trip changed {arg}: {getattr(revived, arg)!r} != "
            f"{getattr(layer, arg)!r}",
        )

    # 4. Pruned masks and a `.keras` round trip.
    layer = new_layer()
    model = new_model(layer)
    layer.prune_to(sparsity)
    removed = 0
    for name in layer.sparse_weight_names:
        keep = ops.convert_to_numpy(layer.get_mask(name))
        removed += int(keep.size - keep.sum())
        for kind, value in (
            ("effective", layer.effective_weight(name)),
            ("latent", layer.latent_weight(name)),
        ):
            _check(
                not np.any(ops.convert_to_numpy(value)[~keep]),
                f"The {kind} weight {name!r} is non-zero at pruned positions",
            )
    _check(sparsity == 0 or removed > 0, f"prune_to({sparsity}) removed no weight")
    expected = ops.convert_to_numpy(model(x))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.keras")
        model.save(path)
        loaded = keras.saving.load_model(path)
    _check(
        [w.path for w in loaded.weights] == [w.path for w in model.weights],
        f"Reloaded weights {[w.path for w in loaded.weights]} differ from "
        f"{[w.path for w in model.weights]}",
    )
    for before, after in zip(model.weights, loaded.weights):
        _check_identical(before, after, f"Reloaded weight {before.path!r}")
    _check_identical(expected, loaded(x), "Reloaded output")

    # 5. One training step.
    if run_training_check:
        layer = new_layer()
        model = new_model(layer)
        layer.prune_to(sparsity)
        target = np.random.default_rng(1).standard_normal(expected.shape)
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
        before = [ops.convert_to_numpy(w) for w in layer.trainable_weights]
        callbacks = [Pruning()] if layer.schedule is not None else []
        model.fit(x, target.astype(expected.dtype), batch_size=len(x), epochs=1,
                  verbose=0, callbacks=callbacks)
        after = [ops.convert_to_numpy(w) for w in layer.trainable_weights]
        _check(
            any(not np.array_equal(b, a) for b, a in zip(before, after)),
            "A training step changed no trainable weight",
        )
        for name in layer.sparse_weight_names:
            keep = ops.convert_to_numpy(layer.get_mask(name))
            _check(
                not np.any(ops.convert_to_numpy(layer.latent_weight(name))[~keep]),
                f"Training moved the latent weight {name!r} at pruned positions",
            )

    # 6. Mixed precision forward pass.
    if run_mixed_precision_check:
        layer = new_layer(dtype="mixed_float16")
        layer(x)  # builds
        layer.prune_to(sparsity)
        output = layer(x)
        symbolic = layer(keras.Input(batch_shape=x.shape, dtype=input_dtype))
        dtype = keras.backend.standardize_dtype(output.dtype)
        hint = ""
        if keras.backend.backend() == "torch":
            hint = (
                " (on torch, Keras infers the symbolic output of a layer without "
                "`compute_output_shape` from a float32 trace: define it)"
            )
        _check(
            dtype == symbolic.dtype,
            f"Mixed precision output dtype {dtype}, symbolic call {symbolic.dtype}{hint}",
        )
        _check(dtype == "float16", f"Mixed precision output dtype {dtype}, expected float16")
        _check(np.all(np.isfinite(ops.convert_to_numpy(output))), "Non-finite mixed precision output")
        for weight in layer.weights:
            dtype = keras.backend.standardize_dtype(weight.dtype)
            _check(
                dtype in ("float32", "bool") or not keras.backend.is_float_dtype(dtype),
                f"Weight {weight.path!r} has dtype {dtype} under mixed precision",
            )
        check_weights(layer)


def _check(condition, message):
    if not condition:
        raise AssertionError(message)


def _check_same_config(expected, found, what):
    expected = json.dumps(expected, sort_keys=True, default=repr)
    found = json.dumps(found, sort_keys=True, default=repr)
    _check(expected == found, f"{what} changed the config:\n{expected}\n!=\n{found}")


def _check_identical(expected, found, what):
    expected = ops.convert_to_numpy(expected)
    found = ops.convert_to_numpy(found)
    _check(
        expected.dtype == found.dtype and expected.shape == found.shape,
        f"{what}: {found.dtype}{found.shape} != {expected.dtype}{expected.shape}",
    )
    _check(
        expected.tobytes() == found.tobytes(),
        f"{what} is not bit-identical (max abs diff "
        f"{np.max(np.abs(expected.astype('float64') - found.astype('float64')))})",
    )
