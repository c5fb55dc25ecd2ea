import pytest
import torch

from wmbench.checkpoint import load_checkpoint, save_checkpoint
from wmbench.models import create_model

KWARGS = {"in_channels": 1, "image_size": 28, "num_classes": 10}


def test_checkpoint_round_trip_rebuilds_the_model(tmp_path):
    model = create_model("lenet", **KWARGS)
    save_checkpoint(tmp_path / "m.pt", model, {"arch": "lenet", "arch_kwargs": KWARGS, "seed": 3})
    loaded = load_checkpoint(tmp_path / "m.pt")
    assert loaded.meta["seed"] == 3
    x = torch.rand(4, 1, 28, 28)
    assert torch.equal(loaded.build_model()(x), model(x))
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]  # no temp file left behind


class Exploit:
    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path('PWNED').write_text('x')",))


def test_malicious_pickle_is_refused_without_running_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save({"state_dict": {}, "meta": Exploit()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="refusing to load .*state dict"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not (tmp_path / "PWNED").exists()


def test_whole_module_pickle_is_refused(tmp_path):
    torch.save(create_model("lenet", **KWARGS), tmp_path / "module.pt")
    with pytest.raises(ValueError, match=r"torch.save\(model.state_dict\(\), path\)"):
        load_checkpoint(tmp_path / "module.pt")


def test_truncated_checkpoint_fails_clearly(tmp_path):
    save_checkpoint(tmp_path / "m.pt", create_model("lenet", **KWARGS), {"arch": "lenet", "arch_kwargs": KWARGS})
    raw = (tmp_path / "m.pt").read_bytes()
    (tmp_path / "m.pt").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        load_checkpoint(tmp_path / "m.pt")


def test_checkpoint_of_other_architecture_fails_clearly(tmp_path):
    save_checkpoint(tmp_path / "m.pt", create_model("lenet", **KWARGS), {"arch": "zhang_mnist", "arch_kwargs": KWARGS})
    with pytest.raises(ValueError, match="does not fit ZhangMNIST.*check model.arch"):
        load_checkpoint(tmp_path / "m.pt").build_model()
