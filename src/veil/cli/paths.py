"""Collecting input images from files and folders (recursive), in a stable order."""

from __future__ import annotations

from pathlib import Path

from veil.errors import VeilError
from veil.imageio.formats import SUFFIXES as IMAGE_SUFFIXES
from veil.imageio.formats import VIDEO_SUFFIXES

#: Images and videos picked up inside folders (the content decides what a file really is).
MEDIA_SUFFIXES = IMAGE_SUFFIXES | VIDEO_SUFFIXES


def collect_images(paths: list[Path]) -> list[tuple[Path, Path]]:
    """``(file, root)`` pairs: every named file, and every image or video file under named folders.

    ``root`` is the folder the file was found under (or the file's parent), so outputs can
    mirror the input tree. Files named explicitly are taken whatever their extension (the
    content decides); inside folders only image extensions are picked up.
    """
    out: list[tuple[Path, Path]] = []
    for p in paths:
        if p.is_dir():
            for f in sorted(p.rglob("*")):
                if f.is_file() and f.suffix.lower() in MEDIA_SUFFIXES and not f.name.startswith("."):
                    out.append((f, p))
        elif p.is_file():
            out.append((p, p.parent))
        else:
            raise VeilError(f"{p}: no such file or folder")
    return out
