"""Synthetic data: both generators train and resume, samples become a manifest that training
mixes into the training split only, and the quality numbers match hand computations."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import compose_config, run_cli
from omegaconf import OmegaConf

from medimg_cli.data import build_data
from medimg_cli.fileio import read_csv
from medimg_cli.synth.quality import frechet_distance, nearest_real, precision_recall
from medimg_cli.synth.run import train_generator
from medimg_cli.synth.sample import sample_images

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "medmnist"
PHANTOM = ["data.num_samples=48", "data.image_size=16"]
TINY = {"dcgan": ["synth.channels=[16,8]", "synth.latent_dim=8"],
        "diffusion": ["synth.channels=[8,16]", "synth.timesteps=50", "synth.sample_steps=3"]}  # fmt: skip


def _train(tmp_path: Path, name: str, *extra: str, data=PHANTOM) -> Path:
    cfg = compose_config([f"synth={name}", *TINY[name], "synth.epochs=1", "device=cpu", *data, *extra], "synth_train")
    train_generator(cfg, tmp_path / name)
    return tmp_path / name


def _sample(tmp_path: Path, run: Path, per_class: int) -> Path:
    cfg = compose_config([f"checkpoint={run / 'checkpoints' / 'last.pt'}", f"synth.per_class={per_class}",
                          "device=cpu"], "synth_sample")  # fmt: skip
    sample_images(cfg, tmp_path / "sample")
    return tmp_path / "sample" / "manifest.csv"


@pytest.mark.parametrize("name", ["dcgan", "diffusion"])
def test_generators_train_resume_and_sample_a_manifest(tmp_path, name):
    run = _train(tmp_path, name)
    assert [row["epoch"] for row in read_csv(run / "metrics.csv")] == ["1"]
    assert (run / "samples" / "epoch_001.png").is_file()
    # resuming continues the history and the weights change
    before = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["state_dict"]
    cfg = compose_config([f"synth={name}", *TINY[name], "synth.epochs=2", "device=cpu", *PHANTOM, "resume=true"],
                         "synth_train")  # fmt: skip
    summary = train_generator(cfg, run)
    assert summary["epochs"] == 2 and [r["epoch"] for r in read_csv(run / "metrics.csv")] == ["1", "2"]
    after = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["state_dict"]
    assert any(not torch.equal(before[k], after[k]) for k in before)

    manifest = _sample(tmp_path, run, 4)
    rows = read_csv(manifest)
    assert len(rows) == 12 and {r["source"] for r in rows} == {"synthetic"}
    assert sorted({r["label"] for r in rows}) == ["benign", "malignant", "no_lesion"]
    image = np.load(manifest.parent / rows[0]["image"])
    assert image.shape == (1, 16, 16) and image.dtype == np.float32
    low, high = summary["scale"]
    assert low - 1e-5 <= image.min() and image.max() <= high + 1e-5  # back in the data's range
    assert len(read_csv(manifest.parent / "generated.csv")) == 12


def test_synthetic_images_enter_the_training_split_only(tmp_path):
    manifest = _sample(tmp_path, _train(tmp_path, "dcgan"), 20)
    base = ["data.task=classification", *PHANTOM]
    real = build_data(OmegaConf.to_container(compose_config(base).data))
    mixed = build_data(OmegaConf.to_container(compose_config([*base, f"data.synthetic={manifest}",
                                                               "data.synthetic_ratio=0.5"]).data))  # fmt: skip
    for split in ("val", "test"):
        for key in ("image", "label"):
            assert torch.equal(getattr(real, split)[key], getattr(mixed, split)[key])
    n = len(real.train["image"])
    added = round(0.5 * n)
    assert len(mixed.train["image"]) == n + added and torch.equal(mixed.train["image"][:n], real.train["image"])
    files = {np.load(manifest.parent / r["image"]).tobytes() for r in read_csv(manifest)}
    assert all(image.numpy().tobytes() in files for image in mixed.train["image"][n:])
    assert mixed.synthetic["images"] == added and mixed.fingerprint != real.fingerprint
    alone = build_data(OmegaConf.to_container(compose_config([*base, f"data.synthetic={manifest}",
                                                              "data.synthetic_mode=replace"]).data))  # fmt: skip
    assert len(alone.train["image"]) == n and all(i.numpy().tobytes() in files for i in alone.train["image"])
    assert torch.equal(alone.test["image"], real.test["image"])

    # medimg train accepts it and says so in the summary and the table's title
    result = run_cli("train", *base, "trainer.epochs=1", f"data.synthetic={manifest}", "data.synthetic_ratio=0.5",
                     f"hydra.run.dir={tmp_path / 'run'}")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["synthetic"]["images"] == added
    assert f"+ {added} synthetic" in result.stdout
    refused = run_cli(
        "train", *base, f"data.synthetic={manifest}", "data.synthetic_ratio=5", f"hydra.run.dir={tmp_path}"
    )
    assert refused.returncode == 2 and "holds 60 images" in refused.stderr


def test_frechet_distance_against_hand_computation():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 4))
    assert frechet_distance(a, a) == pytest.approx(0, abs=1e-8)
    assert frechet_distance(a, a + 2) > frechet_distance(a, a + 1) > 1  # a shifted set is further
    x, y = rng.normal(0, 1, size=(300, 1)), rng.normal(3, 2, size=(300, 1))  # 1-D: (m1-m2)^2 + (s1-s2)^2
    hand = (x.mean() - y.mean()) ** 2 + (x.std(ddof=1) - y.std(ddof=1)) ** 2
    assert frechet_distance(x, y) == pytest.approx(hand, rel=1e-6)


def test_precision_recall_and_nearest_images_against_brute_force():
    rng = np.random.default_rng(1)
    real, fake, k = rng.normal(size=(40, 3)), rng.normal(0.7, 1, size=(30, 3)), 3

    def radius(points, i):
        return sorted(np.linalg.norm(points - points[i], axis=1))[k]  # index 0 is the point itself

    inside = [any(np.linalg.norm(f - r) <= radius(real, j) for j, r in enumerate(real)) for f in fake]
    covered = [any(np.linalg.norm(r - f) <= radius(fake, j) for j, f in enumerate(fake)) for r in real]
    assert precision_recall(real, fake, k) == pytest.approx((np.mean(inside), np.mean(covered)))
    assert precision_recall(real, real, k) == (1.0, 1.0)

    images, pool = torch.rand(5, 1, 4, 4), torch.rand(9, 1, 4, 4)
    pool[6] = images[2]  # a memorised image
    index, distance = nearest_real(images, pool, chunk=2)
    for i in range(5):
        errors = [((images[i] - p) ** 2).mean().sqrt().item() for p in pool]
        assert index[i] == int(np.argmin(errors)) and distance[i] == pytest.approx(min(errors), abs=1e-6)
    assert index[2] == 6 and distance[2] == 0


@pytest.mark.slow
def test_quality_command_measures_a_manifest(tmp_path):
    manifest = _sample(tmp_path, _train(tmp_path, "dcgan"), 10)
    base = ["data.task=classification", *PHANTOM, "trainer.epochs=1", "device=cpu"]
    assert run_cli("train", *base, f"hydra.run.dir={tmp_path / 'real'}").returncode == 0
    result = run_cli("synth", "quality", f"manifest={manifest}", f"classifier={tmp_path / 'real/checkpoints/best.pt'}",
                     f"hydra.run.dir={tmp_path / 'q'}")  # fmt: skip
    assert result.returncode == 0, result.stderr
    quality = json.loads((tmp_path / "q" / "quality.json").read_text())
    assert quality["images"] == 30 and 0 <= quality["synthetic"]["precision"] <= 1
    assert quality["real_test"]["frechet"] >= 0 and len(read_csv(tmp_path / "q" / "nearest.csv")) == 30
    assert (tmp_path / "q" / "closest_pairs.png").is_file()


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / "breastmnist.npz").is_file(), reason=f"MedMNIST files not found in {SHARED}")
@pytest.mark.parametrize("name", ["dcgan", "diffusion"])
def test_generators_train_on_breastmnist(tmp_path, name):
    data = ["data=medmnist", "data.name=breastmnist", f"data.root={SHARED}", "data.download=false"]
    summary = json.loads((_train(tmp_path, name, "synth.batch_size=64", data=data) / "summary.json").read_text())
    assert summary["image_shape"] == [1, 28, 28] and summary["train_images"] == {
        "malignant": 147,
        "normal, benign": 399,
    }
    assert all(np.isfinite(v) for v in summary["last"].values())


def test_synth_refuses_what_it_cannot_do_in_one_line(tmp_path):
    for args, expected in (
        (["train", "data.task=segmentation"], "needs one class label per image; data.task=segmentation"),
        (["train", "synth.epochs=0"], "synth.epochs=0 must be a whole number >= 1"),
        (["sample", f"checkpoint={tmp_path / 'none.pt'}"], "does not exist"),
    ):
        result = run_cli("synth", *args, f"hydra.run.dir={tmp_path / 'run'}")
        assert result.returncode == 2 and expected in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_every_synth_config_names_its_generator_and_only_its_arguments():
    from medimg_cli.synth import GENERATORS, generator_args

    folder = Path(__file__).resolve().parents[1] / "medimg_cli" / "conf" / "synth"
    names = sorted(path.stem for path in folder.glob("*.yaml"))
    assert names == sorted(GENERATORS)
    for name in names:
        cfg = OmegaConf.to_container(OmegaConf.load(folder / f"{name}.yaml"))
        assert cfg["name"] == name and generator_args(cfg)  # a key the generator does not take raises
