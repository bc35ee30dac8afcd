"""Whole-job timings (issue 27's table): each job as a user runs it, in a process of its own, repeated and
interleaved with its peer, medians written to JSON. Not a test: these machines are noisy.

    python -m benchmarks.jobs --out jobs.json                       # every row, 3 repeats
    python -m benchmarks.jobs --rows check,sweep --repeats 5
    python -m benchmarks.jobs --baseline /path/to/old/checkout     # the same jobs on older code, interleaved

Each run records wall seconds, CPU seconds (user + system of the whole process tree) and peak RSS (the largest
process of the tree, from wait4), and the job's own figures where it writes JSON (a check's per-backend seconds,
threads and child peak RSS; bench's peak RSS per mode, the peers' included; a sweep's cells/min). With --baseline,
every job runs on both trees in alternation (A B A B ...), so a change of load hits both alike. Each tree's modules
are compiled to bytecode first, as a user's Python does on first use.

The compile caches (shared/cache.py) are the run's own, warmed by one unrecorded default check per tree, as a
user's second check finds them; the row "first run (no compile cache)" runs the default check without them.

Rows: check (the default `check`, all targets, without its compile cache, and each target alone), check-b16 (a B/16 file on torch, keras,
mindspore), convert (B/16 to .keras / .ckpt / timm / HF and back; each run writes a new file, the previous run's
output removed first: replacing a file adds ext4's flush of the new data, about 0.25 s for B/16, which `--force`
keeps for an overwrite's crash safety), sweep (a zoo of tiny models: 3 checkpoints x
the sweep backends, 12 cells, cells/min: mostly the workers' framework start-up), sweep-large (12 checkpoints of
6 tiny architectures, 48 cells; with both sweep rows the JSON's `sweep_marginal` gives each tree's marginal rate,
(48 - 12) cells / (its two median walls' difference): the cells/min once the workers run, start-up excluded),
rss (`bench` B/16 batch 1: our torch, keras and mindspore modes against each framework's peer: timm, keras-hub,
mindcv), ci (the CI-sized test set; not in the default rows:
about 20 minutes).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ROWS = ("check", "check-b16", "convert", "sweep", "sweep-large", "rss")
SWEEP_ZOO = """
[sweep]
backends = {backends}
dtypes = ["float32"]
batches = [2]

[[checkpoints]]
preset = "tiny"
seed = 1
[[checkpoints]]
preset = "tiny"
seed = 2
[[checkpoints]]
preset = "tiny_meanpool"
seed = 3
"""

#: 12 checkpoints, 6 architectures (some share one, as a zoo's fine-tunes do), the same [sweep] as SWEEP_ZOO
SWEEP_ZOO_LARGE = SWEEP_ZOO.split("[[checkpoints]]")[0] + "".join(
    f'[[checkpoints]]\npreset = "{preset}"\nseed = {seed}\n'
    for preset, seed in [("tiny", 1), ("tiny", 2), ("tiny", 4), ("tiny_meanpool", 3), ("tiny_meanpool", 5),
                         ("tiny_deit", 6), ("tiny_deit", 7), ("tiny_clip", 8), ("tiny_clip", 9), ("tiny_siglip", 10),
                         ("tiny_siglip", 11), ("tiny_pretrain", 12)])


def run(argv: list[str], tree: Path, cwd: Path, timeout: float = 3600, env: dict | None = None) -> dict:
    """One command in `tree` (PYTHONPATH): wall, CPU of the process tree, peak RSS of its largest process."""
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONWARNINGS": "ignore", **(env or {})}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", *argv], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    out = []
    for line in proc.stdout:  # drained as it comes: a full pipe would stall the job
        out.append(line)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {"wall_s": time.perf_counter() - t0, "cpu_s": usage.ru_utime + usage.ru_stime,
            "peak_rss_mb": usage.ru_maxrss / 1024, "rc": proc.returncode, "tail": "".join(out[-3:])[-400:]}


#: the environment of a job that runs as on a first use: no compile cache to read (shared/cache.py)
NO_CACHE = {"VIT_SUITE_CACHE_DIR": "off"}


def jobs_of(rows: list[str], work: Path, backends: list[str]) -> list[tuple]:
    """(row, job name, argv after `python -m`, a JSON file the job writes[, environment])."""
    b16 = work / "b16.safetensors"
    out: list = []
    if "check" in rows:
        out.append(("check", "check default, all targets", ["shared.cli", "check", "--json", "{json}", "--force"],
                    "{json}"))
        out.append(("check", "check default, all targets, first run (no compile cache)",
                    ["shared.cli", "check", "--json", "{json}", "--force"], "{json}", NO_CACHE))
        out += [("check", f"check default, {b} alone", ["shared.cli", "check", "--backends", b, "--json", "{json}",
                                                        "--force"], "{json}") for b in backends]
    if "check-b16" in rows:
        out.append(("check-b16", "check B/16 file, torch+keras+mindspore",
                    ["shared.cli", "check", str(b16), "--backends", "torch,keras,mindspore", "--json", "{json}",
                     "--force"], "{json}"))
    if "convert" in rows:
        for fmt, suffix in (("keras", ".keras"), ("mindspore", ".ckpt"), ("timm", ".safetensors"), ("hf", "")):
            dst = work / f"b16-{fmt}{suffix or '.hf'}"
            out.append(("convert", f"convert B/16 -> {fmt}", ["shared.cli", "convert", str(b16), str(dst), "--to",
                                                              fmt, "--no-verify", "--force"], None))
            out.append(("convert", f"convert {fmt} -> B/16", ["shared.cli", "convert", str(dst),
                                                              str(work / f"back-{fmt}.safetensors"), "--from", fmt,
                                                              "--to", "canonical", "--preset", "B/16", "--no-verify",
                                                              "--force"], None))
    if "sweep" in rows:
        out.append(("sweep", "sweep of tiny models", ["shared.cli", "sweep", str(work / "zoo.toml"), "--out",
                                                       "{sweep_out}"], None))
    if "sweep-large" in rows:
        out.append(("sweep-large", "sweep of 12 tiny models", ["shared.cli", "sweep", str(work / "zoo-large.toml"),
                                                                "--out", "{sweep_out}"], None))
    if "rss" in rows:
        out.append(("rss", "bench B/16 batch 1, torch / keras / mindspore vs timm / keras-hub / mindcv",
                    ["shared.cli", "bench", "--backends", "torch,keras,mindspore", "--preset", "B/16", "--batch", "1",
                     "--iters", "2", "--json", "{json}", "--force"], "{json}"))
    if "ci" in rows:
        out.append(("ci", "CI-sized test set", ["pytest", "-q", "-m", "not slow", "-p", "no:cacheprovider",
                                                str(ROOT / "conformance_tests")], None))
    return out


def figures(row: str, data: dict | None, result: dict) -> dict:
    """What a job's own JSON adds to its run."""
    if row in ("check", "check-b16") and data:
        return {"backends": {b: {"status": d["status"], "seconds": d["seconds"],
                                 "threads": (d.get("meta") or {}).get("threads"),
                                 "child_peak_rss_mb": (d.get("meta") or {}).get("peak_rss_mb")}
                             for b, d in data["backends"].items()}}
    if row == "rss" and data:
        return {"modes": {f"{r['backend']} {r['mode']} b{r['batch']}": {"peak_rss_mb": r["peak_rss_mb"],
                                                                           "images_per_s": r["images_per_s"]}
                          for r in data["rows"]}}
    return {}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", default=",".join(DEFAULT_ROWS), help=f"comma-separated of {DEFAULT_ROWS + ('ci',)}")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--baseline", help="another checkout of the suite: every job runs on it too, interleaved")
    ap.add_argument("--backends", default="torch,keras,keras-jax,keras-torch,mindspore",
                    help="the default check's targets each timed alone")
    ap.add_argument("--sweep-backends", default="torch,mindspore,keras,keras-jax", help="the sweep zoo's backends")
    ap.add_argument("--out", default="jobs.json")
    args = ap.parse_args(argv)
    rows = args.rows.split(",")
    backends = args.backends.split(",")
    trees = {"this": ROOT} | ({"baseline": Path(args.baseline).resolve()} if args.baseline else {})
    work = Path(tempfile.mkdtemp(prefix="vit-suite-jobs-"))
    for name, zoo in (("zoo.toml", SWEEP_ZOO), ("zoo-large.toml", SWEEP_ZOO_LARGE)):
        (work / name).write_text(zoo.format(backends=json.dumps(args.sweep_backends.split(","))))
    if {"check-b16", "convert"} & set(rows):
        subprocess.run([sys.executable, "-m", "shared.cli", "init", "B/16", str(work / "b16.safetensors"),
                        "--force"], check=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True)
    results: dict = {"machine": {"cores": os.cpu_count(), "load_before": os.getloadavg()}, "repeats": args.repeats,
                     "trees": {k: str(v) for k, v in trees.items()}, "jobs": {}}
    plan = jobs_of(rows, work, backends)
    for tree in trees.values():  # as a user's Python would have them: bytecode written once, not per job (an
        import compileall        # environment with PYTHONDONTWRITEBYTECODE, CI's, compiles every module per process)

        for pkg in ("shared", "vit_torch", "vit_keras", "vit_mindspore", "benchmarks"):
            if (tree / pkg).is_dir():
                compileall.compile_dir(tree / pkg, quiet=2)
    # the compile caches (shared/cache.py) of this run only, warmed by one unrecorded default check per tree: the
    # user's second run on; the "first run" row runs without them
    os.environ["VIT_SUITE_CACHE_DIR"] = str(work / "cache")
    if "check" in rows:
        for tree_name, tree in trees.items():
            run(["shared.cli", "check", "--json", str(work / "warm.json"), "--force"], tree,
                ROOT if tree_name == "this" else tree)
    for rep in range(args.repeats):
        for row, name, cmd, json_out, *job_env in plan:
            for tree_name, tree in trees.items():
                j = work / f"out-{tree_name}.json"
                sweep_out = work / f"{row}-{tree_name}-{rep}"
                argv_ = [a.replace("{json}", str(j)).replace("{sweep_out}", str(sweep_out)) for a in cmd]
                if row == "convert" and Path(argv_[3]).is_dir():  # into a new file: see the module docstring
                    shutil.rmtree(argv_[3])
                elif row == "convert":
                    Path(argv_[3]).unlink(missing_ok=True)
                r = run(argv_, tree, ROOT if tree_name == "this" else tree, env=job_env[0] if job_env else None)
                data = None
                if json_out and j.exists():
                    data = json.loads(j.read_text())
                    j.unlink()
                r.update(figures(row, data, r))
                if row.startswith("sweep") and (sweep_out / "sweep.json").exists():
                    s = json.loads((sweep_out / "sweep.json").read_text())
                    r["cells"] = len(s["cells"])
                    r["cells_per_min"] = len(s["cells"]) / r["wall_s"] * 60
                    r["executor"] = s.get("executor")
                entry = results["jobs"].setdefault(name, {"row": row, "argv": cmd}).setdefault(tree_name, [])
                entry.append(r)
                Path(args.out).write_text(json.dumps(results, indent=1, default=str))  # what is done so far
                print(f"[{rep + 1}/{args.repeats}] {tree_name:8s} {name}: {r['wall_s']:.1f} s wall, "
                      f"{r['cpu_s']:.1f} s CPU, peak {r['peak_rss_mb']:.0f} MB, rc {r['rc']}"
                      + (f", {r['cells_per_min']:.1f} cells/min" if "cells_per_min" in r else ""), flush=True)
    for name, entry in results["jobs"].items():
        for tree_name in trees:
            runs = entry[tree_name]
            entry.setdefault("median", {})[tree_name] = {
                k: statistics.median(r[k] for r in runs if k in r)
                for k in ("wall_s", "cpu_s", "peak_rss_mb", "cells_per_min") if any(k in r for r in runs)}
    small, large = (next((e for e in results["jobs"].values() if e["row"] == r), None)
                    for r in ("sweep", "sweep-large"))
    if small and large:  # cells/min once the workers run: the large zoo's extra cells over its extra wall (and CPU)
        n = large[next(iter(trees))][0].get("cells", 0) - small[next(iter(trees))][0].get("cells", 0)
        results["sweep_marginal"] = {t: {
            "cells": n,
            "cells_per_min": n / max(large["median"][t]["wall_s"] - small["median"][t]["wall_s"], 1e-9) * 60,
            "cpu_s_per_cell": (large["median"][t]["cpu_s"] - small["median"][t]["cpu_s"]) / max(n, 1)} for t in trees}
        for t, m in results["sweep_marginal"].items():
            print(f"{t:8s} sweep, marginal: {m['cells_per_min']:.1f} cells/min, {m['cpu_s_per_cell']:.2f} CPU s a cell")
    results["machine"]["load_after"] = os.getloadavg()
    Path(args.out).write_text(json.dumps(results, indent=1, default=str))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
