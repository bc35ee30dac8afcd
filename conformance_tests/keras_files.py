"""Keras files across Keras backends: `python -m conformance_tests.keras_files DIR [write] [wait] [read]` under a
KERAS_BACKEND.

write: for each of PRESETS, the model's `.keras` and `.weights.h5` files, named `{keras backend}.{preset}.{suffix}`.
wait:  print `written` and wait for a line on stdin (the other Keras backends write their files meanwhile): one
       process writes and, later, reads, instead of paying the framework's start-up twice.
read:  every such file another Keras backend wrote: its canonical weights must be bit-exact and its forward within
       the float32 bound of the reference. Prints one JSON line: {"keras_backend": ..., "read": {file: result}}.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from shared import testing, tolerances

#: tiny_pretrain: a resampled learned table, pre-logits and an output softmax; the family presets: every other kind
#: of variable and layer (LayerScale, qk-norm, registers, the distillation token and head, norm_pre, no patch bias,
#: the attention pool)
PRESETS = ["tiny_pretrain", *testing.FAMILY_TINY]
SUFFIXES = (".keras", ".weights.h5")


def write(directory: Path) -> None:
    import keras

    from vit_keras.convert import save_keras, save_weights_h5
    from vit_keras.model import build_model

    for preset in PRESETS:
        cfg, state, _ = testing.case(preset)
        model = build_model(cfg, state)
        save_keras(model, directory / f"{keras.backend.backend()}.{preset}.keras")
        save_weights_h5(model, directory / f"{keras.backend.backend()}.{preset}.weights.h5")


def read(directory: Path) -> dict[str, dict]:
    """file name -> {bit_exact, conforms, summary} for every file another Keras backend wrote."""
    import keras

    from vit_keras.convert import load_keras, load_weights_h5
    from vit_keras.model import to_canonical

    here = keras.backend.backend()
    results = {}
    for path in sorted(p for s in SUFFIXES for p in directory.glob("*" + s)):
        if path.name.startswith(here + "."):
            continue
        preset = path.name.split(".")[1]
        cfg, state, x = testing.case(preset)
        model = load_keras(path) if path.suffix == ".keras" else load_weights_h5(path, cfg)
        back = to_canonical(model)
        exact = sorted(back) == sorted(state) and all(np.array_equal(back[k], state[k]) for k in state)
        xs = keras.ops.convert_to_tensor(np.ascontiguousarray(x.transpose(0, 2, 3, 1)))
        stages = {k: np.asarray(keras.ops.convert_to_numpy(v), np.float32)
                  for k, v in model.forward_stages(xs).items()}
        verdict = tolerances.judge(cfg, "float32", stages, testing.reference_stages(preset))
        results[path.name] = {"bit_exact": exact, "conforms": verdict.passed, "summary": verdict.summary()}
    return results


def main(directory: str, *actions: str) -> int:
    import keras

    d = Path(directory)
    if "write" in actions:
        write(d)
    if "wait" in actions:
        print("written", flush=True)
        sys.stdin.readline()
    print(json.dumps({"keras_backend": keras.backend.backend(), "read": read(d) if "read" in actions else {}}))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
