"""``medimg synth train|sample``: class-conditional generators and the synthetic images they make.

    medimg synth train synth=dcgan data=medmnist data.name=breastmnist data.root=../shared/data/medmnist
    medimg synth train synth=diffusion synth.epochs=100
    medimg synth sample checkpoint=<synth run>/checkpoints/last.pt synth.per_class=200
    medimg train data=medmnist ... data.synthetic=<sample folder>/manifest.csv data.synthetic_ratio=0.5
    medimg synth quality manifest=<sample folder>/manifest.csv classifier=<real-data run>/checkpoints/best.pt

``train`` learns the training split only (``medimg_cli/synth/run.py``); ``sample`` writes images,
the manifest that ``data.synthetic`` mixes into a training split, and a grid
(``medimg_cli/synth/sample.py``); ``quality`` measures them in a real-data classifier's feature
space and looks for memorised training images (``medimg_cli/synth/measured.py``).
"""

from __future__ import annotations

from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from rich.table import Table

from medimg_cli.hydra_app import dispatch, run_hydra
from medimg_cli.tables import make_console

HELP = "train a class-conditional GAN or diffusion model, and sample synthetic training images from it"
SUBCOMMANDS = {
    "train": "train a generator (synth=dcgan|diffusion) on a dataset's training split",
    "sample": "write synth.per_class images per class and their manifest from a generator checkpoint",
    "quality": "Frechet distance, precision/recall and nearest real images of a synthetic manifest",
}


def main(argv: list[str]) -> int:
    command = dispatch("synth", SUBCOMMANDS, argv)
    if isinstance(command, int):
        return command
    task = {"train": _train, "sample": _sample, "quality": _quality}[command]
    return run_hydra(f"synth {command}", task, argv[1:])


def _train(cfg) -> None:
    from medimg_cli.synth.run import train_generator  # torch and MONAI only when running

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    summary = train_generator(cfg, run_dir)
    table = Table(title=f"{summary['generator']} on {summary['data']}: {summary['epochs']} epochs")
    for key in summary["last"]:
        table.add_column(key.replace("_", " "), justify="right")
    table.add_row(*(f"{v:.4g}" if isinstance(v, float) else str(v) for v in summary["last"].values()))
    console = make_console()
    console.print(table)
    console.print(f"run folder: {run_dir} (samples/ has a grid per class every synth.sample_every epochs)")


def _sample(cfg) -> None:
    from medimg_cli.synth.sample import sample_images

    out = Path(HydraConfig.get().runtime.output_dir)
    summary = sample_images(cfg, out)
    make_console().print(
        f"{summary['images']} images from {summary['source']}: {out / 'manifest.csv'} "
        f"(train with data.synthetic={out / 'manifest.csv'})", highlight=False,
    )  # fmt: skip


def _quality(cfg) -> None:
    from medimg_cli.synth.measured import measure

    out = Path(HydraConfig.get().runtime.output_dir)
    result = measure(cfg, out)
    table = Table(title=f"{result['images']} synthetic images against the real training split (classifier features)")
    for column in ("set", "Frechet distance", "precision", "recall"):
        table.add_column(column, justify="right")
    for name, scores in (("synthetic", result["synthetic"]), ("real test (floor)", result["real_test"])):
        table.add_row(name, f"{scores['frechet']:.4g}", f"{scores['precision']:.3f}", f"{scores['recall']:.3f}")
    console = make_console()
    console.print(table)
    console.print(f"nearest real training image: min {result['nearest_distance']['min']:.3g}, median "
                  f"{result['nearest_distance']['median']:.3g} (rms); {out}", highlight=False)  # fmt: skip
