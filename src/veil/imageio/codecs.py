"""Pillow as veil opens images with it: HEIF and AVIF registered, Pillow's own pixel guard
above veil's (which would only warn below it; above 2x it errors).

Every module that opens image bytes with Pillow imports this one (the decoder, the
encoder, the server's header checks), so none depends on what another module happened to
import first: the server checks an upload's header before any decoder is loaded.
"""

from __future__ import annotations

import pillow_heif
from PIL import Image

from veil.imageio.limits import DEFAULT_LIMITS

pillow_heif.register_heif_opener()
Image.MAX_IMAGE_PIXELS = max(Image.MAX_IMAGE_PIXELS or 0, DEFAULT_LIMITS.max_pixels)
