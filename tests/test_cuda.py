"""The CUDA paths: recipes on GPU batches, training, evaluation and resume with ``device=cuda``.

These run only where a GPU is present (CI here has none: they skip with that reason). The rest
of the suite pins ``device=cpu``, so this file is what exercises device-resident batches, the
CUDA RNG state in checkpoints and GPU augmentation.
"""

from __future__ import annotations

import pytest
import torch
from conftest import RUN_FILES, compose_config
from omegaconf import OmegaConf
from test_augment import CONF, blobs, info
from test_train import without_timing

from medimg_cli.augment import build_augment
from medimg_cli.commands.eval import evaluate_checkpoint, evaluate_checkpoint_cfg
from medimg_cli.commands.train import train
from medimg_cli.data import SUPERVISED
from medimg_cli.results import read_metrics_csv

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CUDA = ["device=cuda"]
RECIPES = [*sorted(p.stem for p in CONF.glob("*.yaml")), "physics:ct"]


def rows(run):
    return without_timing(read_metrics_csv(run / "metrics.csv"))


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("name", RECIPES)
def test_every_recipe_runs_on_gpu_batches_and_is_seeded(name, dims):
    name, _, modality = name.partition(":")
    cfg = OmegaConf.to_container(compose_config([f"augment={name}"]).augment)
    if modality:
        cfg["modality"] = modality
    aug = build_augment(cfg, info(dims, "classification" if name == "mix" else "multitask"))
    image = blobs(8, dims, size=16).cuda()
    mask = torch.zeros_like(image, dtype=torch.uint8)
    mask[image > 0.3], mask[image > 0.6] = 1, 2
    label = torch.arange(8, device="cuda") % 3
    outs = []
    for _ in range(2):
        torch.cuda.manual_seed(3)
        outs.append(aug({"image": image, "mask": mask, "label": label}))
    first, second = outs
    assert first["image"].device.type == "cuda" and first["image"].shape == image.shape
    assert torch.equal(first["image"], second["image"])
    assert torch.isfinite(first["image"]).all()
    if name != "mix":  # cutmix moves mask values but never invents new ones either
        assert set(first["mask"].unique().tolist()) <= {0, 1, 2}


@pytest.mark.parametrize(
    ("task", "model"),
    [(task, model) for task in SUPERVISED for model in ("cnn", "hybrid")] + [("anomaly", "denoising_autoencoder")],
)
def test_training_on_gpu_writes_a_complete_run_that_eval_reproduces(tiny_cfg, tmp_path, task, model):
    summary = train(tiny_cfg(*CUDA, f"data.task={task}", f"model={model}", "augment=strong"), tmp_path)
    for name in RUN_FILES:
        assert (tmp_path / name).is_file(), name
    assert summary["device"].startswith("cuda")
    on_gpu = evaluate_checkpoint(tmp_path / "checkpoints" / "best.pt", "test", "cuda")
    on_cpu = evaluate_checkpoint(tmp_path / "checkpoints" / "best.pt", "test", "cpu")
    for key, value in summary["test"].items():
        if key == "seconds_per_image" or key not in on_gpu:  # anomaly: the val threshold's metrics are train's
            continue
        assert on_gpu[key] == pytest.approx(value, abs=1e-6), key
        # the same weights on another device: only float rounding differs
        assert on_cpu[key] == pytest.approx(value, abs=1e-3), key


@pytest.mark.parametrize("model", ["cnn", "hybrid"])
def test_deterministic_gpu_runs_repeat_and_resume_exactly(tiny_cfg, tmp_path, model):
    overrides = [*CUDA, "augment=strong", f"model={model}", "trainer.deterministic=true"]
    train(tiny_cfg(*overrides, "trainer.epochs=4"), tmp_path / "full")
    train(tiny_cfg(*overrides, "trainer.epochs=4"), tmp_path / "again")
    train(tiny_cfg(*overrides, "trainer.epochs=2"), tmp_path / "part")
    train(
        tiny_cfg(*overrides, "trainer.epochs=4", "trainer.resume=true"),
        tmp_path / "part",
        overrides=["trainer.epochs=4", "trainer.resume=true"],
    )
    full, again, part = (rows(tmp_path / x) for x in ("full", "again", "part"))
    assert len(full) == 4
    for other in (again, part):
        # the weights repeat exactly, so every validation number does; the summed training loss
        # goes through cross-entropy's 2D reduction, which has no deterministic CUDA kernel
        assert [r["train_loss"] for r in other] == pytest.approx([r["train_loss"] for r in full], rel=1e-6)
        assert [r | {"train_loss": 0} for r in other] == [r | {"train_loss": 0} for r in full]


@pytest.mark.parametrize(
    ("overrides", "tolerance"),
    [
        (["trainer.loader=stream", "trainer.workers=2"], 1e-5),
        # other kernels round differently and 3 epochs amplify it: 0.2% was seen on an H100; a broken
        # layout or graph replay changes the losses by far more
        (["trainer.channels_last=true"], 1e-2),
        (["trainer.precision=bf16"], 5e-2),
        (["trainer.precision=fp16"], 5e-2),
        (["trainer.compile=reduce-overhead"], 1e-2),
    ],
    ids=["stream", "channels_last", "bf16", "fp16", "cuda_graphs"],
)
def test_each_speed_option_on_gpu_gives_the_fp32_results(tiny_cfg, tmp_path, overrides, tolerance):
    import torch._inductor.config

    common = [*CUDA, "trainer.epochs=3", "trainer.deterministic=true", "model=hybrid"]
    fp32 = [] if any(o.startswith("trainer.precision") for o in overrides) else ["trainer.precision=fp32"]
    with torch._inductor.config.patch(fallback_random=True):  # eager's dropout draws, to compare
        train(tiny_cfg(*common, "trainer.precision=fp32"), tmp_path / "plain")
        train(tiny_cfg(*common, *fp32, *overrides), tmp_path / "fast")
    for a, b in zip(rows(tmp_path / "fast"), rows(tmp_path / "plain"), strict=True):
        for key in ("train_loss", "val_loss"):
            assert a[key] == pytest.approx(b[key], rel=tolerance), key


@pytest.mark.parametrize("model, explain", [("cnn", "gradcam"), ("hybrid", "attention")])
def test_medimg_eval_on_gpu_matches_the_cpu(tiny_cfg, tmp_path, monkeypatch, model, explain):
    # cuDNN's default TF32 convolutions round at 1e-3, enough to reorder the near-tied scores of this
    # barely trained model and move its AUC by 0.02 (seen on an H200); the test is about medimg's
    # eval path on both devices, so the GPU computes in full fp32 here
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    train(tiny_cfg(f"model={model}"), tmp_path / "run")
    documents = []
    for device in ("cuda", "cpu"):
        overrides = [f"checkpoint={tmp_path / 'run' / 'checkpoints' / 'best.pt'}", f"device={device}"]
        overrides += ["eval.uncertainty=tta", f"eval.explain={explain}", f"out={tmp_path / device}"]
        documents.append(evaluate_checkpoint_cfg(compose_config(overrides, name="eval")))
    on_gpu, on_cpu = documents
    for key, entry in on_cpu["metrics"].items():
        assert on_gpu["metrics"][key]["value"] == pytest.approx(entry["value"], abs=1e-2), key
    gpu_maps = on_gpu["explain"]["randomisation"]["spearman_mean"]
    assert gpu_maps == pytest.approx(on_cpu["explain"]["randomisation"]["spearman_mean"], abs=0.05)


def test_patch_training_on_gpu_and_sliding_window_eval_match_the_cpu(tmp_path):
    from test_native import _folder_cfg, _write_folder

    _write_folder(tmp_path / "data")
    extra = ["model=unet", "trainer.epochs=2", "trainer.batch_size=4", "data.patch_size=[32,32]"]
    summary = train(_folder_cfg(tmp_path / "data", *extra, "trainer.steps_per_epoch=3", *CUDA), tmp_path / "run")
    assert summary["device"].startswith("cuda")
    checkpoint = tmp_path / "run" / "checkpoints" / "best.pt"
    on_gpu = evaluate_checkpoint(checkpoint, "test", "cuda")
    on_cpu = evaluate_checkpoint(checkpoint, "test", "cpu")
    for key in ("loss", "dice", "iou"):  # sliding windows over images of different sizes on both devices
        assert on_gpu[key] == pytest.approx(summary["test"][key], abs=1e-6), key
        assert on_cpu[key] == pytest.approx(summary["test"][key], abs=1e-3), key


@torch.no_grad()
def test_sliding_window_on_gpu_matches_monai():
    from monai.inferers import sliding_window_inference
    from test_patches import _unet

    from medimg_cli.sliding import SlidingWindow

    model, images = _unet(3).cuda(), torch.randn(1, 1, 40, 56, 36, device="cuda")
    found = SlidingWindow(model, (32, 32, 32), overlap=0.5, windows_per_call=4)(images)["seg_logits"]
    reference = sliding_window_inference(images, (32, 32, 32), 4, model, overlap=0.5, mode="gaussian")["seg_logits"]
    torch.testing.assert_close(found, reference, atol=1e-4, rtol=1e-4)


def test_a_planned_run_on_gpu_budgets_the_gpus_memory_and_eval_matches_the_cpu(tmp_path, monkeypatch):
    import json

    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # as above: an untrained net's near ties
    from test_native import _folder_cfg, _write_folder

    _write_folder(tmp_path / "data")
    auto = ["data.patch_size=auto", "data.normalize=auto", "trainer.batch_size=auto", "model=dynunet"]
    cfg = _folder_cfg(tmp_path / "data", *auto, "trainer.epochs=1", "trainer.steps_per_epoch=2", *CUDA)
    summary = train(cfg, tmp_path / "run")
    plan = json.loads((tmp_path / "run" / "plan.json").read_text())
    total = torch.cuda.get_device_properties(0).total_memory / 1e9
    assert plan["memory_gb"] == pytest.approx(0.8 * total, abs=0.1)
    checkpoint = tmp_path / "run" / "checkpoints" / "best.pt"
    on_cpu = evaluate_checkpoint(checkpoint, "test", "cpu")
    assert on_cpu["dice"] == pytest.approx(summary["test"]["dice"], abs=1e-3)
