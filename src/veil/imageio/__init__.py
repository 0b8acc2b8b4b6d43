"""Reading, writing and metadata: everything that touches image bytes.

``load_image`` sniffs, guards and decodes an upload into an upright :class:`LoadedImage`;
``encode_image`` writes fresh bytes with no input metadata; ``atomic_write`` puts them
on disk without ever leaving a half-written file.

Each name is imported from its module on first use: the format table and the file writers
need neither Pillow nor OpenCV, and the command line starts without them.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from veil.imageio.files import atomic_file, atomic_write
    from veil.imageio.formats import CONTENT_TYPES, EXTENSIONS
    from veil.imageio.limits import DEFAULT_LIMITS, Limits
    from veil.imageio.read import SUPPORTED, LoadedImage, load_image, sniff_format
    from veil.imageio.write import encode_image, output_format

_HOMES = {
    "CONTENT_TYPES": "formats",
    "EXTENSIONS": "formats",
    "DEFAULT_LIMITS": "limits",
    "Limits": "limits",
    "SUPPORTED": "read",
    "LoadedImage": "read",
    "load_image": "read",
    "sniff_format": "read",
    "atomic_file": "files",
    "atomic_write": "files",
    "encode_image": "write",
    "output_format": "write",
}

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


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"veil.imageio.{home}"), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
