"""Privacy leftovers: onnxruntime's telemetry database, ICC profiles on output."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


def test_running_a_model_leaves_no_telemetry_database(tmp_path, photos):
    """onnxruntime writes ``.onnxruntime/onnxruntime.db`` (and a device id) under the
    user's cache as soon as it is loaded, unless veil switches its telemetry off."""
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "ORT_DISABLE_TELEMETRY"}
    env.update(HOME=str(home), XDG_CACHE_HOME=str(home / ".cache"), VEIL_HOME=os.environ["VEIL_HOME"])
    code = (
        "import json, sys; from veil.detection.engine import get_engine; from veil.imageio import load_image; "
        "dets = get_engine('fast').detect(load_image(sys.argv[1]).rgb, ('face',)); print(json.dumps(len(dets)))"
    )
    out = subprocess.run([sys.executable, "-c", code, str(photos["astronaut"])], env=env, capture_output=True,
                         text=True, timeout=300, cwd=tmp_path)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) >= 1, "the face model did not run"
    left = [str(p.relative_to(home)) for p in home.rglob("*")]
    assert not any(".onnxruntime" in p or p.endswith(".db") or "deviceid" in p for p in left), left


# -- ICC profiles ---------------------------------------------------------------------------
SECRET = "Jane Doe, 12 Hidden Lane"


def _srgb() -> bytes:
    from PIL import ImageCms

    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def _profile(extra: dict[bytes, bytes], pad: int = 0) -> bytes:
    """Pillow's sRGB profile (its colour tags as they are) with ``extra`` tags replacing
    or joining its own, and ``pad`` bytes of junk after the tags (counted in its size)."""
    import struct

    base = _srgb()
    (count,) = struct.unpack(">I", base[128:132])
    tags = {}
    for i in range(count):
        sig, off, n = struct.unpack(">4sII", base[132 + 12 * i : 144 + 12 * i])
        tags[sig] = base[off : off + n]
    tags.update(extra)
    table_end = 132 + 12 * len(tags)
    body, table = b"", b""
    for sig, data in tags.items():
        table += struct.pack(">4sII", sig, table_end + len(body), len(data))
        body += data + b"\0" * (-len(data) % 4)
    body += (SECRET.encode() * (pad // len(SECRET) + 1))[:pad]
    header = bytearray(base[:128])
    header[48:52] = b"JANE"  # device manufacturer
    header[0:4] = (table_end + len(body)).to_bytes(4, "big")
    return bytes(header) + struct.pack(">I", len(tags)) + table + body


def _mluc(text: str) -> bytes:
    import struct

    s = text.encode("utf-16-be")
    return b"mluc" + bytes(4) + struct.pack(">II2s2sII", 1, 12, b"en", b"US", len(s), 28) + s


def _text(text: str) -> bytes:
    return b"text" + bytes(4) + text.encode() + b"\0"


def _tagged_profile(pad: int = 0) -> bytes:
    return _profile({b"desc": _mluc(SECRET), b"cprt": _mluc(SECRET), b"dmnd": _mluc(SECRET),
                     b"dmdd": _mluc(SECRET), b"priv": _text(SECRET), b"rXYZ": _srgb_tag(b"rXYZ"),
                     b"gTRC": _srgb_tag(b"gTRC")}, pad)  # fmt: skip


def _srgb_tag(sig: bytes) -> bytes:
    import struct

    base = _srgb()
    for i in range(struct.unpack(">I", base[128:132])[0]):
        s, off, n = struct.unpack(">4sII", base[132 + 12 * i : 144 + 12 * i])
        if s == sig:
            return base[off : off + n]
    raise KeyError(sig)


def _photo(rgb, icc: bytes, fmt: str = "JPEG") -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format=fmt, icc_profile=icc)
    return buf.getvalue()


def _anonymized(data: bytes, **options):
    from veil.pipeline.core import anonymize_bytes
    from veil.pipeline.options import Options

    return anonymize_bytes(data, Options.from_mapping(options), regions=[])  # nothing to hide: metadata only


def _icc_of(data: bytes) -> bytes | None:
    import io

    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return im.info.get("icc_profile")


def _lab(icc: bytes, rgb):
    import io

    import numpy as np
    from PIL import Image, ImageCms

    lab = ImageCms.profileToProfile(Image.fromarray(rgb), ImageCms.ImageCmsProfile(io.BytesIO(icc)),
                                    ImageCms.createProfile("LAB"), outputMode="LAB")  # fmt: skip
    return np.asarray(lab)


@pytest.mark.parametrize("fmt", ["jpeg", "png", "webp", "tiff", "heif"])
def test_text_in_an_icc_profile_does_not_survive_by_default(fmt, astronaut_rgb):
    rgb = astronaut_rgb[:128, :128]
    icc = _tagged_profile()
    assert SECRET.encode("utf-16-be") in icc and b"JANE" in icc
    result = _anonymized(_photo(rgb, icc), format=fmt)
    out = _icc_of(result.data)
    assert out, "the colour profile itself is kept"
    assert SECRET.encode() not in out and SECRET.encode("utf-16-be") not in out and b"JANE" not in out
    if fmt in ("jpeg", "tiff"):  # stored uncompressed: no trace anywhere in the file either
        assert SECRET.encode() not in result.data and SECRET.encode("utf-16-be") not in result.data
    assert (_lab(out, rgb) == _lab(icc, rgb)).all(), "the colours must not change"
    assert "icc-text" in result.report.metadata_removed and "icc" in result.report.metadata_kept


def test_keep_metadata_icc_keeps_the_profile_as_it_is(astronaut_rgb):
    icc = _tagged_profile()
    result = _anonymized(_photo(astronaut_rgb[:64, :64], icc), keep_metadata=["icc"])
    assert _icc_of(result.data) == icc
    assert "icc" in result.report.metadata_kept and not any(m.startswith("icc") for m in result.report.metadata_removed)


@pytest.mark.parametrize("keep", [[], ["icc"]])
def test_a_16_mb_profile_does_not_make_a_16_mb_output(keep, astronaut_rgb):
    from veil.imageio.icc import MAX_ICC_BYTES

    rgb = astronaut_rgb[:64, :64]
    big = _tagged_profile(pad=16 * 1024 * 1024)
    result = _anonymized(_photo(rgb, big, "WEBP"), keep_metadata=keep, format="jpeg")
    plain = _anonymized(_photo(rgb, _srgb(), "WEBP"), format="jpeg")
    assert len(result.data) < len(plain.data) + MAX_ICC_BYTES
    out = _icc_of(result.data)
    assert out and len(out) <= MAX_ICC_BYTES and SECRET.encode() not in out
    assert (_lab(out, rgb) == _lab(_srgb(), rgb)).all()


def test_a_profile_that_is_not_a_sane_rgb_profile_is_dropped(astronaut_rgb):
    rgb = astronaut_rgb[:64, :64]
    printer = bytearray(_tagged_profile())
    printer[12:16] = b"prtr"  # an output (printer) class
    bad_table = bytearray(_tagged_profile())
    bad_table[128:132] = (10_000).to_bytes(4, "big")  # more tags than the profile has room for
    for icc in (bytes(printer), bytes(bad_table), SECRET.encode() * 20):
        result = _anonymized(_photo(rgb, icc))
        assert _icc_of(result.data) is None
        assert "icc" in result.report.metadata_removed and "icc" not in result.report.metadata_kept
