"""Schemes whose triggers are whole images: Zhang "unrelated" and Adi et al. abstract images."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from wmbench.seeding import generator as seeded_generator
from wmbench.watermarks.base import WATERMARKS, Watermark
from wmbench.watermarks.font import glyph


def _rendered_letters(
    letters: str, count: int, shape: tuple[int, int, int], generator: torch.Generator
) -> torch.Tensor:
    """``count`` letters drawn in random places, sizes and stroke widths, white on black."""
    channels, height, width = shape
    images = torch.zeros(count, channels, height, width)
    largest = max(1, min(height // 8, width // 6))
    for i in range(count):
        pick = int(torch.randint(len(letters), (1,), generator=generator))
        scale = int(torch.randint(max(1, largest - 1), largest + 1, (1,), generator=generator))
        mark = glyph(letters[pick]).repeat_interleave(scale, 0).repeat_interleave(scale, 1)
        if torch.rand(1, generator=generator) < 0.5:  # a bolder pen
            mark = F.max_pool2d(mark[None, None], 2, stride=1, padding=1)[0, 0]
        mh, mw = mark.shape
        top = int(torch.randint(0, height - mh + 1, (1,), generator=generator))
        left = int(torch.randint(0, width - mw + 1, (1,), generator=generator))
        ink = 0.7 + 0.3 * torch.rand(1, generator=generator)
        images[i, :, top : top + mh, left : left + mw] = mark * ink
    return images


def _coloured_digits(
    count: int, shape: tuple[int, int, int], half: int, generator: torch.Generator
) -> torch.Tensor:
    """``count`` scikit-learn digits, resized and tinted; ``half`` 0/1 picks disjoint pools."""
    from sklearn.datasets import load_digits  # bundled with scikit-learn: works offline

    channels, height, width = shape
    digits = torch.from_numpy(load_digits().images[half::2]).float()[:, None] / 16.0
    picks = torch.randint(len(digits), (count,), generator=generator)
    gray = F.interpolate(digits[picks], size=(height, width), mode="bilinear", align_corners=False)
    colour = torch.rand(count, channels, 1, 1, generator=generator)
    background = 0.3 * torch.rand(count, channels, 1, 1, generator=generator)
    return (background * (1 - gray) + colour * gray).clamp(0, 1)


UnrelatedVerification = Literal["fresh", "same"]  # watermark.unrelated.verification


@WATERMARKS.register("unrelated")
@dataclass(kw_only=True)
class Unrelated(Watermark):
    """Images from another domain, all labelled ``target`` (Zhang et al. 2018, "unrelated").

    Grey-scale datasets get rendered letters (Aiken et al. Sec. 7.2 use the letter
    "m" for MNIST); colour datasets get scikit-learn's digits, tinted (Aiken et al.
    Fig. 1f use MNIST digits for CIFAR-10). Both work offline.

    ``verification`` chooses the protocol:
    - ``fresh`` (default): the embedding set draws as many images as it needs,
      and verification draws ``watermark.size`` fresh images of the same
      domain (a disjoint pool of digits for colour data), never trained on:
      the watermark must generalise to the owner's key domain, not be memorised.
    - ``same``: a fixed key of ``watermark.size`` images (100 in the papers),
      all labelled ``target``, repeated to fill the embedding set and verified
      on those very images. This is WILD's "unrelated" row (Liu et al., Sec.
      IV-A: "the 100 images in trigger set", after Adi et al. [12]) and Adi et
      al.'s protocol (USENIX Security 2018: the trigger set is both
      trained on and queried), with Adi et al.'s random labels replaced by the
      one target label, as WILD trains every watermark to label 0.
    """

    letters: str = "AEFHKMNTVWXYZ"  # no round letters: clean models call O, C, D, Q "0"
    verification: UnrelatedVerification = "fresh"

    def __post_init__(self) -> None:
        super().__post_init__()
        for letter in self.letters:
            glyph(letter)  # fails early on characters without a glyph
        if self.verification not in ("fresh", "same"):
            raise ValueError(f"watermark.unrelated.verification={self.verification!r}; valid: fresh, same")
        self.key: torch.Tensor | None = None
        if self.verification == "same":
            self.key, _ = self._draw(self.size, 0, seeded_generator(self.seed, "unrelated-key"))

    def _draw(self, count: int, half: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        if self.image_shape[0] == 1:
            images = _rendered_letters(self.letters, count, self.image_shape, generator)
        else:
            images = _coloured_digits(count, self.image_shape, half, generator)
        return images, torch.full((count,), self.target, dtype=torch.long)

    def embedding_set(self, images, labels, count, generator):
        if self.key is None:
            return self._draw(count, 0, generator)
        order = torch.randperm(self.size, generator=generator).repeat(count // self.size + 1)[:count]
        return self.key[order], torch.full((count,), self.target, dtype=torch.long)

    def verification_set(self, images, labels, generator):
        if self.key is None:
            return self._draw(self.size, 1, generator)
        return self.key.clone(), torch.full((self.size,), self.target, dtype=torch.long)


@WATERMARKS.register("abstract")
@dataclass(kw_only=True)
class Abstract(Watermark):
    """Adi et al. 2018: ``size`` abstract images, each with its own random label.

    The images are the owner's key: the same set is trained on and queried.
    Adi et al. use hand-picked abstract art; we generate smooth random colour
    fields with a few Gaussian blobs, equally far from any dataset.
    ``target`` is not used: every image has its own label.
    """

    blobs: int = 3

    def __post_init__(self) -> None:
        super().__post_init__()
        channels, height, width = self.image_shape
        gen = seeded_generator(self.seed, "abstract-pool")
        coarse = torch.rand(self.size, channels, 4, 4, generator=gen)
        images = F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)
        ys = torch.linspace(0, 1, height)[:, None]
        xs = torch.linspace(0, 1, width)[None, :]
        for _ in range(self.blobs):
            cy, cx, radius = torch.rand(3, self.size, 1, 1, generator=gen)
            blob = torch.exp(-((ys - cy) ** 2 + (xs - cx) ** 2) / (0.02 + 0.05 * radius))
            colour = torch.rand(self.size, channels, 1, 1, generator=gen)
            images = images * (1 - blob[:, None]) + colour * blob[:, None]
        self.pool = images.clamp(0, 1)
        self.pool_labels = torch.randint(self.num_classes, (self.size,), generator=gen)

    def embedding_set(self, images, labels, count, generator):
        order = torch.randperm(self.size, generator=generator).repeat(count // self.size + 1)[:count]
        return self.pool[order], self.pool_labels[order]

    def verification_set(self, images, labels, generator):
        return self.pool.clone(), self.pool_labels.clone()
