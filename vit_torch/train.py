"""Training with PyTorch: a plain loop, torch.optim.AdamW, LambdaLR for the shared schedule.

Every function takes a native model (`build_model`); `TorchBackend` adapts them to the canonical-state hooks of
shared.backend.Backend:

    predict_logits(model, images) -> the model's output (logits, softmaxed when cfg.output_softmax)
    loss_and_grads(model, images, labels, label_smoothing) -> (loss, {canonical key: grad})
    optimizer_step(model, images, labels, "sgd" | "adamw", lr=..., weight_decay=...)   in place
    train(model, train_data, val_data, TrainConfig(steps=300)) -> history        in place

Everything framework-free comes from shared.training: the batches (data.batch_stream), the schedule
(recipe.lr_at), weight decay only on matrices (recipe.decay_mask), the label-smoothing cross-entropy
(F.cross_entropy(label_smoothing=eps) is the same formula as recipe.smoothed_ce), canonical checkpoints
(recipe.save_checkpoint). The loss is taken on the head output before any output softmax, without dropout in
the conformance entry points.
"""
from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from shared.training import recipe as T
from shared.training.data import batch_stream

from .model import VisionTransformer, to_canonical


def raw_logits(model: VisionTransformer, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Head outputs before the output softmax (if any): (logits,), or (head, head_dist) for a distilled model."""
    return model.head_outputs(model.forward_features(x))


def training_loss(logits: tuple[torch.Tensor, ...], labels: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Label-smoothing cross-entropy, averaged over the heads (`shared.training.recipe.training_loss`)."""
    return sum(F.cross_entropy(z, labels, label_smoothing=smoothing) for z in logits) / len(logits)


def _param_groups(model: VisionTransformer, weight_decay: float):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if T.decay_mask(name, tuple(p.shape)) else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _tensor(model: VisionTransformer, images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images, np.float32)).to(model.dtype)


def _loss(model: VisionTransformer, images: np.ndarray, labels: np.ndarray, smoothing: float) -> torch.Tensor:
    return training_loss(raw_logits(model, _tensor(model, images)), torch.from_numpy(np.asarray(labels, np.int64)),
                         smoothing)


@torch.no_grad()
def predict_logits(model: VisionTransformer, images: np.ndarray, batch: int = 256) -> np.ndarray:
    was_training = model.training
    model.eval()
    try:
        outs = [model(_tensor(model, images[i:i + batch])).float().numpy() for i in range(0, len(images), batch)]
    finally:
        model.train(was_training)
    return np.concatenate(outs) if outs else np.zeros((0, model.config.num_classes), np.float32)


def loss_and_grads(model: VisionTransformer, images: np.ndarray, labels: np.ndarray,
                   label_smoothing: float = 0.0) -> tuple[float, dict[str, np.ndarray]]:
    """(mean loss, canonical key -> gradient in the model's dtype) without dropout."""
    model.eval()  # no dropout / drop path; autograd still records
    model.zero_grad(set_to_none=True)
    loss = _loss(model, images, labels, label_smoothing)
    loss.backward()
    return float(loss.detach()), {k: p.grad.detach().numpy().copy() for k, p in model.named_parameters()}


def optimizer_step(model: VisionTransformer, images: np.ndarray, labels: np.ndarray, optimizer: str = "sgd", *,
                   lr: float, weight_decay: float = 0.0, label_smoothing: float = 0.0, betas=(0.9, 0.999),
                   eps: float = 1e-8) -> None:
    """One torch.optim.SGD or AdamW step (decay on matrices only) on `model`, no dropout."""
    groups = _param_groups(model, weight_decay)
    if optimizer == "sgd":
        opt = torch.optim.SGD(groups, lr=lr)
    elif optimizer == "adamw":
        opt = torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps)
    else:
        raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {optimizer!r}")
    model.eval()
    loss = _loss(model, images, labels, label_smoothing)
    opt.zero_grad()
    loss.backward()
    opt.step()


def train(model: VisionTransformer, train_data, val_data, tcfg: T.TrainConfig, *, progress: bool = True,
          checkpoint=None, name: str = "torch") -> list[dict]:
    """Train `model` in place; returns the history (a dict per evaluation). `name` is recorded in checkpoints."""
    cfg = model.config
    torch.manual_seed(tcfg.seed)
    x, y = T.as_xy(train_data)
    vx, vy = T.as_xy(val_data)
    model.train()
    total = tcfg.total_steps(len(y))
    per_epoch = tcfg.steps_per_epoch(len(y))
    opt = torch.optim.AdamW(_param_groups(model, tcfg.weight_decay), lr=tcfg.lr, betas=(tcfg.beta1, tcfg.beta2),
                            eps=tcfg.eps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: T.lr_at(tcfg, s + tcfg.start_step, total) / tcfg.lr)
    history: list[dict] = []
    stream = batch_stream(len(y), tcfg.batch, tcfg.seed, tcfg.start_step)
    t0 = time.perf_counter()
    run_loss = run_acc = None
    with T.Progress(total - tcfg.start_step, f"{name} train {cfg.name}", progress) as bar:
        for step in range(tcfg.start_step, total):
            epoch, idx = next(stream)
            xb = torch.from_numpy(x[idx])
            yb = torch.from_numpy(y[idx])
            heads = raw_logits(model, xb)
            loss = training_loss(heads, yb, tcfg.label_smoothing)
            logits = sum(heads) / len(heads)
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
                    rec.update({f"val_{k}": v for k, v in T.topk_accuracy(predict_logits(model, vx), vy).items()})
                    bar.log(f"step {done}: loss {run_loss:.4f}, held-out top-1 {rec['val_top1']:.2%}")
                history.append(rec)
                if checkpoint is not None and (end_of_epoch or done == total):
                    T.save_checkpoint(checkpoint, cfg, to_canonical(model), tcfg, done, name, history)
    model.eval()
    return history
