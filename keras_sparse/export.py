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
  The codes, offset and scale come from the quantizer itself
  (:meth:`keras_sparse.quantizers.Quantizer.export_codes`, the arithmetic of
  its forward pass); a quantizer without them (``identity``) is stored as
  floats.
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

Files are safe to write and to read. ``export`` writes a temporary file next
to the target and renames it over the target only once it is complete and
synced, so a failed or killed write never leaves a half-written file in
place of a good one. ``load_exported`` checks the archive, the header schema,
the dtypes (an allow-list, never ``object``), the shapes and the byte length
each array declares against the bytes it holds before allocating it; it
never unpickles or executes anything from the file, and reports every
problem as a ``ValueError`` naming the file.
"""

import contextlib
import io
import json
import math
import os
import secrets
import stat
import struct
import zipfile
import zlib

import keras
import numpy as np
from keras import ops

from keras_sparse.checks import check_model
from keras_sparse.checks import check_path
from keras_sparse.checks import describe
from keras_sparse.convert import strip
from keras_sparse.layers.base import SparseMixin
from keras_sparse.ops.packing import pack_bits
from keras_sparse.ops.packing import unpack_bits
from keras_sparse.selection import is_cloneable_model
from keras_sparse.selection import leaf_layers

__all__ = ["export", "load_exported"]

FORMAT = "keras_sparse.packed"
VERSION = 1


# ---------------------------------------------------------------- encoders
def _f32(x):
    return np.asarray(x, np.float32)


def _affine_codes(quantizer, latent, state, output_axes):
    """``(codes, offset, scale, width)`` as numpy, from the quantizer's own
    :meth:`~keras_sparse.quantizers.Quantizer.export_codes` (the arithmetic
    of its forward pass), with ``width`` the packed bits per code; ``None``
    when the quantizer has no integer form (its output is stored as floats)
    or its codes are not finite (a NaN weight)."""
    found = quantizer.export_codes(latent, state or None, output_axes)
    if found is None:
        return None
    codes = np.asarray(ops.convert_to_numpy(found.codes))
    if not np.all(np.isfinite(codes)):
        return None
    width = next((w for w in (1, 2, 4, 8) if found.bits <= w), None)
    if width is None:
        return None
    offset, scale = (_f32(ops.convert_to_numpy(t)) for t in (found.offset, found.scale))
    return codes.astype(np.int64), offset, scale, width


def _decode_affine(codes, offset, scale):
    return ((codes.astype(np.float32) + offset) * scale).astype(np.float32)


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
        found = _affine_codes(*sparse_info)
        if found is not None:
            codes, offset, scale, width = found
            # The codes are checked, never trusted: an encoding is offered
            # only when it decodes to the stored value exactly.
            valid = codes.size and codes.min() >= 0 and codes.max() < 2**width
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
        latent = layer.masked_latent(name)
        if layer.gate is not None:
            # The quantizer sees the gated weight (gates keep zeros at zero).
            latent = layer.gate(latent, layer.gate_state(name), training=False)
        infos.append((
            layer.kernel_quantizer,
            latent,
            layer.quantizer_state(name),
            tuple(layer.weight_layout(name).output_axes),
        ))
    return infos


# ------------------------------------------------------------------ writing
def _write_archive(handle, header, arrays):
    """Write the zip archive of ``header`` and ``arrays`` to ``handle``."""
    buffer = io.BytesIO()
    np.savez(buffer, allow_pickle=False, **arrays)
    with zipfile.ZipFile(handle, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("model.json", json.dumps(header))
        archive.writestr("weights.npz", buffer.getvalue())


def _sync_folder(folder):
    """Flush ``folder``'s entries to disk (POSIX), so a rename survives a
    power loss; a no-op where folders cannot be opened."""
    if os.name != "posix":
        return
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def _write_atomically(path, write):
    """Call ``write(handle)`` on a new file in ``path``'s folder and move it
    onto ``path`` once it is complete and on disk.

    Until the final ``os.replace``, ``path`` is untouched: a write that
    raises (a full disk) or a process killed mid-write leaves the previous
    file as it was. On an exception the temporary file is removed. A
    ``path`` that exists but is not a regular file (``os.devnull``, a pipe)
    is written in place.

    Returns:
        The size of the written file in bytes.
    """
    target = os.path.realpath(os.fspath(path))  # replace a symlink's target, keep the link
    if os.path.exists(target) and not os.path.isfile(target):
        with open(target, "wb") as handle:
            write(handle)
            handle.flush()
            return os.fstat(handle.fileno()).st_size
    folder, base = os.path.split(target)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for attempt in range(100):
        temporary = os.path.join(folder, f".{base}.{secrets.token_hex(4)}.tmp")
        try:
            descriptor = os.open(temporary, flags, 0o666)  # the umask applies, as for open()
            break
        except FileExistsError:
            if attempt == 99:
                raise
    try:
        try:
            handle = open(descriptor, "wb")
        except BaseException:
            os.close(descriptor)
            raise
        with handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
            size = os.fstat(handle.fileno()).st_size
        try:  # an existing file keeps its permissions
            os.chmod(temporary, stat.S_IMODE(os.stat(target).st_mode))
        except OSError:
            pass
        os.replace(temporary, target)
    except BaseException:
        try:
            os.remove(temporary)
        except OSError:
            pass
        raise
    _sync_folder(folder)
    return size


# ------------------------------------------------------------------ reading
#: Weight dtypes an export may hold; :func:`load_exported` rejects others.
DTYPES = ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
          "float16", "float32", "float64")
#: The arrays stored for a weight, per encoding, in the order they are read.
_PARTS = {
    "raw": ("raw",),
    "bitmap": ("bitmap", "values"),
    "affine": ("codes", "offset", "scale"),
    "bitmap_affine": ("bitmap", "codes", "offset", "scale"),
}
_MEMBERS = ("model.json", "weights.npz")
_MAX_RANK = 16
_MAX_HEADER_BYTES = 64 * 2**20
#: Bound on an array's bytes besides its data: the npy header (numpy reads
#: at most 10,000 bytes of it) and its zip records.
_ENTRY_OVERHEAD = 2**14
#: What a damaged archive makes zipfile, zlib, json and numpy's npy reader
#: raise.
_DAMAGE = (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError, KeyError,
           IndexError, OverflowError, struct.error, zlib.error, NotImplementedError,
           RuntimeError, RecursionError)


class _Invalid(Exception):
    """What is wrong with a file; :func:`_read` turns it into a
    ``ValueError`` naming the file."""


@contextlib.contextmanager
def _damaged(what):
    """Report any error of :data:`_DAMAGE` raised inside as ``what``."""
    try:
        yield
    except _DAMAGE as error:
        raise _Invalid(f"{what} ({type(error).__name__}: {error})") from error


def _size(count):
    """``count`` bytes for a message: ``"40 GB"``, ``"1,024 bytes"``."""
    for unit, scale in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if count >= scale:
            return f"{count / scale:.3g} {unit}"
    return f"{count:,} bytes"


def _type_name(types):
    names = {bool: "a boolean", int: "an integer", str: "a string", list: "a list",
             dict: "an object", type(None): "null"}
    types = types if isinstance(types, tuple) else (types,)
    return " or ".join(names[t] for t in types)


def _require(mapping, where, fields):
    """Check that ``mapping`` is a dict holding each of ``fields`` (name ->
    type or tuple of types; ``bool`` is not an ``int`` here)."""
    if not isinstance(mapping, dict):
        raise _Invalid(f"{where} must be a JSON object, not {type(mapping).__name__}")
    for field, types in fields.items():
        if field not in mapping:
            raise _Invalid(f"{where} has no {field!r} key")
        value = mapping[field]
        wanted = types if isinstance(types, tuple) else (types,)
        if not isinstance(value, wanted) or (isinstance(value, bool) and bool not in wanted):
            raise _Invalid(f"{where}[{field!r}] must be {_type_name(types)}. "
                           f"Received: {value!r:.80}")


def _is_count(value):
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_shape(shape, where):
    if len(shape) > _MAX_RANK or not all(_is_count(d) for d in shape):
        raise _Invalid(f"{where} must be a list of at most {_MAX_RANK} non-negative integers. "
                       f"Received: {shape!r:.80}")
    return tuple(shape)


def _check_model_config(config):
    """The stored model config: a Keras object config without Python
    bytecode (Keras loads a ``lambda`` from marshalled bytecode when unsafe
    deserialization is enabled; an export never needs one)."""
    _require(config, "'model'", {"class_name": str, "config": dict})
    stack = [config]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if item.get("class_name") == "__lambda__":
                raise _Invalid("the model config holds Python bytecode (a lambda function), "
                               "which is never loaded")
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _check_header(header):
    """Check the schema of ``model.json``: required keys, their types, and
    each weight's encoding, dtype (from :data:`DTYPES`) and shape."""
    if not isinstance(header, dict):
        raise _Invalid(f"model.json must hold a JSON object, not {type(header).__name__}")
    if header.get("format") != FORMAT:
        raise _Invalid(f"model.json has format {header.get('format')!r:.80}, expected {FORMAT!r}")
    _require(header, "model.json", {"version": int, "model": (dict, type(None)),
                                    "model_class": str, "layers": list})
    if header["version"] != VERSION:
        raise _Invalid(f"format version {header['version']}; this keras_sparse reads "
                       f"version {VERSION}")
    if "keras_version" in header:
        _require(header, "model.json", {"keras_version": str})
    if header["model"] is not None:
        _check_model_config(header["model"])
    for i, layer in enumerate(header["layers"]):
        _require(layer, f"layers[{i}]", {"name": str, "weights": list})
        for j, meta in enumerate(layer["weights"]):
            where = f"layers[{i}] ({layer['name']!r:.80}) weights[{j}]"
            _require(meta, where, {"encoding": str, "shape": list, "dtype": str})
            if meta["encoding"] not in _PARTS:
                raise _Invalid(f"{where} has an unknown encoding {meta['encoding']!r:.80}; "
                               f"expected one of {sorted(_PARTS)}")
            if meta["dtype"] not in DTYPES:
                raise _Invalid(f"{where} has dtype {meta['dtype']!r:.80}, which is not loaded; "
                               f"allowed: {', '.join(DTYPES)}")
            _check_shape(meta["shape"], f"{where}['shape']")
            if "bytes" in meta and not _is_count(meta["bytes"]):
                raise _Invalid(f"{where}['bytes'] must be a non-negative integer. "
                               f"Received: {meta['bytes']!r:.80}")
            if meta["encoding"] in ("affine", "bitmap_affine"):
                _require(meta, where, {"width": int})
                if meta["width"] not in (1, 2, 4, 8):
                    raise _Invalid(f"{where}['width'] must be 1, 2, 4 or 8. "
                                   f"Received: {meta['width']!r}")
                if meta["dtype"] != "float32":
                    raise _Invalid(f"{where}: {meta['encoding']} weights are float32. "
                                   f"Received: dtype {meta['dtype']!r}")


def _payload_bound(header):
    """An upper bound of the size of ``weights.npz`` for ``header``."""
    total = _ENTRY_OVERHEAD
    for layer in header["layers"]:
        for meta in layer["weights"]:
            count = math.prod(meta["shape"])
            # Data, a bitmap, codes and per-entry offset and scale at most.
            total += count * (np.dtype(meta["dtype"]).itemsize + 10)
            total += _ENTRY_OVERHEAD * len(_PARTS[meta["encoding"]])
    return total


def _read_member(archive, member, limit, why):
    """The bytes of ``member``, after checking its declared size against
    ``limit``."""
    info = archive.getinfo(member)
    if info.flag_bits & 0x1:
        raise _Invalid(f"entry {member!r} is encrypted")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise _Invalid(f"entry {member!r} uses compression method {info.compress_type}; "
                       "only stored and deflated entries are read")
    if info.file_size > limit:
        raise _Invalid(f"entry {member!r} declares {_size(info.file_size)}, more than the "
                       f"{_size(limit)} {why}")
    with _damaged(f"entry {member!r} is damaged"), archive.open(info) as stream:
        data = stream.read(info.file_size)
    if len(data) != info.file_size:
        raise _Invalid(f"entry {member!r} holds {len(data):,} of its {info.file_size:,} bytes")
    return data


def _read_npy(archive, key, label, dtype, shape, within=None):
    """Read array ``key`` of the weights archive, checking its npy header
    (dtype ``dtype``; shape ``shape``, or when ``shape`` is ``None`` one that
    broadcasts to ``within``) and its byte length before allocating it."""
    member = f"{key}.npy"
    info = archive.getinfo(member)
    if info.flag_bits & 0x1 or info.compress_type not in (zipfile.ZIP_STORED,
                                                          zipfile.ZIP_DEFLATED):
        raise _Invalid(f"array {key!r} ({label}) is encrypted or uses compression method "
                       f"{info.compress_type}")
    if shape is not None:
        nbytes = math.prod(shape) * dtype.itemsize
        if info.file_size < nbytes:
            raise _Invalid(f"array {key!r} ({label}) declares shape {shape} {dtype} = "
                           f"{_size(nbytes)} but holds {info.file_size:,} bytes")
    else:
        nbytes = math.prod(within) * dtype.itemsize
    if info.file_size > nbytes + _ENTRY_OVERHEAD:
        raise _Invalid(f"array {key!r} ({label}) holds {info.file_size:,} bytes, more than its "
                       f"shape and dtype need ({_size(nbytes)})")
    with archive.open(info) as stream:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            stored_shape, fortran, stored_dtype = np.lib.format.read_array_header_1_0(stream)
        elif version == (2, 0):
            stored_shape, fortran, stored_dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            raise _Invalid(f"array {key!r} ({label}) has npy format version {version}")
        if stored_dtype.hasobject:
            raise _Invalid(f"array {key!r} ({label}) holds Python objects (dtype "
                           f"{stored_dtype}), which are never loaded")
        if stored_dtype != dtype:
            raise _Invalid(f"array {key!r} ({label}) is stored as {stored_dtype}; "
                           f"the header declares {dtype}")
        stored_shape = _check_shape(list(stored_shape), f"the shape of array {key!r} ({label})")
        if shape is not None and stored_shape != shape:
            raise _Invalid(f"array {key!r} ({label}) has shape {stored_shape}; the header "
                           f"declares {shape}")
        if shape is None:
            try:
                fits = (len(stored_shape) <= len(within)
                        and np.broadcast_shapes(stored_shape, within) == within)
            except ValueError:
                fits = False
            if not fits:
                raise _Invalid(f"array {key!r} ({label}) has shape {stored_shape}, which does "
                               f"not broadcast to the weight's shape {within}")
        nbytes = math.prod(stored_shape) * dtype.itemsize
        held = info.file_size - stream.tell()
        if held != nbytes:
            raise _Invalid(f"array {key!r} ({label}) declares shape {stored_shape} {dtype} = "
                           f"{_size(nbytes)} but holds {held:,} bytes")
        array = np.empty(stored_shape[::-1] if fortran else stored_shape, dtype)
        view = memoryview(array.reshape(-1).view(np.uint8))
        filled = 0
        while filled < nbytes:
            got = stream.readinto(view[filled:])
            if not got:
                raise _Invalid(f"array {key!r} ({label}) ends after {filled:,} of its "
                               f"{nbytes:,} bytes")
            filled += got
    return array.T if fortran else array


def _read_arrays(archive, header):
    """Every array of the weights archive, each checked against what the
    header implies before it is read."""
    expected = {f"{i}.{j}.{part}.npy"
                for i, layer in enumerate(header["layers"])
                for j, meta in enumerate(layer["weights"])
                for part in _PARTS[meta["encoding"]]}
    names = archive.namelist()
    if len(names) != len(set(names)) or set(names) != expected:
        missing, extra = sorted(expected - set(names)), sorted(set(names) - expected)
        duplicates = ", duplicate entries" if len(names) != len(set(names)) else ""
        raise _Invalid(f"weights.npz does not match the header: missing {missing[:5]}, "
                       f"unexpected {extra[:5]!r:.200}{duplicates}")
    arrays = {}
    uint8, float32 = np.dtype(np.uint8), np.dtype(np.float32)
    for i, layer in enumerate(header["layers"]):
        for j, meta in enumerate(layer["weights"]):
            key, label = f"{i}.{j}", f"layer {layer['name']!r:.80} weight {j}"
            shape, dtype, encoding = tuple(meta["shape"]), np.dtype(meta["dtype"]), meta["encoding"]
            if encoding == "raw":
                arrays[key + ".raw"] = _read_npy(archive, key + ".raw", label, dtype, shape)
                continue
            kept = count = math.prod(shape)
            if encoding in ("bitmap", "bitmap_affine"):
                bitmap = _read_npy(archive, key + ".bitmap", label, uint8, (-(-count // 8),))
                arrays[key + ".bitmap"] = bitmap
                kept = int(unpack_bits(bitmap, 1, count).sum(dtype=np.int64))
            if encoding == "bitmap":
                arrays[key + ".values"] = _read_npy(archive, key + ".values", label, dtype, (kept,))
                continue
            codes_shape = (-(-kept * meta["width"] // 8),)
            arrays[key + ".codes"] = _read_npy(archive, key + ".codes", label, uint8, codes_shape)
            for part in ("offset", "scale"):
                arrays[f"{key}.{part}"] = _read_npy(archive, f"{key}.{part}", label, float32,
                                                    None, within=shape)
    return arrays


def _read_archive(handle):
    """The header and arrays of an export, each part validated before the
    next is read; raises :class:`_Invalid`."""
    with _damaged("not a zip archive, or a truncated one"):
        archive = zipfile.ZipFile(handle)
    with archive:
        names = [info.filename for info in archive.infolist()]
        if sorted(names) != sorted(_MEMBERS):
            raise _Invalid(f"the archive holds the entries {names[:5]!r:.200}; an export holds "
                           f"{list(_MEMBERS)}")
        data = _read_member(archive, "model.json", _MAX_HEADER_BYTES, "a header may hold")
        with _damaged("model.json is not valid JSON"):
            header = json.loads(data)
        _check_header(header)
        data = _read_member(archive, "weights.npz", _payload_bound(header),
                            "the header's weights can take")
    with _damaged("weights.npz is damaged"):
        with zipfile.ZipFile(io.BytesIO(data)) as weights:
            arrays = _read_arrays(weights, header)
    return header, arrays


def _file_name(path):
    if hasattr(path, "read"):
        return getattr(path, "name", "<file object>")
    return os.fspath(path)


def _read(path):
    """``(header, arrays)`` of the export at ``path`` (a path or a binary
    file object), or a ``ValueError`` naming the file and the problem."""
    name = _file_name(path)
    handle = path if hasattr(path, "read") else open(path, "rb")
    try:
        return _read_archive(handle)
    except _Invalid as error:
        raise ValueError(
            f"{name!r} is not a keras_sparse packed export: {error}") from error.__cause__
    finally:
        if handle is not path:
            handle.close()


# -------------------------------------------------------------- public API
def export(model, path):
    """Write ``model`` with packed weights to ``path`` (a zip archive).

    The model is stripped to plain Keras layers (quantized weights become
    their quantized values, pruned ones exact zeros) and each weight is
    stored in its smallest exact encoding (see the module docstring).

    The write is atomic: the archive goes to a temporary file in the folder
    of ``path``, is flushed and synced to disk, and only then renamed onto
    ``path`` (``os.replace``). A failure (a full disk) or a process killed
    mid-write leaves a previous file at ``path`` as it was; on an exception
    the temporary file is removed. An existing file keeps its permissions;
    a symlink at ``path`` keeps pointing to the new file. A ``path`` that is
    not a regular file (``os.devnull``) is written in place.

    Args:
        model: a built Keras model (sparse, quantized or plain). The model
            itself is not changed.
        path: the file to write (any extension; ``.kspk`` is a good one).
            Its folder must be writable.

    Returns:
        A dict with ``"bytes"`` (the file size) and ``"weights"`` (per
        weight: layer, encoding, payload bytes).

    Raises:
        ValueError: for an unbuilt model.
        TypeError: for a ``model`` that is not a Keras model or a ``path``
            that is not a file path.
        OSError: when the file cannot be written (``path`` is then
            unchanged).

    Example:
    >>> info = ks.export(model, "model.kspk")
    >>> plain = ks.load_exported("model.kspk")   # a plain Keras model
    >>> # A subclassed model: its weights, into a fresh plain instance.
    >>> ks.load_exported("model.kspk", model=MyModel().build_for(x))
    """
    check_model(model)
    check_path(path)
    if not model.built:
        raise ValueError(
            f"Build the model before exporting it. Received: model={describe(model)} (unbuilt)"
        )
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
        "model": json.loads(strip(model).to_json()) if is_cloneable_model(model) else None,
        "model_class": f"{type(model).__module__}.{type(model).__qualname__}",
        "layers": layers_meta,
    }
    size = _write_atomically(path, lambda handle: _write_archive(handle, header, arrays))
    return {"bytes": size, "weights": summary}


def load_exported(path, model=None):
    """Read a file written by :func:`export` as a plain Keras model.

    Only Keras and numpy are needed to rebuild it: the model config holds
    plain Keras layers.

    The file is validated before anything large is allocated, and nothing
    in it is unpickled or executed:

    * the archive: a readable zip holding exactly ``model.json`` and
      ``weights.npz``, stored or deflated, with sizes bounded before they
      are decompressed;
    * the header (``model.json``): its format and version, its required
      keys and their types, each weight's encoding, dtype (one of
      :data:`DTYPES`; never ``object``), shape (at most 16 non-negative
      integers) and bit width;
    * the model config: a Keras object config without Python bytecode
      (``lambda`` functions are never loaded, even with unsafe
      deserialization enabled); it is deserialized in Keras' safe mode;
    * every array: its npy header (dtype, shape) must match what the header
      implies, and the bytes it declares must be the bytes it holds, before
      the array is allocated.

    Args:
        path: the file (or a binary file object).
        model: ``None`` to rebuild the model from the stored config
            (Sequential and functional models), or a built model to write
            the weights into: needed for a subclassed model, whose file
            holds weights only. Its layers must match the exported ones in
            order, count and weight shapes.

    Returns:
        The plain Keras model (``model`` itself when given).

    Raises:
        ValueError: for a file that is not an export or is damaged (the
            message names the file and what is wrong), a stored config
            that does not rebuild a Keras model, a subclassed model's file
            without ``model``, or a ``model`` whose layers do not match
            (nothing is written then).
        OSError: when the file cannot be opened.

    Example:
    >>> plain = ks.load_exported("model.kspk")
    >>> plain.predict(x)
    """
    if not hasattr(path, "read"):
        check_path(path)
    if model is not None:
        check_model(model)
    name = _file_name(path)
    header, arrays = _read(path)
    if model is None:
        if header["model"] is None:
            raise ValueError(
                f"{name!r} holds the weights of a subclassed model "
                f"({header['model_class']}): pass a built instance of its plain "
                "Keras version as `model`. Received: model=None"
            )
        try:
            model = keras.saving.deserialize_keras_object(header["model"], safe_mode=True)
        except (ValueError, TypeError, KeyError, AttributeError, IndexError,
                NotImplementedError) as error:
            raise ValueError(f"{name!r}: the stored model config does not rebuild a Keras "
                             f"model ({type(error).__name__}: {error})") from error
        if not isinstance(model, keras.Model):
            raise ValueError(f"{name!r}: the stored model config rebuilds a "
                             f"{type(model).__name__}, not a Keras model")
    elif not model.built:
        raise ValueError("`model` must be built before loading weights into it. "
                         f"Received: model={describe(model)} (unbuilt)")
    layers = leaf_layers(model)
    if len(layers) != len(header["layers"]):
        raise ValueError(
            f"{name!r} holds {len(header['layers'])} layers; the model has {len(layers)}. "
            f"Received: model={type(model).__name__}")
    decoded = []
    for index, (layer, meta) in enumerate(zip(layers, header["layers"])):
        values = [_decode(w, arrays, f"{index}.{j}") for j, w in enumerate(meta["weights"])]
        shapes = [tuple(v.shape) for v in layer.weights]
        if shapes != [tuple(v.shape) for v in values]:
            raise ValueError(
                f"Layer {layer.name!r} has weights of shapes {shapes}; {name!r} holds "
                f"{[tuple(v.shape) for v in values]} for {meta['name']!r}. "
                f"Received: model={type(model).__name__}")
        decoded.append((layer, values))
    for layer, values in decoded:
        if values:
            layer.set_weights(values)
    return model
