"""Training with MindSpore: `mindspore.value_and_grad` + `mindspore.experimental.optim.AdamW` (PyTorch's formula;
mint.optim.AdamW has no CPU kernel).

Every function takes a native model (`build_model`); `MindSporeBackend` adapts them to the canonical-state hooks
of shared.backend.Backend:

    predict_logits(model, images) -> the model's output (logits, softmaxed when cfg.output_softmax)
    loss_and_grads(model, images, labels, label_smoothing) -> (loss, {canonical key: grad})
    optimizer_step(model, images, labels, "sgd" | "adamw", lr=..., weight_decay=...)   in place
    train(model, train_data, val_data, TrainConfig(steps=300)) -> history        in place

  loss       SmoothedCE(nn.Cell): log-softmax cross-entropy against (1 - eps) one_hot + eps / K, the
             formula of shared.training.recipe.smoothed_ce, on the head output before any output softmax; for
             a distilled model the mean of the two heads' losses (shared.training.recipe.training_loss)
  optimiser  experimental.optim.AdamW / SGD with two parameter groups (decay on matrices only,
             shared.training.recipe.decay_mask); the shared warm-up + cosine schedule through
             mindspore.experimental.optim.lr_scheduler.LambdaLR
  step       a train step function `grad_fn -> optimizer(grads)`, compiled with mindspore.jit when jit=True
  progress   a rich progress bar (loss, batch accuracy, lr), checkpoints in the canonical format per epoch
"""
from __future__ import annotations

import time

import numpy as np

import mindspore as ms
from mindspore import Tensor, nn, ops
from mindspore.experimental import optim as eoptim
from mindspore import dtype as mstype

from shared.training import recipe as T
from shared.training.data import batch_stream

from .model import PosTable, VisionTransformer, to_canonical


class RawLogits(nn.Cell):
    """Head output before any output softmax, at the model's own input size: (B, K), or (2, B, K) for a
    distilled model ([head, head_dist]; `heads` says how many)."""

    def __init__(self, model):
        super().__init__(auto_prefix=False)
        self.model = model
        cfg = model.config
        self.heads = 2 if cfg.dist_token else 1
        self.pos = PosTable(cfg, cfg.grid)
        self.cast = ops.Cast()

    def construct(self, x):
        outs = self.model.forward_stages(x, self.pos)
        return self.cast(self.model.head_raw(outs[-3], outs[-2]), mstype.float32)


def _predicted(z: np.ndarray) -> np.ndarray:
    """Class predictions from RawLogits' output: a distilled model's (2, B, K) is averaged over its heads first
    (DeiT's inference logits)."""
    return np.argmax(z.mean(0) if z.ndim == 3 else z, -1)


class SmoothedCE(nn.Cell):
    """mean_b( -sum_k target_bk log_softmax(z)_bk ), target = (1 - eps) one_hot + eps / K; for a distilled
    model's (2, B, K) logits the mean over both heads as well (= the mean of the two heads' losses)."""

    def __init__(self, net: RawLogits, num_classes: int, smoothing: float):
        super().__init__(auto_prefix=False)
        self.net = net
        self.heads = net.heads
        self.k = int(num_classes)
        self.smoothing = float(smoothing)
        self.log_softmax = nn.LogSoftmax(axis=-1)
        self.one_hot = ops.OneHot()
        self.on = Tensor(1.0 - smoothing + smoothing / num_classes, mstype.float32)
        self.off = Tensor(smoothing / num_classes, mstype.float32)

    def construct(self, x, labels):
        z = self.net(x)
        logp = self.log_softmax(z)
        t = self.one_hot(labels, self.k, self.on, self.off)  # (B, K), broadcast over the heads
        return -(t * logp).sum() / (z.shape[-2] * self.heads)


def _groups(model, weight_decay: float):
    decay = [p for p in model.trainable_params() if T.decay_mask(p.name, tuple(p.shape))]
    other = [p for p in model.trainable_params() if not T.decay_mask(p.name, tuple(p.shape))]
    return [{"params": decay, "weight_decay": float(weight_decay)}, {"params": other, "weight_decay": 0.0}]


def predict_logits(model: VisionTransformer, images: np.ndarray, batch: int = 256) -> np.ndarray:
    was = model.training
    model.set_train(False)
    try:
        outs = [model(Tensor(np.ascontiguousarray(images[i:i + batch], np.float32))).asnumpy().astype(np.float32)
                for i in range(0, len(images), batch)]
    finally:
        model.set_train(was)
    return np.concatenate(outs) if outs else np.zeros((0, model.config.num_classes), np.float32)


def train(model: VisionTransformer, train_data, val_data, tcfg: T.TrainConfig, *, progress: bool = True,
          checkpoint=None, name: str = "mindspore", jit: bool = False) -> list[dict]:
    """A value_and_grad loop with experimental.optim.AdamW, in place; returns the history (a dict per evaluation)."""
    from mindspore.experimental.optim.lr_scheduler import LambdaLR

    cfg = model.config
    ms.set_seed(tcfg.seed)
    x, y = T.as_xy(train_data)
    vx, vy = T.as_xy(val_data)
    model.set_train(True)
    total = tcfg.total_steps(len(y))
    per_epoch = tcfg.steps_per_epoch(len(y))
    opt = eoptim.AdamW(_groups(model, tcfg.weight_decay), lr=tcfg.lr, betas=(tcfg.beta1, tcfg.beta2),
                           eps=tcfg.eps)
    sched = LambdaLR(opt, lambda s: T.lr_at(tcfg, s + tcfg.start_step, total) / tcfg.lr)
    loss_net = SmoothedCE(RawLogits(model), cfg.num_classes, tcfg.label_smoothing)
    params = opt.parameters
    grad_fn = ms.value_and_grad(loss_net, None, params)

    def step_fn(xb, yb):
        loss, grads = grad_fn(xb, yb)
        opt(tuple(ms.mutable(g) for g in grads))  # variables, not constants: no recompiling per step
        return loss

    if jit:
        step_fn = ms.jit(step_fn)
    acc_net = RawLogits(model)
    history: list[dict] = []
    stream = batch_stream(len(y), tcfg.batch, tcfg.seed, tcfg.start_step)
    t0 = time.perf_counter()
    run_loss = run_acc = None
    with T.Progress(total - tcfg.start_step, f"{name} train {cfg.name}", progress) as bar:
        for step in range(tcfg.start_step, total):
            epoch, idx = next(stream)
            xb = Tensor(x[idx])
            yb = Tensor(y[idx].astype(np.int32))
            lr = T.lr_at(tcfg, step, total)
            loss = float(step_fn(xb, yb).asnumpy())
            sched.step()
            if progress or (step + 1) % per_epoch == 0:
                acc = float(np.mean(_predicted(acc_net(xb).asnumpy()) == y[idx]))
            else:
                acc = float("nan")
            run_loss = loss if run_loss is None else 0.9 * run_loss + 0.1 * loss
            run_acc = acc if run_acc is None or np.isnan(run_acc) else 0.9 * run_acc + 0.1 * acc
            bar.update(1, epoch=epoch, lr=lr, loss=run_loss, acc=run_acc)
            done = step + 1
            end_of_epoch = done % per_epoch == 0
            want_eval = (tcfg.eval_every and done % tcfg.eval_every == 0) or done == total
            if want_eval or end_of_epoch:
                rec = {"step": done, "epoch": epoch, "lr": lr, "loss": loss, "train_loss_avg": run_loss,
                       "seconds": time.perf_counter() - t0}
                if want_eval and vx is not None:
                    rec.update({f"val_{k}": v for k, v in T.topk_accuracy(predict_logits(model, vx), vy).items()})
                    bar.log(f"step {done}: loss {run_loss:.4f}, held-out top-1 {rec['val_top1']:.2%}")
                history.append(rec)
                if checkpoint is not None and (end_of_epoch or done == total):
                    T.save_checkpoint(checkpoint, cfg, to_canonical(model), tcfg, done, name, history)
    model.set_train(False)
    return history


def _grad_fn(model: VisionTransformer, label_smoothing: float, params):
    model.set_train(False)  # no dropout / drop path
    loss_net = SmoothedCE(RawLogits(model), model.config.num_classes, label_smoothing)
    return ms.value_and_grad(loss_net, None, params)


def loss_and_grads(model: VisionTransformer, images: np.ndarray, labels: np.ndarray,
                   label_smoothing: float = 0.0) -> tuple[float, dict[str, np.ndarray]]:
    """(mean loss, canonical key -> float32 gradient) via mindspore.value_and_grad, no dropout."""
    params = model.trainable_params()
    loss, grads = _grad_fn(model, label_smoothing, params)(Tensor(np.ascontiguousarray(images, np.float32)),
                                                           Tensor(np.asarray(labels, np.int32)))
    return float(loss.asnumpy()), {p.name: g.asnumpy().astype(np.float32) for p, g in zip(params, grads)}


def optimizer_step(model: VisionTransformer, images: np.ndarray, labels: np.ndarray, optimizer: str = "sgd", *,
                   lr: float, weight_decay: float = 0.0, label_smoothing: float = 0.0, betas=(0.9, 0.999),
                   eps: float = 1e-8) -> None:
    """One experimental.optim.SGD / AdamW step (decay on matrices only) on `model`, no dropout."""
    groups = _groups(model, weight_decay)
    if optimizer == "sgd":
        opt = eoptim.SGD(groups, lr=lr)
    elif optimizer == "adamw":
        opt = eoptim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps)
    else:
        raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {optimizer!r}")
    _, grads = _grad_fn(model, label_smoothing, opt.parameters)(Tensor(np.ascontiguousarray(images, np.float32)),
                                                                 Tensor(np.asarray(labels, np.int32)))
    opt(tuple(ms.mutable(g) for g in grads))
