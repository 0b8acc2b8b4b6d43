"""Video: streaming decode and encode (PyAV), tracking across frames, the photo masking.

``anonymize_video(src, dst, options)`` is the one entry point the CLI, the API and the
web page use; ``is_video(head)`` sniffs an upload's first bytes.
"""

from veil.errors import VideoError
from veil.video.pipeline import Cancelled, VideoReport, anonymize_video, detect_video
from veil.video.sniff import SNIFF_BYTES, is_video, sniff_container

__all__ = ["SNIFF_BYTES", "Cancelled", "VideoError", "VideoReport", "anonymize_video", "detect_video", "is_video", "sniff_container"]
