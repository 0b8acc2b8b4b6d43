"""Video: streaming decode and encode (PyAV), tracking across frames, the photo masking.

``anonymize_video(src, dst, options)`` is the one entry point the CLI, the API and the
web page use; ``is_video(head)`` sniffs an upload's first bytes.

The pipeline (PyAV, the detectors) is imported on first use of its names: a command that
only sniffs whether a file is a video, as ``veil anonymize`` does for every input, starts
without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from veil.errors import VideoError
from veil.video.sniff import SNIFF_BYTES, is_video, sniff_container

if TYPE_CHECKING:
    from veil.video.pipeline import Cancelled, VideoReport, anonymize_video, detect_video

_FROM_PIPELINE = frozenset({"Cancelled", "VideoReport", "anonymize_video", "detect_video"})

__all__ = ["SNIFF_BYTES", "Cancelled", "VideoError", "VideoReport", "anonymize_video", "detect_video", "is_video", "sniff_container"]


def __getattr__(name: str) -> Any:
    if name in _FROM_PIPELINE:
        from veil.video import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
