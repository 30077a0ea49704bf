"""``medimg synth train``'s recipe: the data's training split, the generator, its epochs.

Each epoch shuffles the real training images (order fixed by the seed and the epoch), runs the
generator's ``train_step`` on every batch, appends the mean losses to ``metrics.csv``, writes
``checkpoints/last.pt`` (weights, optimisers, RNG state, history) and, every
``synth.sample_every`` epochs, ``samples/epoch_<N>.png``: ``synth.grid_per_class`` samples per
class, one row each, from the same noise every time. ``resume=true`` continues from ``last.pt``.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from medimg_cli.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from medimg_cli.config import resolve_device, seed_everything
from medimg_cli.data import Splits, build_data
from medimg_cli.errors import ConfigError
from medimg_cli.fileio import csv_text, write_atomic, write_json
from medimg_cli.pictures import Tile, grid_figure
from medimg_cli.reporting.plots import save_figure
from medimg_cli.runinfo import device_name, versions
from medimg_cli.synth import build_generator, from_unit, generator_args, to_unit

log = logging.getLogger(__name__)


def real_data(cfg: DictConfig) -> Splits:
    """The data a generator learns: a single-label classification source."""
    data = build_data(OmegaConf.to_container(cfg.data, resolve=True, throw_on_missing=True))
    if data.info.task != "classification" or data.info.multilabel:
        kind = f"data.task={data.info.task}" + (" (multi-label)" if data.info.multilabel else "")
        raise ConfigError(f"medimg synth needs one class label per image; {kind} cannot condition a generator")
    return data


def train_generator(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Train ``cfg.synth`` on the training split into ``run_dir``; returns the summary."""
    for key in ("epochs", "batch_size", "sample_every", "grid_per_class"):
        if not isinstance(cfg.synth[key], int) or cfg.synth[key] < 1:
            raise ConfigError(f"synth.{key}={cfg.synth[key]} must be a whole number >= 1")
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    data = real_data(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    images, labels = data.train["image"], data.train["label"]
    scale = [float(images.min()), float(images.max())]
    args = generator_args(OmegaConf.to_container(cfg.synth, resolve=True))
    model = build_generator(cfg.synth.name, images.shape[1:], data.info.num_classes, args).to(device)
    base = {
        "generator": cfg.synth.name,
        "args": args,
        "image_shape": list(images.shape[1:]),
        "scale": scale,
        "class_names": list(data.info.class_names),
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    history, first = _resume(cfg, run_dir, model, base)
    unit, labels = to_unit(images, scale).to(device), labels.to(device)  # on the device once, not per batch
    start = time.perf_counter()
    for epoch in range(first, cfg.synth.epochs + 1):
        history.append(_epoch(model, unit, labels, cfg, epoch))
        left = (cfg.synth.epochs - epoch) * (time.perf_counter() - start) / (epoch - first + 1)
        shown = "  ".join(f"{k} {history[-1][k]:.4f}" for k in model.losses)
        log.info("epoch %d/%d  %s  ETA %dm%02ds", epoch, cfg.synth.epochs, shown, left // 60, left % 60)
        write_atomic(run_dir / "metrics.csv", csv_text(list(history[0]), [list(r.values()) for r in history]))
        save_checkpoint(run_dir / "checkpoints" / "last.pt", {
            **base, "epoch": epoch, "state_dict": model.state_dict(), "history": history, "rng": rng_state(),
            "optimizers": {k: o.state_dict() for k, o in model.optimizers.items()},
        })  # fmt: skip
        if epoch % cfg.synth.sample_every == 0 or epoch == cfg.synth.epochs:
            sample_grid(model, base, cfg.synth.grid_per_class, device, run_dir / "samples" / f"epoch_{epoch:03d}.png")
    summary = {
        "generator": cfg.synth.name, "data": cfg.data.get("name"), "epochs": len(history),
        "image_shape": base["image_shape"], "classes": base["class_names"], "scale": scale,
        "train_images": dict(Counter(data.info.class_names[k] for k in labels.tolist())),
        "parameters": sum(p.numel() for p in model.parameters()), "last": history[-1],
        "seconds": time.perf_counter() - start, "device": device_name(device), "seed": cfg.seed, "versions": versions(),
    }  # fmt: skip
    write_json(run_dir / "summary.json", summary)
    return summary


def _resume(cfg: DictConfig, run_dir: Path, model: torch.nn.Module, base: dict) -> tuple[list[dict], int]:
    """The history so far and the first epoch to train: ``last.pt``'s with ``resume=true``."""
    last = run_dir / "checkpoints" / "last.pt"
    if not cfg.resume:
        if last.exists():
            raise ConfigError(f"{run_dir} already holds a generator; pass resume=true to continue it")
        return [], 1
    payload = load_checkpoint(last)
    if payload.get("generator") != base["generator"] or payload.get("args") != base["args"]:
        raise ConfigError(f"{last} holds another generator ({payload.get('generator')}); resume with its settings")
    model.load_state_dict(payload["state_dict"])
    for name, optimizer in model.optimizers.items():
        optimizer.load_state_dict(payload["optimizers"][name])
    set_rng_state(payload["rng"])
    return payload["history"], payload["epoch"] + 1


def _epoch(model, images: torch.Tensor, labels: torch.Tensor, cfg: DictConfig, epoch: int) -> dict:
    """One pass over the training images; the epoch's mean losses (weighted by batch size) and time."""
    start, totals, seen = time.perf_counter(), Counter(), 0
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(cfg.seed * 100_003 + epoch))
    order = order.to(images.device)
    model.train()
    for batch in order.split(cfg.synth.batch_size):
        losses = model.train_step(images[batch], labels[batch])
        totals.update({k: v * len(batch) for k, v in losses.items()})
        seen += len(batch)
    return {"epoch": epoch, **{k: totals[k] / seen for k in model.losses}, "epoch_seconds": time.perf_counter() - start}


def sample_grid(model, base: dict, per_class: int, device, path: Path, seed: int = 0) -> None:
    """``per_class`` samples of each class, one row per class, from noise fixed by ``seed``."""
    names = base["class_names"]
    labels = torch.arange(len(names), device=device).repeat_interleave(per_class)
    model.eval()
    images = from_unit(model.sample(labels, torch.Generator(device).manual_seed(seed)), base["scale"]).cpu()
    rows = [[Tile(image) for image in images[k * per_class : (k + 1) * per_class]] for k in range(len(names))]
    save_figure(grid_figure(rows, names), path, palette=True)
