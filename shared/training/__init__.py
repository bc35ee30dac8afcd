"""Training, framework-free: what every backend's `train.py` implements and what judges it.

  recipe.py   TrainConfig, the warm-up + cosine schedule, label-smoothing cross-entropy, weight-decay mask,
              head switching, float64 SGD/AdamW oracles, canonical checkpoints, the progress bar
  data.py     the one data pipeline (scikit-learn digits or an image folder, decoded by Pillow, resized with the
              suite's pinned kernels, seeded batches) and the shipped default model
  grad.py     the gradient-conformance policy: bounds, finite-difference check of the oracle, step errors

Backends may import this package (and the contract below it); it imports no framework.
"""
