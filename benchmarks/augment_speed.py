"""Augmentation speed: medimg's batched recipes against per-sample MONAI transforms in a DataLoader.

    .venv/bin/python benchmarks/augment_speed.py                 # writes benchmarks/results/augment_speed.{md,csv}
    .venv/bin/python benchmarks/augment_speed.py --device cuda   # the batched side on a GPU

For the ``paper`` and ``strong`` recipes, images/s of augmenting N image+mask pairs once:

- ``medimg batched``: ``build_augment(recipe)`` on batches already on ``--device``
  (synchronised before the clock stops);
- ``MONAI per-sample``: the same transforms as MONAI dictionary transforms (``RandRotated``,
  ``RandFlipd``, ``RandZoomd``, ``RandAffined``, ``Rand2DElasticd``, ``RandScaleCropd`` +
  ``Resized``, intensity transforms), one sample at a time in a ``DataLoader`` with
  ``num_workers`` = CPU cores and batch 32, as a MONAI training loop would run them.

Median of ``--repeats`` passes after one warm-up pass. Data loading is not timed: both sides
start from tensors in memory.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import platform
from pathlib import Path

import torch
from omegaconf import OmegaConf
from timing import median_seconds

from medimg_cli.augment import build_augment
from medimg_cli.data import DataInfo
from medimg_cli.data.phantom import generate_phantom

ROOT = Path(__file__).resolve().parents[1]  # the repository, for the default paths

BATCH = 32


def monai_pipeline(recipe: str, size: int):
    """MONAI dictionary transforms matching ``conf/augment/<recipe>.yaml``."""
    from monai import transforms as mt

    keys, modes = ["image", "mask"], ("bilinear", "nearest")
    flips = [mt.RandFlipd(keys, prob=0.5, spatial_axis=axis) for axis in (0, 1)]
    if recipe == "paper":
        return mt.Compose(
            [
                mt.RandRotated(keys, range_x=math.radians(30), prob=0.5, mode=modes, padding_mode="zeros"),
                *flips,
                mt.RandZoomd(keys, prob=0.5, min_zoom=0.8, max_zoom=1.2, mode=("bilinear", "nearest"), keep_size=True),
            ]
        )
    return mt.Compose(
        [
            mt.RandAffined(
                keys,
                prob=0.8,
                rotate_range=math.radians(20),
                scale_range=0.15,
                translate_range=0.1 * size,
                mode=modes,
                padding_mode="zeros",
            ),
            *flips,
            mt.Rand2DElasticd(keys, spacing=size // 4, magnitude_range=(0, 1), prob=0.2, mode=modes),
            mt.RandScaleCropd(keys, roi_scale=0.7, max_roi_scale=1.0, random_size=True),
            mt.Resized(keys, spatial_size=(size, size), mode=("bilinear", "nearest")),
            mt.RandShiftIntensityd("image", offsets=0.1, prob=0.5),
            mt.RandAdjustContrastd("image", gamma=(0.7, 1.5), prob=0.5),
            mt.RandScaleIntensityd("image", factors=0.25, prob=0.5),
            mt.RandGaussianSmoothd("image", sigma_x=(0.5, 1.0), sigma_y=(0.5, 1.0), prob=0.2),
            mt.RandGaussianNoised("image", std=0.05, prob=0.3),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()

    import monai
    from monai.data import DataLoader, Dataset

    device = torch.device(args.device)
    phantom = generate_phantom(args.images, args.size, spatial_dims=2, seed=0)
    images, masks = torch.as_tensor(phantom["image"]), torch.as_tensor(phantom["mask"])
    info = DataInfo("segmentation", 2, 1, 1, 2, ("lesion",), image_size=(args.size, args.size))
    workers = os.cpu_count() or 1
    rows = []
    for recipe in ("paper", "strong"):
        cfg = OmegaConf.to_container(OmegaConf.load(ROOT / "medimg_cli" / "conf" / "augment" / f"{recipe}.yaml"))
        augmenter = build_augment(cfg, info)
        on_device = images.to(device), masks.to(device)

        def batched(augmenter=augmenter, on_device=on_device):
            for start in range(0, args.images, BATCH):
                augmenter({"image": on_device[0][start : start + BATCH], "mask": on_device[1][start : start + BATCH]})
            if device.type == "cuda":
                torch.cuda.synchronize(device)

        samples = [{"image": images[i], "mask": masks[i]} for i in range(args.images)]
        loader = DataLoader(
            Dataset(samples, monai_pipeline(recipe, args.size)),
            batch_size=BATCH,
            num_workers=workers,
            persistent_workers=True,
        )

        def per_sample(loader=loader):
            for _ in loader:
                pass

        for method, run, where in (
            ("medimg batched", batched, str(device)),
            (f"MONAI per-sample, DataLoader num_workers={workers}", per_sample, "cpu"),
        ):
            seconds = median_seconds(run, args.repeats)
            rows.append((recipe, method, where, args.images, seconds, args.images / seconds))
            print(f"{recipe:7s} {method:45s} {where:5s} {args.images / seconds:10.0f} images/s", flush=True)

    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "none"
    machine = f"{platform.machine()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, GPU: {gpu}"
    versions = f"python {platform.python_version()}, torch {torch.__version__}, monai {monai.__version__}"
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "augment_speed" if device.type == "cpu" else f"augment_speed_{device.type}"
    with (args.out / f"{stem}.csv").open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(("recipe", "method", "device", "images", "seconds", "images_per_second"))
        writer.writerows(rows)
    lines = [
        "# Augmentation speed: medimg batched recipes vs MONAI per-sample transforms in a DataLoader",
        "",
        f"Machine: {machine}. Versions: {versions}.",
        f"{args.images} phantom images + masks of {args.size}x{args.size}, batch {BATCH}, median of "
        f"{args.repeats} passes after a warm-up. Written by `benchmarks/augment_speed.py --device {args.device}`.",
        "",
        "| recipe | method | device | images/s | speed-up |",
        "|---|---|---|---:|---:|",
    ]
    for recipe in ("paper", "strong"):
        ours, theirs = (r for r in rows if r[0] == recipe)
        for row in (ours, theirs):
            lines.append(f"| {recipe} | {row[1]} | {row[2]} | {row[5]:.0f} | {row[5] / theirs[5]:.1f}x |")
    (args.out / f"{stem}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
