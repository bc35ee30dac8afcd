"""Training with PyTorch: a plain loop, torch.optim.AdamW, LambdaLR for the shared schedule.

    state, history = train(cfg, state, train_data, val_data, TrainConfig(steps=300))
    evaluate(cfg, state, images, labels) -> {"top1", "top5"}
    one_step(cfg, state, images, labels, optimizer="sgd"|"adamw", lr=..., weight_decay=...) -> new state
    loss_and_grads(cfg, state, images, labels, label_smoothing) -> (loss, {key: grad})

Everything framework-free comes from shared/: the batches (shared.data.batch_stream), the schedule
(shared.training.lr_at), weight decay only on matrices (shared.training.decay_mask), the
label-smoothing cross-entropy (F.cross_entropy(label_smoothing=eps) is the same formula as
shared.training.smoothed_ce), checkpoints in the canonical format (shared.weights.save).
The loss is taken on the head output before any output softmax.
"""
from __future__ import annotations

import time
from typing import Mapping

import numpy as np
import torch
import torch.nn.functional as F

from shared import training as T
from shared.config import ViTConfig
from shared.data import batch_stream

from .backend import pin_float32_numerics
from .convert import to_canonical
from .model import VisionTransformer, build_model

BACKEND = "torch"


def raw_logits(model: VisionTransformer, x: torch.Tensor) -> torch.Tensor:
    """Head output before the output softmax (if any)."""
    feats = model.forward_head(model.forward_features(x), pre_logits=True)
    return model.head(feats)


def _param_groups(model: VisionTransformer, weight_decay: float):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if T.decay_mask(name, tuple(p.shape)) else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _build(cfg: ViTConfig, state, dtype: str = "float32", fused_attn: bool = True) -> VisionTransformer:
    pin_float32_numerics()
    if dtype == "float64":
        return build_model(cfg, state, fused_attn=True).double()  # SDPA: softmax in float64 (the explicit path rounds to float32)
    return build_model(cfg, state, dtype=dtype, fused_attn=fused_attn)


@torch.no_grad()
def predict_logits(cfg: ViTConfig, state, images: np.ndarray, batch: int = 256, model=None) -> np.ndarray:
    model = model or _build(cfg, state)
    model.eval()
    outs = []
    for i in range(0, len(images), batch):
        outs.append(model(torch.from_numpy(np.ascontiguousarray(images[i:i + batch], np.float32))).float().numpy())
    return np.concatenate(outs) if outs else np.zeros((0, cfg.num_classes), np.float32)


def evaluate(cfg: ViTConfig, state, images: np.ndarray, labels: np.ndarray, model=None) -> dict[str, float]:
    return T.topk_accuracy(predict_logits(cfg, state, images, model=model), labels)


def train(cfg: ViTConfig, state: Mapping[str, np.ndarray], train_data, val_data, tcfg: T.TrainConfig,
          progress: bool = True, checkpoint=None, threads: int | None = None):
    """Train and return (canonical float32 state, history: list of dicts per evaluation)."""
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(tcfg.seed)
    x, y = T.as_xy(train_data)
    vx, vy = T.as_xy(val_data)
    model = _build(cfg, state).train()
    total = tcfg.total_steps(len(y))
    per_epoch = tcfg.steps_per_epoch(len(y))
    opt = torch.optim.AdamW(_param_groups(model, tcfg.weight_decay), lr=tcfg.lr, betas=(tcfg.beta1, tcfg.beta2),
                            eps=tcfg.eps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: T.lr_at(tcfg, s + tcfg.start_step, total) / tcfg.lr)
    history: list[dict] = []
    stream = batch_stream(len(y), tcfg.batch, tcfg.seed, tcfg.start_step)
    t0 = time.perf_counter()
    run_loss = run_acc = None
    with T.Progress(total - tcfg.start_step, f"torch train {cfg.name}", progress) as bar:
        for step in range(tcfg.start_step, total):
            epoch, idx = next(stream)
            xb = torch.from_numpy(x[idx])
            yb = torch.from_numpy(y[idx])
            logits = raw_logits(model, xb)
            loss = F.cross_entropy(logits, yb, label_smoothing=tcfg.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            lr = sched.get_last_lr()[0]
            sched.step()
            acc = float((logits.argmax(1) == yb).float().mean())
            lv = float(loss.detach())
            run_loss = lv if run_loss is None else 0.9 * run_loss + 0.1 * lv
            run_acc = acc if run_acc is None else 0.9 * run_acc + 0.1 * acc
            bar.update(1, epoch=epoch, lr=lr, loss=run_loss, acc=run_acc)
            done = step + 1
            end_of_epoch = done % per_epoch == 0
            if (tcfg.eval_every and done % tcfg.eval_every == 0) or done == total or end_of_epoch:
                rec = {"step": done, "epoch": epoch, "lr": lr, "loss": lv, "train_loss_avg": run_loss,
                       "seconds": time.perf_counter() - t0}
                if vx is not None and (done == total or (tcfg.eval_every and done % tcfg.eval_every == 0)):
                    model.eval()
                    rec.update({f"val_{k}": v for k, v in evaluate(cfg, None, vx, vy, model=model).items()})
                    model.train()
                    bar.log(f"step {done}: loss {run_loss:.4f}, held-out top-1 {rec['val_top1']:.2%}")
                history.append(rec)
                if checkpoint is not None and (end_of_epoch or done == total):
                    T.save_checkpoint(checkpoint, cfg, to_canonical(model), tcfg, done, BACKEND, history)
    model.eval()
    return to_canonical(model), history


# ------------------------------------------------------------------ conformance entry points
def loss_and_grads(cfg: ViTConfig, state, images: np.ndarray, labels: np.ndarray, label_smoothing: float = 0.0,
                   dtype: str = "float32") -> tuple[float, dict[str, np.ndarray]]:
    """(mean loss, canonical key -> gradient) without dropout; dtype "float64" is the gradient oracle."""
    model = _build(cfg, state, dtype=dtype)
    model.eval()  # no dropout / drop path; autograd still records
    tdt = torch.float64 if dtype == "float64" else torch.float32
    x = torch.from_numpy(np.ascontiguousarray(images)).to(tdt)
    loss = F.cross_entropy(raw_logits(model, x), torch.from_numpy(np.asarray(labels, np.int64)),
                           label_smoothing=label_smoothing)
    loss.backward()
    grads = {k: p.grad.detach().numpy().astype(np.float64 if dtype == "float64" else np.float32)
             for k, p in model.named_parameters()}
    return float(loss.detach()), grads


def one_step(cfg: ViTConfig, state, images: np.ndarray, labels: np.ndarray, optimizer: str = "sgd",
             lr: float = 1e-2, weight_decay: float = 0.0, label_smoothing: float = 0.0, betas=(0.9, 0.999),
             eps: float = 1e-8) -> dict[str, np.ndarray]:
    """One optimiser step (torch.optim.SGD or AdamW, decay on matrices only) from `state`; no dropout."""
    model = _build(cfg, state).eval()
    groups = _param_groups(model, weight_decay)
    if optimizer == "sgd":
        opt = torch.optim.SGD(groups, lr=lr)
    elif optimizer == "adamw":
        opt = torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps)
    else:
        raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {optimizer!r}")
    loss = F.cross_entropy(raw_logits(model, torch.from_numpy(np.ascontiguousarray(images, np.float32))),
                           torch.from_numpy(np.asarray(labels, np.int64)), label_smoothing=label_smoothing)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return to_canonical(model)
