"""Device-side batch augmentation: one mask operation on a whole batch, no per-image loop.

After the ``batch_cutout`` idea of KellerJordan/cifar10-airbench: every image's
random choices are drawn as tensors, the masks are built by broadcasting, and
``torch.where`` applies them at once, on whatever device the batch lives on.
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import torch

ERASE_AREA = (0.02, 0.4)  # share of the image a rectangle covers (Zhong et al. s_l, s_h)
ERASE_ASPECT = 0.3  # height/width ratio drawn log-uniformly from [0.3, 1/0.3] (Zhong et al. r_1)
NOISE_MEAN, NOISE_STD = 0.5, 0.5  # the "gaussian" fill in [0, 1] pixel units, clipped to [0, 1]
EraseFill = Literal["uniform", "gaussian"]  # what an erased rectangle is filled with


def random_erasing(
    images: torch.Tensor,
    generator: torch.Generator,
    *,
    probability: float = 1.0,
    area: tuple[float, float] = ERASE_AREA,
    aspect: float = ERASE_ASPECT,
    fill: EraseFill = "uniform",
) -> torch.Tensor:
    """A copy of ``images`` (N, C, H, W) in [0, 1] with one noise-filled rectangle per image.

    Zhong et al., Random Erasing Data Augmentation, AAAI 2020, Algorithm 1:
    each image is erased with ``probability``; the rectangle's area is a
    uniform share of ``area`` of the image and its height/width ratio is
    log-uniform in [``aspect``, 1/``aspect``]; its position is uniform among the
    places where it fits. Differences from Zhong et al.: a rectangle that
    would not fit is clipped to the image instead of redrawn (one draw per
    image keeps this a single tensor op); the default ``probability`` is 1, as
    WILD erases every augmented copy (Zhong et al. use 0.5).

    ``fill``, per pixel and channel:
    - ``uniform`` (default): uniform in [0, 1), Zhong et al.'s "random value in
      [0, 255]" (Algorithm 1) in [0, 1] pixel units.
    - ``gaussian``: N(0.5, 0.5^2), clipped to [0, 1]: standard normal noise in
      the common [-1, 1] normalisation, as WILD words its fill ("random
      Gaussian noises", Liu et al., Sec. III-A, citing Zhong et al.). The clip
      puts about a third of the erased values (P(|Z| > 1) = 0.32) exactly at
      0 or 1, so the rectangle is largely black and white.
    ``generator`` must live on ``images``' device; the same seed gives the same
    rectangles and noise.
    """
    if fill not in get_args(EraseFill):
        raise ValueError(f"fill={fill!r}; valid: {', '.join(get_args(EraseFill))}")
    if not 0 <= probability <= 1:
        raise ValueError(f"probability={probability} must lie in [0, 1]")
    if not 0 < area[0] <= area[1] <= 1:
        raise ValueError(f"area={area} must satisfy 0 < low <= high <= 1")
    if not 0 < aspect <= 1:
        raise ValueError(f"aspect={aspect} must lie in (0, 1]")
    n, _, height, width = images.shape
    device = images.device

    def uniform(*shape: int) -> torch.Tensor:
        return torch.rand(shape, generator=generator, device=device)

    # rectangle sizes, (N,) each
    target = (area[0] + (area[1] - area[0]) * uniform(n)) * height * width
    ratio = torch.exp(math.log(aspect) + (-2 * math.log(aspect)) * uniform(n))
    rect_h = torch.sqrt(target * ratio).round().clamp(1, height)
    rect_w = torch.sqrt(target / ratio).round().clamp(1, width)
    top = torch.floor(uniform(n) * (height - rect_h + 1))
    left = torch.floor(uniform(n) * (width - rect_w + 1))
    erase = uniform(n) < probability

    # (N, 1, H, W) mask from row and column ranges
    rows = torch.arange(height, device=device)[None, :]
    cols = torch.arange(width, device=device)[None, :]
    in_rows = (rows >= top[:, None]) & (rows < (top + rect_h)[:, None])  # (N, H)
    in_cols = (cols >= left[:, None]) & (cols < (left + rect_w)[:, None])  # (N, W)
    mask = (in_rows[:, :, None] & in_cols[:, None, :] & erase[:, None, None])[:, None]

    if fill == "uniform":
        noise = torch.rand(images.shape, generator=generator, device=device)
    else:
        noise = (NOISE_MEAN + NOISE_STD * torch.randn(images.shape, generator=generator, device=device)).clamp(0, 1)
    return torch.where(mask, noise.to(images.dtype), images)
