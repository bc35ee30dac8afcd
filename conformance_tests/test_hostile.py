"""Hostile inputs, fuzzed (Hypothesis): every format the suite reads, mutated, gives a result or one of the suite's
typed errors (a SuiteError), never anything else; memory stays bounded; nothing is left behind. And a soak test.

Profiles: a CI-sized one by default (a few examples per format, seconds per test); `VIT_SUITE_FUZZ=long` runs
thousands of examples per format (minutes to hours):

    VIT_SUITE_FUZZ=long python -m pytest conformance_tests/test_hostile.py -q
"""
from __future__ import annotations

import json
import os
import resource
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest

from shared import weights as W
from shared.errors import SuiteError
from shared.init import init_weights
from shared.presets import get_preset

# hypothesis is in the [test] extra: missing, these tests fail (they never skip)
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

settings.register_profile("ci", max_examples=25, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.register_profile("long", max_examples=2000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
PROFILE = os.environ.get("VIT_SUITE_FUZZ", "ci")
FUZZ = settings.get_profile(PROFILE)

#: the most a fuzz test's peak memory (RSS) may grow over all its examples: tiny files, so anything near this is a
#: reader allocating from a lying header
RSS_GROWTH_LIMIT_KIB = 400 * 1024


def _rss_peak_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


# ------------------------------------------------------------------ valid files of every format
@pytest.fixture(scope="module")
def valid_files(tmp_path_factory):
    """{format: path} of one valid tiny model in every format the suite reads."""
    from safetensors.numpy import save_file

    from shared.backend import is_available
    from shared.convert import export_timm, save_hf_dir
    from shared.convert.io import write_any

    root = tmp_path_factory.mktemp("valid")
    cfg = get_preset("tiny").replace(resize_kernel="bicubic")
    state = init_weights(cfg, 0)
    files = {"canonical": W.save(root / "canonical.safetensors", cfg, state)}
    save_file({k: np.ascontiguousarray(v) for k, v in export_timm(cfg, state).items()}, str(root / "timm.safetensors"))
    files["timm"] = root / "timm.safetensors"
    files["hf"] = save_hf_dir(root / "hf", cfg, state)
    write_any(str(root / "tv.pth"), "torchvision", cfg, state)
    files["torchvision"] = root / "tv.pth"
    from shared.convert.bigvision import expected_npz_shapes

    rng = np.random.default_rng(0)
    np.savez(root / "vit.npz", **{k: rng.standard_normal(shape).astype(np.float32)
                                  for k, shape in expected_npz_shapes(cfg).items()})
    files["bigvision"] = root / "vit.npz"
    write_any(str(root / "m.onnx"), "onnx", cfg, state)
    files["onnx"] = root / "m.onnx"
    for fmt, name, backend in (("torch", "m.pt", "torch"), ("keras", "m.keras", "keras"),
                               ("keras-h5", "m.weights.h5", "keras"), ("mindspore", "m.ckpt", "mindspore")):
        if is_available(backend):
            write_any(str(root / name), fmt, cfg, state)
            files[fmt] = root / name
    return files


def _read(path: Path, fmt_hint: str | None = None) -> None:
    """What `vit-suite convert` does first: detect, read, validate (preset for the files that carry no config)."""
    from shared.convert.io import read_any

    read_any(str(path), None, "tiny")


def _mutate(data: bytes, ops) -> bytes:
    buf = bytearray(data)
    for kind, pos, value in ops:
        if not buf:
            break
        i = pos % len(buf)
        if kind == "flip":
            buf[i] ^= value or 1
        elif kind == "set":
            buf[i] = value
        elif kind == "truncate":
            del buf[i:]
        elif kind == "insert":
            buf[i:i] = bytes([value]) * (1 + value % 7)
    return bytes(buf)


MUTATIONS = st.lists(st.tuples(st.sampled_from(["flip", "set", "truncate", "insert"]),
                               st.integers(0, 2**31), st.integers(0, 255)), min_size=1, max_size=6)


def _assert_clean(directory: Path, expected: set[str], tmp_before: set[str]) -> None:
    assert {p.name for p in directory.iterdir()} == expected, "a temporary file was left behind"
    mine = {p for p in os.listdir(tempfile.gettempdir()) if p.startswith(f"vit-suite-src-{os.getpid()}-")}
    assert mine <= tmp_before, f"temp directories left behind: {mine - tmp_before}"


def _fuzz_file(valid_files, fmt, ops, tmp_path_factory):
    if fmt not in valid_files:
        pytest.fail(f"no valid {fmt} file to mutate: its backend is not installed")
    src = valid_files[fmt]
    work = tmp_path_factory.mktemp("fuzz")
    dst = work / src.name
    dst.write_bytes(_mutate(src.read_bytes(), ops))
    tmp_before = set(os.listdir(tempfile.gettempdir()))
    try:
        _read(dst)
    except SuiteError:
        pass
    _assert_clean(work, {dst.name}, tmp_before)


@pytest.mark.parametrize("fmt", ["canonical", "timm", "torch", "torchvision", "bigvision", "keras", "keras-h5",
                                 "mindspore", "onnx"])
def test_fuzz_every_file_format_gives_only_typed_errors(valid_files, tmp_path_factory, fmt):
    """Truncations, byte flips and insertions anywhere in a valid file: a result or a SuiteError, nothing else."""
    before = _rss_peak_kib()

    @FUZZ
    @given(ops=MUTATIONS)
    def run(ops):
        _fuzz_file(valid_files, fmt, ops, tmp_path_factory)

    run()
    assert _rss_peak_kib() - before < RSS_GROWTH_LIMIT_KIB


def _ckpt_value(tag: bytes, dims: list[int], ttype: bytes, content: bytes, lie: int = 0) -> bytes:
    """One MindSpore checkpoint Value framed by hand (checkpoint.proto); `lie` adds to its claimed length."""
    from shared.ms_ckpt import _field, _varint

    tensor = b"".join(_field(1, d) for d in dims) + _field(2, ttype) + _field(3, content)
    value = _field(1, tag) + _field(2, tensor)
    return _varint(1 << 3 | 2) + _varint(len(value) + lie) + value


def _h5_edit(src: Path, dst: Path, edit) -> None:
    import shutil

    import h5py

    shutil.copyfile(src, dst)
    with h5py.File(dst, "r+") as f:
        edit(f)


def _h5_float64(f):
    data = f["vars/0"][()]
    del f["vars/0"]
    f["vars/0"] = data.astype(np.float64)


def _rezip(src: Path, dst: Path, member: str, cut: int) -> None:
    import zipfile

    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            zout.writestr(info, data[:cut] if info.filename == member else data)


def _flip_last_member_byte(src: Path) -> bytes:
    """A .keras file with the last byte of its (stored) weights member flipped: the HDF5 structure intact."""
    import zipfile

    with zipfile.ZipFile(src) as z:
        info = z.getinfo("model.weights.h5")
    raw = bytearray(src.read_bytes())
    name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26:info.header_offset + 30])
    raw[info.header_offset + 30 + name_len + extra_len + info.file_size - 1] ^= 0x01
    return bytes(raw)


def _flip_first_tensor_byte(src: Path) -> bytes:
    """A suite .ckpt with the first byte of its first tensor's content flipped (shared.ms_ckpt's framing)."""
    from shared.ms_ckpt import read_ckpt_file

    tensors, _ = read_ckpt_file(src)
    first = next(iter(tensors.values()))
    raw = bytearray(src.read_bytes())
    at = raw.index(first.tobytes())
    raw[at] ^= 0x01
    return bytes(raw)


#: hostile Keras and MindSpore files, read as data: (name, source format, make(valid, dst), exit code, in the message)
FRAMEWORK_FILE_CASES = [
    ("ckpt-truncated", "mindspore", lambda v, d: d.write_bytes(v.read_bytes()[:len(v.read_bytes()) // 2]), 3,
     "not a readable MindSpore checkpoint"),
    ("ckpt-dtype-tag", "mindspore", lambda v, d: d.write_bytes(v.read_bytes().replace(b"Float32", b"Float99", 1)), 3,
     "tensor_type 'Float99'"),
    ("ckpt-oversized-dims", "mindspore", lambda v, d: d.write_bytes(_ckpt_value(b"cls_token", [2**40, 2**40],
                                                                                b"Float32", b"\0" * 16)), 3,
     "claim more than"),
    ("ckpt-length-lie", "mindspore", lambda v, d: d.write_bytes(_ckpt_value(b"x", [1], b"Float32", b"\0" * 4,
                                                                            lie=2**40)), 3, "claims"),
    ("ckpt-map-tensor", "mindspore", lambda v, d: d.write_bytes(b"\x0a\x05\x0a\x01x\x1a\x00"), 3, "MapTensor"),
    ("h5-truncated", "keras-h5", lambda v, d: d.write_bytes(v.read_bytes()[:len(v.read_bytes()) // 2]), 3,
     "not a readable HDF5 weights file"),
    ("h5-float64", "keras-h5", lambda v, d: _h5_edit(v, d, _h5_float64), 4, "dtype float64, expected float32"),
    ("h5-extra-dataset", "keras-h5", lambda v, d: _h5_edit(v, d, lambda f: f.create_dataset("payload", data=[1.0])),
     4, "unexpected dataset 'payload'"),
    ("h5-wrong-shape", "keras-h5", lambda v, d: _h5_edit(v, d, lambda f: (f.__delitem__("vars/0"),
                                                                          f.create_dataset("vars/0", (1, 10**6), "f4"))),
     4, "shape (1, 1000000)"),
    ("keras-truncated", "keras", lambda v, d: d.write_bytes(v.read_bytes()[:len(v.read_bytes()) * 2 // 3]), 3,
     "not a readable"),
    ("keras-h5-member-cut", "keras", lambda v, d: _rezip(v, d, "model.weights.h5", 2000), 3,
     "model.weights.h5: not a readable HDF5 weights file"),
    # one bit of tensor data flipped in place (the member is read as a span of the file: its CRC-32 is checked)
    ("keras-member-bit-flip", "keras", lambda v, d: d.write_bytes(_flip_last_member_byte(v)), 3, "Bad CRC-32"),
    # one low mantissa bit of the first tensor flipped: the file parses and validates, its digest (checked beside the
    # writing) refuses it before anything is moved into place
    ("ckpt-tensor-bit-flip", "mindspore", lambda v, d: d.write_bytes(_flip_first_tensor_byte(v)), 3,
     "does not match the file's digest"),
]


@pytest.mark.parametrize("name,fmt,make,code,says", FRAMEWORK_FILE_CASES, ids=[c[0] for c in FRAMEWORK_FILE_CASES])
def test_hostile_keras_and_mindspore_files_are_typed_errors_naming_the_file(valid_files, tmp_path, capsys, name, fmt,
                                                                            make, code, says):
    """Truncated zip / HDF5 / protobuf, a wrong dtype tag or dtype, oversized dims, a lying length, a stray dataset:
    the typed exit, the file and what is wrong named, nothing written, nothing read past the limits."""
    src = valid_files[fmt]
    bad = tmp_path / f"bad{src.suffix if fmt != 'keras-h5' else '.weights.h5'}"
    make(src, bad)
    out = tmp_path / "out"
    out.mkdir()
    got, err = _cli(["convert", bad, out / "o.safetensors", "--from", fmt, "--preset", "tiny"], capsys)
    assert got == code and str(bad) in err and says in err and "Traceback" not in err, err
    assert os.listdir(out) == []


# ------------------------------------------------------------------ hostile .onnx
def _onnx_with_external(valid_files, directory: Path, location: str, key: str = "head.weight") -> Path:
    """The valid .onnx with one initializer moved to external data at `location` (relative to the model)."""
    import onnx
    from onnx import TensorProto

    model = onnx.load(str(valid_files["onnx"]))
    t = next(t for t in model.graph.initializer if t.name == key)
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", "0"), ("length", str(4 * int(np.prod(t.dims))))):
        e = t.external_data.add()
        e.key, e.value = k, v
    path = directory / "ext.onnx"
    path.write_bytes(model.SerializeToString())
    return path


@pytest.mark.parametrize("where", ["dotdot", "absolute", "symlink"])
def test_onnx_external_data_outside_the_model_directory_is_refused(valid_files, tmp_path, where):
    """External data is read only from inside the model's directory: `..`, an absolute path and a symlink that
    leads out are each an InvalidFileError naming the file, and nothing is read from outside."""
    from shared.deploy.onnx_file import read_onnx
    from shared.errors import InvalidFileError

    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"\0" * 4096)
    inner = tmp_path / "model"
    inner.mkdir()
    location = {"dotdot": "../secret.bin", "absolute": str(secret), "symlink": "link.bin"}[where]
    if where == "symlink":
        (inner / "link.bin").symlink_to(secret)
    path = _onnx_with_external(valid_files, inner, location)
    with pytest.raises(InvalidFileError, match="external data") as e:
        read_onnx(path)
    assert str(path) in str(e.value)


def test_onnx_external_data_inside_the_directory_is_read(valid_files, tmp_path):
    """The same file with its external data beside it reads (the refusals above are not of external data as such)."""
    from shared.deploy.onnx_file import read_onnx

    _, state = read_onnx(valid_files["onnx"])
    (tmp_path / "w.bin").write_bytes(np.ascontiguousarray(state["head.weight"], "<f4").tobytes())
    cfg, back = read_onnx(_onnx_with_external(valid_files, tmp_path, "w.bin"))
    assert np.array_equal(back["head.weight"], state["head.weight"])


def test_onnx_truncated_custom_domain_and_over_the_limit_are_typed_errors(valid_files, tmp_path, monkeypatch, capsys):
    """A truncated protobuf (exit 3 from the CLI), a graph with a custom-op domain, and a file over the size limit:
    each a typed error naming the file, nothing parsed past the refusal."""
    import onnx
    from onnx import helper

    from shared import limits
    from shared.cli import main
    from shared.deploy.onnx_file import read_onnx
    from shared.errors import EXIT_INVALID_FILE, InvalidFileError

    data = valid_files["onnx"].read_bytes()
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidFileError, match="truncated"):
        read_onnx(cut)
    assert main(["convert", str(cut), str(tmp_path / "out.safetensors")]) == EXIT_INVALID_FILE
    assert not (tmp_path / "out.safetensors").exists()

    model = onnx.load(str(valid_files["onnx"]))
    model.opset_import.append(helper.make_opsetid("com.evil", 1))
    model.graph.node.append(helper.make_node("Run", ["logits"], ["pwned"], domain="com.evil"))
    custom = tmp_path / "custom.onnx"
    custom.write_bytes(model.SerializeToString())
    with pytest.raises(InvalidFileError, match="custom-op domain.*com.evil"):
        read_onnx(custom)

    monkeypatch.setattr(limits, "MAX_ONNX_BYTES", len(data) - 1)
    with pytest.raises(InvalidFileError, match="MAX_ONNX_BYTES"):
        read_onnx(valid_files["onnx"])


def test_onnx_of_another_exporter_is_refused_by_name(tmp_path):
    """A valid ONNX graph vit-suite did not write (no vit-suite metadata_props) is refused naming the file."""
    import onnx
    from onnx import TensorProto, helper

    from shared.deploy.onnx_file import read_onnx
    from shared.errors import InvalidFileError

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    path = tmp_path / "foreign.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    with pytest.raises(InvalidFileError, match=f"{path}.*did not write"):
        read_onnx(path)


def _header_of(path: Path) -> tuple[dict, bytes]:
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + n]), data[8 + n:]


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)


@pytest.mark.parametrize("fmt", ["canonical", "timm"])
def test_fuzz_safetensors_header_fields(valid_files, tmp_path_factory, fmt):
    """Rewrite header fields (dtype, shape, data_offsets, __metadata__, the config's fields) with any JSON value,
    and nest the header: a result or a SuiteError, before any tensor is allocated from the lie."""
    header, data = _header_of(valid_files[fmt])
    tensors = sorted(k for k in header if k != "__metadata__")
    cfg_fields = sorted(get_preset("tiny").to_dict())
    before = _rss_peak_kib()

    @FUZZ
    @given(key=st.sampled_from(tensors), field=st.sampled_from(["dtype", "shape", "data_offsets", "__metadata__",
                                                                 "vit_config", "nest"]),
           cfg_field=st.sampled_from(cfg_fields), value=JSON_VALUES, depth=st.integers(1, 100_000))
    def run(key, field, cfg_field, value, depth):
        h = json.loads(json.dumps(header))
        if field == "nest":
            raw = b'{"a":' * depth + b"1" + b"}" * depth
        else:
            if field in ("dtype", "shape", "data_offsets"):
                h[key][field] = value
            elif field == "__metadata__":
                h["__metadata__"] = value
            else:
                meta = h.setdefault("__metadata__", {})
                cfg = json.loads(meta.get("vit_config", json.dumps(get_preset("tiny").to_dict())))
                cfg[cfg_field] = value
                meta["vit_config"] = json.dumps(cfg)
            raw = json.dumps(h).encode()
        work = tmp_path_factory.mktemp("fuzz")
        dst = work / "m.safetensors"
        dst.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
        try:
            _read(dst)
        except SuiteError:
            pass
        _assert_clean(work, {"m.safetensors"}, set(os.listdir(tempfile.gettempdir())))

    run()
    assert _rss_peak_kib() - before < RSS_GROWTH_LIMIT_KIB


@FUZZ
@given(target=st.sampled_from(["config.json", "model.safetensors.index.json"]),
       key=st.sampled_from(["num_attention_heads", "layer_norm_eps", "hidden_act", "qkv_bias", "image_size",
                            "hidden_size", "num_hidden_layers", "hidden_dropout_prob", "weight_map", "model_type"]),
       value=JSON_VALUES, nest=st.integers(0, 50_000))
def test_fuzz_hf_directory_config_and_index(valid_files, tmp_path_factory, target, key, value, nest):
    """config.json fields and the shard index rewritten with any JSON value or nested deep: typed errors only."""
    import shutil

    work = tmp_path_factory.mktemp("fuzz")
    d = work / "hf"
    shutil.copytree(valid_files["hf"], d)
    conf = json.loads((d / "config.json").read_text())
    if target == "config.json":
        conf[key] = value
        text = json.dumps(conf)
    else:
        shard = "model.safetensors"
        text = json.dumps({"weight_map": {"vit.embeddings.cls_token": shard} if key != "weight_map" else value})
        (d / "model.safetensors").rename(d / "shard.safetensors")
        text = text.replace(shard, "shard.safetensors")
    if nest:
        text = '{"a":' * nest + text + "}" * nest
    (d / target).write_text(text)
    names = sorted(p.name for p in d.iterdir())
    try:
        _read(d)
    except SuiteError:
        pass
    assert sorted(p.name for p in d.iterdir()) == names


@FUZZ
@given(dtype=st.sampled_from(["<f4", "<f8", "<f2", "|u1", "<i8", "|b1", "<U5", "|O", "<c8", "|V4"]),
       shape=st.lists(st.integers(0, 2**40), min_size=0, max_size=5), data_len=st.integers(0, 4096),
       fill=st.sampled_from([0.0, 1.0, np.nan, np.inf, -1e300]))
def test_fuzz_npy_inputs(tmp_path_factory, dtype, shape, data_len, fill):
    """Random .npy headers (any dtype, any claimed shape, a billion images) over a few bytes of data: a checked
    array or a SuiteError; the claimed shape is never allocated."""
    from shared.cli.common import load_npy

    work = tmp_path_factory.mktemp("npy")
    path = work / "x.npy"
    header = {"descr": dtype, "fortran_order": False, "shape": tuple(shape)}
    text = repr(header).encode()
    text += b" " * (64 - (10 + len(text) + 1) % 64) + b"\n"
    body = np.full(data_len // 8 + 1, fill, np.float64).tobytes()[:data_len]
    path.write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text + body)
    before = _rss_peak_kib()
    try:
        x = load_npy(str(path), "--input")
    except SuiteError:
        return
    finally:
        assert _rss_peak_kib() - before < RSS_GROWTH_LIMIT_KIB
    assert x.dtype == np.float32 and x.ndim == 4 and x.size > 0 and np.isfinite(x).all()


# ------------------------------------------------------------------ soak
@pytest.mark.slow
def test_soak_run_check_and_the_cli_keep_memory_flat(tmp_path, capsys):
    """run_check 100 times in one process on a tiny model, then `vit-suite check` 20 times from the CLI: the RSS
    after warm-up stays flat (growth bounded), printed for the record."""
    import subprocess
    import sys

    from shared.cli.check import run_check
    from shared.init import random_images

    cfg = get_preset("tiny")
    state = init_weights(cfg, 0)
    weights = W.save(tmp_path / "tiny.safetensors", cfg, state)
    images = random_images(cfg, 2, 0)

    def rss_now_kib() -> int:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))

    rss = []
    for i in range(100):
        result = run_check(cfg, weights, images, ["torch"], state=state)
        assert result.passed
        rss.append(rss_now_kib())
    with capsys.disabled():
        print(f"\nrun_check x100 RSS (MiB): after 10 {rss[9] / 1024:.1f}, after 50 {rss[49] / 1024:.1f}, "
              f"after 100 {rss[-1] / 1024:.1f}")
    assert rss[-1] - rss[9] < 50 * 1024, f"RSS grew {(rss[-1] - rss[9]) / 1024:.1f} MiB after warm-up"

    peaks = []
    for i in range(20):
        r = subprocess.run(["/usr/bin/time", "-f", "%M", sys.executable, "-m", "shared.cli", "check", str(weights),
                            "--backends", "torch"], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        peaks.append(int(r.stderr.strip().splitlines()[-1]))
    with capsys.disabled():
        print(f"vit-suite check x20 peak RSS (MiB): first {peaks[0] / 1024:.1f}, max {max(peaks) / 1024:.1f}, "
              f"last {peaks[-1] / 1024:.1f}")
    assert max(peaks[2:]) < 1.2 * min(peaks[2:]) + 20 * 1024


# ------------------------------------------------------------------ the last gaps: full disks, stale names, metadata
# Each case is what a user met (issue 28): a typed exit naming the user's file, no traceback, nothing left behind.
DEAD_PID = 999_999_999  # above any pid_max: never a live process

#: every writer `convert` reaches, by destination (and --to where the suffix does not tell)
WRITERS = [("o.safetensors", None), ("t.safetensors", "timm"), ("timmdir", "timm"), ("o.pt", None),
           ("o.keras", None), ("o.weights.h5", None), ("o.ckpt", None), ("hfdir", None), ("o.onnx", None)]


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny") / "tiny.safetensors"
    cfg = get_preset("tiny")
    W.save(path, cfg, init_weights(cfg, 0))
    return path


@pytest.fixture(scope="module")
def full_disk(tmp_path_factory):
    """(folder, filling, mounted): a folder on a 64 KiB tmpfs (as root) where the tiny model's ~100 KB files cannot
    fit, and a context in which writes fail. Without the right to mount, writes fail by RLIMIT_FSIZE (SIGXFSZ
    ignored: EFBIG, an OSError like ENOSPC) inside the context; a failing write leaves nothing, so the folder stays
    empty and serves every case."""
    import contextlib
    import signal
    import subprocess

    folder = tmp_path_factory.mktemp("full")
    mounted = os.geteuid() == 0 and subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)],
                                                   capture_output=True).returncode == 0

    @contextlib.contextmanager
    def filling():
        if mounted:
            yield
            return
        old_sig = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        old = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (48 * 1024, old[1]))
        try:
            yield
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, old)
            signal.signal(signal.SIGXFSZ, old_sig)

    yield folder, filling, mounted
    if mounted:
        subprocess.run(["umount", str(folder)], check=True)


@pytest.fixture
def private_tmp(tmp_path, monkeypatch):
    """The system temp folder, made private to this test: whatever a library leaves there is this test's."""
    d = tmp_path / "systmp"
    d.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(d))
    return d


def _cli(argv, capsys) -> tuple[int, str]:
    from shared.cli import main

    capsys.readouterr()
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, " ".join((out.out + out.err).split())  # the console wraps long lines


@pytest.mark.parametrize("name,to", WRITERS)
def test_a_full_disk_is_exit_2_naming_the_destination_and_leaves_nothing(tiny_weights, full_disk, private_tmp,
                                                                         capsys, name, to):
    """convert to every format on a full disk: exit 2 naming the destination (not a temporary name), no
    traceback; nothing beside it (a `..NAME.PID.x.partial.ckpt.PID.y.partial.tmp` was left) and nothing in the
    temp folder (Keras' `tmpXXXX/assets` was)."""
    folder, filling, _ = full_disk  # HDF5 builds the Keras files in memory: RLIMIT_FSIZE serves them too
    dst = folder / name
    with filling():
        code, err = _cli(["convert", tiny_weights, dst] + (["--to", to] if to else []), capsys)
    assert code == 2, err
    assert f"{dst}: writing failed" in err and "Traceback" not in err and "unexpected error" not in err, err
    assert os.listdir(folder) == [] and os.listdir(private_tmp) == []


def test_init_reference_and_a_new_subfolder_on_a_full_disk(tiny_weights, full_disk, private_tmp, tmp_path, capsys):
    """init, reference --output (np.savez's half-written archive printed a traceback from its finaliser), and a
    destination in folders the writer creates: exit 2 naming it, the folders removed again."""
    folder, filling, _ = full_disk
    x = tmp_path / "x.npy"
    np.save(x, np.random.default_rng(0).standard_normal((64, 3, 32, 32)).astype(np.float32))  # ~400 KB of stages
    cases = [["init", "tiny", folder / "i.safetensors"], ["init", "tiny", folder / "sub" / "deeper" / "i.safetensors"],
             ["reference", tiny_weights, "--input", x, "--output", folder / "sub" / "r.npz"]]
    for argv in cases:
        with filling():
            code, err = _cli(argv, capsys)
        assert code == 2 and f"{argv[-1]}: writing failed" in err and "Traceback" not in err, err
        assert os.listdir(folder) == [] and os.listdir(private_tmp) == [], argv


def _stale_names(name: str) -> list[str]:
    """What a SIGKILLed writer to NAME leaves beside it: this version's staging folder, and the nested names of the
    earlier versions (an atomic writer inside another, and the library's own `.tmp`)."""
    suffix = "." + name.split(".", 1)[1] if "." in name else ""
    d = DEAD_PID
    return [f".{name}.{d}.abcd1234.partial", f"..{name}.{d}.abcd1234.partial{suffix}.{d}.efgh5678.partial",
            f"..{name}.{d}.abcd1234.partial{suffix}.{d}.efgh5678.partial.tmp",
            f"..{name}.{d}.abcd1234.partial{suffix}.{d}.ijkl9012.partial", f".{name}.{d}.mnop3456.partial"]


@pytest.mark.parametrize("name,fmt", [("o.safetensors", "canonical"), ("o.pt", "torch"), ("o.keras", "keras"),
                                      ("o.weights.h5", "keras-h5"), ("o.ckpt", "mindspore"), ("hfdir", "hf")])
def test_the_next_write_removes_every_stale_name_of_a_killed_writer(tmp_path, name, fmt):
    """After a SIGKILL mid-write: the next write to the same destination removes every temporary name of the dead
    writer (nested ones included, and what a library left in its staging folder), and nothing of a live writer or of
    another destination. A successful write leaves only the destination."""
    from shared.convert.io import write_any

    cfg = get_preset("tiny").replace(resize_kernel="bicubic")
    stale = _stale_names(name)
    for s in stale[:-1]:
        (tmp_path / s).write_bytes(b"partial")
    stage = tmp_path / stale[-1]  # this version's staging folder: the file, and a library's temporary folder
    (stage / "tmpabcdefgh" / "assets").mkdir(parents=True)
    (stage / name).write_bytes(b"half a file")
    keep = [f".{name}.{os.getpid()}.qrst7890.partial", f".other{name}.{DEAD_PID}.abcd1234.partial"]
    for k in keep:
        (tmp_path / k).write_bytes(b"not this run's")
    write_any(str(tmp_path / name), fmt, cfg, init_weights(cfg, 0))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([name, *keep])


def test_convert_force_over_a_file_where_a_directory_goes_leaves_only_the_directory(tiny_weights, tmp_path, capsys):
    dst = tmp_path / "hfdir"
    dst.write_text("a file in the way")
    code, err = _cli(["convert", tiny_weights, dst, "--to", "hf", "--force"], capsys)
    assert code == 0, err
    assert [p.name for p in tmp_path.iterdir()] == ["hfdir"] and (dst / "config.json").is_file()  # no .hfdir.old.PID


#: a garbage value for every metadata field the suite reads, with what the message says it must be
GARBAGE_METADATA = {"format": "pt", "format_version": "7", "init_seed": "-1", "split_seed": "abc",
                    "train_step": "1.5", "train_seconds": "inf", "heldout_fraction": "2",
                    "train_recipe": "[1, 2]", "train_history": "{\"a\": 1}", "normalisation": "not json",
                    "image_size": "[16]", "classes": "[\"a\", \"b\"]", "heldout_predictions_reference": "[0, 99]",
                    "heldout_top1_torch": "nan", "heldout_top5_reference": "1.5"}


def test_every_metadata_field_is_checked_when_the_file_is_read(tiny_weights, tmp_path):
    """A canonical file's metadata is checked like its config, field by field (exit 3 naming file and field); the
    shipped digits model (written by `train`) carries every field of a digits run and passes."""
    from safetensors.numpy import save_file

    from shared.errors import InvalidFileError
    from shared.training.data import DEFAULT_MODEL_PATH

    shipped = W.read_metadata(DEFAULT_MODEL_PATH)
    assert set(W.METADATA_FIELDS) - set(shipped) == {"init_seed", "classes"}  # a digits run: no folder classes
    assert not set(GARBAGE_METADATA) ^ (set(W.METADATA_FIELDS) | {"heldout_top1_torch", "heldout_top5_reference"})
    cfg, state = W.load(tiny_weights)
    base = {"vit_config": cfg.to_json()}
    for key, value in GARBAGE_METADATA.items():
        path = tmp_path / f"{key}.safetensors"
        save_file(state, str(path), metadata={**base, key: value})
        for read in (W.load, W.read_metadata):
            with pytest.raises(InvalidFileError, match=f"{path}: metadata field '{key}' must be"):
                read(path)


@pytest.mark.parametrize("command,key,value,spec", [
    ("evaluate", "split_seed", "abc", "digits"),  # was exit 1: ValueError: invalid literal for int()
    ("predict", "classes", "[not json", "digits:0"),  # was exit 1: JSONDecodeError
    ("predict", "classes", "[\"a\", \"b\"]", "digits:0"),  # was exit 1: IndexError
])
def test_evaluate_and_predict_refuse_garbage_metadata_by_file_and_field(tiny_weights, tmp_path, capsys, command,
                                                                        key, value, spec):
    from safetensors.numpy import save_file

    cfg, state = W.load(tiny_weights)
    path = tmp_path / "m.safetensors"
    save_file(state, str(path), metadata={"vit_config": cfg.to_json(), key: value})
    code, err = _cli([command, path, spec, "--backend", "torch"], capsys)
    assert code == 3 and f"{path}: metadata field '{key}'" in err and "Traceback" not in err, err


def test_user_strings_print_as_written(tiny_weights, tmp_path, capsys, monkeypatch):
    """`digits:abc:` printed `digits🔤` (an emoji code); a file name or a class name with `[red]` or `[/]` was read
    as markup (or crashed the console). Now every user string prints as written."""
    from safetensors.numpy import save_file

    from shared.training.data import DEFAULT_MODEL_PATH

    code, err = _cli(["predict", DEFAULT_MODEL_PATH, "digits:abc:", "--backend", "torch"], capsys)
    assert code == 2 and "digits:abc:" in err and "\U0001f524" not in err, err
    odd = tmp_path / "we[red]ird:abc:.safetensors"
    odd.write_bytes(tiny_weights.read_bytes())
    code, out = _cli(["inspect", odd], capsys)
    assert code == 0 and str(odd) in out, out
    cfg, state = W.load(tiny_weights)
    classes = ["[/]", "[red]x", ":abc:"] + [f"c{i}" for i in range(3, cfg.num_classes)]
    path = tmp_path / "classes.safetensors"
    save_file(state, str(path), metadata={"vit_config": cfg.to_json(), "classes": json.dumps(classes)})
    from PIL import Image

    monkeypatch.chdir(tmp_path)  # a short name: the table has room for it
    image = "[b]:abc:.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(image)
    code, out = _cli(["predict", path, image, "--backend", "torch"], capsys)
    assert code == 0 and all(c in out for c in classes[:3]) and image in out, out


def test_a_wrong_from_names_the_users_file(tiny_weights, tmp_path, capsys):
    """`--from keras` on a safetensors file named the suite's link (`.../vit-suite-src-PID-x/weights.keras`)."""
    for fmt in ("keras", "mindspore"):
        code, err = _cli(["convert", tiny_weights, tmp_path / "out.safetensors", "--from", fmt], capsys)
        assert code == 3 and f"{tiny_weights}: not a readable" in err and "vit-suite-src-" not in err, err
    assert os.listdir(tmp_path) == []


def test_inspect_reads_what_it_describes(tmp_path, capsys):
    """Garbage that sniffs as a torch pickle (first byte 0x80) or as HDF5 was described as convertible (exit 0):
    inspect reads the file, and says what it could not read (exit 3)."""
    garbage = tmp_path / "g.bin"
    garbage.write_bytes(b"\x80" + np.random.default_rng(0).bytes(4000))
    h5 = tmp_path / "c.weights.h5"
    h5.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(range(256)) * 8)
    for path, what in ((garbage, "not a safe PyTorch checkpoint"), (h5, "not a readable HDF5 weights file")):
        code, err = _cli(["inspect", path], capsys)
        assert code == 3 and f"{path}: {what}" in err and "convert it first" not in err, err
