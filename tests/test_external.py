"""Bring your own model and trigger set; untrusted and corrupt inputs fail clearly."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from stages import embed, prepare
from tests.conftest import ROOT, write_params
from wmbench.checkpoint import load_checkpoint, save_checkpoint
from wmbench.models import create_model
from wmbench.stage import run_stage


def run_embed(folder, params, prepared):
    return run_stage(embed.main, ["--params", str(params), "--prepared", str(prepared),
                                  "--model", str(folder / "wm.pt"), "--metrics", str(folder / "embed.json"),
                                  "--plot", str(folder / "embed.csv")])


@pytest.mark.parametrize("fmt", ["state_dict", "safetensors"])
def test_own_checkpoint_is_imported_and_scored(tmp_path, prepared_dir, watermarked, fmt):
    _, _, model, history = watermarked
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if fmt == "safetensors":
        path = tmp_path / "owner.safetensors"
        save_file(state, str(path))
    else:
        path = tmp_path / "owner.pt"
        torch.save(state, path)
    params = write_params(tmp_path, **{"model.checkpoint": str(path)})
    assert run_embed(tmp_path, params, prepared_dir / "prepared") == 0
    metrics = json.loads((tmp_path / "embed.json").read_text())
    assert metrics["wm_acc"] == history[-1]["wm_acc"] and metrics["test_acc"] == history[-1]["test_acc"]
    assert load_checkpoint(tmp_path / "wm.pt").meta["source"] == str(path)


def test_pickled_module_is_refused_with_the_fix(tmp_path, prepared_dir, capsys):
    path = tmp_path / "module.pt"
    torch.save(create_model("lenet", in_channels=1, image_size=28, num_classes=10), path)
    params = write_params(tmp_path, **{"model.checkpoint": str(path)})
    assert run_embed(tmp_path, params, prepared_dir / "prepared") == 2
    err = capsys.readouterr().err
    assert "refusing to load" in err and "torch.save(model.state_dict(), path)" in err
    assert not (tmp_path / "wm.pt").exists()


def test_checkpoint_of_other_class_count_is_refused(tmp_path, prepared_dir, capsys):
    path = tmp_path / "eleven.pt"
    torch.save(create_model("lenet", in_channels=1, image_size=28, num_classes=11).state_dict(), path)
    params = write_params(tmp_path, **{"model.checkpoint": str(path)})
    assert run_embed(tmp_path, params, prepared_dir / "prepared") == 2
    assert "shape mismatch" in capsys.readouterr().err


def test_missing_checkpoint_path_fails_at_params(tmp_path, prepared_dir, capsys):
    params = write_params(tmp_path, **{"model.checkpoint": str(tmp_path / "nope.pt")})
    assert run_embed(tmp_path, params, prepared_dir / "prepared") == 2
    assert "model.checkpoint=" in capsys.readouterr().err


@pytest.mark.parametrize("layout", ["npz", "folder"])
def test_own_trigger_set_becomes_the_verification_set(tmp_path, layout):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (12, 28, 28), dtype=np.uint8)
    labels = np.arange(12) % 10
    if layout == "npz":
        source = tmp_path / "triggers.npz"
        np.savez(source, images=images, labels=labels)
    else:
        from PIL import Image

        source = tmp_path / "triggers"
        source.mkdir()
        rows = ["file,label"]
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            Image.fromarray(image).save(source / f"{i}.png")
            rows.append(f"{i}.png,{label}")
        (source / "labels.csv").write_text("\n".join(rows))
    params = write_params(tmp_path, **{"watermark.trigger_set": str(source)})
    assert run_stage(prepare.main, ["--params", str(params), "--out", str(tmp_path / "prep")]) == 0
    with np.load(tmp_path / "prep" / "trigger.npz") as saved:
        assert np.array_equal(saved["images"][:, 0], images) and np.array_equal(saved["labels"], labels)
    with np.load(tmp_path / "prep" / "embedding.npz") as saved:
        assert set(saved["labels"].tolist()) <= set(labels.tolist())


def test_trigger_set_of_wrong_size_is_refused(tmp_path, capsys):
    np.savez(tmp_path / "t.npz", images=np.zeros((3, 32, 32), np.uint8), labels=np.zeros(3, np.int64))
    params = write_params(tmp_path, **{"watermark.trigger_set": str(tmp_path / "t.npz")})
    assert run_stage(prepare.main, ["--params", str(params), "--out", str(tmp_path / "prep")]) == 2
    assert "this dataset needs 28x28 images" in capsys.readouterr().err


def test_interrupted_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    kwargs = {"in_channels": 1, "image_size": 28, "num_classes": 10}
    path = tmp_path / "m.pt"
    save_checkpoint(path, create_model("lenet", **kwargs), {"arch": "lenet", "arch_kwargs": kwargs, "seed": 1})
    before = path.read_bytes()

    def torn_save(obj, handle):
        handle.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, create_model("lenet", **kwargs), {"arch": "lenet", "arch_kwargs": kwargs, "seed": 2})
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]


def test_killed_stage_leaves_previous_outputs_whole(tmp_path, prepared_dir):
    """SIGKILL a running vanilla stage: every output is the old file or absent, never truncated."""
    params = write_params(tmp_path, **{"train.epochs": 200, "vanilla.seeds": 3})
    out = tmp_path / "vanilla"
    out.mkdir()
    (tmp_path / "vanilla.json").write_text('{"threshold": 0.5}')
    cmd = [sys.executable, "-m", "stages.vanilla", "--params", str(params), "--prepared",
           str(prepared_dir / "prepared"), "--models", str(out), "--metrics", str(tmp_path / "vanilla.json"),
           "--plot", str(tmp_path / "vanilla.csv")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(4)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert json.loads((tmp_path / "vanilla.json").read_text()) == {"threshold": 0.5}
    assert not (tmp_path / "vanilla.csv").exists()
    for checkpoint in out.glob("*.pt"):
        load_checkpoint(checkpoint)  # whole, or it would fail to load
