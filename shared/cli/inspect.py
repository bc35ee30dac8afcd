"""`vit-suite inspect` (what a weight file holds) and `vit-suite init` (deterministic random weights)."""
from __future__ import annotations

import json

from .. import weights as W
from ..errors import EXIT_OK
from ..presets import ALIASES, get_preset, preset_names
from .common import SEED_MAX, claim_output, console, esc, int_arg, parse_size


def cmd_init(args) -> int:
    from ..init import init_weights

    claim_output(args.output, "OUTPUT", force=args.force)
    cfg = get_preset(args.preset)
    if args.image_size:
        cfg = cfg.replace(image_size=parse_size(args.image_size))
    W.save(args.output, cfg, init_weights(cfg, args.seed), metadata={"init_seed": str(args.seed)}, overwrite=args.force)
    console().print(f"wrote {args.output}: {cfg.name}, {W.parameter_count(cfg) / 1e6:.2f}M parameters, seed {args.seed}",
                    markup=False)
    return EXIT_OK


def _fmt_count(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e3 else str(n)


def cmd_inspect(args) -> int:
    from ..convert.formats import detect_format

    fmt = detect_format(args.file)
    if fmt != "canonical":
        from ..convert.io import read_stored_tensors

        tensors = read_stored_tensors(args.file, fmt)  # read, not only sniffed: garbage is exit 3, named
        info = {"file": args.file, "format": fmt, "canonical": False,
                "tensors": {k: [list(v.shape), str(v.dtype)] for k, v in tensors.items()},
                "hint": f"convert it first: vit-suite convert {args.file} OUT.safetensors --from {fmt} [--preset NAME]"}
        if args.json:
            print(json.dumps(info, indent=2))
        else:
            c = console()
            c.print(f"[bold]{esc(args.file)}[/]: {fmt} format (not a canonical vit-suite file)")
            for k, (shape, dt) in list(info["tensors"].items())[:40]:
                c.print(f"  {k:50s} {str(tuple(shape)):20s} {dt}", markup=False)
            c.print(info["hint"], markup=False)
        return EXIT_OK
    cfg, state = W.load(args.file)
    n = W.parameter_count(cfg)
    if args.json:
        print(json.dumps({"file": args.file, "format": "canonical", "config": cfg.to_dict(), "parameters": n,
                          "numerics": cfg.describe_numerics(),
                          "tensors": {k: [list(v.shape), str(v.dtype)] for k, v in state.items()}}, indent=2))
        return EXIT_OK
    from rich.table import Table

    c = console()
    c.print(f"[bold]{esc(args.file)}[/]: canonical vit-suite weights, model [bold]{esc(cfg.name)}[/]")
    c.print(f"parameters: [bold]{n:,}[/] ({n / 1e6:.1f}M); input {cfg.in_chans}x{cfg.image_size[0]}x{cfg.image_size[1]}, "
            f"patch {cfg.patch_size} -> grid {cfg.grid[0]}x{cfg.grid[1]}, {cfg.num_tokens} tokens; width {cfg.embed_dim}"
            f"{f' (attention {cfg.width})' if cfg.width != cfg.embed_dim else ''}, depth {cfg.depth}, heads {cfg.num_heads}, "
            f"MLP {cfg.mlp_dim}, classes {cfg.num_classes}")
    t = Table(title="numerics", show_header=True)
    t.add_column("choice")
    t.add_column("value")
    for k, v in cfg.describe_numerics().items():
        t.add_row(k, esc(v))
    c.print(t)
    if cfg.notes:
        c.print(f"notes: {cfg.notes}", markup=False)
    t = Table(title="tensors", show_header=True)
    for col in ("key", "shape", "dtype", "count"):
        t.add_column(col)
    keys = list(W.expected_shapes(cfg))  # model order, not the file's alphabetical order
    shown = keys if args.all or len(keys) <= 24 else keys[:12] + ["..."] + keys[-8:]
    for k in shown:
        if k == "...":
            t.add_row(f"... {len(keys) - 20} more (--all)", "", "", "")
        else:
            v = state[k]
            t.add_row(k, str(tuple(v.shape)), str(v.dtype), _fmt_count(v.size))
    c.print(t)
    return EXIT_OK


def add_parser(sub) -> None:
    i = sub.add_parser("inspect", help="config, parameter count, numerics and tensors of a weight file")
    i.add_argument("file")
    i.add_argument("--json", action="store_true")
    i.add_argument("--all", action="store_true", help="list every tensor")
    i.set_defaults(func=cmd_inspect)

    n = sub.add_parser("init", help="write deterministic random weights for a preset")
    n.add_argument("preset", help=f"one of: {', '.join(preset_names())}, or a short name ({', '.join(sorted(ALIASES))})")
    n.add_argument("output")
    n.add_argument("--seed", type=int_arg(0, SEED_MAX), default=0)
    n.add_argument("--image-size", help="HxW instead of the preset's")
    n.add_argument("--force", action="store_true", help="replace an existing OUTPUT")
    n.set_defaults(func=cmd_init)
