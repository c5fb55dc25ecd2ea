"""Training throughput: wmbench's device-resident loop against a plain reference loop.

The reference is what most code does: a torchvision ``Dataset`` of PIL images with
a per-sample ``ToTensor`` transform, a ``DataLoader``, fp32. Both train the same
architecture on the same images for the same number of steps in one run, so the
ratio is meaningful on a noisy machine. Also reports FLOPs per image (forward,
``torch.utils.flop_counter``), achieved GFLOP/s (training = 3x forward) and peak memory.

    python -m bench.train_speed                      # CPU, MNIST-size models
    python -m bench.train_speed --device cuda --arch vgg16 --image-size 32 --channels 3
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from wmbench.models import create_model
from wmbench.training import DeviceData, fit, make_optimizer


def synthetic_uint8(n: int, channels: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random uint8 images and labels: throughput does not depend on content."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, channels, size, size), dtype=np.uint8), rng.integers(0, 10, n)


def flops_per_image(model: torch.nn.Module, channels: int, size: int) -> int:
    """Forward FLOPs for one image."""
    with FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, channels, size, size))
    return counter.get_total_flops()


def ours(model, images, labels, device, batch_size, epochs) -> float:
    """Seconds for ``epochs`` of :func:`wmbench.training.fit` (data moved to the device once)."""
    data = DeviceData.from_arrays(images, labels, device)
    optimizer = make_optimizer("rmsprop", model.parameters(), 1e-3)
    _sync(device)
    start = time.perf_counter()
    fit(model, data, optimizer, epochs=epochs, batch_size=batch_size,
        generator=torch.Generator(device=device).manual_seed(0))
    _sync(device)
    return time.perf_counter() - start


def reference(model, images, labels, device, batch_size, epochs) -> float:
    """Seconds for the same work with a DataLoader over PIL images and per-sample transforms."""
    from PIL import Image
    from torchvision import transforms

    class PILDataset(torch.utils.data.Dataset):
        def __init__(self) -> None:
            mode = "L" if images.shape[1] == 1 else "RGB"
            self.items = [Image.fromarray(im.transpose(1, 2, 0).squeeze(), mode) for im in images]
            self.transform = transforms.ToTensor()

        def __len__(self) -> int:
            return len(self.items)

        def __getitem__(self, i):
            return self.transform(self.items[i]), int(labels[i])

    loader = torch.utils.data.DataLoader(PILDataset(), batch_size=batch_size, shuffle=True)
    optimizer = make_optimizer("rmsprop", model.parameters(), 1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    _sync(device)
    start = time.perf_counter()
    for _ in range(epochs):
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            loss = loss_fn(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    _sync(device)
    return time.perf_counter() - start


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--arch", nargs="+", default=["lenet", "zhang_mnist"])
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--image-size", type=int, default=28)
    parser.add_argument("--images", type=int, default=8192)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    device = torch.device(args.device)
    images, labels = synthetic_uint8(args.images, args.channels, args.image_size)
    work = args.images * args.epochs
    print(f"device {device}, {torch.get_num_threads()} threads, {args.images} images x {args.epochs} epochs, "
          f"batch {args.batch_size}")
    print("| arch | MFLOP/img (fwd) | ours img/s | reference img/s | ratio | ours GFLOP/s | peak RSS MiB |")
    print("|---|---|---|---|---|---|---|")
    for arch in args.arch:
        build = {"in_channels": args.channels, "image_size": args.image_size, "num_classes": 10}
        flops = flops_per_image(create_model(arch, **build), args.channels, args.image_size)
        torch.manual_seed(0)
        t_ours = ours(create_model(arch, **build).to(device), images, labels, device, args.batch_size, args.epochs)
        torch.manual_seed(0)
        t_ref = reference(create_model(arch, **build).to(device), images, labels, device, args.batch_size, args.epochs)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        if device.type == "cuda":
            peak = torch.cuda.max_memory_allocated() / 2**20
        print(f"| {arch} | {flops / 1e6:.2f} | {work / t_ours:,.0f} | {work / t_ref:,.0f} | {t_ref / t_ours:.2f} | "
              f"{3 * flops * work / t_ours / 1e9:.2f} | {peak:,.0f} |")


if __name__ == "__main__":
    main()
