"""Deployed artifacts: exported graphs run in their runtimes (ONNX Runtime, OpenVINO, LiteRT)."""
