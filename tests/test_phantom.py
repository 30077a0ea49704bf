"""The embedded phantom: deterministic, well-formed, and not trivially separable."""

from __future__ import annotations

import numpy as np
import pytest

from medimg_cli.data import build_data
from medimg_cli.data.phantom import generate_phantom
from medimg_cli.data.splits import split_indices
from medimg_cli.errors import ConfigError


def test_same_seed_same_arrays_other_seed_other_arrays():
    a, b = generate_phantom(20, 32, seed=3), generate_phantom(20, 32, seed=3)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a["image"], generate_phantom(20, 32, seed=4)["image"])


@pytest.mark.parametrize("dims", [2, 3])
def test_shapes_ranges_and_masks(dims):
    arrays = generate_phantom(60, 16, spatial_dims=dims, seed=0, mask_classes=3)
    assert arrays["image"].shape == (60, 1) + (16,) * dims and arrays["image"].dtype == np.float32
    assert arrays["image"].min() == 0.0 and arrays["image"].max() == 1.0  # min-max per image
    per_image = arrays["image"].reshape(60, -1)
    np.testing.assert_allclose(per_image.min(1), 0.0)
    np.testing.assert_allclose(per_image.max(1), 1.0)
    labels, masks = arrays["label"], arrays["mask"].reshape(60, -1)
    assert set(np.unique(labels)) == {0, 1, 2}
    assert not masks[labels == 0].any()  # healthy images have no lesion
    assert (masks[labels == 1] != 2).all()  # benign images have no malignant voxel
    assert (masks[labels == 2] == 2).any(axis=1).mean() > 0.9  # malignant lesions are (nearly always) visible


def test_split_is_a_partition_fixed_by_seed():
    parts = split_indices(100, (0.7, 0.15, 0.15), seed=1)
    assert [len(parts[k]) for k in ("train", "val", "test")] == [70, 15, 15]
    assert sorted(np.concatenate(list(parts.values()))) == list(range(100))
    np.testing.assert_array_equal(parts["test"], split_indices(100, (0.7, 0.15, 0.15), seed=1)["test"])
    with pytest.raises(ConfigError, match="data.split"):
        split_indices(100, (0.5, 0.2, 0.2), seed=1)


def test_build_data_keeps_only_the_task_keys(tiny_cfg):
    cfg = tiny_cfg("data.task=classification").data
    splits = build_data(dict(cfg))
    assert set(splits.train) == {"image", "label"}
    assert sum(len(splits.split(s)["image"]) for s in ("train", "val", "test")) == 64
    assert splits.info.num_classes == 3 and splits.info.in_channels == 1


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_not_separable_by_a_linear_model_on_pixels():
    """A logistic regression on raw pixels stays far from what the CNN reaches (README)."""
    from sklearn.linear_model import LogisticRegression

    arrays = generate_phantom(900, 32, seed=0)
    x, y = arrays["image"].reshape(900, -1), arrays["label"]
    clf = LogisticRegression(max_iter=200, C=0.1).fit(x[:700], y[:700])
    assert clf.score(x[700:], y[700:]) < 0.7


def test_minmax_normalisation_leaks_the_label_and_none_does_not():
    """A bright lesion raises the image maximum, so min-max darkens the rest of lesion images."""
    for normalize, leaks in (("minmax", True), ("none", False)):
        arrays = generate_phantom(900, size=32, spatial_dims=2, seed=0, normalize=normalize)
        outside = arrays["mask"][:, 0] == 0
        means = [arrays["image"][:, 0][(arrays["label"] == k)[:, None, None] & outside].mean() for k in range(3)]
        gap = means[0] - min(means[1:])  # lesion-free minus lesion images, pixels outside lesions
        assert (gap > 0.03) == leaks, (normalize, means)
    with pytest.raises(ValueError, match="normalize must be one of minmax, none"):
        generate_phantom(2, normalize="zscore")
