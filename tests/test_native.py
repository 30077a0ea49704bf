"""Native resolution: no resize with ``data.image_size=null``, the exact ``data.spacing``, samples of
different sizes padded with a region of interest that loss, metrics and augmentation respect."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import check_test_metrics, compose_config
from monai.metrics import compute_dice
from PIL import Image
from test_volumes import nifti_overrides, write_nifti

from medimg_cli.augment import build_augment
from medimg_cli.commands.eval import evaluate_checkpoint_cfg
from medimg_cli.commands.train import train
from medimg_cli.data import DataInfo, build_data
from medimg_cli.data.native import MULTIPLE, stack_native
from medimg_cli.errors import ConfigError
from medimg_cli.evaluation.written import to_original, write_masks
from medimg_cli.losses import SEGMENTATION_LOSSES
from medimg_cli.metrics import TaskMetrics

SIZES = [(40, 36), (28, 44), (33, 30)]  # height, width of the test images


def _write_folder(root, count: int = 12) -> None:
    """Grayscale PNGs of the sizes above (cycled) with a bright square and its 0/1 mask."""
    rng = np.random.default_rng(0)
    for i in range(count):
        h, w = SIZES[i % len(SIZES)]
        image = rng.integers(0, 60, (h, w)).astype(np.uint8)
        mask = np.zeros((h, w), np.uint8)
        y, x = rng.integers(0, h - 8), rng.integers(0, w - 8)
        image[y : y + 8, x : x + 8] = 220
        mask[y : y + 8, x : x + 8] = 1
        for folder, array in (("images", image), ("masks", mask)):
            (root / folder).mkdir(parents=True, exist_ok=True)
            Image.fromarray(array).save(root / folder / f"case{i:02d}.png")


def _folder_cfg(root, *extra: str):
    return compose_config(
        [
            "data=folder",
            f"data.root={root / 'images'}",
            f"data.mask_root={root / 'masks'}",
            "data.task=segmentation",
            "data.image_size=null",
            "data.split=[0.5,0.25,0.25]",
            "data.cache=false",
            *extra,
        ]
    )


def test_stack_native_pads_at_the_far_end_and_marks_the_roi():
    images = [torch.rand(1, 5, 7), torch.rand(1, 9, 3)]
    masks = [torch.ones(1, 5, 7, dtype=torch.uint8), torch.ones(1, 9, 3, dtype=torch.uint8)]
    stacked, stacked_masks, roi = stack_native(images, masks)
    assert stacked.shape == (2, 1, MULTIPLE, MULTIPLE) and roi.shape == (2, 1, MULTIPLE, MULTIPLE)
    torch.testing.assert_close(stacked[0, :, :5, :7], images[0])
    torch.testing.assert_close(stacked[1, :, :9, :3], images[1])
    assert int(roi[0].sum()) == 35 and int(roi[0, 0, :5, :7].sum()) == 35
    assert int(stacked_masks[1].sum()) == 27 and stacked[0, :, 5:].abs().sum() == 0
    same = stack_native([torch.rand(1, MULTIPLE, MULTIPLE)] * 2, None)
    assert same[2] is None  # nothing padded, no ROI


def test_folder_images_keep_their_own_size_and_pixels(tmp_path):
    _write_folder(tmp_path)
    splits = build_data(dict(_folder_cfg(tmp_path, "data.normalize=none").data))
    all_images = torch.cat([splits.split(s)["image"] for s in ("train", "val", "test")])
    all_roi = torch.cat([splits.split(s)["roi"] for s in ("train", "val", "test")])
    assert all_images.shape[2:] == (64, 64)  # the largest extents 40 x 44, rounded up to 32s
    sizes = {(int(r[0].any(1).sum()), int(r[0].any(0).sum())) for r in all_roi}
    assert sizes == set(SIZES)
    # not resized: every stored pixel inside the ROI is a pixel of a file (uint8 values / 255)
    inside = all_images[all_roi.bool()]
    torch.testing.assert_close(inside * 255, (inside * 255).round(), atol=1e-3, rtol=0)


# a flipped x axis and an origin: masks written back must overlay the originals in world space
AFFINE = np.array([[-2.0, 0, 0, 10], [0, 1.5, 0, -5], [0, 0, 3.0, 7], [0, 0, 0, 1]])


def _anisotropic_volumes(root, count: int = 4) -> None:
    for i in range(count):
        data = np.random.default_rng(i).random((8, 10, 6), dtype=np.float32)
        write_nifti(root / "images" / f"c{i}.nii", data, AFFINE)
        write_nifti(root / "masks" / f"c{i}.nii", (data > 0.5).astype(np.uint8), AFFINE)


def test_spacing_is_delivered_exactly_and_predictions_map_back_to_the_original_grid(tmp_path):
    import nibabel as nib

    _anisotropic_volumes(tmp_path)
    overrides = nifti_overrides(tmp_path, "data.spacing=[1,0.75,1.5]", "data.split=[0.5,0.25,0.25]")
    with pytest.raises(ConfigError, match=r"data.image_size=16 would resize it again.*data.image_size=null"):
        build_data(dict(compose_config(overrides).data))
    splits = build_data(dict(compose_config([*overrides, "data.image_size=null"]).data))
    roi = splits.train["roi"][0, 0]
    assert tuple(int(n) for n in roi.nonzero().amax(0) + 1) == (16, 20, 12)  # 8x2/1, 10x1.5/0.75, 6x3/1.5
    assert splits.pixel_spacing["train"][0] == [1.0, 0.75, 1.5]
    originals = [nib.as_closest_canonical(nib.load(tmp_path / "masks" / f"c{i}.nii")) for i in range(4)]
    for split in ("train", "val", "test"):  # the resampled masks, as a perfect model predicts them, written back
        ids, labels = splits.ids[split], splits.split(split)["mask"][:, 0]
        write_masks(tmp_path / "out", labels, ids, splits.pixel_spacing[split], 2, splits.sizes[split],
                    splits.affines[split])  # fmt: skip
        for name in ids:
            written = nib.load(tmp_path / "out" / f"{name}.nii.gz")
            same = [o for o in originals if np.array_equal(np.asarray(written.dataobj), np.asarray(o.dataobj))]
            assert len(same) == 1 and np.allclose(written.affine, same[0].affine)


def test_after_a_spacing_resampling_eval_scores_on_the_files_grid(tmp_path):

    from medimg_cli.evaluation.document import Settings
    from medimg_cli.evaluation.segmented import _original_grid_outputs

    _anisotropic_volumes(tmp_path / "data", count=8)
    overrides = nifti_overrides(tmp_path / "data", "data.spacing=[1,0.75,1.5]", "data.image_size=null")
    common = ["data.task=segmentation", "data.split=[0.5,0.25,0.25]", "data.cache=false", "device=cpu"]
    splits = build_data(dict(compose_config([*overrides, *common]).data))
    test, originals, sizes = splits.test, splits.originals["test"], splits.sizes["test"]
    perfect = torch.nn.functional.one_hot(test["mask"][:, 0].long(), 2).movedim(-1, 1).float()
    assert (_original_grid_outputs(perfect, originals, sizes, 2, Settings())["dice"] == 1).all()
    # a spacing that is no whole ratio of the file's changes the foreground share when resampled,
    # so an all-foreground prediction scores differently on the two grids
    odd = build_data(dict(compose_config([*overrides, *common, "data.spacing=[1.3,1.1,2.0]"]).data)).test
    everywhere = torch.ones(len(odd["mask"]), 2, *odd["mask"].shape[2:])
    everywhere[:, 0] = 0
    sizes_odd = [[list(m.shape[1:]), [8, 10, 6]] for m in odd["mask"]]
    originals_odd = [(o, [2.0, 1.5, 3.0]) for o, _ in originals]  # the same test files, as the files hold them
    found = _original_grid_outputs(everywhere, originals_odd, sizes_odd, 2, Settings())["dice"][:, 0]
    by_hand = [2 * float(o.sum()) / (float(o.sum()) + o.numel()) for o, _ in originals]  # on the 8x10x6 grid
    stored = [2 * float(m.sum()) / (float(m.sum()) + m.numel()) for m in odd["mask"]]
    np.testing.assert_allclose(found, by_hand, atol=1e-6)
    assert max(abs(a - b) for a, b in zip(stored, by_hand, strict=True)) > 1e-3  # the grids do differ
    cfg = compose_config([*overrides, *common, "model=unet", "trainer.epochs=1"])
    train(cfg, tmp_path / "run")
    checkpoint = tmp_path / "run" / "checkpoints" / "best.pt"
    document = evaluate_checkpoint_cfg(compose_config([f"checkpoint={checkpoint}", "device=cpu"], name="eval"))
    assert document["grid"].startswith("original") and document["distance_unit"] == "mm"


@pytest.mark.parametrize("name", ["dice_ce", "dice_focal", "tversky"])
def test_roi_loss_equals_monai_on_a_full_roi_and_ignores_outside_pixels(name):
    torch.manual_seed(0)
    loss = SEGMENTATION_LOSSES.get(name)()
    logits = torch.randn(2, 3, 12, 10, requires_grad=True)
    mask = torch.randint(0, 3, (2, 1, 12, 10))
    full = torch.ones(2, 1, 12, 10)
    torch.testing.assert_close(loss(logits, mask, full), loss(logits, mask))
    roi = torch.zeros(2, 1, 12, 10)
    roi[:, :, 2:9, 1:7] = 1
    value = loss(logits, mask, roi)
    changed_logits = torch.where(roi.bool(), logits, torch.randn_like(logits) * 5)
    changed_mask = torch.where(roi.bool(), mask, torch.randint(0, 3, mask.shape))
    torch.testing.assert_close(loss(changed_logits, changed_mask, roi), value)
    value.backward()
    assert logits.grad[roi.expand_as(logits) == 0].abs().max() == 0  # no gradient from outside


def test_metrics_count_only_pixels_inside_the_roi():
    info = DataInfo("segmentation", 2, 1, 0, 2, ())
    mask = torch.zeros(1, 1, 8, 8, dtype=torch.uint8)
    mask[..., 2:4, 2:4] = 1
    roi = torch.zeros_like(mask)
    roi[..., :5, :5] = 1
    logits = torch.zeros(1, 2, 8, 8)
    logits[:, 1, 2:4, 2:4] = 1  # right inside the ROI
    logits[:, 1, 6:, 6:] = 1  # false positives outside it
    metrics = TaskMetrics(info)
    metrics.update({"seg_logits": logits}, {"image": torch.zeros(1, 1, 8, 8), "mask": mask, "roi": roi})
    assert metrics.compute()["dice"] == pytest.approx(1.0)
    without = TaskMetrics(info)
    without.update({"seg_logits": logits}, {"image": torch.zeros(1, 1, 8, 8), "mask": mask})
    pred = torch.nn.functional.one_hot(logits.argmax(1), 2).movedim(-1, 1)
    expected = compute_dice(pred, torch.nn.functional.one_hot(mask[:, 0].long(), 2).movedim(-1, 1), False)
    assert without.compute()["dice"] == pytest.approx(float(expected.mean()))  # 8 / (8 + 4 + ...) < 1


def test_geometric_augmentation_moves_the_roi_with_the_image():
    info = DataInfo("segmentation", 2, 1, 0, 2, ())
    augment = build_augment({"name": "flip", "flip": {"prob": 1.0, "axes": [1]}}, info)
    roi = torch.zeros(2, 1, 4, 6, dtype=torch.uint8)
    roi[..., :2] = 1
    image = roi.float().clone()
    out = augment({"image": image, "mask": roi.clone(), "roi": roi})
    torch.testing.assert_close(out["roi"].float(), out["image"])
    assert out["roi"][..., 4:].all() and not out["roi"][..., :4].any()
    rotated = build_augment({"name": "rotate", "rotate": {"prob": 1.0, "degrees": 30}}, info)
    moved = rotated({"image": torch.rand(2, 1, 16, 16), "roi": torch.ones(2, 1, 16, 16, dtype=torch.uint8)})
    assert 0 < int(moved["roi"].sum()) < 2 * 256  # corners rotated in from outside are not real pixels


@pytest.mark.parametrize("patches", [[], ["data.patch_size=[32,32]", "trainer.steps_per_epoch=3"]])
def test_segmentation_trains_on_images_of_different_sizes(tmp_path, patches):
    _write_folder(tmp_path / "data")
    cfg = _folder_cfg(
        tmp_path / "data", "model=unet", "trainer.epochs=2", "trainer.batch_size=4", "device=cpu", *patches
    )
    summary = train(cfg, tmp_path / "run")
    check_test_metrics(tmp_path / "run", summary["test"])
    checkpoint = tmp_path / "run" / "checkpoints" / "best.pt"
    overrides = [f"checkpoint={checkpoint}", "device=cpu", "eval.bootstrap=50", "eval.save_probabilities=true"]
    document = evaluate_checkpoint_cfg(compose_config([*overrides, "eval.cldice=true"], name="eval"))
    assert 0 <= document["metrics"]["cldice"]["value"] <= 1  # scored inside the ROI as in training
    for key in ("dice", "iou"):
        assert document["metrics"][key]["value"] == pytest.approx(summary["test"][key], abs=1e-6), key
    out = tmp_path / "run" / "eval" / "test"
    for path in sorted((out / "masks").glob("*.png")):  # each at its image's own size, 0/255
        mask = np.array(Image.open(path))
        probabilities = np.load(out / "probabilities" / f"{path.stem}.npz")["probabilities"]
        assert mask.shape in SIZES and probabilities.shape == (2, *mask.shape) and probabilities.dtype == np.float16
        np.testing.assert_allclose(probabilities.astype(np.float32).sum(0), 1, atol=2e-3)
        assert ((probabilities[1] > probabilities[0]) == (mask == 255)).mean() > 0.99  # float16 ties aside


def test_with_patches_the_native_stack_is_not_rounded_up(tmp_path):
    _write_folder(tmp_path)
    splits = build_data(dict(_folder_cfg(tmp_path, "data.patch_size=[16,16]").data))
    assert splits.train["image"].shape[2:] == (40, 44)  # the sliding windows pad where they need to


def test_outputs_go_back_to_the_original_size():
    stored = torch.arange(2 * 6 * 8, dtype=torch.float32).view(2, 6, 8)
    cropped = to_original(stored, [[4, 5], [4, 5]], labels=False)  # padded native image: crop only
    torch.testing.assert_close(cropped, stored[:, :4, :5])
    labels = torch.tensor([[[0, 1], [2, 1]]], dtype=torch.uint8)
    assert to_original(labels, [[2, 2], [4, 4]], labels=True).tolist() == [
        [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 1, 1], [2, 2, 1, 1]]
    ]  # resized from 4 x 4 to 2 x 2 for training: labels back by nearest neighbour
    assert to_original(stored, None, labels=False) is stored


def test_3d_masks_are_written_at_their_own_size_and_spacing(tmp_path):
    import nibabel as nib

    labels = torch.zeros(2, 10, 12, 8, dtype=torch.uint8)
    labels[0, 1:3, 2:4, 1:2] = 1
    sizes = [[[6, 7, 5], [6, 7, 5]], [[10, 12, 8], [20, 24, 8]]]  # padded native; resized from 20 x 24 x 8
    write_masks(tmp_path, labels, ["a", "b"], [[1.5, 1.0, 2.0], [2.0, 2.0, 3.0]], 2, sizes)
    padded, resized = nib.load(tmp_path / "a.nii.gz"), nib.load(tmp_path / "b.nii.gz")
    assert padded.shape == (6, 7, 5) and padded.header.get_zooms() == (1.5, 1.0, 2.0)
    assert np.asarray(padded.dataobj).sum() == 4
    assert resized.shape == (20, 24, 8) and resized.header.get_zooms() == (1.0, 1.0, 3.0)
