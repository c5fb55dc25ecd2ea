"""Schemes that stamp a pattern on real images: Zhang content and noise, BadNets square."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import torch

from wmbench.seeding import generator as seeded_generator
from wmbench.watermarks.base import WATERMARKS, StampWatermark
from wmbench.watermarks.font import render_text

NoiseDraw = Literal["fixed", "per_image"]  # watermark.noise.draw
SquarePosition = Literal["bottom_right", "bottom_left", "top_right", "top_left"]  # watermark.square.position


def _check_choice(key: str, value: str, kind: object) -> None:
    """``ValueError`` naming ``key`` and the valid values when ``value`` is not one of ``kind``'s."""
    valid = get_args(kind)
    if value not in valid:
        raise ValueError(f"{key}={value!r}; valid: {', '.join(valid)}")


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
    ``intensity`` over the image. WILD's "Content-based" rows (Tables II, III)
    are a square, not text: that is the ``square`` scheme (Sec. IV-A).
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

    def apply(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        mask = self.mask.to(images.device)
        return images * (1 - mask) + self.intensity * mask


@WATERMARKS.register("noise")
@dataclass(kw_only=True)
class Noise(StampWatermark):
    """Gaussian noise added to the image and clipped (Zhang et al., AsiaCCS 2018, "noise").

    Zhang et al. add pre-specified Gaussian noise to training images of the
    source class and relabel them (Aiken et al., Sec. 2.1: "pre-specified
    (Gaussian) noise over some subset of training images"; WILD, Sec. II-C:
    "specific noise (e.g., Gaussian noise)", and Sec. IV-A "using the setting
    in [9]"). None of these sources states the noise's strength; ``std`` 0.3
    in [0, 1] pixel units is our choice (the default of Lukas et al.'s
    Watermark-Robustness-Toolbox, SoK, IEEE S&P 2022, for this scheme).

    ``draw`` says what "pre-specified" fixes:
    - ``fixed`` (default): one pattern, N(0, ``std``^2) per pixel, drawn once
      from the scheme's seed: the owner's secret key, the same for every
      image, embedded and verified alike. The closest reading of "pre-specified
      noise" and of WILD's "specific noise".
    - ``per_image``: the distribution is the key; every stamped image gets its
      own draw, so verification images carry noise never trained on (the
      reading of Lukas et al.'s toolbox).
    """

    std: float = 0.3
    draw: NoiseDraw = "fixed"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.std <= 0:
            raise ValueError(f"watermark.noise.std must be positive, got {self.std}")
        _check_choice("watermark.noise.draw", self.draw, NoiseDraw)
        gen = seeded_generator(self.seed, "noise-pattern")
        self.pattern = torch.randn(self.image_shape, generator=gen) * self.std

    def apply(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Add the noise; ``per_image`` draws from ``generator`` (or the scheme's seed when none)."""
        if self.draw == "fixed":
            noise = self.pattern.to(images.device)
        else:
            gen = generator if generator is not None else seeded_generator(self.seed, "noise-per-image")
            noise = (torch.randn(images.shape, generator=gen, device=gen.device) * self.std).to(images.device)
        return (images + noise).clamp(0, 1)


@WATERMARKS.register("square")
@dataclass(kw_only=True)
class Square(StampWatermark):
    """A filled square in a corner of the image (WILD Sec. IV-A; Gu et al., BadNets).

    WILD's "content" row uses a "square trigger at the bottom-right corner"
    (Liu et al., Sec. IV-A, following Gao et al., STRIP, their [31]); BadNets'
    MNIST triggers sit at the bottom-right corner too (Gu et al., MNIST case study).
    WILD does not give the square's size.

    - ``side``: the square's width in pixels; 4 is our choice.
    - ``position``: the corner, ``bottom_right`` (default, as the papers) |
      ``bottom_left`` | ``top_right`` | ``top_left``.
    - ``margin``: pixels between the square and the corner's two edges.
    - ``intensity``: the value the square is drawn with (1 = white).
    """

    side: int = 4
    margin: int = 1
    intensity: float = 1.0
    position: SquarePosition = "bottom_right"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.side < 1 or self.margin < 0:
            raise ValueError("watermark.square.side must be >= 1 and margin >= 0")
        _check_choice("watermark.square.position", self.position, SquarePosition)
        vertical, horizontal = self.position.split("_")
        row = self.margin if vertical == "top" else -1 - self.margin
        col = self.margin if horizontal == "left" else -1 - self.margin
        self.mask = _place(self.image_shape, torch.ones(self.side, self.side), row, col)

    def apply(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        mask = self.mask.to(images.device)
        return images * (1 - mask) + self.intensity * mask
