"""Canonical weight files: bit-exact round trip, strict validation, clean failures, CLI exit codes."""
import json
import struct

import numpy as np
import pytest
from safetensors.numpy import save_file

from shared import errors as E
from shared import fileio as F
from shared import weights as W
from shared.cli import main
from shared.init import init_weights
from shared.presets import PRESETS, get_preset

from shared.testing import TINY_PRESETS


def _meta(cfg):
    return {"format": W.FORMAT_NAME, "format_version": W.FORMAT_VERSION, "vit_config": cfg.to_json()}


@pytest.mark.parametrize("preset", TINY_PRESETS + ["seed_t2t_walkthrough"])
def test_round_trip_is_bit_exact(tmp_path, preset):
    cfg = get_preset(preset)
    state = init_weights(cfg, 5)
    path = W.save(tmp_path / "w.safetensors", cfg, state)
    cfg2, state2 = W.load(path)
    assert cfg2 == cfg
    assert set(state2) == set(state)
    for k in state:
        assert state2[k].dtype == np.float32 and np.array_equal(state2[k], state[k]), k


def _init_case(name: str, cfg):
    """Presets over 30 M parameters are slow (seconds each to draw), except the seed tutorials': the init code is
    one loop over expected_shapes, which the tiny presets (every option) and the seeds cover, and each family
    preset's shapes are checked against timm's own model in test_family_presets.py."""
    n = W.parameter_count(cfg)
    return pytest.param(name, marks=pytest.mark.slow) if n > 100e6 or (n > 30e6 and not name.startswith("seed_")) \
        else name


@pytest.mark.parametrize("preset", [_init_case(n, c) for n, c in sorted(PRESETS.items())])
def test_init_covers_exactly_the_expected_keys(preset):
    cfg = get_preset(preset)
    state = init_weights(cfg, 0)
    W.validate_state(cfg, state)  # raises on any mismatch


def test_init_is_deterministic_and_seeded():
    cfg = get_preset("tiny")
    a, b, c = init_weights(cfg, 1), init_weights(cfg, 1), init_weights(cfg, 2)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["blocks.0.attn.qkv.weight"], c["blocks.0.attn.qkv.weight"])
    # every parameter is non-trivial, so every parameter is exercised by the tests
    assert all(np.std(v) > 0 or v.size == 1 for v in a.values())


@pytest.fixture
def tiny():
    cfg = get_preset("tiny")
    return cfg, init_weights(cfg, 0)


def _bad_file(tmp_path, cfg, state, meta=None):
    path = tmp_path / "bad.safetensors"
    save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, str(path), metadata=meta or _meta(cfg))
    return path


@pytest.mark.parametrize("mutation,expected", [
    ("missing", r"missing key 'blocks.1.mlp.fc2.bias' \(expected shape \(32,\)\)"),
    ("extra", r"unexpected key 'blocks.0.ls1.gamma' \(shape \(32,\)\)"),
    ("shape", r"key 'head.weight': expected shape \(10, 32\), got \(32, 10\)"),
    ("dtype", r"key 'norm.weight': expected dtype float32, got float64"),
    ("nan", r"key 'pos_embed': 1 non-finite value"),
])
def test_bad_state_is_reported_by_name(tmp_path, tiny, mutation, expected):
    cfg, state = tiny
    state = dict(state)
    if mutation == "missing":
        del state["blocks.1.mlp.fc2.bias"]
    elif mutation == "extra":
        state["blocks.0.ls1.gamma"] = np.ones(32, np.float32)
    elif mutation == "shape":
        state["head.weight"] = np.ascontiguousarray(state["head.weight"].T)
    elif mutation == "dtype":
        state["norm.weight"] = state["norm.weight"].astype(np.float64)
    elif mutation == "nan":
        state["pos_embed"] = state["pos_embed"].copy()
        state["pos_embed"][0, 3, 4] = np.nan
    path = _bad_file(tmp_path, cfg, state)
    with pytest.raises(E.MismatchError, match=expected) as e:
        W.load(path)
    assert str(path) in str(e.value)
    assert main(["inspect", str(path)]) == E.EXIT_MISMATCH


def test_every_problem_is_listed_at_once(tmp_path, tiny):
    cfg, state = tiny
    state = dict(state)
    del state["cls_token"]
    state["extra"] = np.zeros(2, np.float32)
    with pytest.raises(E.MismatchError) as e:
        W.load(_bad_file(tmp_path, cfg, state))
    assert len(e.value.problems) == 2


def test_truncated_file(tmp_path, tiny):
    cfg, state = tiny
    path = W.save(tmp_path / "w.safetensors", cfg, state)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    with pytest.raises(E.InvalidFileError, match="truncated file or a header lying"):
        W.load(path)
    assert main(["inspect", str(path)]) == E.EXIT_INVALID_FILE


def test_header_lying_about_sizes(tmp_path, tiny):
    cfg, state = tiny
    path = W.save(tmp_path / "w.safetensors", cfg, state)
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    start, end = header["head.bias"]["data_offsets"]
    header["head.bias"]["data_offsets"] = [start, end + 10_000_000]
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n:])
    with pytest.raises(E.InvalidFileError, match="'head.bias' claims bytes"):
        W.load(path)


@pytest.mark.parametrize("content", [b"", b"\x00" * 4, b"hello world, not weights" * 10, b"\xff" * 64,
                                     struct.pack("<Q", 10) + b"not json!!"])
def test_not_safetensors(tmp_path, content):
    path = tmp_path / "junk.safetensors"
    path.write_bytes(content)
    with pytest.raises(E.InvalidFileError, match=str(path)):
        W.load(path)
    assert main(["inspect", str(path)]) == E.EXIT_INVALID_FILE


def test_safetensors_without_config_is_not_canonical(tmp_path, tiny):
    cfg, state = tiny
    path = _bad_file(tmp_path, cfg, state, meta={"format": "pt"})
    with pytest.raises(E.InvalidFileError, match="no 'vit_config' in the safetensors metadata"):
        W.load(path)


def test_failed_save_leaves_nothing_behind(tmp_path, tiny):
    cfg, state = tiny
    state = dict(state)
    state["head.weight"] = state["head.weight"][:3]
    with pytest.raises(E.MismatchError):
        W.save(tmp_path / "out.safetensors", cfg, state)
    assert list(tmp_path.iterdir()) == []


def test_save_replaces_atomically(tmp_path, tiny):
    cfg, state = tiny
    path = W.save(tmp_path / "w.safetensors", cfg, state)
    before = path.read_bytes()

    def boom(_):
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        F.atomic_write(path, boom)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]


def test_bfloat16_files_are_read_exactly(tmp_path):
    import ml_dtypes

    path = tmp_path / "bf16.safetensors"
    values = np.array([1.0, -2.5, 3.140625, 1e-3], np.float32).astype(ml_dtypes.bfloat16)
    # safetensors' numpy API cannot write bf16: write the file by hand
    header = json.dumps({"x": {"dtype": "BF16", "shape": [4], "data_offsets": [0, 8]}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + values.tobytes())
    tensors, _ = W.read_tensors(path)
    np.testing.assert_array_equal(tensors["x"], values.astype(np.float32))


def _safetensors_bytes(meta: dict | None, header_len: int) -> bytes | None:
    """One 2x3 float32 tensor in a safetensors file whose JSON header is exactly `header_len` bytes (space padded,
    as the format allows), or None when the header cannot be that short."""
    header = {"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}}
    if meta is not None:
        header = {"__metadata__": meta, **header}
    raw = json.dumps(header, separators=(",", ":")).encode()
    if len(raw) > header_len:
        return None
    return struct.pack("<Q", header_len) + raw.ljust(header_len, b" ") + np.arange(6, dtype="<f4").tobytes()


def test_format_detection_reads_the_safetensors_header_for_every_length(tmp_path, tiny):
    """Format detection reads safetensors structurally (length, then JSON) before any pickle sniffing. The first
    byte of a safetensors file is the low byte of its header length, 0x80 for about one file in 256: taken for a
    legacy torch pickle, such a canonical file lost its config. Every header length up to 4096 bytes, canonical
    (config in the metadata) and timm (no metadata); a real legacy torch pickle is still a torch file."""
    import torch
    from safetensors.numpy import load_file

    from shared.convert.formats import detect_format

    cfg, _ = tiny
    seen = {"canonical": 0, "timm": 0}
    for kind, meta in (("canonical", _meta(cfg)), ("timm", None)):
        for n in range(4097):
            data = _safetensors_bytes(meta, n)
            if data is None:
                continue
            f = tmp_path / f"{kind}_{n}.safetensors"
            f.write_bytes(data)
            assert detect_format(f) == kind, (kind, n, data[:1])
            if n % 256 == 0x80:
                assert data[:1] == b"\x80" and np.array_equal(load_file(f)["w"], np.arange(6, dtype=np.float32).reshape(2, 3))
            f.unlink()
            seen[kind] += 1
    assert seen["timm"] > 4000 and seen["canonical"] > 2000, seen
    legacy = tmp_path / "legacy.pt"
    torch.save({"w": torch.zeros(2)}, legacy, _use_new_zipfile_serialization=False)
    assert legacy.read_bytes()[:1] == b"\x80" and detect_format(legacy) == "torch"


def test_a_canonical_file_whose_header_length_ends_in_0x80_converts(tmp_path, tiny):
    """End to end: `inspect` and `convert` read the config of a canonical file whose first byte is 0x80 (the notes
    metadata, e.g. a source path, sets the header length)."""
    cfg, state = tiny
    for pad in range(256):
        path = W.save(tmp_path / "w.safetensors", cfg, state, metadata={"notes": "x" * pad})
        if path.read_bytes()[:1] == b"\x80":
            break
    else:
        raise AssertionError("no notes length gave a header length ending in 0x80")
    assert main(["inspect", str(path)]) == 0
    assert main(["convert", str(path), str(tmp_path / "out.safetensors")]) == 0
    cfg2, state2 = W.load(tmp_path / "out.safetensors")
    assert cfg2 == cfg and all(np.array_equal(state2[k], state[k]) for k in state)


def _rewrite_header(path, edit):
    """Rewrite a safetensors file's header with edit(header) -> header (or raw bytes), keeping the data."""
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = edit(json.loads(data[8:8 + n]))
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n:])
    return path


def _set(key, field, value):
    def edit(h):
        h[key][field] = value
        return h
    return edit


@pytest.mark.parametrize("edit,message", [
    (lambda h: b'{"a":' * 50_000 + b"1" + b"}" * 50_000, "nested"),
    (_set("head.bias", "data_offsets", ["0", "40"]), "data_offsets must be two non-negative ints"),
    (_set("head.bias", "data_offsets", [0]), "data_offsets must be two non-negative ints"),
    (_set("head.bias", "data_offsets", [True, 40]), "data_offsets must be two non-negative ints"),
    (_set("head.bias", "shape", [-1]), "shape must be a list"),
    (_set("head.bias", "shape", "10"), "shape must be a list"),
    (_set("head.bias", "shape", [10**12]), "span"),
    (_set("head.bias", "dtype", "F128"), "dtype 'F128'"),
    (lambda h: h | {"__metadata__": ["not", "a", "dict"]}, "'__metadata__' must be an object"),
    (lambda h: h | {"__metadata__": {"vit_config": 5}}, "'__metadata__' must be an object"),
    (lambda h: h | {"head.bias": "garbage"}, "expected an object"),
    (lambda h: h | {"dup": dict(h["head.weight"])}, "claim .* bytes in all"),
    (lambda h: [1, 2, 3], "not an object"),
], ids=["nested", "offsets_str", "offsets_short", "offsets_bool", "shape_negative", "shape_str", "shape_huge",
        "dtype", "metadata_list", "metadata_int", "tensor_str", "overlap", "list"])
def test_hostile_headers_are_invalid_files(tmp_path, tiny, edit, message):
    """Valid JSON of the wrong shape is refused by name before any tensor is read: never a RecursionError,
    TypeError or KeyError (exit 1)."""
    cfg, state = tiny
    path = _rewrite_header(W.save(tmp_path / "w.safetensors", cfg, state), edit)
    with pytest.raises(E.InvalidFileError, match=message):
        W.load(path)
    assert main(["inspect", str(path)]) == E.EXIT_INVALID_FILE


@pytest.mark.parametrize("changes,code", [
    ({"depth": 10**9}, E.EXIT_INVALID_FILE),  # the config itself is refused (a limit), nothing is allocated
    ({"depth": 1000}, E.EXIT_MISMATCH),  # a legal config the tensors do not match: checked against the header
    ({"layer_norm_eps": "1e-6"}, E.EXIT_INVALID_FILE),
    ({"final_norm": "false"}, E.EXIT_INVALID_FILE),
])
def test_a_config_is_checked_against_the_header_before_anything_is_read(tmp_path, tiny, capsys, changes, code):
    import resource

    cfg, state = tiny
    d = cfg.to_dict() | changes

    def edit(h):
        h["__metadata__"]["vit_config"] = json.dumps(d)
        return h

    path = _rewrite_header(W.save(tmp_path / "w.safetensors", cfg, state), edit)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    capsys.readouterr()
    assert main(["inspect", str(path)]) == code
    err = capsys.readouterr().err
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # KiB: no model was built
    assert len(err) < 5000 and list(changes)[0] in err or "problem(s)" in err
    if code == E.EXIT_MISMATCH:
        assert "... and " in err and " more" in err  # 16,000 missing keys: the first 20, then a count


def test_error_lists_are_capped(tmp_path, tiny):
    """100k extra keys: the exception keeps every problem, the message shows the first 20 and 'and N more'."""
    from shared import limits

    cfg, state = tiny
    extra = {f"extra.{i}": np.zeros(1, np.float32) for i in range(100_000)}
    with pytest.raises(E.MismatchError) as e:
        W.validate_state(cfg, {**state, **extra}, source="big")
    assert len(e.value.problems) == 100_000
    msg = str(e.value)
    assert msg.count("\n") == limits.MAX_LISTED_PROBLEMS + 1 and f"... and {100_000 - 20:,} more" in msg
    assert len(msg) < 3000


def test_canonical_writer_is_safetensors_own_bytes(tmp_path):
    """write_safetensors (W.save's writer: each tensor written as it is, a transposed view in bands) against
    safetensors' save_file of the contiguous copies: the same bytes (one metadata key: safetensors orders several
    at random), for names out of order and non-ASCII, a zero-size tensor, a transposed view larger than one band,
    and metadata that JSON must escape."""
    rng = np.random.default_rng(0)
    tensors = {"b.x": rng.random((5, 7), dtype=np.float32).T, "a": rng.random(3, dtype=np.float32),
               "é.w": rng.random((2, 1, 3), dtype=np.float32), "Z": np.zeros((0, 4), np.float32),
               "big": rng.random((300, 700), dtype=np.float32).T, "sliced": rng.random((6, 8), dtype=np.float32)[:, ::2]}
    meta = {"vit_config": 'a "quoted"\n\t\x01 é ✓ \u2028 /\\ value'}
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(tmp_path / "lib.safetensors"), metadata=meta)
    W.write_safetensors(tmp_path / "ours.safetensors", tensors, meta)
    assert (tmp_path / "ours.safetensors").read_bytes() == (tmp_path / "lib.safetensors").read_bytes()


def test_read_tensors_maps_the_file_without_letting_it_change(tmp_path, tiny):
    """read_tensors' arrays are views of a memory map: writable ones write the process's copy, never the file; the
    importers' read-only ones refuse writes."""
    cfg, state = tiny
    path = W.save(tmp_path / "w.safetensors", cfg, state)
    before = path.read_bytes()
    got, _ = W.read_tensors(path)
    got["head.weight"][...] = 7.0
    assert path.read_bytes() == before and np.array_equal(W.load(path)[1]["head.weight"], state["head.weight"])
    frozen, _ = W.read_tensors(path, writable=False)
    with pytest.raises(ValueError):
        frozen["head.weight"][...] = 7.0
