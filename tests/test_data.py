import gzip
import pickle

import numpy as np
import pytest

from wmbench.data import (
    adversary_holdout_split,
    adversary_indices,
    holdout_indices,
    load_dataset,
    owner_adversary_split,
)
from wmbench.data.idx import parse_idx
from wmbench.seeding import derive_seed


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_mnist_layout(folder, gz: bool, n_train=30, n_test=10):
    rng = np.random.default_rng(0)
    files = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte": np.arange(n_train) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte": np.arange(n_test) % 10,
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in files.items():
        raw = idx_bytes(array)
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(raw))
        else:
            (folder / name).write_bytes(raw)
    return files


def test_digits_is_28x28_uint8_with_a_fixed_test_split(digits):
    assert digits.train_images.shape[1:] == (1, 28, 28) and digits.train_images.dtype == np.uint8
    assert len(digits.train_labels) + len(digits.test_labels) == 1797
    assert set(np.unique(digits.test_labels)) == set(range(10))
    assert np.array_equal(load_dataset("digits").test_labels, digits.test_labels)


@pytest.mark.parametrize("fraction", [0.01, 0.1, 0.4, 1.0])
def test_adversary_split_is_stratified_and_honours_fraction(digits, fraction):
    picks = adversary_indices(digits.train_labels, fraction, seed=0)
    assert len(np.unique(picks)) == len(picks)
    per_class = np.bincount(digits.train_labels[picks], minlength=10)
    totals = np.bincount(digits.train_labels, minlength=10)
    assert (per_class >= 1).all()
    assert np.all(np.abs(per_class - fraction * totals) <= 1)


def test_adversary_split_same_seed_same_subset(digits):
    a = adversary_indices(digits.train_labels, 0.1, seed=5)
    assert np.array_equal(a, adversary_indices(digits.train_labels, 0.1, seed=5))
    assert not np.array_equal(a, adversary_indices(digits.train_labels, 0.1, seed=6))


@pytest.mark.parametrize("fraction", [0, -0.1, 1.5])
def test_adversary_fraction_out_of_range_fails(digits, fraction):
    with pytest.raises(ValueError, match=r"adversary_fraction must be in \(0, 1\]"):
        adversary_indices(digits.train_labels, fraction, seed=0)


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("layout", ["flat", "torchvision"])
def test_mnist_loads_idx_files(tmp_path, gz, layout):
    folder = tmp_path if layout == "flat" else tmp_path / "MNIST" / "raw"
    files = write_mnist_layout(folder, gz)
    data = load_dataset("mnist", tmp_path)
    assert data.train_images.shape == (30, 1, 28, 28) and data.test_images.shape == (10, 1, 28, 28)
    assert np.array_equal(data.train_images[:, 0], files["train-images-idx3-ubyte"].astype(np.uint8))
    assert np.array_equal(data.test_labels, files["t10k-labels-idx1-ubyte"])


def test_fashion_mnist_missing_folder_says_how_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion_mnist", tmp_path)


def test_idx_bad_magic_and_truncation_fail_clearly():
    good = idx_bytes(np.zeros((2, 3, 3)))
    assert parse_idx(good).shape == (2, 3, 3)
    with pytest.raises(ValueError, match="bad magic number"):
        parse_idx(b"\x12\x34" + good[2:])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        parse_idx(good[:-1])


def write_cifar(folder, payload=None):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
        batch = payload or {b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), b"labels": [0, 1, 2, 3]}
        (folder / name).write_bytes(pickle.dumps(batch))


def test_cifar10_loads_python_batches(tmp_path):
    write_cifar(tmp_path / "cifar-10-batches-py")
    data = load_dataset("cifar10", tmp_path)
    assert data.train_images.shape == (20, 3, 32, 32) and data.test_images.shape == (4, 3, 32, 32)
    assert data.train_labels.tolist()[:4] == [0, 1, 2, 3]


class Exploit:
    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path('PWNED').write_text('x')",))


def test_cifar10_batch_with_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_cifar(tmp_path / "cifar-10-batches-py", payload={b"data": Exploit(), b"labels": []})
    with pytest.raises(ValueError, match="refusing to load builtins.exec"):
        load_dataset("cifar10", tmp_path)
    assert not (tmp_path / "PWNED").exists()


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'; valid: cifar10, digits, fashion_mnist, mnist"):
        load_dataset("imagenet")


def test_holdout_is_stratified_disjoint_and_keeps_every_class_trainable():
    labels = np.repeat(np.arange(10), [50] * 9 + [2])
    train, held = holdout_indices(labels, 0.1, seed=3)
    assert not set(train) & set(held) and len(train) + len(held) == len(labels)
    assert np.bincount(labels[held], minlength=10).tolist() == [5] * 9 + [1]
    assert set(labels[train]) == set(range(10))  # a class's last image is never held out
    again = holdout_indices(labels, 0.1, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip((train, held), again, strict=True))
    train0, held0 = holdout_indices(labels, 0.0, seed=3)
    assert len(held0) == 0 and np.array_equal(train0, np.arange(len(labels)))


def test_without_a_pool_the_adversary_holds_a_subset_of_the_owners_images():
    labels = np.repeat(np.arange(10), 100)
    owner, adversary = owner_adversary_split(labels, 0.1, 0.2, 0.0, run_seed=4)
    assert np.array_equal(owner, np.arange(len(labels)))  # the owner trains on everything, as before the pool
    assert np.array_equal(adversary, adversary_indices(labels, 0.1, derive_seed(4, "split")))


def test_a_pool_gives_the_adversary_a_held_out_slice_the_owner_never_saw():
    labels = np.repeat(np.arange(10), 200)
    slices = {}
    for fraction in (0.1, 0.02):
        owner, adversary = owner_adversary_split(labels, fraction, 0.2, 0.03, run_seed=4)
        assert len(owner) == len(labels) - 60  # 6 of each class kept from the owner
        train, held = adversary_holdout_split(labels[adversary], 0.2, 4)  # the split every later stage makes
        assert set(adversary[train]) <= set(owner)  # it trains on the owner's images ...
        assert not set(adversary[held]) & set(owner)  # ... and judges on images of its own
        assert np.bincount(labels[adversary[held]], minlength=10).tolist() == [4 if fraction == 0.1 else 1] * 10
        slices[fraction] = (owner, set(adversary[held]))
    assert np.array_equal(slices[0.1][0], slices[0.02][0])  # one owner for every fraction: embeddings shared
    assert slices[0.02][1] <= slices[0.1][1]  # a smaller slice is part of a larger one
    with pytest.raises(ValueError, match=r"holdout_pool=0.005 keeps 1 images of class 0 .* needs 4; raise "
                                         r"data.holdout_pool to at least .* \(0.02\)"):
        owner_adversary_split(labels, 0.1, 0.2, 0.005, run_seed=4)
