"""Datasets: every source turns its config into the same in-memory splits.

A source is a function ``(data_cfg) -> Splits`` registered under its config name
(``conf/data/<source>.yaml`` has ``source: <source>``; ``name`` is the dataset, e.g. a
MedMNIST flag such as ``breastmnist``). Samples are dictionaries of tensors:
``image`` ``(N, C, *spatial)`` float32, ``label`` ``(N,)`` int64, ``mask`` ``(N, 1, *spatial)``
uint8; a split holds the keys its task needs. A registration pair is one sample: ``image``
``(N, 2C, *spatial)`` holds the moving image's C channels, then the fixed image's, and ``mask``
``(N, 2, *spatial)`` the moving then the fixed label map; ``landmarks`` ``(N, 2, K, D)``, where
known, K corresponding points of each (pixel coordinates; NaN rows pad pairs with fewer).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import pkgutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from medimg_cli.errors import ConfigError, unknown_choice
from medimg_cli.plugins import load_plugins
from medimg_cli.registry import Registry

SUPERVISED = ("classification", "segmentation", "multitask")  # what a source reads
# data.task: anomaly reads a source as classification (data/anomaly.py); registration aligns pairs
TASKS = (*SUPERVISED, "anomaly", "registration")
SPLITS = ("train", "val", "test")
# Splits' records that hold one entry per sample of each split (besides the tensors and ``meta``)
PER_SAMPLE = ("ids", "names", "pixel_spacing", "sizes", "affines", "originals")
# data.task=registration: sources that make their own pairs (the phantom's known deformations, a manifest's list)
SELF_PAIRED = ("phantom", "manifest")
MAX_SUBGROUP_VALUES = 20  # metadata columns with more distinct values (ids, dates...) are not subgroups


@dataclass(frozen=True)
class DataInfo:
    """What models and metrics need to know about a dataset."""

    task: str
    spatial_dims: int
    in_channels: int
    num_classes: int  # image-level classes (classification and multitask)
    num_seg_classes: int  # mask classes including background (segmentation and multitask)
    class_names: tuple[str, ...]
    multilabel: bool = False  # labels ``(N, num_classes)`` of independent 0/1 targets (e.g. ChestMNIST)
    image_size: tuple[int, ...] = ()  # spatial size of every image, set by ``build_data``
    # binary classification: the index of the class that is the finding (data.positive_class; a
    # source may set its dataset's default), which binary F1, sensitivity and PPV are about
    positive_class: int | None = None
    average: str = "macro"  # how F1 is averaged: binary (the positive class), macro or weighted
    modalities: int = 1  # the images' channels are this many modalities of in_channels / modalities each
    modality_names: tuple[str, ...] = ()  # their names where the data give them (a manifest's columns)
    landmarks: bool = False  # registration: pairs carry corresponding points (``landmarks`` (N, 2, K, D))

    @property
    def classifies(self) -> bool:
        return self.task in ("classification", "multitask")

    @property
    def segments(self) -> bool:
        return self.task in ("segmentation", "multitask")

    @property
    def detects(self) -> bool:
        """Anomaly detection: normal images only in training, a score and a map per image."""
        return self.task == "anomaly"

    @property
    def registers(self) -> bool:
        """Registration: (moving, fixed) pairs in, a displacement field out (``in_channels`` counts both)."""
        return self.task == "registration"


@dataclass
class Splits:
    """Train/val/test tensors plus the dataset description and a content fingerprint."""

    train: dict[str, torch.Tensor]
    val: dict[str, torch.Tensor]
    test: dict[str, torch.Tensor]
    info: DataInfo
    fingerprint: str
    ids: dict[str, list[str]] | None = None  # anonymous sample ids per split, written to splits.json
    # per split, the files' paths relative to the dataset (may name patients: written only on request)
    names: dict[str, list[str]] | None = None
    audit: dict[str, int] | None = None  # leakage-audit counts (patients per split, duplicates)
    skipped: list[str] | None = None  # one line per bad file skipped (data.on_bad_file=skip)
    meta: dict[str, dict[str, list[str]]] | None = None  # per split: metadata column -> value per sample
    spacings: list[list[float] | None] | None = None  # native voxel spacing (mm) of each record, before resizing
    pixel_spacing: dict[str, list[list[float] | None]] | None = None  # per split: mm per pixel of each sample
    # per split and sample: [its extent in the stack (before padding), its shape on the file's own
    # grid (before data.spacing and data.image_size)]: what maps outputs back (evaluation/written.py)
    sizes: dict[str, list[list[list[int]]]] | None = None
    affines: dict[str, list[list[list[float]] | None]] | None = None  # per split: NIfTI affine of each volume
    plan: dict | None = None  # the plan that filled data keys set to auto (data/plan.py)
    # per split and sample, after a data.spacing resampling: the (1 or 2, *file grid) uint8 mask (and
    # ROI) and the file's spacing, which medimg eval scores predictions against; else None
    originals: dict[str, list[tuple[torch.Tensor, list[float]] | None]] | None = None
    synthetic: dict | None = None  # what data.synthetic mixed into the training split (data/synthetic.py)

    def split(self, name: str) -> dict[str, torch.Tensor]:
        if name not in SPLITS:
            raise unknown_choice("split", name, SPLITS)
        return getattr(self, name)

    def keep(self, name: str, chosen: Sequence[int]) -> None:
        """Keep only the samples at positions ``chosen`` of split ``name``, in every per-sample record."""
        index = torch.as_tensor(list(chosen), dtype=torch.long)
        setattr(self, name, {key: value[index] for key, value in self.split(name).items()})
        for field_name in PER_SAMPLE:
            per_split = getattr(self, field_name)
            if per_split is not None and per_split.get(name) is not None:
                setattr(self, field_name, {**per_split, name: [per_split[name][i] for i in chosen]})
        if self.meta and name in self.meta:
            self.meta = {**self.meta, name: {c: [v[i] for i in chosen] for c, v in self.meta[name].items()}}

    def subgroup_columns(self) -> list[str]:
        """Metadata columns with few distinct values over the whole dataset (site, scanner, sex;
        not ids or free text), for per-subgroup counts and metrics."""
        if not self.meta:
            return []
        columns = next(iter(self.meta.values()))
        distinct = {c: {v for split in self.meta.values() for v in split[c]} for c in columns}
        return [c for c in columns if len(distinct[c]) <= MAX_SUBGROUP_VALUES]


SOURCES: Registry[Callable[[Mapping], Splits]] = Registry("data source")


def fingerprint(arrays: Mapping[str, np.ndarray]) -> str:
    """A short SHA-256 of the arrays' bytes, shapes and dtypes, in key order."""
    digest = hashlib.sha256()
    for key in sorted(arrays):
        array = np.ascontiguousarray(arrays[key])
        digest.update(f"{key}:{array.dtype}:{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()[:16]


def keys_for_task(task: str) -> tuple[str, ...]:
    """The sample keys a task trains on."""
    only = {"classification": ("image", "label"), "segmentation": ("image", "mask"), "registration": ("image", "mask")}
    return only.get(task, ("image", "label", "mask"))


def source_modules() -> dict[str, str]:
    """Data source (the ``data.source`` key and YAML stem) -> its module, ``<source>_source.py``
    in this package; found by name so a new source needs no list, and only the chosen one is imported."""
    return {
        m.name.removesuffix("_source"): m.name for m in pkgutil.iter_modules(__path__) if m.name.endswith("_source")
    }


def build_data(cfg: Mapping) -> Splits:
    """Build the splits of the data source ``cfg["source"]`` (``cfg["name"]`` names the dataset)."""
    if cfg.get("task") not in TASKS:
        raise unknown_choice("data.task", cfg.get("task"), TASKS)
    source = cfg.get("source")
    modules = source_modules()
    if source in modules:
        importlib.import_module(f"{__name__}.{modules[source]}")
    else:  # a source an installed package declares (entry point group medimg.sources)
        load_plugins("medimg.sources", SOURCES)
        if source not in SOURCES:
            raise unknown_choice("data.source", source, [*modules, *SOURCES.names()])
    if cfg["task"] == "anomaly":
        from medimg_cli.data.anomaly import anomaly_splits, source_task  # it imports this module

        splits = anomaly_splits(SOURCES.get(source)({**cfg, "task": source_task(cfg)}), cfg.get("normal_classes"))
    elif cfg["task"] == "registration" and source not in SELF_PAIRED:  # pairs of a segmentation dataset
        from medimg_cli.data.pairs import paired_splits  # it imports this module

        splits = SOURCES.get(source)({**cfg, "task": "segmentation"})
        splits = paired_splits(splits, cfg.get("pairs") or "inter_subject", cfg.get("seed", 0))
    else:
        splits = SOURCES.get(source)(cfg)
    if splits.info.classifies and splits.info.num_classes < 2:
        raise ConfigError(
            f"data.source={source}: {splits.info.num_classes} class ({', '.join(splits.info.class_names) or 'none'}) "
            "cannot train a classifier (it would score 100%); add images of another class or use data.task=segmentation"
        )
    if cfg.get("synthetic"):
        from medimg_cli.data.synthetic import add_synthetic  # it imports this module

        splits = add_synthetic(splits, cfg)
    positive = _positive_class(cfg.get("positive_class"), splits.info)
    splits.info = dataclasses.replace(
        splits.info,
        image_size=tuple(splits.train["image"].shape[2:]),
        positive_class=positive,
        average="binary" if positive is not None else "macro",
    )
    return splits


def _positive_class(given: Any, info: DataInfo) -> int | None:
    """The positive class of a binary classification (``data.positive_class``: a class name or
    index; null: the source's default, else the last class), ``None`` for other tasks."""
    if info.detects:
        if given is not None:
            raise ConfigError(f"data.positive_class={given}: with data.task=anomaly the positive class is abnormal")
        return info.positive_class
    if not info.classifies or info.multilabel or info.num_classes != 2:
        if given is not None:
            raise ConfigError(f"data.positive_class={given} applies to binary classification; this data has none")
        return None
    if given is None:
        return info.positive_class if info.positive_class is not None else 1
    names = list(info.class_names)
    if str(given) in names:
        return names.index(str(given))
    if isinstance(given, int) and not isinstance(given, bool) and 0 <= given < 2:
        return given
    raise unknown_choice("data.positive_class", str(given), [*names, "0", "1"])
