"""`vit-suite check`: identical weights and inputs into every backend, in child processes.

Each backend runs in a child process (`shared.cli.worker`: TensorFlow imported before MindSpore aborts a process,
and the frameworks' thread pools should not share one), alone or after backends that import the same framework
(`run_check`), and returns every named stage; this process compares each stage with the float64 reference and
every pair of backends under shared/tolerances.py.
"""
from __future__ import annotations

import argparse
import json
from concurrent.futures import as_completed
from pathlib import Path
from typing import Callable

import numpy as np

from .. import reference, tolerances
from .. import fileio as F
from .. import weights as W
from ..backend import available_backends, backend_names, process_groups, start_order
from ..config import ViTConfig
from ..errors import EXIT_OK, EXIT_USAGE, InvalidFileError, NonFiniteError, SuiteError, UsageError
from ..presets import ALIASES, DEFAULT_PRESET, get_preset
from .common import (SEED_MAX, claim_output, console, esc, int_arg, load_npy, parse_size, resolve_model, same_file,
                     selected_backends, write_text)
from .results import BackendRun, CheckResult, check_outcome
from .worker import ChildPool, run_child


def _check_batch(images: np.ndarray) -> None:
    """A non-empty, finite NCHW batch, or a UsageError saying what is wrong (with the count of bad values)."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[0] == 0:
        raise UsageError(f"check needs a non-empty NCHW batch of images, got shape {images.shape}")
    bad = int(images.size - np.count_nonzero(np.isfinite(images)))
    if bad:
        raise UsageError(f"input: {bad} of {images.size} values are NaN or infinite")


def _check_references(dtype: str, ref64: dict, ref_lowp: dict | None) -> None:
    """A reference that is itself NaN/Inf cannot judge anything: NonFiniteError naming each stage and count."""
    for name, ref in (("float64", ref64), (dtype, ref_lowp)):
        counts = tolerances.nonfinite_counts(ref or {})
        if counts:
            raise NonFiniteError(f"the {name} reference itself is not finite (the weights or inputs overflow it): "
                                 f"{tolerances.describe_nonfinite(counts, ref)}")


def _judge(run: BackendRun, cfg: ViTConfig, dtype: str, ref64: dict, ref_lowp: dict | None) -> None:
    """A backend's stages: non-finite (status 'non-finite', counts per stage) or judged under the policy."""
    run.nonfinite = tolerances.nonfinite_counts({k: run.stages[k] for k in cfg.stage_names() if k in run.stages})
    if run.nonfinite:
        run.error = f"non-finite output: {tolerances.describe_nonfinite(run.nonfinite, run.stages)}"
    else:
        run.verdict = tolerances.judge(cfg, dtype, run.stages, ref64, ref_lowp)


def run_check(cfg: ViTConfig, weights: Path, images: np.ndarray, backends: list[str], dtype: str = "float32",
              state: dict | None = None, labels: np.ndarray | None = None,
              on_event: Callable[[str, str], None] | None = None, env: dict[str, str] | None = None,
              jobs: int | None = None, threads: int | None = None, runner=None, isolate: bool = False
              ) -> CheckResult:
    """Reference + every backend (in child processes, `env` added to their environment) + pairwise comparison
    (each run against the runs judged before it, as it comes in: little is left to do after the last child).

    The children start first, the costliest first (`start_order`), and run `jobs` at once (default: as many as
    the cores and memory hold, shared/jobs.py) while this process computes the float64 reference. Each child gets
    `threads` threads (default `jobs.child_threads()`, fixed per machine), so the numbers do not depend on `jobs`;
    `env` (the sweep's) overrides them. Each backend has a process of its own while the cores run them all at
    once; with more backends than that, those that import the same framework share one (`process_groups`: torch
    and keras-torch, the OpenVINO and ONNX ones), one after another, unless `isolate`. `runner`: how a child runs
    (`run_child`, or a sweep's warm workers: then each backend is a task of its own). The runs come back in the
    order of `backends`; `on_event(backend, status)` as each finishes."""
    from .. import jobs as J

    notify = on_event or (lambda who, what: None)
    _check_batch(images)
    if state is None:
        state = W.load(weights)[1]
    image_size = tuple(images.shape[2:])
    threads = threads or J.child_threads()
    child_env = {**J.thread_env(threads), **(env or {})}
    slots = J.concurrent_children(len(backends), J.child_memory(cfg, images.shape[0], image_size), jobs, threads)
    # more backends than the cores run at once: those that import the same framework share a process, which
    # imports it once (their tasks run one after another there; the numbers are the same bits)
    groups = ([[b] for b in start_order(backends)] if isolate or runner is not None or len(backends) <= slots
              else process_groups(backends))
    slots = min(slots, max(1, len(groups)))
    runs: dict[str, BackendRun] = {}
    with F.work_dir("check") as tmp, ChildPool(slots, runner) as pool:
        images_path = Path(tmp) / "images.npy"
        np.save(images_path, images.astype(np.float32))
        spec = {"weights": str(weights), "input": str(images_path), "dtype": dtype, "stages": True,
                "image_size": list(image_size) if image_size != tuple(cfg.image_size) else None}
        futures = {}
        for group in groups:
            if len(group) == 1:
                futures[pool.submit("forward", {**spec, "backend": group[0]}, Path(tmp), name=group[0],
                                    env=child_env)] = group[0]
            else:
                futures.update(zip(pool.submit_group("forward", [{**spec, "backend": b} for b in group], Path(tmp),
                                                     env=child_env), group))
        shared_with = {b: group for group in groups if len(group) > 1 for b in group}
        notify("reference", "float64 reference" + (f"; {len(backends)} backend(s) started, {slots} at once"
                                                    if backends else ""))
        ref64 = reference.forward(cfg, state, images)
        ref_lowp = reference.forward(cfg, state, images, dtype=dtype) if dtype != "float32" else None
        _check_references(dtype, ref64, ref_lowp)
        position = {b: i for i, b in enumerate(backends)}
        compared: dict[tuple[str, str], tolerances.PairResult] = {}
        for fut in as_completed(futures):
            b, child = futures[fut], fut.result()
            run = BackendRun(b, stages=child.arrays, error=child.error, unsupported=child.unsupported,
                             seconds=child.seconds,
                             meta={**child.meta, "threads": int(child_env["OMP_NUM_THREADS"]), "jobs": slots,
                                   **({"process": shared_with[b]} if b in shared_with else {})})
            if run.stages is not None:
                _judge(run, cfg, dtype, ref64, ref_lowp)
            notify(b, run.status)
            if run.verdict is not None:  # against each run judged before it, while the other children still run
                for other in runs.values():
                    if other.verdict is not None:
                        x, y = sorted((run, other), key=lambda r: position[r.backend])
                        compared[x.backend, y.backend] = tolerances.compare_pair(cfg, x.backend, x.stages, x.verdict,
                                                                                 y.backend, y.stages, y.verdict)
            runs[b] = run
    ordered = [runs[b] for b in backends]
    ok = [r for r in ordered if r.verdict is not None]
    pairs = [compared[a.backend, b.backend] for i, a in enumerate(ok) for b in ok[i + 1:]]
    return CheckResult(cfg, dtype, images, ref64, ref_lowp, ordered, pairs, labels)


def prove_against(src: str, fmt: str | None, cfg: ViTConfig, ref64: dict[str, np.ndarray],
                  images: np.ndarray, *, in_process: bool = False, runner=run_child) -> dict:
    """The source library's own output against the float64 reference of the converted file, on the same images,
    under the float32 bound of the final output: status pass, FAIL, error (the library could not run the source:
    not proven) or not verified (no library, or the conversion named no model the library can build).

    `check --against` runs the library in a child process (`shared.cli.worker source`); `convert`'s proof runs it
    in this process (in_process=True), whose frameworks were imported in the safe order for the source already;
    `runner` runs the child (`run_child`, or a sweep's warm workers)."""
    from ..convert.sources import library_available, one_line, resolve_source, run_source, source_backend

    fmt, library = resolve_source(src, fmt)
    out = {"source": str(src), "format": fmt, "library": library, "stage": "logits"}
    if not library_available(library):
        return {**out, "status": "not verified", "message": f"{library} is not installed: not verified against "
                                                            f"the source (pip install {library})"}
    if in_process:
        from ..backend import import_frameworks_in_safe_order, module_versions

        import_frameworks_in_safe_order([source_backend(fmt)])
        try:
            got = run_source(fmt, str(Path(src).resolve()), images.astype(np.float32), cfg)
        except SuiteError as e:
            status = "not verified" if e.exit_code == EXIT_USAGE else "error"
            return {**out, "status": status, "message": one_line(e)}
        out["versions"] = module_versions([library])
    else:
        with F.work_dir("against") as tmp:
            np.save(Path(tmp) / "images.npy", images.astype(np.float32))
            child = runner("source", {"backend": source_backend(fmt), "format": fmt,
                                      "src": str(Path(src).resolve()), "input": str(Path(tmp) / "images.npy"),
                                      "config": cfg.to_json()}, Path(tmp), name="source")
        if child.arrays is None:
            status = "not verified" if child.exit_code == EXIT_USAGE else "error"
            return {**out, "status": status, "message": _child_reason(child.error)}
        got = child.arrays["output"]
        out["versions"] = child.meta.get("versions")
    ref = ref64["logits"]
    if got.shape != ref.shape:
        return {**out, "status": "FAIL", "message": f"{library}'s output has shape {got.shape}, the converted "
                                                    f"file's {ref.shape}"}
    if not np.any(ref) and not np.any(got):  # e.g. a zero-initialised head (torchvision's): nothing is proven
        return {**out, "status": "not verified", "message": "both outputs are identically zero (a zero-initialised "
                                                            "head?): the comparison proves nothing"}
    m = tolerances.stage_metrics("logits", got, ref, tolerances.fp32_bound(cfg, "logits"))
    return {**out, "status": "pass" if m.passed else "FAIL", "rel_l2": m.rel_l2, "bound": m.bound,
            "max_abs": m.max_abs, "cosine": m.cosine,
            "message": f"{library}'s own output vs the float64 reference of the converted file: relative L2 "
                       f"{m.rel_l2:.2e}, bound {m.bound:.1e}"}


#: the suffixes `check --against` runs as a deployed artifact (shared.deploy.artifact), not as a source checkpoint
ARTIFACT_FORMATS = {".onnx": "onnx", ".tflite": "tflite", ".xml": "openvino-ir"}


def is_artifact(src: str | None) -> bool:
    return src is not None and Path(src).suffix.lower() in ARTIFACT_FORMATS


def parse_against_outputs(items: list[str] | None, cfg: ViTConfig) -> dict[str, str]:
    """`--against-output NAME=STAGE` flags -> graph output name -> stage (each STAGE one of the config's stages)."""
    out: dict[str, str] = {}
    for item in items or []:
        name, sep, stage = item.rpartition("=")
        if not sep or not name or stage not in cfg.stage_names():
            raise UsageError(f"--against-output {item!r}: expected GRAPH_OUTPUT=STAGE, STAGE one of "
                             f"{', '.join(cfg.stage_names())}")
        out[name] = stage
    return out


def prove_artifact(path: str, cfg: ViTConfig, ref64: dict[str, np.ndarray], images: np.ndarray,
                   named: dict[str, str] | None = None) -> dict:
    """An exported graph this suite did not write (.onnx in ONNX Runtime, .tflite in LiteRT, an OpenVINO .xml), run
    on the check's own images, against the float64 reference of W: every stage the graph exposes (outputs named
    after a stage, or named with --against-output NAME=STAGE; a graph with one output gives the logits) under its
    float32 bound, the first stage out of bound reported. The input layout is read from the graph input's shape
    (shared.deploy.artifact.input_layout); the images are the reference's, with no normalisation added.

    Status pass / FAIL / error (the runtime could not run the file: not proven) / not verified (runtime not
    installed). Unsafe or unreadable files raise InvalidFileError; an ambiguous layout or outputs, UsageError."""
    import importlib.util

    from ..backend import module_versions
    from ..deploy.artifact import artifact_io, input_layout, load_artifact, runtime_for

    fmt, runtime = ARTIFACT_FORMATS[Path(path).suffix.lower()], runtime_for(path)
    out = {"source": str(path), "format": fmt, "library": runtime, "kind": "artifact", "stage": "logits"}
    if importlib.util.find_spec(runtime) is None:
        return {**out, "status": "not verified", "message": f"{runtime} is not installed: the artifact is not run"}
    if not Path(path).is_file():
        raise UsageError(f"--against {path}: no such file")
    inputs, outputs = artifact_io(path)
    if len(inputs) != 1:
        raise UsageError(f"{path}: the graph has inputs {sorted(inputs)}; check --against runs one image input")
    (name, shape), = inputs.items()
    layout = input_layout(name, shape, cfg.in_chans, tuple(images.shape[2:]))
    named = dict(named or {})
    unknown = sorted(set(named) - set(outputs))
    if unknown:
        raise UsageError(f"--against-output names {unknown}, not outputs of {path} (its outputs: {outputs})")
    stages = named or {o: o for o in outputs if o in cfg.stage_names()} or (
        {outputs[0]: "logits"} if len(outputs) == 1 else {})
    if not stages:
        raise UsageError(f"{path} has outputs {outputs}, none named after a stage: say which is which with "
                         f"--against-output NAME=STAGE (stages: {', '.join(cfg.stage_names())})")
    x = images.astype(np.float32) if layout == "NCHW" else np.ascontiguousarray(images.transpose(0, 2, 3, 1))
    out.update(layout=layout, input=name, outputs=stages,
               inputs_note=f"the check's images as the reference gets them ({layout}, float32, no normalisation "
                           f"added)", versions=module_versions([runtime]))
    try:
        run = load_artifact(path)
        if shape[0] is not None and shape[0] != len(x):  # a fixed batch: one image at a time, if it is 1
            if shape[0] != 1:
                raise UsageError(f"{path}: input {name!r} takes a fixed batch of {shape[0]}: pass --batch {shape[0]}")
            parts = [run({name: x[i:i + 1]}) for i in range(len(x))]
            got = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        else:
            got = run({name: x})
    except (UsageError, InvalidFileError):
        raise
    except Exception as e:  # noqa: BLE001 - the runtime's own error: nothing is proven either way
        return {**out, "status": "error", "message": f"{runtime} could not run {path}: {type(e).__name__}: "
                                                     f"{str(e).splitlines()[0][:200] if str(e) else ''}"}
    rows = []
    for stage in [s for s in cfg.stage_names() if s in stages.values()]:
        graph_out = next(o for o, s in stages.items() if s == stage)
        g, ref = got[graph_out], ref64[stage]
        if g.shape != ref.shape:
            rows.append({"stage": stage, "output": graph_out, "passed": False,
                         "message": f"output {graph_out!r} has shape {list(g.shape)}, the stage {list(ref.shape)}"})
            continue
        m = tolerances.stage_metrics(stage, g, ref, tolerances.fp32_bound(cfg, stage))
        rows.append({"stage": stage, "output": graph_out, "passed": bool(m.passed), "rel_l2": m.rel_l2,
                     "bound": m.bound, "max_abs": m.max_abs, "cosine": m.cosine})
    first = next((r for r in rows if not r["passed"]), None)
    shown = first or rows[-1]
    out.update(stages=rows, stage=shown["stage"], **{k: shown[k] for k in ("rel_l2", "bound", "max_abs", "cosine")
                                                     if k in shown})
    what = shown.get("message") or f"relative L2 {shown['rel_l2']:.2e}, bound {shown['bound']:.1e}"
    compared = ", ".join(r["stage"] for r in rows)
    return {**out, "status": "FAIL" if first else "pass",
            "message": f"input {name!r} {layout} (the reference's images, float32, no normalisation added); stages "
                       f"{compared} vs the float64 reference: " + (f"first out of bound: {shown['stage']} ({what})"
                                                                   if first else f"{shown['stage']} {what}")}


def _child_reason(stderr: str | None) -> str:
    """One line saying why a source child failed: its `error: ...` line (a SourceError is one line already), else
    the last line of its traceback."""
    from ..convert.sources import one_line

    lines = [ln for ln in (stderr or "").splitlines() if ln.strip()]
    tagged = [ln for ln in lines if ln.startswith(("error: ", "unsupported: "))]
    return one_line(tagged[-1].split(": ", 1)[1] if tagged else (lines[-1] if lines else "no output"))


def against_line(a: dict) -> str:
    """The proof's row, as `check` and `convert` print it (rich markup; the message escaped)."""
    from rich.markup import escape

    style = {"pass": "green", "FAIL": "bold red", "error": "red"}.get(a["status"], "yellow")
    status = {"error": "not proven:"}.get(a["status"], a["status"])
    what = "the artifact" if a.get("kind") == "artifact" else "the source"
    return f"against {what} ({escape(a['library'])}, {escape(a['source'])}): [{style}]{status}[/] " \
           f"{escape(a['message'])}"


def cmd_check(args) -> int:
    from ..init import random_images

    if args.grad:
        from .grad import cmd_grad

        if args.against:
            raise UsageError("--against proves a conversion's forward output; it does not combine with --grad")

        return cmd_grad(argparse.Namespace(weights=args.weights, preset=args.preset, backends=args.backends,
                                           batch=args.batch or 8, seed=args.seed, label_smoothing=0.1,
                                           json=args.json, force=args.force))
    if args.explain:
        cfg = W.load(args.weights)[0] if args.weights else get_preset(args.preset or DEFAULT_PRESET)
        print(tolerances.explain(cfg))
        return EXIT_OK
    inputs = (args.weights, args.input, args.against)
    claim_output(args.json, "--json", force=args.force, inputs=inputs)
    claim_output(args.report, "--report", force=args.force, inputs=inputs)
    if args.json and args.report and same_file(args.json, args.report):
        raise UsageError(f"--json and --report name one file, {args.json}")
    cfg, state, source, images, labels = resolve_model(args.weights, args.preset, args.seed)
    if args.report and not (args.attn_block < cfg.depth and args.attn_head < cfg.num_heads):
        raise UsageError(f"--attn-block {args.attn_block} --attn-head {args.attn_head}: {cfg.name} has blocks "
                         f"0..{cfg.depth - 1} and heads 0..{cfg.num_heads - 1}")
    size = parse_size(args.image_size)
    if args.input:
        images, labels = load_npy(args.input, "--input", cfg), None
    elif images is None or size or args.batch:
        flags = " ".join(f for f, v in (("--batch", args.batch), ("--image-size", args.image_size)) if v) or "check"
        reference.check_forward_size(cfg.with_image_size(size) if size else cfg, args.batch or 2, flags)
        images = random_images(cfg, args.batch or 2, args.seed, args.input_kind, size)
        labels = None
    if images.shape[1] != cfg.in_chans:
        raise UsageError(f"inputs have {images.shape[1]} channels, {cfg.name} expects {cfg.in_chans}")
    run_cfg = cfg.with_image_size(tuple(images.shape[2:])) if tuple(images.shape[2:]) != tuple(cfg.image_size) else cfg
    reference.check_forward_size(run_cfg, images.shape[0], f"--input {args.input}" if args.input else "check")
    if args.against_output and not is_artifact(args.against):
        raise UsageError(f"--against-output names graph outputs of an exported artifact "
                         f"({', '.join(ARTIFACT_FORMATS)}), not of {args.against or 'nothing'}")
    named = parse_against_outputs(args.against_output, cfg)
    wanted = selected_backends(args.backends)
    missing = [b for b in backend_names(variants=False) if b not in available_backends()]
    c = console()
    if missing and not args.backends:
        c.print(f"[yellow]not installed, not checked: {', '.join(missing)}[/] (pip install -e '.[all]')")
    c.print(f"[bold]vit-suite check[/]: {esc(source)}; {esc(cfg.name)}, {args.dtype}, batch {images.shape[0]}, "
            f"image {images.shape[2]}x{images.shape[3]}; backends: {', '.join(wanted)}")
    with F.work_dir("weights") as tmp:
        weights_path = Path(args.weights) if args.weights else W.save(Path(tmp) / "weights.safetensors", cfg, state)
        with c.status("starting") as status:
            def on_event(who, what):
                status.update(f"[bold]{who}[/]: {what}")
                if what in ("pass", "FAIL", "error", "unsupported", "non-finite"):
                    c.print(f"  {who}: {what}")

            result = run_check(run_cfg, weights_path, images, wanted, args.dtype, state=state, labels=labels,
                               on_event=on_event, jobs=args.jobs, threads=args.threads, isolate=args.isolate)
            if args.against:
                status.update(f"[bold]source[/]: running {args.against} in its own library")
                if is_artifact(args.against):
                    result.against = prove_artifact(args.against, run_cfg, result.ref64, images, named)
                else:
                    result.against = prove_against(args.against, args.against_format, run_cfg, result.ref64, images)
    print_check(c, result, args.stages)
    if args.json:
        write_text(args.json, json.dumps(result.to_json(), indent=2), overwrite=args.force)
        c.print(f"wrote {args.json}", markup=False)
    if args.report:
        from .report import write_report

        write_report(args.report, result, state, args.attn_block, args.attn_head, overwrite=args.force)
        c.print(f"wrote {args.report}", markup=False)
    return check_outcome(result)[0]


def print_check(c, result: CheckResult, show_stages: bool) -> None:
    from rich.markup import escape
    from rich.table import Table

    t = Table(title=f"{result.config.name}, {result.dtype}: final output vs float64 reference", show_lines=False)
    for col in ("backend", "status", "max abs", "max rel", "rel L2", "cosine", "top-1 agree", "worst stage / bound",
                "first stage out of bound", "time"):
        t.add_column(col, justify="right" if col not in ("backend", "status", "first stage out of bound") else "left")
    if result.labels is not None:
        t.add_column("accuracy", justify="right")
    for r in result.runs:
        style = {"pass": "green", "FAIL": "bold red", "error": "red", "unsupported": "yellow",
                 "non-finite": "bold red"}[r.status]
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
    for r in result.runs:
        if r.meta.get("note"):
            c.print(f"  {r.backend}: {escape(r.meta['note'])}")
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
    if result.against:
        c.print(against_line(result.against))
    c.print(check_outcome(result)[1])


def add_parser(sub) -> None:
    c = sub.add_parser("check", help="run identical weights in every backend and compare with the float64 reference "
                                     "(the default command)")
    c.add_argument("weights", nargs="?", help="canonical .safetensors (default: the built-in default model)")
    c.add_argument("--preset", help=f"random weights for a preset instead of a file ({', '.join(sorted(ALIASES))}, ...)")
    c.add_argument("--backends", help=f"comma-separated (default: every installed one of "
                                      f"{', '.join(backend_names(variants=False))})")
    c.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    c.add_argument("--batch", type=int_arg(1, 1024), help="batch size of random inputs (default 2)")
    c.add_argument("--image-size", help="HxW; a learned position table is resampled with the config's kernel")
    c.add_argument("--input", help="NCHW float32 .npy inputs instead of random ones")
    c.add_argument("--input-kind", default="normal", choices=["normal", "uniform", "zeros", "large"])
    c.add_argument("--seed", type=int_arg(0, SEED_MAX), default=0)
    c.add_argument("--jobs", type=int_arg(1, 1024),
                   help="backends run at once (default: as many as the cores and the available memory hold)")
    c.add_argument("--threads", type=int_arg(1, 1024),
                   help="threads of each backend's process (default: cores / 4, at least 1; fixed per machine, so "
                        "the numbers do not depend on --jobs)")
    c.add_argument("--isolate", action="store_true",
                   help="every backend in a process of its own (by default, with more backends than run at once, "
                        "those that import the same framework share one: the same numbers, one import)")
    c.add_argument("--stages", action="store_true", help="print the per-stage table")
    c.add_argument("--json", help="write every metric to this JSON file")
    c.add_argument("--report", help="write a self-contained HTML report with plots")
    c.add_argument("--attn-block", type=int_arg(0, 10**6), default=0, help="block of the attention map in the report")
    c.add_argument("--attn-head", type=int_arg(0, 10**6), default=0, help="head of the attention map in the report")
    c.add_argument("--force", action="store_true", help="replace an existing --json / --report file")
    c.add_argument("--explain", action="store_true", help="print the tolerance policy and exit")
    c.add_argument("--against", metavar="SRC",
                   help="the file WEIGHTS was converted from: run it in its own library (timm, transformers) on the "
                        "same inputs and compare with the reference of WEIGHTS (exit 5 on a mismatch); or an exported "
                        "graph (.onnx: ONNX Runtime, .tflite: LiteRT, .xml: OpenVINO), run on the same images "
                        "(layout read from its input shape, no normalisation added), each stage it exposes compared")
    c.add_argument("--against-format", help="the format of --against (default: detected from its content)")
    c.add_argument("--against-output", action="append", metavar="NAME=STAGE",
                   help="with an --against artifact (.onnx, .tflite, OpenVINO .xml): the graph output NAME is the "
                        "stage STAGE (repeatable); outputs named after a stage are matched without it, a graph "
                        "with one output gives the logits")
    c.add_argument("--grad", action="store_true",
                   help="gradient and optimiser-step conformance against a float64 oracle (= vit-suite grad)")
    c.set_defaults(func=cmd_check)


def default_args(**overrides) -> argparse.Namespace:
    """The arguments of a plain `vit-suite check`, with some replaced (used by `convert --verify`)."""
    p = argparse.ArgumentParser()
    add_parser(p.add_subparsers())
    return argparse.Namespace(**{**vars(p.parse_args(["check"])), **overrides})
