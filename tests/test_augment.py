"""Augmentation: geometry keeps masks aligned and exact, draws are per sample and seeded,
intensity, k-space and Radon corruptions match numpy / scikit-image / scipy references."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import compose_config
from omegaconf import OmegaConf
from scipy.ndimage import gaussian_filter
from skimage.data import shepp_logan_phantom
from skimage.transform import iradon, resize
from skimage.transform import radon as sk_radon
from skimage.transform import rotate as sk_rotate

import medimg_cli
from medimg_cli.augment import build_augment, describe
from medimg_cli.augment.fourier import gibbs_kspace, spike_kspace, undersample_kspace
from medimg_cli.augment.radon import fbp, radon, sparse_angles
from medimg_cli.data import DataInfo
from medimg_cli.errors import ConfigError

CONF = Path(medimg_cli.__file__).parent / "conf" / "augment"
GEOMETRIC = {
    "flip": {"axes": [0, 1]},
    "rotate": {"degrees": 40},
    "zoom": {"scale": [0.7, 1.3]},
    "translate": {"fraction": 0.15},
    "crop": {"size": [0.6, 0.9]},
    "elastic": {"magnitude": 0.03},
}


def info(dims: int = 2, task: str = "multitask", classes: int = 3) -> DataInfo:
    shape = (32,) * dims
    return DataInfo(task, dims, 1, classes, 2, tuple(map(str, range(classes))), image_size=shape)


def blobs(batch: int, dims: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Smooth bright Gaussian blobs on a dark background, ``(B, 1, *[size] * dims)``."""
    generator = torch.Generator().manual_seed(seed)
    axes = torch.meshgrid(*[torch.arange(size, dtype=torch.float32)] * dims, indexing="ij")
    image = torch.zeros(batch, 1, *[size] * dims)
    for b in range(batch):
        for _ in range(3):
            centre = 8 + torch.rand(dims, generator=generator) * (size - 16)
            distance = sum((axis - c) ** 2 for axis, c in zip(axes, centre, strict=True))
            image[b, 0] += torch.exp(-distance / (2 * 3.0**2))
    return image.clamp(max=1)


def recipe(transforms: dict, dims: int = 2, task: str = "multitask", **settings):
    cfg = {"name": "test", **settings, **{name: {"prob": 1.0, **args} for name, args in transforms.items()}}
    return build_augment(cfg, info(dims, task))


def test_none_is_the_identity():
    batch = {"image": torch.rand(4, 1, 8, 8), "mask": torch.randint(0, 2, (4, 1, 8, 8), dtype=torch.uint8)}
    aug = build_augment(OmegaConf.to_container(compose_config(["augment=none"]).augment), info())
    out = aug(batch)
    assert torch.equal(out["image"], batch["image"]) and torch.equal(out["mask"], batch["mask"])


def within_one_voxel(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Every voxel of each boolean mask ``(B, 1, *spatial)`` is at most one voxel from the other."""
    pool = (None, None, torch.nn.functional.max_pool2d, torch.nn.functional.max_pool3d)[a.dim() - 2]

    def grow(x: torch.Tensor) -> torch.Tensor:
        return pool(x.float(), 3, stride=1, padding=1).bool()

    return bool((a <= grow(b)).all() and (b <= grow(a)).all())


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("name", sorted(GEOMETRIC))
def test_geometry_keeps_a_mask_of_bright_pixels_on_them(name, dims):
    image = blobs(6, dims)
    mask = (image > 0.5).to(torch.uint8)
    torch.manual_seed(0)
    out = recipe({name: GEOMETRIC[name]}, dims)({"image": image, "mask": mask})
    bright = out["image"] > 0.5
    # bilinear images and nearest-neighbour masks may disagree only on the contour, by under a voxel
    assert within_one_voxel(bright, out["mask"].bool()), name
    assert not within_one_voxel(bright, mask.bool())  # the check fails for a mask left where it was


@pytest.mark.parametrize("dims", [2, 3])
def test_masks_keep_exactly_their_label_values(dims):
    image = blobs(4, dims)
    mask = torch.zeros_like(image, dtype=torch.uint8)
    mask[image > 0.3], mask[image > 0.6] = 2, 5
    torch.manual_seed(1)
    out = recipe(GEOMETRIC, dims)({"image": image, "mask": mask})
    assert out["mask"].dtype == torch.uint8
    assert set(out["mask"].unique().tolist()) <= {0, 2, 5}
    assert set(out["mask"].unique().tolist()) >= {2, 5}


def test_rotation_matches_scikit_image_for_the_drawn_angle():
    image = np.zeros((33, 41), np.float32)
    image[10:14, 25:30], image[5:25, 8:11] = 1.0, 0.5  # non-square, asymmetric
    record = {}
    torch.manual_seed(0)
    out = recipe({"rotate": {"degrees": 40}})({"image": torch.tensor(image)[None, None]}, record)["image"]
    angle = float(record["rotate"]["degrees"][0, 0])
    expected = sk_rotate(image, angle, order=1, mode="constant", cval=0, center=(20, 16))
    np.testing.assert_allclose(out[0, 0].numpy(), expected, atol=1e-5)


def test_zoom_moves_a_point_away_from_the_centre_by_the_factor():
    image = torch.zeros(1, 1, 33, 33)
    image[0, 0, 16, 16 + 8] = 1.0  # 8 pixels right of the centre
    record = {}
    torch.manual_seed(0)
    out = recipe({"zoom": {"scale": [1.5, 1.5]}})({"image": image}, record)["image"][0, 0]
    column = (out.sum(0) * torch.arange(33)).sum() / out.sum()  # intensity-weighted column
    assert float(column) == pytest.approx(16 + 8 * 1.5, abs=0.05)


def test_the_affine_path_flips_exactly_like_indexing():
    image = torch.rand(16, 1, 12, 10)
    torch.manual_seed(0)
    record = {}
    # an identity zoom forces the resampling path; flips must still be exact mirror images
    out = recipe({"flip": {"axes": [0, 1]}, "zoom": {"scale": [1, 1]}})({"image": image}, record)["image"]
    for b in range(16):
        axes = [2 + a for a in (0, 1) if bool(record["flip"][f"axis{a}"][b])]
        np.testing.assert_allclose(out[b : b + 1], image[b : b + 1].flip(axes) if axes else image[b : b + 1], atol=1e-5)


def test_parameters_are_drawn_per_sample_and_reproduced_by_the_seed():
    aug = build_augment(OmegaConf.to_container(compose_config(["augment=strong"]).augment), info())
    image, mask = blobs(8, 2), (blobs(8, 2) > 0.5).to(torch.uint8)
    runs = []
    for _ in range(2):
        torch.manual_seed(7)
        record = {}
        runs.append((aug({"image": image, "mask": mask}, record), record))
    (first, record), (second, _) = runs
    assert torch.equal(first["image"], second["image"]) and torch.equal(first["mask"], second["mask"])
    angles = record["rotate"]["degrees"][record["rotate"]["applied"]]
    assert len(angles) >= 2 and len(angles.unique()) == len(angles)  # one draw per sample
    assert 0 < int(record["rotate"]["applied"].sum()) < 8  # prob 0.5: some rotated, some not


def test_describe_lists_what_each_sample_got():
    torch.manual_seed(0)
    aug = recipe({"rotate": {"degrees": 30}, "flip": {"axes": [1]}})
    record = {}
    aug({"image": torch.rand(2, 1, 8, 8)}, record)
    lines = describe(record, aug.order(), 2)
    angle = float(record["rotate"]["degrees"][0, 0])
    assert lines[0].startswith("flip(axis1); rotate(degrees=[") and f"{angle:.4g}" in lines[0]


def test_intensity_transforms_follow_their_formulas():
    image = blobs(6, 2) * 0.8 + 0.1
    record = {}
    torch.manual_seed(0)
    aug = recipe({"brightness": {}, "contrast": {}, "gamma": {}})
    out = aug({"image": image}, record)["image"]
    shift = record["brightness"]["shift"].view(-1, 1, 1, 1)
    factor = record["contrast"]["factor"].view(-1, 1, 1, 1)
    gamma = record["gamma"]["gamma"].view(-1, 1, 1, 1)
    x = image + shift
    mean = x.mean((2, 3), keepdim=True)
    x = (x - mean) * factor + mean
    low, high = x.amin((2, 3), keepdim=True), x.amax((2, 3), keepdim=True)
    expected = ((x - low) / (high - low)) ** gamma * (high - low) + low
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_blur_uses_each_samples_own_sigma_like_scipy():
    image = torch.rand(4, 2, 24, 20)
    record = {}
    torch.manual_seed(0)
    out = recipe({"blur": {"sigma": [0.5, 2.0]}})({"image": image}, record)["image"]
    sigmas = record["blur"]["sigma"]
    radius = int(np.ceil(3 * float(sigmas.max())))
    assert len(sigmas.unique()) == 4
    for b, sigma in enumerate(sigmas.tolist()):
        for c in range(2):
            expected = gaussian_filter(image[b, c].double().numpy(), sigma, mode="nearest", truncate=radius / sigma)
            np.testing.assert_allclose(out[b, c].numpy(), expected, atol=1e-5)


def test_noise_has_the_drawn_standard_deviation():
    image = torch.zeros(4, 1, 64, 64)
    record = {}
    torch.manual_seed(0)
    out = recipe({"noise": {"std": [0.05, 0.2]}})({"image": image}, record)["image"]
    torch.testing.assert_close(out.std((1, 2, 3)), record["noise"]["std"], rtol=0.05, atol=0)


def shepp_logan(size: int = 64) -> np.ndarray:
    return resize(shepp_logan_phantom(), (size, size), anti_aliasing=True).astype(np.float64)


def numpy_kspace(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The reference: |IFFT2(mask * FFT2(image - min))| + min with numpy."""
    low = image.min()
    return np.abs(np.fft.ifft2(np.fft.fft2(image - low, norm="ortho") * mask, norm="ortho")) + low


def test_gibbs_truncation_matches_numpy_and_rings():
    image = shepp_logan()
    frequency = np.abs(np.fft.fftfreq(64)) * 2
    for keep in (1.0, 0.5, 0.25):
        mask = (frequency[:, None] <= keep) & (frequency[None, :] <= keep)
        out = gibbs_kspace(torch.tensor(image)[None, None], torch.tensor([keep]))[0, 0].numpy()
        np.testing.assert_allclose(out, numpy_kspace(image, mask), atol=1e-10)
    unchanged = gibbs_kspace(torch.tensor(image)[None, None], torch.tensor([1.0]))[0, 0]
    np.testing.assert_allclose(unchanged, image, atol=1e-10)
    box = torch.zeros(1, 1, 64, 64, dtype=torch.float64)
    box[..., 16:48, 16:48] = 1
    ringing = gibbs_kspace(box, torch.tensor([0.5]))
    assert 1.05 < float(ringing.max()) < 1.15  # the Gibbs phenomenon: about 9% overshoot at the edges


def test_undersampling_and_spikes_match_numpy():
    image = shepp_logan()
    lines = torch.rand(1, 64, generator=torch.Generator().manual_seed(0)) < 0.4
    out = undersample_kspace(torch.tensor(image)[None, None], lines, axis=0)[0, 0].numpy()
    np.testing.assert_allclose(out, numpy_kspace(image, lines[0].numpy()[:, None]), atol=1e-10)

    positions, heights = torch.tensor([[5, 700]]), torch.tensor([[0.1, 0.3]], dtype=torch.float64)
    out = spike_kspace(torch.tensor(image)[None, None], positions, heights)[0, 0].numpy()
    low = image.min()
    spectrum = np.fft.fft2(image - low, norm="ortho").ravel()
    spectrum[[5, 700]] += np.array([0.1, 0.3]) * np.abs(spectrum).max()
    expected = np.abs(np.fft.ifft2(spectrum.reshape(64, 64), norm="ortho")) + low
    np.testing.assert_allclose(out, expected, atol=1e-10)


def test_radon_and_fbp_match_scikit_image_on_shepp_logan():
    for size in (63, 64):
        image = shepp_logan(size)
        rows, columns = np.mgrid[:size, :size] - size // 2
        image[rows**2 + columns**2 > (size // 2) ** 2] = 0
        theta = np.arange(180.0)
        expected = sk_radon(image, theta, circle=True)  # (detector, angle)
        sinogram = radon(torch.tensor(image, dtype=torch.float32)[None], torch.tensor(theta))[0]
        np.testing.assert_allclose(sinogram.T.numpy(), expected, atol=1e-5 * expected.max())
        inside = rows**2 + columns**2 <= (size // 2 - 1) ** 2
        recon = fbp(torch.tensor(expected.T, dtype=torch.float32)[None], torch.tensor(theta))[0].numpy()
        np.testing.assert_allclose(recon[inside], iradon(expected, theta, circle=True)[inside], atol=1e-5)


def test_sparse_views_keep_evenly_spaced_angles_and_streak():
    weights = sparse_angles(torch.tensor([3, 180, 45]), 180)
    assert weights.sum(1).tolist() == [3, 180, 45]
    assert torch.nonzero(weights[2])[:, 0].diff().unique().tolist() == [4]
    image = torch.tensor(shepp_logan(48), dtype=torch.float32)[None, None]
    errors = []
    for views in (180, 20):
        aug = recipe({"sinogram": {"views": [views, views], "noise": [0, 0]}})
        errors.append(float((aug({"image": image})["image"] - image).square().mean().sqrt()))
    # the full scan reconstructs (error from the filter's resolution only); 20 views add streaks
    assert errors[0] < 0.05 and errors[1] > 1.25 * errors[0]


def test_mixup_and_cutmix_make_soft_labels_and_cutmix_moves_masks():
    image, mask = blobs(8, 2), (blobs(8, 2) > 0.5).to(torch.uint8)
    label = torch.arange(8) % 3
    torch.manual_seed(0)
    record = {}
    out = recipe({"cutmix": {}}, task="multitask")({"image": image, "mask": mask, "label": label}, record)
    partner = record["cutmix"]["partner"].long()
    from_partner = out["image"] != image
    assert torch.equal(out["mask"][from_partner], mask[partner][from_partner])
    torch.testing.assert_close(out["label"].sum(1), torch.ones(8))
    kept = record["cutmix"]["kept"]
    assert torch.allclose(out["label"][torch.arange(8), label], kept + (1 - kept) * (label[partner] == label))

    record = {}
    out = recipe({"mixup": {}}, task="classification")({"image": image, "label": label}, record)
    weight, partner = record["mixup"]["weight"], record["mixup"]["partner"].long()
    weight = weight.view(-1, 1, 1, 1)
    torch.testing.assert_close(out["image"], weight * image + (1 - weight) * image[partner])
    with pytest.raises(ConfigError, match="mixup blends images"):
        recipe({"mixup": {}}, task="multitask")


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("name", sorted(p.stem for p in CONF.glob("*.yaml")))
def test_every_recipe_builds_and_keeps_shapes(name, dims):
    task = "classification" if name == "mix" else "multitask"  # mixup refuses masks
    aug = build_augment(OmegaConf.to_container(compose_config([f"augment={name}"]).augment), info(dims, task))
    image = blobs(4, dims, size=16)
    batch = {"image": image, "label": torch.tensor([0, 1, 2, 0])}
    if task == "multitask":
        batch["mask"] = (image > 0.5).to(torch.uint8)
    torch.manual_seed(0)
    out = aug(batch)
    assert out["image"].shape == image.shape and out["image"].dtype == image.dtype
    assert torch.isfinite(out["image"]).all()
    if "mask" in batch:
        assert out["mask"].shape == batch["mask"].shape and out["mask"].dtype == torch.uint8


def test_recipe_mistakes_are_one_clear_error():
    with pytest.raises(ConfigError, match="unknown augment transform 'rotat'.*Did you mean 'rotate'"):
        build_augment({"name": "x", "rotat": {"prob": 0.5}}, info())
    with pytest.raises(ConfigError, match="augment.rotate.degree is not an argument.*Did you mean 'degrees'"):
        build_augment({"name": "x", "rotate": {"degree": 5}}, info())
    with pytest.raises(ConfigError, match=r"augment.zoom: scale=\[1.2, 0.8\] must be"):
        build_augment({"name": "x", "zoom": {"scale": [1.2, 0.8]}}, info())
    with pytest.raises(ConfigError, match="augment.flip: axes=\\[2\\] must be spatial axes in 0..1"):
        build_augment({"name": "x", "flip": {"axes": [2]}}, info())


def test_modality_picks_the_physics_corruptions():
    cfg = OmegaConf.to_container(compose_config(["augment=physics"]).augment)
    assert set(build_augment(cfg, info()).transforms) == {"gibbs", "undersample", "spike"}
    assert set(build_augment({**cfg, "modality": "ct"}, info()).transforms) == {"sinogram"}
