"""How a run uses its device: precision, memory layout, compilation and cuDNN autotuning.

The ``trainer`` keys ``precision``, ``channels_last``, ``compile`` and ``cudnn_benchmark``
become one ``Speed`` object that the training and evaluation steps ask for an autocast
context, a gradient scaler and the model and images in the right layout. Training steps use
the precision; validation, test and ``medimg eval`` run in fp32 with the same layout, so the
reported metrics do not depend on it. None of them changes
what is computed beyond float rounding; ``tests/test_speed.py`` checks each against the plain
fp32 path, and ``medimg benchmark speed`` measures what each buys.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from medimg_cli.errors import ConfigError, unknown_choice

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")  # reduce-overhead replays CUDA graphs
_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


# Measured on an H100 (benchmarks/results/speed_cuda_*.md): bf16 autocast trains ResNet-18 18% faster
# than fp32 and the Transformer 3-12%, but the 74 k-parameter CNN and the 190 k hybrid 7-30% slower
# (their steps are bound by kernel launches, and autocast adds casts); below this size auto keeps fp32.
BF16_MIN_PARAMETERS = 1_000_000


def resolve_precision(precision: str, device: torch.device, parameters: int) -> str:
    """``auto`` is bf16 on CUDA GPUs that support it for models of 1 M parameters or more, else fp32.

    On CPUs without bf16 matrix units bf16 is several times slower than fp32, so auto never picks it.
    """
    if precision not in PRECISIONS:
        raise unknown_choice("trainer.precision", precision, PRECISIONS)
    if precision == "auto":
        big = parameters >= BF16_MIN_PARAMETERS
        return "bf16" if big and device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if precision == "fp16" and device.type == "cpu":
        raise ConfigError("trainer.precision=fp16 needs a GPU; on CPU use trainer.precision=bf16 or fp32")
    return precision


@dataclass(frozen=True)
class Speed:
    """The speed settings of a run, resolved for its device.

    Args:
        device: the training device.
        precision: ``fp32``, ``bf16`` or ``fp16`` (autocast; fp16 also scales the loss).
        channels_last: channels-last memory layout for the model and images.
        compile: a ``torch.compile`` mode, or ``None``.
        spatial_dims: 2 or 3 (channels-last is NHWC in 2D, NDHWC in 3D).
    """

    device: torch.device
    precision: str = "fp32"
    channels_last: bool = False
    compile: str | None = None
    spatial_dims: int = 2

    @classmethod
    def from_config(
        cls, trainer: Mapping[str, Any], device: torch.device, model: nn.Module, spatial_dims: int, compile: bool = True
    ) -> Speed:
        """Read the ``trainer`` keys (absent ones take the plain fp32 path, as older checkpoints need).

        Args:
            trainer: the ``trainer`` config group.
            device: the device the model runs on.
            model: the model (its size decides ``precision=auto``).
            spatial_dims: 2 or 3, of the data.
            compile: honour ``trainer.compile`` (``medimg eval`` runs one pass and skips it).
        """
        parameters = sum(p.numel() for p in model.parameters())
        precision = resolve_precision(str(trainer.get("precision", "fp32")), device, parameters)
        mode = trainer.get("compile", False)
        if mode is True:
            mode = "default"
        if mode not in (False, None, *COMPILE_MODES):
            raise unknown_choice("trainer.compile", str(mode), ("false", *COMPILE_MODES))
        channels_last = trainer.get("channels_last", False)
        if channels_last == "auto":
            # measured on a 2-core CPU: +8-19% training and +29-101% inference images/s for the CNN,
            # the hybrid and ResNet-18 in 2D; on the H100 the gain depends on the model
            channels_last = device.type == "cpu" and spatial_dims == 2
        if not isinstance(channels_last, bool):
            raise ConfigError(f"trainer.channels_last={channels_last!r} must be auto, true or false")
        return cls(device, precision, channels_last, (mode or None) if compile else None, spatial_dims)

    def autocast(self) -> contextlib.AbstractContextManager:
        """The mixed-precision context of forward passes (a no-op for fp32)."""
        dtype = _DTYPES[self.precision]
        return torch.autocast(self.device.type, dtype=dtype) if dtype else contextlib.nullcontext()

    def scaler(self) -> torch.amp.GradScaler:
        """Loss scaling, on for fp16 only (bf16 has fp32's range and needs none)."""
        return torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")

    def layout(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``(B, C, *spatial)`` in the run's memory layout (same values, same shape)."""
        if not self.channels_last:
            return images
        fmt = torch.channels_last if images.dim() == 4 else torch.channels_last_3d
        return images.contiguous(memory_format=fmt)

    def prepare(self, model: nn.Module) -> nn.Module:
        """Put ``model`` in the run's layout; returns what to call (compiled, when asked).

        The returned module shares its parameters with ``model``, so checkpoints keep saving
        ``model`` itself and their keys do not change.
        """
        if self.channels_last:
            model.to(memory_format=torch.channels_last if self.spatial_dims == 2 else torch.channels_last_3d)
        if self.compile is None:
            return model
        return torch.compile(model, mode=self.compile)

    def for_evaluation(self) -> Speed:
        """The same layout in fp32: validation and test metrics must not depend on the training precision.

        bf16 logits keep 8 bits of mantissa, so near-equal class scores tie and move the AUC.
        """
        return dataclasses.replace(self, precision="fp32")

    def describe(self) -> str:
        """One line for the log, e.g. ``bf16, channels_last, compile=default``."""
        parts = [self.precision] + (["channels_last"] if self.channels_last else [])
        return ", ".join(parts + ([f"compile={self.compile}"] if self.compile else []))


def configure_backends(device: torch.device, deterministic: bool, cudnn_benchmark: bool | str) -> None:
    """``trainer.deterministic`` and ``trainer.cudnn_benchmark`` (``auto``: on for CUDA).

    Deterministic runs repeat bit for bit on CUDA (CPU runs always do): cuBLAS gets a fixed
    workspace and cuDNN deterministic kernels; an operation with no deterministic kernel
    warns once instead of failing the run. cuDNN autotuning picks the fastest convolution
    kernels for the fixed batch shape; it is off when deterministic.
    """
    if cudnn_benchmark not in (True, False, "auto"):
        raise ConfigError(f"trainer.cudnn_benchmark={cudnn_benchmark!r} must be auto, true or false")
    if deterministic:
        # cuBLAS reads this when it first starts; a run that already used cuBLAS keeps its workspace
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    torch.backends.cudnn.deterministic = deterministic
    autotune = device.type == "cuda" if cudnn_benchmark == "auto" else cudnn_benchmark
    torch.backends.cudnn.benchmark = bool(autotune) and not deterministic
