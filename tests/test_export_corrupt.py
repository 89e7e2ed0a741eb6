"""Safe files: ``ks.export`` writes atomically and ``ks.load_exported``
rejects truncated, random, bit-flipped and crafted files with a
``ValueError`` naming the file, without allocating what a file merely
declares and without unpickling anything."""

import errno
import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import tracemalloc
import zipfile

import keras
import numpy as np
import pytest
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

import keras_sparse as ks
from conftest import to_np
from keras_sparse import quantizers

export_module = sys.modules["keras_sparse.export"]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(ks.__file__)))
NOT_AN_EXPORT = "is not a keras_sparse packed export"


# ------------------------------------------------------------------ the file
def _model():
    """A pruned, 4-bit model with every encoding: ``bitmap_affine`` (the
    pruned hidden kernel), ``affine`` (the unpruned head kernel), ``bitmap``
    (the all-zero hidden bias, no values) and ``raw`` (BatchNorm, head
    bias)."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    model = keras.Sequential([
        keras.Input((12,)),
        keras.layers.Dense(16, name="hidden"),
        keras.layers.BatchNormalization(name="norm"),
        keras.layers.Dense(4, name="head"),
    ])
    model.get_layer("norm").set_weights([
        rng.uniform(0.5, 1.5, 16).astype("float32"), rng.normal(size=16).astype("float32"),
        rng.normal(size=16).astype("float32"), rng.uniform(0.5, 2.0, 16).astype("float32")])
    model.get_layer("head").bias.assign(rng.normal(size=4).astype("float32"))
    model = ks.prune(ks.quantize(model, 4), 0.6)
    for layer in model.layers:
        if isinstance(layer, ks.layers.SparseMixin):
            layer.prune_to(0.6 if layer.name == "hidden" else 0.0)
    return model


class Export:
    """The reference export: its bytes, header, and the stripped model's
    weights and outputs that a correct load must reproduce."""

    def __init__(self, folder):
        model = _model()
        self.path = os.path.join(folder, "reference.kspk")
        self.info = ks.export(model, self.path)
        with open(self.path, "rb") as handle:
            self.data = handle.read()
        plain = ks.strip(model)
        self.x = np.random.default_rng(1).standard_normal((8, 12)).astype("float32")
        self.weights = [to_np(w) for w in plain.weights]
        self.paths = ["/".join(w.path.split("/")[-2:]) for w in plain.weights]
        self.outputs = to_np(plain(self.x))
        with zipfile.ZipFile(io.BytesIO(self.data)) as archive:
            self.header = json.loads(archive.read("model.json"))
            self.npz = archive.read("weights.npz")

    def assert_same(self, loaded):
        assert len(loaded.weights) == len(self.weights)
        for ours, expected in zip(loaded.weights, self.weights):
            np.testing.assert_array_equal(to_np(ours), expected)
        np.testing.assert_array_equal(to_np(loaded(self.x)), self.outputs)

    def index(self, name):
        return [layer["name"] for layer in self.header["layers"]].index(name)

    def entries(self):
        """The raw npy bytes of each array in ``weights.npz``."""
        with zipfile.ZipFile(io.BytesIO(self.npz)) as archive:
            return {info.filename: archive.read(info) for info in archive.infolist()}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return Export(str(tmp_path_factory.mktemp("reference")))


def test_reference_export_has_every_encoding(reference):
    encodings = {(w["layer"], w["weight"]): w["encoding"] for w in reference.info["weights"]}
    assert encodings[("hidden", "kernel")] == "bitmap_affine"
    assert encodings[("hidden", "bias")] == "bitmap"
    assert encodings[("head", "kernel")] == "affine"
    assert encodings[("head", "bias")] == "raw"
    assert encodings[("norm", "gamma")] == "raw"
    reference.assert_same(ks.load_exported(reference.path))


# ---------------------------------------------------------------- crafting
def _npy(array, **kwargs):
    buffer = io.BytesIO()
    np.save(buffer, array, **kwargs)
    return buffer.getvalue()


def _npy_header(shape, descr="<f4", data=b""):
    """An npy file declaring ``shape`` and ``descr`` and holding ``data``."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": descr, "fortran_order": False, "shape": tuple(shape)})
    return buffer.getvalue() + data


def _zip(entries, compression=zipfile.ZIP_STORED):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compression) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _archive(header, npz, extra=None):
    """An export archive of ``header`` (a dict, or bytes used as is) and the
    weights archive ``npz`` (bytes, or a dict of npy entries)."""
    if isinstance(npz, dict):
        npz = _zip(npz)
    entries = {"model.json": header if isinstance(header, bytes) else json.dumps(header),
               "weights.npz": npz}
    entries.update(extra or {})
    return _zip(entries, zipfile.ZIP_DEFLATED)


def _write(folder, data, name="crafted.kspk"):
    path = os.path.join(str(folder), name)
    with open(path, "wb") as handle:
        handle.write(data)
    return path


def _header(reference):
    return json.loads(json.dumps(reference.header))


def _rejects(path, match=None):
    """``load_exported(path)`` raises a ValueError naming ``path`` (and
    matching ``match``); any other exception fails the test."""
    with pytest.raises(ValueError) as caught:
        ks.load_exported(path)
    message = str(caught.value)
    assert str(path) in message, message
    if match is not None:
        assert match in message, message
    return message


def _rejects_within_memory(path, match, limit=50 * 2**20):
    """As :func:`_rejects`, quickly and with a peak allocation (numpy arrays
    included) under ``limit`` bytes."""
    tracemalloc.start()
    start = time.perf_counter()
    try:
        message = _rejects(path, match)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < limit, f"peak allocation {peak:,} bytes"
    assert time.perf_counter() - start < 10
    return message


def test_memory_bound_sees_numpy_allocations():
    tracemalloc.start()
    try:
        block = np.ones(64 * 2**20, np.uint8)
        _, peak = tracemalloc.get_traced_memory()
        del block
    finally:
        tracemalloc.stop()
    assert peak >= 64 * 2**20


# ---------------------------------------------- truncated and random bytes
@pytest.mark.parametrize("twentieths", range(1, 20))
def test_truncated_file_is_rejected(reference, tmp_path, twentieths):
    data = reference.data[: len(reference.data) * twentieths // 20]
    _rejects(_write(tmp_path, data), NOT_AN_EXPORT)


@pytest.mark.parametrize("length", [0, 1, 4, 21, 22, 100, 1000, 5000, 100_000])
def test_random_bytes_are_rejected(tmp_path, length):
    rng = np.random.default_rng(length)
    data = rng.integers(0, 256, length, dtype=np.uint8).tobytes()
    _rejects(_write(tmp_path, data), NOT_AN_EXPORT)
    # The same noise behind zip signatures (a local header, an end record).
    _rejects(_write(tmp_path, b"PK\x03\x04" + data, "local.kspk"), NOT_AN_EXPORT)
    _rejects(_write(tmp_path, data + b"PK\x05\x06" + bytes(18), "end.kspk"), NOT_AN_EXPORT)


def test_empty_zip_archive_is_rejected(tmp_path):
    _rejects(_write(tmp_path, _zip({})), "an export holds")


@pytest.mark.parametrize("mask", [0xFF, 0x01, 0x80])
def test_flipped_bytes_load_exactly_or_raise_value_error(reference, tmp_path, mask):
    """At every position (every third one for single bits): either the file
    still loads to exactly the stripped model, or ValueError."""
    step = 1 if mask == 0xFF else 3
    path = os.path.join(tmp_path, "flipped.kspk")
    loaded = rejected = 0
    for position in range(0, len(reference.data), step):
        data = bytearray(reference.data)
        data[position] ^= mask
        with open(path, "wb") as handle:
            handle.write(data)
        try:
            model = ks.load_exported(path)
        except ValueError as error:
            assert path in str(error)
            rejected += 1
            continue
        reference.assert_same(model)
        loaded += 1
    # The checksums catch most flips; zip fields nobody reads do not matter.
    assert rejected > loaded


# ------------------------------------------------------ sizes and shapes
def test_huge_raw_shape_is_rejected_without_allocating(reference, tmp_path):
    header = _header(reference)
    header["layers"][reference.index("norm")]["weights"][0]["shape"] = [100000, 100000]
    path = _write(tmp_path, _archive(header, reference.npz))
    message = _rejects_within_memory(path, "declares shape (100000, 100000) float32 = 40 GB")
    assert "but holds 192 bytes" in message


def test_huge_shape_in_header_and_npy_is_rejected_without_allocating(reference, tmp_path):
    header = _header(reference)
    norm = reference.index("norm")
    header["layers"][norm]["weights"][0]["shape"] = [100000, 100000]
    entries = reference.entries()
    entries[f"{norm}.0.raw.npy"] = _npy_header((100000, 100000), data=bytes(1024))
    path = _write(tmp_path, _archive(header, entries))
    message = _rejects_within_memory(path, "declares shape (100000, 100000) float32 = 40 GB")
    assert "holds 1,152 bytes" in message


def test_huge_shape_in_npy_only_is_rejected(reference, tmp_path):
    norm = reference.index("norm")
    entries = reference.entries()
    entries[f"{norm}.0.raw.npy"] = _npy_header((100000, 100000), data=bytes(64))
    path = _write(tmp_path, _archive(reference.header, entries))
    _rejects_within_memory(path, "has shape (100000, 100000); the header declares (16,)")


def test_huge_shape_of_a_packed_weight_is_rejected_without_allocating(reference, tmp_path):
    header = _header(reference)
    header["layers"][reference.index("hidden")]["weights"][0]["shape"] = [100000, 100000]
    path = _write(tmp_path, _archive(header, reference.npz))
    # The bitmap alone would take 1.25 GB.
    _rejects_within_memory(path, "declares shape (1250000000,) uint8 = 1.25 GB")


@pytest.mark.parametrize("shape", [[2**40, 2**40, 2**40], [2**63] * 3, [10**30]])
def test_astronomical_shapes_are_rejected_without_allocating(reference, tmp_path, shape):
    header = _header(reference)
    for layer in header["layers"]:
        for weight in layer["weights"]:
            weight["shape"] = shape
    path = _write(tmp_path, _archive(header, reference.npz))
    _rejects_within_memory(path, "TB but holds")


@pytest.mark.parametrize("shape", [[-16], [16, -1], [-1, -1], [1] * 17, [16.0], [True] * 16,
                                   ["16"], None, "16", 16, [[16]]])
def test_bad_shapes_are_rejected(reference, tmp_path, shape):
    header = _header(reference)
    header["layers"][reference.index("norm")]["weights"][0]["shape"] = shape
    _rejects(_write(tmp_path, _archive(header, reference.npz)), "['shape']")


def test_inflated_header_is_rejected_before_decompressing(reference, tmp_path):
    path = os.path.join(tmp_path, "bomb.kspk")
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        with archive.open("model.json", "w", force_zip64=True) as handle:
            handle.write(json.dumps(reference.header).encode())
            for _ in range(80):
                handle.write(b" " * 2**20)
        archive.writestr("weights.npz", reference.npz)
    _rejects_within_memory(path, "more than the 67.1 MB a header may hold")


def test_weights_larger_than_the_header_allows_are_rejected(reference, tmp_path):
    entries = reference.entries()
    entries["padding.npy"] = _npy(np.zeros(2**20, np.float32))
    path = _write(tmp_path, _archive(reference.header, entries))
    _rejects_within_memory(path, "the header's weights can take")


def test_array_with_surplus_bytes_is_rejected(reference, tmp_path):
    norm = reference.index("norm")
    entries = reference.entries()
    entries[f"{norm}.0.raw.npy"] += bytes(8)
    _rejects(_write(tmp_path, _archive(reference.header, entries)),
             "declares shape (16,) float32 = 64 bytes but holds 72 bytes")


def test_bitmap_that_does_not_match_its_values_is_rejected(reference, tmp_path):
    hidden = reference.index("hidden")
    entries = reference.entries()
    bitmap = np.full(12 * 16 // 8, 0xFF, np.uint8)  # every entry kept: more codes than stored
    entries[f"{hidden}.0.bitmap.npy"] = _npy(bitmap)
    _rejects(_write(tmp_path, _archive(reference.header, entries)), "the header declares (96,)")


def test_scale_that_does_not_broadcast_is_rejected(reference, tmp_path):
    hidden = reference.index("hidden")
    entries = reference.entries()
    entries[f"{hidden}.0.scale.npy"] = _npy(np.ones((3,), np.float32))
    _rejects(_write(tmp_path, _archive(reference.header, entries)), "does not broadcast")
    entries[f"{hidden}.0.scale.npy"] = _npy(np.ones((1, 1, 16), np.float32))
    _rejects(_write(tmp_path, _archive(reference.header, entries)), "does not broadcast")


def test_raw_weight_in_fortran_order_loads_exactly(reference, tmp_path):
    head = reference.index("head")
    header = _header(reference)
    header["layers"][head]["weights"][0] = {"encoding": "raw", "shape": [16, 4],
                                            "dtype": "float32"}
    entries = {name: data for name, data in reference.entries().items()
               if not name.startswith(f"{head}.0.")}
    kernel = reference.weights[reference.paths.index("head/kernel")]
    entries[f"{head}.0.raw.npy"] = _npy(np.asfortranarray(kernel))
    assert b"'fortran_order': True" in entries[f"{head}.0.raw.npy"]
    reference.assert_same(ks.load_exported(_write(tmp_path, _archive(header, entries))))


# ------------------------------------------------------------------ dtypes
PICKLED = []


def _unpickled():
    PICKLED.append(True)
    return 0.0


class _Payload:
    """Unpickling it calls :func:`_unpickled`."""

    def __reduce__(self):
        return (_unpickled, ())


@pytest.mark.parametrize("dtype", ["object", "O", "complex64", "bfloat16", "float8", "<f4",
                                   "V4", "str"])
def test_dtypes_outside_the_allow_list_are_rejected(reference, tmp_path, dtype):
    header = _header(reference)
    header["layers"][reference.index("norm")]["weights"][0]["dtype"] = dtype
    _rejects(_write(tmp_path, _archive(header, reference.npz)), "which is not loaded")


def test_pickled_object_array_is_never_unpickled(reference, tmp_path):
    norm = reference.index("norm")
    entries = reference.entries()
    objects = np.empty(16, object)
    objects[:] = [_Payload() for _ in range(16)]
    entries[f"{norm}.0.raw.npy"] = _npy(objects, allow_pickle=True)
    _rejects(_write(tmp_path, _archive(reference.header, entries)), "holds Python objects")
    header = _header(reference)
    header["layers"][norm]["weights"][0]["dtype"] = "object"
    _rejects(_write(tmp_path, _archive(header, entries), "object.kspk"), "dtype 'object'")
    assert not PICKLED


@pytest.mark.parametrize("stored", [np.float64, np.int32, ">f4"])
def test_array_stored_with_another_dtype_is_rejected(reference, tmp_path, stored):
    norm = reference.index("norm")
    entries = reference.entries()
    entries[f"{norm}.0.raw.npy"] = _npy(np.ones(16, stored))
    _rejects(_write(tmp_path, _archive(reference.header, entries)), "the header declares float32")


def test_affine_weight_must_be_float32(reference, tmp_path):
    header = _header(reference)
    header["layers"][reference.index("head")]["weights"][0]["dtype"] = "float64"
    _rejects(_write(tmp_path, _archive(header, reference.npz)), "affine weights are float32")


# ------------------------------------------------ header schema and keys
def _drop(path):
    def edit(header, reference):
        target = header
        for key in path[:-1]:
            target = target[reference.index(key) if key in ("norm", "head", "hidden") else key]
        del target[path[-1]]
    return edit


@pytest.mark.parametrize("path, match", [
    (("format",), "format None"),
    (("version",), "has no 'version' key"),
    (("model",), "has no 'model' key"),
    (("model_class",), "has no 'model_class' key"),
    (("layers",), "has no 'layers' key"),
    (("layers", "norm", "name"), "has no 'name' key"),
    (("layers", "norm", "weights"), "has no 'weights' key"),
    (("layers", "norm", "weights", 0, "shape"), "has no 'shape' key"),
    (("layers", "norm", "weights", 0, "dtype"), "has no 'dtype' key"),
    (("layers", "norm", "weights", 0, "encoding"), "has no 'encoding' key"),
    (("layers", "head", "weights", 0, "width"), "has no 'width' key"),
    (("model", "class_name"), "has no 'class_name' key"),
])
def test_missing_keys_are_rejected(reference, tmp_path, path, match):
    header = _header(reference)
    _drop(path)(header, reference)
    _rejects(_write(tmp_path, _archive(header, reference.npz)), match)


@pytest.mark.parametrize("key, value, match", [
    ("version", "1", "must be an integer"),
    ("version", True, "must be an integer"),
    ("version", 1.0, "must be an integer"),
    ("version", 2, "format version 2"),
    ("model", 5, "must be an object or null"),
    ("model", [], "must be an object or null"),
    ("model_class", None, "must be a string"),
    ("layers", {}, "must be a list"),
    ("layers", ["hidden"], "must be a JSON object"),
    ("keras_version", 3, "must be a string"),
    ("format", "keras_sparse.packed ", "format 'keras_sparse.packed '"),
])
def test_wrong_top_level_types_are_rejected(reference, tmp_path, key, value, match):
    header = _header(reference)
    header[key] = value
    _rejects(_write(tmp_path, _archive(header, reference.npz)), match)


@pytest.mark.parametrize("key, value, match", [
    ("encoding", "lz4", "unknown encoding 'lz4'"),
    ("encoding", 1, "must be a string"),
    ("dtype", 32, "must be a string"),
    ("width", 3, "must be 1, 2, 4 or 8"),
    ("width", "4", "must be an integer"),
    ("width", True, "must be an integer"),
    ("bytes", -1, "must be a non-negative integer"),
    ("bytes", "big", "must be a non-negative integer"),
])
def test_wrong_weight_fields_are_rejected(reference, tmp_path, key, value, match):
    header = _header(reference)
    header["layers"][reference.index("head")]["weights"][0][key] = value
    _rejects(_write(tmp_path, _archive(header, reference.npz)), match)


@pytest.mark.parametrize("text, match", [
    (b"", "not valid JSON"),
    (b"{", "not valid JSON"),
    (b"\xff\xfe\x00", "not valid JSON"),
    (b"[" * 100_000 + b"]" * 100_000, "not valid JSON"),
    (b"[]", "must hold a JSON object, not list"),
    (b'"keras_sparse.packed"', "must hold a JSON object, not str"),
    (b"null", "must hold a JSON object, not NoneType"),
])
def test_header_that_is_not_a_json_object_is_rejected(reference, tmp_path, text, match):
    _rejects(_write(tmp_path, _archive(text, reference.npz)), match)


def test_archive_entries_must_be_exactly_the_export_ones(reference, tmp_path):
    _rejects(_write(tmp_path, _zip({"model.json": json.dumps(reference.header)})),
             "an export holds ['model.json', 'weights.npz']")
    _rejects(_write(tmp_path, _zip({"weights.npz": reference.npz})), "an export holds")
    extra = _archive(reference.header, reference.npz, {"run.py": "print('hello')"})
    _rejects(_write(tmp_path, extra), "an export holds")


def test_weights_archive_must_hold_exactly_the_header_arrays(reference, tmp_path):
    entries = reference.entries()
    missing = dict(entries)
    del missing[sorted(missing)[0]]
    _rejects(_write(tmp_path, _archive(reference.header, missing)), "missing ['")
    extra = dict(entries, **{"extra.npy": _npy(np.zeros(2, np.float32))})
    _rejects(_write(tmp_path, _archive(reference.header, extra)), "unexpected ['extra.npy']")
    _rejects(_write(tmp_path, _archive(reference.header, b"not a zip")), "weights.npz is damaged")
    broken = dict(entries)
    broken[f"{reference.index('norm')}.0.raw.npy"] = b"\x93NUMPY\x01\x00\xff\xff" + bytes(200)
    _rejects(_write(tmp_path, _archive(reference.header, broken)), "weights.npz is damaged")


def test_model_config_with_bytecode_is_rejected(reference, tmp_path):
    header = _header(reference)
    layers = header["model"]["config"]["layers"]
    layers.insert(1, {"module": "keras.layers", "class_name": "Lambda", "registered_name": None,
                      "config": {"name": "code", "function": {
                          "class_name": "__lambda__",
                          "config": {"code": "4wAAAAAAAAA=", "defaults": None,
                                     "closure": None}}}})
    _rejects(_write(tmp_path, _archive(header, reference.npz)), "Python bytecode")


@pytest.mark.parametrize("config, match", [
    ({"class_name": "NoSuchModel", "config": {}}, "does not rebuild a Keras model"),
    ({"class_name": "Dense", "module": "keras.layers", "config": {"units": 3}},
     "rebuilds a Dense, not a Keras model"),
    ({"class_name": "Sequential", "module": "keras", "config": {"layers": "x"}},
     "does not rebuild a Keras model"),
])
def test_model_config_that_does_not_rebuild_is_rejected(reference, tmp_path, config, match):
    header = _header(reference)
    header["model"] = config
    _rejects(_write(tmp_path, _archive(header, reference.npz)), match)


def test_missing_file_is_an_os_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        ks.load_exported(os.path.join(tmp_path, "missing.kspk"))


def test_file_object_is_read(reference):
    with open(reference.path, "rb") as handle:
        reference.assert_same(ks.load_exported(handle))
    with pytest.raises(ValueError, match=NOT_AN_EXPORT):
        ks.load_exported(io.BytesIO(reference.data[:100]))


# ------------------------------------------------- fuzzed header values
def _header_paths(value, prefix=()):
    """Paths to every value of the header outside the model config."""
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            if prefix == () and key == "model":
                continue
            yield from _header_paths(item, prefix + (key,))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _header_paths(item, prefix + (index,))


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=8,
)


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_header_value_loads_exactly_or_raises_value_error(reference, tmp_path, data):
    paths = [p for p in _header_paths(reference.header) if p]
    path = data.draw(st.sampled_from(paths))
    header = _header(reference)
    target = header
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = data.draw(JSON)
    file = _write(tmp_path, _archive(header, reference.npz), "fuzzed.kspk")
    try:
        loaded = ks.load_exported(file)
    except ValueError as error:
        assert file in str(error)
        return
    reference.assert_same(loaded)


# ---------------------------------------------------------- atomic writes
class _FillingDisk(io.FileIO):
    """A file whose disk is full after ``room`` bytes: the write that
    crosses it stores what fits, then raises ``error``."""

    def __init__(self, file, room, error):
        super().__init__(file, "w")
        self.room, self.error, self.written = room, error, 0

    def write(self, data):
        data = memoryview(data).cast("B")
        if len(data) > self.room - self.written:
            self.written += super().write(data[: self.room - self.written])
            raise self.error
        self.written += super().write(data)
        return len(data)


def _filling_open(room, error, files):
    def fake_open(file, mode="r", *args, **kwargs):
        raw = _FillingDisk(file, room, error)
        files.append(raw)
        return io.BufferedWriter(raw)
    return fake_open


def _small_model(units):
    keras.utils.set_random_seed(units)
    return keras.Sequential([keras.Input((6,)), keras.layers.Dense(units, name="dense")])


@pytest.mark.parametrize("room", [0, 100, 1000])
@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left on device"),
                                   KeyboardInterrupt()], ids=["disk_full", "interrupt"])
def test_failed_write_keeps_the_previous_file(reference, tmp_path, monkeypatch, room, error):
    path = os.path.join(tmp_path, "model.kspk")
    ks.export(_model(), path)
    with open(path, "rb") as handle:
        before = handle.read()
    files = []
    monkeypatch.setattr(export_module, "open", _filling_open(room, error, files), raising=False)
    with pytest.raises(type(error)):
        ks.export(_small_model(32), path)
    monkeypatch.undo()
    assert files and files[0].written == room  # the write failed mid-way
    with open(path, "rb") as handle:
        assert handle.read() == before
    assert os.listdir(tmp_path) == ["model.kspk"]
    reference.assert_same(ks.load_exported(path))


def test_failed_first_write_leaves_no_file(tmp_path, monkeypatch):
    files = []
    monkeypatch.setattr(export_module, "open",
                        _filling_open(10, OSError(errno.ENOSPC, "full"), files), raising=False)
    with pytest.raises(OSError, match="full"):
        ks.export(_small_model(3), os.path.join(tmp_path, "model.kspk"))
    assert os.listdir(tmp_path) == []


def test_write_is_synced_before_the_rename(tmp_path, monkeypatch):
    events = []
    fsync, replace = os.fsync, os.replace

    def record_fsync(descriptor):
        events.append(("fsync", os.fstat(descriptor).st_size))
        return fsync(descriptor)

    def record_replace(source, target):
        events.append(("replace", os.path.dirname(source), os.path.basename(target)))
        return replace(source, target)

    monkeypatch.setattr(os, "fsync", record_fsync)
    monkeypatch.setattr(os, "replace", record_replace)
    path = os.path.join(tmp_path, "model.kspk")
    info = ks.export(_small_model(3), path)
    monkeypatch.undo()
    kinds = [event[0] for event in events]
    assert "replace" in kinds
    at = kinds.index("replace")
    assert ("fsync", info["bytes"]) in events[:at]
    assert events[at][1:] == (os.path.realpath(str(tmp_path)), "model.kspk")
    assert info["bytes"] == os.path.getsize(path)


def test_successful_write_replaces_the_file_and_keeps_its_mode(tmp_path):
    path = os.path.join(tmp_path, "model.kspk")
    ks.export(_small_model(3), path)
    os.chmod(path, 0o640)
    info = ks.export(_small_model(5), path)
    assert os.stat(path).st_mode & 0o777 == 0o640
    assert os.listdir(tmp_path) == ["model.kspk"]
    assert info["bytes"] == os.path.getsize(path)
    loaded = ks.load_exported(path)
    assert loaded.get_layer("dense").units == 5
    other = os.path.join(tmp_path, "other")
    with open(other, "wb"):
        pass
    fresh = os.path.join(tmp_path, "fresh.kspk")
    ks.export(_small_model(3), fresh)
    assert os.stat(fresh).st_mode & 0o777 == os.stat(other).st_mode & 0o777


@pytest.mark.skipif(not hasattr(os, "symlink") or os.name == "nt", reason="POSIX symlinks")
def test_export_through_a_symlink_replaces_its_target(tmp_path):
    real = os.path.join(tmp_path, "real.kspk")
    link = os.path.join(tmp_path, "link.kspk")
    ks.export(_small_model(3), real)
    os.symlink(real, link)
    ks.export(_small_model(5), link)
    assert os.path.islink(link)
    assert ks.load_exported(real).get_layer("dense").units == 5
    assert sorted(os.listdir(tmp_path)) == ["link.kspk", "real.kspk"]


KILLED_WRITER = textwrap.dedent("""
    import io, os, signal, sys
    import keras
    import keras_sparse as ks

    export_module = sys.modules["keras_sparse.export"]
    path, room = sys.argv[1], int(sys.argv[2])

    class Dying(io.FileIO):
        written = 0

        def write(self, data):
            data = memoryview(data).cast("B")
            if self.written + len(data) > room:
                super().write(data[: room - self.written])
                os.fsync(self.fileno())
                os.kill(os.getpid(), signal.SIGKILL)
            self.written += len(data)
            return super().write(data)

    export_module.open = lambda file, mode="r", *a, **k: io.BufferedWriter(Dying(file, "w"))
    keras.utils.set_random_seed(0)
    ks.export(keras.Sequential([keras.Input((6,)), keras.layers.Dense(64)]), path)
""")


@pytest.mark.skipif(os.name != "posix", reason="SIGKILL")
def test_process_killed_mid_write_keeps_the_previous_file(reference, tmp_path):
    path = os.path.join(tmp_path, "model.kspk")
    ks.export(_model(), path)
    with open(path, "rb") as handle:
        before = handle.read()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [REPO] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    result = subprocess.run([sys.executable, "-c", KILLED_WRITER, path, "700"], env=env,
                            capture_output=True, timeout=300)
    assert result.returncode == -signal.SIGKILL, result.stderr.decode()[-2000:]
    with open(path, "rb") as handle:
        assert handle.read() == before
    leftovers = [name for name in os.listdir(tmp_path) if name != "model.kspk"]
    assert len(leftovers) == 1 and leftovers[0].startswith(".model.kspk.")
    assert 0 < os.path.getsize(os.path.join(tmp_path, leftovers[0])) <= 700  # killed mid-write
    reference.assert_same(ks.load_exported(path))


# ------------------------------------------------------ random round trips
QUANTIZERS = [
    None, "binary", "ternary", "magnitude_aware_sign",
    *[quantizers.Uniform(bits) for bits in (2, 3, 4, 8)],
    quantizers.Uniform(4, symmetric=False), quantizers.Uniform(3, per_channel=False),
    quantizers.DoReFa(2), quantizers.LSQ(3),
]


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(
    units_in=st.integers(1, 9),
    units_out=st.integers(1, 9),
    quantizer=st.sampled_from(range(len(QUANTIZERS))),
    sparsity=st.sampled_from([0.0, 0.0, 0.3, 0.5, 0.9, 0.99]),
    use_bias=st.booleans(),
    data=st.data(),
)
def test_random_sparse_quantized_models_round_trip_exactly(
        tmp_path, units_in, units_out, quantizer, sparsity, use_bias, data):
    floats = st.floats(-4, 4, width=32)
    kernel = np.array(data.draw(st.lists(floats, min_size=units_in * units_out,
                                         max_size=units_in * units_out)),
                      np.float32).reshape(units_in, units_out)
    model = keras.Sequential([keras.Input((units_in,)),
                              keras.layers.Dense(units_out, use_bias=use_bias, name="dense")])
    if QUANTIZERS[quantizer] is not None:
        model = ks.quantize(model, QUANTIZERS[quantizer])
    if sparsity:
        model = ks.prune(model, sparsity)
    layer = model.get_layer("dense")
    if isinstance(layer, ks.layers.SparseMixin):
        layer.latent_weight("kernel").assign(kernel)
        if sparsity:
            layer.prune_to(sparsity)
    else:
        layer.kernel.assign(kernel)
    if use_bias:
        bias = data.draw(st.lists(floats, min_size=units_out, max_size=units_out))
        layer.bias.assign(np.array(bias, np.float32))
    path = os.path.join(tmp_path, "random.kspk")
    info = ks.export(model, path)
    assert info["bytes"] == os.path.getsize(path)
    loaded = ks.load_exported(path)
    plain = ks.strip(model)
    assert [w.name for w in loaded.weights] == [w.name for w in plain.weights]
    for ours, theirs in zip(loaded.weights, plain.weights):
        assert ours.dtype == theirs.dtype
        np.testing.assert_array_equal(to_np(ours), to_np(theirs))
    x = np.random.default_rng(0).standard_normal((3, units_in)).astype("float32")
    np.testing.assert_array_equal(to_np(loaded(x)), to_np(plain(x)))
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".tmp")]
