"""`vit-suite train | evaluate | predict`: the training commands, through the backend's hooks.

Each command uses ONE backend (its `Backend.train`, `Backend.build` + `Backend.predict`), so the process holds only
that framework (TensorFlow before MindSpore in one process aborts it).

    vit-suite train --preset digits --backend torch --steps 300 --out digits.safetensors
    vit-suite train --init digits.safetensors --backend keras --data FOLDER --head linear --epochs 5
    vit-suite evaluate digits.safetensors digits --backend mindspore
    vit-suite predict digits.safetensors img1.png img2.jpg digits:0-4 --backend torch
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from .. import weights as W
from ..backend import backend_names, get_backend, import_frameworks_in_safe_order
from ..errors import EXIT_OK, UsageError
from ..limits import MAX_IMAGES
from .common import SEED_MAX, claim_output, console, esc, float_arg, int_arg


def _backend(name: str):
    """The one backend a training command uses (its framework is the only one this process imports)."""
    import_frameworks_in_safe_order([name])
    return get_backend(name)


def _set_threads(n: int | None) -> None:
    if n:
        for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "TF_NUM_INTEROP_THREADS", "TF_NUM_INTRAOP_THREADS"):
            os.environ.setdefault(v, str(n))


# ------------------------------------------------------------------ data arguments
def load_eval_data(spec: str, cfg, split_seed: int | None = None, meta: dict | None = None):
    """'digits' (held-out split) or an image folder -> Dataset."""
    from ..training import data as D

    if spec == "digits":
        seed = split_seed if split_seed is not None else int((meta or {}).get("split_seed", D.DEFAULT_SPLIT_SEED))
        return D.load_digits_split(cfg.image_size, seed, cfg.in_chans)[1]
    return D.load_image_folder(spec, cfg.image_size, cfg.in_chans)


def load_train_data(spec: str | None, cfg, split_seed: int):
    from ..training import data as D

    if spec in (None, "digits"):
        return D.load_digits_split(cfg.image_size, split_seed, cfg.in_chans)
    full = D.load_image_folder(spec, cfg.image_size, cfg.in_chans)
    return D.split_dataset(full, D.HELDOUT_FRACTION, split_seed)


# ------------------------------------------------------------------ train
def cmd_train(args) -> int:
    from ..init import init_weights
    from ..presets import get_preset
    from ..training import data as D
    from ..training import recipe as T

    _set_threads(args.threads)
    if args.init:
        cfg, state = W.load(args.init)
        source = args.init
    else:
        cfg = get_preset(args.preset or "digits")
        state = init_weights(cfg, args.seed)
        source = f"preset {cfg.name} (init seed {args.seed})"
    train_ds, held_ds = load_train_data(args.data, cfg, args.split_seed)
    n_classes = len(train_ds.classes)
    if args.head:
        cfg, state = T.switch_head(cfg, state, args.head, n_classes, seed=args.seed)
    elif cfg.num_classes != n_classes:
        raise UsageError(f"{source} has {cfg.num_classes} classes, the data {n_classes}: pass --head linear|pretrain")
    steps = args.steps if args.steps else (None if args.epochs else 300)
    tcfg = T.TrainConfig(steps=steps, epochs=args.epochs, batch=args.batch, lr=args.lr, weight_decay=args.weight_decay,
                         warmup_steps=args.warmup, label_smoothing=args.label_smoothing, seed=args.seed,
                         eval_every=args.eval_every, head=args.head)
    out = claim_output(args.out or f"{cfg.name}-{args.backend}.safetensors", "--out", force=args.force,
                       inputs=(args.init, args.data))
    c = console()
    c.print(f"[bold]vit-suite train[/]: {esc(source)}; {esc(cfg.name)}, backend {args.backend}, "
            f"{len(train_ds)} train / {len(held_ds)} held-out images, {tcfg.total_steps(len(train_ds))} steps "
            f"of batch {tcfg.batch}, AdamW lr {tcfg.lr} (warm-up {tcfg.warmup_steps}, cosine), wd {tcfg.weight_decay}, "
            f"label smoothing {tcfg.label_smoothing}")
    be = _backend(args.backend)
    t0 = time.perf_counter()
    ckpt = out.with_name(out.stem + ".ckpt.safetensors") if args.checkpoint_every_epoch else None
    state, history = be.train(cfg, state, train_ds, held_ds, tcfg, progress=not args.quiet, checkpoint=ckpt)
    seconds = time.perf_counter() - t0
    acc = T.evaluate(be, cfg, state, held_ds.images, held_ds.labels)
    extra = {"train_seconds": f"{seconds:.1f}", "init": source,
             f"heldout_top1_{args.backend}": repr(acc["top1"]), f"heldout_top5_{args.backend}": repr(acc["top5"])}
    if args.data in (None, "digits"):
        extra.update(D.digits_metadata(args.split_seed, cfg.image_size))
        logits = T.raw_logits_reference(cfg, state, held_ds.images)
        logits = logits.mean(0) if logits.ndim == 3 else logits  # a distilled model predicts with the mean of its heads
        ref = T.topk_accuracy(logits, held_ds.labels)
        extra.update({"heldout_top1_reference": repr(ref["top1"]), "heldout_top5_reference": repr(ref["top5"]),
                      "heldout_predictions_reference": json.dumps(np.argmax(logits, 1).tolist())})
    else:
        extra.update({"dataset": str(args.data), "classes": json.dumps(train_ds.classes),
                      "split_seed": str(args.split_seed)})
    T.save_checkpoint(out, cfg, state, tcfg, tcfg.total_steps(len(train_ds)), args.backend, history, extra,
                      overwrite=args.force)
    c.print(f"trained in {seconds:.1f} s; held-out top-1 {acc['top1']:.2%}, top-5 {acc['top5']:.2%} ({args.backend})"
            + (f"; float64 reference top-1 {float(extra['heldout_top1_reference']):.2%}" if "heldout_top1_reference" in extra else ""))
    c.print(f"wrote {out}", markup=False)
    return EXIT_OK


# ------------------------------------------------------------------ evaluate / predict
def cmd_evaluate(args) -> int:
    _set_threads(args.threads)
    cfg, state = W.load(args.weights)
    meta = W.read_metadata(args.weights)  # checked: split_seed, classes, ...
    ds = load_eval_data(args.data, cfg, args.split_seed, meta)
    from ..training.recipe import evaluate

    acc = evaluate(_backend(args.backend), cfg, state, ds.images, ds.labels)
    if args.json:
        print(json.dumps({"weights": args.weights, "data": args.data, "backend": args.backend, "images": len(ds), **acc}))
    else:
        console().print(f"{esc(args.weights)} on {esc(args.data)} ({len(ds)} images), {args.backend}: "
                         f"top-1 [bold]{acc['top1']:.2%}[/], top-5 [bold]{acc['top5']:.2%}[/]")
    return EXIT_OK


def _parse_digits_spec(spec: str, n_rows: int) -> list[int]:
    """'digits:0-9,12' -> row numbers, each range checked against the n_rows held-out rows before it is expanded
    (digits:0-300000000 costs nothing to refuse)."""
    body = spec.split(":", 1)[1]
    out: list[int] = []
    for part in body.split(","):
        a, dash, b = part.partition("-")
        try:
            lo, hi = int(a), int(b) if dash else int(a)
        except ValueError:
            raise UsageError(f"{spec}: expected digits:ROW, digits:FIRST-LAST or a comma-separated list of those, "
                             f"got {part[:40]!r}") from None
        if not (0 <= lo <= hi < n_rows):
            raise UsageError(f"{spec}: held-out rows are 0..{n_rows - 1}, got {lo}..{hi}")
        if len(out) + hi - lo + 1 > MAX_IMAGES:
            raise UsageError(f"{spec}: more than {MAX_IMAGES:,} rows")
        out += range(lo, hi + 1)
    return out


def cmd_predict(args) -> int:
    from ..training import data as D

    _set_threads(args.threads)
    cfg, state = W.load(args.weights)
    meta = W.read_metadata(args.weights)  # checked: split_seed, classes, ...
    names, batches, truth = [], [], []
    held = None
    for spec in args.images:
        if spec.startswith("digits:"):
            if held is None:
                held = load_eval_data("digits", cfg, None, meta)
            rows = _parse_digits_spec(spec, len(held))
            batches.append(held.images[rows])
            names += [f"digits:{r}" for r in rows]
            truth += [str(int(held.labels[r])) for r in rows]
        else:
            if not Path(spec).is_file():
                raise UsageError(f"{spec}: no such image file")
            if len(names) >= MAX_IMAGES:
                raise UsageError(f"more than {MAX_IMAGES:,} images given")
            batches.append(D.load_images([spec], cfg.image_size, cfg.in_chans))
            names.append(spec)
            truth.append("")
    if not batches:
        raise UsageError("no images given")
    x = np.concatenate(batches)
    from ..reference import softmax

    be = _backend(args.backend)
    logits = be.predict(be.build(cfg, state), x).astype(np.float64)
    probs = logits if cfg.output_softmax else softmax(logits)
    classes = json.loads(meta["classes"]) if "classes" in meta else [str(i) for i in range(cfg.num_classes)]
    if args.json:
        print(json.dumps([{"image": n, "label": t or None, "predicted": classes[int(np.argmax(p))],
                           "probabilities": {classes[k]: float(p[k]) for k in range(len(p))}}
                          for n, t, p in zip(names, truth, probs)], indent=2))
        return EXIT_OK
    from rich.table import Table

    t = Table(title=f"class probabilities ({args.backend})")
    t.add_column("image")
    t.add_column("label")
    t.add_column("predicted")
    for k in classes:
        t.add_column(esc(k), justify="right")
    t.add_column("sum", justify="right")
    for n, lab, p in zip(names, truth, probs):
        top = int(np.argmax(p))
        cells = [f"[bold]{v:.3f}[/]" if j == top else f"{v:.3f}" for j, v in enumerate(p)]
        t.add_row(esc(n), esc(lab), esc(classes[top]), *cells, f"{p.sum():.6f}")
    console().print(t)
    return EXIT_OK


def _common(p):
    p.add_argument("--backend", required=True, choices=backend_names())
    p.add_argument("--threads", type=int_arg(1, 1024), default=1,
                   help="CPU threads (default 1: the small models here train fastest single-threaded)")


def add_parser(sub) -> None:
    t = sub.add_parser("train", help="train a model (default: the digits preset on scikit-learn digits)")
    _common(t)
    t.add_argument("--preset", help="preset to start from with random weights (default digits)")
    t.add_argument("--init", help="canonical weights to start from (fine-tuning / resuming)")
    t.add_argument("--data", help="image folder (one sub-folder per class); default: scikit-learn digits")
    g = t.add_mutually_exclusive_group()
    g.add_argument("--steps", type=int_arg(1, 10**8), help="optimiser steps (default 300)")
    g.add_argument("--epochs", type=int_arg(1, 10**6))
    t.add_argument("--batch", type=int_arg(1, 4096), default=64)
    t.add_argument("--lr", type=float_arg(0, 10, lo_open=True), default=2e-3)
    t.add_argument("--weight-decay", type=float_arg(0, 10), default=0.05)
    t.add_argument("--warmup", type=int_arg(0, 10**8), default=30, help="warm-up steps (then cosine decay)")
    t.add_argument("--label-smoothing", type=float_arg(0, 1, hi_open=True), default=0.1)
    t.add_argument("--eval-every", type=int_arg(1, 10**8), default=100)
    t.add_argument("--seed", type=int_arg(0, SEED_MAX), default=0, help="init, shuffling and head seed")
    t.add_argument("--split-seed", type=int_arg(0, SEED_MAX), default=0, help="seed of the held-out split")
    t.add_argument("--head", choices=["linear", "pretrain"], help="replace the classifier before training")
    t.add_argument("--out", help="output canonical .safetensors (written atomically)")
    t.add_argument("--force", action="store_true")
    t.add_argument("--checkpoint-every-epoch", action="store_true",
                   help="also write OUT.ckpt.safetensors at the end of every epoch")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="Top-1/Top-5 of a weight file on 'digits' (held-out split) or an image folder")
    e.add_argument("weights")
    e.add_argument("data", help="'digits' or an image folder (one sub-folder per class)")
    _common(e)
    e.add_argument("--split-seed", type=int_arg(0, SEED_MAX), help="held-out split (default: the one recorded in the file)")
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="class probabilities for PNG/JPEG files (or digits:ROWS of the held-out split)")
    p.add_argument("weights")
    p.add_argument("images", nargs="+", help="image files, or digits:0-9 / digits:3,5 for held-out rows")
    _common(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_predict)
