"""``medimg benchmark speed``: how fast each model trains and infers, per speed setting:

    medimg benchmark speed
    medimg benchmark speed models=[resnet18] image_sizes=[28] settings=[fp32,bf16+channels_last+cuda_graphs]
    medimg benchmark speed models=[resnet18] +model_args.resnet18.stem=cifar   # a model key changed

For every model x input size x setting (``bf16+channels_last+compile``: a precision, then
options), on synthetic batches already on the device, so that data loading is not timed:

- training images/s: ``loop.train_epoch`` over ``steps`` batches (forward, loss, backward,
  Adam step), median of ``repeats`` passes after a warm-up pass (which also compiles);
- inference images/s at ``eval_batch_size`` and latency at batch 1: ``loop.evaluate``'s
  synchronised forward timing; seconds per image as the papers define it (Gomathi and Roopa Chandrika, eq. 8);
- peak memory of training (CUDA: tensors allocated; CPU: the process's resident set, its peak
  reset before each measurement where Linux allows), parameters, forward FLOPs per image (torch's counter) and
  achieved training TFLOP/s (3 x forward FLOPs per image x images/s: backward costs about twice
  the forward), also as a fraction of the device's matrix-multiply rate measured in the same run.

Writes ``speed.csv`` (one row per measurement) and ``speed.md`` with the device, versions and
settings, and prints the table.
"""

from __future__ import annotations

import contextlib
import logging
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

import medimg_cli
from medimg_cli.augment import build_augment
from medimg_cli.config import resolve_device, seed_everything
from medimg_cli.data import SUPERVISED, DataInfo
from medimg_cli.data.batches import TensorBatches
from medimg_cli.errors import ConfigError, unknown_choice
from medimg_cli.fileio import csv_text, write_atomic
from medimg_cli.loop import evaluate, synchronize, train_epoch
from medimg_cli.losses import TaskLoss
from medimg_cli.models import create_model, model_args, model_names
from medimg_cli.models.transfer import forward_flops
from medimg_cli.runinfo import device_name, peak_memory, versions
from medimg_cli.speed import PRECISIONS, Speed, configure_backends
from medimg_cli.tables import grid_markdown, grid_rich, make_console

OPTIONS = {"channels_last": {"channels_last": True}, "compile": {"compile": "default"}}
OPTIONS["cuda_graphs"] = {"compile": "reduce-overhead"}
MODEL_CONF = Path(medimg_cli.__file__).parent / "conf" / "model"
COLUMNS = (
    "model", "image_size", "setting", "train_images_per_second", "inference_images_per_second",
    "latency_ms", "seconds_per_image", "peak_memory_mib", "parameters", "gflops_per_image",
    "train_tflops", "fraction_of_matmul_peak",
)  # fmt: skip
log = logging.getLogger(__name__)
# What ``auto`` means, by device: the CPU defaults finish in about 3 minutes on 2 cores (bf16 is
# emulated there, 5-20x slower, so it is not a default; ask for it by name).
DEFAULTS = {
    "cpu": {"settings": ["fp32", "fp32+channels_last"], "batch_size": 16, "eval_batch_size": 64, "steps": 4},
    "cuda": {
        "settings": ["fp32", "bf16", "bf16+channels_last"],
        "batch_size": 128,
        "eval_batch_size": 1024,
        "steps": 20,
    },
}


def resolve_auto(cfg: DictConfig, device: torch.device) -> DictConfig:
    """``cfg`` with its ``auto`` values replaced by the device's ``DEFAULTS``."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    defaults = DEFAULTS["cuda" if device.type == "cuda" else "cpu"]
    return OmegaConf.create({k: defaults[k] if v == "auto" and k in defaults else v for k, v in resolved.items()})


def _reset_peak(device: torch.device) -> None:
    """Start a new peak-memory count (elsewhere than Linux, the CPU peak stays the process's so far)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    with contextlib.suppress(OSError):  # Linux: writing 5 resets the peak resident set (VmHWM) of the process
        Path("/proc/self/clear_refs").write_text("5")


def _peak_mib(device: torch.device) -> float:
    """Peak memory since ``_reset_peak``: CUDA tensors allocated, else the process's resident set."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        status = Path("/proc/self/status").read_text()
        return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))) / 1024
    except (OSError, StopIteration):
        return peak_memory(device)[0]


def parse_setting(setting: str) -> dict[str, Any]:
    """``bf16+channels_last+compile`` -> the ``trainer`` keys it stands for."""
    precision, *options = str(setting).split("+")
    if precision not in PRECISIONS:
        raise unknown_choice("settings: precision", precision, PRECISIONS)
    keys: dict[str, Any] = {"precision": precision, "channels_last": False}
    for option in options:
        if option not in OPTIONS:
            raise unknown_choice(f"settings: option of '{setting}'", option, list(OPTIONS))
        keys |= OPTIONS[option]
    return keys


def matmul_tflops(device: torch.device, repeats: int = 5) -> tuple[float, str]:
    """The device's measured dense matrix-multiply rate: bf16 8192^3 on CUDA, fp32 2048^3 on CPU."""
    n, dtype = (8192, torch.bfloat16) if device.type == "cuda" else (2048, torch.float32)
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    times = []
    for index in range(repeats + 1):
        synchronize(device)
        start = time.perf_counter()
        a @ b
        synchronize(device)
        if index:  # the first product warms up
            times.append(time.perf_counter() - start)
    label = f"{str(dtype).removeprefix('torch.')} {n}x{n}x{n}"
    return 2 * n**3 / statistics.median(times) / 1e12, label


def measure(name: str, size: int, setting: str, cfg: DictConfig, device: torch.device, peak: float) -> dict[str, Any]:
    """One row of the table: ``name`` at ``size`` with ``setting`` on ``device``."""
    dims, task = cfg.spatial_dims, cfg.task
    info = DataInfo(task, dims, cfg.in_channels, 3, 2, ("a", "b", "c"), image_size=(size,) * dims)
    seed_everything(0)
    model_cfg = OmegaConf.to_container(OmegaConf.load(MODEL_CONF / f"{name}.yaml"))
    model_cfg |= OmegaConf.to_container(cfg.model_args).get(name, {})
    model = create_model(name, **model_args(model_cfg, info)).to(device)
    speed = Speed.from_config(parse_setting(setting), device, model, dims)
    runner = speed.prepare(model)
    samples = max(cfg.batch_size * cfg.steps, 2 * cfg.eval_batch_size)  # inference times two full batches
    data = {
        "image": torch.randn(samples, cfg.in_channels, *info.image_size),
        "label": torch.randint(0, 3, (samples,)),
        "mask": torch.randint(0, 2, (samples, 1, *info.image_size), dtype=torch.uint8),
    }
    loss_fn, none = TaskLoss(info), build_augment({"name": "none"}, info)
    optimizer, scaler = torch.optim.Adam(model.parameters(), lr=1e-3), speed.scaler()
    train = TensorBatches({k: v[: cfg.batch_size * cfg.steps] for k, v in data.items()}, cfg.batch_size, device)
    _reset_peak(device)
    rates = [train_epoch(runner, train, 0, loss_fn, optimizer, none, speed, scaler) for _ in range(cfg.repeats + 1)]
    train_rate = statistics.median(r["train_images_per_second"] for r in rates[1:])
    memory = _peak_mib(device)
    infer = TensorBatches({k: v[: cfg.eval_batch_size * 2] for k, v in data.items()}, cfg.eval_batch_size, device)
    single = TensorBatches({k: v[: cfg.steps] for k, v in data.items()}, 1, device)
    per_image = _median_eval(runner, infer, loss_fn, speed, cfg.repeats)
    latency = _median_eval(runner, single, loss_fn, speed, cfg.repeats)
    flops = forward_flops(model, cfg.in_channels, info.image_size, device)
    achieved = 3 * flops * train_rate / 1e12
    return {
        "model": name,
        "image_size": size,
        "setting": setting,
        "train_images_per_second": train_rate,
        "inference_images_per_second": 1 / per_image,
        "latency_ms": 1000 * latency,
        "seconds_per_image": per_image,
        "peak_memory_mib": memory,
        "parameters": sum(p.numel() for p in model.parameters()),
        "gflops_per_image": flops / 1e9,
        "train_tflops": achieved,
        "fraction_of_matmul_peak": achieved / peak,
    }


def _median_eval(model: Any, batches: TensorBatches, loss_fn: TaskLoss, speed: Speed, repeats: int) -> float:
    """Median seconds per image of ``repeats`` evaluation passes after a warm-up pass."""
    times = [evaluate(model, batches, loss_fn, speed)["seconds_per_image"] for _ in range(repeats + 1)]
    return statistics.median(times[1:])


def speed(cfg: DictConfig, out: Path) -> list[dict[str, Any]]:
    """Measure every model x size x setting of ``cfg`` (the ``speed`` config); write and print the table."""
    if cfg.task not in SUPERVISED:
        raise unknown_choice("task", cfg.task, SUPERVISED)
    device = resolve_device(cfg.device)
    cfg = resolve_auto(cfg, device)
    for key in ("batch_size", "eval_batch_size", "steps", "repeats"):
        if not isinstance(cfg[key], int) or cfg[key] < 1:
            raise ConfigError(f"{key}={cfg[key]!r} must be a whole number >= 1")
    unknown = [m for m in cfg.models if m not in model_names()]
    if unknown:
        raise unknown_choice("models", unknown[0], model_names())
    for setting in cfg.settings:
        parse_setting(setting)  # every mistake before the first measurement
    configure_backends(device, deterministic=False, cudnn_benchmark="auto")
    peak, peak_label = matmul_tflops(device)
    log.info("%s: matrix multiply %s at %.3g TFLOP/s", device_name(device), peak_label, peak)
    cells = [(name, size, setting) for name in cfg.models for size in cfg.image_sizes for setting in cfg.settings]
    rows, start = [], time.perf_counter()
    for index, (name, size, setting) in enumerate(cells, start=1):
        rows.append(measure(name, size, setting, cfg, device, peak))
        left = (time.perf_counter() - start) / index * (len(cells) - index)
        log.info(
            "%d/%d %s %s %s: %.0f training images/s; about %.0f s left",
            index, len(cells), name, size, setting, rows[-1]["train_images_per_second"], left,
        )  # fmt: skip
    headers, body = _cells(rows)
    title = f"Speed on {device_name(device)}"
    caption = (
        f"{cfg.spatial_dims}D, {cfg.in_channels} channel(s), task {cfg.task}; training batch {cfg.batch_size} x "
        f"{cfg.steps} steps, inference batch {cfg.eval_batch_size}, latency at batch 1; median of {cfg.repeats} "
        f"passes after a warm-up. Matrix multiply ({peak_label}): {peak:.3g} TFLOP/s. "
        f"Peak memory: {'CUDA tensors allocated' if device.type == 'cuda' else 'process resident set'}. Versions: "
        + ", ".join(f"{k} {v}" for k, v in versions().items())
    )
    make_console().print(grid_rich(headers, body, title, caption))
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "speed.md", grid_markdown(headers, body, title, caption))
    write_atomic(out / "speed.csv", csv_text(COLUMNS, ([row[c] for c in COLUMNS] for row in rows)))
    return rows


def _cells(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    headers = [
        "model", "size", "setting", "train img/s", "infer img/s", "latency ms", "s/img", "peak MiB",
        "params", "GFLOPs/img", "train TFLOP/s", "of matmul peak",
    ]  # fmt: skip
    body = [
        [
            r["model"],
            str(r["image_size"]),
            r["setting"],
            f"{r['train_images_per_second']:,.0f}",
            f"{r['inference_images_per_second']:,.0f}",
            f"{r['latency_ms']:.2f}",
            f"{r['seconds_per_image']:.2e}",
            "" if r["peak_memory_mib"] is None else f"{r['peak_memory_mib']:,.0f}",
            f"{r['parameters']:,}",
            f"{r['gflops_per_image']:.3f}",
            f"{r['train_tflops']:.3g}",
            f"{100 * r['fraction_of_matmul_peak']:.1f}%",
        ]
        for r in rows
    ]
    return headers, body
