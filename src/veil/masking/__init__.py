"""Masking: how hidden regions look (styles), where they are (shapes), and the blend (compose)."""

from veil.masking.compose import MaskedRegion, mask_detections
from veil.masking.shapes import RegionMask, region_mask
from veil.masking.styles import block_size, render

__all__ = ["MaskedRegion", "RegionMask", "block_size", "mask_detections", "region_mask", "render"]
