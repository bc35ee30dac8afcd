"""`vit-suite`: check conformance, convert weights, inspect files, run one backend, benchmark.

Exit codes: 0 ok, 1 a backend crashed, 2 bad usage, 3 invalid or unsafe file, 4 key/shape mismatch,
5 a backend out of its tolerance bound, 6 (forward) the backend does not support the dtype.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from . import weights as W
from .backend import BackendError, available_backends, backend_names, get_backend
from .config import ConfigError, ViTConfig
from .presets import ALIASES, DEFAULT_PRESET, get_preset, preset_names

EXIT_CRASH = 1
EXIT_UNSUPPORTED = 6


class UsageError(Exception):
    exit_code = W.EXIT_USAGE


def _console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, width=None if sys.stdout.isatty() else 130)


def _parse_size(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        parts = [int(p) for p in text.lower().replace(",", "x").split("x")]
    except ValueError:
        raise UsageError(f"--image-size must be HxW (e.g. 224x224 or 60x100), got {text!r}") from None
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or min(parts) <= 0:
        raise UsageError(f"--image-size must be HxW with positive sizes, got {text!r}")
    return (parts[0], parts[1])


def _load_npy(path: str, what: str) -> np.ndarray:
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{what} {p}: no such file")
    try:
        arr = np.load(p, allow_pickle=False)  # never unpickle
    except ValueError as e:
        raise W.InvalidFileError(f"{p}: not a plain .npy array ({e})") from None
    if arr.ndim != 4:
        raise UsageError(f"{what} {p}: expected NCHW (4-D) float array, got shape {arr.shape}")
    return arr.astype(np.float32)


def _prepare_frameworks(backends: list[str]) -> None:
    """Deliberate import order for one process using several frameworks: MindSpore before TensorFlow."""
    if "mindspore" in backends and importlib.util.find_spec("mindspore") is not None:
        import mindspore  # noqa: F401  (deliberately first)


# ------------------------------------------------------------------------------ init / inspect
def cmd_init(args) -> int:
    from .init import init_weights

    cfg = get_preset(args.preset)
    if args.image_size:
        cfg = cfg.replace(image_size=_parse_size(args.image_size))
    W.save(args.output, cfg, init_weights(cfg, args.seed), metadata={"init_seed": str(args.seed)})
    _console().print(f"wrote {args.output}: {cfg.name}, {W.parameter_count(cfg) / 1e6:.2f}M parameters, seed {args.seed}")
    return 0


def _fmt_count(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e3 else str(n)


def cmd_inspect(args) -> int:
    from .formats import detect_format

    fmt = detect_format(args.file)
    if fmt != "canonical":
        tensors, meta = W.read_tensors(args.file) if fmt in ("timm", "hf") and Path(args.file).is_file() else ({}, {})
        info = {"file": args.file, "format": fmt, "canonical": False,
                "tensors": {k: [list(v.shape), str(v.dtype)] for k, v in tensors.items()},
                "hint": f"convert it first: vit-suite convert {args.file} OUT.safetensors --from {fmt} [--preset NAME]"}
        if args.json:
            print(json.dumps(info, indent=2))
        else:
            c = _console()
            c.print(f"[bold]{args.file}[/]: {fmt} format (not a canonical vit-suite file)")
            for k, (shape, dt) in list(info["tensors"].items())[:40]:
                c.print(f"  {k:50s} {str(tuple(shape)):20s} {dt}")
            c.print(info["hint"])
        return 0
    cfg, state = W.load(args.file)
    n = W.parameter_count(cfg)
    if args.json:
        print(json.dumps({"file": args.file, "format": "canonical", "config": cfg.to_dict(), "parameters": n,
                          "numerics": cfg.describe_numerics(),
                          "tensors": {k: [list(v.shape), str(v.dtype)] for k, v in state.items()}}, indent=2))
        return 0
    from rich.table import Table

    c = _console()
    c.print(f"[bold]{args.file}[/]: canonical vit-suite weights, model [bold]{cfg.name}[/]")
    c.print(f"parameters: [bold]{n:,}[/] ({n / 1e6:.1f}M); input {cfg.in_chans}x{cfg.image_size[0]}x{cfg.image_size[1]}, "
            f"patch {cfg.patch_size} -> grid {cfg.grid[0]}x{cfg.grid[1]}, {cfg.num_tokens} tokens; width {cfg.embed_dim}"
            f"{f' (attention {cfg.width})' if cfg.width != cfg.embed_dim else ''}, depth {cfg.depth}, heads {cfg.num_heads}, "
            f"MLP {cfg.mlp_dim}, classes {cfg.num_classes}")
    t = Table(title="numerics", show_header=True)
    t.add_column("choice")
    t.add_column("value")
    for k, v in cfg.describe_numerics().items():
        t.add_row(k, str(v))
    c.print(t)
    if cfg.notes:
        c.print(f"notes: {cfg.notes}")
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
    return 0


# ------------------------------------------------------------------------------ reference / forward
def _model_inputs(args, cfg: ViTConfig) -> np.ndarray:
    x = _load_npy(args.input, "--input")
    if x.shape[1] != cfg.in_chans:
        raise UsageError(f"--input {args.input}: {x.shape[1]} channels, model expects {cfg.in_chans} (NCHW)")
    return x


def _write_npz(path: str, arrays: dict, meta: dict) -> None:
    arrays = {k: np.asarray(v, dtype=np.float32) for k, v in arrays.items()}
    arrays["__meta__"] = np.array(json.dumps(meta))
    W.atomic_write(path, lambda tmp: np.savez(open(tmp, "wb"), **arrays))


def cmd_reference(args) -> int:
    from . import reference

    cfg, state = W.load(args.weights)
    x = _model_inputs(args, cfg)
    out = reference.forward(cfg, state, x, dtype=args.dtype)
    _write_npz(args.output, out, {"backend": "reference", "dtype": args.dtype})
    _console().print(f"wrote {args.output}: {', '.join(out)}")
    return 0


def cmd_forward(args) -> int:
    _prepare_frameworks([args.backend])
    be = get_backend(args.backend)
    try:
        be.check_dtype(args.dtype)
    except BackendError as e:
        _console(stderr=True).print(f"unsupported: {e}", markup=False)
        return EXIT_UNSUPPORTED
    cfg, state = W.load(args.weights)
    x = _model_inputs(args, cfg)
    size = _parse_size(args.image_size) or tuple(x.shape[2:])
    if size != tuple(cfg.image_size):
        cfg = cfg.with_image_size(size)
    t0 = time.perf_counter()
    model = be.build(cfg, state, dtype=args.dtype)
    t1 = time.perf_counter()
    out = be.forward(model, x)
    t2 = time.perf_counter()
    if not args.stages:
        out = {"logits": out["logits"]}
    _write_npz(args.output, out, {"backend": args.backend, "dtype": args.dtype, "build_s": t1 - t0, "forward_s": t2 - t1})
    if not args.quiet:
        _console(stderr=True).print(f"{args.backend}: build {t1 - t0:.2f} s, forward {t2 - t1:.2f} s -> {args.output}")
    return 0


# ------------------------------------------------------------------------------ check
def resolve_model(weights: str | None, preset: str | None, seed: int = 0):
    """(cfg, state, source, images, labels) from a canonical file, a preset's seeded weights, or the default.

    images/labels are the default model's held-out set, None otherwise.
    """
    from .init import init_weights

    if weights:
        cfg, state = W.load(weights)
        return cfg, state, weights, None, None
    if preset:
        cfg = get_preset(preset)
        return cfg, init_weights(cfg, seed), f"preset {cfg.name} (seed {seed})", None, None
    return _default_model()


def _default_model() -> tuple[ViTConfig, dict, str, np.ndarray | None, np.ndarray | None]:
    """The built-in default: the shipped trained digits model with real digits, else a seeded tiny model."""
    try:
        from .data import default_model

        found = default_model()
    except ImportError:
        found = None
    if found is not None:
        return found
    from .init import init_weights

    cfg = get_preset(DEFAULT_PRESET)
    return cfg, init_weights(cfg, 0), f"preset {cfg.name} (seed 0)", None, None


def cmd_check(args) -> int:
    from . import tolerances
    from .check import run_check
    from .init import random_images

    if args.grad:
        from .grad import run_grad_command

        return run_grad_command(argparse.Namespace(weights=args.weights, preset=args.preset, backends=args.backends,
                                                   batch=args.batch or 8, seed=args.seed, label_smoothing=0.1,
                                                   json=args.json))
    if args.explain:
        cfg = W.load(args.weights)[0] if args.weights else get_preset(args.preset or DEFAULT_PRESET)
        print(tolerances.explain(cfg))
        return 0
    cfg, state, source, images, labels = resolve_model(args.weights, args.preset, args.seed)
    size = _parse_size(args.image_size)
    if args.input:
        images, labels = _load_npy(args.input, "--input"), None
    elif images is None or size or args.batch:
        images = random_images(cfg, args.batch or 2, args.seed, args.input_kind, size)
        labels = None
    if images.shape[1] != cfg.in_chans:
        raise UsageError(f"inputs have {images.shape[1]} channels, {cfg.name} expects {cfg.in_chans}")
    run_cfg = cfg.with_image_size(tuple(images.shape[2:])) if tuple(images.shape[2:]) != tuple(cfg.image_size) else cfg
    missing = [b for b in backend_names() if b not in available_backends()]
    wanted = args.backends.split(",") if args.backends else available_backends()
    unknown = [b for b in wanted if b not in backend_names()]
    if unknown:
        raise UsageError(f"unknown backend(s) {unknown}; registered: {backend_names()}")
    if not wanted:
        raise UsageError("no backend is installed: pip install 'vit-suite[all]'")
    c = _console()
    if missing and not args.backends:
        c.print(f"[yellow]not installed, not checked: {', '.join(missing)}[/] (pip install -e '.[all]')")
    c.print(f"[bold]vit-suite check[/]: {source}; {cfg.name}, {args.dtype}, batch {images.shape[0]}, "
            f"image {images.shape[2]}x{images.shape[3]}; backends: {', '.join(wanted)}")
    with tempfile.TemporaryDirectory(prefix="vit-suite-") as tmp:
        weights_path = Path(args.weights) if args.weights else W.save(Path(tmp) / "weights.safetensors", cfg, state)
        with c.status("starting") as status:
            def on_event(who, what):
                status.update(f"[bold]{who}[/]: {what}")
                if what in ("pass", "FAIL", "error", "unsupported"):
                    c.print(f"  {who}: {what}")

            result = run_check(run_cfg, weights_path, images, wanted, args.dtype, state=state, labels=labels,
                               on_event=on_event)
    _print_check(c, result, args.stages)
    if args.json:
        W.atomic_write(args.json, lambda t: Path(t).write_text(json.dumps(result.to_json(), indent=2)))
        c.print(f"wrote {args.json}")
    if args.report:
        from .report import write_report

        write_report(args.report, result, state, args.attn_block, args.attn_head)
        c.print(f"wrote {args.report}")
    if any(r.status == "FAIL" for r in result.runs) or any(not p.passed for p in result.pairs):
        return W.EXIT_OUT_OF_BOUNDS
    return EXIT_CRASH if result.any_error else 0


def _print_check(c, result, show_stages: bool) -> None:
    from rich.markup import escape
    from rich.table import Table

    t = Table(title=f"{result.config.name}, {result.dtype}: final output vs float64 reference", show_lines=False)
    for col in ("backend", "status", "max abs", "max rel", "rel L2", "cosine", "top-1 agree", "worst stage / bound",
                "first stage out of bound", "time"):
        t.add_column(col, justify="right" if col not in ("backend", "status", "first stage out of bound") else "left")
    if result.labels is not None:
        t.add_column("accuracy", justify="right")
    for r in result.runs:
        style = {"pass": "green", "FAIL": "bold red", "error": "red", "unsupported": "yellow"}[r.status]
        if r.verdict is None:
            msg = (r.error or "").splitlines()[-1] if r.error else ""
            row = [r.backend, f"[{style}]{r.status}[/]", "", "", "", "", "", "", escape(msg[:90]), f"{r.seconds:.1f}s"]
        else:
            last = r.verdict.stages[-1]
            worst = max(r.verdict.stages, key=lambda s: s.rel_l2 / s.bound)
            f = r.verdict.first_failure
            t1 = r.verdict.top1_agreement
            row = [r.backend, f"[{style}]{r.status}[/]", f"{last.max_abs:.2e}", f"{last.max_rel:.2e}", f"{last.rel_l2:.2e}",
                   f"{last.cosine:.8f}", "-" if t1 is None else f"{100 * t1:.0f}%",
                   f"{worst.stage} {worst.rel_l2 / worst.bound:.2f}", f"[red]{f.stage}[/]" if f else "none", f"{r.seconds:.1f}s"]
        if result.labels is not None:
            acc = "" if r.stages is None else f"{100 * np.mean(np.argmax(r.stages['logits'], 1) == result.labels):.2f}%"
            row.append(acc)
        t.add_row(*row)
    c.print(t)
    if show_stages:
        ok = [r for r in result.runs if r.verdict is not None]
        st = Table(title="per-stage relative L2 error / bound")
        st.add_column("stage")
        for r in ok:
            st.add_column(r.backend, justify="right")
        for i, name in enumerate(s.stage for s in ok[0].verdict.stages) if ok else []:
            st.add_row(name, *[("" if r.verdict.stages[i].passed else "[red]") + f"{r.verdict.stages[i].rel_l2:.2e} / "
                               f"{r.verdict.stages[i].bound:.1e}" for r in ok])
        c.print(st)
    if result.pairs:
        pt = Table(title="across backends (bound = sum of the two backends' bounds)")
        for col in ("pair", "worst stage", "rel L2", "bound", "verdict"):
            pt.add_column(col)
        for p in result.pairs:
            pt.add_row(f"{p.a} vs {p.b}", p.worst_stage, f"{p.rel_l2:.2e}", f"{p.bound:.2e}",
                       "[green]pass[/]" if p.passed else f"[red]FAIL at {p.first_failure}[/]")
        c.print(pt)
    if result.labels is not None and len([r for r in result.runs if r.stages is not None]) > 1:
        preds = [np.argmax(r.stages["logits"], 1) for r in result.runs if r.stages is not None]
        same = np.all([np.array_equal(preds[0], p) for p in preds[1:]])
        c.print(f"predictions on {len(result.labels)} held-out images: "
                + ("[green]identical in every backend[/]" if same else "[red]differ between backends[/]"))
    c.print("[bold green]PASS[/]" if result.passed else "[bold red]FAIL[/]: see the first stage out of bound above")


# ------------------------------------------------------------------------------ convert
def read_any(src: str, fmt: str | None, preset: str | None, image_size: tuple[int, int] | None) -> tuple[ViTConfig, dict]:
    """Any supported file -> (config, canonical state)."""
    from .formats import NATIVE_BACKEND, detect_format

    fmt = fmt or detect_format(src)
    cfg_hint = get_preset(preset) if preset else None
    if fmt == "canonical":
        cfg, state = W.load(src)
    elif fmt == "timm":
        from .convert import load_timm_file

        return load_timm_file(src, preset=cfg_hint, image_size=image_size)
    elif fmt == "hf":
        from .convert import load_hf_dir

        cfg, state = load_hf_dir(src if Path(src).is_dir() else Path(src).parent)
    elif fmt == "torch":
        # a plain state dict carries no config: the named preset if it fits exactly, else sizes from the file
        from .convert import import_timm
        from .convert.timm import read_checkpoint

        state = read_checkpoint(src)
        try:
            if cfg_hint is None:
                raise W.MismatchError(src, ["no preset"])
            W.validate_state(cfg_hint, state, source=src)
            cfg = cfg_hint
        except W.MismatchError:
            cfg, state = import_timm(state, preset=cfg_hint, image_size=image_size, source=src)
    elif fmt in NATIVE_BACKEND:
        from .formats import SUFFIX

        be_name = NATIVE_BACKEND[fmt]
        _prepare_frameworks([be_name])
        be = get_backend(be_name)
        with tempfile.TemporaryDirectory(prefix="vit-suite-src-") as tmp:
            if not str(src).lower().endswith(SUFFIX[fmt]):
                # detected from content: frameworks insist on their suffix, so give them a correctly named link
                link = Path(tmp) / f"weights{SUFFIX[fmt]}"
                link.symlink_to(Path(src).resolve())
                src = str(link)
            if fmt == "keras-h5":  # weights only: the config must come from --preset
                model = be.load_native(src, cfg_hint)
            else:  # .keras and our .ckpt carry their config; --preset serves files that carry none
                try:
                    model = be.load_native(src, None)
                except (W.InvalidFileError, BackendError):
                    if cfg_hint is None:
                        raise
                    model = be.load_native(src, cfg_hint)
        cfg, state = model.config, be.export(model)
    else:
        raise UsageError(f"unknown source format {fmt!r}")
    if image_size and tuple(image_size) != tuple(cfg.image_size):
        cfg, state = resize_state(cfg, state, image_size)
    return cfg, state


def resize_state(cfg: ViTConfig, state: dict, image_size: tuple[int, int]) -> tuple[ViTConfig, dict]:
    """Store the weights for another image size: a learned table is resampled with the config's kernel."""
    from .posemb import resample_pos_embed

    new = cfg.replace(image_size=image_size, pos_grid=None)
    state = dict(state)
    if cfg.pos_embed == "learned":
        state["pos_embed"] = resample_pos_embed(state["pos_embed"], cfg.table_grid, new.grid, cfg.num_prefix_tokens,
                                                cfg.resize_kernel).astype(np.float32)
    return new, state


def write_any(dst: str, fmt: str, cfg: ViTConfig, state: dict) -> None:
    from .formats import NATIVE_BACKEND

    if fmt == "canonical":
        W.save(dst, cfg, state)
    elif fmt == "timm":
        from safetensors.numpy import save_file
        from .convert import export_timm

        timm_state = export_timm(cfg, state)
        W.atomic_write(dst, lambda t: save_file({k: np.ascontiguousarray(v) for k, v in timm_state.items()}, t))
    elif fmt == "hf":
        from .convert import save_hf_dir

        save_hf_dir(dst, cfg, state)
    elif fmt in NATIVE_BACKEND:
        be_name = NATIVE_BACKEND[fmt]
        _prepare_frameworks([be_name])
        be = get_backend(be_name)
        model = be.build(cfg, state)
        be.save_native(model, dst)
    else:
        raise UsageError(f"unknown target format {fmt!r}")


def _target_format(dst: str, to: str | None) -> str:
    if to:
        return to
    name = dst.lower()
    if name.endswith(".weights.h5"):
        return "keras-h5"
    for suffix, fmt in ((".keras", "keras"), (".ckpt", "mindspore"), (".pt", "torch"), (".pth", "torch"),
                        (".safetensors", "canonical")):
        if name.endswith(suffix):
            return fmt
    if not Path(dst).suffix:
        return "hf"
    raise UsageError(f"cannot tell the target format of {dst!r}: pass --to ({', '.join(_formats())})")


def _formats():
    from .formats import FORMATS

    return FORMATS


def cmd_convert(args) -> int:
    from .formats import NATIVE_BACKEND, detect_format

    src_fmt = args.from_ or detect_format(args.src)
    dst_fmt = _target_format(args.dst, args.to)
    if Path(args.dst).exists() and not args.force:
        raise UsageError(f"{args.dst} exists; pass --force to replace it")
    _prepare_frameworks([NATIVE_BACKEND.get(src_fmt, ""), NATIVE_BACKEND.get(dst_fmt, "")])
    c = _console()
    cfg, state = read_any(args.src, src_fmt, args.preset, _parse_size(args.image_size))
    write_any(args.dst, dst_fmt, cfg, state)
    c.print(f"{args.src} ({src_fmt}) -> {args.dst} ({dst_fmt}): {cfg.name}, {W.parameter_count(cfg):,} parameters")
    if args.verify:
        back_cfg, back = read_any(args.dst, dst_fmt, args.preset, None)
        diffs = [k for k in state if k not in back or not np.array_equal(state[k], back[k])]
        if diffs or set(back) != set(state):
            c.print(f"[red]verify: reading {args.dst} back differs from the source in {diffs[:5]}[/]")
            return W.EXIT_MISMATCH
        c.print("verify: read back bit-exact; running the conformance check on the result")
        check_args = argparse.Namespace(**{**vars(_build_parser().parse_args(["check"])), "backends": args.backends})
        with tempfile.TemporaryDirectory(prefix="vit-suite-verify-") as tmp:
            check_args.weights = str(W.save(Path(tmp) / "converted.safetensors", back_cfg, back))
            return cmd_check(check_args)
    return 0


# ------------------------------------------------------------------------------ bench
def cmd_bench(args) -> int:
    from .bench import run_bench

    return run_bench(args)


# ------------------------------------------------------------------------------ parser
def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vit-suite", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    c = sub.add_parser("check", help="run identical weights in every backend and compare with the float64 reference "
                                     "(the default command)")
    c.add_argument("weights", nargs="?", help="canonical .safetensors (default: the built-in default model)")
    c.add_argument("--preset", help=f"random weights for a preset instead of a file ({', '.join(sorted(ALIASES))}, ...)")
    c.add_argument("--backends", help=f"comma-separated (default: every installed one of {', '.join(backend_names())})")
    c.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    c.add_argument("--batch", type=int, help="batch size of random inputs (default 2)")
    c.add_argument("--image-size", help="HxW; a learned position table is resampled with the config's kernel")
    c.add_argument("--input", help="NCHW float32 .npy inputs instead of random ones")
    c.add_argument("--input-kind", default="normal", choices=["normal", "uniform", "zeros", "large"])
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--stages", action="store_true", help="print the per-stage table")
    c.add_argument("--json", help="write every metric to this JSON file")
    c.add_argument("--report", help="write a self-contained HTML report with plots")
    c.add_argument("--attn-block", type=int, default=0, help="block of the attention map in the report")
    c.add_argument("--attn-head", type=int, default=0, help="head of the attention map in the report")
    c.add_argument("--explain", action="store_true", help="print the tolerance policy and exit")
    c.add_argument("--grad", action="store_true",
                   help="gradient and optimiser-step conformance against a float64 oracle (= vit-suite grad)")
    c.set_defaults(func=cmd_check)

    v = sub.add_parser("convert", help="convert weights between canonical, timm, HF, torch, Keras and MindSpore files")
    v.add_argument("src")
    v.add_argument("dst")
    v.add_argument("--from", dest="from_", choices=list(_formats()), help="source format (default: detected from content)")
    v.add_argument("--to", choices=list(_formats()), help="target format (default: from the destination's suffix)")
    v.add_argument("--preset", help="config for files that do not carry one (timm, .pt, .weights.h5, .ckpt)")
    v.add_argument("--image-size", help="HxW: resample the learned position table for this input size")
    v.add_argument("--verify", action="store_true", help="read the result back and run the check on it")
    v.add_argument("--backends", help="backends for --verify (default: every installed one)")
    v.add_argument("--force", action="store_true", help="replace an existing destination")
    v.set_defaults(func=cmd_convert)

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

    i = sub.add_parser("inspect", help="config, parameter count, numerics and tensors of a weight file")
    i.add_argument("file")
    i.add_argument("--json", action="store_true")
    i.add_argument("--all", action="store_true", help="list every tensor")
    i.set_defaults(func=cmd_inspect)

    n = sub.add_parser("init", help="write deterministic random weights for a preset")
    n.add_argument("preset", help=f"one of: {', '.join(preset_names())}, or a short name ({', '.join(sorted(ALIASES))})")
    n.add_argument("output")
    n.add_argument("--seed", type=int, default=0)
    n.add_argument("--image-size", help="HxW instead of the preset's")
    n.set_defaults(func=cmd_init)

    b = sub.add_parser("bench", help="images/s, GFLOP/s and peak memory per backend and mode, next to timm/HF")
    b.add_argument("--backends", help="comma-separated (default: every installed one)")
    b.add_argument("--preset", default="B/16")
    b.add_argument("--batch", default="1,8")
    b.add_argument("--dtype", default="float32")
    b.add_argument("--iters", type=int, default=5)
    b.add_argument("--no-peers", action="store_true", help="skip timm / Hugging Face")
    b.add_argument("--json", help="write the figures to this JSON file")
    b.set_defaults(func=cmd_bench)

    try:
        from .train_cli import add_training_commands
    except ImportError:
        pass
    else:
        add_training_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _build_parser()
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv = ["check", *argv]
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    if not getattr(args, "func", None):
        parser.print_help()
        return W.EXIT_USAGE
    from rich.markup import escape

    err = _console(stderr=True)
    try:
        return args.func(args)
    except W.WeightsError as e:
        err.print(f"[red]error:[/] {escape(str(e))}", soft_wrap=True)
        return e.exit_code
    except (UsageError, ConfigError, BackendError) as e:
        err.print(f"[red]error:[/] {escape(str(e))}", soft_wrap=True)
        return W.EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
