"""Speed options: each gives the plain fp32 path's results, up to float rounding.

No timings are asserted here; ``medimg benchmark speed`` and ``benchmarks/`` measure them.
"""

from __future__ import annotations

import shutil
import time

import pytest
import torch
from test_augment_command import read_csv
from test_train import without_timing

from medimg_cli.commands.eval import evaluate_checkpoint
from medimg_cli.commands.train import train
from medimg_cli.data.batches import StreamBatches, TensorBatches, choose_loader
from medimg_cli.errors import ConfigError
from medimg_cli.results import read_metrics_csv
from medimg_cli.speed import Speed, resolve_precision

HAS_COMPILER = shutil.which("cc") is not None or shutil.which("gcc") is not None


@pytest.mark.parametrize("workers", [0, 2])
def test_stream_batches_are_the_memory_batches(workers):
    tensors = {"image": torch.randn(45, 1, 4, 4), "label": torch.arange(45)}
    plan = {"shuffle": True, "drop_last": True, "seed": 3}
    memory = TensorBatches(tensors, 8, torch.device("cpu"), **plan)
    stream = StreamBatches(tensors, 8, torch.device("cpu"), workers=workers, **plan)
    assert len(memory) == len(stream) == 5  # 45 // 8, the incomplete batch dropped
    for epoch in (1, 2):
        pairs = list(zip(memory.epoch(epoch), stream.epoch(epoch), strict=True))
        assert len(pairs) == 5
        for a, b in pairs:
            assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
    first = torch.cat([b["label"] for b in memory.epoch(1)])
    assert not torch.equal(first, torch.cat([b["label"] for b in memory.epoch(2)]))  # reshuffled


def _metrics(tiny_cfg, folder, *overrides):
    # the plain path: fp32, contiguous layout (auto would pick channels-last on this CPU)
    train(tiny_cfg("trainer.epochs=3", "augment=strong", "trainer.channels_last=false", *overrides), folder)
    return without_timing(read_metrics_csv(folder / "metrics.csv"))


@pytest.mark.parametrize(
    ("overrides", "tolerance"),
    [
        (["trainer.loader=stream", "trainer.workers=2"], 0),  # the same batches and draws: exact
        (["trainer.cudnn_benchmark=true"], 0),  # no cuDNN on CPU
        (["trainer.channels_last=true"], 1e-3),  # other kernels round differently, and 3 epochs amplify it
        (["trainer.precision=bf16"], 3e-2),  # bf16 keeps 8 bits of mantissa
        pytest.param(
            ["trainer.compile=default"],
            1e-3,
            marks=[pytest.mark.slow, pytest.mark.skipif(not HAS_COMPILER, reason="torch.compile needs a C compiler")],
        ),
    ],
    ids=["stream", "cudnn_benchmark", "channels_last", "bf16", "compile"],
)
def test_each_speed_option_gives_the_plain_results(tiny_cfg, tmp_path, overrides, tolerance):
    import torch._inductor.config

    # compiled dropout draws from inductor's own generator; this makes it use eager's, to compare.
    # config.patch, not monkeypatch: monkeypatch's undo deletes the key from inductor's config,
    # which breaks every later torch.compile in the process
    with torch._inductor.config.patch(fallback_random=True):
        plain = _metrics(tiny_cfg, tmp_path / "plain")
        fast = _metrics(tiny_cfg, tmp_path / "fast", *overrides)
    if tolerance == 0:
        assert fast == plain
        return
    for a, b in zip(fast, plain, strict=True):
        for key in ("train_loss", "val_loss"):
            assert a[key] == pytest.approx(b[key], rel=tolerance), key


def test_eval_reproduces_the_test_metrics_of_a_bf16_channels_last_run(tiny_cfg, tmp_path):
    summary = train(tiny_cfg("trainer.precision=bf16", "trainer.channels_last=true"), tmp_path)
    metrics = evaluate_checkpoint(tmp_path / "checkpoints" / "best.pt", "test", "cpu")
    for key, value in summary["test"].items():
        if key != "seconds_per_image":
            assert metrics[key] == pytest.approx(value, abs=1e-9), key


def test_auto_settings_resolve_per_device_and_model_size(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    small, big = torch.nn.Linear(10, 10), torch.nn.Linear(1000, 1000)
    assert resolve_precision("auto", cpu, 10**8) == "fp32"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert resolve_precision("auto", cuda, 10**6) == "bf16"
    assert resolve_precision("auto", cuda, 10**6 - 1) == "fp32"  # launch-bound small models: fp32 measured faster
    assert resolve_precision("fp16", cuda, 1) == "fp16"
    assert Speed.from_config({"precision": "auto"}, cpu, big, 2).precision == "fp32"
    assert Speed.from_config({}, cpu, small, 2) == Speed(cpu)  # an old checkpoint's config: the plain path
    assert Speed.from_config({"channels_last": "auto"}, cpu, small, 2).channels_last
    assert not Speed.from_config({"channels_last": "auto"}, cpu, small, 3).channels_last  # not measured in 3D
    assert Speed(cpu, "bf16", True).for_evaluation() == Speed(cpu, "fp32", True)
    assert choose_loader("auto", "auto", [{"image": torch.zeros(4, 1, 8, 8)}], cpu)[0] == "memory"
    assert choose_loader("stream", 3, [], cpu) == ("stream", 3)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("trainer.precision=fp8", "unknown trainer.precision 'fp8'"),
        ("trainer.precision=fp16", "trainer.precision=fp16 needs a GPU"),
        ("trainer.compile=fastest", "unknown trainer.compile 'fastest'"),
        ("trainer.channels_last=maybe", "trainer.channels_last='maybe' must be auto, true or false"),
        ("trainer.loader=disk", "unknown trainer.loader 'disk'"),
        ("trainer.workers=-1", "trainer.workers=-1 must be auto or a whole number"),
        ("trainer.cudnn_benchmark=sometimes", "trainer.cudnn_benchmark='sometimes' must be auto, true or false"),
    ],
)
def test_bad_speed_settings_are_one_clear_error(tiny_cfg, tmp_path, override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        train(tiny_cfg(override, "trainer.epochs=1"), tmp_path)


def test_benchmark_speed_writes_a_row_per_model_size_and_setting(tmp_path):
    from conftest import run_cli

    result = run_cli(
        "benchmark", "speed", "models=[cnn]", "image_sizes=[16]", "settings=[fp32,fp32+channels_last]",
        "steps=2", "repeats=1", "batch_size=4", "eval_batch_size=8", "device=cpu", f"hydra.run.dir={tmp_path}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = read_csv(tmp_path / "speed.csv")
    assert [(r["model"], r["image_size"], r["setting"]) for r in rows] == [
        ("cnn", "16", "fp32"),
        ("cnn", "16", "fp32+channels_last"),
    ]
    for row in rows:
        rate, gflops = float(row["train_images_per_second"]), float(row["gflops_per_image"])
        assert rate > 0 and float(row["inference_images_per_second"]) > 0 and float(row["latency_ms"]) > 0
        assert float(row["seconds_per_image"]) == pytest.approx(1 / float(row["inference_images_per_second"]))
        assert float(row["train_tflops"]) == pytest.approx(3 * gflops * rate / 1000)
        assert int(row["parameters"]) == 74_309  # the multitask cnn of conf/model/cnn.yaml (README, Models)
        assert 50 < float(row["peak_memory_mib"]) < 24 * 1024  # the process's resident set on a CPU
    assert "| cnn | 16 | fp32+channels_last |" in (tmp_path / "speed.md").read_text()


def test_benchmark_mistakes_are_one_line():
    from conftest import run_cli

    bad = run_cli("benchmark", "speed", "settings=[fp32+turbo]", "device=cpu")
    assert bad.returncode == 2 and "unknown settings: option of 'fp32+turbo' 'turbo'" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) <= 2
    none = run_cli("benchmark")
    assert none.returncode == 2 and "name an experiment: medimg benchmark experiment=<" in none.stderr
    assert "seed_comparison" in none.stderr and len(none.stderr.strip().splitlines()) <= 2


def test_a_run_resumes_with_the_other_loader_to_the_same_metrics(tiny_cfg, tmp_path):
    train(tiny_cfg("trainer.epochs=3"), tmp_path / "full")
    train(tiny_cfg("trainer.epochs=2"), tmp_path / "part")
    switch = ["trainer.epochs=3", "trainer.resume=true", "trainer.loader=stream", "trainer.workers=2"]
    summary = train(tiny_cfg(*switch), tmp_path / "part", overrides=switch)
    assert summary["speed"] == "fp32, channels_last, stream loader"  # resolved: channels-last is auto's CPU choice
    full, part = (without_timing(read_metrics_csv(tmp_path / x / "metrics.csv")) for x in ("full", "part"))
    assert part == full


class _SlowFirstCalls(torch.nn.Module):
    """What torch.compile does to timing, without its minutes of compiling: the first call in
    training mode and the first in evaluation mode each take ``seconds`` longer."""

    def __init__(self, model: torch.nn.Module, seconds: float) -> None:
        super().__init__()
        self.model, self.seconds, self.slept = model, seconds, set()

    def forward(self, *args, **kwargs):
        if self.training not in self.slept:
            self.slept.add(self.training)
            time.sleep(self.seconds)
        return self.model(*args, **kwargs)


def test_a_warm_up_is_left_out_of_the_timing_and_reported_apart(tiny_cfg, tmp_path, monkeypatch):
    prepare = Speed.prepare
    monkeypatch.setattr(Speed, "prepare", lambda self, model: _SlowFirstCalls(prepare(self, model), 1.0))
    summary = train(tiny_cfg("data.num_samples=96", "trainer.epochs=2"), tmp_path)
    first = read_metrics_csv(tmp_path / "metrics.csv")[0]
    n_train, n_val, batch = 67, 14, 16  # 70/15/15 of 96 phantoms
    # the timed parts hold no slept second (no timing comparison: a busy machine must not fail this)
    assert first["seconds_per_image"] * n_val < 0.9 and (n_train - batch) / first["train_images_per_second"] < (
        first["epoch_seconds"] - 1.95  # the epoch holds both slept seconds, the training rate neither
    )
    assert summary["warmup_seconds"]["train"] >= 1.0 and summary["warmup_seconds"]["evaluation"] >= 1.0
    processing = summary["processing_seconds_per_image"]
    assert set(processing) == {"batch_1", "batch_256"} and all(0 < s < 0.1 for s in processing.values())


def test_speed_defaults_follow_the_device():
    """bf16 is emulated on a CPU (5-20x slower): the CPU defaults are fp32 settings and small passes."""
    from omegaconf import OmegaConf

    from medimg_cli.benchmark.speed import resolve_auto

    cfg = OmegaConf.create({"settings": "auto", "batch_size": "auto", "steps": 7, "models": ["cnn"]})
    cpu = resolve_auto(cfg, torch.device("cpu"))
    assert list(cpu.settings) == ["fp32", "fp32+channels_last"] and cpu.batch_size == 16 and cpu.steps == 7
    cuda = resolve_auto(cfg, torch.device("cuda"))
    assert list(cuda.settings) == ["fp32", "bf16", "bf16+channels_last"] and cuda.batch_size == 128


@pytest.mark.slow
@pytest.mark.skipif(not HAS_COMPILER, reason="torch.compile needs a C compiler")
def test_a_compiled_runs_timing_excludes_the_compilation(tiny_cfg, tmp_path):
    """The real thing the mocked test above stands in for, where torch.compile works."""
    overrides = ("data.task=classification", "trainer.compile=default", "trainer.epochs=2", "trainer.batch_size=16")
    # 19 val and 19 test images in batches of 16: two shapes, each compiled before it is timed
    summary = train(tiny_cfg(*overrides, "data.num_samples=128", "trainer.eval_batch_size=16"), tmp_path)
    first = read_metrics_csv(tmp_path / "metrics.csv")[0]["seconds_per_image"]
    warmup = summary["warmup_seconds"]
    assert warmup["train"] > 0.5 and warmup["evaluation"] > 0.5  # compiling takes seconds, not milliseconds
    # epoch 1's 19 validation images took a fraction of the compilation, which is not in them (on an idle
    # machine s/img is within 2x of the test pass: 'seconds_per_image' in metrics.csv and summary.json)
    assert first * 19 < warmup["evaluation"] / 2, (first, warmup)
