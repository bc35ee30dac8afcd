"""Throughput of the Keras ViT (images/s, GFLOP/s): eager / graph (tf.function) / jit (XLA: tf.function with
jit_compile on TensorFlow, jax.jit on JAX), and keras-hub's ViTImageClassifier built from the same sizes (random
weights, no download) when installed.

    python -m vit_keras.bench --preset B/16 --batch 8 --passes 5
    KERAS_BACKEND=jax python -m vit_keras.bench --preset B/16 --modes eager jit
    KERAS_BACKEND=torch python -m vit_keras.bench --preset tiny --modes eager

Each mode: warm-up calls (tracing / XLA compile excluded), then `passes` timed passes of `iters` batches
each; the figure reported is the median pass. A benchmark, not a test.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

from shared.bench import vit_flops
from shared.config import ViTConfig
from shared.presets import get_preset


#: the mode a peer (keras-hub) runs in on each Keras backend: the fastest one the backend has
PEER_MODE = {"tensorflow": "graph", "jax": "jit", "torch": "eager"}


def _compile(fn, mode: str, model):
    """`fn` (which calls `model`) in a mode: as it is, a tf.function without AutoGraph (graph / XLA:
    model.tf_function), or jax.jit."""
    import keras

    kb = keras.backend.backend()
    if mode == "eager":
        return fn
    if kb == "jax" and mode == "jit":
        from .model import jax_jit

        return jax_jit(model, fn)
    if kb != "tensorflow":
        raise ValueError(f"mode {mode!r} does not run on Keras' {kb} backend")
    from .model import tf_function

    return tf_function(fn, jit_compile=(mode == "jit"))


def _time(fn, x, passes: int, iters: int, warmup: int) -> list[float]:
    import keras

    def sync(y):
        return keras.ops.convert_to_numpy(y)

    for _ in range(warmup):
        sync(fn(x))
    rates = []
    batch = int(x.shape[0])
    for _ in range(passes):
        t0 = time.perf_counter()
        for _ in range(iters):
            y = fn(x)
        sync(y)
        rates.append(batch * iters / (time.perf_counter() - t0))
    return rates


def _no_grad(fn):
    import keras

    if keras.backend.backend() != "torch":
        return fn
    import torch

    def wrapped(x):
        with torch.no_grad():
            return fn(x)

    return wrapped


def keras_hub_model(cfg: ViTConfig, dtype: str):
    """keras-hub's ViT with the same sizes (its own numerics: erf/tanh and eps as it chooses); None if absent."""
    try:
        import keras_hub
    except ImportError:
        return None
    from .model import POLICIES

    H, W = cfg.image_size
    backbone = keras_hub.models.ViTBackbone(
        image_shape=(H, W, cfg.in_chans), patch_size=cfg.patch_size, num_layers=cfg.depth, num_heads=cfg.num_heads,
        hidden_dim=cfg.embed_dim, mlp_dim=cfg.mlp_dim, layer_norm_epsilon=cfg.layer_norm_eps,
        use_class_token=cfg.class_token != "none", dtype=POLICIES[dtype])
    return keras_hub.models.ViTImageClassifier(backbone, num_classes=max(cfg.num_classes, 1), preprocessor=None,
                                               dtype=POLICIES[dtype])


MODES = {
    "eager": "eager Keras calls",
    "graph": "tf.function graph (TensorFlow only; the keras backend's default)",
    "jit": "XLA: tf.function(jit_compile=True) on TensorFlow, jax.jit on JAX (keras-jax's default)",
    "keras_hub": "peer: keras-hub's ViTImageClassifier with the same sizes, in the Keras backend's fastest mode "
                 "(if keras-hub is installed)",
}


def bench(cfg: ViTConfig, *, batch: int = 8, dtype: str = "float32", mode: str, n_warmup: int = 2,
          n_iter: int = 5, backend=None) -> dict:
    """Median-timed forward of `batch` images in one mode (KerasBackend.bench); the model comes from
    `backend.build` when one is given."""
    import keras

    from .model import build_model

    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; modes: {', '.join(MODES)}")
    if mode == "keras_hub":
        model = keras_hub_model(cfg, dtype)
        if model is None:
            raise RuntimeError("keras-hub is not installed (pip install --no-deps keras-hub)")
    else:
        model = backend.build(cfg, dtype=dtype) if backend is not None else build_model(cfg, dtype=dtype)
    run_mode = PEER_MODE[keras.backend.backend()] if mode == "keras_hub" else mode
    fn = _compile(_no_grad(lambda t: model(t, training=False)), run_mode, model)
    H, W = cfg.image_size
    x = keras.ops.convert_to_tensor(np.random.default_rng(0).standard_normal((batch, H, W, cfg.in_chans)).astype(np.float32))
    rates = _time(fn, x, passes=n_iter, iters=1, warmup=n_warmup)
    med = statistics.median(rates)
    return {"images_per_s": med, "median_s": batch / med, "passes": rates, "keras_backend": keras.backend.backend()}


def run(preset: str, batches=(8,), modes=("eager", "graph", "jit"), dtype: str = "float32", passes: int = 5,
        iters: int = 2, warmup: int = 2, hub: bool = True, seed: int = 0) -> list[dict]:
    import keras

    from .model import build_model

    cfg = get_preset(preset)
    gflop = vit_flops(cfg) / 1e9
    models = {"vit_keras": build_model(cfg, dtype=dtype)}
    if hub:
        hm = keras_hub_model(cfg, dtype)
        if hm is not None:
            models["keras_hub"] = hm
    rows = []
    rng = np.random.default_rng(seed)
    for batch in batches:
        H, W = cfg.image_size
        x = keras.ops.convert_to_tensor(rng.standard_normal((batch, H, W, cfg.in_chans)).astype(np.float32))
        for mode in modes:
            for label, model in models.items():
                fn = _compile(_no_grad(lambda t, m=model: m(t, training=False)), mode, model)
                rates = _time(fn, x, passes, iters, warmup)
                med = statistics.median(rates)
                rows.append({"model": label, "preset": cfg.name, "dtype": dtype, "batch": batch, "mode": mode,
                             "keras_backend": keras.backend.backend(), "img_per_s": round(med, 2),
                             "gflop_per_s": round(med * gflop, 1), "passes": [round(r, 2) for r in rates]})
                print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m vit_keras.bench", description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="vit_base_patch16_224")
    ap.add_argument("--batch", type=int, nargs="+", default=[8])
    ap.add_argument("--modes", nargs="+", default=["eager", "graph", "jit"], choices=["eager", "graph", "jit"])
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--passes", type=int, default=5)
    ap.add_argument("--iters", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--no-hub", action="store_true", help="skip keras-hub's ViTImageClassifier")
    a = ap.parse_args(argv)
    run(a.preset, a.batch, a.modes, a.dtype, a.passes, a.iters, a.warmup, hub=not a.no_hub)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
