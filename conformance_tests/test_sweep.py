"""`vit-suite sweep`: a manifest's cells on the local executor and on Ray, resumed after a kill, with a broken
backend, and its HTML report in a headless browser.

The sweeps run as the user runs them, `python -m shared.cli sweep` in a process of its own. Cells here are tiny
models on torch and MindSpore (the quickest backends to start); MindSpore's CPU kernels have no bfloat16, so those
cells are "unsupported", which is a result as well.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from shared import weights as W
from shared.cli import main
from shared.cli.sweep import Cell, Prepared, cell_key, load_manifest
from shared.convert.io import write_any
from shared.errors import EXIT_OK, EXIT_OUT_OF_BOUNDS, EXIT_USAGE
from shared.init import init_weights
from shared.presets import get_preset

BROKEN = ("broken_qk=conformance_tests.broken_backends:SwappedQK,"
          "crashing=conformance_tests.broken_backends:Crashing")
SLOW = "slow=conformance_tests.broken_backends:Slow"
#: the fields of a cell that depend on the run (time, whether it came from the cache, the Ray node), not on the result
RUN_FIELDS = ("seconds", "cached", "node")


def sweep(*args, env=None, timeout=900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "shared.cli", "sweep", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


def said(proc) -> str:
    """What the sweep printed, with the console's line wrapping undone."""
    return " ".join(proc.stdout.split())


def results(out: Path) -> list[dict]:
    return [{k: v for k, v in c.items() if k not in RUN_FIELDS} for c in json.loads((out / "sweep.json").read_text())["cells"]]


@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> Path:
    """Three checkpoints (a canonical file, a timm state dict that needs its preset, a preset's seeded weights)
    x torch, mindspore x float32, bfloat16: 12 cells."""
    d = tmp_path_factory.mktemp("zoo")
    tiny = get_preset("tiny")
    W.save(d / "tiny.safetensors", tiny, init_weights(tiny, 0))
    write_any(str(d / "timm.safetensors"), "timm", tiny, init_weights(tiny, 1))
    (d / "zoo.toml").write_text("""
[sweep]
backends = ["torch", "mindspore"]
dtypes = ["float32", "bfloat16"]
batches = [2]

[[checkpoints]]
path = "tiny.safetensors"

[[checkpoints]]
name = "timm-tiny"
path = "timm.safetensors"
preset = "tiny"

[[checkpoints]]
preset = "tiny"
seed = 5
image_sizes = ["48x48"]
""")
    return d


@pytest.fixture(scope="module")
def local_run(zoo) -> Path:
    out = zoo / "local.sweep"
    proc = sweep(zoo / "zoo.toml", "--out", out)
    assert proc.returncode == EXIT_OK, proc.stdout + proc.stderr
    return out


def test_a_local_sweep_runs_every_cell_and_writes_three_reports(local_run, zoo):
    report = json.loads((local_run / "sweep.json").read_text())
    cells = report["cells"]
    assert len(cells) == 12
    assert {(c["checkpoint"], c["backend"], c["dtype"]) for c in cells} == {
        (n, b, d) for n in ("tiny", "timm-tiny", "tiny-seed5") for b in ("torch", "mindspore")
        for d in ("float32", "bfloat16")}
    for c in cells:
        expect = "unsupported" if (c["backend"], c["dtype"]) == ("mindspore", "bfloat16") else "pass"
        assert c["status"] == expect, c
        if expect == "pass":  # every stage of the tiny model, each under its bound
            assert [s["stage"] for s in c["stages"]][0] == "patch_embed" and c["stages"][-1]["stage"] == "logits"
            assert 0 < c["worst_ratio"] <= 1 and all(s["rel_l2"] <= s["bound"] for s in c["stages"])
    assert {tuple(c["image_size"]) for c in cells if c["checkpoint"] == "tiny-seed5"} == {(48, 48)}
    assert report["summary"] == {"cells": 12, "pass": 9, "FAIL": 0, "non-finite": 0, "error": 0,
                                 "unsupported": 3, "passed": True}
    # the timm file was converted with its preset, once, into the sweep's own cache
    assert len(list((local_run / "weights").glob("*.safetensors"))) == 2  # the timm file's and the preset's
    suite = ET.parse(local_run / "junit.xml").getroot().find("testsuite")
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors"), suite.get("skipped")) == ("12", "0", "0", "3")
    assert (local_run / "sweep.html").read_text().count("<td class='cell") == 12


def test_a_cell_agrees_with_the_reference_computed_here(local_run, zoo):
    """The stored per-stage error is the check's: recompute one cell's logits error from torch directly."""
    import torch

    from shared import reference
    from shared.init import random_images
    from vit_torch.model import build_model

    cell = next(c for c in json.loads((local_run / "sweep.json").read_text())["cells"]
                if (c["checkpoint"], c["backend"], c["dtype"]) == ("tiny", "torch", "float32"))
    cfg, state = W.load(zoo / "tiny.safetensors")
    x = random_images(cfg, cell["batch"], cell["seed"], cell["input_kind"])
    ref = reference.forward(cfg, state, x)["logits"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the cell's (--threads 1): a thread count fixes torch's reduction order
    try:
        with torch.no_grad():
            got = build_model(cfg, state).eval()(torch.from_numpy(x)).numpy()
    finally:
        torch.set_num_threads(threads)
    rel = float(np.linalg.norm(got.astype(np.float64) - ref) / np.linalg.norm(ref))
    logits = next(s for s in cell["stages"] if s["stage"] == "logits")
    assert logits["rel_l2"] == pytest.approx(rel, rel=0.05, abs=1e-9)


@pytest.fixture(scope="module")
def ray_cluster():
    """A Ray cluster of three nodes on this machine (`ray.cluster_utils.Cluster`), one CPU each, each with a custom
    resource naming it and a temp folder (its workers' TMPDIR: the node-local disk the sweep's node caches go to):
    node a has its own, as a node on a machine of its own; b and c share one, as nodes on one machine do. Ray's own
    files go to a private folder, so that no ray.init() elsewhere on this machine finds the cluster, and Ray's
    memory monitor is off: it kills workers when the machine's memory is nearly full, which on a shared test machine
    is other jobs' doing (the sweep would report those cells as lost, correctly, and the tests would fail). Yields
    (cluster, {name: node}); a node's `tmp` is its temp folder."""
    from ray.cluster_utils import Cluster

    # short, so under /tmp itself (not the xdist worker's temp folder): Ray's socket paths must fit in 107 bytes
    root = Path(tempfile.mkdtemp(prefix="vsr-", dir="/tmp" if os.path.isdir("/tmp") else None))
    env = {"RAY_TMPDIR": str(root), "RAY_memory_monitor_refresh_ms": "0"}  # also for the sweeps the tests start
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    cluster = Cluster()
    nodes = {}
    try:
        for name, disk in (("a", "a"), ("b", "bc"), ("c", "bc")):
            nodes[name] = _add_node(cluster, root, name, disk)
        cluster.wait_for_nodes()
        yield cluster, nodes
    finally:
        cluster.shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(root, ignore_errors=True)


def _add_node(cluster, root: Path, name: str, disk: str):
    tmp = root / f"disk-{disk}"
    tmp.mkdir(exist_ok=True)
    node = cluster.add_node(num_cpus=1, resources={f"node_{name}": 1}, env_vars={"TMPDIR": str(tmp)},
                            include_dashboard=False)
    node.tmp, node.name = tmp, name
    return node


def _caches(node) -> list[Path]:
    return list(node.tmp.glob("vit-suite-sweep-*"))


def test_ray_on_three_nodes_gives_the_local_results_and_moves_each_checkpoint_once_per_node(local_run, zoo,
                                                                                             ray_cluster):
    cluster, nodes = ray_cluster
    out = zoo / "ray.sweep"
    proc = sweep(zoo / "zoo.toml", "--out", out, "--executor", "ray", "--address", cluster.address)
    assert proc.returncode == EXIT_OK, proc.stdout + proc.stderr
    assert results(out) == results(local_run)  # every status, stage error and bound, bit for bit
    report = json.loads((out / "sweep.json").read_text())
    by_id = {n.node_id: n.name for n in nodes.values()}
    ran = {}  # node name -> the checkpoints of the cells it ran
    for c in report["cells"]:
        ran.setdefault(by_id[c["node"]], []).append(c["checkpoint"])  # every cell ran on one of the cluster's nodes
    assert sorted(ran) == ["a", "b", "c"], ran  # spread over all three (one CPU each, twelve cells queued)
    executor = report["executor"]
    assert executor["name"] == "ray" and executor["nodes"] == 3 and executor["cells_lost"] == 0
    # each node received each checkpoint it ran cells of once, however many cells of it ran there (b and c too,
    # though they share a disk)
    assert {by_id[n]: (t["cells"], t["files"]) for n, t in executor["weight_transfers"].items()} == {
        name: (len(cks), len(set(cks))) for name, cks in ran.items()}
    assert sum(len(cks) for cks in ran.values()) == 12 > sum(len(set(cks)) for cks in ran.values())
    for node in nodes.values():  # every node's cache removed
        assert not _caches(node), node.name


@pytest.mark.slow  # ~25 CPU-seconds: a fourth node, seven cells, two sweeps
def test_a_node_killed_mid_sweep_loses_only_its_cells_in_flight_and_the_rerun_completes_them(zoo, tmp_path,
                                                                                              ray_cluster):
    """A fourth node is killed (its raylet and workers, `Cluster.remove_node`) as soon as its first cell has
    started (its node cache appears): that cell is lost, reported as an error and not stored; every other cell's
    result stands; the same command then runs the lost cell only."""
    cluster, nodes = ray_cluster
    shutil.copy(zoo / "tiny.safetensors", tmp_path)
    manifest = tmp_path / "k.toml"
    manifest.write_text('[sweep]\nbackends = ["torch"]\ndtypes = ["float32", "float16"]\nbatches = [1, 2, 3]\n'
                        '[[checkpoints]]\npath = "tiny.safetensors"\n')
    out = tmp_path / "k.sweep"
    doomed = _add_node(cluster, Path(os.environ["RAY_TMPDIR"]), "d", "d")
    args = [sys.executable, "-m", "shared.cli", "sweep", str(manifest), "--executor", "ray", "--address",
            cluster.address]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while not list(doomed.tmp.glob("vit-suite-sweep-*/*.safetensors")) and time.time() < deadline \
            and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "the sweep ended before a cell started on the fourth node"
    cluster.remove_node(doomed, allow_graceful=False)
    said_first, _ = proc.communicate(timeout=600)
    assert proc.returncode == EXIT_OUT_OF_BOUNDS, said_first
    report = json.loads((out / "sweep.json").read_text())
    lost = [c for c in report["cells"] if c["status"] == "error"]
    assert len(lost) == 1 and lost[0]["error"].startswith("lost: ") and report["executor"]["cells_lost"] == 1
    stood = [c for c in report["cells"] if c["status"] != "error"]
    assert len(stood) == 5 and all(c["status"] == "pass" and 0 < c["worst_ratio"] <= 1 for c in stood)
    assert doomed.node_id not in {c["node"] for c in stood}  # its one cell never finished
    stored = {p.name: p.stat().st_mtime_ns for p in (out / "cells").glob("*.json")}
    assert sorted(stored) == sorted(f"{c['key']}.json" for c in stood)  # the lost cell left nothing behind
    # the dead node's cache is still on its own disk (node-local: no one could remove it); the live nodes' are gone
    sha = hashlib.sha256((tmp_path / "tiny.safetensors").read_bytes()).hexdigest()
    assert [p.name for p in doomed.tmp.glob("vit-suite-sweep-*/*.safetensors")] == [f"{sha}.safetensors"]
    assert not any(_caches(n) for n in nodes.values())
    again = sweep(*args[4:])
    assert again.returncode == EXIT_OK, again.stdout + again.stderr
    assert "5 already done" in said(again)
    assert {p.name: p.stat().st_mtime_ns for p in (out / "cells").glob("*.json") if p.name in stored} == stored
    report = json.loads((out / "sweep.json").read_text())
    assert [c["status"] for c in report["cells"]] == ["pass"] * 6
    assert [c["key"] for c in report["cells"] if not c["cached"]] == [lost[0]["key"]]


def test_ray_with_a_shared_file_system_reads_the_files_in_place(zoo, tmp_path, ray_cluster):
    manifest = tmp_path / "s.toml"
    manifest.write_text(f'[sweep]\nbackends = ["torch"]\n[[checkpoints]]\npath = "{zoo / "tiny.safetensors"}"\n')
    cluster, _ = ray_cluster
    # without --address the sweep starts a Ray of its own, also where RAY_ADDRESS names a running cluster
    proc = sweep(manifest, "--executor", "ray", "--shared-fs", env={"RAY_ADDRESS": cluster.address})
    assert proc.returncode == EXIT_OK, proc.stdout + proc.stderr
    report = json.loads((tmp_path / "s.sweep" / "sweep.json").read_text())
    assert [c["status"] for c in report["cells"]] == ["pass"]
    assert [t["files"] for t in report["executor"]["weight_transfers"].values()] == [0]
    assert report["cells"][0]["node"] not in {n.node_id for n in cluster.list_all_nodes()}


def test_a_rerun_does_nothing_and_the_cache_key_follows_what_the_result_depends_on(local_run, zoo):
    before = {p.name: p.stat().st_mtime_ns for p in (local_run / "cells").iterdir()}
    proc = sweep(zoo / "zoo.toml", "--out", local_run)
    assert proc.returncode == EXIT_OK and "12 already done" in said(proc)
    assert {p.name: p.stat().st_mtime_ns for p in (local_run / "cells").iterdir()} == before
    assert all(c["cached"] for c in json.loads((local_run / "sweep.json").read_text())["cells"])
    # the key: the same cell gives the same key; the config, the framework version, the dtype and the inputs change it
    cfg = get_preset("tiny")
    ck = load_manifest(zoo / "zoo.toml")[0]
    p = Prepared(ck, zoo / "tiny.safetensors", cfg, "sha256:ab", "ab")
    cell = Cell("tiny", "torch", "forward", "float32", None, 2, 0, "normal")
    key = cell_key(cell, p, {"torch": "2.15.0"})
    assert key == cell_key(cell, p, {"torch": "2.15.0"})
    others = [cell_key(cell, Prepared(ck, p.weights, cfg.replace(layer_norm_eps=1e-5), "sha256:ab", "ab"),
                       {"torch": "2.15.0"}),
              cell_key(cell, Prepared(ck, p.weights, cfg, "sha256:cd", "cd"), {"torch": "2.15.0"}),
              cell_key(cell, p, {"torch": "2.16.0"}),
              cell_key(Cell("tiny", "torch", "forward", "bfloat16", None, 2, 0, "normal"), p, {"torch": "2.15.0"}),
              cell_key(Cell("tiny", "torch", "forward", "float32", (48, 48), 2, 0, "normal"), p, {"torch": "2.15.0"}),
              cell_key(Cell("tiny", "torch", "forward", "float32", None, 2, 1, "normal"), p, {"torch": "2.15.0"})]
    assert len({key, *others}) == 7


def test_a_killed_sweep_resumes_without_redoing_its_done_cells(zoo, tmp_path):
    manifest = tmp_path / "m.toml"
    shutil.copy(zoo / "tiny.safetensors", tmp_path)
    manifest.write_text('[sweep]\nbackends = ["slow"]\ndtypes = ["float32", "float16"]\nbatches = [1, 2, 3]\n'
                        '[[checkpoints]]\npath = "tiny.safetensors"\n')
    out = tmp_path / "m.sweep"
    env = {"VIT_SUITE_BACKENDS": SLOW}  # torch, a second per forward: killed while a cell is in flight
    proc = subprocess.Popen([sys.executable, "-m", "shared.cli", "sweep", str(manifest), "--jobs", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, **env})
    deadline = time.time() + 300
    while len(list((out / "cells").glob("*.json"))) < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.kill()
    proc.wait()
    done = {p.name: p.stat().st_mtime_ns for p in (out / "cells").glob("*.json")}
    assert 2 <= len(done) < 6, "the sweep should have been killed part-way"
    resumed = sweep(manifest, "--jobs", "1", env=env)
    assert resumed.returncode == EXIT_OK, resumed.stdout + resumed.stderr
    assert f"{len(done)} already done" in said(resumed)
    assert {n: m for n, m in ((p.name, p.stat().st_mtime_ns) for p in (out / "cells").glob("*.json"))
            if n in done} == done  # not re-run
    report = json.loads((out / "sweep.json").read_text())
    assert [c["status"] for c in report["cells"]] == ["pass"] * 6
    assert sum(c["cached"] for c in report["cells"]) == len(done)
    # the killed run's work directories (its cell in flight) were removed by the next run
    assert not list(Path(tempfile.gettempdir()).glob(f"vit-suite-*-{proc.pid}-*"))


def test_a_broken_backend_fails_its_cells_and_leaves_the_others_alone(zoo, tmp_path):
    manifest = tmp_path / "b.toml"
    manifest.write_text('[sweep]\nbackends = ["torch", "broken_qk", "crashing"]\n'
                        f'[[checkpoints]]\npath = "{zoo / "tiny.safetensors"}"\n')
    env = {"VIT_SUITE_BACKENDS": BROKEN}
    proc = sweep(manifest, env=env)
    assert proc.returncode == EXIT_OUT_OF_BOUNDS, proc.stdout + proc.stderr
    out = tmp_path / "b.sweep"
    by = {c["backend"]: c for c in json.loads((out / "sweep.json").read_text())["cells"]}
    assert by["torch"]["status"] == "pass"
    assert by["broken_qk"]["status"] == "FAIL" and by["broken_qk"]["first_failure"] == "block_1"
    assert by["crashing"]["status"] == "error" and "deliberately" in by["crashing"]["error"]
    suite = ET.parse(out / "junit.xml").getroot().find("testsuite")
    cases = {c.get("name").split()[0]: c for c in suite.iter("testcase")}
    assert "block_1" in cases["broken_qk"].find("failure").get("message")
    assert cases["crashing"].find("error") is not None and not list(cases["torch"])
    # --rerun-failed runs the two failures again, and only them
    again = sweep(manifest, "--rerun-failed", env=env)
    assert again.returncode == EXIT_OUT_OF_BOUNDS and "1 already done" in said(again)
    assert sum(not c["cached"] for c in json.loads((out / "sweep.json").read_text())["cells"]) == 2


@pytest.mark.parametrize("text,named", [
    ('[sweep]\ndtypes = ["float64"]\n[[checkpoints]]\npreset = "tiny"\n', "dtypes"),
    ('[sweep]\nbackends = ["nope"]\n[[checkpoints]]\npreset = "tiny"\n', "backends"),
    ('[sweep]\nbatch = 2\n[[checkpoints]]\npreset = "tiny"\n', "batch"),
    ('[[checkpoints]]\npath = "missing.safetensors"\n', "does not exist"),
    ('[[checkpoints]]\npreset = "tiny"\n[[checkpoints]]\npreset = "tiny"\n', "used twice"),
    ('[[checkpoints]]\npreset = "tiny"\nimage_sizes = ["big"]\n', "image_sizes"),
    ('[[checkpoints]]\npreset = "tiny"\nbatches = [0]\n', "batches"),
    ('[[checkpoints]]\nname = "x"\n', "path"),
    ("[sweep\n", "not valid TOML"),
])
def test_a_bad_manifest_is_bad_usage_naming_the_key(tmp_path, capsys, text, named):
    (tmp_path / "m.toml").write_text(text)
    assert main(["sweep", str(tmp_path / "m.toml")]) == EXIT_USAGE
    assert named in capsys.readouterr().err
    assert not (tmp_path / "m.sweep").exists() or not list((tmp_path / "m.sweep" / "cells").iterdir())


def test_yaml_manifests_and_output_directories(tmp_path, capsys):
    (tmp_path / "m.yaml").write_text("sweep:\n  backends: [torch]\ncheckpoints:\n  - preset: tiny\n    seed: 2\n")
    assert [c.name for c in load_manifest(tmp_path / "m.yaml")] == ["tiny-seed2"]
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    assert main(["sweep", str(tmp_path / "m.yaml"), "--out", str(tmp_path / "mine")]) == EXIT_USAGE
    assert "no sweep wrote" in capsys.readouterr().err and (tmp_path / "mine" / "notes.txt").read_text() == "keep"
    assert main(["sweep", str(tmp_path / "m.yaml"), "--address", "h:1"]) == EXIT_USAGE
    assert main(["sweep", str(tmp_path / "m.yaml"), "--shared-fs"]) == EXIT_USAGE


def _chromium() -> str | None:
    return os.environ.get("VIT_SUITE_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


def test_the_html_report_opens_in_a_headless_browser_and_a_click_shows_the_plot(local_run, tmp_path):
    browser = _chromium()
    if browser is None:
        if os.environ.get("VIT_SUITE_REQUIRE_BROWSER"):
            pytest.fail("no headless Chromium (VIT_SUITE_REQUIRE_BROWSER is set): apt-get install chromium")
        pytest.skip("no headless Chromium on this machine (apt-get install chromium; CI installs it)")
    from playwright.sync_api import sync_playwright

    errors = []
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=browser, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"])
        page = b.new_page(viewport={"width": 1100, "height": 700})
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("request", lambda r: errors.append(f"fetched {r.url}") if not r.url.startswith("file:") else None)
        page.goto((local_run / "sweep.html").as_uri())
        assert page.locator("td.cell").count() == 12
        page.screenshot(path=str(tmp_path / "matrix.png"), full_page=True)
        assert not page.is_visible("#modal")
        page.locator("td.cell.pass").first.click()
        assert page.is_visible("#modal svg.plot")
        assert page.locator("#modal svg.plot circle").count() == 7  # the tiny model's seven stages
        page.screenshot(path=str(tmp_path / "plot.png"))
        page.keyboard.press("Escape")
        assert not page.is_visible("#modal")
        b.close()
    assert errors == []
    for shot in ("matrix.png", "plot.png"):
        from PIL import Image

        img = np.asarray(Image.open(tmp_path / shot).convert("L"))
        assert img.std() > 10, f"{shot} is blank"


def test_grad_cells_judge_the_gradients_and_steps_against_the_oracle(zoo, tmp_path):
    manifest = tmp_path / "g.toml"
    manifest.write_text(f'[sweep]\nbackends = ["torch"]\ngrad = true\n[[checkpoints]]\npath = "{zoo / "tiny.safetensors"}"\n')
    proc = sweep(manifest)
    assert proc.returncode == EXIT_OK, proc.stdout + proc.stderr
    cells = {c["kind"]: c for c in json.loads((tmp_path / "g.sweep" / "sweep.json").read_text())["cells"]}
    g = cells["grad"]
    assert g["status"] == "pass" and g["dtype"] == "float32"
    names = [s["stage"] for s in g["stages"]]
    cfg = get_preset("tiny")
    assert names[0] == "loss" and sum(n.startswith("grad ") for n in names) == len(W.expected_shapes(cfg))
    assert all(0 <= s["rel_l2"] <= s["bound"] for s in g["stages"])


def test_against_cells_prove_each_import_against_its_source_library(zoo, tmp_path):
    """`against = true`: a timm file converted under its timm architecture's name is proven against timm's own
    output; one converted under a suite preset names no timm architecture: 'unsupported' (not verified)."""
    import timm
    from safetensors.torch import save_file

    m = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10)
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(tmp_path / "vt.safetensors"))
    manifest = tmp_path / "a.toml"
    manifest.write_text(f'[sweep]\nbackends = ["torch"]\nagainst = true\n'
                        f'[[checkpoints]]\npath = "vt.safetensors"\npreset = "vit_tiny_patch16_224"\n'
                        f'[[checkpoints]]\nname = "suite-preset"\npath = "{zoo / "timm.safetensors"}"\npreset = "tiny"\n')
    proc = sweep(manifest)
    assert proc.returncode == EXIT_OK, proc.stdout + proc.stderr
    cells = {(c["checkpoint"], c["kind"]): c for c in json.loads((tmp_path / "a.sweep" / "sweep.json").read_text())["cells"]}
    proof = cells[("vt", "against")]
    assert proof["backend"] == "timm" and proof["status"] == "pass"
    assert proof["stages"][0]["stage"] == "logits" and 0 < proof["stages"][0]["rel_l2"] <= proof["stages"][0]["bound"]
    assert cells[("vt", "forward")]["status"] == "pass"
    unproven = cells[("suite-preset", "against")]
    assert unproven["status"] == "unsupported" and "timm architecture" in unproven["error"]
