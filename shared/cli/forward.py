"""`vit-suite forward` (one backend) and `vit-suite reference` (the NumPy reference) on given inputs."""
from __future__ import annotations

from .. import reference
from .. import weights as W
from ..errors import EXIT_NONFINITE, EXIT_OK, UsageError
from .common import claim_output, console, load_npy, parse_size, write_npz


def _inputs(path: str, cfg):
    x = load_npy(path, "--input", cfg)  # channels and patch divisibility too, the file named
    run_cfg = cfg.with_image_size(tuple(x.shape[2:])) if tuple(x.shape[2:]) != tuple(cfg.image_size) else cfg
    reference.check_forward_size(run_cfg, x.shape[0], f"--input {path}")
    return x


def cmd_reference(args) -> int:
    claim_output(args.output, "--output", force=args.force, inputs=(args.weights, args.input))
    cfg, state = W.load(args.weights)
    x = _inputs(args.input, cfg)
    out = reference.forward(cfg, state, x, dtype=args.dtype)
    write_npz(args.output, out, {"backend": "reference", "dtype": args.dtype}, overwrite=args.force)
    console().print(f"wrote {args.output}: {', '.join(out)}", markup=False)
    return _warn_nonfinite("reference", out, args.output)


def cmd_forward(args) -> int:
    from .worker import run_forward

    claim_output(args.output, "--output", force=args.force, inputs=(args.weights, args.input))
    size = parse_size(args.image_size)
    hw = tuple(_inputs(args.input, W.read_config(args.weights)).shape[2:])
    if size is not None:
        if hw != size:
            raise UsageError(f"--image-size {size[0]}x{size[1]} conflicts with --input {args.input}, whose images are "
                             f"{hw[0]}x{hw[1]}: the model runs at its input's size (omit --image-size, or resize "
                             f"the input)")
    out, meta = run_forward(args.backend, args.weights, args.input, args.dtype, size)
    if not args.stages:
        out = {"logits": out["logits"]}
    write_npz(args.output, out, meta, overwrite=args.force)
    if not args.quiet:
        console(stderr=True).print(f"{args.backend}: build {meta['build_s']:.2f} s, forward {meta['forward_s']:.2f} s "
                                   f"-> {args.output}" + (f" ({meta['note']})" if meta.get("note") else ""),
                                   markup=False)
    return _warn_nonfinite(args.backend, out, args.output)


def _warn_nonfinite(who: str, out: dict, path: str) -> int:
    """Written, but said: every stage with NaN/Inf and its count, and exit code EXIT_NONFINITE."""
    from rich.markup import escape

    from ..tolerances import describe_nonfinite, nonfinite_counts

    counts = nonfinite_counts(out)
    if not counts:
        return EXIT_OK
    console(stderr=True).print(f"[yellow]warning:[/] {who} output written to {escape(str(path))} is not finite: "
                               f"{escape(describe_nonfinite(counts, out))}", soft_wrap=True)
    return EXIT_NONFINITE


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
    f.add_argument("--force", action="store_true", help="replace an existing --output")
    f.set_defaults(func=cmd_forward)

    r = sub.add_parser("reference", help="run the NumPy reference on given inputs and save every named stage")
    r.add_argument("weights")
    r.add_argument("--input", required=True)
    r.add_argument("--output", required=True)
    r.add_argument("--dtype", default="float64", choices=["float64", "float32", "float16", "bfloat16"])
    r.add_argument("--force", action="store_true", help="replace an existing --output")
    r.set_defaults(func=cmd_reference)
