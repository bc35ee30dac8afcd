"""`vit-suite convert`: any supported format to any other, atomically, proven against the source library.

By default every import from a format a library defines (timm, transformers, torchvision, big_vision, keras-hub,
mindcv) is proven before anything is written: that library's own output on a small batch against the float64
reference of the converted model, under the float32 bound of the logits (`check.prove_against`, in this process).
A mismatch is exit 5 and a source the library cannot run exit 8, with nothing written; a missing library, or a
conversion that named no model the library can build, is said ("not verified ...") and the file is written.
`--no-verify` skips the proof and says so; `--verify` adds reading the result back and the full check in every
backend."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import limits as L
from .. import fileio as F
from .. import weights as W
from ..backend import import_frameworks_in_safe_order
from ..convert.formats import FORMATS, detect_format
from ..convert.io import frameworks_needed, read_any, settle, target_format, write_any
from ..errors import EXIT_MISMATCH, EXIT_OK, UsageError
from .common import claim_output, console, esc, float_arg, int_arg, parse_size

#: the batch the default proof runs the source library on: enough to compare logits, a few seconds at B/16
PROOF_BATCH = 2
#: formats whose files carry no config (or a partial one): read back by --verify with the config they were written from
_NO_CONFIG = ("mindcv", "timm", "torch", "keras-h5")


def parse_grid(text: str | None) -> tuple[int, int] | None:
    """--grid: 'HxW' in patches (rows x columns of the position table) -> (H, W)."""
    try:
        return parse_size(text)
    except UsageError:
        raise UsageError(f"--grid must be HxW, the position table's rows x columns in patches (e.g. 8x32), got "
                         f"{text!r}") from None


def stated_facts(args) -> dict:
    """What the command line states about a file that cannot tell it (timm state dicts): import_timm's arguments."""
    return dict(pool=args.pool, gelu=args.gelu, mlp=args.mlp, grid=parse_grid(args.grid), num_heads=args.num_heads,
                layer_norm_eps=args.layer_norm_eps)


def cmd_convert(args) -> int:
    src_fmt = args.from_ or detect_format(args.src)
    dst_fmt = target_format(args.dst, args.to)
    claim_output(args.dst, "DST", force=args.force, inputs=(args.src,))
    import_frameworks_in_safe_order(frameworks_needed(src_fmt, dst_fmt))
    c = console()
    deferred: list = []  # the source's own check (a .ckpt digest, a .keras CRC-32), computed beside the writing
    cfg, state = read_any(args.src, src_fmt, args.preset, parse_size(args.image_size), deferred=deferred,
                          **stated_facts(args))
    try:
        stop = prove_import(c, args, src_fmt, cfg, state, deferred)
        if stop is not None:
            return stop
        with F.checks_before_commit(deferred):
            write_any(args.dst, dst_fmt, cfg, state, overwrite=args.force, stages=args.stages)
    except Exception:  # (Ctrl-C and SIGTERM go on at once)
        settle(deferred)  # a damaged source's own error first, as if it had been checked before anything else
        raise
    settle(deferred)
    c.print(f"{args.src} ({src_fmt}) -> {args.dst} ({dst_fmt}): {cfg.name}, {W.parameter_count(cfg):,} parameters",
            markup=False)
    told = cfg.notes.find("what the file does not determine")  # a timm import says who stated each open fact
    if src_fmt in ("timm", "torch") and told >= 0:
        c.print(cfg.notes[told:], markup=False)
    if args.verify:
        from .check import cmd_check, default_args
        from ..convert.timm import timm_form

        if dst_fmt == "timm":  # what was written: timm's form (a class-token position row folded, if any)
            cfg, state = timm_form(cfg, state)
        # files that carry no config (a timm state dict, a mindcv .ckpt) are read back with the config they were
        # written from
        back_cfg, back = read_any(args.dst, dst_fmt, cfg if dst_fmt in _NO_CONFIG else args.preset, None)
        diffs = [k for k in state if k not in back or not np.array_equal(state[k], back[k])]
        if diffs or set(back) != set(state):
            c.print(f"[red]verify: reading {esc(args.dst)} back differs from the source in {esc(diffs[:5])}[/]")
            return EXIT_MISMATCH
        c.print("verify: read back bit-exact; running the conformance check on the result")
        with F.work_dir("verify") as tmp:
            weights = str(W.save(Path(tmp) / "converted.safetensors", back_cfg, back))
            return cmd_check(default_args(weights=weights, backends=args.backends))
    return EXIT_OK


def prove_import(c, args, src_fmt: str, cfg, state, deferred: list = ()) -> int | None:
    """The default proof of an import (module docstring): prints its row; returns the exit code to stop with
    (nothing written), or None to go on and write. The source's pending checks (`deferred`) are settled before
    its tensors are used."""
    from ..convert.sources import source_library

    library = source_library(src_fmt)
    if library is None:  # the suite's own formats carry the model itself: nothing to prove against
        return None
    settle(deferred)
    if args.no_verify:
        c.print(f"not verified against the source: --no-verify skipped the proof against {library}'s own output")
        return None
    from .. import reference
    from ..init import random_images
    from .check import against_line, prove_against
    from .results import against_verdict

    images = random_images(cfg, PROOF_BATCH)
    a = prove_against(args.src, src_fmt, cfg, reference.forward(cfg, state, images), images, in_process=True)
    c.print(against_line(a))
    decided = against_verdict(a)
    if decided is None:
        return None
    c.print(f"{decided[1]}; {args.dst} was not written (--no-verify converts without the proof)")
    return decided[0]


def add_parser(sub) -> None:
    v = sub.add_parser("convert", help="convert weights between canonical, timm, HF, torch, Keras and MindSpore files")
    v.add_argument("src")
    v.add_argument("dst")
    v.add_argument("--from", dest="from_", choices=list(FORMATS), help="source format (default: detected from content)")
    v.add_argument("--to", choices=list(FORMATS), help="target format (default: from the destination's suffix); "
                        "--to timm writes a state dict (DST.pth / .pt / .bin: torch.save; any other suffix: safetensors) "
                        "or, for a DST without a suffix, a timm hub directory (config.json + model.safetensors)")
    v.add_argument("--preset", help="config for files that do not carry one (timm, .pt, .weights.h5, .ckpt): a suite "
                        "preset, or for a timm file any timm architecture name (resolved by timm's own model, or "
                        "refused by name); for a mindcv .ckpt also a mindcv model name (vit_b_16_224, ...)")
    v.add_argument("--image-size", help="HxW: the input size to convert for; the learned position table is resampled "
                        "to it (a timm state dict's table is read at this size when its row count fits it)")
    v.add_argument("--stages", action="store_true",
                   help="ONNX: every named stage (patch_embed, embed, block_i, norm, pre_logits) as an extra graph "
                        "output beside logits, so a runtime's divergence is located by stage")
    v.add_argument("--pool", choices=["token", "avg", "map"],
                   help="timm state dicts: the pooling the file cannot tell (a class token and no attention pool): "
                        "'token' (class token) or 'avg' (timm's mean of the patch tokens)")
    v.add_argument("--gelu", choices=["erf", "tanh", "quick"],
                   help="timm state dicts: the GELU form (erf: timm's nn.GELU; tanh: gelu_tanh; quick: CLIP's "
                        "x * sigmoid(1.702 x))")
    v.add_argument("--mlp", choices=["swiglu", "gelu"],
                   help="timm state dicts: the activation of a packed gated MLP (fc1 with twice fc2's input rows), "
                        "which its keys cannot tell: 'swiglu' (SiLU gate, timm SwiGLUPacked, DINOv2-giant); 'gelu' "
                        "states a plain MLP")
    v.add_argument("--grid", metavar="HxW",
                   help="timm state dicts: the position table's grid in patches (rows x columns), which a row count "
                        "cannot tell (256 rows: 16x16 or 8x32), nor whether the prefix tokens have rows")
    v.add_argument("--num-heads", type=int_arg(1, L.MAX_HEADS), help="timm state dicts: the attention heads")
    v.add_argument("--layer-norm-eps", type=float_arg(0.0, 1.0, lo_open=True, hi_open=True),
                   help="timm state dicts: the LayerNorm eps (timm 1e-6, CLIP 1e-5)")
    proof = v.add_mutually_exclusive_group()
    proof.add_argument("--verify", action="store_true",
                       help="besides the proof against the source library (on by default), read the result back and "
                            "run the full check on it in every backend")
    proof.add_argument("--no-verify", action="store_true",
                       help="skip the default proof against the source library's own output (timm, transformers, "
                            "torchvision, keras-hub, mindcv) and say so")
    v.add_argument("--backends", help="backends for --verify (default: every installed one)")
    v.add_argument("--force", action="store_true", help="replace an existing destination")
    v.set_defaults(func=cmd_convert)
