"""The watermark-scheme registry and the two kinds of scheme.

A scheme makes two sets: the *embedding* set mixed into the owner's training
data, and the *verification* (trigger) set the owner later queries. Images are
float tensors in [0, 1], shape (N, C, H, W); labels are the watermark labels.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import torch

from wmbench.registry import Registry

WATERMARKS: Registry[type[Watermark]] = Registry("watermark scheme")


@dataclass(kw_only=True)
class Watermark(ABC):
    """What every scheme knows: the target label, the data's shape, the key seed.

    ``size`` is the number of images in the verification trigger set.
    """

    target: int
    image_shape: tuple[int, int, int]
    num_classes: int
    seed: int
    size: int = 100

    def __post_init__(self) -> None:
        if not 0 <= self.target < self.num_classes:
            raise ValueError(
                f"watermark.target {self.target} is not a class; use 0..{self.num_classes - 1}"
            )
        if self.size < 1:
            raise ValueError(f"watermark.size must be at least 1, got {self.size}")

    @abstractmethod
    def embedding_set(
        self, images: torch.Tensor, labels: torch.Tensor, count: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``count`` watermarked training samples, made from the owner's images where needed."""

    @abstractmethod
    def verification_set(
        self, images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``size`` trigger inputs for ownership checks, from held-out images where needed."""

    @classmethod
    def option_names(cls) -> list[str]:
        """The scheme's own options (``watermark.<scheme>.*`` in params.yaml)."""
        common = {f.name for f in dataclasses.fields(Watermark)}
        return [f.name for f in dataclasses.fields(cls) if f.name not in common]

    def option_key(self, option: str) -> str:
        """``watermark.<scheme>.<option>``, for messages that name the key to fix."""
        return f"watermark.{type(self).__name__.lower()}.{option}"


@dataclass(kw_only=True)
class StampWatermark(Watermark):
    """A scheme that stamps a pattern onto real images (Zhang content / noise, BadNets square).

    Both sets use only images whose true label differs from the target, so a
    correct prediction never counts as a watermark hit. Where the source class
    has fewer images than a set needs, its images repeat.

    ``source_classes``: the true classes whose images are stamped. ``[]`` (the
    default) stamps every class but the target: our reading of WILD (Liu et
    al., Sec. IV-A), which trains "data points applied with watermark trigger"
    to label 0 and names no source class. Zhang et al. (AsiaCCS 2018,
    watermark generation, content and noise watermarks) stamp one source
    class instead, e.g. "automobile" images labelled "airplane": ``[1]`` with
    ``watermark.target: 0`` on CIFAR-10. The embedding set stamps the owner's
    images of these classes, the verification set held-out test images of
    the same classes.
    """

    source_classes: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__post_init__()
        key = self.option_key("source_classes")
        for label in self.source_classes:
            if not 0 <= label < self.num_classes:
                raise ValueError(f"{key}: {label} is not a class; use 0..{self.num_classes - 1}, or [] for all")
            if label == self.target:
                raise ValueError(
                    f"{key}: {label} is watermark.target; a trigger must come from another class"
                )

    @abstractmethod
    def apply(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Stamp the pattern onto ``images`` (N, C, H, W) in [0, 1]; returns new images.

        ``generator`` feeds schemes that draw per image (noise with ``draw: per_image``).
        """

    def stamped_classes(self, labels: torch.Tensor) -> torch.Tensor:
        """Which of ``labels`` belong to the classes this scheme stamps (bool, same shape)."""
        if self.source_classes:
            return torch.isin(labels, torch.tensor(self.source_classes, dtype=labels.dtype))
        return labels != self.target

    def _stamped(
        self, images: torch.Tensor, labels: torch.Tensor, count: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        keep = self.stamped_classes(labels)
        wanted = (f"of source class(es) {self.source_classes}" if self.source_classes
                  else "with a label other than watermark.target")
        candidates = torch.nonzero(keep).flatten()
        if len(candidates) == 0:
            raise ValueError(f"no image {wanted} to stamp")
        order = torch.randperm(len(candidates), generator=generator)
        picks = candidates[order.repeat(count // len(candidates) + 1)[:count]]
        marked = self.apply(images[picks], generator)
        return marked, torch.full((count,), self.target, dtype=torch.long)

    def embedding_set(self, images, labels, count, generator):
        return self._stamped(images, labels, count, generator)

    def verification_set(self, images, labels, generator):
        return self._stamped(images, labels, self.size, generator)


def build_watermark(scheme: str, options: dict[str, Any] | None = None, **context: Any) -> Watermark:
    """Create the scheme registered as ``scheme`` with its ``options`` and shared ``context``."""
    cls = WATERMARKS.get(scheme)
    options = dict(options or {})
    unknown = sorted(set(options) - set(cls.option_names()))
    if unknown:
        raise ValueError(
            f"unknown option(s) {unknown} for watermark scheme {scheme!r}; "
            f"valid: {', '.join(cls.option_names()) or 'none'}"
        )
    return cls(**context, **options)
