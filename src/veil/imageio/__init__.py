"""Reading, writing and metadata: everything that touches image bytes.

``load_image`` sniffs, guards and decodes an upload into an upright :class:`LoadedImage`;
``encode_image`` writes fresh bytes with no input metadata; ``atomic_write`` puts them
on disk without ever leaving a half-written file.
"""

from veil.imageio.limits import DEFAULT_LIMITS, Limits
from veil.imageio.read import SUPPORTED, LoadedImage, load_image, sniff_format
from veil.imageio.write import CONTENT_TYPES, EXTENSIONS, atomic_file, atomic_write, encode_image, output_format

__all__ = [
    "CONTENT_TYPES",
    "DEFAULT_LIMITS",
    "EXTENSIONS",
    "SUPPORTED",
    "Limits",
    "LoadedImage",
    "atomic_file",
    "atomic_write",
    "encode_image",
    "load_image",
    "output_format",
    "sniff_format",
]
