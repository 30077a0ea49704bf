"""Registration (data.task=registration): the Jacobian and folding metrics against hand
computation, the warped-label metrics, the phantom's known deformations, the loss, and the CLI
from training to medimg eval."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import TINY, check_test_metrics, run_cli, training_losses, write_png
from monai.losses import BendingEnergyLoss

from medimg_cli.commands.train import train
from medimg_cli.data import DataInfo, build_data
from medimg_cli.deformation import (
    field_statistics,
    identity_cases,
    jacobian_determinant,
    random_deformations,
    registration_cases,
    target_registration_error,
    warp,
)
from medimg_cli.errors import ConfigError
from medimg_cli.losses import TaskLoss
from medimg_cli.models import create_model


def affine_field(matrix: np.ndarray, shift: np.ndarray, shape: tuple[int, ...]) -> torch.Tensor:
    """``u(x) = (A - I) x + t`` on pixel coordinates, ``(1, D, *shape)``."""
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=float) for s in shape], indexing="ij"))
    field = np.einsum("ij,j...->i...", matrix - np.eye(len(shape)), grid) + shift.reshape(-1, *(1,) * len(shape))
    return torch.from_numpy(field)[None]


@pytest.mark.parametrize("shape", [(12, 10), (6, 7, 5)])
def test_jacobian_of_an_affine_field_is_its_determinant_everywhere(shape):
    rng = np.random.default_rng(len(shape))
    matrix = np.eye(len(shape)) + rng.uniform(-0.4, 0.4, (len(shape),) * 2)
    det = jacobian_determinant(affine_field(matrix, rng.uniform(-3, 3, len(shape)), shape))
    assert det.shape == (1, *shape)
    np.testing.assert_allclose(det.numpy(), np.linalg.det(matrix), rtol=1e-10)


def test_folding_ratio_counts_non_positive_determinants_and_affine_maps_have_no_spread():
    shape = (8, 8)
    flipped = affine_field(np.diag([-1.0, 1.0]), np.zeros(2), shape)  # a mirror: det -1 everywhere
    squeezed = affine_field(np.diag([1.0, 0.0]), np.zeros(2), shape)  # a collapse: det 0
    stretched = affine_field(np.diag([1.5, 0.8]), np.array([2.0, -1.0]), shape)
    stats = field_statistics(torch.cat([flipped, squeezed, stretched]))
    assert stats["folding"].tolist() == [1.0, 1.0, 0.0]
    np.testing.assert_allclose(stats["jacobian_std"].numpy(), 0.0, atol=1e-12)
    # one column folded by hand: u_0 jumps back by 3 pixels at row 4, so d u_0/d x_0 = -1.5 on rows 3 and 4
    folded = torch.zeros(1, 2, *shape, dtype=torch.float64)
    folded[0, 0, 4:, 2] = -3.0
    det = jacobian_determinant(folded)[0]
    assert det[3, 2] == det[4, 2] == pytest.approx(-0.5)
    assert field_statistics(folded)["folding"].item() == pytest.approx(2 / 64)
    values = det.flatten().numpy()
    assert field_statistics(folded)["jacobian_std"].item() == pytest.approx(values.std())


def test_warped_label_metrics_of_a_known_shift():
    fixed = torch.zeros(1, 1, 16, 16, dtype=torch.uint8)
    fixed[0, 0, 5:9, 4:10] = 1
    moving = torch.roll(fixed, shifts=3, dims=2)  # the square 3 rows lower
    shift = torch.zeros(1, 2, 16, 16)
    shift[:, 0] = 3.0  # fixed(x) = moving(x + 3 rows)
    pair = torch.cat([moving, fixed], dim=1)
    aligned, identity = registration_cases(shift, pair, 2), registration_cases(torch.zeros_like(shift), pair, 2)
    assert aligned["dice"].item() == 1.0 and aligned["hd95"].item() == 0.0
    assert identity["dice"].item() == pytest.approx(2 * 6 / 48)  # rows 8 of both squares overlap: 6 of 24 pixels
    assert identity["hd95"].item() == pytest.approx(3.0)
    assert aligned["folding"].item() == 0.0


def test_target_registration_error_by_hand():
    fixed = torch.tensor([[2.0, 3.0], [5.5, 7.25], [float("nan"), float("nan")]])  # a padding row
    moving = fixed + torch.tensor([3.0, 0.0])
    landmarks = torch.stack([moving, fixed])[None]  # (1, 2, 3, 2)
    shift = torch.zeros(1, 2, 12, 10)
    assert target_registration_error(shift, landmarks).item() == pytest.approx(3.0)  # no registration
    shift[:, 0] = 3.0
    assert target_registration_error(shift, landmarks).item() == pytest.approx(0.0)
    # u_1(x) = 0.5 x_0: linear, so interpolation between pixels is exact; the fixed points land at
    # moving + (0, 0.5 x_0) and miss the landmarks by 0.5 x_0 along axis 1: 1.0 and 2.75, mean 1.875
    shift[:, 1] = 0.5 * torch.arange(12.0)[:, None]
    assert target_registration_error(shift, landmarks).item() == pytest.approx((1.0 + 2.75) / 2)


def test_phantom_pairs_are_fixed_phantoms_and_their_known_deformations():
    data = build_data({**_phantom(), "num_samples": 30})
    info, train = data.info, data.train
    assert info.task == "registration" and info.in_channels == 2 and info.num_seg_classes == 3
    assert train["image"].shape[1:] == (2, 32, 32) and train["mask"].shape[1:] == (2, 32, 32)
    assert set(train["mask"][:, 1].unique().tolist()) == {0, 1, 2}  # background, organ, lesion
    again = build_data({**_phantom(), "num_samples": 30})
    assert torch.equal(again.train["image"], train["image"]) and data.fingerprint == again.fingerprint
    fields = random_deformations(30, (32, 32), 0)
    assert field_statistics(fields)["folding"].max().item() == 0.0  # the true maps do not fold
    stacked = torch.cat([data.train["image"], data.val["image"], data.test["image"]])
    assert (stacked[:, 0] - stacked[:, 1]).abs().mean() > 0.02  # moving differs from fixed
    assert train["landmarks"].shape[1:] == (2, 6, 2) and info.landmarks
    moving, fixed = (train["landmarks"][:, k].long() for k in (0, 1))
    labels = train["mask"][:, 0][torch.arange(len(moving))[:, None], moving[..., 0], moving[..., 1]]
    assert (labels > 0).all()  # moving landmarks lie on the anatomy


def test_registration_loss_is_the_similarity_plus_the_weighted_smoothness():
    info = build_data({**_phantom(), "num_samples": 20}).info
    batch = build_data({**_phantom(), "num_samples": 20}).train
    args = {"spatial_dims": 2, "in_channels": 2, "num_classes": 3, "num_seg_classes": 3, "task": "registration"}
    model = create_model("localnet", **args)
    outputs = model(batch["image"])
    cfg = {"name": "registration", "similarity": "mse", "regularization": "bending", "regularization_weight": 0.5}
    loss = TaskLoss(info, cfg)(outputs, batch)
    mse = ((warp(batch["image"][:, :1], outputs["ddf"]) - batch["image"][:, 1:]) ** 2).mean()
    assert loss.item() == pytest.approx((mse + 0.5 * BendingEnergyLoss()(outputs["ddf"])).item(), rel=1e-5)


def _phantom() -> dict:
    from conftest import compose_config
    from omegaconf import OmegaConf

    cfg = compose_config(["data.task=registration", "data.num_samples=30"])
    return OmegaConf.to_container(cfg.data, resolve=True)


def test_cli_registers_phantoms_better_than_identity_and_eval_writes_the_pictures(tmp_path):
    run = tmp_path / "run"
    done = run_cli(
        "train", "data.task=registration", "data.num_samples=240", "trainer.epochs=4", "trainer.batch_size=16",
        "device=cpu", f"hydra.run.dir={run}", cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "localnet on phantom (registration)" in done.stdout and "folding %" in done.stdout
    summary = json.loads((run / "summary.json").read_text())
    test, identity = summary["test"], summary["identity"]
    assert summary["model"] == "localnet" and summary["task"] == "registration"
    assert test["dice"] > identity["dice"] + 0.04, (test, identity)  # a clear gain over no registration
    assert test["folding"] < 0.01 and test["hd95"] < identity["hd95"] and test["tre"] < identity["tre"]
    check_test_metrics(run, test)
    done = run_cli("eval", f"checkpoint={run / 'checkpoints' / 'best.pt'}", "eval.bootstrap=200", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    out = run / "eval" / "test"
    document = json.loads((out / "metrics.json").read_text())
    metrics = document["metrics"]
    assert metrics["dice"]["value"] == pytest.approx(test["dice"], abs=1e-6)
    assert metrics["identity_dice"]["value"] == pytest.approx(identity["dice"], abs=1e-6)
    assert metrics["dice"]["low"] <= metrics["dice"]["value"] <= metrics["dice"]["high"]
    assert (out / "registration.png").is_file()
    warped, fields = (sorted((out / "warped").glob(f"*_{kind}.nii.gz")) for kind in ("warped", "ddf"))
    assert len(warped) == len(fields) == document["cases"] == 36  # 15% of 240
    assert nib.load(fields[0]).shape == (32, 32, 2)
    done = run_cli("export", f"checkpoint={run / 'checkpoints' / 'best.pt'}", "format=torchscript", cwd=tmp_path)
    assert done.returncode == 2 and "export of registration models is not supported yet" in done.stderr


def test_a_model_that_cannot_register_is_refused_by_name(tmp_path):
    done = run_cli(
        "train", "data.task=registration", "model=cnn", *TINY, f"hydra.run.dir={tmp_path / 'r'}", cwd=tmp_path
    )
    assert done.returncode == 2
    assert "model 'cnn' cannot do data.task=registration" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("name", ["localnet", "voxelmorph", "globalnet"])
def test_every_registration_model_gives_a_field_and_learns(name, dims):
    torch.manual_seed(0)
    size = (16,) * dims
    args = {"spatial_dims": dims, "in_channels": 2, "num_classes": 0, "num_seg_classes": 2, "task": "registration"}
    model = create_model(name, **args, **({"image_size": size} if name == "globalnet" else {}))
    fixed = torch.zeros(2, 1, *size)
    fixed[(slice(None), slice(None), *[slice(5, 11)] * dims)] = 1.0
    batch = {"image": torch.cat([torch.roll(fixed, 2, dims=2), fixed], dim=1)}
    out = model(batch["image"])
    assert out["ddf"].shape == (2, dims, *size) and out["warped"].shape == (2, 1, *size)
    with pytest.raises(ConfigError, match=f"model '{name}' cannot do data.task=classification"):
        create_model(name, **{**args, "task": "classification"})
    info = DataInfo("registration", dims, 2, 0, 2, ())
    losses = training_losses(model, TaskLoss(info), batch, lr=1e-4)
    assert losses[-1] < losses[0], losses


@pytest.mark.parametrize("pairs", ["inter_subject", "atlas"])
def test_a_segmentation_dataset_pairs_inter_subject_or_to_an_atlas(image_folder, pairs):
    from test_files import data_cfg

    overrides = [f"data.root={image_folder / 'images'}", f"data.mask_root={image_folder / 'masks'}"]
    plain = build_data(data_cfg("folder", *overrides, "data.task=segmentation"))
    paired = build_data({**data_cfg("folder", *overrides, "data.task=registration"), "pairs": pairs})
    assert paired.info.task == "registration" and paired.info.in_channels == 2
    for name in ("train", "val", "test"):
        moving, fixed = paired.split(name)["image"][:, :1], paired.split(name)["image"][:, 1:]
        assert torch.equal(moving, plain.split(name)["image"])  # the moving image is each sample itself
        masks = paired.split(name)["mask"]
        assert torch.equal(masks[:, :1], plain.split(name)["mask"])
        if pairs == "atlas":
            assert (fixed == plain.train["image"][:1]).all() and (masks[:, 1:] == plain.train["mask"][:1]).all()
            continue
        partner = [
            next(j for j, other in enumerate(plain.split(name)["image"]) if torch.equal(other, f)) for f in fixed
        ]
        assert all(j != i for i, j in enumerate(partner))  # never paired with itself
        assert torch.equal(masks[:, 1:], plain.split(name)["mask"][partner])
    assert paired.fingerprint != plain.fingerprint


def test_an_unknown_pairing_is_refused_by_name(image_folder):
    from test_files import data_cfg

    overrides = [f"data.root={image_folder / 'images'}", f"data.mask_root={image_folder / 'masks'}"]
    with pytest.raises(ConfigError, match="data.pairs"):
        build_data({**data_cfg("folder", *overrides, "data.task=registration"), "pairs": "random"})


def _pair_manifest(folder, count: int = 20, landmarks: bool = True):
    """Pairs of 24x24 PNGs: a bright square, moved 3 rows down in the moving image; masks of it and
    its four corners as landmarks."""
    rng = np.random.default_rng(0)
    rows = ["moving,fixed,moving_mask,fixed_mask" + (",moving_landmarks,fixed_landmarks" if landmarks else "")]
    for i in range(count):
        top, left = rng.integers(4, 10, size=2)
        corners = [(top, left), (top, left + 7), (top + 7, left), (top + 7, left + 7)]
        for side, shift in (("moving", 3), ("fixed", 0)):
            image, mask = (rng.random((24, 24)) * 40).astype(np.uint8), np.zeros((24, 24), np.uint8)
            image[top + shift : top + shift + 8, left : left + 8] = 220
            mask[top + shift : top + shift + 8, left : left + 8] = 255
            write_png(folder / side / f"{i}.png", image)
            write_png(folder / f"{side}_mask" / f"{i}.png", mask)
            points = "\n".join(f"{r + shift},{c}" for r, c in corners)
            (folder / f"{side}_points").mkdir(exist_ok=True)
            (folder / f"{side}_points" / f"{i}.csv").write_text("row,column\n" + points + "\n")
        columns = [f"moving/{i}.png", f"fixed/{i}.png", f"moving_mask/{i}.png", f"fixed_mask/{i}.png"]
        columns += [f"moving_points/{i}.csv", f"fixed_points/{i}.csv"] if landmarks else []
        rows.append(",".join(columns))
    (folder / "pairs.csv").write_text("\n".join(rows) + "\n")
    return folder / "pairs.csv"


def test_a_manifest_lists_pairs_with_masks_and_landmarks_that_follow_the_resize(tmp_path):
    from conftest import compose_config
    from omegaconf import OmegaConf

    path = _pair_manifest(tmp_path)
    overrides = ["data=manifest", f"data.path={path}", "data.task=registration", "data.image_size=32"]
    data = build_data(OmegaConf.to_container(compose_config(overrides).data, resolve=True))
    info, test = data.info, data.test
    assert info.task == "registration" and info.in_channels == 2 and info.landmarks and info.num_seg_classes == 2
    assert test["image"].shape[1:] == (2, 32, 32) and test["mask"].shape[1:] == (2, 32, 32)
    assert test["landmarks"].shape[1:] == (2, 4, 2)
    shift = test["landmarks"][:, 0] - test["landmarks"][:, 1]
    assert torch.allclose(shift, torch.tensor([3 * 32 / 24, 0.0]).expand_as(shift))  # 3 rows of 24 px, at 32 px
    moving_rows = test["mask"][:, 0].sum(dim=2).nonzero()[:, 1].float()
    fixed_rows = test["mask"][:, 1].sum(dim=2).nonzero()[:, 1].float()
    assert moving_rows.mean() - fixed_rows.mean() == pytest.approx(4.0, abs=0.5)  # the masks moved alike
    assert sum(len(v) for v in data.ids.values()) == 20
    pairs = {key: per_pair.mean().item() for key, per_pair in identity_cases(test, info.num_seg_classes).items()}
    assert pairs["tre"] == pytest.approx(4.0, abs=1e-5) and pairs["dice"] < 0.8
    run = ["trainer.epochs=1", "trainer.batch_size=4", "device=cpu", "tracking.tensorboard=false"]
    summary = train(compose_config([*overrides, *run]), tmp_path / "run")
    assert summary["model"] == "localnet" and summary["identity"]["tre"] == pytest.approx(4.0, abs=1e-5)
    assert {"dice", "hd95", "folding", "jacobian_std", "tre"} <= set(summary["test"])


def test_a_landmark_file_with_a_bad_row_is_refused_by_name(tmp_path):
    from conftest import compose_config
    from omegaconf import OmegaConf

    path = _pair_manifest(tmp_path, count=10)
    (tmp_path / "fixed_points" / "3.csv").write_text("1,2\n3\n")
    overrides = ["data=manifest", f"data.path={path}", "data.task=registration", "data.image_size=32"]
    with pytest.raises(ConfigError, match="3.csv: landmarks must be rows of 2 numbers"):
        build_data(OmegaConf.to_container(compose_config(overrides).data, resolve=True))
