"""Watermark trigger schemes by name (``watermark.scheme`` in params.yaml)."""

from wmbench.watermarks import generated, stamps  # noqa: F401  (register)
from wmbench.watermarks.base import WATERMARKS, StampWatermark, Watermark, build_watermark

__all__ = ["WATERMARKS", "StampWatermark", "Watermark", "build_watermark"]
