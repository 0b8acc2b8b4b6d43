"""Is this upload a video? Decided from its first bytes, never from a name or a declared type.

Only the container families veil hands to FFmpeg are recognised: ISO base media (MP4, MOV,
M4V, 3GP) with a video brand, Matroska/WebM, AVI, MPEG transport streams (188-byte
packets, and M2TS's 192-byte ones from Blu-ray discs and AVCHD camcorders) and FLV. An ISO
file with an image brand (HEIC, AVIF) is a photo, and the photo reader takes it.
"""

from __future__ import annotations

#: ISO-BMFF major/compatible brands of still images: those files go to the photo reader.
_IMAGE_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs", b"mif1", b"msf1",
                 b"mif2", b"avif", b"avis"}  # fmt: skip
#: How many bytes :func:`is_video` wants to look at.
SNIFF_BYTES = 4096


def sniff_container(head: bytes) -> str | None:
    """``mp4``, ``mov``, ``matroska``, ``avi``, ``mpegts`` or ``flv``; None for anything else."""
    if len(head) >= 12 and head[4:8] == b"ftyp":
        major = head[8:12]
        if major in _IMAGE_BRANDS:
            return None
        return "mov" if major == b"qt  " else "mp4"
    if len(head) >= 8 and head[4:8] in (b"moov", b"mdat", b"wide", b"free", b"skip") and head[:4] != b"\0\0\0\0":
        return "mov"  # old QuickTime files start with an atom other than ftyp
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "matroska"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "avi"
    if head[:3] == b"FLV":
        return "flv"
    if len(head) >= 377 and head[0] == 0x47 and head[188] == 0x47 and head[376] == 0x47:
        return "mpegts"
    if len(head) >= 389 and head[4] == 0x47 and head[196] == 0x47 and head[388] == 0x47:
        return "mpegts"  # M2TS (Blu-ray, AVCHD): 192-byte packets, a 4-byte timestamp before each
    return None


def is_video(head: bytes) -> bool:
    """True when ``head`` (the first :data:`SNIFF_BYTES` bytes or so) starts a video container."""
    return sniff_container(head) is not None
