"""Mask2Former for semantic segmentation of recycling-trash photos."""
