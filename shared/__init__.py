"""The framework-free part of the vit-suite, in layers whose imports run one way (README, "Layout"):

    shared.cli                          the vit-suite tool (imports everything below; nothing imports it)
    shared.convert  shared.training  shared.testing      peer formats, the training recipe, test helpers
    the contract: config, presets, reference, posemb, weights, init, tolerances, backend, errors, bench, limits,
                  safeio, fileio, keras_file, ms_ckpt, jobs, cache

The backend packages (vit_torch, vit_keras, vit_mindspore) import the contract and shared.training only.
"""
