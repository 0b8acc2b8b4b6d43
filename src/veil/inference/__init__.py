"""onnxruntime sessions, created once per process and reused."""
