"""`vit-suite forward` (one backend) and `vit-suite reference` (the NumPy reference) on given inputs."""
from __future__ import annotations

from .. import weights as W
from ..errors import EXIT_OK, UsageError
from .common import console, load_npy, parse_size, write_npz


def _inputs(path: str, in_chans: int):
    x = load_npy(path, "--input")
    if x.shape[1] != in_chans:
        raise UsageError(f"--input {path}: {x.shape[1]} channels, model expects {in_chans} (NCHW)")
    return x


def cmd_reference(args) -> int:
    from .. import reference

    cfg, state = W.load(args.weights)
    x = _inputs(args.input, cfg.in_chans)
    out = reference.forward(cfg, state, x, dtype=args.dtype)
    write_npz(args.output, out, {"backend": "reference", "dtype": args.dtype})
    console().print(f"wrote {args.output}: {', '.join(out)}")
    return EXIT_OK


def cmd_forward(args) -> int:
    from .worker import run_forward

    out, meta = run_forward(args.backend, args.weights, args.input, args.dtype, parse_size(args.image_size))
    if not args.stages:
        out = {"logits": out["logits"]}
    write_npz(args.output, out, meta)
    if not args.quiet:
        console(stderr=True).print(f"{args.backend}: build {meta['build_s']:.2f} s, forward {meta['forward_s']:.2f} s "
                                   f"-> {args.output}")
    return EXIT_OK


def add_parser(sub) -> None:
    f = sub.add_parser("forward", help="run one backend on given inputs (NCHW float32 .npy) and save the outputs")
    f.add_argument("weights")
    f.add_argument("--backend", required=True)
    f.add_argument("--input", required=True)
    f.add_argument("--output", required=True, help=".npz with the logits (every named stage with --stages)")
    f.add_argument("--stages", action="store_true")
    f.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    f.add_argument("--image-size", help="HxW (default: the input's size)")
    f.add_argument("--quiet", action="store_true")
    f.set_defaults(func=cmd_forward)

    r = sub.add_parser("reference", help="run the NumPy reference on given inputs and save every named stage")
    r.add_argument("weights")
    r.add_argument("--input", required=True)
    r.add_argument("--output", required=True)
    r.add_argument("--dtype", default="float64", choices=["float64", "float32", "float16", "bfloat16"])
    r.set_defaults(func=cmd_reference)
