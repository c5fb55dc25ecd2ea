"""Training throughput: wmbench's device-resident loop against a plain reference loop.

The reference is what most code does: a torchvision ``Dataset`` of PIL images with
a per-sample ``ToTensor`` transform, a ``DataLoader``, fp32. Both train the same
architecture on the same images for the same number of steps in one run, so the
ratio is meaningful on a noisy machine. ``--precision fp32 bf16`` and
``--channels-last`` add runs of our loop with bf16 autocast and / or
channels-last layout (``wmbench.precision``), each against the same fp32
reference. Also reports FLOPs per image (forward, ``torch.utils.flop_counter``),
achieved GFLOP/s (training = 3x forward), its share of the device's peak
(``--peak-tflops``, or on a known NVIDIA GPU its datasheet figure for the run's
precision: :func:`peak_tflops`) and peak memory (CUDA: per run; CPU: the
process's RSS so far, which only grows).

    python -m bench.train_speed                      # CPU, MNIST-size models
    python -m bench.train_speed --device cuda --arch vgg16 --image-size 32 --channels 3
    python -m bench.train_speed --device cuda --arch vgg16 resnet18 --image-size 32 --channels 3 \
        --precision fp32 bf16 --channels-last            # % of the H100's 989 (bf16) / 495 (TF32) TFLOP/s
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from wmbench.models import create_model
from wmbench.precision import autocast, channels_last_model
from wmbench.stage import HelpFormatter, set_threads
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


def ours(model, images, labels, device, batch_size, epochs, precision="fp32", channels_last=False) -> float:
    """Seconds for ``epochs`` of :func:`wmbench.training.fit` (data moved to the device once).

    ``precision`` and ``channels_last`` as the stages apply them: autocast
    around the work, model and images in channels-last layout.
    """
    data = DeviceData.from_arrays(images, labels, device)
    if channels_last:
        data = DeviceData(data.images.contiguous(memory_format=torch.channels_last), data.labels)
    model = channels_last_model(model, channels_last)
    optimizer = make_optimizer("rmsprop", model.parameters(), 1e-3)
    _sync(device)
    start = time.perf_counter()
    with autocast(precision, device):
        fit(model, data, optimizer, epochs=epochs, batch_size=batch_size,
            generator=torch.Generator(device=device).manual_seed(0))
    _sync(device)
    return time.perf_counter() - start


def reference(model, images, labels, device, batch_size, epochs, copies=0, max_images=None) -> tuple[float, int]:
    """Seconds and images for the same work with a DataLoader over PIL images and per-sample transforms.

    ``copies`` > 0 adds what a per-sample pipeline does for WILD: each item is
    the image plus ``copies`` copies through torchvision's ``RandomErasing``,
    all trained on with cross-entropy (a throughput yardstick, not the
    method). Stops after ``max_images`` images through the model, if given.
    """
    from PIL import Image
    from torchvision import transforms

    class PILDataset(torch.utils.data.Dataset):
        def __init__(self) -> None:
            mode = "L" if images.shape[1] == 1 else "RGB"
            self.items = [Image.fromarray(im.transpose(1, 2, 0).squeeze(), mode) for im in images]
            self.transform = transforms.ToTensor()
            self.erase = transforms.RandomErasing(p=1.0, scale=(0.02, 0.4), ratio=(0.3, 3.3), value="random")

        def __len__(self) -> int:
            return len(self.items)

        def __getitem__(self, i):
            x = self.transform(self.items[i])
            if copies:
                return torch.stack([x] + [self.erase(x) for _ in range(copies)]), int(labels[i])
            return x, int(labels[i])

    loader = torch.utils.data.DataLoader(PILDataset(), batch_size=batch_size, shuffle=True)
    optimizer = make_optimizer("rmsprop", model.parameters(), 1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    seen = 0
    _sync(device)
    start = time.perf_counter()
    for x, y in (batch for _ in range(epochs) for batch in loader):
        if copies:
            y = y.repeat_interleave(x.shape[1])
            x = x.flatten(0, 1)
        x, y = x.to(device), y.to(device)
        loss = loss_fn(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        seen += len(y)
        if max_images is not None and seen >= max_images:
            break
    _sync(device)
    return time.perf_counter() - start, seen


# Dense tensor-core peaks in TFLOP/s, (bf16, TF32), from NVIDIA's datasheets; the first name
# contained in torch.cuda.get_device_name() wins, so the more specific names come first.
# fp32 runs are held against TF32: cuDNN runs fp32 convolutions on TF32 tensor cores by default.
PEAK_TFLOPS = (
    ("H100 PCIe", 756.0, 378.0), ("H100 NVL", 835.0, 418.0), ("H100", 989.0, 495.0), ("H200", 989.0, 495.0),
    ("A100", 312.0, 156.0), ("L40S", 362.0, 183.0), ("L4", 121.0, 60.0), ("A10", 125.0, 62.5),
)


def peak_tflops(device_name: str, precision: str) -> float | None:
    """The datasheet peak for a GPU's name and ``fp32`` / ``bf16``; None for a device not in the table."""
    for name, bf16, tf32 in PEAK_TFLOPS:
        if name in device_name:
            return bf16 if precision == "bf16" else tf32
    return None


def run_peak(device: torch.device, precision: str, given: float | None) -> float | None:
    """``--peak-tflops`` if given, else the CUDA device's datasheet peak for ``precision``, else None."""
    if given is not None or device.type != "cuda":
        return given
    return peak_tflops(torch.cuda.get_device_name(device), precision)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_mib(device: torch.device) -> float:
    """CUDA: the largest allocation since the last reset; CPU: the process's peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def table_row(
    arch: str, flops: int, work: int, peak_tflops: float | None, device: torch.device,
    run: str, seconds: float, t_ref: float,
) -> str:
    """One markdown row: throughput, speed-up over the reference, achieved FLOP/s and its share of the peak."""
    achieved = 3 * flops * work / seconds
    share = f"{100 * achieved / (peak_tflops * 1e12):.2f}" if peak_tflops else "-"
    return (f"| {arch} | {flops / 1e6:.2f} | {run} | {work / seconds:,.0f} | {t_ref / seconds:.2f} | "
            f"{achieved / 1e9:.2f} | {share} | {_peak_mib(device):,.0f} |")


def variants(precisions: list[str], channels_last: bool) -> list[tuple[str, bool]]:
    """(precision, channels_last) runs of our loop: each precision, plain and, if asked, channels-last."""
    return [(p, c) for p in precisions for c in ((False, True) if channels_last else (False,))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0 = every core)")
    parser.add_argument("--arch", nargs="+", default=["lenet", "zhang_mnist"], help="architectures to time")
    parser.add_argument("--channels", type=int, default=1, help="image channels of the synthetic data")
    parser.add_argument("--image-size", type=int, default=28, help="image side of the synthetic data")
    parser.add_argument("--images", type=int, default=8192, help="synthetic training images")
    parser.add_argument("--batch-size", type=int, default=64, help="training batch size")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per run")
    parser.add_argument("--precision", nargs="+", default=["fp32"], choices=["fp32", "bf16"],
                        help="our loop's precisions to run")
    parser.add_argument("--channels-last", action="store_true", help="also run each precision channels-last")
    parser.add_argument("--peak-tflops", type=float,
                        help="the device's peak for the achieved share (default: the GPU's datasheet figure)")
    args = parser.parse_args()
    set_threads(args.threads)
    device = torch.device(args.device)
    images, labels = synthetic_uint8(args.images, args.channels, args.image_size)
    work = args.images * args.epochs
    print(f"device {device}, {torch.get_num_threads()} threads, {args.images} images x {args.epochs} epochs, "
          f"batch {args.batch_size}")
    memory = "peak CUDA MiB" if device.type == "cuda" else "peak RSS MiB"
    print(f"| arch | MFLOP/img (fwd) | run | img/s | vs reference | GFLOP/s | % of peak | {memory} |")
    print("|---|---|---|---|---|---|---|---|")
    for arch in args.arch:
        build = {"in_channels": args.channels, "image_size": args.image_size, "num_classes": 10}
        flops = flops_per_image(create_model(arch, **build), args.channels, args.image_size)
        torch.manual_seed(0)
        _reset_peak(device)
        t_ref, _ = reference(create_model(arch, **build).to(device), images, labels, device, args.batch_size,
                             args.epochs)
        print(table_row(arch, flops, work, run_peak(device, "fp32", args.peak_tflops), device,
                        "reference (DataLoader, fp32)", t_ref, t_ref))
        for precision, channels_last in variants(args.precision, args.channels_last):
            torch.manual_seed(0)
            _reset_peak(device)
            t_ours = ours(create_model(arch, **build).to(device), images, labels, device, args.batch_size,
                          args.epochs, precision, channels_last)
            print(table_row(arch, flops, work, run_peak(device, precision, args.peak_tflops), device,
                            f"ours {precision}{', channels-last' if channels_last else ''}", t_ours, t_ref))


if __name__ == "__main__":
    main()
