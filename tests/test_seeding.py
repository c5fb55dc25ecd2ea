"""Seeding: the same seed gives the same draws, and CUDA is asked for deterministic matmuls."""

from __future__ import annotations

import os

import pytest
import torch

from wmbench.seeding import seed_everything


def test_same_seed_same_draws() -> None:
    seed_everything(3)
    first = torch.rand(4)
    seed_everything(3)
    assert torch.equal(first, torch.rand(4))


def test_cublas_workspace_is_fixed_unless_the_user_chose_one(monkeypatch) -> None:
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    seed_everything(0)

    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    seed_everything(0)
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"


def test_clean_models_of_different_run_seeds_never_share_a_seed():
    """Run seeds 0 and 1 once shared clean seeds 2 and 3: the same models where the owner's data is the same."""
    from wmbench.seeding import clean_seeds

    assert clean_seeds(0, 3) == [1, 2, 3]
    runs = [set(clean_seeds(seed, 10)) for seed in range(5)]
    assert all(a.isdisjoint(b) for i, a in enumerate(runs) for b in runs[i + 1:])
    with pytest.raises(ValueError, match="vanilla.seeds=1000"):
        clean_seeds(0, 1000)
