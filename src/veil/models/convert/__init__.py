"""Offline converters that turn third-party model formats into ONNX files veil can run."""
