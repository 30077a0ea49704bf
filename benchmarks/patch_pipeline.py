"""Patch training and sliding-window inference: medimg against MONAI's standard pipeline.

    .venv/bin/python benchmarks/patch_pipeline.py                 # writes benchmarks/results/patch_pipeline.{md,csv}
    .venv/bin/python benchmarks/patch_pipeline.py --device cuda   # on a GPU

The same 3D U-Net (medimg's ``unet``, MONAI BasicUNet), the same volumes (``--volumes`` synthetic
volumes of different sizes around 48^3 with a bright sphere as foreground, or the MSD
Hippocampus from ``--hippocampus`` when given), the same patch size, batch, loss (Dice + CE) and
optimizer (Adam) on both sides:

- training patches/s over passes of ``--steps`` steps (median of ``--repeats``, after a warm-up
  pass; the two sides alternate):
  ``medimg``: ``PatchBatches`` (patches cut on the device, a third on foreground) and
  ``loop.train_epoch``; ``MONAI``: ``CacheDataset`` + ``RandCropByPosNegLabeld`` (pos 1 : neg 2,
  the same third) + ``DataLoader`` (``--workers``) and the same step written as MONAI's tutorials do;
- inference seconds per volume over the volumes: ``medimg``'s ``SlidingWindow`` on the padded
  stack, each volume tiled over its region (Gaussian blending, overlap 0.5), against
  ``sliding_window_inference`` on each volume at its own size, both with ``--windows`` windows
  per forward pass and without loss or metrics.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from timing import median_seconds

from medimg_cli.augment import build_augment
from medimg_cli.data import DataInfo
from medimg_cli.data.batches import TensorBatches
from medimg_cli.data.native import stack_native
from medimg_cli.data.patches import PatchBatches
from medimg_cli.fileio import csv_text, write_atomic
from medimg_cli.loop import synchronize, train_epoch
from medimg_cli.losses import TaskLoss
from medimg_cli.models import create_model
from medimg_cli.sliding import SlidingWindow
from medimg_cli.speed import Speed

ROOT = Path(__file__).resolve().parents[1]  # the repository, for the default paths


def synthetic_volumes(count: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(image (1, X, Y, Z), mask (1, X, Y, Z))`` pairs of sizes 40-56 per axis with a bright sphere."""
    rng = np.random.default_rng(seed)
    volumes = []
    for _ in range(count):
        shape = tuple(int(n) for n in rng.integers(40, 57, 3))
        grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"))
        centre = np.array([rng.integers(8, n - 8) for n in shape]).reshape(3, 1, 1, 1)
        mask = (((grid - centre) ** 2).sum(0) < rng.integers(4, 8) ** 2).astype(np.uint8)
        image = rng.normal(0, 1, shape).astype(np.float32) + 2 * mask
        volumes.append((torch.from_numpy(image)[None], torch.from_numpy(mask)[None]))
    return volumes


def hippocampus(root: Path, count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first ``count`` MSD Hippocampus cases, z-scored, as medimg reads NIfTI."""
    from medimg_cli.data.readers import read_mask, read_volume

    cases = sorted((root / "imagesTr").glob("*.nii.gz"))[:count]
    volumes = []
    for path in cases:
        image = torch.from_numpy(read_volume(path)[0])
        image = (image - image.mean()) / image.std().clamp(min=1e-6)
        volumes.append((image, torch.from_numpy(read_mask(root / "labelsTr" / path.name)[None]).to(torch.uint8)))
    return volumes


def unet(device: torch.device, classes: int) -> torch.nn.Module:
    torch.manual_seed(0)
    args = {"spatial_dims": 3, "in_channels": 1, "num_classes": 0, "num_seg_classes": classes, "task": "segmentation"}
    return create_model("unet", **args).to(device)


def medimg_side(volumes, args, device, classes) -> dict[str, Callable[[], object]]:
    """The timed passes of medimg's patch pipeline: ``train`` (``--steps`` steps), ``infer`` (all volumes)."""
    images, masks, roi = stack_native([v[0] for v in volumes], [v[1] for v in volumes], 1)
    tensors = {"image": images, "mask": masks} | ({"roi": roi} if roi is not None else {})
    info = DataInfo("segmentation", 3, 1, 0, classes, (), image_size=(args.patch,) * 3)
    model, loss = unet(device, classes), TaskLoss(info)
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    speed = Speed.from_config({"precision": "fp32", "channels_last": False}, device, model, 3)
    augment, scaler = build_augment({"name": "none"}, info), speed.scaler()
    batches = PatchBatches(tensors, args.batch, device, (args.patch,) * 3, 1 / 3, args.steps, seed=0)
    window, whole = SlidingWindow(model, (args.patch,) * 3, 0.5, args.windows), TensorBatches(tensors, 1, device)

    @torch.no_grad()
    def infer() -> None:  # the forward passes alone, as on the MONAI side (evaluate adds loss and metrics)
        model.eval()
        for batch in whole.epoch():
            window(batch["image"], batch.get("roi"))
        synchronize(device)

    return {"train": lambda: train_epoch(model, batches, 1, loss, optimizer, augment, speed, scaler), "infer": infer}


def monai_side(volumes, args, device, classes) -> dict[str, Callable[[], object]]:
    """The same passes of the MONAI tutorial pipeline on the same data."""
    from monai import transforms as mt
    from monai.data import CacheDataset, DataLoader
    from monai.inferers import sliding_window_inference
    from monai.losses import DiceCELoss

    keys = ["image", "label"]  # padded to the patch first, as MONAI's tutorials do for small volumes
    crop = mt.RandCropByPosNegLabeld(keys, "label", (args.patch,) * 3, pos=1, neg=2, num_samples=1)
    samples = [{"image": image, "label": mask} for image, mask in volumes]
    dataset = CacheDataset(
        samples, mt.Compose([mt.EnsureTyped(keys), mt.SpatialPadd(keys, (args.patch,) * 3), crop]), progress=False
    )
    loader = DataLoader(
        dataset,
        batch_size=args.batch,
        shuffle=True,
        num_workers=args.workers,
        drop_last=True,
        persistent_workers=args.workers > 0,
    )
    if not len(loader):
        raise SystemExit(f"--batch {args.batch} is larger than the {len(volumes)} volumes")
    model, loss_fn = unet(device, classes), DiceCELoss(to_onehot_y=True, softmax=True)
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)

    def train() -> None:
        model.train()
        done = 0
        while done < args.steps:
            for batch in loader:
                image, label = batch["image"].to(device), batch["label"].to(device)
                optimizer.zero_grad(set_to_none=True)
                loss_fn(model(image)["seg_logits"], label.long()).backward()
                optimizer.step()
                done += 1
                if done == args.steps:
                    break
        synchronize(device)

    @torch.no_grad()
    def infer() -> None:
        model.eval()
        for image, _ in volumes:
            sliding_window_inference(image[None].to(device), (args.patch,) * 3, args.windows, model, 0.5, "gaussian")
        synchronize(device)

    return {"train": train, "infer": infer}


def measure(sides: dict[str, dict[str, Callable[[], object]]], repeats: int) -> dict[str, dict[str, float]]:
    """Median seconds of each side's passes, the sides alternating so both see the same machine state."""
    for passes in sides.values():  # warm-up: first-call allocations and kernel selection
        for run in passes.values():
            run()
    times = {name: {kind: [] for kind in passes} for name, passes in sides.items()}
    for _ in range(repeats):
        for name, passes in sides.items():
            for kind, run in passes.items():
                times[name][kind].append(median_seconds(run, 1, warmup=False))
    return {name: {kind: statistics.median(values) for kind, values in kinds.items()} for name, kinds in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--volumes", type=int, default=24)
    parser.add_argument("--hippocampus", type=Path, default=None, help="an MSD Task04 folder instead of synthetic")
    parser.add_argument("--patch", type=int, default=32)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--windows", type=int, default=4)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    import monai

    device = torch.device(args.device)
    volumes = hippocampus(args.hippocampus, args.volumes) if args.hippocampus else synthetic_volumes(args.volumes)
    classes = int(max(int(m.max()) for _, m in volumes)) + 1
    data = f"MSD Hippocampus, {len(volumes)} cases" if args.hippocampus else f"{len(volumes)} synthetic volumes"
    sides = {side.__name__.split("_")[0]: side(volumes, args, device, classes) for side in (medimg_side, monai_side)}
    seconds = measure(sides, args.repeats)
    results = {name: (args.steps * args.batch / t["train"], t["infer"] / len(volumes)) for name, t in seconds.items()}
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "none"
    machine = f"{platform.machine()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, GPU: {gpu}"
    header = ("pipeline", "device", "training_patches_per_second", "inference_seconds_per_volume")
    rows = [(name, str(device), f"{rate:.2f}", f"{seconds:.3f}") for name, (rate, seconds) in results.items()]
    (m_rate, m_sec), (o_rate, o_sec) = results["medimg"], results["monai"]
    stem = "patch_pipeline" if device.type == "cpu" else f"patch_pipeline_{device.type}"
    args.out.mkdir(parents=True, exist_ok=True)
    write_atomic(args.out / f"{stem}.csv", csv_text(header, rows))
    lines = [
        "# Patch training and sliding-window inference: medimg vs MONAI's standard pipeline",
        "",
        f"Machine: {machine}. Versions: torch {torch.__version__}, monai {monai.__version__}.",
        f"Data: {data}; 3D BasicUNet, patch {args.patch}^3, batch {args.batch}, {args.steps} steps per pass, "
        f"a warm-up pass, median of {args.repeats} alternating repeats, DataLoader workers {args.workers}, "
        f"{args.windows} windows per forward pass, overlap 0.5.",
        "",
        "| pipeline | training patches/s | inference s/volume |",
        "|---|---:|---:|",
        *(f"| {name} | {rate} | {seconds} |" for name, _, rate, seconds in rows),
        "",
        f"medimg / MONAI: training {m_rate / o_rate:.2f}x, inference {o_sec / m_sec:.2f}x (higher is faster).",
    ]
    write_atomic(args.out / f"{stem}.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
