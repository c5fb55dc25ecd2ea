"""Neural Cleanse speed: every class in one batched optimisation against one class at a time.

Both runs reverse-engineer the same classes with the same settings, model and
images, in one process, so the ratio is meaningful on a noisy machine. The
class-by-class run is what most implementations do: a Python loop that calls
the search once per label (here ``neural_cleanse(..., classes=[k])``). Also
reports the steps each needed, the images pushed through the model per second
and the largest relative difference between the two runs' mask norms: same
seed and same random stream per class, so they differ only by float round-off
(a batch of 160 and one of 16 are summed in different orders), which a few
hundred adaptive steps grow to about 1%.

    python -m bench.reconstruct_speed                  # lenet on digits, 1 thread
    python -m bench.reconstruct_speed --threads 1 --steps 300 --batch-size 32
    python -m bench.reconstruct_speed --device cuda --arch vgg16 --channels 3 --image-size 32
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from wmbench.models import create_model
from wmbench.reconstruct import NeuralCleanseParams, Reconstruction, neural_cleanse
from wmbench.stage import HelpFormatter, set_threads
from wmbench.training import DeviceData, fit, make_optimizer


def digits_model(arch: str, device: torch.device, epochs: int) -> tuple[torch.nn.Module, torch.Tensor]:
    """A clean ``arch`` briefly trained on the digits owner split, and 135 adversary-sized held-out images.

    A trained model matters: how many steps each class needs depends on it.
    """
    from wmbench.data import load_dataset

    data = load_dataset("digits")
    train = DeviceData.from_arrays(data.train_images, data.train_labels, device)
    torch.manual_seed(0)
    model = create_model(arch, in_channels=1, image_size=28, num_classes=10).to(device)
    fit(model, train, make_optimizer("rmsprop", model.parameters(), 4e-3), epochs=epochs, batch_size=64,
        generator=torch.Generator(device=device).manual_seed(0))
    images = DeviceData.from_arrays(data.test_images[:135], data.test_labels[:135], device).images
    return model, images


def synthetic_model(
    arch: str, channels: int, size: int, device: torch.device
) -> tuple[torch.nn.Module, torch.Tensor]:
    """An untrained ``arch`` and random images: for shapes without a bundled dataset."""
    torch.manual_seed(0)
    model = create_model(arch, in_channels=channels, image_size=size, num_classes=10).to(device)
    return model, torch.rand(135, channels, size, size, device=device)


def batched(model, images, settings, seed) -> tuple[float, Reconstruction]:
    """Seconds for every class in one call."""
    generator = torch.Generator(device=images.device).manual_seed(seed)
    _sync(images.device)
    start = time.perf_counter()
    found = neural_cleanse(model, images, settings, generator)
    _sync(images.device)
    return time.perf_counter() - start, found


def one_by_one(model, images, settings, seed, classes: int) -> tuple[float, torch.Tensor, int]:
    """Seconds for a loop over the classes, one call each; their mask norms and summed epochs."""
    norms, epochs = [], 0
    _sync(images.device)
    start = time.perf_counter()
    for k in range(classes):
        generator = torch.Generator(device=images.device).manual_seed(seed)
        found = neural_cleanse(model, images, settings, generator, classes=[k])
        norms.append(found.l1[0])
        epochs += found.epochs
    _sync(images.device)
    return time.perf_counter() - start, torch.stack(norms), epochs


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0 = every core)")
    parser.add_argument("--arch", default="lenet", help="architecture")
    parser.add_argument("--channels", type=int, default=1, help="image channels (1 x 28 x 28: digits, else synthetic)")
    parser.add_argument("--image-size", type=int, default=28, help="image side")
    parser.add_argument("--train-epochs", type=int, default=5, help="digits training before the search")
    parser.add_argument("--epochs", type=int, help="override NeuralCleanseParams.epochs (the most per class)")
    parser.add_argument("--batch-size", type=int, help="override NeuralCleanseParams.batch_size")
    parser.add_argument("--seed", type=int, default=0, help="seed of the search")
    args = parser.parse_args()
    set_threads(args.threads)
    device = torch.device(args.device)
    overrides = {k: v for k, v in (("epochs", args.epochs), ("batch_size", args.batch_size)) if v is not None}
    settings = dataclasses.replace(NeuralCleanseParams(), **overrides)
    if args.channels == 1 and args.image_size == 28:
        model, images = digits_model(args.arch, device, args.train_epochs)
    else:
        model, images = synthetic_model(args.arch, args.channels, args.image_size, device)
    classes = 10

    t_batched, found = batched(model, images, settings, args.seed)
    t_single, norms, single_epochs = one_by_one(model, images, settings, args.seed, classes)
    # an upper bound: stopped classes leave the batch
    images_batched = found.epochs * settings.steps_per_epoch * settings.batch_size * classes
    print(f"device {device}, {torch.get_num_threads()} threads, {args.arch}, {len(images)} images, "
          f"epochs <= {settings.epochs} of {settings.epoch_images} images, batch {settings.batch_size} per class")
    print("| run | seconds | epochs | time ratio | max relative L1 difference |")
    print("|---|---|---|---|---|")
    print(f"| batched (10 classes in one tensor) | {t_batched:.2f} | {found.epochs} | 1.00 | |")
    print(f"| class by class (Python loop) | {t_single:.2f} | {single_epochs} (sum) | "
          f"{t_single / t_batched:.2f} | {float(((norms - found.l1).abs() / found.l1).max()):.1e} |")
    print(f"batched: at most {images_batched / t_batched:,.0f} stamped images per second")


if __name__ == "__main__":
    main()
