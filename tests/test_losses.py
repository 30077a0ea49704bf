"""The loss group: each option against MONAI's loss computed directly, the multitask weights,
mistakes, and a run with a non-default loss that ``medimg eval`` reproduces."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss, DiceFocalLoss, DiceLoss

from medimg_cli.commands.eval import evaluate_checkpoint
from medimg_cli.commands.train import train
from medimg_cli.data import DataInfo
from medimg_cli.errors import ConfigError
from medimg_cli.losses import TaskLoss

INFO = DataInfo("multitask", 2, 1, 3, 2, ("a", "b", "c"))


def _batch(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    outputs = {
        "class_logits": torch.randn(4, 3, generator=generator),
        "seg_logits": torch.randn(4, 2, 8, 8, generator=generator),
    }
    batch = {
        "image": torch.zeros(4, 1, 8, 8),
        "label": torch.tensor([0, 1, 2, 1]),
        "mask": (torch.rand(4, 1, 8, 8, generator=generator) > 0.7).to(torch.uint8),
    }
    return outputs, batch


def test_default_is_cross_entropy_plus_monai_dice_ce():
    outputs, batch = _batch()
    expected = F.cross_entropy(outputs["class_logits"], batch["label"]) + DiceCELoss(to_onehot_y=True, softmax=True)(
        outputs["seg_logits"], batch["mask"].long()
    )
    assert TaskLoss(INFO)(outputs, batch).item() == pytest.approx(expected.item(), abs=1e-7)
    assert TaskLoss(INFO, {"name": "dice_ce"})(outputs, batch).item() == pytest.approx(expected.item(), abs=1e-7)


def test_weights_and_options_match_monai():
    outputs, batch = _batch(1)
    ce = F.cross_entropy(outputs["class_logits"], batch["label"])
    seg, mask = outputs["seg_logits"], batch["mask"].long()
    cfg = {
        "name": "dice_ce",
        "dice_weight": 0.3,
        "ce_weight": 2.0,
        "classification_weight": 2.0,
        "segmentation_weight": 0.5,
    }
    expected = 2.0 * ce + 0.5 * DiceCELoss(to_onehot_y=True, softmax=True, lambda_dice=0.3, lambda_ce=2.0)(seg, mask)
    assert TaskLoss(INFO, cfg)(outputs, batch).item() == pytest.approx(expected.item(), abs=1e-6)
    focal = DiceFocalLoss(to_onehot_y=True, softmax=True, gamma=1.5)(seg, mask)
    assert TaskLoss(INFO, {"name": "dice_focal", "gamma": 1.5})(outputs, batch).item() == pytest.approx(
        (ce + focal).item(), abs=1e-6
    )
    # Tversky with alpha = beta = 0.5 is the Dice loss
    dice = DiceLoss(to_onehot_y=True, softmax=True)(seg, mask)
    tversky = TaskLoss(INFO, {"name": "tversky", "alpha": 0.5, "beta": 0.5})(outputs, batch)
    assert tversky.item() == pytest.approx((ce + dice).item(), abs=1e-6)


def test_loss_mistakes_name_the_key():
    with pytest.raises(ConfigError, match="loss.gama is not an argument"):
        TaskLoss(INFO, {"name": "dice_focal", "gama": 2})
    with pytest.raises(ConfigError, match="dice_focal"):
        TaskLoss(INFO, {"name": "dice_focall"})


def test_a_run_with_another_loss_is_evaluated_with_it(tiny_cfg, tmp_path):
    summary = train(tiny_cfg("loss=tversky", "loss.segmentation_weight=3", "trainer.epochs=1"), tmp_path)
    default = train(tiny_cfg("trainer.epochs=1"), tmp_path / "default")
    assert summary["test"]["loss"] != pytest.approx(default["test"]["loss"], abs=1e-3)
    metrics = evaluate_checkpoint(tmp_path / "checkpoints" / "best.pt", "test", "cpu")
    assert metrics["loss"] == pytest.approx(summary["test"]["loss"], abs=1e-9)
