"""The framework-free training recipe every backend's `train.py` implements, and its float64 oracles.

  TrainConfig       the recipe's settings (defined in the contract, shared/config.py, which the Backend
                    interface names; importable here too)
  lr_at(tcfg, step) linear warm-up from 0 to lr over `warmup_steps`, then cosine to `min_lr`
                    (the one schedule every backend implements; step counts from 0)
  smoothed_ce       label-smoothing cross-entropy and its gradient w.r.t. the logits, float64 NumPy (the
                    oracle): target = (1 - eps) one_hot + eps / K, loss = mean_b(-sum_k target log_softmax)
  topk_accuracy     Top-1 / Top-5;  evaluate(backend, cfg, state, images, labels) runs a backend's `predict`
  switch_head       replace the classifier: 'linear' (head only) or 'pretrain' (pre_logits.fc Linear+Tanh,
                    then head), freshly initialised, everything else kept
  decay_mask        which canonical keys get weight decay (matrices only: not biases, norms, tokens, tables)
  sgd_update / adamw_update   float64 NumPy single steps (the oracle of the optimiser-step conformance)
"""
from __future__ import annotations

import json
import math
import zlib
from typing import Mapping

import numpy as np

from ..config import TrainConfig, ViTConfig  # noqa: F401  (TrainConfig: the recipe's, kept importable here)


def lr_at(tcfg: TrainConfig, step: int, total: int) -> float:
    """Learning rate used for optimiser step `step` (0-based) of `total`."""
    step = float(step)
    if tcfg.warmup_steps > 0 and step < tcfg.warmup_steps:
        return tcfg.lr * (step + 1.0) / tcfg.warmup_steps
    span = max(total - tcfg.warmup_steps, 1)
    t = min(max((step - tcfg.warmup_steps) / span, 0.0), 1.0)
    return tcfg.min_lr + 0.5 * (tcfg.lr - tcfg.min_lr) * (1.0 + math.cos(math.pi * t))


def smoothed_targets(labels: np.ndarray, num_classes: int, smoothing: float) -> np.ndarray:
    t = np.full((len(labels), num_classes), smoothing / num_classes, dtype=np.float64)
    t[np.arange(len(labels)), np.asarray(labels, np.int64)] += 1.0 - smoothing
    return t


def smoothed_ce(logits: np.ndarray, labels: np.ndarray, smoothing: float = 0.0) -> tuple[float, np.ndarray]:
    """(mean loss, d loss / d logits), float64."""
    z = np.asarray(logits, np.float64)
    z = z - z.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    t = smoothed_targets(labels, z.shape[1], smoothing)
    B = z.shape[0]
    loss = float(-(t * logp).sum() / B)
    grad = (np.exp(logp) - t) / B
    return loss, grad


def evaluate(backend, cfg: ViTConfig, state: Mapping[str, np.ndarray], images: np.ndarray,
             labels: np.ndarray) -> dict[str, float]:
    """Top-1 / Top-5 of canonical weights in a backend (`Backend.build` + `Backend.predict`)."""
    return topk_accuracy(backend.predict(backend.build(cfg, state), images), labels)


def topk_accuracy(logits: np.ndarray, labels: np.ndarray, ks=(1, 5)) -> dict[str, float]:
    logits = np.asarray(logits)
    labels = np.asarray(labels)
    order = np.argsort(-logits, axis=1, kind="stable")
    out = {}
    for k in ks:
        kk = min(k, logits.shape[1])
        out[f"top{k}"] = float(np.mean(np.any(order[:, :kk] == labels[:, None], axis=1))) if len(labels) else float("nan")
    return out


# ------------------------------------------------------------------ heads
def switch_head(cfg: ViTConfig, state: Mapping[str, np.ndarray], kind: str = "linear",
                num_classes: int | None = None, seed: int = 0,
                representation_size: int | None = None) -> tuple[ViTConfig, dict[str, np.ndarray]]:
    """New classifier on the same trunk: kind 'linear' (head only) or 'pretrain' (Linear+Tanh, head).

    New weights: truncated-normal-free timm-style init, weights N(0, 0.02) (pre-logits: 1/sqrt(fan_in)),
    zero biases; seeded per key so the result is identical in every backend.
    """
    if kind not in ("linear", "pretrain"):
        raise ValueError(f"head kind must be 'linear' or 'pretrain', got {kind!r}")
    K = cfg.num_classes if num_classes is None else int(num_classes)
    rep = (representation_size or cfg.representation_size or cfg.width) if kind == "pretrain" else None
    new_cfg = cfg.replace(num_classes=K, representation_size=rep, output_softmax=False)
    out = {k: np.asarray(v, np.float32) for k, v in state.items()
           if not k.startswith(("head.", "pre_logits."))}

    def rng(key):
        return np.random.default_rng([seed, zlib.crc32(key.encode())])

    if rep:
        out["pre_logits.fc.weight"] = (rng("pre_logits.fc.weight").standard_normal((rep, cfg.width))
                                       * cfg.width ** -0.5).astype(np.float32)
        out["pre_logits.fc.bias"] = np.zeros(rep, np.float32)
    if K:
        out["head.weight"] = (0.02 * rng("head.weight").standard_normal((K, new_cfg.feature_dim))).astype(np.float32)
        out["head.bias"] = np.zeros(K, np.float32)
    return new_cfg, out


# ------------------------------------------------------------------ optimiser oracle
def decay_mask(key: str, shape) -> bool:
    """Weight decay on matrices / conv kernels only, and not on the tokens and position table (timm's
    `no_weight_decay`: pos_embed, cls_token, reg_token, dist_token; big_vision practice)."""
    return len(shape) >= 2 and key not in ("cls_token", "pos_embed", "pos_embed_y", "pos_embed_x", "reg_token",
                                             "dist_token")


def sgd_update(state: Mapping[str, np.ndarray], grads: Mapping[str, np.ndarray], lr: float,
               weight_decay: float = 0.0) -> dict[str, np.ndarray]:
    """Plain SGD (torch.optim.SGD formula, no momentum), decay on decay_mask keys: p <- p - lr (g + wd p). float64."""
    out = {}
    for k, p in state.items():
        p = np.asarray(p, np.float64)
        g = np.asarray(grads[k], np.float64)
        wd = weight_decay if decay_mask(k, p.shape) else 0.0
        out[k] = p - lr * (g + wd * p)
    return out


def adamw_update(state: Mapping[str, np.ndarray], grads: Mapping[str, np.ndarray], lr: float,
                 weight_decay: float = 0.0, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
                 step: int = 1) -> dict[str, np.ndarray]:
    """First AdamW step from zero moments (torch.optim.AdamW's formula), float64:

    m = (1-b1) g, v = (1-b2) g^2, p <- p (1 - lr wd) - lr * (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps).
    """
    out = {}
    for k, p in state.items():
        p = np.asarray(p, np.float64)
        g = np.asarray(grads[k], np.float64)
        wd = weight_decay if decay_mask(k, p.shape) else 0.0
        m = (1 - beta1) * g
        v = (1 - beta2) * g * g
        mhat = m / (1 - beta1 ** step)
        vhat = v / (1 - beta2 ** step)
        out[k] = p * (1 - lr * wd) - lr * mhat / (np.sqrt(vhat) + eps)
    return out


# ------------------------------------------------------------------ helpers shared by the train loops
def as_xy(data) -> tuple[np.ndarray, np.ndarray]:
    """A shared.training.data.Dataset or an (images, labels) pair -> (NCHW float32, int64 labels)."""
    if data is None:
        return None, None
    if hasattr(data, "images"):
        return np.asarray(data.images, np.float32), np.asarray(data.labels, np.int64)
    x, y = data
    return np.asarray(x, np.float32), np.asarray(y, np.int64)


def raw_logits_reference(cfg: ViTConfig, state: Mapping[str, np.ndarray], images: np.ndarray) -> np.ndarray:
    """float64 head output before any output softmax (what the training loss sees): (B, K), or (2, B, K) with a
    distillation token (see `training_loss`)."""
    from ..reference import head_logits

    return head_logits(cfg, state, images)


def training_loss(logits: np.ndarray, labels: np.ndarray, smoothing: float = 0.0) -> tuple[float, np.ndarray]:
    """The training loss every backend computes, float64: smoothed_ce of (B, K) logits, or for a distilled model's
    (2, B, K) [class head, distillation head] the mean of the two heads' losses (DeiT's hard distillation with the
    labels standing in for the teacher: no teacher model is part of the suite). Returns (loss, d loss / d logits)."""
    z = np.asarray(logits, np.float64)
    if z.ndim == 3:
        parts = [smoothed_ce(z[i], labels, smoothing) for i in range(z.shape[0])]
        return float(np.mean([l for l, _ in parts])), np.stack([g / z.shape[0] for _, g in parts])
    return smoothed_ce(z, labels, smoothing)


def checkpoint_metadata(tcfg: TrainConfig, step: int, backend: str, history: list[dict],
                        extra: Mapping[str, str] | None = None) -> dict[str, str]:
    meta = {"train_recipe": tcfg.to_json(), "train_step": str(step), "train_backend": backend,
            "train_history": json.dumps(history[-20:])}
    meta.update({k: str(v) for k, v in (extra or {}).items()})
    return meta


def save_checkpoint(path, cfg: ViTConfig, state: Mapping[str, np.ndarray], tcfg: TrainConfig, step: int,
                    backend: str, history: list[dict], extra: Mapping[str, str] | None = None, *,
                    overwrite: bool = True):
    """Canonical safetensors (shared.weights.save: validated, atomic) with the recipe in the metadata."""
    from ..weights import save

    return save(path, cfg, state, checkpoint_metadata(tcfg, step, backend, history, extra), overwrite=overwrite)


class Progress:
    """A rich progress bar showing step, learning rate, loss and batch accuracy (no-op when disabled)."""

    def __init__(self, total: int, description: str, enabled: bool = True):
        self.enabled = enabled
        self.total = total
        self.description = description
        self._p = None

    def __enter__(self) -> "Progress":
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as RP, TextColumn, TimeElapsedColumn

            self._p = RP(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                         TextColumn("{task.fields[info]}"), TimeElapsedColumn(), transient=False)
            self._p.__enter__()
            self._task = self._p.add_task(self.description, total=self.total, info="")
        return self

    def update(self, advance: int = 1, **info) -> None:
        if self._p is not None:
            text = "  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in info.items())
            self._p.update(self._task, advance=advance, info=text)

    def log(self, text: str) -> None:
        if self._p is not None:
            self._p.console.print(text)

    def __exit__(self, *exc) -> None:
        if self._p is not None:
            self._p.__exit__(*exc)
