"""Patch training (random patches with foreground oversampling, cut on the device) and
sliding-window inference (against whole-image inference and MONAI)."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY, check_test_metrics, compose_config
from monai.inferers import sliding_window_inference

from medimg_cli.commands.eval import evaluate_checkpoint
from medimg_cli.commands.train import train
from medimg_cli.data import DataInfo
from medimg_cli.data.patches import PatchBatches, pad_for_patches, patch_size
from medimg_cli.errors import ConfigError
from medimg_cli.models import create_model
from medimg_cli.results import read_metrics_csv
from medimg_cli.sliding import SlidingWindow

CPU = torch.device("cpu")


def _coded(count: int, shape: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """Images whose channel 0 holds each pixel's flat position and channel 1 the image's index."""
    positions = torch.arange(torch.Size(shape).numel(), dtype=torch.float32).view(1, 1, *shape)
    image = torch.cat([positions.expand(count, 1, *shape), torch.arange(count).float().view(-1, 1, *[1] * len(shape))
                       .expand(count, 1, *shape)], dim=1)  # fmt: skip
    mask = torch.zeros(count, 1, *shape, dtype=torch.uint8)
    mask[(0, 0, *(3,) * len(shape))] = 1  # one foreground pixel, in image 0 only
    return {"image": image, "mask": mask}


@pytest.mark.parametrize("shape, patch", [((20, 30), (8, 6)), ((10, 12, 9), (4, 5, 3))])
def test_patches_are_exact_crops_and_a_third_hold_foreground(shape, patch):
    tensors = _coded(3, shape)
    batches = PatchBatches(tensors, 6, CPU, patch, 1 / 3, steps=20, seed=0)
    assert len(batches) == 20
    for batch in batches.epoch(1):
        assert batch["image"].shape == (6, 2, *patch) and batch["mask"].shape == (6, 1, *patch)
        for image, mask in zip(batch["image"], batch["mask"], strict=True):
            n, first = int(image[1].flatten()[0]), int(image[0].flatten()[0])
            corner = torch.unravel_index(torch.tensor(first), shape)
            crop = tuple(slice(int(c), int(c) + p) for c, p in zip(corner, patch, strict=True))
            torch.testing.assert_close(image, tensors["image"][n][(slice(None), *crop)])
            torch.testing.assert_close(mask, tensors["mask"][n][(slice(None), *crop)])
        # the last third is placed on a foreground pixel (when its image has one: image 0 here)
        forced = batch["image"][4:, 1].flatten(1)[:, 0] == 0
        assert (batch["mask"][4:].flatten(1).sum(1)[forced] == 1).all()


def test_patch_batches_repeat_for_a_seed_and_epoch_and_differ_across_epochs():
    tensors = _coded(4, (16, 16))
    first = [b["image"] for b in PatchBatches(tensors, 4, CPU, (5, 5), 0.5, 3, seed=2).epoch(3)]
    again = [b["image"] for b in PatchBatches(tensors, 4, CPU, (5, 5), 0.5, 3, seed=2).epoch(3)]
    other = [b["image"] for b in PatchBatches(tensors, 4, CPU, (5, 5), 0.5, 3, seed=2).epoch(4)]
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))


def test_random_patches_stay_inside_the_roi_and_small_images_are_padded():
    tensors = _coded(2, (12, 12))
    tensors["roi"] = torch.zeros(2, 1, 12, 12, dtype=torch.uint8)
    tensors["roi"][0, :, :10, :7] = 1  # a native 10 x 7 image padded to 12 x 12
    tensors["roi"][1, :, :12, :12] = 1
    for batch in PatchBatches(tensors, 8, CPU, (4, 4), 0.0, 10, seed=0).epoch(0):
        from_first = batch["image"][:, 1].flatten(1)[:, 0] == 0
        assert (batch["roi"][from_first] == 1).all()  # random patches of image 0 lie inside its 10 x 7
    small = pad_for_patches({"image": torch.ones(2, 1, 5, 9), "label": torch.tensor([0, 1])}, (8, 8))
    assert small["image"].shape == (2, 1, 8, 9) and small["roi"].shape == (2, 1, 8, 9)
    assert int(small["roi"][0].sum()) == 45 and small["label"].tolist() == [0, 1]


def test_patch_size_is_checked_against_the_task_and_dimensions():
    seg = DataInfo("segmentation", 2, 1, 0, 2, ())
    assert patch_size({"patch_size": 16}, seg) == (16, 16)
    assert patch_size({"patch_size": None}, seg) is None
    with pytest.raises(ConfigError, match="data.patch_size=\\[16, 16, 16\\] must be 2 positive integers"):
        patch_size({"patch_size": [16, 16, 16]}, seg)
    with pytest.raises(ConfigError, match="data.task=multitask needs whole images"):
        patch_size({"patch_size": 16}, DataInfo("multitask", 2, 1, 2, 2, ("a", "b")))


def _unet(dims: int = 2) -> torch.nn.Module:
    torch.manual_seed(0)
    args = {"spatial_dims": dims, "in_channels": 1, "num_classes": 0, "num_seg_classes": 3, "task": "segmentation"}
    return create_model("unet", **args).eval()


@torch.no_grad()
def test_sliding_window_equals_whole_image_inference_when_the_window_covers_the_image():
    model, images = _unet(), torch.randn(2, 1, 32, 32)
    found = SlidingWindow(model, (32, 32), overlap=0.5)(images)["seg_logits"]
    torch.testing.assert_close(found, model(images)["seg_logits"], atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_sliding_window_matches_monai_and_blends_to_the_pointwise_truth():
    model, images = _unet(), torch.randn(1, 1, 80, 48)
    found = SlidingWindow(model, (32, 32), overlap=0.5, windows_per_call=3)(images)["seg_logits"]
    reference = sliding_window_inference(images, (32, 32), 3, model, overlap=0.5, mode="gaussian")["seg_logits"]
    torch.testing.assert_close(found, reference)
    pointwise = torch.nn.Conv2d(1, 2, 1)  # no context: every blend of windows must give the same value

    def as_dict(x):
        return {"seg_logits": pointwise(x)}

    blended = SlidingWindow(as_dict, (32, 32), overlap=0.5)(images)["seg_logits"]
    torch.testing.assert_close(blended, pointwise(images), atol=1e-5, rtol=1e-5)


def test_segmentation_trains_on_patches_and_eval_reproduces_its_test_numbers(tmp_path):
    overrides = [*TINY, "data.task=segmentation", "model=unet", "data.image_size=64", "data.patch_size=[32,32]"]
    summary = train(compose_config([*overrides, "trainer.steps_per_epoch=3", "trainer.batch_size=4"]), tmp_path)
    rows = read_metrics_csv(tmp_path / "metrics.csv")
    assert len(rows) == 2
    check_test_metrics(tmp_path, summary["test"])
    metrics = evaluate_checkpoint(tmp_path / "checkpoints" / "best.pt", "test", "cpu")
    for key in ("loss", "dice", "iou"):  # medimg eval runs the same sliding windows
        assert metrics[key] == pytest.approx(summary["test"][key], abs=1e-6), key


@torch.no_grad()
def test_sliding_window_tiles_each_image_over_its_roi_bounding_box_only():
    model, images = _unet(), torch.randn(2, 1, 64, 48)
    roi = torch.zeros(2, 1, 64, 48, dtype=torch.uint8)
    roi[0, :, :40, :33] = 1  # a 40 x 33 image padded to 64 x 48
    roi[1, :, 5:60, 2:48] = 1  # a field of view
    window = SlidingWindow(model, (32, 32), overlap=0.5)
    found = window(images, roi)["seg_logits"]
    alone = window(images[:1, :, :40, :33])["seg_logits"]
    torch.testing.assert_close(found[:1, :, :40, :33], alone)
    assert found[0, :, 40:].abs().sum() == 0 and found[0, :, :, 33:].abs().sum() == 0
    torch.testing.assert_close(found[1:, :, 5:60, 2:48], window(images[1:, :, 5:60, 2:48])["seg_logits"])
