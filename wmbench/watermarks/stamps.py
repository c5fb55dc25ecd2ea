"""Schemes that stamp a pattern on real images: Zhang content and noise, BadNets square."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from wmbench.seeding import generator as seeded_generator
from wmbench.watermarks.base import WATERMARKS, StampWatermark
from wmbench.watermarks.font import render_text


def _place(image_shape: tuple[int, int, int], mark: torch.Tensor, row: int, col: int) -> torch.Tensor:
    """An (H, W) canvas with ``mark`` at (row, col); negative positions count from the far edge."""
    _, height, width = image_shape
    mh, mw = mark.shape
    top = row if row >= 0 else height - mh + row + 1
    left = col if col >= 0 else width - mw + col + 1
    if top < 0 or left < 0 or top + mh > height or left + mw > width:
        raise ValueError(
            f"a {mh}x{mw} mark at row {row}, col {col} does not fit {height}x{width} images; "
            "make it smaller or move it"
        )
    canvas = torch.zeros(height, width)
    canvas[top : top + mh, left : left + mw] = mark
    return canvas


@WATERMARKS.register("content")
@dataclass(kw_only=True)
class Content(StampWatermark):
    """Meaningful content stamped on the image (Zhang et al. 2018, "content"; WILD Fig. 5).

    ``text`` in a 5x7 bitmap font, upscaled by ``scale``, with its top-left corner
    at (``row``, ``col``) (negative = from the bottom / right edge), drawn at
    ``intensity`` over the image.
    """

    text: str = "TEST"
    row: int = -2
    col: int = 2
    scale: int = 1
    intensity: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.scale < 1:
            raise ValueError(f"watermark.content.scale must be >= 1, got {self.scale}")
        self.mask = _place(self.image_shape, render_text(self.text, self.scale), self.row, self.col)

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        mask = self.mask.to(images.device)
        return images * (1 - mask) + self.intensity * mask


@WATERMARKS.register("noise")
@dataclass(kw_only=True)
class Noise(StampWatermark):
    """A fixed Gaussian noise pattern added to the image and clipped (Zhang et al. 2018, "noise").

    The pattern, N(0, ``std``^2) per pixel, is drawn once from the scheme's seed:
    it is the owner's secret key, the same for every image.
    """

    std: float = 0.3

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.std <= 0:
            raise ValueError(f"watermark.noise.std must be positive, got {self.std}")
        gen = seeded_generator(self.seed, "noise-pattern")
        self.pattern = torch.randn(self.image_shape, generator=gen) * self.std

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        return (images + self.pattern.to(images.device)).clamp(0, 1)


@WATERMARKS.register("square")
@dataclass(kw_only=True)
class Square(StampWatermark):
    """A filled square at the bottom-right corner (Gu et al., BadNets; WILD Sec. IV-A).

    ``side`` pixels wide, ``margin`` pixels from the corner, drawn at ``intensity``.
    """

    side: int = 4
    margin: int = 1
    intensity: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.side < 1 or self.margin < 0:
            raise ValueError("watermark.square.side must be >= 1 and margin >= 0")
        self.mask = _place(
            self.image_shape, torch.ones(self.side, self.side), -1 - self.margin, -1 - self.margin
        )

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        mask = self.mask.to(images.device)
        return images * (1 - mask) + self.intensity * mask
