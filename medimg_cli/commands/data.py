"""``medimg data inspect``: describe a dataset before training on it; ``medimg data plan``: show
the plan that ``auto`` keys would take (``data/plan.py``).

    medimg data inspect data=medmnist data.name=breastmnist data.root=../shared/data/medmnist
    medimg data inspect data=nifti data.root=~/ct/images data.mask_root=~/ct/masks
    medimg data plan data=manifest data.path=vessels.csv data.task=segmentation

Both build the data exactly as ``medimg train`` would (same config group, same splits and
audit); inspect writes ``report.md``, ``report.json`` and ``examples.png``, plan ``plan.json``.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from medimg_cli.config import check_numbers, resolve_device
from medimg_cli.data import SPLITS, Splits, build_data
from medimg_cli.data.plan import PLANNED, memory_budget
from medimg_cli.errors import ConfigError
from medimg_cli.fileio import write_atomic, write_json
from medimg_cli.hydra_app import dispatch, run_hydra
from medimg_cli.pictures import Tile, class_title, grid_figure
from medimg_cli.reporting.plots import plt, save_figure
from medimg_cli.tables import make_console

HELP = "inspect a dataset (counts, shapes, intensities, masks, leakage audit) or plan its segmentation"
SUBCOMMANDS = {
    "inspect": "counts, shapes, intensities, masks and the leakage audit per split, with example pictures",
    "plan": "the fingerprint and plan that data.*=auto keys take (spacing, patch, batch, normalisation, network)",
}
log = logging.getLogger(__name__)


def main(argv: list[str]) -> int:
    command = dispatch("data", SUBCOMMANDS, argv)
    if isinstance(command, int):
        return command
    task = _inspect_task if command == "inspect" else _plan_task
    return run_hydra(f"data {command}", task, argv[1:])


def _inspect_task(cfg: DictConfig) -> dict[str, Any]:
    return inspect(cfg, Path(HydraConfig.get().runtime.output_dir))


def _plan_task(cfg: DictConfig) -> dict[str, Any]:
    return plan(cfg, Path(HydraConfig.get().runtime.output_dir))


def plan(cfg: DictConfig, out: Path) -> dict[str, Any]:
    """Plan ``cfg.data`` as if every planned key said ``auto`` (native size), print the plan and
    write ``plan.json`` into ``out``; returns the plan."""
    data_cfg = OmegaConf.to_container(cfg.data, resolve=True, throw_on_missing=True)
    data_cfg |= {key: "auto" for key in PLANNED} | {"image_size": None}
    data_cfg["memory_gb"] = memory_budget(cfg.memory_gb, resolve_device(cfg.device))
    found = build_data(data_cfg).plan
    if found is None:
        raise ConfigError(f"data.source={data_cfg['source']} has no files to plan; plans are for file datasets")
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "plan.json", found)
    console = make_console()
    console.print(plan_table(found))
    console.print(f"plan: {out / 'plan.json'}")
    return found


def plan_table(found: dict[str, Any]) -> str:
    """The plan as a Markdown table of the keys it fills and why."""
    fingerprint, network = found["fingerprint"], found["network"]
    rows = [
        (
            "data.spacing",
            found["spacing"] or "none (no voxel spacing in the files)",
            "median spacing of the training cases (coarse axis: 10th percentile)",
        ),
        ("data.patch_size", found["patch_size"], f"median shape {found['median_shape']}, fitted to the budget"),
        (
            "trainer.batch_size",
            found["batch_size"],
            f"patches in {found['memory_gb']:g} GB (estimate {found['estimated_gb']:g} GB), at least 2",
        ),  # fmt: skip
        ("data.normalize", found["normalize"], f"modality {fingerprint.get('modality') or 'not given'}"),
        ("model.strides", network["strides"], "model=dynunet: halve axes >= 8 voxels, not much coarser than finest"),
        ("model.kernels", network["kernels"], "3 on axes within 2x the finest spacing, else 1"),
        ("model.filters", network["filters"], "32, doubling per stage"),
    ]
    lines = [f"**Plan** from {fingerprint['cases']} training cases", "", "| key | value | from |", "|---|---|---|"]
    lines += [f"| {key} | {value} | {why} |" for key, value, why in rows]
    return "\n".join(lines) + "\n"


def inspect(cfg: DictConfig, out: Path) -> dict[str, Any]:
    """Build the data of ``cfg``, write the report into ``out`` and return it."""
    check_numbers(cfg)
    if cfg.examples < 0:
        raise ConfigError(f"examples={cfg.examples} must be >= 0")
    data = build_data(OmegaConf.to_container(cfg.data, resolve=True, throw_on_missing=True))
    report = describe(data)
    report["data"] = OmegaConf.to_container(cfg.data, resolve=True)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "report.json", report)
    write_atomic(out / "report.md", markdown_report(report))
    if cfg.examples:
        save_figure(example_grid(data, cfg.examples), out / "examples.png", palette=True)
    console = make_console()
    console.print(markdown_report(report))
    console.print(f"report folder: {out}")
    return report


def describe(data: Splits) -> dict[str, Any]:
    """Counts, shapes and intensity statistics per split, mask class balance and the audit."""
    info = data.info
    report: dict[str, Any] = {
        "task": info.task,
        "spatial_dims": info.spatial_dims,
        "channels": info.in_channels,
        "classes": list(info.class_names),
        "fingerprint": data.fingerprint,
        "splits": {},
        "audit": data.audit or {},
    }
    known = [s for s in data.spacings or [] if s]
    if known:  # native voxel spacing before resizing, per axis
        axes = np.asarray(known)
        report["native_spacing_mm"] = {"min": axes.min(0).tolist(), "max": axes.max(0).tolist()}
    for name in SPLITS:
        split = data.split(name)
        image = split["image"].float()
        entry: dict[str, Any] = {
            "images": len(image),
            "shape": list(image.shape[1:]),
            "intensity": {
                "min": image.min().item(),
                "max": image.max().item(),
                "mean": image.mean().item(),
                "std": image.std().item(),
            },
        }
        if "label" in split and not info.multilabel:
            counts = torch.bincount(split["label"], minlength=info.num_classes).tolist()
            entry["per_class"] = dict(zip(info.class_names, counts, strict=True))
        elif "label" in split:
            entry["positives_per_label"] = dict(
                zip(info.class_names, split["label"].sum(0).int().tolist(), strict=True)
            )
        if "mask" in split:
            counts = torch.bincount(split["mask"].flatten().long(), minlength=info.num_seg_classes).double()
            entry["mask_class_fraction"] = (counts / counts.sum()).tolist()
        if data.meta:  # value counts of low-cardinality metadata columns (site, scanner, sex...)
            entry["metadata"] = {c: dict(Counter(data.meta[name][c])) for c in data.subgroup_columns()}
        report["splits"][name] = entry
    return report


def markdown_report(report: dict[str, Any]) -> str:
    """The report as Markdown tables."""
    lines = [
        f"**Dataset report**: {report['task']}, {report['spatial_dims']}D, {report['channels']} channel(s), "
        f"fingerprint {report['fingerprint']}",
    ]
    if "native_spacing_mm" in report:
        spacing = report["native_spacing_mm"]
        lines.append(f"Native voxel spacing (mm, before resizing): min {spacing['min']}, max {spacing['max']}")
    lines += [
        "",
        "| split | images | shape | min | max | mean | sd | per class | mask class fractions |",
        "|---|---:|---|---:|---:|---:|---:|---|---|",
    ]
    for name, entry in report["splits"].items():
        stats = entry["intensity"]
        per_class = entry.get("per_class") or entry.get("positives_per_label") or {}
        fractions = ", ".join(f"{f:.4f}" for f in entry.get("mask_class_fraction", []))
        lines.append(
            f"| {name} | {entry['images']} | {'x'.join(map(str, entry['shape']))} | {stats['min']:.3g} | "
            f"{stats['max']:.3g} | {stats['mean']:.3g} | {stats['std']:.3g} | "
            f"{', '.join(f'{k}: {v}' for k, v in per_class.items())} | {fractions} |"
        )
    audit = report["audit"]
    if "patients_train" in audit:
        verdict = "no patient in two splits"
    elif audit:
        verdict = "no patient ids in this source; duplicates checked"
    else:
        verdict = "not needed, the source defines the splits"
    lines += ["", f"**Leakage audit**: {verdict}"]
    for key, value in audit.items():
        lines.append(f"- {key.replace('_', ' ')}: {value}")
    for name, entry in report["splits"].items():
        for column, counts in entry.get("metadata", {}).items():
            lines.append(f"- {name} {column}: " + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
    return "\n".join(lines) + "\n"


def example_grid(data: Splits, per_split: int) -> plt.Figure:
    """One row per split, its first ``per_split`` images (3D: middle slice) with their masks in
    colour and their classes as titles (``pictures.grid_figure``)."""
    rows = []
    for name in SPLITS:
        split = data.split(name)
        count = min(per_split, len(split["image"]))
        masks = split["mask"][:count, 0] if "mask" in split else [None] * count
        labels = split["label"][:count] if "label" in split else [None] * count
        names = data.info.class_names
        rows.append([Tile(split["image"][i], masks[i], class_title(names, labels[i])) for i in range(count)])
    return grid_figure(rows, list(SPLITS))
