"""``medimg synth sample``: images from a trained generator, as files a training run can mix in.

Writes into the output folder ``images/<class>_<n>.npy`` (``(C, *spatial)`` float32 in the real
data's intensity range), ``manifest.csv`` (``image,label,source,generator``: what
``data.synthetic`` reads; ``source`` is always ``synthetic``), ``generated.csv`` (one row per
image: its class, the generator run and epoch, the seed and its index in the draw, the layout
of Gomathi and Roopa Chandrika's Table 1) and ``grid.png`` (up to 8 samples per class).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from medimg_cli.checkpoint import load_checkpoint
from medimg_cli.config import resolve_device
from medimg_cli.errors import ConfigError
from medimg_cli.fileio import csv_text, write_atomic, write_json
from medimg_cli.pictures import Tile, grid_figure
from medimg_cli.reporting.plots import save_figure
from medimg_cli.synth import build_generator, from_unit

GRID_PER_CLASS = 8


def load_generator(path: str | Path, device: torch.device) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The generator stored by ``medimg synth train`` at ``path`` (evaluation mode) and its checkpoint."""
    payload = load_checkpoint(path, device)
    if "generator" not in payload:
        raise ConfigError(f"checkpoint {path} is not a generator's; pass <synth run>/checkpoints/last.pt")
    model = build_generator(payload["generator"], payload["image_shape"], len(payload["class_names"]), payload["args"])
    model.load_state_dict(payload["state_dict"])
    return model.to(device).eval(), payload


def sample_images(cfg: DictConfig, out: Path) -> dict[str, Any]:
    """Draw ``synth.per_class`` images of every class into ``out``; returns what was written."""
    per_class, batch = cfg.synth.per_class, cfg.synth.batch_size
    for key, value in (("per_class", per_class), ("batch_size", batch)):
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"synth.{key}={value} must be a whole number >= 1")
    device = resolve_device(cfg.device)
    model, payload = load_generator(cfg.checkpoint, device)
    names = payload["class_names"]
    labels = torch.arange(len(names)).repeat_interleave(per_class)
    draw = torch.Generator(device).manual_seed(cfg.seed)
    images = torch.cat([model.sample(part.to(device), draw).cpu() for part in labels.split(batch)])
    images = from_unit(images, payload["scale"]).float()
    source = f"{Path(cfg.checkpoint).resolve().parent.parent.name} epoch {payload['epoch']}"
    rows, table = [], []
    (out / "images").mkdir(parents=True, exist_ok=True)
    for index, (image, label) in enumerate(zip(images, labels.tolist(), strict=True)):
        name = f"images/{names[label]}_{index:05d}.npy"
        buffer = io.BytesIO()
        np.save(buffer, image.numpy())
        write_atomic(out / name, buffer.getvalue())
        rows.append((name, names[label], "synthetic", source))
        table.append((name, names[label], payload["generator"], source, cfg.seed, index))
    write_atomic(out / "manifest.csv", csv_text(("image", "label", "source", "generator"), rows))
    header = ("image", "class", "model", "generator run", "seed", "draw")
    write_atomic(out / "generated.csv", csv_text(header, table))
    shown = min(per_class, GRID_PER_CLASS)
    grid = [[Tile(images[k * per_class + i]) for i in range(shown)] for k in range(len(names))]
    save_figure(grid_figure(grid, names), out / "grid.png", palette=True)
    summary = {"generator": payload["generator"], "source": source, "checkpoint": str(cfg.checkpoint),
               "per_class": per_class, "images": len(rows), "seed": cfg.seed}  # fmt: skip
    write_json(out / "sample.json", summary)
    return summary
