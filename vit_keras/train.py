"""Training with Keras 3: `keras.Model.fit` with AdamW, a LearningRateSchedule and Keras' own progress bar, on
every Keras backend (gradients: tf.GradientTape, torch.autograd or jax.value_and_grad).

Every function takes a native model (`build_model`); `KerasBackend` adapts them to the canonical-state hooks of
shared.backend.Backend (its training models run NCHW, `data_format="channels_first"`, so the shared pipeline's
arrays go in unchanged):

    predict_logits(model, images) -> the model's output for NCHW images (either layout of model)
    loss_and_grads(model, images, labels, label_smoothing) -> (loss, {canonical key: grad})
    optimizer_step(model, images, labels, "sgd" | "adamw", lr=..., weight_decay=...)   in place
    train(model, train_data, val_data, TrainConfig(steps=300)) -> history        in place

  data       a keras.utils.PyDataset over shared.training.data's shuffled batches (the same as torch's)
  schedule   WarmupCosine(LearningRateSchedule) computes shared.training.recipe.lr_at with keras.ops
  loss       categorical cross-entropy (from_logits, label_smoothing=eps) on one-hot labels:
             target (1 - eps) one_hot + eps / K, the formula of shared.training.recipe.smoothed_ce; a distilled
             model's two heads (B, 2, K) each get the labels and the loss is the mean of the two heads' losses
             (shared.training.recipe.training_loss)
  decay      AdamW.exclude_from_weight_decay on the variables shared.training.recipe.decay_mask exempts
             (vectors, cls_token, pos_embed: decay on matrices only)
  epsilon    Keras' Adam adds epsilon to sqrt(v) before bias correction ("epsilon hat"); optimizer_step passes
             eps * sqrt(1 - beta2^t) so its step equals torch's formula exactly (training uses eps as is)
"""
from __future__ import annotations

import math
import time

import numpy as np

import keras
from keras import ops

from shared.training import recipe as T
from shared.training.data import shuffled_order

from .model import VisionTransformer, from_keras_layout, to_canonical


class RawLogits(keras.Model):
    """The ViT's head output before any output softmax (what the loss sees: `VisionTransformer.head_logits`,
    (B, K), or (B, 2, K) for a distilled model); shares the ViT's variables."""

    def __init__(self, vit, **kwargs):
        super().__init__(**kwargs)
        self.vit = vit

    def call(self, x, training=False):
        return self.vit.head_logits(x, training=training)


class TrainingLoss(keras.losses.Loss):
    """shared.training.recipe.training_loss in keras.ops: label-smoothed cross-entropy of (B, K) logits against
    one-hot (B, K) targets; for a distilled model's (B, 2, K) both heads get the targets, and the mean over all
    (sample, head) pairs is the mean of the two heads' mean losses."""

    def __init__(self, label_smoothing: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.label_smoothing = float(label_smoothing)

    def call(self, y_true, y_pred):
        if len(y_pred.shape) == 3:
            y_true = ops.broadcast_to(ops.expand_dims(y_true, 1), ops.shape(y_pred))
        return keras.losses.categorical_crossentropy(y_true, y_pred, from_logits=True,
                                                     label_smoothing=self.label_smoothing)

    def get_config(self):
        return {**super().get_config(), "label_smoothing": self.label_smoothing}


def _accuracy(y_true, y_pred):
    """Top-1 of the training output; a distilled model is judged by the mean of its heads (its inference output)."""
    if len(y_pred.shape) == 3:
        y_pred = ops.mean(y_pred, axis=1)
    return keras.metrics.categorical_accuracy(y_true, y_pred)


def exclude_from_decay(opt, model: VisionTransformer) -> None:
    """Weight decay only where shared.training.recipe.decay_mask puts it (canonical key and rank decide)."""
    opt.exclude_from_weight_decay(var_list=[var for key, (var, _) in model.canonical_variables().items()
                                            if not T.decay_mask(key, var.shape)])


class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """shared.training.recipe.lr_at as a Keras schedule (`step` = optimizer.iterations, offset by start_step)."""

    def __init__(self, lr, min_lr, warmup_steps, total_steps, start_step=0):
        self.lr, self.min_lr = float(lr), float(min_lr)
        self.warmup_steps, self.total_steps, self.start_step = int(warmup_steps), int(total_steps), int(start_step)

    def __call__(self, step):
        s = ops.cast(step, "float32") + float(self.start_step)
        w = float(max(self.warmup_steps, 1))
        warm = self.lr * (s + 1.0) / w
        span = float(max(self.total_steps - self.warmup_steps, 1))
        t = ops.clip((s - float(self.warmup_steps)) / span, 0.0, 1.0)
        cos = self.min_lr + 0.5 * (self.lr - self.min_lr) * (1.0 + ops.cos(math.pi * t))
        if self.warmup_steps <= 0:
            return cos
        return ops.where(s < float(self.warmup_steps), warm, cos)

    def get_config(self):
        return {"lr": self.lr, "min_lr": self.min_lr, "warmup_steps": self.warmup_steps,
                "total_steps": self.total_steps, "start_step": self.start_step}


class Batches(keras.utils.PyDataset):
    """Global steps start..total of shared.training.data's shuffled batches, one-hot labels."""

    def __init__(self, x, y, num_classes, batch, seed, start, total):
        super().__init__()
        self.x, self.y, self.k = x, y, num_classes
        self.batch, self.seed, self.start, self.total = min(batch, len(y)), seed, start, total
        self.per_epoch = max(len(y) // self.batch, 1)
        self._orders = {}

    def __len__(self):
        return self.total - self.start

    def indices(self, i):
        epoch, j = divmod(self.start + i, self.per_epoch)
        if epoch not in self._orders:
            self._orders = {epoch: shuffled_order(len(self.y), self.seed, epoch)}
        return epoch, self._orders[epoch][j * self.batch:(j + 1) * self.batch]

    def __getitem__(self, i):
        _, idx = self.indices(i)
        return self.x[idx], np.eye(self.k, dtype=np.float32)[self.y[idx]]


class _Monitor(keras.callbacks.Callback):
    """Held-out evaluation every `eval_every` steps and a canonical checkpoint at every epoch end."""

    def __init__(self, vit, tcfg, total, per_epoch, val, checkpoint, history, verbose, name):
        super().__init__()
        self.cfg, self.vit, self.tcfg, self.total, self.per_epoch = vit.cfg, vit, tcfg, total, per_epoch
        self.val, self.checkpoint, self.history, self.verbose, self.name = val, checkpoint, history, verbose, name
        self.t0 = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        done = self.tcfg.start_step + batch + 1
        end_of_epoch = done % self.per_epoch == 0
        want_eval = (self.tcfg.eval_every and done % self.tcfg.eval_every == 0) or done == self.total
        if not (want_eval or end_of_epoch):
            return
        if hasattr(self.model, "jax_state_sync"):  # JAX: fit holds the variables' values apart from the model
            self.model.jax_state_sync()
        logs = logs or {}
        rec = {"step": done, "epoch": (done - 1) // self.per_epoch,
               "lr": T.lr_at(self.tcfg, done - 1, self.total), "loss": float(logs.get("loss", float("nan"))),
               "seconds": time.perf_counter() - self.t0}
        if want_eval and self.val[0] is not None:
            acc = T.topk_accuracy(predict_logits(self.vit, self.val[0]), self.val[1])
            rec.update({f"val_{k}": v for k, v in acc.items()})
            if self.verbose:
                print(f"\nstep {done}: held-out top-1 {rec['val_top1']:.2%}")
        self.history.append(rec)
        if self.checkpoint is not None and (end_of_epoch or done == self.total):
            T.save_checkpoint(self.checkpoint, self.cfg, to_canonical(self.vit), self.tcfg, done, self.name,
                              self.history)


def _nchw_to_model(model: VisionTransformer, images: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(images, np.float32)
    return x if model.data_format == "channels_first" else np.ascontiguousarray(x.transpose(0, 2, 3, 1))


def predict_logits(model: VisionTransformer, images: np.ndarray, batch: int = 256) -> np.ndarray:
    outs = [np.asarray(ops.convert_to_numpy(model(ops.convert_to_tensor(_nchw_to_model(model, images[i:i + batch])),
                                                  training=False)), np.float32)
            for i in range(0, len(images), batch)]
    return np.concatenate(outs) if outs else np.zeros((0, model.cfg.num_classes), np.float32)


def _loss(smoothing: float):
    return TrainingLoss(smoothing)


def train(model: VisionTransformer, train_data, val_data, tcfg: T.TrainConfig, *, progress: bool = True,
          checkpoint=None, name: str = "keras", jit_compile="auto") -> list[dict]:
    """model.fit over the shared batches, in place; returns the history (a dict per evaluation)."""
    if model.data_format != "channels_first":
        raise ValueError("train() feeds the shared pipeline's NCHW arrays: build the model channels_first")
    cfg = model.cfg
    keras.utils.set_random_seed(tcfg.seed)
    x, y = T.as_xy(train_data)
    val = T.as_xy(val_data)
    net = RawLogits(model)
    total = tcfg.total_steps(len(y))
    sched = WarmupCosine(tcfg.lr, tcfg.min_lr, tcfg.warmup_steps, total, tcfg.start_step)
    opt = keras.optimizers.AdamW(learning_rate=sched, weight_decay=tcfg.weight_decay, beta_1=tcfg.beta1,
                                 beta_2=tcfg.beta2, epsilon=tcfg.eps)
    exclude_from_decay(opt, model)
    net.compile(optimizer=opt, loss=_loss(tcfg.label_smoothing),
                metrics=[keras.metrics.MeanMetricWrapper(_accuracy, name="acc")], jit_compile=jit_compile)
    data = Batches(x, y, cfg.num_classes, tcfg.batch, tcfg.seed, tcfg.start_step, total)
    history: list[dict] = []
    mon = _Monitor(model, tcfg, total, data.per_epoch, val, checkpoint, history, progress, name)
    net.fit(data, epochs=1, verbose=1 if progress else 0, callbacks=[mon], shuffle=False)
    return history


def _native_grads(model: VisionTransformer, images: np.ndarray, labels: np.ndarray, smoothing: float):
    """(loss, [(gradient, variable, kind)] in canonical-key order) through the Keras backend's autodiff, no dropout."""
    cfg = model.cfg
    net = RawLogits(model)
    x = ops.convert_to_tensor(_nchw_to_model(model, images))
    t = ops.convert_to_tensor(np.eye(cfg.num_classes, dtype=np.float32)[np.asarray(labels, np.int64)])
    mapping = model.canonical_variables()
    variables = [v for v, _ in mapping.values()]
    loss_fn = _loss(smoothing)
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            loss = loss_fn(t, net(x, training=False))
        grads = tape.gradient(loss, [v.value for v in variables])
    elif backend == "torch":
        import torch

        loss = loss_fn(t, net(x, training=False))
        grads = torch.autograd.grad(loss, [v.value for v in variables])
    elif backend == "jax":  # functional: the loss of the variables' values, under a StatelessScope
        import jax

        def loss_of(values):
            with keras.StatelessScope(state_mapping=list(zip(variables, values))):
                return loss_fn(t, net(x, training=False))

        loss, grads = jax.jit(jax.value_and_grad(loss_of))([v.value for v in variables])
    else:
        raise NotImplementedError(f"loss_and_grads: Keras backend {backend!r}")
    return float(ops.convert_to_numpy(loss)), dict(zip(mapping, zip(grads, variables, (k for _, k in mapping.values()))))


def loss_and_grads(model: VisionTransformer, images: np.ndarray, labels: np.ndarray,
                   label_smoothing: float = 0.0) -> tuple[float, dict[str, np.ndarray]]:
    """(mean loss, canonical key -> float32 gradient), no dropout; gradients via the backend's autodiff."""
    loss, grads = _native_grads(model, images, labels, label_smoothing)
    return loss, {key: from_keras_layout(kind, np.asarray(ops.convert_to_numpy(g), np.float32))
                  for key, (g, _, kind) in grads.items()}


def optimizer_step(model: VisionTransformer, images: np.ndarray, labels: np.ndarray, optimizer: str = "sgd", *,
                   lr: float, weight_decay: float = 0.0, label_smoothing: float = 0.0, betas=(0.9, 0.999),
                   eps: float = 1e-8) -> None:
    """One keras.optimizers.SGD / AdamW step (decay on matrices only) via optimizer.apply_gradients, in place."""
    if optimizer == "sgd":
        opt = keras.optimizers.SGD(learning_rate=lr, weight_decay=weight_decay or None)
    elif optimizer == "adamw":
        # Keras: p -= lr * sqrt(1-b2^t)/(1-b1^t) * m / (sqrt(v) + eps_k); torch: eps added to sqrt(v_hat).
        # They agree when eps_k = eps * sqrt(1 - b2^t) (t = 1 here).
        opt = keras.optimizers.AdamW(learning_rate=lr, weight_decay=weight_decay, beta_1=betas[0], beta_2=betas[1],
                                     epsilon=eps * math.sqrt(1.0 - betas[1]))
    else:
        raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {optimizer!r}")
    if weight_decay:
        exclude_from_decay(opt, model)
    _, grads = _native_grads(model, images, labels, label_smoothing)
    opt.apply_gradients([(g, var) for g, var, _ in grads.values()])
