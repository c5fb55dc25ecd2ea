"""Random Erasing's fill (wmbench.augment): uniform as Zhong et al., or WILD's clipped Gaussian."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import small_params
from wmbench.augment import random_erasing
from wmbench.params import ParamsError, parse_params
from wmbench.removal.wild import WildParams


def erased_values(fill: str, seed: int = 0) -> torch.Tensor:
    """The values written into the rectangles of 64 constant images."""
    images = torch.full((64, 3, 28, 28), 0.123)
    erased = random_erasing(images, torch.Generator().manual_seed(seed), fill=fill)
    return erased[erased != images]


def test_uniform_fill_is_flat_with_no_mass_at_the_bounds():
    values = erased_values("uniform")
    assert len(values) > 10_000
    assert float(((values == 0) | (values == 1)).float().mean()) < 1e-3
    assert abs(float(values.mean()) - 0.5) < 0.01
    for low in (0.0, 0.25, 0.5, 0.75):  # each quarter of [0, 1] holds a quarter of the values
        share = float(((values >= low) & (values < low + 0.25)).float().mean())
        assert abs(share - 0.25) < 0.02


def test_gaussian_fill_saturates_a_third_at_the_bounds():
    values = erased_values("gaussian")
    saturated = float(((values == 0) | (values == 1)).float().mean())
    assert 0.28 < saturated < 0.36  # P(|Z| > 1) = 0.317 for N(0.5, 0.5^2) clipped to [0, 1]


@pytest.mark.parametrize("fill", ["uniform", "gaussian"])
def test_each_fill_is_deterministic_for_a_seed(fill):
    assert torch.equal(erased_values(fill, 3), erased_values(fill, 3))
    assert not torch.equal(erased_values(fill, 3), erased_values(fill, 4))


def test_unknown_fill_names_the_valid_ones():
    with pytest.raises(ValueError, match="fill='normal'; valid: uniform, gaussian"):
        random_erasing(torch.zeros(1, 1, 8, 8), torch.Generator(), fill="normal")  # type: ignore[arg-type]


def test_wild_methods_default_to_the_uniform_fill():
    settings = parse_params(small_params()).removal.settings
    assert {settings[name].erase_fill for name in ("wild_ce", "wild_js", "wild_dn")} == {"uniform"}
    assert WildParams().erase_fill == "uniform"


@pytest.mark.parametrize("name", ["wild_ce", "wild_js", "wild_dn"])
def test_bad_erase_fill_names_the_key(name):
    with pytest.raises(ParamsError, match=rf"removal.{name}.erase_fill='normal'; valid: uniform, gaussian"):
        parse_params(small_params(**{f"removal.{name}.erase_fill": "normal"}))
