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
                                 "mindspore"])
def test_fuzz_every_file_format_gives_only_typed_errors(valid_files, tmp_path_factory, fmt):
    """Truncations, byte flips and insertions anywhere in a valid file: a result or a SuiteError, nothing else."""
    before = _rss_peak_kib()

    @FUZZ
    @given(ops=MUTATIONS)
    def run(ops):
        _fuzz_file(valid_files, fmt, ops, tmp_path_factory)

    run()
    assert _rss_peak_kib() - before < RSS_GROWTH_LIMIT_KIB


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
