"""Hugging Face transformers ViT (ViTModel / ViTForImageClassification) <-> the canonical format.

Two key layouts are read: the on-disk one every hub checkpoint and `save_pretrained` use
("file": encoder.layer.{i}.attention.attention.query, ..., intermediate.dense, output.dense) and the
module names of transformers >= 5 ("module": layers.{i}.attention.q_proj, o_proj, mlp.fc1, mlp.fc2).
ViTForImageClassification keys carry a 'vit.' prefix, ViTModel keys none.

Mapping: query/key/value are fused into qkv in q, k, v row order; layer_norm_eps from config.json
(HF's default 1e-12 when absent); hidden_act 'gelu' -> erf, 'gelu_pytorch_tanh' / 'gelu_new' /
'gelu_fast' (the same tanh formula) -> tanh, anything else refused; the ViTModel pooler (dense + tanh)
becomes pre_logits (representation_size); the resize kernel is 'bicubic' (HF interpolate_pos_encoding:
bicubic, align_corners=False, no antialias).

Decisions:
  * `embeddings.mask_token` (ViTModel(use_mask_token=True), the MIM encoder) is used only when
    `bool_masked_pos` is passed, never by plain inference: it is dropped with a ConversionWarning.
    The MIM pixel decoder (`decoder.*`, encoder_stride) is refused: it is a different head.
  * a pooler next to a classifier (ViTForImageClassification never runs its pooler) is dropped with a
    ConversionWarning, so the imported model computes what HF computes.
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .. import limits as L
from ..config import ViTConfig, is_int, is_real, shown
from ..errors import (ConfigError, ConversionError, ConversionWarning, InvalidFileError, MismatchError, OutputError,
                      MissingFactsError, UnwritableError)
from ..posemb import resample_pos_embed
from ..safeio import read_json_file
from ..weights import (CANONICAL_DTYPE, read_tensors, remove_stale_partials, temp_prefix, umask_mode,
                       validate_state)
from .timm import flatten_checkpoint, read_torch_checkpoint, strip_prefixes, to_float32

HF_DEFAULT_EPS = 1e-12
HF_RESIZE_KERNEL = "bicubic"
_GELU = {"gelu": "erf", "gelu_pytorch_tanh": "tanh", "gelu_new": "tanh", "gelu_fast": "tanh"}

# Per-block names: canonical suffix -> (file layout, module layout), relative to the block prefix.
_BLOCK = {
    "norm1": ("layernorm_before", "layernorm_before"),
    "norm2": ("layernorm_after", "layernorm_after"),
    "attn.proj": ("attention.output.dense", "attention.o_proj"),
    "mlp.fc1": ("intermediate.dense", "mlp.fc1"),
    "mlp.fc2": ("output.dense", "mlp.fc2"),
}
_QKV = {"file": ("attention.attention.query", "attention.attention.key", "attention.attention.value"),
        "module": ("attention.q_proj", "attention.k_proj", "attention.v_proj")}
_BLOCK_PREFIX = {"file": "encoder.layer.{i}.", "module": "layers.{i}."}
_TOP = {  # canonical -> HF (relative to the ViTModel)
    "cls_token": "embeddings.cls_token",
    "pos_embed": "embeddings.position_embeddings",
    "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
    "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
    "norm.weight": "layernorm.weight",
    "norm.bias": "layernorm.bias",
    "pre_logits.fc.weight": "pooler.dense.weight",
    "pre_logits.fc.bias": "pooler.dense.bias",
}


def _pair(v) -> tuple[int, int]:
    if isinstance(v, (int, np.integer)):
        return (int(v), int(v))
    h, w = v
    return (int(h), int(w))


# ---------------------------------------------------------------------------- import
def import_hf(state: Mapping[str, Any], hf_config: Mapping[str, Any], source: str = "<hf checkpoint>",
              image_size=None) -> tuple[ViTConfig, dict[str, np.ndarray]]:
    """HF ViT state dict (NumPy arrays) + its config.json dict -> (ViTConfig, canonical float32 state)."""
    if not isinstance(hf_config, Mapping):
        raise MissingFactsError(f"{source}: a Hugging Face checkpoint needs its config.json (num_attention_heads, "
                                f"layer_norm_eps, hidden_act, image_size ...)")
    mt = hf_config.get("model_type", "vit")
    if mt != "vit":
        raise ConversionError(f"{source}: model_type {str(mt)[:60]!r} is not a plain HF ViT (model_type 'vit'); not supported")
    st = strip_prefixes(state)
    is_cls_model = any(k.startswith("vit.") for k in st)
    if is_cls_model:
        st = {(k[4:] if k.startswith("vit.") else k): v for k, v in st.items()}
    if "embeddings.patch_embeddings.projection.weight" not in st:
        hint = " (this looks like a timm checkpoint: use --from timm)" if "patch_embed.proj.weight" in st else ""
        raise ConversionError(f"{source}: not a Hugging Face ViT state dict: no "
                              f"'[vit.]embeddings.patch_embeddings.projection.weight'{hint}")
    dec = sorted(k for k in st if k.startswith("decoder."))
    if dec:
        raise ConversionError(f"{source}: a masked-image-modeling pixel decoder ({dec[0]!r}, encoder_stride "
                              f"{hf_config.get('encoder_stride')}) cannot be represented: the canonical model ends in "
                              f"a classifier or features")
    if "embeddings.mask_token" in st:
        st.pop("embeddings.mask_token")
        warnings.warn(f"{source}: dropped embeddings.mask_token: it is used only for masked-image-modeling inputs "
                      f"(bool_masked_pos), never in plain inference", ConversionWarning, stacklevel=2)

    layout = "module" if any(k.startswith("layers.") for k in st) else "file"

    # ---- facts from config.json, type-checked (ConfigError naming the key, the expected type and the value),
    # then checked against the file
    where = f"{source}: config.json"

    def conf(key, default=None, required=False):
        if key not in hf_config or hf_config[key] is None:
            if required:
                raise MissingFactsError(f"{source}: config.json lacks {key!r}")
            return default
        return hf_config[key]

    def conf_int(key, default=None, required=False, lo=1, hi=L.MAX_WIDTH):
        v = conf(key, default, required)
        if v is not None and not (is_int(v) and lo <= v <= hi):
            raise ConfigError(f"{where}: {key!r} must be an int in [{lo}, {hi}], got {shown(v)}")
        return None if v is None else int(v)

    def conf_float(key, default, lo, hi, lo_open=False):
        v = conf(key, default)
        ok = is_real(v) and math.isfinite(v) and (lo < v if lo_open else lo <= v) and v < hi
        if not ok:
            raise ConfigError(f"{where}: {key!r} must be a finite number in {'(' if lo_open else '['}{lo}, {hi}), "
                              f"got {shown(v)}")
        return float(v)

    def conf_bool(key, default):
        v = conf(key, default)
        if not isinstance(v, bool):
            raise ConfigError(f"{where}: {key!r} must be a bool (true or false), got {shown(v)}")
        return v

    def conf_str(key, default):
        v = conf(key, default)
        if not isinstance(v, str):
            raise ConfigError(f"{where}: {key!r} must be a string, got {shown(v)}")
        return v

    H = conf_int("num_attention_heads", required=True, hi=L.MAX_HEADS)
    act = conf_str("hidden_act", "gelu")
    if act not in _GELU:
        raise ConversionError(f"{source}: hidden_act {act!r} is not a GELU the canonical model supports "
                              f"(gelu -> erf; gelu_pytorch_tanh / gelu_new / gelu_fast -> tanh)")
    eps = conf_float("layer_norm_eps", HF_DEFAULT_EPS, 0.0, 1.0, lo_open=True)
    qkv_bias = conf_bool("qkv_bias", True)
    hidden_dropout = conf_float("hidden_dropout_prob", 0.0, 0.0, 1.0)
    attn_dropout = conf_float("attention_probs_dropout_prob", 0.0, 0.0, 1.0)
    for key, hi in (("hidden_size", L.MAX_WIDTH), ("num_channels", L.MAX_CHANNELS), ("patch_size", L.MAX_PATCH),
                    ("num_hidden_layers", L.MAX_DEPTH), ("intermediate_size", L.MAX_WIDTH)):
        conf_int(key, hi=hi)
    img_v = conf("image_size", 224)
    if not (is_int(img_v) or isinstance(img_v, list) and len(img_v) == 2 and all(is_int(x) for x in img_v)) \
            or not all(1 <= x <= L.MAX_IMAGE_SIDE for x in ([img_v] if is_int(img_v) else img_v)):
        raise ConfigError(f"{where}: 'image_size' must be an int or [height, width] ints in [1, "
                          f"{L.MAX_IMAGE_SIDE}], got {shown(img_v)}")
    name_v = hf_config.get("_name_or_path")
    if name_v is not None and not isinstance(name_v, str):
        raise ConfigError(f"{where}: '_name_or_path' must be a string, got {shown(name_v)}")
    pw = np.shape(st["embeddings.patch_embeddings.projection.weight"])
    if len(pw) != 4 or pw[2] != pw[3]:
        raise ConversionError(f"{source}: patch projection has shape {pw}; expected (D, C, P, P)")
    D, C, P = int(pw[0]), int(pw[1]), int(pw[2])
    bp = _BLOCK_PREFIX[layout]
    pat = re.compile(bp.replace(".", r"\.").replace("{i}", r"(\d+)"))
    ids = sorted({int(m.group(1)) for k in st if (m := pat.match(k))})
    depth = len(ids)
    if ids != list(range(depth)) or depth == 0:
        first = ids[:10] + (["..."] if len(ids) > 10 else [])
        raise MismatchError(source, [f"encoder layers are not numbered 0..n-1: {len(ids)} layers, {first}"])
    fc1 = bp.format(i=0) + ("intermediate.dense.weight" if layout == "file" else "mlp.fc1.weight")
    if fc1 not in st:
        raise MismatchError(source, [f"missing key {fc1!r}"])
    M = int(np.shape(st[fc1])[0])
    img = _pair(conf("image_size", 224))
    file_vals = {"hidden_size": D, "num_channels": C, "patch_size": P, "num_hidden_layers": depth,
                 "intermediate_size": M}
    clash = [f"{k}: config.json {hf_config[k]!r}, weights {v!r}" for k, v in file_vals.items()
             if hf_config.get(k) is not None and int(hf_config[k]) != v]
    if clash:
        raise MismatchError(source, ["config.json disagrees with the weights: " + c for c in clash])
    if D % H:
        raise ConversionError(f"{source}: hidden_size {D} is not divisible by num_attention_heads {H}")

    has_pooler = "pooler.dense.weight" in st
    has_head = "classifier.weight" in st
    if has_pooler and has_head:
        for k in ("pooler.dense.weight", "pooler.dense.bias"):
            st.pop(k, None)
        has_pooler = False
        warnings.warn(f"{source}: dropped pooler.dense: ViTForImageClassification classifies the normed class "
                      f"token and never runs the pooler", ConversionWarning, stacklevel=2)
    if has_pooler and conf("pooler_act", "tanh") != "tanh":
        raise ConversionError(f"{source}: pooler_act {conf('pooler_act')!r}: canonical pre-logits are Linear + tanh")
    rep = int(np.shape(st["pooler.dense.weight"])[0]) if has_pooler else None
    K = int(np.shape(st["classifier.weight"])[0]) if has_head else 0

    # ---- rename
    out: dict[str, np.ndarray] = {}
    used: set[str] = set()

    def take(hf_key: str, canon: str) -> None:
        if hf_key in st:
            out[canon] = to_float32(hf_key, st[hf_key], source)
            used.add(hf_key)

    for canon, hk in _TOP.items():
        take(hk, canon)
    take("classifier.weight", "head.weight")
    take("classifier.bias", "head.bias")
    missing = []
    for i in range(depth):
        b = bp.format(i=i)
        for canon, names in _BLOCK.items():
            hk = b + names[0 if layout == "file" else 1]
            take(hk + ".weight", f"blocks.{i}.{canon}.weight")
            take(hk + ".bias", f"blocks.{i}.{canon}.bias")
        for part in ("weight", "bias"):
            if part == "bias" and not qkv_bias:
                continue
            names = [f"{b}{n}.{part}" for n in _QKV[layout]]
            absent = [n for n in names if n not in st]
            if absent:
                missing += absent
                continue
            out[f"blocks.{i}.attn.qkv.{part}"] = np.concatenate(
                [to_float32(n, st[n], source) for n in names], axis=0)  # rows: q, k, v
            used.update(names)
    leftovers = sorted(set(st) - used)
    problems = [f"missing key {k!r}" for k in missing]
    problems += [f"unexpected key {k!r} (qkv_bias={qkv_bias} in config.json)" if "attention" in k
                 else f"unexpected key {k!r}" for k in leftovers]
    if problems:
        raise MismatchError(source, problems)

    # ---- position table grid
    gh, gw = img[0] // P, img[1] // P
    T = int(np.shape(out["pos_embed"])[1]) if "pos_embed" in out else -1
    if img[0] % P or img[1] % P or T != 1 + gh * gw:
        raise MismatchError(source, [f"position_embeddings has {T} rows; image_size {img} with patch_size {P} "
                                     f"needs {1 + gh * gw}"])
    target = _pair(image_size) if image_size is not None else img
    try:
        cfg = ViTConfig(
            name=str(hf_config.get("_name_or_path") or "hf_vit").replace("/", "_") or "hf_vit",
            image_size=target, in_chans=C, patch_size=P, embed_dim=D, depth=depth, num_heads=H, mlp_dim=M,
            qkv_bias=qkv_bias, class_token="learned", pool="token", pos_embed="learned",
            resize_kernel=HF_RESIZE_KERNEL, gelu=_GELU[act], layer_norm_eps=eps, final_norm=True,
            representation_size=rep, num_classes=K,
            dropout=hidden_dropout, attn_dropout=attn_dropout,
            notes=f"imported from Hugging Face ViT {source}")
    except ConfigError as e:
        raise ConversionError(f"{source}: the imported model is not a valid ViTConfig: {e}") from None
    if cfg.grid != (gh, gw):
        out["pos_embed"] = resample_pos_embed(out["pos_embed"], (gh, gw), cfg.grid, 1, cfg.resize_kernel)
    validate_state(cfg, out, source=source)
    return cfg, out


# ---------------------------------------------------------------------------- export
def _hf_problems(cfg: ViTConfig) -> list[str]:
    p = []
    if cfg.class_token != "learned":
        p.append(f"class_token={cfg.class_token!r}: HF ViT always has a learned cls_token")
    if cfg.pos_embed != "learned":
        p.append(f"pos_embed={cfg.pos_embed!r}: HF ViT has a learned position table only")
    if cfg.attn_value_skip:
        p.append("attn_value_skip: HF ViTSelfAttention has no value skip")
    if cfg.attn_dim is not None and cfg.attn_dim != cfg.embed_dim:
        p.append(f"attn_dim {cfg.attn_dim} != embed_dim {cfg.embed_dim}: HF ViT keeps one width")
    if cfg.qk_scale is not None and cfg.qk_scale != cfg.head_dim ** -0.5:
        p.append(f"qk_scale={cfg.qk_scale}: HF scales by head_dim**-0.5")
    if cfg.pool != "token":
        p.append("pool='mean': HF ViT classifies the class token")
    if not cfg.final_norm:
        p.append("final_norm=False: HF ViT always applies its final layernorm")
    if cfg.fc_norm:
        p.append("fc_norm: HF ViT has no norm after pooling")
    if cfg.representation_size and cfg.num_classes:
        p.append("pre_logits together with a head: ViTForImageClassification never runs the pooler "
                 "(only a features-only ViTModel keeps the pooler as pre-logits)")
    if cfg.output_softmax:
        p.append("output_softmax: HF models return logits")
    if cfg.pos_embed == "learned" and cfg.table_grid != cfg.grid:
        p.append(f"the table is stored at grid {cfg.table_grid}, the image grid is {cfg.grid}: HF stores the "
                 f"table at image_size (resample it first, e.g. re-import with image_size)")
    if cfg.drop_path:
        p.append("drop_path: HF ViT has no stochastic depth")
    return p


def export_hf(cfg: ViTConfig, state: Mapping[str, np.ndarray],
              layout: str = "file") -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Canonical -> (HF state dict, config.json dict).

    With a head: ViTForImageClassification ('vit.' prefix); without: ViTModel (the pooler when
    representation_size is set). layout='file' is the on-disk / save_pretrained naming that every
    transformers version reads; layout='module' the module names of the installed transformers >= 5
    (for model.load_state_dict).
    """
    if layout not in _BLOCK_PREFIX:
        raise ValueError(f"layout must be 'file' or 'module', got {layout!r}")
    problems = _hf_problems(cfg)
    if problems:
        raise ConversionError(f"config {cfg.name!r} cannot be expressed as a Hugging Face ViT:\n  " + "\n  ".join(problems))
    validate_state(cfg, state, source="<canonical state>")
    if cfg.resize_kernel != HF_RESIZE_KERNEL:
        warnings.warn(f"config {cfg.name!r} resamples its table with {cfg.resize_kernel!r}; HF "
                      f"interpolate_pos_encoding uses plain bicubic: outputs at other image sizes will differ",
                      ConversionWarning, stacklevel=2)
    W = cfg.width
    pre = "vit." if cfg.num_classes else ""
    out: dict[str, np.ndarray] = {}

    def put(hk: str, v) -> None:
        out[pre + hk] = np.array(v, dtype=CANONICAL_DTYPE, copy=True)

    for canon, hk in _TOP.items():
        if canon in state:
            put(hk, state[canon])
    li = 0 if layout == "file" else 1
    for i in range(cfg.depth):
        b = _BLOCK_PREFIX[layout].format(i=i)
        for canon, names in _BLOCK.items():
            put(f"{b}{names[li]}.weight", state[f"blocks.{i}.{canon}.weight"])
            put(f"{b}{names[li]}.bias", state[f"blocks.{i}.{canon}.bias"])
        for part in ("weight", "bias") if cfg.qkv_bias else ("weight",):
            fused = np.asarray(state[f"blocks.{i}.attn.qkv.{part}"])
            for j, n in enumerate(_QKV[layout]):
                put(f"{b}{n}.{part}", fused[j * W:(j + 1) * W])
    if cfg.num_classes:
        out["classifier.weight"] = np.array(state["head.weight"], dtype=CANONICAL_DTYPE, copy=True)
        out["classifier.bias"] = np.array(state["head.bias"], dtype=CANONICAL_DTYPE, copy=True)
    h, w = cfg.image_size
    conf: dict[str, Any] = {
        "architectures": ["ViTForImageClassification" if cfg.num_classes else "ViTModel"],
        "model_type": "vit",
        "hidden_size": cfg.embed_dim, "num_hidden_layers": cfg.depth, "num_attention_heads": cfg.num_heads,
        "intermediate_size": cfg.mlp_dim, "hidden_act": "gelu" if cfg.gelu == "erf" else "gelu_pytorch_tanh",
        "hidden_dropout_prob": cfg.dropout, "attention_probs_dropout_prob": cfg.attn_dropout,
        "initializer_range": 0.02, "layer_norm_eps": cfg.layer_norm_eps,
        "image_size": h if h == w else [h, w], "patch_size": cfg.patch_size, "num_channels": cfg.in_chans,
        "qkv_bias": cfg.qkv_bias, "encoder_stride": cfg.patch_size,
        "pooler_output_size": cfg.representation_size or cfg.embed_dim, "pooler_act": "tanh",
    }
    if cfg.num_classes:
        conf["id2label"] = {str(i): f"LABEL_{i}" for i in range(cfg.num_classes)}
        conf["label2id"] = {f"LABEL_{i}": i for i in range(cfg.num_classes)}
    return out, conf


# ---------------------------------------------------------------------------- directories
def save_hf_dir(directory: str | os.PathLike, cfg: ViTConfig, state: Mapping[str, np.ndarray],
                overwrite: bool = False) -> Path:
    """Write config.json + model.safetensors (from_pretrained layout) atomically: a temp dir renamed into place."""
    from safetensors.numpy import save_file

    directory = Path(directory)
    hf_state, conf = export_hf(cfg, state, layout="file")
    if directory.exists() and any(directory.iterdir()) and not overwrite:
        raise OutputError(f"{directory}: exists and is not empty; pass --force to replace it")
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_partials(directory.parent, directory.name)
        tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(directory.name), suffix=".partial", dir=directory.parent))
    except OSError as e:
        raise UnwritableError(f"{directory}: cannot write there ({type(e).__name__}: {e.strerror or e})") from None
    old = None
    claimed = False
    try:
        save_file({k: np.ascontiguousarray(v) for k, v in hf_state.items()}, str(tmp / "model.safetensors"),
                  metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(conf, indent=2, sort_keys=True) + "\n")
        for f in tmp.iterdir():  # safetensors writes 0600, mkdtemp makes 0700: give back the umask's modes
            os.chmod(f, umask_mode())
        os.chmod(tmp, umask_mode(directory=True))
        if overwrite:
            if directory.exists():
                old = directory.with_name(f".{directory.name}.old.{os.getpid()}")
                os.replace(directory, old)
        else:
            # claim the name exclusively: an empty directory the user made is taken over, but of two concurrent
            # writers the second finds the first's directory and fails (exit 2) instead of replacing it
            if directory.is_dir() and not any(directory.iterdir()):
                directory.rmdir()
            try:
                os.mkdir(directory)
            except FileExistsError:
                raise OutputError(f"{directory}: exists (written by another process meanwhile?); pass --force to "
                                  f"replace it") from None
            claimed = True
        os.replace(tmp, directory)  # onto nothing, or onto the empty directory this writer just created
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if claimed and directory.is_dir() and not any(directory.iterdir()):
            directory.rmdir()
        if old is not None and old.exists() and not directory.exists():
            os.replace(old, directory)
        if isinstance(e, OSError) and not isinstance(e, (FileExistsError, UnwritableError)):
            raise UnwritableError(f"{directory}: writing failed ({type(e).__name__}: {e.strerror or e}); nothing "
                                  f"was left behind") from None
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return directory


def _index_shards(index_path: Path) -> list[Path]:
    """The shard files a `model.safetensors.index.json` names, each checked to be a plain file name inside the
    model directory: an index naming `../elsewhere` or an absolute path is refused, never followed."""
    index = read_json_file(index_path)
    wmap = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(wmap, dict) or not wmap or not all(isinstance(v, str) for v in wmap.values()):
        raise InvalidFileError(f"{index_path}: 'weight_map' must map tensor names to shard file names")
    root = index_path.parent.resolve()
    shards = []
    for name in sorted(set(wmap.values())):
        shard = (root / name).resolve()
        if Path(name).is_absolute() or Path(name).name != name or shard.parent != root:
            raise InvalidFileError(f"{index_path}: shard {name!r} is not a file in the model directory {root}; "
                                   f"refusing to read outside it")
        shards.append(shard)
    return shards


def load_hf_dir(directory: str | os.PathLike, image_size=None) -> tuple[ViTConfig, dict[str, np.ndarray]]:
    """Read a save_pretrained directory (config.json + model.safetensors, sharded or not; pytorch_model.bin with torch)."""
    d = Path(directory)
    cj = d / "config.json"
    if not cj.is_file():
        raise InvalidFileError(f"{d}: no config.json (a Hugging Face model directory needs one)")
    conf = read_json_file(cj)
    if not isinstance(conf, dict):
        raise InvalidFileError(f"{cj}: must be a JSON object, got {type(conf).__name__}")
    state: dict[str, np.ndarray] = {}
    if (d / "model.safetensors").is_file():
        state, _ = read_tensors(d / "model.safetensors")
    elif (d / "model.safetensors.index.json").is_file():
        for shard in _index_shards(d / "model.safetensors.index.json"):
            part, _ = read_tensors(shard)
            state.update(part)
    elif (d / "pytorch_model.bin").is_file():
        state = flatten_checkpoint(read_torch_checkpoint(d / "pytorch_model.bin"))
    else:
        raise InvalidFileError(f"{d}: no model.safetensors (or index, or pytorch_model.bin)")
    return import_hf(state, conf, source=str(d), image_size=image_size)
