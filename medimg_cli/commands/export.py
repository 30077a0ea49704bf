"""``medimg export``: a checkpoint as an ONNX or TorchScript file whose outputs match PyTorch's.

    medimg export checkpoint=runs/.../checkpoints/best.pt format=onnx

The model is rebuilt from the checkpoint (as ``medimg eval`` does) and wrapped so that it
returns a tuple of its outputs in a fixed order (``class_logits``, ``seg_logits``; an anomaly
detector's ``anomaly_map``, ``anomaly_score``) instead of a
dict. ONNX goes through ``torch.onnx.export``'s dynamo exporter with a dynamic batch dimension;
TorchScript through ``torch.jit.trace``. The exported file is then loaded back (onnxruntime for
ONNX) and run on a batch of test images of another size than the traced one; every output must
match PyTorch's within ``tolerance``, else the command fails and removes nothing but says so.
"""

from __future__ import annotations

import importlib.util
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn

from medimg_cli.data.patches import pad_for_patches, patch_size
from medimg_cli.errors import ConfigError, unknown_choice
from medimg_cli.fileio import atomic_file, write_json
from medimg_cli.hydra_app import run_hydra
from medimg_cli.tables import make_console
from medimg_cli.trained import load_trained

HELP = "export a checkpoint as ONNX or TorchScript and check its outputs against PyTorch"
FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}
OUTPUTS = ("class_logits", "seg_logits", "anomaly_map", "anomaly_score")
log = logging.getLogger(__name__)


class TupleOutputs(nn.Module):
    """A medimg model returning ``tuple(outputs[name] for name in names)``: exporters need tensors."""

    def __init__(self, model: nn.Module, names: tuple[str, ...]) -> None:
        super().__init__()
        self.model = model
        self.names = names

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs = self.model(image)
        return tuple(outputs[name] for name in self.names)


def main(argv: list[str]) -> int:
    return run_hydra("export", export_cfg, argv)


def export_onnx(model: TupleOutputs, example: torch.Tensor, path: Path) -> None:
    """Write ``model`` traced on ``example`` ``(B, C, *spatial)`` as ONNX with a dynamic batch."""
    batch = torch.export.Dim("batch", min=1, max=65536)
    with warnings.catch_warnings(), atomic_file(path) as file:
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracer notes
        program = torch.onnx.export(
            model,
            (example,),
            input_names=["image"],
            output_names=list(model.names),
            dynamic_shapes={"image": {0: batch}},
            dynamo=True,
            verbose=False,
        )
        file.write(program.model_proto.SerializeToString())


def export_torchscript(model: TupleOutputs, example: torch.Tensor, path: Path) -> None:
    """Write ``model`` traced on ``example`` as a TorchScript archive."""
    with warnings.catch_warnings(), atomic_file(path) as file:
        warnings.simplefilter("ignore")  # TracerWarnings about Python values in MONAI's blocks
        traced = torch.jit.trace(model, example, check_trace=False)
        torch.jit.save(traced, file)


def run_exported(path: Path, fmt: str, images: torch.Tensor) -> list[np.ndarray]:
    """The outputs of the exported file at ``path`` on ``images``, as NumPy arrays."""
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, {"image": images.cpu().numpy()})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # PyTorch deprecates TorchScript in favour of torch.export
        module = torch.jit.load(str(path), map_location=images.device)
    with torch.no_grad():
        return [t.cpu().numpy() for t in module(images)]


def export_checkpoint(
    checkpoint: Path, fmt: str, out: Path | None = None, device: str = "cpu", batch_size: int = 4
) -> dict[str, Any]:
    """Export ``checkpoint`` as ``fmt`` and run the exported file against PyTorch.

    Returns:
        the description written beside the file: path, format, input shape, outputs, and the
        largest absolute difference per output on a check batch of ``batch_size + 1`` images.
    """
    if fmt not in FORMATS:
        raise unknown_choice("format", fmt, FORMATS)
    if fmt == "onnx":
        missing = [m for m in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(m) is None]
        if missing:
            raise ConfigError(f"format=onnx needs {', '.join(missing)}: pip install 'medimg[export]'")
    # a run trained on patches exports its network for patches: the sliding windows stay in the caller
    payload, model, data, speed = load_trained(checkpoint, device, windows=False)
    if data.info.registers:  # tracing bakes the batch size into MONAI's warp grid; the check batch then fails
        raise ConfigError(f"{checkpoint}: export of registration models is not supported yet; use medimg eval")
    model = model.float().eval()
    wanted = {"class_logits": data.info.classifies, "seg_logits": data.info.segments}
    wanted |= {"anomaly_map": data.info.detects, "anomaly_score": data.info.detects}
    names = tuple(name for name in OUTPUTS if wanted[name])
    wrapped = TupleOutputs(model, names).eval()
    images = data.split("test")["image"]
    patch = patch_size(payload["config"]["data"], data.info)
    if patch is not None:  # the first patch of each test image
        images = pad_for_patches({"image": images}, patch)["image"][(..., *(slice(0, n) for n in patch))]
    if len(images) < 2:
        raise ConfigError(
            f"{checkpoint}: the test split has {len(images)} image; export needs 2 to check a new batch size"
        )
    traced_on = images[: max(1, min(batch_size, len(images) - 1))].to(speed.device)
    check = images[: min(batch_size + 1, len(images))].to(speed.device)
    path = out or checkpoint.parent.parent / "export" / f"model{FORMATS[fmt]}"
    path.parent.mkdir(parents=True, exist_ok=True)
    (export_onnx if fmt == "onnx" else export_torchscript)(wrapped, traced_on, path)
    wrapped.eval()  # exporters may switch the mode while tracing
    with torch.no_grad():
        expected = [t.cpu().numpy() for t in wrapped(check)]
    found = run_exported(path, fmt, check)
    differences = {n: float(np.abs(f - e).max()) for n, f, e in zip(names, found, expected, strict=True)}
    return {
        "file": str(path),
        "format": fmt,
        "checkpoint": str(checkpoint),
        "model": payload["model"]["name"],
        "input": {"name": "image", "shape": ["batch", *images.shape[1:]], "dtype": "float32"},
        "outputs": {n: ["batch", *e.shape[1:]] for n, e in zip(names, expected, strict=True)},
        "class_names": list(data.info.class_names) if data.info.classifies else None,
        "check": {"images": len(check), "traced_on": len(traced_on), "max_abs_difference": differences},
    }


def export_cfg(cfg: DictConfig) -> dict[str, Any]:
    """Export as the config says, fail when the exported outputs differ, write ``<file>.json``."""
    checkpoint = Path(cfg.checkpoint)
    description = export_checkpoint(
        checkpoint, cfg.format, Path(cfg.out) if cfg.out else None, cfg.device, cfg.batch_size
    )
    path = Path(description["file"])
    write_json(path.with_name(path.name + ".json"), description)
    worst = max(description["check"]["max_abs_difference"].values())
    console = make_console()
    for name, value in description["check"]["max_abs_difference"].items():
        console.print(
            f"{name}: largest |{cfg.format} - PyTorch| = {value:.2e} on {description['check']['images']} test images"
        )
    if worst > cfg.tolerance:
        raise ConfigError(
            f"{path}: the exported outputs differ from PyTorch's by up to {worst:.2e} (> tolerance={cfg.tolerance}); "
            "the file is kept for inspection"
        )
    console.print(f"wrote {path} ({cfg.format}); it matches PyTorch within {cfg.tolerance}")
    return description
