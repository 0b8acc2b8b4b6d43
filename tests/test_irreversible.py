"""Irreversibility shown by attacks, and the looks that go with it (no grain, true block
averages, no sharper oval inside a hidden person). Real photos, the real engine."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from skimage import restoration

from veil.detection.types import Detection
from veil.masking import block_size, mask_detections, region_mask
from veil.pipeline.options import Options

FACE = (180.0, 66.0, 270.0, 176.0)  # the astronaut's face
CORE = (slice(86, 156), slice(195, 255))  # well inside its ellipse


def _psf(sigma: float) -> np.ndarray:
    r = int(3 * sigma)
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    k = np.exp(-(xx**2 + yy**2) / (2 * sigma**2))
    return k / k.sum()


def _deconvolved(rgb: np.ndarray, box, kind: str, sigma: float | None = None) -> np.ndarray:
    """Richardson-Lucy or Wiener deconvolution of the region around ``box``, with a
    Gaussian PSF of ``sigma`` (default: half a block of that face at strength 0)."""
    x1, y1, x2, y2 = (int(v) for v in box)
    w, h = x2 - x1, y2 - y1
    X0, Y0, X1, Y1 = max(0, x1 - w // 2), max(0, y1 - h // 2), min(rgb.shape[1], x2 + w // 2), min(rgb.shape[0], y2 + h // 2)
    crop = rgb[Y0:Y1, X0:X1].astype(np.float64) / 255.0
    psf = _psf(sigma or max(1.0, block_size((w * h) ** 0.5, 0) / 2))
    out = np.empty_like(crop)
    for c in range(3):
        if kind == "rl":
            out[..., c] = restoration.richardson_lucy(crop[..., c], psf, num_iter=30)
        else:
            out[..., c] = restoration.wiener(crop[..., c], psf, balance=0.01)
    res = rgb.copy()
    res[Y0:Y1, X0:X1] = (np.clip(out, 0, 1) * 255 + 0.5).astype(np.uint8)
    return res


def _detail(gray: np.ndarray) -> np.ndarray:
    """Band-pass detail (eyes, mouth, nose at this size): difference of Gaussians."""
    g = gray.astype(np.float64)
    return cv2.GaussianBlur(g, (0, 0), 1.0) - cv2.GaussianBlur(g, (0, 0), 4.0)


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel() - a.mean(), b.ravel() - b.mean()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-9))


@pytest.mark.parametrize("style", ["blur", "pixelate"])
def test_deconvolution_restores_no_face_detail(style, astronaut_rgb):
    """Richardson-Lucy and Wiener bring back the face detail of a plain Gaussian blur (the
    control, sigma 4 px: correlation with the original's detail > 0.65); on veil's mask at strength 0, whatever PSF the attacker guesses
    (2 px, 4 px, half a block), the restored detail does not correlate with the face's
    (|r| < 0.15): there is nothing left to restore."""
    gray = lambda im: cv2.cvtColor(im, cv2.COLOR_RGB2GRAY)  # noqa: E731
    truth = _detail(gray(astronaut_rgb))[CORE]
    plain = cv2.GaussianBlur(astronaut_rgb, (0, 0), 4.0)
    masked, _ = mask_detections(astronaut_rgb, [Detection("face", 0.9, FACE)], Options(style=style, strength=0), rng=np.random.default_rng(0))
    for kind in ("rl", "wiener"):
        control = _corr(_detail(gray(_deconvolved(plain, FACE, kind, 4.0)))[CORE], truth)
        assert control > 0.65, (kind, control)
        for sigma in (2.0, 4.0, None):
            attacked = _corr(_detail(gray(_deconvolved(masked, FACE, kind, sigma)))[CORE], truth)
            assert abs(attacked) < 0.15, (kind, sigma, attacked)


def test_deconvolved_masks_are_no_more_a_face_to_the_detector(engine, astronaut_rgb, hopper_rgb):
    """The strongest face detector (YOLO11m) on a deconvolved mask sees no more face than
    on the same attack of a flat patch of the face's mean colour (+0.05)."""
    from test_pipeline import face_score, flat_patch

    for rgb in (astronaut_rgb, hopper_rgb):
        faces = [d for d in engine.detect(rgb, ("face",)) if d.target == "face"]
        assert len(faces) == 1
        flat = flat_patch(rgb, faces)
        for kind in ("rl", "wiener"):
            base = face_score(engine, _deconvolved(flat, faces[0].box, kind), faces[0])
            for style in ("blur", "pixelate"):
                masked, _ = mask_detections(rgb, faces, Options(style=style, strength=0), rng=np.random.default_rng(0))
                got = face_score(engine, _deconvolved(masked, faces[0].box, kind), faces[0])
                assert got <= base + 0.05, (style, kind, got, base)


def test_averaging_many_maskings_does_not_approach_the_face(astronaut_rgb):
    """The randomness is dithering of colours already destroyed: the mean of 16 maskings
    (different rng) is no closer to the original face than one masking (within 10%)."""
    face = [Detection("face", 0.9, FACE)]
    for style in ("blur", "pixelate"):
        runs = [mask_detections(astronaut_rgb, face, Options(style=style, strength=0), rng=np.random.default_rng(s))[0][CORE].astype(np.float64)
                for s in range(16)]  # fmt: skip
        truth = astronaut_rgb[CORE].astype(np.float64)
        one = np.sqrt(((runs[0] - truth) ** 2).mean())
        mean = np.sqrt(((np.mean(runs, axis=0) - truth) ** 2).mean())
        assert mean >= 0.9 * one, (style, mean, one)
        assert one > 15  # and far from the face to begin with
    a = mask_detections(astronaut_rgb, face, Options(), rng=np.random.default_rng(1))[0]
    assert np.array_equal(a, mask_detections(astronaut_rgb, face, Options(), rng=np.random.default_rng(1))[0])
    assert not np.array_equal(a, mask_detections(astronaut_rgb, face, Options(), rng=np.random.default_rng(2))[0])


@pytest.mark.parametrize("strength", [0, 30, 100])
def test_blur_has_no_grain(strength, astronaut_rgb):
    """The blur's high-frequency energy (Laplacian variance) is that of a plain strong
    Gaussian blur, not of grain (the old frosted blur: hundreds)."""
    out, _ = mask_detections(astronaut_rgb, [Detection("face", 0.9, FACE)], Options(strength=strength), rng=np.random.default_rng(0))
    lap = cv2.Laplacian(cv2.cvtColor(out, cv2.COLOR_RGB2GRAY).astype(np.float64), cv2.CV_64F)[CORE].var()
    plain = cv2.GaussianBlur(astronaut_rgb, (0, 0), 8.0)
    ref = cv2.Laplacian(cv2.cvtColor(plain, cv2.COLOR_RGB2GRAY).astype(np.float64), cv2.CV_64F)[CORE].var()
    assert lap < max(2 * ref, 1.0), (lap, ref)


def test_pixelate_blocks_are_true_averages_and_follow_the_ellipse(astronaut_rgb):
    """Inside the shape each block is the mean of exactly its pixels (quantized to 4
    levels); outside the feathered ellipse nothing changes; the feather blends."""
    det = Detection("face", 0.9, FACE)
    opts = Options(style="pixelate", strength=0, feather=0.3)
    out, _ = mask_detections(astronaut_rgb, [det], opts)
    m = region_mask(det, "ellipse", margin=1.3, feather=0.3, width=512, height=512)
    x0, y0, x1, y1 = m.rect
    src, got = astronaut_rgb[y0:y1, x0:x1].astype(np.float64), out[y0:y1, x0:x1].astype(np.float64)
    assert np.array_equal(got[m.alpha == 0], src[m.alpha == 0])  # corners of the rectangle: untouched
    soft = (m.alpha > 0.2) & (m.alpha < 0.8)
    assert soft.sum() > 100 and (np.abs(got - src).sum(axis=2)[soft] > 0).mean() > 0.5
    h, w = m.alpha.shape
    block = block_size(m.size, 0, "pixelate")
    nw, nh = max(1, round(w / block)), max(1, round(h / block))
    xs, ys = np.floor(np.arange(nw + 1) * (w / nw)).astype(int), np.floor(np.arange(nh + 1) * (h / nh)).astype(int)
    checked = 0
    for j in range(nh):
        for i in range(nw):
            cell = (slice(ys[j], ys[j + 1]), slice(xs[i], xs[i + 1]))
            inside = m.alpha[cell] == 1
            if inside.all():
                assert np.abs(got[cell][inside] - src[cell].reshape(-1, 3).mean(axis=0)).max() <= 2.5
                checked += 1
    assert checked >= 4


def test_a_face_inside_a_hidden_person_blends_in(astronaut_rgb):
    """No sharper or lighter oval where a face lies inside a blurred person box: the face
    layer is rendered from the blurred person, so it barely changes it."""
    person = Detection("person", 0.9, (20.0, 20.0, 400.0, 512.0))
    face = Detection("face", 0.9, FACE)
    alone, _ = mask_detections(astronaut_rgb, [person], Options(targets=("face", "person")), rng=np.random.default_rng(0))
    both, _ = mask_detections(astronaut_rgb, [person, face], Options(targets=("face", "person")), rng=np.random.default_rng(0))
    diff = np.abs(both[CORE].astype(np.float64) - alone[CORE].astype(np.float64)).mean(axis=2)
    assert diff.mean() < 4, diff.mean()
    # while the face alone on the photo is a large change of those pixels
    face_only, _ = mask_detections(astronaut_rgb, [face], Options(), rng=np.random.default_rng(0))
    assert np.abs(face_only[CORE].astype(np.float64) - astronaut_rgb[CORE].astype(np.float64)).mean() > 15
