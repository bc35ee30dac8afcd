"""`vit-suite convert`: any supported format to any other, atomically, optionally verified by a check."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import weights as W
from ..backend import import_frameworks_in_safe_order
from ..convert.formats import FORMATS, detect_format, native_backend
from ..convert.io import read_any, target_format, write_any
from ..errors import EXIT_MISMATCH, EXIT_OK
from .common import claim_output, console, parse_size


def cmd_convert(args) -> int:
    src_fmt = args.from_ or detect_format(args.src)
    dst_fmt = target_format(args.dst, args.to)
    claim_output(args.dst, "DST", force=args.force, inputs=(args.src,))
    import_frameworks_in_safe_order([native_backend(src_fmt) or "", native_backend(dst_fmt) or ""])
    c = console()
    cfg, state = read_any(args.src, src_fmt, args.preset, parse_size(args.image_size))
    write_any(args.dst, dst_fmt, cfg, state, overwrite=args.force)
    c.print(f"{args.src} ({src_fmt}) -> {args.dst} ({dst_fmt}): {cfg.name}, {W.parameter_count(cfg):,} parameters")
    if args.verify:
        from .check import cmd_check, default_args

        # files that carry no config (a mindcv .ckpt) are read back with the config they were written from
        back_cfg, back = read_any(args.dst, dst_fmt, args.preset or (cfg if dst_fmt == "mindcv" else None), None)
        diffs = [k for k in state if k not in back or not np.array_equal(state[k], back[k])]
        if diffs or set(back) != set(state):
            c.print(f"[red]verify: reading {args.dst} back differs from the source in {diffs[:5]}[/]")
            return EXIT_MISMATCH
        from ..convert.sources import source_library

        against = args.src if source_library(src_fmt) else None
        c.print("verify: read back bit-exact; running the conformance check on the result"
                + (f" and proving it against {source_library(src_fmt)}'s own output" if against else
                   f"; not verified against the source: a {src_fmt!r} file has no source library"))
        with W.work_dir("verify") as tmp:
            weights = str(W.save(Path(tmp) / "converted.safetensors", back_cfg, back))
            return cmd_check(default_args(weights=weights, backends=args.backends, against=against,
                                          against_format=src_fmt if against else None))
    return EXIT_OK


def add_parser(sub) -> None:
    v = sub.add_parser("convert", help="convert weights between canonical, timm, HF, torch, Keras and MindSpore files")
    v.add_argument("src")
    v.add_argument("dst")
    v.add_argument("--from", dest="from_", choices=list(FORMATS), help="source format (default: detected from content)")
    v.add_argument("--to", choices=list(FORMATS), help="target format (default: from the destination's suffix)")
    v.add_argument("--preset", help="config for files that do not carry one (timm, .pt, .weights.h5, .ckpt); for a mindcv .ckpt also "
                        "a mindcv model name (vit_b_16_224, ...)")
    v.add_argument("--image-size", help="HxW: resample the learned position table for this input size")
    v.add_argument("--verify", action="store_true",
                   help="read the result back, run the check on it, and prove it against the source library's own "
                        "output (timm, transformers, keras-hub, mindcv) where there is one")
    v.add_argument("--backends", help="backends for --verify (default: every installed one)")
    v.add_argument("--force", action="store_true", help="replace an existing destination")
    v.set_defaults(func=cmd_convert)
