"""Regenerate the golden fixtures: python -m conformance_tests.golden.regenerate

Each `<preset>.safetensors` holds a tiny model's canonical weights (`weights/<key>`), an input batch (`input`,
NCHW float32) and the float64 reference output of every named stage (`stage/<name>`), with the config in the
metadata. A backend can be tested against these without NumPy reference code or other frameworks; the suite
checks that the reference still reproduces them (`test_conformance.py`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from shared import reference
from shared.init import init_weights, random_images
from shared.presets import get_preset
from shared.fileio import atomic_write

GOLDEN_DIR = Path(__file__).parent
PRESETS = ("tiny", "tiny_meanpool", "tiny_t2t", "tiny_pretrain")
SEED = 1234


def golden_arrays(preset: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    cfg = get_preset(preset)
    state = init_weights(cfg, SEED)
    images = random_images(cfg, batch=2, seed=SEED)
    stages = reference.forward(cfg, state, images)
    arrays = {f"weights/{k}": v for k, v in state.items()}
    arrays["input"] = images
    arrays.update({f"stage/{k}": np.ascontiguousarray(v, dtype=np.float64) for k, v in stages.items()})
    return arrays, {"vit_config": cfg.to_json(), "seed": str(SEED), "generator": "conformance_tests.golden.regenerate"}


def load_golden(preset: str):
    """(cfg, state, images, stages) from a golden file."""
    from shared.config import ViTConfig
    from shared.weights import read_tensors

    tensors, meta = read_tensors(GOLDEN_DIR / f"{preset}.safetensors")
    cfg = ViTConfig.from_json(meta["vit_config"])
    state = {k[len("weights/"):]: v for k, v in tensors.items() if k.startswith("weights/")}
    stages = {k[len("stage/"):]: v for k, v in tensors.items() if k.startswith("stage/")}
    return cfg, state, tensors["input"], stages


def main() -> None:
    for preset in PRESETS:
        arrays, meta = golden_arrays(preset)
        path = GOLDEN_DIR / f"{preset}.safetensors"
        atomic_write(path, lambda tmp: save_file(arrays, tmp, metadata=meta))
        print(f"wrote {path} ({path.stat().st_size / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()
