"""Stage ``prepare``: load the dataset, split owner / adversary / test, build the trigger sets."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from wmbench.data import Dataset, load_dataset, owner_adversary_split
from wmbench.params import Params
from wmbench.prepared import Prepared, save_prepared, to_uint8
from wmbench.seeding import derive_seed, generator
from wmbench.stage import Timer, run_stage, stage_parser, start, writing_outputs
from wmbench.triggers import load_trigger_set
from wmbench.watermarks import Watermark, build_watermark


def split_owner_adversary(dataset: Dataset, params: Params) -> tuple[np.ndarray, np.ndarray]:
    """The owner's training images and the adversary's stratified share (``data.holdout_pool``: whether the
    adversary's held-out slice is part of the owner's data or images of its own the owner never saw)."""
    data = params.data
    return owner_adversary_split(dataset.train_labels, data.adversary_fraction, data.adversary_holdout,
                                 data.holdout_pool, params.seed)


def make_watermark(dataset: Dataset | Prepared, params: Params) -> Watermark:
    """The owner's scheme, keyed by the seed (``dataset``: the data or a ``prepare`` folder of it, for the image
    shape and class count)."""
    return build_watermark(
        params.watermark.scheme,
        params.watermark.scheme_options,
        target=params.watermark.target,
        image_shape=dataset.image_shape,
        num_classes=dataset.num_classes,
        seed=derive_seed(params.seed, "watermark"),
        size=params.watermark.size,
    )


def build_trigger_sets(
    dataset: Dataset, owner: np.ndarray, watermark: Watermark, params: Params
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Embedding samples from the owner's images (positions ``owner``); verification triggers from test images.

    The verification set stamps test images (never trained on) whose true label
    is not the target, so a correct prediction never counts as a watermark hit.
    With ``watermark.trigger_set`` the owner's own images are both sets (as Adi
    et al.'s trigger set is), repeated to the poison count for embedding.
    """
    count = max(1, round(params.watermark.poison_fraction * len(dataset.train_labels)))
    if params.watermark.trigger_set:
        images, labels = load_trigger_set(params.watermark.trigger_set, dataset.image_shape, dataset.num_classes)
        order = np.random.default_rng(derive_seed(params.seed, "embedding-set")).permutation(
            np.resize(np.arange(len(labels)), count)
        )
        return {"embedding": (images[order], labels[order]), "trigger": (images, labels)}
    train_x = torch.from_numpy(dataset.train_images[owner]).float() / 255
    test_x = torch.from_numpy(dataset.test_images).float() / 255
    emb_x, emb_y = watermark.embedding_set(
        train_x, torch.from_numpy(dataset.train_labels[owner]), count, generator(params.seed, "embedding-set")
    )
    ver_x, ver_y = watermark.verification_set(
        test_x, torch.from_numpy(dataset.test_labels), generator(params.seed, "trigger-set")
    )
    return {
        "embedding": (to_uint8(emb_x), emb_y.numpy().astype(np.int64)),
        "trigger": (to_uint8(ver_x), ver_y.numpy().astype(np.int64)),
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = stage_parser(__doc__, "prepare")
    parser.add_argument("--out", default="data/prepared", help="output folder")
    args = parser.parse_args(argv)
    params, _ = start(args.params, args.threads)
    timer = Timer()

    dataset = load_dataset(params.data.name, params.data.root, params.data.download)
    watermark = make_watermark(dataset, params)
    owner, adversary = split_owner_adversary(dataset, params)
    arrays = {
        "owner": (dataset.train_images[owner], dataset.train_labels[owner]),
        "adversary": (dataset.train_images[adversary], dataset.train_labels[adversary]),
        "test": (dataset.test_images, dataset.test_labels),
        **build_trigger_sets(dataset, owner, watermark, params),
    }
    info = {
        "dataset": params.data.name,
        "image_shape": list(dataset.image_shape),
        "num_classes": dataset.num_classes,
        "scheme": "external" if params.watermark.trigger_set else params.watermark.scheme,
        "target": params.watermark.target,
        "counts": {name: len(labels) for name, (_, labels) in arrays.items()},
        "adversary_per_class": np.bincount(
            arrays["adversary"][1], minlength=dataset.num_classes
        ).tolist(),
    }  # no wall-clock time: every later stage depends on these bytes
    with writing_outputs():
        save_prepared(args.out, Prepared(arrays, info))
    counts = describe_counts(info["counts"], params.data.name, params.data.adversary_fraction,
                             len(dataset.train_labels) - len(owner), params.data.adversary_holdout)
    print(f"prepare: {counts} in {timer.seconds:.1f}s")


def describe_counts(counts: dict[str, int], dataset: str, fraction: float, kept: int = 0,
                    holdout: float = 0) -> str:
    """The split's sizes in words: the adversary's images are a subset of the owner's, not more images; with
    ``data.holdout_pool`` (``kept`` images kept from the owner) its held-out slice comes from those instead."""
    whose = (f"of those but its held-out {100 * holdout:g}%, images of its own drawn from {kept:,} kept from the "
             "owner" if kept else "a subset of the owner's")
    return (f"{dataset}: owner {counts['owner']:,} training images; adversary {counts['adversary']:,} "
            f"{'' if kept else 'of those '}({100 * fraction:g}%, {whose}); test {counts['test']:,}; "
            f"{counts['embedding']:,} watermark samples for embedding; {counts['trigger']:,} trigger inputs "
            "for verification")


if __name__ == "__main__":
    raise SystemExit(run_stage(main))
