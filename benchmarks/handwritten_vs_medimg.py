"""The same training two ways, side by side: a hand-written PyTorch loop and ``medimg train``.

    .venv/bin/python benchmarks/handwritten_vs_medimg.py                  # CPU -> results/handwritten_vs_medimg.md
    python benchmarks/handwritten_vs_medimg.py --device cuda --epochs 10  # GPU -> ..._cuda.md

Both train medimg's ResNet-18 with the CIFAR stem (the MedMNIST benchmark's choice for 28-pixel
images) to classify BreastMNIST, with Adam (lr 0.001), batch ``--batch``, the ``paper``
augmentation (rotation up to 30 degrees, horizontal and vertical flips, zoom 0.8-1.2), and one
validation pass per epoch:

- **hand-written**: what a researcher writes first: a per-sample ``Dataset`` over the ``.npz``
  arrays, torchvision v2 transforms per sample, a ``DataLoader`` with ``num_workers`` = CPU cores
  (at most 8) and pinned memory, fp32, ``.item()`` on the loss every step;
- **medimg**: ``medimg train`` with the same settings and its defaults for the device
  (``trainer.precision=auto``, batches on the device, augmentation batched on the device);
- **medimg, tuned** (``--tuned``, on CUDA by default ``trainer.channels_last=true
  trainer.compile=reduce-overhead``, the fastest setting of ``medimg benchmark speed``).

Reported: the median epoch seconds (training + validation, first epoch left out: warm-up and
compilation) and training images/s of each, their ratio, and the test accuracy of each as the
guard that both learned the same task. The achieved training TFLOP/s of medimg is compared with
the device's matrix-multiply rate measured in the same script.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_module
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from medimg_cli.benchmark.speed import matmul_tflops
from medimg_cli.commands.train import train
from medimg_cli.data import DataInfo
from medimg_cli.loop import synchronize
from medimg_cli.models import create_model
from medimg_cli.models.transfer import forward_flops
from medimg_cli.results import read_metrics_csv
from medimg_cli.runinfo import device_name, versions

ROOT = Path(__file__).resolve().parents[1]  # the repository, for the default paths


class NpzImages(Dataset):
    """One (image, label) pair per item from a MedMNIST ``.npz``, transformed per sample."""

    def __init__(self, path: Path, split: str, transform=None) -> None:
        arrays = np.load(path)
        self.images = arrays[f"{split}_images"]
        self.labels = arrays[f"{split}_labels"].reshape(len(self.images), -1)[:, 0]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        image = torch.from_numpy(self.images[index]).float().div(255).unsqueeze(0)  # (1, 28, 28) in [0, 1]
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index])


def handwritten(path: Path, epochs: int, batch: int, device: torch.device, seed: int) -> dict:
    """The hand-written loop; returns epoch seconds, training images/s and test accuracy."""
    torch.manual_seed(seed)
    augment = v2.Compose(
        [
            v2.RandomApply([v2.RandomRotation(30)], p=0.5),
            v2.RandomHorizontalFlip(0.5),
            v2.RandomVerticalFlip(0.5),
            v2.RandomApply([v2.RandomAffine(degrees=0, scale=(0.8, 1.2))], p=0.5),
        ]
    )
    workers = min(8, os.cpu_count() or 1)
    options = {"num_workers": workers, "pin_memory": device.type == "cuda", "persistent_workers": True}
    train_loader = DataLoader(NpzImages(path, "train", augment), batch, shuffle=True, drop_last=True, **options)
    val_loader = DataLoader(NpzImages(path, "val"), 256, **options)
    test_loader = DataLoader(NpzImages(path, "test"), 256, **options)
    info = DataInfo("classification", 2, 1, 2, 2, ("0", "1"), image_size=(28, 28))
    model = create_model("resnet18", **_resnet_args(info)).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    epoch_seconds, rates = [], []
    for _ in range(epochs):
        start = time.perf_counter()
        model.train()
        seen = 0
        for images, labels in train_loader:
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            loss = F.cross_entropy(model(images)["class_logits"], labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            loss.item()  # the usual per-step logging
            seen += len(images)
        synchronize(device)
        rates.append(seen / (time.perf_counter() - start))
        _accuracy(model, val_loader, device)
        epoch_seconds.append(time.perf_counter() - start)
    return {
        "epoch_seconds": statistics.median(epoch_seconds[1:]),
        "train_images_per_second": statistics.median(rates[1:]),
        "test_accuracy": _accuracy(model, test_loader, device),
    }


def _resnet_args(info: DataInfo) -> dict:
    return {
        "spatial_dims": 2, "in_channels": 1, "num_classes": info.num_classes, "num_seg_classes": 2,
        "task": "classification", "stem": "cifar", "dropout": 0.0,
    }  # fmt: skip


@torch.no_grad()
def _accuracy(model, loader, device) -> float:
    model.eval()
    right = total = 0
    for images, labels in loader:
        logits = model(images.to(device, non_blocking=True))["class_logits"]
        right += int((logits.argmax(1).cpu() == labels).sum())
        total += len(labels)
    return right / total


def medimg(root: Path, epochs: int, batch: int, device: torch.device, seed: int, extra: list[str]) -> dict:
    """``medimg train`` with the same setup, in this process; returns the same figures."""
    overrides = [
        "data=medmnist", "data.name=breastmnist", f"data.root={root}", "model=resnet18",
        "model.stem=cifar", "model.dropout=0", "augment=paper", f"trainer.batch_size={batch}",
        f"trainer.epochs={epochs}", f"seed={seed}", f"device={device}", "trainer.eval_batch_size=256", *extra,
    ]  # fmt: skip
    with initialize_config_module(config_module="medimg_cli.conf", version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    with tempfile.TemporaryDirectory() as folder:
        summary = train(cfg, Path(folder))
        rows = read_metrics_csv(Path(folder) / "metrics.csv")
    return {
        "epoch_seconds": statistics.median(r["epoch_seconds"] for r in rows[1:]),
        "train_images_per_second": statistics.median(r["train_images_per_second"] for r in rows[1:]),
        "test_accuracy": summary["test"]["accuracy"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "medmnist")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--tuned", nargs="*", default=None, help="medimg overrides of the tuned row (none: no row)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.tuned is None:
        args.tuned = ["trainer.channels_last=true", "trainer.compile=reduce-overhead"] if device.type == "cuda" else []
    path = args.data / "breastmnist.npz"
    if not path.is_file():
        sys.exit(f"{path} is missing: pass --data <folder with breastmnist.npz>")
    torch.backends.cudnn.benchmark = device.type == "cuda"

    common = (args.epochs, args.batch, device, args.seed)
    hand = handwritten(path, *common)
    results = [("hand-written loop", hand), ("medimg train", medimg(args.data.resolve(), *common, []))]
    if args.tuned:
        tuned = medimg(args.data.resolve(), *common, args.tuned)
        results.append((f"medimg train {' '.join(args.tuned)}", tuned))
    peak, label = matmul_tflops(device)
    info = DataInfo("classification", 2, 1, 2, 2, ("0", "1"), image_size=(28, 28))
    flops = forward_flops(create_model("resnet18", **_resnet_args(info)).to(device), 1, (28, 28), device)

    machine = f"{device_name(device)}; {platform.machine()}, {os.cpu_count()} CPU cores"
    lines = [
        "# Hand-written PyTorch loop vs medimg train: ResNet-18 (CIFAR stem) on BreastMNIST 28x28",
        "",
        f"Machine: {machine}. Versions: {', '.join(f'{k} {v}' for k, v in versions().items())}.",
        f"{args.epochs} epochs of 546 training images (batch {args.batch}, `paper` augmentation, Adam 0.001) and "
        f"78 validation images each; median over epochs 2-{args.epochs}. Written by "
        f"`benchmarks/handwritten_vs_medimg.py --device {args.device} --epochs {args.epochs} --batch {args.batch}`.",
        "",
        "| loop | epoch s | training images/s | training TFLOP/s | of matmul peak | test accuracy % |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, result in results:
        achieved = 3 * flops * result["train_images_per_second"] / 1e12
        lines.append(
            f"| {name} | {result['epoch_seconds']:.3f} | {result['train_images_per_second']:,.0f} | "
            f"{achieved:.2f} | {100 * achieved / peak:.1f}% | {100 * result['test_accuracy']:.1f} |"
        )
    lines.append("")
    for name, result in results[1:]:
        lines.append(
            f"- {name}: {hand['epoch_seconds'] / result['epoch_seconds']:.2f}x the hand-written loop's epochs per "
            f"second, {result['train_images_per_second'] / hand['train_images_per_second']:.2f}x its training images/s."
        )
    lines += [
        "",
        f"Matrix multiply ({label}) on this device: {peak:.1f} TFLOP/s; ResNet-18 forward at 28x28: "
        f"{flops / 1e9:.3f} GFLOPs per image, training counted as 3x that.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "handwritten_vs_medimg" + ("" if device.type == "cpu" else f"_{device.type}")
    (args.out / f"{stem}.md").write_text(text)


if __name__ == "__main__":
    main()
