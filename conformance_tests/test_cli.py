"""The vit-suite command line end to end: check (a process per backend), convert, forward, reference, inspect."""
from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys

import numpy as np
import pytest

from shared import errors as E
from shared import reference, tolerances
from shared import fileio as F
from shared import weights as W
from shared.cli import main
from shared.convert.io import read_any, write_any
from shared.init import init_weights, random_images
from shared.presets import get_preset

from . import PYTEST_CHILD

# the default check: every installed target, the deployment runtimes included
BUILTIN = ["torch", "keras", "keras-jax", "keras-torch", "mindspore", "keras-openvino", "onnxruntime", "openvino"]


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("w") / "tiny.safetensors"
    cfg = get_preset("tiny")
    W.save(path, cfg, init_weights(cfg, 0))
    return path


def test_init_and_inspect_json(tmp_path, capsys):
    out = tmp_path / "t2t.safetensors"
    assert main(["init", "seed_t2t_walkthrough", str(out), "--seed", "3"]) == 0
    capsys.readouterr()
    assert main(["inspect", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["parameters"] == W.parameter_count(get_preset("seed_t2t_walkthrough"))
    assert info["numerics"]["class_token"] == "zeros" and info["numerics"]["attn_value_skip"] is True


def test_usage_errors_exit_2(tmp_path, tiny_file):
    assert main(["init", "no_such_preset", str(tmp_path / "x.safetensors")]) == E.EXIT_USAGE
    assert main(["check", str(tiny_file), "--backends", "nope"]) == E.EXIT_USAGE
    assert main(["check", str(tiny_file), "--backends", "torch,keras,torch"]) == E.EXIT_USAGE
    assert main(["check", str(tiny_file), "--image-size", "banana"]) == E.EXIT_USAGE
    assert main(["frobnicate"]) == E.EXIT_USAGE


def test_reference_command_writes_every_stage(tmp_path, tiny_file):
    cfg, state = W.load(tiny_file)
    x = random_images(cfg, 2, 9)
    np.save(tmp_path / "x.npy", x)
    assert main(["reference", str(tiny_file), "--input", str(tmp_path / "x.npy"), "--output", str(tmp_path / "y.npz")]) == 0
    want = reference.forward(cfg, state, x)
    with np.load(tmp_path / "y.npz") as z:
        for s in cfg.stage_names():
            np.testing.assert_allclose(z[s], want[s].astype(np.float32), rtol=0, atol=0)


@pytest.mark.parametrize("backend", BUILTIN)
def test_forward_command_in_a_fresh_process(tmp_path, tiny_file, backend):
    """`vit-suite forward` in a child process: what check does, and what a user scripts across machines."""
    cfg, state = W.load(tiny_file)
    x = random_images(cfg, 3, 4)
    np.save(tmp_path / "x.npy", x)
    r = subprocess.run([sys.executable, "-m", "shared.cli", "forward", str(tiny_file), "--backend", backend,
                        "--input", str(tmp_path / "x.npy"), "--output", str(tmp_path / "y.npz"), "--stages"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    with np.load(tmp_path / "y.npz") as z:
        out = {k: z[k] for k in z.files if not k.startswith("__")}
    v = tolerances.judge(cfg, "float32", out, reference.forward(cfg, state, x))
    assert v.passed, v.summary()


def test_check_all_backends_pass(tmp_path, tiny_file):
    report = tmp_path / "r.html"
    code = main(["check", str(tiny_file), "--json", str(tmp_path / "c.json"), "--report", str(report), "--stages"])
    res = json.loads((tmp_path / "c.json").read_text())
    assert code == 0, json.dumps({b: (d["status"], d.get("error")) for b, d in res["backends"].items()})
    assert set(res["backends"]) == set(BUILTIN)
    for b, d in res["backends"].items():
        assert d["status"] == "pass" and d["first_failure"] is None
        assert len(d["stages"]) == len(get_preset("tiny").stage_names())
    assert len(res["pairs"]) == 28 and all(p["passed"] for p in res["pairs"])
    keras_backends = {b: res["backends"][b]["meta"]["versions"]["keras_backend"] for b in BUILTIN if "keras" in b}
    assert keras_backends == {"keras": "tensorflow", "keras-jax": "jax", "keras-torch": "torch",
                              "keras-openvino": "openvino"}
    page = report.read_text()
    assert page.count("data:image/png;base64,") >= 3 and "Tolerance policy" in page


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_check_low_precision(tmp_path, tiny_file, dtype):
    code = main(["check", str(tiny_file), "--dtype", dtype, "--json", str(tmp_path / "c.json")])
    res = json.loads((tmp_path / "c.json").read_text())
    assert code == 0, json.dumps({b: (d["status"], d.get("error")) for b, d in res["backends"].items()})
    assert all(d["status"] in ("pass", "unsupported") for d in res["backends"].values())


@pytest.mark.parametrize("broken,stage", [("broken_qk", "block_1"), ("broken_gelu", "block_0")])
def test_check_catches_and_locates_a_broken_backend(tmp_path, tiny_file, monkeypatch, broken, stage):
    monkeypatch.setenv("VIT_SUITE_BACKENDS", "broken_qk=conformance_tests.broken_backends:SwappedQK,"
                                             "broken_gelu=conformance_tests.broken_backends:TanhGelu")
    code = main(["check", str(tiny_file), "--backends", f"torch,{broken}", "--json", str(tmp_path / "c.json")])
    assert code == E.EXIT_OUT_OF_BOUNDS
    res = json.loads((tmp_path / "c.json").read_text())
    assert res["backends"]["torch"]["status"] == "pass"
    assert res["backends"][broken]["status"] == "FAIL"
    assert res["backends"][broken]["first_failure"] == stage
    assert res["pairs"][0]["first_failure"] == stage


def test_explain_prints_the_policy(capsys):
    assert main(["check", "--explain", "--preset", "B/16"]) == 0
    out = capsys.readouterr().out
    assert "F32_SAFETY" in out and "vit_base_patch16_224" in out


# ------------------------------------------------------------------------------------------- convert
FORMATS = ["canonical", "timm", "hf", "torch", "keras", "keras-h5", "mindspore"]
SUFFIX = {"canonical": ".safetensors", "timm": ".safetensors", "hf": "", "torch": ".pt", "keras": ".keras",
          "keras-h5": ".weights.h5", "mindspore": ".ckpt"}


@pytest.mark.parametrize("src", FORMATS)
@pytest.mark.parametrize("dst", FORMATS)
def test_convert_between_every_pair_is_bit_exact(tmp_path, src, dst):
    if src == dst:
        return
    cfg = get_preset("tiny")
    state = init_weights(cfg, 11)
    a = tmp_path / f"a{SUFFIX[src]}"
    b = tmp_path / f"b{SUFFIX[dst]}"
    write_any(str(a), src, cfg, state)
    assert main(["convert", str(a), str(b), "--to", dst, "--preset", "tiny"]) == 0
    cfg2, back = read_any(str(b), None, "tiny", None)  # the format is detected from the bytes
    assert set(back) == set(state)
    assert all(np.array_equal(back[k], state[k]) for k in state)
    assert cfg2.stage_names() == cfg.stage_names()


#: run in a fresh process: every conversion to and from the Keras and MindSpore files, then the frameworks it imported
_NO_FRAMEWORK = """
import sys
from shared.cli import main
src, d = sys.argv[1], sys.argv[2]
for name, back in (("m.keras", []), ("m.weights.h5", ["--preset", "tiny"]), ("m.ckpt", [])):
    assert main(["convert", src, f"{d}/{name}"]) == 0
    assert main(["convert", f"{d}/{name}", f"{d}/{name}.safetensors", *back]) == 0
print(sorted(m for m in ("tensorflow", "keras", "mindspore", "torch", "jax") if m in sys.modules))
"""


def test_convert_to_and_from_keras_and_mindspore_files_imports_no_framework(tmp_path, tiny_file):
    """`.keras`, `.weights.h5` and `.ckpt` are written and read as data: neither Keras (nor TensorFlow) nor MindSpore
    (nor torch) is imported, and the round trip is bit-exact."""
    r = subprocess.run([sys.executable, "-c", _NO_FRAMEWORK, str(tiny_file), str(tmp_path)], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip().splitlines()[-1] == "[]", r.stdout[-2000:] + r.stderr[-2000:]
    cfg, state = W.load(tiny_file)
    for name in ("m.keras", "m.weights.h5", "m.ckpt"):
        cfg2, back = W.load(tmp_path / f"{name}.safetensors")
        assert cfg2 == cfg and set(back) == set(state) and all(np.array_equal(back[k], state[k]) for k in state)


def test_convert_detects_format_from_content_not_extension(tmp_path):
    cfg = get_preset("tiny")
    state = init_weights(cfg, 2)
    disguised = tmp_path / "really_a_keras_file.ckpt"
    write_any(str(tmp_path / "m.keras"), "keras", cfg, state)
    (tmp_path / "m.keras").rename(disguised)
    from shared.convert.formats import detect_format

    assert detect_format(disguised) == "keras"
    assert main(["convert", str(disguised), str(tmp_path / "out.safetensors")]) == 0
    assert all(np.array_equal(W.load(tmp_path / "out.safetensors")[1][k], state[k]) for k in state)


def test_failed_convert_leaves_no_output(tmp_path):
    cfg = get_preset("tiny_t2t")  # value skip + zero token: timm cannot express it
    src = W.save(tmp_path / "t2t.safetensors", cfg, init_weights(cfg, 0))
    for dst, fmt in ((tmp_path / "out.safetensors", "timm"), (tmp_path / "hfdir", "hf")):
        assert main(["convert", str(src), str(dst), "--to", fmt]) != 0
        assert not dst.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t2t.safetensors"]


def test_convert_refuses_a_malicious_pickle(tmp_path):
    import pickle

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (eval, (f"open({str(marker)!r}, 'w').write('x')",))

    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"patch_embed.proj.weight": Evil()}, f, protocol=2)
    code = main(["convert", str(path), str(tmp_path / "out.safetensors"), "--preset", "tiny"])
    assert code in (E.EXIT_INVALID_FILE, E.EXIT_MISMATCH)
    assert not marker.exists() and not (tmp_path / "out.safetensors").exists()


def test_convert_timm_checkpoint_to_every_native_file_and_back(tmp_path):
    """A real timm model's weights (random init, no download) through every backend's native file."""
    import timm
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    m = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, img_size=64).eval()
    src = tmp_path / "timm.safetensors"
    save_file(m.state_dict(), str(src))
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    with torch.no_grad():
        want = m(torch.from_numpy(x)).numpy()
    for fmt in ("torch", "keras", "mindspore", "hf"):
        native = tmp_path / f"m{SUFFIX[fmt]}"
        # a 64 px table under a 224 px preset: the size is stated (a row count alone is refused, not guessed)
        assert main(["convert", str(src), str(native), "--preset", "Ti/16", "--image-size", "64x64", "--to", fmt]) == 0, fmt
        assert main(["convert", str(native), str(tmp_path / f"{fmt}.safetensors"), "--preset", "Ti/16",
                     "--image-size", "64x64"]) == 0, fmt
        cfg, state = W.load(tmp_path / f"{fmt}.safetensors")
        got = reference.forward(cfg, state, x)["logits"]
        assert tolerances.rel_l2(want, got) <= tolerances.fp32_bound(cfg, "logits"), fmt


def test_convert_hf_directory_both_ways_against_transformers(tmp_path):
    """A real transformers model (random init, no download) -> convert -> reference; and back into transformers."""
    import transformers
    import torch

    torch.manual_seed(0)
    hf_cfg = transformers.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                                    image_size=[16, 24], patch_size=4, num_channels=3, num_labels=5,
                                    layer_norm_eps=1e-12)
    model = transformers.ViTForImageClassification(hf_cfg).eval()
    model.save_pretrained(tmp_path / "hf_in", safe_serialization=True)
    x = np.random.default_rng(0).standard_normal((2, 3, 16, 24)).astype(np.float32)
    with torch.no_grad():
        want = model(pixel_values=torch.from_numpy(x)).logits.numpy()
    assert main(["convert", str(tmp_path / "hf_in"), str(tmp_path / "c.safetensors")]) == 0
    cfg, state = W.load(tmp_path / "c.safetensors")
    assert cfg.layer_norm_eps == 1e-12 and cfg.image_size == (16, 24)
    got = reference.forward(cfg, state, x)["logits"]
    assert tolerances.rel_l2(want, got) <= tolerances.fp32_bound(cfg, "logits")
    assert main(["convert", str(tmp_path / "c.safetensors"), str(tmp_path / "hf_out"), "--to", "hf"]) == 0
    again = transformers.ViTForImageClassification.from_pretrained(tmp_path / "hf_out").eval()
    with torch.no_grad():
        back = again(pixel_values=torch.from_numpy(x)).logits.numpy()
    np.testing.assert_array_equal(back, want)


# ------------------------------------------------------------------------------- third-party backends
ACME = '''"""A backend written outside the repo, registered by entry point: it gets every command."""
from vit_torch.backend import TorchBackend


class AcmeBackend(TorchBackend):
    """vit_torch under another name, with a benchmark mode of its own."""

    name = "acme"

    def bench_modes(self):
        return {"eager": "acme: the plain forward"}


class BareBackend(TorchBackend):
    """Forward only: no training or benchmark functions."""

    name = "bare"
    train_module = bench_module = None
'''


@pytest.fixture(scope="module")
def entry_point_env(tmp_path_factory):
    """A site directory outside the repo holding the backend module and its distribution's entry points."""
    import os

    site = tmp_path_factory.mktemp("site")
    (site / "acme_vit.py").write_text(ACME)
    info = site / "acme_vit-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-vit\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[vit_suite.backends]\nacme = acme_vit:AcmeBackend\n"
                                           "bare = acme_vit:BareBackend\n")
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]))


def _cli_in(env, *args):
    return subprocess.run([sys.executable, "-m", "shared.cli", *args], capture_output=True, text=True, env=env,
                          timeout=600)


def test_an_entry_point_backend_gets_every_command(tmp_path, tiny_file, entry_point_env):
    """check, check --grad and bench reach a third-party backend through the registry alone; hooks it does not
    implement are reported as unsupported, not as failures."""
    r = _cli_in(entry_point_env, "check", str(tiny_file), "--backends", "torch,acme", "--json", str(tmp_path / "c.json"))
    assert r.returncode == 0, r.stdout + r.stderr
    res = json.loads((tmp_path / "c.json").read_text())
    assert res["backends"]["acme"]["status"] == "pass" and res["pairs"][0]["passed"]

    r = _cli_in(entry_point_env, "check", "--grad", "--preset", "tiny", "--backends", "acme,bare", "--batch", "4",
                "--json", str(tmp_path / "g.json"))
    assert r.returncode == 0, r.stdout + r.stderr
    res = json.loads((tmp_path / "g.json").read_text())
    assert res["passed"] and res["backends"]["acme"]["status"] == "pass"
    assert res["backends"]["bare"]["status"] == "unsupported" and "loss_and_grads" in res["backends"]["bare"]["error"]

    r = _cli_in(entry_point_env, "bench", "--preset", "tiny", "--backends", "acme,bare", "--batch", "2", "--iters", "2",
                "--json", str(tmp_path / "b.json"))
    assert r.returncode == 0, r.stdout + r.stderr
    res = json.loads((tmp_path / "b.json").read_text())
    assert [(row["backend"], row["mode"], row["batch"]) for row in res["rows"]] == [("acme", "eager", 2)]
    assert res["rows"][0]["images_per_s"] > 0 and res["rows"][0]["gflops_per_s"] > 0
    assert [f["backend"] for f in res["failures"]] == ["bare"]


def test_a_hook_a_backend_lacks_is_unsupported(tmp_path, monkeypatch, capsys):
    """`train` on a backend without training hooks: exit 6 and the hook named, nothing written."""
    import shared.backend
    from vit_torch.backend import TorchBackend

    class Bare(TorchBackend):
        name = "bare"
        train_module = None

    monkeypatch.setitem(shared.backend._REGISTRY, "bare", Bare)
    out = tmp_path / "t.safetensors"
    assert main(["train", "--backend", "bare", "--steps", "1", "--out", str(out)]) == E.EXIT_UNSUPPORTED
    assert "'train'" in capsys.readouterr().err and not out.exists()


def test_a_third_party_backend_runs_the_suite_against_itself(entry_point_env):
    """The conformance matrix for a backend registered by entry point (an env-registered broken one must fail)."""
    env = dict(entry_point_env, VIT_SUITE_BACKENDS="broken_qk=conformance_tests.broken_backends:SwappedQK")
    args = [*PYTEST_CHILD, "conformance_tests/test_conformance.py",
            "-k", "golden_files or export_round_trip"]
    from shared.testing import TINY_PRESETS

    from .golden.regenerate import PRESETS as GOLDEN

    n = len(GOLDEN) + len(TINY_PRESETS)  # a golden-file case per golden preset, an export round trip per tiny one
    ok = subprocess.run(args + ["--backends", "acme"], capture_output=True, text=True, env=env, timeout=600)
    assert ok.returncode == 0, ok.stdout[-3000:]
    assert f"{n} passed" in ok.stdout
    bad = subprocess.run(args + ["--backends", "broken_qk"], capture_output=True, text=True, env=env, timeout=600)
    assert bad.returncode == 1 and f"{n} failed" in bad.stdout, bad.stdout[-3000:]  # its export is wrong too
    assert "first stage out of bound is block_1" in bad.stdout


def test_a_child_reports_its_own_peak_memory():
    """bench's peak RSS is the child's own: Linux keeps ru_maxrss across execve, so a child of a large parent
    would report the parent's peak (every row of `vit-suite bench` showed the same figure)."""
    ballast = np.ones(64 * 2**20)  # 512 MiB resident in this (the parent) process
    r = subprocess.run([sys.executable, "-c", "from shared.cli.worker import peak_rss_mb; print(peak_rss_mb())"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert float(r.stdout) < 256, f"child reports {float(r.stdout):.0f} MB with a {ballast.nbytes >> 20} MiB parent"


_ENDING = """
import atexit, os, sys, threading
from shared.cli.common import exit_process

class Torn:  # what Python's teardown does: deallocate the modules' objects (late: names bound now)
    def __del__(self, path=sys.argv[1] + "/torn", os=os):
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY))

kept = Torn()
atexit.register(lambda: open(sys.argv[1] + "/atexit", "w").close())

def late():  # a thread still running when the command returns: the exit waits for it
    import time
    time.sleep(0.3)
    open(sys.argv[1] + "/thread", "w").close()

threading.Thread(target=late).start()
print("said", end="")  # no newline: still in the pipe's buffer
{end}(7)
"""


@pytest.mark.parametrize("end", ["exit_process", "sys.exit"])
def test_the_tools_processes_end_without_the_teardown_but_with_atexit_and_their_output(tmp_path, end):
    """The console script, `python -m shared.cli` and the child worker end through exit_process: the command's
    exit code, its buffered output, a thread still running, and the atexit handlers (the frameworks' clean-up) as
    with sys.exit, but no teardown of the modules' objects (seconds of CPU after TensorFlow). sys.exit, the
    contrast, tears down."""
    scripts = {e.name: e.value for e in importlib.metadata.distribution("vit-suite").entry_points
               if e.group == "console_scripts"}
    assert scripts == {"vit-suite": "shared.cli:run"}
    r = subprocess.run([sys.executable, "-c", _ENDING.format(end=end), str(tmp_path)], capture_output=True,
                       text=True, timeout=120)
    assert (r.returncode, r.stdout) == (7, "said"), r.stderr
    assert (tmp_path / "atexit").exists() and (tmp_path / "thread").exists()
    assert (tmp_path / "torn").exists() == (end == "sys.exit")


# ------------------------------------------------------------ outputs never clobber, flags are validated
def test_no_command_writes_over_its_own_input_even_with_force(tmp_path, tiny_file):
    """Pointed at the weights or the input .npy, an output flag destroyed it (exit 0). Now: exit 2, input intact."""
    w = tmp_path / "w.safetensors"
    w.write_bytes(tiny_file.read_bytes())
    x = tmp_path / "x.npy"
    np.save(x, random_images(get_preset("tiny"), 2, 1))
    before = {p: p.read_bytes() for p in (w, x)}
    attempts = [["reference", str(w), "--input", str(x), "--output", str(w)],
                ["reference", str(w), "--input", str(x), "--output", str(x)],
                ["forward", str(w), "--backend", "torch", "--input", str(x), "--output", str(x)],
                ["check", str(w), "--json", str(w)],
                ["check", str(w), "--backends", "torch", "--input", str(x), "--report", str(x)],
                ["check", "--grad", str(w), "--json", str(w)],
                ["convert", str(w), str(w)],
                ["train", "--backend", "torch", "--init", str(w), "--out", str(w), "--steps", "1"]]
    for argv in attempts:
        for force in ([], ["--force"]):
            assert main(argv + force) == E.EXIT_USAGE, argv + force
            assert all(p.read_bytes() == b for p, b in before.items()), argv + force
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.safetensors", "x.npy"]  # and nothing half-written


def test_an_existing_output_is_replaced_only_with_force(tmp_path, tiny_file, capsys):
    out = tmp_path / "m.safetensors"
    assert main(["init", "tiny", str(out), "--seed", "1"]) == 0
    first = out.read_bytes()
    assert main(["init", "tiny", str(out), "--seed", "2"]) == E.EXIT_USAGE
    assert "pass --force" in capsys.readouterr().err and out.read_bytes() == first
    assert main(["init", "tiny", str(out), "--seed", "2", "--force"]) == 0
    assert out.read_bytes() != first and W.load(out)[1]["head.weight"].tolist() == \
        init_weights(get_preset("tiny"), 2)["head.weight"].tolist()
    x = tmp_path / "x.npy"
    np.save(x, random_images(get_preset("tiny"), 2, 1))
    y = tmp_path / "y.npz"
    y.write_bytes(b"keep me")
    assert main(["reference", str(tiny_file), "--input", str(x), "--output", str(y)]) == E.EXIT_USAGE
    assert y.read_bytes() == b"keep me"
    assert main(["reference", str(tiny_file), "--input", str(x), "--output", str(y), "--force"]) == 0
    with np.load(y) as z:
        assert "logits" in z.files
    # convert --force reaches the writer, the Hugging Face directory writer included
    hf = tmp_path / "hfdir"
    assert main(["convert", str(tiny_file), str(hf), "--to", "hf"]) == 0
    assert main(["convert", str(tiny_file), str(hf), "--to", "hf"]) == E.EXIT_USAGE
    assert main(["convert", str(out), str(hf), "--to", "hf", "--force"]) == 0
    assert all(np.array_equal(read_any(str(hf))[1][k], W.load(out)[1][k]) for k in W.load(out)[1])


def test_a_writer_that_loses_the_race_to_create_the_destination_fails_and_leaves_nothing(tmp_path, tiny_file):
    """The exists-check before the work is not atomic; the final create is (a hard link): of two writers to one
    destination without --force, the second gets exit 2 and the first one's file stays."""
    cfg, state = W.load(tiny_file)
    dst = tmp_path / "m.safetensors"

    def racing_writer(tmp):  # another process creates the destination while this one writes
        dst.write_bytes(b"the other writer's file")
        from safetensors.numpy import save_file

        save_file(state, tmp)

    with pytest.raises(E.OutputError, match="exists"):
        F.atomic_write(dst, racing_writer, overwrite=False)
    assert dst.read_bytes() == b"the other writer's file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]


def test_written_files_get_the_mode_the_umask_gives(tmp_path, tiny_file):
    """Temporary files are created 0600 (MindSpore writes 0400); what the suite writes is readable as far as the
    umask allows, so a teammate or a later CI stage can read it."""
    import os
    import stat

    old = os.umask(0o022)
    try:
        for name, fmt in (("m.safetensors", None), ("m.ckpt", None), ("m.pt", None), ("hfdir", "hf")):
            argv = ["convert", str(tiny_file), str(tmp_path / name)] + (["--to", fmt] if fmt else [])
            assert main(argv) == 0, name
        assert main(["init", "tiny", str(tmp_path / "i.safetensors")]) == 0
    finally:
        os.umask(old)
    for name in ("m.safetensors", "m.ckpt", "m.pt", "i.safetensors", "hfdir/config.json", "hfdir/model.safetensors"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name
    assert stat.S_IMODE((tmp_path / "hfdir").stat().st_mode) == 0o755


@pytest.mark.parametrize("argv", [
    ["check", "--batch", "0"], ["check", "--batch", "-3"], ["check", "--batch", "1000000"],
    ["check", "--seed", "-1"], ["init", "tiny", "OUT", "--seed", "-1"], ["grad", "--batch", "0"],
    ["train", "--backend", "torch", "--steps", "0"], ["train", "--backend", "torch", "--lr", "nan"],
    ["train", "--backend", "torch", "--label-smoothing", "1"], ["bench", "--iters", "0"],
])
def test_out_of_range_flags_are_usage_errors(tmp_path, argv, capsys):
    """`check --batch 0` ran batch 2 and printed PASS; negative seeds and batches crashed. Now: exit 2, the range
    named, before any work."""
    argv = [str(tmp_path / a) if a == "OUT" else a for a in argv]
    assert main(argv) == E.EXIT_USAGE
    err = capsys.readouterr().err
    assert "outside" in err or "expected" in err, err
    assert not (tmp_path / "OUT").exists()


def test_flags_that_conflict_with_the_input_are_refused(tmp_path, tiny_file, capsys):
    x = tmp_path / "x.npy"
    np.save(x, random_images(get_preset("tiny"), 2, 1))  # tiny's own image size
    h, w = get_preset("tiny").image_size
    argv = ["forward", str(tiny_file), "--backend", "torch", "--input", str(x), "--output", str(tmp_path / "y.npz"),
            "--image-size", f"{2 * h}x{2 * w}"]
    assert main(argv) == E.EXIT_USAGE  # it was ignored: logits identical to a plain run
    assert "conflicts with --input" in capsys.readouterr().err
    assert main(["check", str(tiny_file), "--backends", "torch", "--report", str(tmp_path / "r.html"),
                 "--attn-block", "99"]) == E.EXIT_USAGE  # it was clamped to the last block without a word
    assert "has blocks 0.." in capsys.readouterr().err
    assert not (tmp_path / "y.npz").exists() and not (tmp_path / "r.html").exists()


def _npy_header_only(shape) -> bytes:
    import io

    b = io.BytesIO()
    np.lib.format.write_array_header_1_0(b, {"descr": "<f4", "fortran_order": False, "shape": shape})
    return b.getvalue() + bytes(64)


@pytest.mark.parametrize("name,make,code,message", [
    ("empty", lambda: np.zeros((0, 3, 32, 32), np.float32), E.EXIT_USAGE, "empty batch"),
    ("strings", lambda: np.array([["a", "b"]]), E.EXIT_INVALID_FILE, "not numeric"),
    ("nan", lambda: np.where(np.arange(3 * 32 * 32).reshape(1, 3, 32, 32) % 7 == 0, np.nan, 0.5), E.EXIT_USAGE,
     "439 of 3072 values are NaN or infinite"),
    ("inf_after_cast", lambda: np.full((1, 3, 32, 32), 1e300), E.EXIT_USAGE, "3072 of 3072"),
    ("billion_batch_header", lambda: _npy_header_only((10**9, 3, 32, 32)), E.EXIT_INVALID_FILE, "does not match"),
    ("not_divisible", lambda: np.zeros((1, 3, 30, 30), np.float32), E.EXIT_USAGE, "divisible"),
    ("channels", lambda: np.zeros((1, 4, 32, 32), np.float32), E.EXIT_USAGE, "4 channels"),
    ("zero_bytes", lambda: b"", E.EXIT_INVALID_FILE, "an empty file (0 bytes)"),  # was exit 1: EOFError
    ("npz", lambda: "npz", E.EXIT_INVALID_FILE, "an .npz archive"),  # was exit 1: AttributeError
])
def test_bad_npy_inputs_are_typed_errors(tmp_path, tiny_file, capsys, name, make, code, message):
    """Empty, non-numeric, non-finite, lying-header and wrongly-sized inputs: a typed error naming the file, exit 2/3,
    no traceback, no output file; a header claiming a billion images is refused before anything is allocated."""
    x = tmp_path / f"{name}.npy"
    data = make()
    if isinstance(data, bytes):
        x.write_bytes(data)
    elif isinstance(data, str):  # an .npz given as --input
        with open(x, "wb") as f:
            np.savez(f, images=np.zeros((1, 3, 32, 32), np.float32))
    else:
        np.save(x, data)
    out = tmp_path / "y.npz"
    for argv in (["reference", str(tiny_file), "--input", str(x), "--output", str(out)],
                 ["check", str(tiny_file), "--backends", "torch", "--input", str(x)],
                 ["forward", str(tiny_file), "--backend", "torch", "--input", str(x), "--output", str(out)]):
        assert main(argv) == code, argv
        err = " ".join(capsys.readouterr().err.split())
        assert f"--input {x}: " in err and message in err and "Traceback" not in err, err
    assert not out.exists()


@pytest.fixture(scope="module")
def overflowing_file(tmp_path_factory):
    """Finite float32 weights whose float32 logits overflow (the float64 reference stays finite)."""
    path = tmp_path_factory.mktemp("w") / "overflow.safetensors"
    cfg = get_preset("tiny")
    state = init_weights(cfg, 0)
    state["head.weight"] = (state["head.weight"] * 1e38 / np.abs(state["head.weight"]).max()).astype(np.float32)
    state["head.bias"] = np.full_like(state["head.bias"], 3e38)
    W.save(path, cfg, state)
    return path


def test_check_reports_non_finite_backend_output_with_its_own_exit_code(tmp_path, overflowing_file, capsys):
    code = main(["check", str(overflowing_file), "--backends", "torch", "--json", str(tmp_path / "c.json")])
    out = capsys.readouterr().out
    assert code == E.EXIT_NONFINITE == 7, out[-2000:]
    d = json.loads((tmp_path / "c.json").read_text())["backends"]["torch"]
    assert d["status"] == "non-finite" and d["nonfinite"]["logits"] > 0 and "logits" in d["error"]
    assert "non-finite" in out


def test_forward_and_reference_warn_and_exit_7_on_non_finite_outputs(tmp_path, overflowing_file, capsys):
    cfg = get_preset("tiny")
    np.save(tmp_path / "x.npy", random_images(cfg, 2, 1))
    for argv in (["reference", str(overflowing_file), "--dtype", "float32"],
                 ["forward", str(overflowing_file), "--backend", "torch"]):
        out = tmp_path / f"{argv[0]}.npz"
        capsys.readouterr()
        assert main([*argv, "--input", str(tmp_path / "x.npy"), "--output", str(out)]) == E.EXIT_NONFINITE
        err = capsys.readouterr().err
        assert "not finite" in err and "logits:" in err and "values NaN/Inf" in err
        assert out.exists()  # written, and said


def test_run_check_refuses_an_empty_or_non_finite_batch(tiny_file):
    from shared.cli.check import run_check

    cfg, state = W.load(tiny_file)
    with pytest.raises(E.UsageError, match="non-empty"):
        run_check(cfg, tiny_file, np.zeros((0, 3, *cfg.image_size), np.float32), ["torch"], state=state)
    x = random_images(cfg, 2, 0)
    x[0, 0, 0, :3] = [np.nan, np.inf, -np.inf]
    with pytest.raises(E.UsageError, match="3 of .* NaN or infinite"):
        run_check(cfg, tiny_file, x, ["torch"], state=state)


def _png_header_only(width, height) -> bytes:
    """A PNG that claims width x height in its header (a decompression bomb's header; the data is not needed to be
    refused)."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 1000)) + \
        chunk(b"IEND", b"")


@pytest.mark.parametrize("name,content,message", [
    ("text.png", b"this is not an image\n", "not a readable PNG/JPEG image"),
    ("truncated.png", None, "not a readable PNG/JPEG image"),
    ("bomb.png", _png_header_only(12000, 12000), "over the limit of 40,000,000 pixels"),
    ("big.png", _png_header_only(8000, 6000), "8000x6000 pixels, over the limit"),
], ids=["text", "truncated", "bomb", "big"])
def test_predict_refuses_bad_image_files_by_name(tmp_path, tiny_file, capsys, name, content, message):
    import io
    import time

    from PIL import Image

    if content is None:
        buf = io.BytesIO()
        Image.new("RGB", (40, 40), (10, 200, 30)).save(buf, format="PNG")
        content = buf.getvalue()[:60]
    (tmp_path / name).write_bytes(content)
    t = time.perf_counter()
    assert main(["predict", str(tiny_file), str(tmp_path / name), "--backend", "torch"]) == E.EXIT_INVALID_FILE
    assert time.perf_counter() - t < 10
    err = capsys.readouterr().err
    assert name in err and message in " ".join(err.split())


def test_evaluate_and_predict_refuse_missing_empty_and_huge_data(tmp_path, tiny_file, capsys):
    import time

    (tmp_path / "empty").mkdir()
    (tmp_path / "noimages" / "cat").mkdir(parents=True)
    for data, message in ((tmp_path / "missing", "not a folder"), (tmp_path / "empty", "no class sub-folders"),
                          (tmp_path / "noimages", "no .png/.jpg/.jpeg images")):
        capsys.readouterr()
        assert main(["evaluate", str(tiny_file), str(data), "--backend", "torch"]) == E.EXIT_USAGE
        err = " ".join(capsys.readouterr().err.split())
        assert str(data.name) in err and message in err
    t = time.perf_counter()
    for spec, message in (("digits:0-300000000", "held-out rows are 0.."), ("digits:x-3", "expected digits:ROW")):
        assert main(["predict", str(tiny_file), spec, "--backend", "torch"]) == E.EXIT_USAGE
        assert message in " ".join(capsys.readouterr().err.split())
    assert time.perf_counter() - t < 30


@pytest.mark.parametrize("argv,flag", [(["--image-size", "2048x2048"], "--image-size"),
                                       (["--batch", "1024", "--image-size", "512x512"], "--batch --image-size"),
                                       (["--batch", "1000000"], "--batch")])
def test_check_refuses_work_beyond_the_memory_limit_before_allocating(tiny_file, capsys, argv, flag):
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert main(["check", str(tiny_file), "--backends", "torch", *argv]) == E.EXIT_USAGE
    err = " ".join(capsys.readouterr().err.split())
    assert flag in err
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100_000


@pytest.mark.parametrize("fmt,suffix", [("torch", ".pt"), ("hf", "")])
def test_native_and_hf_writers_create_the_destination_exclusively(tmp_path, tiny_file, monkeypatch, fmt, suffix):
    """`.pt`/`.keras`/`.weights.h5`/`.ckpt` and HF directories go through the same exclusive create as canonical
    files: a destination that appears while this writer works is not replaced (exit 2), nothing is left behind."""
    import shared.convert.io as io_mod
    from shared.convert import hf as hf_mod

    cfg, state = W.load(tiny_file)
    cfg = cfg.replace(resize_kernel="bicubic")
    dst = tmp_path / f"m{suffix}"

    def appear():
        if fmt == "hf":
            dst.mkdir()
            (dst / "config.json").write_text("{}")
        else:
            dst.write_bytes(b"the other writer's file")

    if fmt == "hf":
        real = hf_mod.export_hf
        monkeypatch.setattr(hf_mod, "export_hf", lambda *a, **k: (appear(), real(*a, **k))[1])
    else:
        real_build = io_mod.get_backend("torch").__class__.build
        monkeypatch.setattr(io_mod.get_backend("torch").__class__, "build",
                            lambda self, *a, **k: (appear(), real_build(self, *a, **k))[1])
    with pytest.raises(E.OutputError, match="exists"):
        write_any(str(dst), fmt, cfg, state, overwrite=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == [dst.name]
    assert (dst / "config.json").read_text() == "{}" if fmt == "hf" else dst.read_bytes() == b"the other writer's file"


def test_stale_partials_of_dead_writers_are_removed_by_the_next_write(tmp_path, tiny_file):
    import os

    cfg, state = W.load(tiny_file)
    dead = tmp_path / ".m.safetensors.999999999.abcd1234.partial"  # a writer killed with SIGKILL
    alive = tmp_path / f".m.safetensors.{os.getpid()}.efgh5678.partial"  # a writer still at work
    other = tmp_path / ".other.safetensors.999999999.abcd1234.partial"  # not this destination's
    for p in (dead, alive, other):
        p.write_bytes(b"partial")
    W.save(tmp_path / "m.safetensors", cfg, state)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(["m.safetensors", alive.name, other.name])


@pytest.mark.parametrize("signal_name,code", [("SIGTERM", 143), ("SIGINT", 130)])
def test_sigterm_and_ctrl_c_during_a_write_leave_nothing_behind(tmp_path, monkeypatch, signal_name, code):
    import os
    import signal
    import time

    from shared import weights

    def interrupted_save(path, tensors, metadata=None):
        with open(path, "wb") as f:
            f.write(b"half a file")
        os.kill(os.getpid(), getattr(signal, signal_name))
        time.sleep(5)  # the handler raises in the main thread before this returns
        raise AssertionError("the signal did not interrupt the write")

    monkeypatch.setattr(weights, "write_safetensors", interrupted_save)  # the canonical writer
    # Ctrl-C is Python's own KeyboardInterrupt, which a process started in the background by a non-interactive
    # shell does not get (SIGINT ignored from the start, as POSIX says): give this test the interactive handler
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        assert main(["init", "tiny", str(tmp_path / "out.safetensors")]) == code
    finally:
        signal.signal(signal.SIGINT, previous)
    assert list(tmp_path.iterdir()) == []


def test_an_unwritable_or_full_destination_is_a_typed_error(tmp_path, tiny_file, monkeypatch, capsys):
    import errno

    from shared import weights

    (tmp_path / "a_file").write_text("x")
    assert main(["init", "tiny", str(tmp_path / "a_file" / "out.safetensors")]) == E.EXIT_USAGE
    assert "cannot write there" in capsys.readouterr().err

    def full_disk(path, tensors, metadata=None):
        with open(path, "wb") as f:
            f.write(b"some bytes")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(weights, "write_safetensors", full_disk)
    assert main(["init", "tiny", str(tmp_path / "out.safetensors")]) == E.EXIT_USAGE
    assert "No space left on device" in " ".join(capsys.readouterr().err.split())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


def test_an_unexpected_exception_is_one_line_and_debug_shows_the_traceback(tmp_path, monkeypatch, capsys):
    from shared.cli import inspect as inspect_cmd

    def boom(args):
        raise RuntimeError("something nobody expected")

    monkeypatch.setattr(inspect_cmd, "cmd_inspect", boom)  # main() builds its parser per call: it binds this
    assert main(["inspect", "x"]) == E.EXIT_CRASH
    err = capsys.readouterr().err
    assert "RuntimeError: something nobody expected" in err and "--debug" in err and "Traceback" not in err
    assert main(["--debug", "inspect", "x"]) == E.EXIT_CRASH
    err = capsys.readouterr().err
    assert "Traceback" in err and "something nobody expected" in err
