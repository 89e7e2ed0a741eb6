"""Floor 4: ``ks.export`` writes a model with packed weights, and
``ks.load_exported`` reads it back as a plain Keras model.

The file is a zip archive holding the config of the stripped model
(:func:`keras_sparse.strip`: plain Keras layers, no keras_sparse object) and
each weight in its smallest exact encoding:

* ``affine``: integer codes packed at 1, 2, 4 or 8 bits and per-channel (or
  per-tensor) ``offset`` and ``scale``; the value is
  ``(code + offset) * scale``. Quantized weights use it: binary layers cost 1
  bit per weight (plus one scale per output unit for ``±alpha``), k-bit
  layers ``k`` rounded up to 1/2/4/8 bits.
* ``bitmap``: a 1-bit-per-entry map of the non-zero entries, and the codes or
  float values of those entries only (pruned layers).
* ``raw``: the array as is (biases, normalization, float weights).

Every encoding is decoded and compared with the stripped weight before it is
chosen, so a reload is exact: the loaded model has the stripped model's
config and weight values, and gives the same outputs (a pruned entry stored
as ``-0.0`` may come back as ``0.0``).

A Sequential or functional model is stored with its config and reloads on
its own. A subclassed model's config needs its own class, so only its
weights are stored (one entry per layer, in the model's layer order) and
``load_exported(path, model=...)`` writes them into a built instance of the
plain model (the class before ``ks.prune``/``ks.quantize`` converted it).
"""

import io
import json
import math
import zipfile

import keras
import numpy as np
from keras import ops

from keras_sparse import quantizers as q
from keras_sparse.convert import strip
from keras_sparse.layers.base import SparseMixin
from keras_sparse.ops.packing import pack_bits
from keras_sparse.ops.packing import unpack_bits
from keras_sparse.ops.quantize import affine_grid
from keras_sparse.ops.quantize import lsq_levels
from keras_sparse.ops.quantize import reduce_axes
from keras_sparse.selection import is_graph_model
from keras_sparse.selection import leaf_layers

__all__ = ["export", "load_exported"]

FORMAT = "keras_sparse.packed"
VERSION = 1
_BINARY = (q.SteSign, q.ApproxSign, q.SwishSign, q.StochasticBinary)


# ---------------------------------------------------------------- encoders
def _f32(x):
    return np.asarray(x, np.float32)


def _keep_axes(shape, output_axes):
    reduce = reduce_axes(len(shape), output_axes)
    return tuple(a for a in range(len(shape)) if a not in reduce), reduce


def _channel_max(x, axes):
    return np.max(np.abs(x), axis=axes, keepdims=True) if axes else np.abs(x)


def _affine_candidate(quantizer, value, latent, state, output_axes):
    """``(codes, offset, scale, width)`` such that ``(codes + offset) *
    scale`` is ``quantizer``'s output, computed as its forward pass does;
    ``None`` when the quantizer has no such form here."""
    value = _f32(value)
    if isinstance(quantizer, _BINARY):
        return (value > 0).astype(np.uint8), _f32(-0.5), _f32(2.0), 1
    if isinstance(quantizer, q.SteHeaviside):
        return (value > 0).astype(np.uint8), _f32(0.0), _f32(1.0), 1
    if isinstance(quantizer, q.MagnitudeAwareSign):
        _, axes = _keep_axes(value.shape, output_axes)
        alpha = _channel_max(value, axes)
        return (value > 0).astype(np.uint8), _f32(-0.5), _f32(2.0 * alpha), 1
    if isinstance(quantizer, q.SteTern):
        alpha = _f32(np.abs(value).max() or 1.0)
        codes = np.round(value / alpha) + 1
        return codes.astype(np.uint8), _f32(-1.0), alpha, 2
    if isinstance(quantizer, q.DoReFa):
        steps = float(2**quantizer.bits - 1)
        if quantizer.mode == "activations":
            codes = np.round(value * _f32(steps))
            return codes.astype(np.uint8), _f32(0.0), _f32(1.0 / steps), quantizer.bits
        codes = np.round((value + 1) * _f32(steps / 2))
        return codes.astype(np.uint8), _f32(-steps / 2), _f32(2.0 / steps), quantizer.bits
    if isinstance(quantizer, q.LSQ) and state:
        q_n, _ = lsq_levels(quantizer.bits, quantizer.signed)
        step = _f32(ops.convert_to_numpy(state["step"]))
        codes = np.round(value / step) + q_n
        return codes.astype(np.int64), _f32(-q_n), step, quantizer.bits
    if isinstance(quantizer, q.Uniform):
        if quantizer.per_channel:
            axes = _keep_axes(value.shape, output_axes)[1]
        else:
            axes = tuple(range(value.ndim))
        latent = _f32(latent)
        if quantizer.symmetric:
            levels = _f32(2 ** (quantizer.bits - 1) - 1)
            top = _channel_max(latent, axes) if quantizer.clip_value is None else _f32(
                quantizer.clip_value)
            scales = _scale_candidates(top, levels)
            scale, offset = _fit_scale(value, scales, lambda scale: -levels, axes)
        else:
            steps = _f32(2**quantizer.bits - 1)
            if quantizer.clip_value is None:
                low = np.minimum(np.min(latent, axis=axes, keepdims=True), _f32(0.0))
                high = np.maximum(np.max(latent, axis=axes, keepdims=True), _f32(0.0))
                # The forward pass's grid, from the range of its output (the
                # quantizer is idempotent, so this range gives the same grid).
                grid, zero_point = (
                    _f32(ops.convert_to_numpy(t)) for t in affine_grid(
                        np.minimum(np.min(value, axis=axes, keepdims=True), _f32(0.0)),
                        np.maximum(np.max(value, axis=axes, keepdims=True), _f32(0.0)),
                        quantizer.bits,
                    )
                )
                scales = [grid] + _scale_candidates(_f32(high - low), steps)

                def offset_fn(scale):
                    return np.where(scale == grid, -zero_point,
                                    -np.round(-low / scale)).astype(np.float32)
            else:
                scales = _scale_candidates(_f32(quantizer.clip_value), steps)

                def offset_fn(scale):
                    return _f32(0.0)
            scale, offset = _fit_scale(value, scales, offset_fn, axes)
        codes = np.round(value / scale) - offset
        return codes.astype(np.int64), offset, scale, quantizer.bits
    return None


def _scale_candidates(top, divisor):
    """Ways a backend may have rounded ``top / divisor`` (XLA may multiply by
    the reciprocal), the exact quotient first; zero scales become 1."""
    exact = _f32(top / divisor)
    candidates = [exact, _f32(top * _f32(1.0 / divisor)),
                  np.nextafter(exact, _f32(np.inf)), np.nextafter(exact, _f32(-np.inf))]
    return [np.where(c > 0, c, _f32(1.0)).astype(np.float32) for c in candidates]


def _fit_scale(value, scales, offset_fn, axes):
    """Per channel, the first candidate scale whose affine decode reproduces
    ``value`` exactly (the first candidate where none does)."""
    chosen = scales[0]
    found = np.zeros(np.shape(chosen), bool)
    for scale in scales:
        offset = offset_fn(scale)
        decoded = _decode_affine(np.round(value / scale) - offset, offset, scale)
        same = decoded == value
        exact = np.all(same, axis=axes, keepdims=True) if axes else same
        exact = np.broadcast_to(exact, found.shape) if found.shape else np.all(exact)
        chosen = np.where(~found & exact, scale, chosen).astype(np.float32)
        found = found | exact
    return chosen, offset_fn(chosen)


def _decode_affine(codes, offset, scale):
    return ((codes.astype(np.float32) + offset) * scale).astype(np.float32)


def _pack(codes, width, arrays, key):
    arrays[key] = pack_bits(codes, width)
    return arrays[key].nbytes


def _encode(value, sparse_info, arrays, key):
    """Choose the smallest exact encoding of ``value``; fill ``arrays`` and
    return the metadata dict."""
    value = np.asarray(value)
    options = []

    def add(meta, payload):
        options.append((sum(a.nbytes for a in payload.values()), meta, payload))

    add({"encoding": "raw"}, {key + ".raw": value})
    nonzero = value != 0
    kept = int(nonzero.sum())
    if kept < value.size:
        add({"encoding": "bitmap"},
            {key + ".bitmap": pack_bits(nonzero, 1), key + ".values": value[nonzero]})
    if sparse_info is not None and value.dtype == np.float32:
        quantizer, latent, state, output_axes, mask = sparse_info
        found = _affine_candidate(quantizer, value, latent, state, output_axes)
        if found is not None:
            codes, offset, scale, bits = found
            width = next(w for w in (1, 2, 4, 8) if bits <= w)
            offset, scale = _f32(offset), _f32(scale)
            valid = codes.min() >= 0 and codes.max() < 2**width
            if valid and np.array_equal(_decode_affine(codes, offset, scale), value):
                add({"encoding": "affine", "width": width},
                    {key + ".codes": pack_bits(codes, width), key + ".offset": offset,
                     key + ".scale": scale})
            if valid and kept < value.size:
                decoded = np.zeros_like(value)
                decoded[nonzero] = _decode_affine(codes, offset, scale)[nonzero]
                if np.array_equal(decoded, value):
                    add({"encoding": "bitmap_affine", "width": width},
                        {key + ".bitmap": pack_bits(nonzero, 1),
                         key + ".codes": pack_bits(codes[nonzero], width),
                         key + ".offset": offset, key + ".scale": scale})
    size, meta, payload = min(options, key=lambda option: option[0])
    arrays.update(payload)
    meta.update(shape=list(value.shape), dtype=str(value.dtype), bytes=size)
    return meta


def _decode(meta, arrays, key):
    shape = tuple(meta["shape"])
    count = int(math.prod(shape))
    encoding = meta["encoding"]
    if encoding == "raw":
        return arrays[key + ".raw"]
    value = np.zeros(count, dtype=meta["dtype"])
    if encoding == "bitmap":
        nonzero = unpack_bits(arrays[key + ".bitmap"], 1, count).astype(bool)
        value[nonzero] = arrays[key + ".values"]
        return value.reshape(shape)
    offset, scale = arrays[key + ".offset"], arrays[key + ".scale"]
    if encoding == "affine":
        codes = unpack_bits(arrays[key + ".codes"], meta["width"], count).reshape(shape)
        return _decode_affine(codes, offset, scale)
    if encoding == "bitmap_affine":
        nonzero = unpack_bits(arrays[key + ".bitmap"], 1, count).astype(bool).reshape(shape)
        codes = np.zeros(shape, np.uint8)
        codes[nonzero] = unpack_bits(arrays[key + ".codes"], meta["width"], int(nonzero.sum()))
        decoded = _decode_affine(codes, offset, scale)
        return np.where(nonzero, decoded, np.zeros_like(decoded))
    raise ValueError(f"Unknown weight encoding {encoding!r} in the exported file.")


# -------------------------------------------------------------- public API
def _sparse_infos(layer):
    """For a sparse layer: one entry per weight of its Keras parent, with
    what the encoder needs for the quantized ones."""
    auxiliary = {id(v) for v in layer.auxiliary_variables()}
    latents = {id(layer.latent_weight(n)): n for n in layer.sparse_weight_names}
    infos = []
    for variable in layer.weights:
        if id(variable) in auxiliary:
            continue
        name = latents.get(id(variable))
        if name is None or layer.kernel_quantizer is None:
            infos.append(None)
            continue
        latent = ops.convert_to_numpy(layer.masked_latent(name))
        mask = layer.get_mask(name)  # None on a layer that is only quantized
        infos.append((
            layer.kernel_quantizer,
            latent,
            layer.quantizer_state(name),
            tuple(layer.weight_layout(name).output_axes),
            None if mask is None else ops.convert_to_numpy(mask),
        ))
    return infos


def export(model, path):
    """Write ``model`` with packed weights to ``path`` (a zip archive).

    The model is stripped to plain Keras layers (quantized weights become
    their quantized values, pruned ones exact zeros) and each weight is
    stored in its smallest exact encoding (see the module docstring).

    Args:
        model: a built Keras model (sparse, quantized or plain). The model
            itself is not changed.
        path: the file to write (any extension; ``.kspk`` is a good one).

    Returns:
        A dict with ``"bytes"`` (the file size) and ``"weights"`` (per
        weight: layer, encoding, payload bytes).

    Raises:
        ValueError: for an unbuilt model.

    Example:
    >>> info = ks.export(model, "model.kspk")
    >>> plain = ks.load_exported("model.kspk")   # a plain Keras model
    >>> # A subclassed model: its weights, into a fresh plain instance.
    >>> ks.load_exported("model.kspk", model=MyModel().build_for(x))
    """
    if not model.built:
        raise ValueError("Build the model before exporting it. Received: an unbuilt model")
    arrays, layers_meta, summary = {}, [], []
    for index, layer in enumerate(leaf_layers(model)):
        variables = layer.weights
        if isinstance(layer, SparseMixin):
            values, infos = layer.stripped_weights(), _sparse_infos(layer)
            auxiliary = {id(v) for v in layer.auxiliary_variables()}
            variables = [v for v in variables if id(v) not in auxiliary]
        else:
            values, infos = layer.get_weights(), None
        weights = []
        for j, value in enumerate(values):
            key = f"{index}.{j}"
            info = infos[j] if infos is not None else None
            meta = _encode(np.asarray(value), info, arrays, key)
            weights.append(meta)
            summary.append({"layer": layer.name, "weight": variables[j].name,
                            "encoding": meta["encoding"], "bytes": meta["bytes"]})
        layers_meta.append({"name": layer.name, "weights": weights})
    header = {
        "format": FORMAT,
        "version": VERSION,
        "keras_version": keras.__version__,
        # Only graph models have a config that rebuilds without their class.
        "model": json.loads(strip(model).to_json()) if is_graph_model(model) else None,
        "model_class": f"{type(model).__module__}.{type(model).__qualname__}",
        "layers": layers_meta,
    }
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("model.json", json.dumps(header))
        archive.writestr("weights.npz", buffer.getvalue())
    with open(path, "rb") as handle:
        size = len(handle.read())
    return {"bytes": size, "weights": summary}


def load_exported(path, model=None):
    """Read a file written by :func:`export` as a plain Keras model.

    Only Keras and numpy are needed to rebuild it: the model config holds
    plain Keras layers.

    Args:
        path: the file.
        model: ``None`` to rebuild the model from the stored config
            (Sequential and functional models), or a built model to write
            the weights into: needed for a subclassed model, whose file
            holds weights only. Its layers must match the exported ones in
            order, count and weight shapes.

    Returns:
        The plain Keras model (``model`` itself when given).

    Raises:
        ValueError: for a file that is not an export, a subclassed model's
            file without ``model``, or a ``model`` whose layers do not
            match (nothing is written then).

    Example:
    >>> plain = ks.load_exported("model.kspk")
    >>> plain.predict(x)
    """
    with zipfile.ZipFile(path) as archive:
        header = json.loads(archive.read("model.json"))
        if header.get("format") != FORMAT:
            raise ValueError(f"{path!r} is not a keras_sparse packed export.")
        weights = np.load(io.BytesIO(archive.read("weights.npz")))
        arrays = {key: weights[key] for key in weights.files}
    if model is None:
        if header["model"] is None:
            raise ValueError(
                f"{path!r} holds the weights of a subclassed model "
                f"({header.get('model_class')}): pass a built instance of its plain "
                "Keras version as `model`. Received: model=None"
            )
        model = keras.models.model_from_json(json.dumps(header["model"]))
    elif not model.built:
        raise ValueError("`model` must be built before loading weights into it. "
                         "Received: an unbuilt model")
    layers = leaf_layers(model)
    if len(layers) != len(header["layers"]):
        raise ValueError(
            f"{path!r} holds {len(header['layers'])} layers; the model has {len(layers)}. "
            f"Received: model={type(model).__name__}")
    decoded = []
    for index, (layer, meta) in enumerate(zip(layers, header["layers"])):
        values = [_decode(w, arrays, f"{index}.{j}") for j, w in enumerate(meta["weights"])]
        shapes = [tuple(v.shape) for v in layer.weights]
        if shapes != [tuple(v.shape) for v in values]:
            raise ValueError(
                f"Layer {layer.name!r} has weights of shapes {shapes}; the file holds "
                f"{[tuple(v.shape) for v in values]} for {meta['name']!r}. "
                f"Received: model={type(model).__name__}")
        decoded.append((layer, values))
    for layer, values in decoded:
        if values:
            layer.set_weights(values)
    return model
