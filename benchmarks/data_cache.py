"""Loading speed: medimg's decode-once cache against MONAI ``LoadImage`` + ``Dataset``.

    PYTHONPATH=tests .venv/bin/python benchmarks/data_cache.py   # writes benchmarks/results/data_cache.{md,csv}

(``tests`` on the path for the tests' writers of NIfTI files and DICOM series.)

For a NIfTI dataset and a DICOM dataset that the script writes into a temporary folder, it times
one pass over all samples (samples/s, median of repeats):

- ``medimg cold``: ``build_data`` with an empty cache (decode, preprocess, store);
- ``medimg cached``: ``build_data`` again (the cache entry is read; what every later run pays);
- ``MONAI Dataset``: ``monai.data.Dataset`` with ``LoadImage`` (nibabel / pydicom readers)
  iterated once, which is what a MONAI loop pays every epoch without a cache.

After loading, medimg keeps the tensors in memory, so epochs 2..N cost no decoding at all.
"""

from __future__ import annotations

import argparse
import csv
import platform
import tempfile
from pathlib import Path

import numpy as np
from test_dicom import write_series
from test_volumes import write_nifti
from timing import median_seconds

ROOT = Path(__file__).resolve().parents[1]  # the repository, for the default paths


def make_nifti(folder: Path, n: int, size: int) -> None:
    rng = np.random.default_rng(0)
    for i in range(n):
        write_nifti(folder / "images" / f"case{i:03d}.nii.gz", rng.normal(size=(size, size, size)).astype(np.float32))
        mask = np.zeros((size, size, size), np.uint8)
        mask[size // 4 : size // 2, size // 4 : size // 2, size // 4 : size // 2] = 1
        write_nifti(folder / "masks" / f"case{i:03d}.nii.gz", mask)


def make_dicom(folder: Path, n: int, slices: int) -> Path:
    rows = ["SeriesInstanceUID,label"]
    for i in range(n):
        uid = write_series(folder / "study" / f"s{i:03d}", slices, f"P{i}", value=float(i))
        rows.append(f"{uid},{'a' if i % 2 else 'b'}")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    return folder / "labels.csv"


def datasets(tmp: Path, volumes: int, size: int) -> dict[str, tuple[dict, list[dict], object]]:
    """Write the NIfTI and DICOM test data under ``tmp``; per dataset: medimg's data config, MONAI's
    items and MONAI's reader."""
    from monai.transforms import LoadImage

    make_nifti(tmp / "nifti", volumes, size)
    labels = make_dicom(tmp / "dicom", volumes, 16)
    common = {"split": [0.5, 0.25, 0.25], "splits": None, "seed": 0, "salt": "b", "channels": 1, "classes": None,
              "mask_classes": None, "spacing": None, "slice_axis": None, "denoise": None, "on_bad_file": "error",
              "cache": True}  # fmt: skip
    nifti = {**common, "source": "nifti", "task": "segmentation", "root": str(tmp / "nifti" / "images"),
             "mask_root": str(tmp / "nifti" / "masks"), "image_size": size, "normalize": "zscore"}  # fmt: skip
    dicom = {**common, "source": "dicom", "task": "classification", "root": str(tmp / "dicom" / "study"),
             "labels": str(labels), "label_key": "SeriesInstanceUID", "image_size": [16, 16, 16], "window": None,
             "normalize": "minmax"}  # fmt: skip
    return {
        "NIfTI": (
            nifti,
            [{"image": str(p)} for p in sorted((tmp / "nifti" / "images").glob("*.nii.gz"))],
            LoadImage(reader="NibabelReader", image_only=True),
        ),
        "DICOM": (
            dicom,
            [{"image": str(p)} for p in sorted((tmp / "dicom" / "study").iterdir())],
            LoadImage(reader="PydicomReader", image_only=True),
        ),
    }


def measure(name: str, cfg: dict, items: list[dict], loader, tmp: Path, repeats: int) -> list[dict]:
    """Rows of medimg's cold and cached builds and of one MONAI ``Dataset`` pass over ``items``."""
    from monai.data import Dataset

    from medimg_cli.data import build_data

    def cold():
        build_data({**cfg, "cache_dir": str(Path(tempfile.mkdtemp(dir=tmp)))})

    warm_dir = tmp / f"warm-{name}"
    build_data({**cfg, "cache_dir": str(warm_dir)})  # fill the cache once

    def monai_pass():
        dataset = Dataset(items, transform=lambda d: loader(d["image"]))
        for index in range(len(dataset)):
            dataset[index]

    rows, n = [], len(items)
    for method, fn in (
        ("medimg cold (decode + store)", cold),
        ("medimg cached", lambda: build_data({**cfg, "cache_dir": str(warm_dir)})),
        ("MONAI LoadImage + Dataset, one epoch", monai_pass),
    ):
        seconds = median_seconds(fn, repeats, warmup=False)  # cold passes must stay cold
        rows.append(
            {"data": name, "samples": n, "method": method, "seconds": seconds, "samples_per_second": n / seconds}
        )
        print(f"{name:6s} {method:40s} {n / seconds:10.1f} samples/s")
    return rows


def write_results(rows: list[dict], args: argparse.Namespace) -> None:
    """``data_cache.csv`` and ``data_cache.md`` (with the machine and versions) into ``args.out``."""
    import monai
    import torch

    machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, {platform.system()}"
    versions = f"python {platform.python_version()}, torch {torch.__version__}, monai {monai.__version__}"
    args.out.mkdir(parents=True, exist_ok=True)
    with (args.out / "data_cache.csv").open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = [
        "# Loading speed: medimg's decode-once cache vs MONAI LoadImage + Dataset",
        "",
        f"Machine: {machine}. Versions: {versions}. Median of {args.repeats} repeats.",
        f"NIfTI: {args.volumes} volumes of {args.size}^3 float32 with masks (.nii.gz). "
        f"DICOM: {args.volumes} series of 16 slices of 16x16 (one file per slice).",
        "",
        "| data | samples | method | seconds | samples/s |",
        "|---|---:|---|---:|---:|",
    ]
    lines += [
        f"| {r['data']} | {r['samples']} | {r['method']} | {r['seconds']:.3f} | {r['samples_per_second']:.1f} |"
        for r in rows
    ]
    lines += [
        "",
        "medimg cold includes resizing, normalisation, hashing for the leakage audit and writing the cache entry;",
        "MONAI's pass only decodes. After either medimg pass the data are tensors in memory, so later epochs",
        "decode nothing, while the MONAI Dataset pays its pass again every epoch (CacheDataset would avoid that",
        "within one process, not across runs). For DICOM, a cached load still reads every file header to find the",
        "series (the cache key needs them); caching the series index as well would close most of that gap.",
        "The datasets are small (tens of samples), so the absolute times are short and vary between runs.",
        "",
        "Command: `PYTHONPATH=tests .venv/bin/python benchmarks/data_cache.py`",
    ]
    (args.out / "data_cache.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volumes", type=int, default=24, help="NIfTI volumes and DICOM series")
    parser.add_argument("--size", type=int, default=64, help="NIfTI edge; DICOM series are 16 slices of 16x16")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, (cfg, items, loader) in datasets(Path(tmp), args.volumes, args.size).items():
            rows += measure(name, cfg, items, loader, Path(tmp), args.repeats)
    write_results(rows, args)


if __name__ == "__main__":
    main()
