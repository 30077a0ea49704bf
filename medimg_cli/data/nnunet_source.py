"""The ``nnunet`` data source: an nnU-Net v2 or Medical Segmentation Decathlon raw dataset.

    <root>/dataset.json
    <root>/imagesTr/<case>_0000.nii.gz, <case>_0001.nii.gz ...   one file per channel (nnU-Net v2)
    <root>/labelsTr/<case>.nii.gz

A Decathlon ``dataset.json`` with a ``training`` list (4D images holding all channels) works too.
Only the labelled training cases are used; they are split like any other dataset.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path

from medimg_cli.data import SOURCES, Splits
from medimg_cli.data.files import Record, records_to_splits
from medimg_cli.errors import ConfigError

_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


def _read_dataset_json(root: Path) -> dict:
    path = root / "dataset.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"data.root={root} has no dataset.json; is it an nnU-Net raw dataset folder?") from None
    except ValueError as error:
        raise ConfigError(f"{path}: not valid JSON ({error})") from None


def _v2_records(root: Path, meta: dict) -> list[Record]:
    """nnU-Net v2: channel files ``<case>_XXXX<ending>`` grouped by case."""
    ending = meta.get("file_ending", ".nii.gz")
    channels: dict[str, dict[int, Path]] = defaultdict(dict)
    for path in sorted((root / "imagesTr").glob(f"*{ending}")):
        match = _CHANNEL.match(path.name[: -len(ending)])
        if match is None:
            raise ConfigError(f"{path}: expected <case>_XXXX{ending} (a four-digit channel number)")
        channels[match["case"]][int(match["channel"])] = path
    expected = len(meta.get("channel_names", meta.get("modality", {"0": ""})))
    records = []
    for case, files in sorted(channels.items()):
        if sorted(files) != list(range(expected)):
            raise ConfigError(
                f"{root / 'imagesTr'}: case {case} has channels {sorted(files)}, expected 0..{expected - 1}"
            )
        label = root / "labelsTr" / f"{case}{ending}"
        if not label.is_file():
            raise ConfigError(f"{label}: missing label file for case {case}")
        records.append(Record(name=case, images=tuple(files[c] for c in sorted(files)), mask=label))
    return records


def _decathlon_records(root: Path, meta: dict) -> list[Record]:
    """Medical Segmentation Decathlon: ``training`` pairs of 4D image and label paths."""
    records = []
    for pair in meta["training"]:
        image, label = root / pair["image"], root / pair["label"]
        for path in (image, label):
            if not path.is_file():
                raise ConfigError(f"{path}: listed in {root / 'dataset.json'} but missing")
        records.append(Record(name=image.name, images=(image,), mask=label))
    return records


@SOURCES.register("nnunet")
def nnunet_splits(cfg: Mapping) -> Splits:
    """Build segmentation splits from the raw dataset at ``cfg["root"]``."""
    root = Path(cfg["root"]).expanduser()
    if cfg["task"] != "segmentation":
        raise ConfigError(f"nnU-Net datasets have masks only; use data.task=segmentation (got {cfg['task']})")
    meta = _read_dataset_json(root)
    records = _decathlon_records(root, meta) if "training" in meta else _v2_records(root, meta)
    labels = meta.get("labels", {})
    # the first channel's modality (v1: "modality", v2: "channel_names"), e.g. CT, for data.normalize=auto
    channels = meta.get("channel_names") or meta.get("modality") or {}
    modality = cfg.get("modality") or next(iter(channels.values()), None)
    settings = {**cfg, "mask_classes": cfg.get("mask_classes") or len(labels), "modality": modality}
    splits = records_to_splits(records, settings, str(root))
    if len(channels) > 1 and splits.info.in_channels % len(channels) == 0:  # the channels are modalities
        names = tuple(str(name) for name in channels.values())
        splits.info = dataclasses.replace(splits.info, modalities=len(names), modality_names=names)
    return splits
