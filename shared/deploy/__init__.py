"""Deployment: the suite's own ONNX export, reading it back, and the runtimes that run it as conformance backends.

    onnx_graph  build_graph(cfg, state): the ViT as an ONNX graph, framework-free (onnx.helper and NumPy)
    onnx_file   write_onnx / read_onnx: the .onnx file, written atomically, read back safely and bit-exact
    runtimes    the `onnxruntime` and `openvino` backends: the in-memory graph (every stage an output) run by
                ONNX Runtime's CPU execution provider and by OpenVINO's CPU plugin
    bench       their benchmark modes: the suite's export, and timm's own torch.onnx.export as a peer
    artifact    artifacts this suite did not write (`check --against model.onnx | .tflite | .xml`): opened safely,
                inputs laid out by shape, run in ONNX Runtime, LiteRT or OpenVINO

A layer above the contract, like shared.convert: it imports the contract only; shared.convert (the `onnx` format
row) and shared.cli import it.
"""
