"""Masking: how hidden regions look (styles), where they are (shapes), and the blend (compose)."""

from veil.masking.compose import MaskedRegion, footprints, mask_detections
from veil.masking.shapes import RegionMask, RegionPlan, plan_region, region_mask
from veil.masking.styles import block_size, render

__all__ = ["MaskedRegion", "RegionMask", "RegionPlan", "block_size", "footprints", "mask_detections", "plan_region", "region_mask", "render"]
