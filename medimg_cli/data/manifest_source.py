"""The ``manifest`` data source: a CSV or JSON list of samples.

Columns (CSV header or JSON object keys): ``image`` (required), and optionally ``label``,
``mask``, ``case`` (a name of your own for the case, used in every output instead of the hashed
id; it must not identify a patient), ``roi`` (a region-of-interest mask: a retinal field of
view, a body mask; pixels outside it count in no loss or metric), ``patient_id``, ``split``
(train/val/test) and any metadata such as ``site``, which travels with each sample
(``Splits.meta``) for subgroup analyses. With ``data.modalities=[t1,t2,...]`` the image columns
are those instead, one modality each (the channels of a sample, in that order). Paths are
relative to the manifest's folder. With ``patient_id`` and no ``split``, the automatic split
keeps each patient's images together; a patient listed in two explicit splits is refused.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from medimg_cli.data import SOURCES, Splits
from medimg_cli.data.files import Record, records_to_splits
from medimg_cli.errors import ConfigError

log = logging.getLogger(__name__)


def read_manifest(path: Path) -> list[dict[str, str]]:
    """Rows of a CSV (with a header) or a JSON list of objects, values as strings ('' when empty)."""
    if not path.is_file():
        raise ConfigError(f"data.path={path}: manifest not found")
    try:
        if path.suffix.lower() == ".json":
            rows = json.loads(path.read_text())
            if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
                raise ValueError("expected a list of objects")
        else:
            with path.open(newline="") as file:
                rows = list(csv.DictReader(file))
    except (OSError, ValueError, csv.Error) as error:
        raise ConfigError(f"{path}: cannot read the manifest ({error})") from None
    return [{k: "" if v is None else str(v) for k, v in row.items()} for row in rows]


KNOWN_COLUMNS = ("image", "label", "mask", "roi", "case", "patient_id", "split")
CASE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # it becomes a file name


def _check_cases(cases: list[str | None], path: Path) -> None:
    """A ``case`` column names every row once, with a name that can be a file name."""
    named = [c for c in cases if c is not None]
    if not named:
        return
    if len(named) < len(cases):
        raise ConfigError(f"{path}: the case column is empty in {len(cases) - len(named)} row(s); name every case")
    bad = next((c for c in named if not CASE_NAME.fullmatch(c)), None)
    if bad is not None:
        raise ConfigError(f"{path}: case {bad!r} must be letters, digits, '.', '_' or '-' (it names output files)")
    repeated = next((c for c in named if named.count(c) > 1), None)
    if repeated is not None:
        raise ConfigError(f"{path}: case {repeated!r} is listed twice; each row needs its own case name")


def _warn_odd_rows(records: list[Record], path: Path) -> None:
    """One warning each (the count and the first example) for an image listed twice, which weighs
    it double and may put it in two splits, and for paths outside the manifest's folder, which
    break when the folder moves (absolute paths are meant to, and are not counted)."""
    seen: set[Path] = set()
    resolved = [r.images[0].resolve() for r in records]
    twice = [p for p in resolved if p in seen or seen.add(p)]
    if twice:
        log.warning("%s: %d image(s) listed more than once; first: %s", path, len(twice), twice[0])
    outside = [r.name for r in records if not Path(r.name).is_absolute() and ".." in Path(r.name).parts]
    if outside:
        log.warning(
            "%s: %d image path(s) lead outside the manifest's folder; first: %s", path, len(outside), outside[0]
        )


def _image_columns(modalities: Any) -> list[str]:
    """The image columns: ``image``, or the ``data.modalities`` list (one column per modality)."""
    if modalities is None:
        return ["image"]
    if isinstance(modalities, str) or not isinstance(modalities, Sequence) or not modalities:
        raise ConfigError(f"data.modalities={modalities}: a list of image columns, e.g. data.modalities=[t1,t2]")
    return [str(c) for c in modalities]


@SOURCES.register("manifest")
def manifest_splits(cfg: Mapping) -> Splits:
    """Build splits from the manifest at ``cfg["path"]``."""
    path = Path(cfg["path"]).expanduser()
    rows = read_manifest(path)
    if cfg["task"] == "registration":  # pairs listed (moving, fixed columns) or drawn from the images
        return _registration_pairs(rows, path, cfg)
    columns = _image_columns(cfg.get("modalities"))
    missing = [c for c in columns if rows and c not in rows[0]]
    if missing:
        raise ConfigError(f"{path}: no {missing[0]!r} column (columns: {', '.join(rows[0])})")
    base = path.parent
    records = [
        Record(
            name=row[columns[0]],
            images=tuple(base / row[c] for c in columns),
            label=row.get("label") or None,
            mask=base / row["mask"] if row.get("mask") else None,
            roi=base / row["roi"] if row.get("roi") else None,
            case=row.get("case") or None,
            patient=row.get("patient_id") or None,
            split=row.get("split") or None,
            meta=tuple((k, v) for k, v in row.items() if k not in (*KNOWN_COLUMNS, *columns)),
        )
        for row in rows
    ]
    for record in records:
        files = [*zip(columns, record.images, strict=True), ("mask", record.mask), ("roi", record.roi)]
        for kind, file in files:
            if file is not None and not file.is_file():
                raise ConfigError(f"{path}: {kind} {file} is missing")
    _check_cases([r.case for r in records], path)
    _warn_odd_rows(records, path)
    if cfg["task"] == "classification" and any(r.roi for r in records):
        raise ConfigError(f"{path}: a roi column restricts segmentation; data.task=classification has no masks")
    splits = records_to_splits(records, cfg, str(path))
    if len(columns) > 1:  # one image column per modality, stacked in that order
        splits.info = dataclasses.replace(splits.info, modalities=len(columns), modality_names=tuple(columns))
    return splits


def _registration_pairs(rows: list[dict[str, str]], path: Path, cfg: Mapping) -> Splits:
    from medimg_cli.data.manifest_pairs import lists_pairs, manifest_pairs
    from medimg_cli.data.pairs import paired_splits

    if lists_pairs(rows):
        return manifest_pairs(rows, path, cfg)
    return paired_splits(
        manifest_splits({**cfg, "task": "segmentation"}), cfg.get("pairs") or "inter_subject", cfg["seed"]
    )
