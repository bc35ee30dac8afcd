"""keras-hub ViT (`keras_hub.models.ViTBackbone` / `ViTImageClassifier`) <-> the canonical format, read as data.

Three files are read, never by deserializing keras-hub classes: the `save_to_preset` directory (config.json of the
backbone, task.json of a classifier, model.weights.h5 and task.weights.h5), a `.keras` archive (its config.json and
model.weights.h5, read from the zip) and a bare `.weights.h5`, which carries no config: `--preset NAME` gives the
architecture. Configs are JSON data: only keras-hub's ViT classes and Keras' own classes may appear; a Lambda layer
or any other class is refused. Weights are read with h5py (dataset path -> array).

Mapping (keras-hub 0.32 layout; H heads of width hd, D = H * hd):
  vi_t_patching_and_embedding: patch_embedding kernel (P, P, C, D) -> patch_embed.proj.weight (D, C, P, P);
      position_embedding (N, D) -> pos_embed (1, N, D); its own var (1, 1, D) -> cls_token
  vi_t_encoder_block[_i]: layer_norm_1/2 -> norm1/2; mha query/key/value kernels (D, H, hd) and biases (H, hd) ->
      the fused qkv (3D, D) in q, k, v order; output_dense (H, hd, D) -> attn.proj; mlp dense_1/2 -> mlp.fc1/2
  vi_t_encoder/layer_norm -> norm; classifier: pre_logits Dense(tanh) -> pre_logits.fc, predictions -> head
Numerics: LayerNorm eps is the config's layer_norm_epsilon; the MLP's activation is Keras' "gelu", whose default is
the exact (erf) form. use_mha_bias / use_mlp_bias / use_patch_bias false are absent biases, stored as zeros.
pooling "token" takes the class token; "gap" averages every token, which is the canonical mean pooling only without
a class token (refused otherwise). A backbone without a classifier converts with num_classes 0.
"""
from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .. import limits as L
from .. import weights as W
from ..config import ViTConfig, is_int, is_real
from ..errors import ConversionError, InvalidFileError, MismatchError, MissingFactsError, OutputError, UsageError
from ..fileio import write_dir_atomically
from ..safeio import check_zip, load_json, read_json_file, read_zip_member, refuse_unsafe_keras_classes
from .common import family_refusals

INSTALL = "pip install --no-deps keras-hub==0.32.0"
BACKBONE, CLASSIFIER = "keras_hub>ViTBackbone", "keras_hub>ViTImageClassifier"
#: the only non-Keras classes a keras-hub ViT config may name
ALLOWED_CLASSES = frozenset({BACKBONE, CLASSIFIER, "keras_hub>ViTImageClassifierPreprocessor",
                             "keras_hub>ViTImageConverter"})
_EMB = "layers/vi_t_patching_and_embedding/"
_ENC = "layers/vi_t_encoder/"


# ----------------------------------------------------------------------------------------------- detection
def _is_kerashub_config(cfg: Any) -> bool:
    return isinstance(cfg, dict) and (str(cfg.get("registered_name") or "").startswith("keras_hub>")
                                      or str(cfg.get("module") or "").startswith("keras_hub."))


def is_kerashub(path: str | os.PathLike) -> bool:
    """A keras-hub preset directory, a `.keras` archive of a keras-hub model, or a keras-hub ViT `.weights.h5`."""
    path = Path(path)
    try:
        if path.is_dir():
            return (path / "config.json").is_file() and _is_kerashub_config(read_json_file(path / "config.json"))
        if not path.is_file():
            return False
        with open(path, "rb") as f:
            head = f.read(8)
        if head.startswith(b"PK\x03\x04"):
            check_zip(path)
            with zipfile.ZipFile(path) as z:
                if "config.json" not in z.namelist():
                    return False
            return _is_kerashub_config(load_json(read_zip_member(path, "config.json", ".keras file"),
                                                 f"{path}: config.json"))
        if head == b"\x89HDF\r\n\x1a\n":
            import h5py

            with h5py.File(path, "r") as f:
                return any(k in f for k in (_EMB.rstrip("/"), "layers/vi_t_backbone/" + _EMB.rstrip("/")))
    except Exception:  # noqa: BLE001  (detection only: a damaged file is refused by the reader it falls through to)
        return False
    return False


# --------------------------------------------------------------------------------------------------- configs
def scan_config(config: Any, source: str) -> None:
    """Refuse a Lambda layer or a class that is neither Keras' own nor keras-hub's ViT, anywhere in the config."""
    refuse_unsafe_keras_classes(config, ALLOWED_CLASSES, source)


def _field(d: Mapping, key: str, kind: str, source: str, default: Any = ...) -> Any:
    if key not in d:
        if default is ...:
            raise InvalidFileError(f"{source}: keras-hub config lacks {key!r}")
        return default
    v = d[key]
    ok = {"int": is_int(v) and 0 <= v <= L.MAX_WIDTH, "bool": isinstance(v, bool),
          "float": is_real(v) and 0 <= v < 1, "opt_int": v is None or (is_int(v) and 1 <= v <= L.MAX_WIDTH),
          "pair": isinstance(v, (list, tuple)) and all(is_int(x) or x is None for x in v)}[kind]
    if not ok:
        raise InvalidFileError(f"{source}: keras-hub config field {key!r} must be {kind}, got {v!r}")
    return v


def config_from_kerashub(backbone: Mapping, task: Mapping | None, source: str) -> ViTConfig:
    """keras-hub's ViTBackbone config (and ViTImageClassifier config, if any), as data -> ViTConfig."""
    b = backbone.get("config") if isinstance(backbone, dict) else None
    if not isinstance(b, dict) or backbone.get("registered_name") != BACKBONE:
        raise InvalidFileError(f"{source}: the keras-hub config does not describe a ViTBackbone "
                               f"(registered_name {backbone.get('registered_name') if isinstance(backbone, dict) else None!r})")
    shape = _field(b, "image_shape", "pair", source)
    if len(shape) != 3 or None in shape:
        raise InvalidFileError(f"{source}: keras-hub image_shape must be (height, width, channels), got {shape}")
    patch = _field(b, "patch_size", "pair", source) if not is_int(b.get("patch_size")) else [b["patch_size"]] * 2
    if len(patch) != 2 or patch[0] != patch[1]:
        raise ConversionError(f"{source}: patch_size {patch}: the canonical format has square patches")
    heads, hidden = _field(b, "num_heads", "int", source), _field(b, "hidden_dim", "int", source)
    if heads < 1 or hidden % heads:
        raise ConversionError(f"{source}: hidden_dim {hidden} is not a multiple of num_heads {heads}: keras-hub's "
                              f"attention then runs at {heads * (hidden // max(heads, 1))}, which the canonical "
                              f"format cannot represent")
    class_token = _field(b, "use_class_token", "bool", source, True)
    fields = dict(
        name=str(b.get("name") or "kerashub_vit")[:100], image_size=(shape[0], shape[1]), in_chans=shape[2],
        patch_size=patch[0], embed_dim=hidden, depth=_field(b, "num_layers", "int", source), num_heads=heads,
        mlp_dim=_field(b, "mlp_dim", "int", source), qkv_bias=_field(b, "use_mha_bias", "bool", source, True),
        layer_norm_eps=float(_field(b, "layer_norm_epsilon", "float", source, 1e-6)), gelu="erf",
        class_token="learned" if class_token else "none", pos_embed="learned", resize_kernel="bicubic",
        final_norm=True, fc_norm=False, dropout=float(_field(b, "dropout_rate", "float", source, 0.0)),
        attn_dropout=float(_field(b, "attention_dropout", "float", source, 0.0)), notes="keras-hub ViT")
    if task is None:
        fields.update(num_classes=0, pool="token" if class_token else "mean")
    else:
        t = task.get("config") if isinstance(task, dict) else None
        if not isinstance(t, dict) or task.get("registered_name") != CLASSIFIER:
            raise InvalidFileError(f"{source}: task config is not a keras-hub ViTImageClassifier")
        pooling = t.get("pooling", "token")
        if pooling == "token" and class_token:
            pool = "token"
        elif pooling == "gap" and not class_token:
            pool = "mean"
        else:
            raise ConversionError(f"{source}: pooling {pooling!r} with use_class_token={class_token}: the canonical "
                                  f"format pools the class token, or the mean of the patch tokens only")
        if t.get("activation") not in (None, "linear"):
            raise ConversionError(f"{source}: classifier activation {t.get('activation')!r}: only logits (None) "
                                  f"are supported")
        fields.update(num_classes=_field(t, "num_classes", "int", source), pool=pool,
                      representation_size=_field(t, "intermediate_dim", "opt_int", source, None))
    return ViTConfig(**fields)


# --------------------------------------------------------------------------------------------------- weights
def read_h5(data: str | os.PathLike | bytes, source: str) -> dict[str, np.ndarray]:
    """Every dataset of a Keras weights file (optimizer state left out), path -> array, read with h5py as data."""
    import h5py

    arrays: dict[str, np.ndarray] = {}
    try:
        with h5py.File(io.BytesIO(data) if isinstance(data, bytes) else data, "r") as f:
            def visit(name, obj):
                if isinstance(obj, h5py.Dataset) and not name.startswith("optimizer/"):
                    if len(arrays) >= L.MAX_ARCHIVE_MEMBERS:
                        raise InvalidFileError(f"{source}: more than {L.MAX_ARCHIVE_MEMBERS} datasets")
                    arrays[name] = np.asarray(obj[()])

            f.visititems(visit)
    except InvalidFileError:
        raise
    except Exception as e:  # noqa: BLE001 - h5py raises OSError, RuntimeError, KeyError... for a damaged file
        raise InvalidFileError(f"{source}: not a readable HDF5 weights file ({type(e).__name__}: {e})") from None
    return arrays


def _block(i: int) -> str:
    return f"{_ENC}encoder_layers/vi_t_encoder_block{'' if i == 0 else f'_{i}'}/"


def import_kerashub(arrays: Mapping[str, np.ndarray], head: Mapping[str, np.ndarray], cfg: ViTConfig,
                    source: str) -> dict[str, np.ndarray]:
    """keras-hub weights (backbone datasets relative to the backbone, classifier head datasets) -> canonical state,
    strictly: every keras-hub variable is used once, and every canonical key and shape is checked."""
    used: set[str] = set()
    problems: list[str] = []

    def take(key: str, shape: tuple | None, optional: bool = False, src=arrays) -> np.ndarray | None:
        if key not in src:
            if not optional:
                problems.append(f"missing key {key!r}" + (f" (expected shape {shape})" if shape else ""))
            return None
        used.add(("h/" if src is head else "") + key)
        v = np.asarray(src[key])
        if not np.issubdtype(v.dtype, np.floating):
            problems.append(f"key {key!r}: expected a floating tensor, got dtype {v.dtype}")
            return None
        if shape is not None and tuple(v.shape) != tuple(shape):
            problems.append(f"key {key!r}: expected shape {tuple(shape)}, got {tuple(v.shape)}")
            return None
        return v.astype(np.float32)

    D, H, M, P, C = cfg.embed_dim, cfg.num_heads, cfg.mlp_dim, cfg.patch_size, cfg.in_chans
    hd = D // H
    zeros = np.zeros
    s: dict[str, np.ndarray | None] = {}
    k = take(_EMB + "patch_embedding/vars/0", (P, P, C, D))
    s["patch_embed.proj.weight"] = None if k is None else k.transpose(3, 2, 0, 1)
    s["patch_embed.proj.bias"] = take(_EMB + "patch_embedding/vars/1", (D,), optional=True)
    n = cfg.num_prefix_tokens + cfg.grid[0] * cfg.grid[1]
    pe = take(_EMB + "position_embedding/vars/0", (n, D))
    s["pos_embed"] = None if pe is None else pe[None]
    if cfg.class_token == "learned":
        s["cls_token"] = take(_EMB + "vars/0", (1, 1, D))
    for i in range(cfg.depth):
        b, c = _block(i), f"blocks.{i}."
        for ln, name in (("layer_norm_1", "norm1"), ("layer_norm_2", "norm2")):
            s[c + name + ".weight"], s[c + name + ".bias"] = take(b + ln + "/vars/0", (D,)), take(b + ln + "/vars/1", (D,))
        qkv_w, qkv_b = [], []
        for part in ("query", "key", "value"):
            w = take(f"{b}mha/{part}_dense/vars/0", (D, H, hd))
            qkv_w.append(None if w is None else w.reshape(D, D).T)
            if cfg.qkv_bias:
                bb = take(f"{b}mha/{part}_dense/vars/1", (H, hd))
                qkv_b.append(None if bb is None else bb.reshape(D))
        s[c + "attn.qkv.weight"] = None if any(w is None for w in qkv_w) else np.concatenate(qkv_w, 0)
        if cfg.qkv_bias:
            s[c + "attn.qkv.bias"] = None if any(x is None for x in qkv_b) else np.concatenate(qkv_b, 0)
        o = take(f"{b}mha/output_dense/vars/0", (H, hd, D))
        s[c + "attn.proj.weight"] = None if o is None else o.reshape(D, D).T
        s[c + "attn.proj.bias"] = take(f"{b}mha/output_dense/vars/1", (D,), optional=not cfg.qkv_bias)
        for dense, name, shape in (("dense_1", "fc1", (D, M)), ("dense_2", "fc2", (M, D))):
            w = take(f"{b}mlp/{dense}/vars/0", shape)
            s[c + f"mlp.{name}.weight"] = None if w is None else w.T
            s[c + f"mlp.{name}.bias"] = take(f"{b}mlp/{dense}/vars/1", (shape[1],), optional=True)
    s["norm.weight"], s["norm.bias"] = take(_ENC + "layer_norm/vars/0", (D,)), take(_ENC + "layer_norm/vars/1", (D,))
    if cfg.num_classes:
        names = sorted((k.split("/")[1] for k in head if k.startswith("layers/dense") and k.endswith("/vars/0")),
                       key=lambda x: (len(x), x))
        want = 2 if cfg.representation_size else 1
        if len(names) != want:
            problems.append(f"classifier: expected {want} Dense layer(s) (pre_logits {cfg.representation_size}, "
                            f"predictions {cfg.num_classes}), found {names}")
        else:
            F = cfg.feature_dim
            if cfg.representation_size:
                R = cfg.representation_size
                w = take(f"layers/{names[0]}/vars/0", (D, R), src=head)
                s["pre_logits.fc.weight"] = None if w is None else w.T
                s["pre_logits.fc.bias"] = take(f"layers/{names[0]}/vars/1", (R,), src=head)
            w = take(f"layers/{names[-1]}/vars/0", (F, cfg.num_classes), src=head)
            s["head.weight"] = None if w is None else w.T
            s["head.bias"] = take(f"layers/{names[-1]}/vars/1", (cfg.num_classes,), src=head)
    unused = sorted(k for k in arrays if k not in used) + sorted(f"h/{k}" for k in head if f"h/{k}" not in used)
    problems += [f"unexpected key {k!r} (shape {np.shape((head if k.startswith('h/') else arrays)[k[2:] if k.startswith('h/') else k])})"
                 for k in unused]
    if problems:
        raise MismatchError(source, problems)
    expected = W.expected_shapes(cfg)
    state = {k: (np.ascontiguousarray(v) if v is not None else zeros(expected[k], np.float32)) for k, v in s.items()}
    W.validate_state(cfg, state, source=source)
    return {k: state[k] for k in expected}


def _split_backbone(arrays: Mapping[str, np.ndarray]) -> tuple[dict, dict]:
    """(backbone datasets relative to the backbone, classifier datasets) of a whole-model weights file."""
    pre = "layers/vi_t_backbone/"
    if any(k.startswith(pre) for k in arrays):
        return ({k[len(pre):]: v for k, v in arrays.items() if k.startswith(pre)},
                {k: v for k, v in arrays.items() if not k.startswith(pre)})
    return dict(arrays), {}


def load_kerashub(path: str | os.PathLike, preset: ViTConfig | str | None = None
                  ) -> tuple[ViTConfig, dict[str, np.ndarray]]:
    """A keras-hub preset directory, `.keras` archive or `.weights.h5` -> (config, canonical state), as data."""
    path = Path(path)
    src = str(path)
    if path.is_dir():
        backbone = read_json_file(path / "config.json")
        task = read_json_file(path / "task.json") if (path / "task.json").is_file() else None
        scan_config([backbone, task], src)
        cfg = config_from_kerashub(backbone, task, src)
        arrays = read_h5(path / "model.weights.h5", f"{path / 'model.weights.h5'}")
        head = {}
        if task is not None:
            if not (path / "task.weights.h5").is_file():
                raise InvalidFileError(f"{path}: task.json without task.weights.h5 (the classifier's weights)")
            head = read_h5(path / "task.weights.h5", f"{path / 'task.weights.h5'}")
            head = {k: v for k, v in head.items() if not k.startswith("layers/vi_t_backbone/")}
    elif zipfile.is_zipfile(path):
        check_zip(path)
        config = load_json(read_zip_member(path, "config.json", ".keras file"), f"{path}: config.json")
        scan_config(config, src)
        if isinstance(config, dict) and config.get("registered_name") == CLASSIFIER:
            cfg = config_from_kerashub((config.get("config") or {}).get("backbone"), config, src)
        else:
            cfg = config_from_kerashub(config, None, src)
        arrays, head = _split_backbone(read_h5(read_zip_member(path, "model.weights.h5", ".keras file"),
                                               f"{path}: model.weights.h5"))
    else:
        if preset is None:
            raise MissingFactsError(f"{path}: a keras-hub .weights.h5 holds no config: pass --preset NAME for its "
                                    f"architecture")
        if isinstance(preset, str):
            from ..presets import get_preset

            preset = get_preset(preset)
        cfg = preset.replace(gelu="erf")  # keras-hub's MLP: Keras' exact gelu, whatever the preset says
        arrays, head = _split_backbone(read_h5(path, src))
    return cfg, import_kerashub(arrays, head, cfg, src)


# --------------------------------------------------------------------------------------------------- writing
def _kerashub_problems(cfg: ViTConfig, state: Mapping[str, np.ndarray]) -> list[str]:
    p = family_refusals(cfg, "keras-hub's ViT")
    if cfg.gelu != "erf":
        p.append(f"GELU {cfg.gelu!r}: keras-hub's MLP uses Keras' exact (erf) gelu")
    if cfg.attn_dim not in (None, cfg.embed_dim) or cfg.attn_value_skip or cfg.qk_scale is not None:
        p.append("T2T-style attention (attn_dim, value skip or qk_scale)")
    if cfg.embed_dim % cfg.num_heads:
        p.append(f"embed_dim {cfg.embed_dim} not a multiple of num_heads {cfg.num_heads}")
    if cfg.class_token == "zeros" or cfg.pos_embed != "learned" or cfg.table_grid != cfg.grid:
        p.append("keras-hub learns its class token and a position table on the image grid")
    if not cfg.final_norm or cfg.fc_norm:
        p.append("keras-hub has a final norm over all tokens and no fc_norm")
    if (cfg.pool == "token") != (cfg.class_token == "learned"):
        p.append(f"pool {cfg.pool!r} with class token {cfg.class_token!r}: keras-hub pools the class token, or "
                 f"averages every token (only the same as the canonical mean without a class token)")
    if cfg.output_softmax:
        p.append("an output softmax")
    if not cfg.qkv_bias and cfg.proj_bias and any(np.any(np.asarray(state[f"blocks.{i}.attn.proj.bias"]))
                                                  for i in range(cfg.depth)):
        p.append("no qkv bias but a non-zero attention output bias: keras-hub's use_mha_bias covers both")
    return p


def kerashub_arguments(cfg: ViTConfig) -> tuple[dict, dict | None]:
    """keras_hub ViTBackbone keyword arguments, and ViTImageClassifier ones (None without a head)."""
    backbone = dict(image_shape=(*cfg.image_size, cfg.in_chans), patch_size=cfg.patch_size, num_layers=cfg.depth,
                    num_heads=cfg.num_heads, hidden_dim=cfg.embed_dim, mlp_dim=cfg.mlp_dim,
                    dropout_rate=cfg.dropout, attention_dropout=cfg.attn_dropout,
                    layer_norm_epsilon=cfg.layer_norm_eps, use_mha_bias=cfg.qkv_bias, use_mlp_bias=True,
                    use_class_token=cfg.class_token == "learned", use_patch_bias=True)
    if not cfg.num_classes:
        return backbone, None
    return backbone, dict(num_classes=cfg.num_classes, pooling="token" if cfg.pool == "token" else "gap",
                          intermediate_dim=cfg.representation_size)


def build_kerashub(cfg: ViTConfig):
    """keras-hub's own model for `cfg` (random weights): a ViTImageClassifier, or a ViTBackbone without a head."""
    try:
        import keras_hub
    except ImportError:
        raise UsageError(f"keras-hub is not installed: {INSTALL}") from None
    bkw, ckw = kerashub_arguments(cfg)
    backbone = keras_hub.models.ViTBackbone(**bkw)
    return backbone if ckw is None else keras_hub.models.ViTImageClassifier(backbone=backbone, **ckw)


def export_kerashub(cfg: ViTConfig, state: Mapping[str, np.ndarray]) -> tuple[dict, dict]:
    """Canonical -> (backbone datasets, classifier datasets) in keras-hub's layout (the inverse of import)."""
    problems = _kerashub_problems(cfg, state)
    if problems:
        raise ConversionError(f"cannot write {cfg.name!r} as a keras-hub ViT: keras-hub's model would compute "
                              f"something else:\n  " + "\n  ".join(problems))
    W.validate_state(cfg, state, source=f"model {cfg.name!r}")
    D, H = cfg.embed_dim, cfg.num_heads
    hd = D // H
    a: dict[str, np.ndarray] = {
        _EMB + "patch_embedding/vars/0": state["patch_embed.proj.weight"].transpose(2, 3, 1, 0),
        _EMB + "patch_embedding/vars/1": state["patch_embed.proj.bias"],
        _EMB + "position_embedding/vars/0": state["pos_embed"][0],
        _ENC + "layer_norm/vars/0": state["norm.weight"], _ENC + "layer_norm/vars/1": state["norm.bias"]}
    if cfg.class_token == "learned":
        a[_EMB + "vars/0"] = state["cls_token"]
    for i in range(cfg.depth):
        b, c = _block(i), f"blocks.{i}."
        for ln, name in (("layer_norm_1", "norm1"), ("layer_norm_2", "norm2")):
            a[b + ln + "/vars/0"], a[b + ln + "/vars/1"] = state[c + name + ".weight"], state[c + name + ".bias"]
        w = state[c + "attn.qkv.weight"]
        for j, part in enumerate(("query", "key", "value")):
            a[f"{b}mha/{part}_dense/vars/0"] = w[j * D:(j + 1) * D].T.reshape(D, H, hd)
            if cfg.qkv_bias:
                a[f"{b}mha/{part}_dense/vars/1"] = state[c + "attn.qkv.bias"][j * D:(j + 1) * D].reshape(H, hd)
        a[f"{b}mha/output_dense/vars/0"] = state[c + "attn.proj.weight"].T.reshape(H, hd, D)
        if cfg.qkv_bias:
            a[f"{b}mha/output_dense/vars/1"] = state[c + "attn.proj.bias"]
        for dense, name in (("dense_1", "fc1"), ("dense_2", "fc2")):
            a[f"{b}mlp/{dense}/vars/0"], a[f"{b}mlp/{dense}/vars/1"] = (state[c + f"mlp.{name}.weight"].T,
                                                                       state[c + f"mlp.{name}.bias"])
    h: dict[str, np.ndarray] = {}
    if cfg.num_classes:
        d = "dense"
        if cfg.representation_size:
            h["layers/dense/vars/0"], h["layers/dense/vars/1"] = state["pre_logits.fc.weight"].T, state["pre_logits.fc.bias"]
            d = "dense_1"
        h[f"layers/{d}/vars/0"], h[f"layers/{d}/vars/1"] = state["head.weight"].T, state["head.bias"]
    return ({k: np.ascontiguousarray(v, np.float32) for k, v in a.items()},
            {k: np.ascontiguousarray(v, np.float32) for k, v in h.items()})


def _assign(model, backbone: Mapping[str, np.ndarray], head: Mapping[str, np.ndarray]) -> None:
    """Put keras-hub-layout arrays into a keras-hub model, through its own variables (strict: each is set once)."""
    bb = model.backbone if hasattr(model, "backbone") else model
    emb, enc = bb.get_layer("vit_patching_and_embedding"), bb.get_layer("vit_encoder")
    targets = {_EMB + "patch_embedding/vars/0": emb.patch_embedding.kernel,
               _EMB + "patch_embedding/vars/1": emb.patch_embedding.bias,
               _EMB + "position_embedding/vars/0": emb.position_embedding.embeddings,
               _ENC + "layer_norm/vars/0": enc.layer_norm.gamma, _ENC + "layer_norm/vars/1": enc.layer_norm.beta}
    if getattr(emb, "use_class_token", False):
        targets[_EMB + "vars/0"] = emb.class_token
    for i, blk in enumerate(enc.encoder_layers):
        b = _block(i)
        for ln, layer in (("layer_norm_1", blk.layer_norm_1), ("layer_norm_2", blk.layer_norm_2)):
            targets[b + ln + "/vars/0"], targets[b + ln + "/vars/1"] = layer.gamma, layer.beta
        for part in ("query", "key", "value", "output"):
            dense = getattr(blk.mha, f"_{part}_dense")
            targets[f"{b}mha/{part}_dense/vars/0"] = dense.kernel
            if dense.bias is not None:
                targets[f"{b}mha/{part}_dense/vars/1"] = dense.bias
        for dense in ("dense_1", "dense_2"):
            layer = getattr(blk.mlp, dense)
            targets[f"{b}mlp/{dense}/vars/0"], targets[f"{b}mlp/{dense}/vars/1"] = layer.kernel, layer.bias
    if head:
        layers = ([model.intermediate_layer] if model.intermediate_dim else []) + [model.output_dense]
        for name, layer in zip(["dense", "dense_1"], layers):
            targets[f"layers/{name}/vars/0"], targets[f"layers/{name}/vars/1"] = layer.kernel, layer.bias
    values = {**backbone, **head}
    if set(values) != set(targets):
        raise MismatchError("keras-hub model", [f"no variable for {k!r}" for k in sorted(set(values) - set(targets))]
                            + [f"no value for {k!r}" for k in sorted(set(targets) - set(values))])
    for k, var in targets.items():
        if tuple(var.shape) != values[k].shape:
            raise MismatchError("keras-hub model", [f"{k!r}: expected shape {tuple(var.shape)}, got {values[k].shape}"])
        var.assign(values[k])


def save_kerashub_preset(directory: str | os.PathLike, cfg: ViTConfig, state: Mapping[str, np.ndarray], *,
                         overwrite: bool = False) -> Path:
    """A preset directory keras-hub's own `from_preset` loads: keras-hub builds the model, its variables get the
    weights, and its `save_to_preset` writes the files; atomically (a temporary directory renamed into place)."""
    from ..backend import import_frameworks_in_safe_order

    directory = Path(directory)
    if directory.exists() and not overwrite:
        raise OutputError(f"{directory} exists; pass --force to replace it")
    backbone, head = export_kerashub(cfg, state)
    import_frameworks_in_safe_order(["keras"])
    model = build_kerashub(cfg)
    _assign(model, backbone, head)
    return write_dir_atomically(directory, lambda tmp: model.save_to_preset(str(tmp)), overwrite=overwrite)
