"""Seeding: the same seed gives the same draws, and CUDA is asked for deterministic matmuls."""

from __future__ import annotations

import os

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
