"""veil: automatic photo anonymization (faces, people, licence plates)."""

import os as _os

# onnxruntime's Linux builds start a telemetry client when the library loads (an import,
# not a session) and keep a database with a device id under the user's cache
# (``~/.cache/Microsoft/DeveloperTools/.onnxruntime/onnxruntime.db``). Its switch is
# this variable, read at load time, so it is set here, before any veil module can import
# onnxruntime; ``veil.inference.session`` also turns its telemetry events off.
if not _os.environ.get("ORT_DISABLE_TELEMETRY"):
    _os.environ["ORT_DISABLE_TELEMETRY"] = "1"

__version__ = "0.1.0"
