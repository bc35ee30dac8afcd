"""The .onnx file: written atomically from (config, canonical state), read back safely and bit-exact.

    write_onnx("model.onnx", cfg, state, stages=False)     # shared.deploy.onnx_graph.build_graph, checked
    cfg, state = read_onnx("model.onnx")                   # only graphs vit-suite wrote

Reading is data only: the protobuf is parsed (nothing in it is run), then

  - the file is at most shared.limits.MAX_ONNX_BYTES (protobuf's own 2 GiB), its external data at most
    MAX_ONNX_EXTERNAL_BYTES in all; an external-data file must be a relative path inside the model's directory
    (no `..`, not absolute, no symlink out of it) and its offset/length must lie inside that file;
  - custom-op domains (any opset or node domain other than the default ONNX one) and model-local functions are
    refused;
  - the graph must be one this suite wrote (metadata_props: format vit-suite, vit_config): any other graph is
    refused naming the file (`vit-suite check --against` is the route for a foreign export);
  - the config and metadata are checked like a canonical file's (shared.weights.validate_metadata), every canonical
    initializer by name, shape and dtype (validate_state), and the weights against `weights_sha256`.

Every refusal is an InvalidFileError (exit 3) or a MismatchError naming the file.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import numpy as np

from .. import limits as L
from .. import weights as W
from ..config import ViTConfig
from ..errors import InvalidFileError, MismatchError
from ..fileio import atomic_write
from .onnx_graph import DIGEST_KEY, GRAPH_NAME, build_graph, checked_bytes, weights_sha256

#: the opset domains a graph of this suite uses ("" and its alias "ai.onnx": the standard operators)
STANDARD_DOMAINS = ("", "ai.onnx")


def write_onnx(path: str | os.PathLike, cfg: ViTConfig, state: Mapping[str, np.ndarray], *, stages: bool = False,
               overwrite: bool = True) -> Path:
    """Export to `path` atomically (nothing is left behind on failure); stages=True adds every stage as an output.
    A model over protobuf's 2 GiB limit is refused (external data is not written)."""
    data = checked_bytes(build_graph(cfg, state, stages=stages))

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    return atomic_write(path, write, overwrite=overwrite)


def parse_onnx(path: str | os.PathLike, *, functions: bool = False):
    """The ModelProto of `path`, parsed as data within the size limit, custom-op domains refused (in the graph and in
    model-local functions, which are refused unless `functions`); external data is not loaded (read_onnx resolves
    it, safely; open_onnx checks every reference without reading it)."""
    import onnx
    from google.protobuf.message import DecodeError

    p = Path(path)
    if not p.is_file():
        raise InvalidFileError(f"{p}: no such file")
    size = p.stat().st_size
    if size > L.MAX_ONNX_BYTES:
        raise InvalidFileError(f"{p}: {size:,} bytes, over the {L.MAX_ONNX_BYTES:,}-byte limit of an .onnx file "
                               f"(shared.limits.MAX_ONNX_BYTES)")
    model = onnx.ModelProto()
    try:
        model.ParseFromString(p.read_bytes())
    except (DecodeError, RuntimeError, ValueError) as e:
        raise InvalidFileError(f"{p}: not a valid ONNX protobuf (truncated or damaged): {e}") from None
    domains = sorted(({o.domain for o in model.opset_import}
                      | {n.domain for g in [model.graph, *model.functions] for n in g.node}) - set(STANDARD_DOMAINS))
    if domains:
        raise InvalidFileError(f"{p}: custom-op domain(s) {domains} refused: the suite reads graphs of standard ONNX "
                               f"operators only")
    if len(model.functions) and not functions:
        raise InvalidFileError(f"{p}: model-local functions {[f.name for f in model.functions][:5]} refused")
    return model


def open_onnx(path: str | os.PathLike):
    """An .onnx of any exporter, checked before a runtime sees it (`check --against`): parse_onnx (functions of
    standard operators allowed), and every external-data reference inside the model's directory, within its file and
    under the limit (nothing read). InvalidFileError naming the file and what is wrong otherwise."""
    from onnx import TensorProto

    model = parse_onnx(path, functions=True)
    budget = [0]
    for t in model.graph.initializer:
        if t.data_location == TensorProto.EXTERNAL:
            _external_span(t, Path(path).parent, str(path), budget)
    return model


def _external_span(tensor, directory: Path, source: str, budget: list[int]) -> tuple[Path, int, int]:
    """(file, offset, length) of an initializer stored as external data, resolved only inside `directory`, in
    bounds, counted against the limit."""
    info = {e.key: e.value for e in tensor.external_data}
    loc = info.get("location", "")
    rel = Path(loc)
    if not loc or rel.is_absolute() or ".." in rel.parts or "\x00" in loc:
        raise InvalidFileError(f"{source}: initializer {tensor.name!r}: external data location {loc!r} refused "
                               f"(a relative path inside the model's directory is required)")
    root = directory.resolve()
    target = (directory / rel).resolve()
    if root not in target.parents or not target.is_file():
        raise InvalidFileError(f"{source}: initializer {tensor.name!r}: external data {loc!r} resolves to {target}, "
                               f"outside the model's directory {root} or not a file")
    try:
        offset, length = int(info.get("offset", 0)), int(info.get("length", -1))
    except ValueError:
        raise InvalidFileError(f"{source}: initializer {tensor.name!r}: bad external data offset/length") from None
    size = target.stat().st_size
    if length < 0:
        length = size - offset
    if offset < 0 or offset + length > size:
        raise InvalidFileError(f"{source}: initializer {tensor.name!r}: external data [{offset}, {offset + length}) "
                               f"lies outside {loc} ({size} bytes)")
    budget[0] += length
    if budget[0] > L.MAX_ONNX_EXTERNAL_BYTES:
        raise InvalidFileError(f"{source}: external data over the {L.MAX_ONNX_EXTERNAL_BYTES:,}-byte limit "
                               f"(shared.limits.MAX_ONNX_EXTERNAL_BYTES)")
    return target, offset, length


def _external_bytes(tensor, directory: Path, source: str, budget: list[int]) -> bytes:
    """The bytes of an initializer stored as external data (`_external_span`)."""
    target, offset, length = _external_span(tensor, directory, source, budget)
    with open(target, "rb") as f:
        f.seek(offset)
        return f.read(length)


def _tensor(tensor, directory: Path, source: str, budget: list[int]) -> np.ndarray:
    from onnx import TensorProto, numpy_helper

    if tensor.data_type != TensorProto.FLOAT:
        raise MismatchError(source, [f"initializer {tensor.name!r}: ONNX data type {tensor.data_type}, expected "
                                     f"FLOAT (float32)"])
    shape = tuple(int(d) for d in tensor.dims)
    if tensor.data_location == TensorProto.EXTERNAL:
        raw = _external_bytes(tensor, directory, source, budget)
        n = int(np.prod(shape, dtype=np.int64)) * 4
        if len(raw) != n:
            raise InvalidFileError(f"{source}: initializer {tensor.name!r}: {len(raw)} external bytes, its shape "
                                   f"{shape} needs {n}")
        return np.frombuffer(raw, dtype="<f4").reshape(shape).astype(np.float32)
    n = int(np.prod(shape, dtype=np.int64))
    held = len(tensor.raw_data) // 4 if tensor.HasField("raw_data") else len(tensor.float_data)
    if held != n or (tensor.HasField("raw_data") and len(tensor.raw_data) != 4 * n):
        raise InvalidFileError(f"{source}: initializer {tensor.name!r} holds {held} values, its shape {shape} "
                               f"needs {n}")
    return np.array(numpy_helper.to_array(tensor), dtype=np.float32).reshape(shape)


def read_onnx(path: str | os.PathLike) -> tuple[ViTConfig, dict[str, np.ndarray]]:
    """(config, canonical float32 state) of an .onnx this suite wrote, bit-exact (see the module docstring)."""
    source = str(path)
    model = parse_onnx(path)
    meta = {p.key: p.value for p in model.metadata_props}
    if meta.get("format") != W.FORMAT_NAME or "vit_config" not in meta or model.graph.name != GRAPH_NAME:
        raise InvalidFileError(f"{source}: an ONNX graph vit-suite did not write (no vit-suite metadata_props: "
                               f"format, vit_config): only the suite's own exports are read back; check a foreign "
                               f"export with `vit-suite check W --against {source}`")
    cfg = W.config_from_metadata(meta, source)
    W.validate_metadata(meta, cfg, source)
    expected = W.expected_shapes(cfg)
    inits = {t.name: t for t in model.graph.initializer if t.name in expected}
    specs = {k: W.TensorSpec(tuple(int(d) for d in t.dims),
                             "float32" if t.data_type == 1 else f"ONNX data type {t.data_type}") for k, t in inits.items()}
    W.validate_state(cfg, specs, source=source)  # keys, shapes, dtypes before any tensor is read
    budget = [0]
    directory = Path(path).parent
    state = {k: _tensor(inits[k], directory, source, budget) for k in expected}
    W.validate_state(cfg, state, source=source)
    digest = meta.get(DIGEST_KEY)
    if digest != weights_sha256(cfg, state):
        raise MismatchError(source, [f"the initializers do not match the metadata's {DIGEST_KEY} "
                                     f"({str(digest)[:16]}...): the graph's weights were changed after export"])
    return cfg, state
