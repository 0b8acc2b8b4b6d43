"""Which ICC colour profile an output may carry: a checked one, rebuilt from its colour tags.

An input's ICC profile is a small file of its own inside the photo, and it can hold more
than colour: free text (``desc``, ``cprt``, ``dmnd``, ``dmdd`` and private tags — a name,
a studio, anything), header fields naming a device and a creation time, and any number of
bytes between or after its tags (a profile of 16 MB would make every output 16 MB). So a
profile is parsed (header and tag table, nothing else; no colour engine reads it) and:

* refused when it is not an RGB profile of a display, input or colour-space class with
  the ``acsp`` signature and a tag table that stays inside it: the output then has no
  profile, which viewers read as sRGB;
* by default rebuilt from its colour tags only (primaries, tone curves, white and black
  point, chromatic adaptation, LUTs; each of a numeric type) with a neutral description
  and a header cleared of device, creator, date and ID fields;
* kept as it is with ``keep_metadata=["icc"]``, text tags included, when it is no larger
  than :data:`MAX_ICC_BYTES` (else rebuilt as above).

A profile larger than :data:`MAX_ICC_BYTES` after all that is dropped. 64 KiB holds every
RGB profile a photo needs — matrix-and-curve profiles (sRGB, Adobe RGB, Display P3,
ProPhoto, camera profiles) are 0.5-4 KB, the ICC's LUT-based sRGB v4 profile is 60 KB —
while the profiles above it are printer and device-link tables that do not belong on a
photo; beyond it every byte is room for hidden data and weight on every output.
"""

from __future__ import annotations

import struct

#: The largest profile an output carries (see the module doc).
MAX_ICC_BYTES = 64 * 1024
_HEADER = 128
_MAX_TAGS = 100
_CLASSES = frozenset({b"mntr", b"scnr", b"spac"})  # display, input, colour space
_PCS = frozenset({b"XYZ ", b"Lab "})
#: Tags that say how to turn the pixels into colours, and nothing else.
COLOUR_TAGS = frozenset(
    {
        b"rXYZ", b"gXYZ", b"bXYZ", b"rTRC", b"gTRC", b"bTRC", b"kTRC", b"wtpt", b"bkpt", b"chad", b"chrm",
        b"lumi", b"cicp", b"meas", b"gamt", b"rig0", b"rig2", b"arts",
        b"A2B0", b"A2B1", b"A2B2", b"B2A0", b"B2A1", b"B2A2",
        b"D2B0", b"D2B1", b"D2B2", b"D2B3", b"B2D0", b"B2D1", b"B2D2", b"B2D3",
    }
)  # fmt: skip
#: Numeric tag types: a colour tag of any other type (text, say) is dropped.
_NUMERIC_TYPES = frozenset(
    {b"XYZ ", b"curv", b"para", b"sf32", b"mft1", b"mft2", b"mAB ", b"mBA ", b"chrm", b"meas", b"sig ",
     b"cicp", b"mpet", b"ui08", b"ui16", b"ui32", b"uf32"}
)  # fmt: skip
_DESCRIPTION = "RGB"


def output_profile(icc: bytes | None, *, keep_text: bool = False) -> tuple[bytes | None, str | None]:
    """``(profile to write, what was removed)`` for an input's RGB profile: removed is
    None (kept as it is), ``"icc-text"`` (rebuilt from its colour tags) or ``"icc"``
    (refused: written without a profile)."""
    if not icc:
        return None, None
    tags = _tags(icc)
    if tags is None:
        return None, "icc"
    if keep_text and len(icc) <= MAX_ICC_BYTES and int.from_bytes(icc[:4], "big") == len(icc):
        return bytes(icc), None
    rebuilt = _rebuild(icc, tags)
    if rebuilt is None or len(rebuilt) > MAX_ICC_BYTES:
        return None, "icc"
    return rebuilt, "icc-text"


def _tags(icc: bytes) -> list[tuple[bytes, int, int]] | None:
    """``(signature, offset, size)`` of each tag of a well-formed RGB profile, else None."""
    if len(icc) < _HEADER + 4:
        return None
    size = int.from_bytes(icc[:4], "big")
    if not _HEADER + 4 <= size <= len(icc) or icc[36:40] != b"acsp":
        return None
    if icc[12:16] not in _CLASSES or icc[16:20] != b"RGB " or icc[20:24] not in _PCS:
        return None
    (count,) = struct.unpack(">I", icc[_HEADER : _HEADER + 4])
    table_end = _HEADER + 4 + 12 * count
    if count > _MAX_TAGS or table_end > size:
        return None
    out = []
    for i in range(count):
        sig, offset, length = struct.unpack(">4sII", icc[_HEADER + 4 + 12 * i : _HEADER + 16 + 12 * i])
        if offset < table_end or length < 8 or offset + length > size:
            return None
        out.append((sig, offset, length))
    return out


def _rebuild(icc: bytes, tags: list[tuple[bytes, int, int]]) -> bytes | None:
    """A fresh profile: the cleared header, the colour tags of numeric types and a neutral
    description; tags that shared data still share it."""
    kept = [(sig, off, n) for sig, off, n in tags if sig in COLOUR_TAGS and icc[off : off + 4] in _NUMERIC_TYPES]
    if not kept:
        return None
    v4 = icc[8] >= 4
    entries: list[tuple[bytes, bytes]] = [(sig, icc[off : off + n]) for sig, off, n in kept]
    entries.append((b"desc", _mluc(_DESCRIPTION) if v4 else _text_description(_DESCRIPTION)))
    table_end = _HEADER + 4 + 12 * len(entries)
    body, table, placed = b"", b"", {}
    for sig, data in entries:
        if data not in placed:
            placed[data] = table_end + len(body)
            body += data + b"\0" * (-len(data) % 4)  # tag data starts on 4-byte boundaries
        table += struct.pack(">4sII", sig, placed[data], len(data))
    header = bytearray(icc[:_HEADER])
    for start, end in ((4, 8), (24, 36), (40, 64), (80, 128)):  # CMM, date, platform..device, creator, ID
        header[start:end] = bytes(end - start)
    total = table_end + len(body)
    header[0:4] = total.to_bytes(4, "big")
    return bytes(header) + struct.pack(">I", len(entries)) + table + body


def _mluc(text: str) -> bytes:
    """ICC v4 ``multiLocalizedUnicodeType`` with one en-US string."""
    s = text.encode("utf-16-be")
    return b"mluc" + bytes(4) + struct.pack(">II2s2sII", 1, 12, b"en", b"US", len(s), 28) + s


def _text_description(text: str) -> bytes:
    """ICC v2 ``textDescriptionType`` with an ASCII string and no Unicode or Mac text."""
    a = text.encode("ascii") + b"\0"
    return b"desc" + bytes(4) + struct.pack(">I", len(a)) + a + bytes(8) + bytes(3) + bytes(67)
