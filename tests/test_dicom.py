"""DICOM reading against pydicom on shared/data/dicom, and series the tests write."""

from __future__ import annotations

import random
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from conftest import compose_config
from pydicom.pixels import apply_rescale
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from medimg_cli.commands.train import train
from medimg_cli.data import build_data
from medimg_cli.data.dicom import (
    apply_window,
    find_series,
    read_headers,
    read_series,
    series_affine,
    slice_position,
)
from medimg_cli.errors import ConfigError

DICOM = Path(__file__).resolve().parents[2] / "shared" / "data" / "dicom"
needs_shared = pytest.mark.skipif(
    not (DICOM / "CT_small.dcm").is_file(), reason=f"DICOM test files not found in {DICOM}"
)


@needs_shared
def test_ct_small_is_in_hounsfield_units_as_pydicom_rescales_it():
    ds = pydicom.dcmread(DICOM / "CT_small.dcm")
    image, spacing = read_series([DICOM / "CT_small.dcm"])
    np.testing.assert_array_equal(image[0], apply_rescale(ds.pixel_array, ds).astype(np.float32))
    assert image.min() < -800 and spacing == pytest.approx((0.661468, 0.661468))


@needs_shared
def test_dicomdir_series_come_out_in_spatial_order():
    series = find_series(DICOM / "dicomdirtests" / "DICOMDIR")
    assert len(series) > 5
    for header in series:
        positions = [slice_position(pydicom.dcmread(f, stop_before_pixels=True)) for f in header.files]
        if None not in positions:
            assert positions == sorted(positions)


@needs_shared
@pytest.mark.parametrize(
    "compressed", ["MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm"]
)
def test_lossless_compressed_files_decode_like_the_uncompressed_one(compressed):
    reference, _ = read_series([DICOM / "MR_small.dcm"])
    np.testing.assert_array_equal(read_series([DICOM / compressed])[0], reference)


@needs_shared
def test_truncated_file_names_the_file():
    with pytest.raises(ConfigError, match="MR_truncated.dcm: cannot decode the DICOM pixel data"):
        read_series([DICOM / "MR_truncated.dcm"])


def write_series(folder: Path, slices: int, patient: str, value: float = 0.0, step: float = 2.5) -> str:
    """A CT series of ``slices`` 16x16 slices whose pixels hold their slice index (+ value),
    written in shuffled file order with InstanceNumbers reversed. Returns its SeriesInstanceUID."""
    folder.mkdir(parents=True, exist_ok=True)
    series_uid, study_uid, frame_uid = generate_uid(), generate_uid(), generate_uid()
    order = list(range(slices))
    random.Random(patient + str(value)).shuffle(order)
    for k in order:
        ds = pydicom.Dataset()
        ds.file_meta = pydicom.dataset.FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.SOPClassUID, ds.SOPInstanceUID = (
            ds.file_meta.MediaStorageSOPClassUID,
            ds.file_meta.MediaStorageSOPInstanceUID,
        )
        ds.Modality, ds.PatientID, ds.PatientName = "CT", patient, f"Doe^{patient}"
        ds.PatientBirthDate, ds.PatientSex, ds.StudyDate, ds.StudyTime = "19700101", "O", "20260101", "120000"
        ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "1", "", ""
        ds.FrameOfReferenceUID, ds.SliceThickness = frame_uid, step
        ds.SeriesInstanceUID, ds.StudyInstanceUID = series_uid, study_uid
        ds.InstanceNumber = slices - k
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [0.0, 0.0, -50.0 + step * k]
        ds.PixelSpacing = [0.8, 0.8]
        ds.Rows = ds.Columns = 16
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.PixelData = np.full((16, 16), 1024 + k * 10 + value, np.int16).tobytes()
        ds.save_as(folder / f"{random.Random(k).randint(0, 10**6)}_{k}", enforce_file_format=True)
    return series_uid


def test_shuffled_series_loads_in_spatial_order(tmp_path):
    write_series(tmp_path / "s", 6, "P1")
    (header,) = find_series(tmp_path)
    volume, spacing = read_series(header.files)  # RAS+: (x, y, z), slices along z
    assert volume.shape == (1, 16, 16, 6) and spacing == pytest.approx((0.8, 0.8, 2.5))
    assert volume[0, 0, 0, :].tolist() == [k * 10.0 for k in range(6)]  # HU = stored - 1024


def _mark(files: list[Path], value: int) -> None:
    """Set a bright block (rows 2-5, cols 3-7 of slices 1-3) in a written series."""
    for k, path in enumerate(files):
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array.copy()
        if 1 <= k <= 3:
            pixels[2:6, 3:8] = value
        ds.PixelData = pixels.astype(np.int16).tobytes()
        ds.save_as(path)


def test_series_orientation_matches_nibabel_canonical(tmp_path):
    write_series(tmp_path / "s", 6, "P1")
    (header,) = find_series(tmp_path)
    _mark(list(header.files), 3000)
    volume, _ = read_series(header.files)
    stored = np.stack([pydicom.dcmread(f).pixel_array for f in header.files]).astype(np.float32) - 1024
    affine = series_affine(read_headers(header.files))
    reference = nib.as_closest_canonical(nib.Nifti1Image(stored, affine)).get_fdata()
    np.testing.assert_array_equal(volume[0], reference)
    # LPS columns/rows run opposite to RAS x/y: column 3 -> x 12, row 2 -> y 13
    assert volume[0, 12, 13, 1] == 3000 - 1024 and volume[0, 11, 13, 1] == 3000 - 1024


def test_nifti_masks_of_dicom_series_line_up(tmp_path):
    rows = ["SeriesInstanceUID,mask"]
    for i in range(8):
        uid = write_series(tmp_path / "study" / f"s{i}", 6, f"P{i}")
        (header,) = [h for h in find_series(tmp_path / "study" / f"s{i}")]
        _mark(list(header.files), 3000)
        mask = np.zeros((6, 16, 16), np.uint8)  # as stored: (slices, rows, cols)
        mask[1:4, 2:6, 3:8] = 1
        nib.save(nib.Nifti1Image(mask, series_affine(read_headers(header.files))), tmp_path / f"mask{i}.nii.gz")
        rows.append(f"{uid},mask{i}.nii.gz")
    (tmp_path / "index.csv").write_text("\n".join(rows) + "\n")
    cfg = compose_config(
        [
            "data=dicom",
            f"data.root={tmp_path / 'study'}",
            f"data.labels={tmp_path / 'index.csv'}",
            "data.task=segmentation",
            "data.image_size=[16,16,6]",
            "data.normalize=none",
            "data.split=[0.5,0.25,0.25]",
        ]
    )
    splits = build_data(dict(cfg.data))
    image, mask = splits.train["image"], splits.train["mask"]
    assert mask.sum() > 0 and torch.equal(mask.bool(), image > 1000)  # the mask covers exactly the bright block


def test_uneven_slices_and_monochrome1(tmp_path):
    write_series(tmp_path / "s", 4, "P1")
    next((tmp_path / "s").glob("*_1")).unlink()  # a missing slice inside the series
    (header,) = find_series(tmp_path)
    with pytest.raises(ConfigError, match="uneven or repeated slice positions"):
        read_series(header.files)
    ds = pydicom.dcmread(header.files[0])
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.PixelData = np.arange(256, dtype=np.int16).reshape(16, 16).tobytes()
    ds.save_as(tmp_path / "mono1.dcm")
    image, _ = read_series([tmp_path / "mono1.dcm"])
    stored = np.arange(256, dtype=np.float32).reshape(16, 16)
    np.testing.assert_array_equal(image[0], -769 - stored)  # HU = stored - 1024, then max + min - HU


def test_window_presets():
    hu = np.array([-1400.0, -600.0, 150.0, 40.0])
    np.testing.assert_allclose(apply_window(hu, "lung"), [0.0, 0.5, 1.0, 1390 / 1500], rtol=1e-6)  # L -600, W 1500
    np.testing.assert_allclose(apply_window(hu, [40, 400]), [0.0, 0.0, 0.775, 0.5])
    with pytest.raises(ConfigError, match="unknown data.window 'lungs'.*Did you mean 'lung'"):
        apply_window(hu, "lungs")


def test_dicom_source_trains_with_patient_grouping_and_never_writes_patient_ids(tmp_path):
    rows = ["SeriesInstanceUID,label,site"]
    for i in range(12):
        patient = f"PAT{i // 2:03d}"  # two series per patient
        uid = write_series(tmp_path / "study" / patient / f"s{i}", 4, patient, value=300.0 * (i % 2))
        rows.append(f"{uid},{'bright' if i % 2 else 'dark'},{'north' if i < 6 else 'south'}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    cfg = compose_config(
        [
            "data=dicom",
            f"data.root={tmp_path / 'study'}",
            f"data.labels={tmp_path / 'labels.csv'}",
            "data.image_size=[16,16,4]",
            "data.normalize=none",
            "data.window=[0,2000]",
            "data.split=[0.5,0.25,0.25]",
            "model.channels=[4,8]",
            "trainer.epochs=1",
            "trainer.batch_size=4",
            "device=cpu",
        ]
    )
    splits = build_data(dict(cfg.data))
    assert splits.info.spatial_dims == 3 and splits.train["image"].shape[1:] == (1, 16, 16, 4)
    # the labels CSV's other columns are metadata (data.site_column=site for medimg federated)
    assert splits.subgroup_columns() == ["site"]
    assert sorted(v for split in splits.meta.values() for v in split["site"]) == ["north"] * 6 + ["south"] * 6
    train(cfg, tmp_path / "run")
    for path in (tmp_path / "run").rglob("*"):
        if path.is_file() and path.suffix in (".json", ".csv", ".md", ".yaml", ".log"):
            assert "PAT0" not in path.read_text() and "Doe" not in path.read_text(), path


def test_series_without_a_label_row_is_named(tmp_path):
    write_series(tmp_path / "study" / "a", 3, "P1")
    (tmp_path / "labels.csv").write_text("SeriesInstanceUID,label\n1.2.3,x\n")
    cfg = compose_config(["data=dicom", f"data.root={tmp_path / 'study'}", f"data.labels={tmp_path / 'labels.csv'}"])
    with pytest.raises(ConfigError, match="1 series have no row in data.labels"):
        build_data(dict(cfg.data))


def test_dicom_seg_masks_line_up_like_nifti_masks(tmp_path):
    import highdicom as hd
    from pydicom.sr.codedict import codes

    uid = write_series(tmp_path / "study" / "s0", 6, "P0")
    (header,) = find_series(tmp_path / "study")
    _mark(list(header.files), 3000)
    sources = [pydicom.dcmread(f) for f in header.files]
    stored = np.zeros((6, 16, 16), bool)
    stored[1:4, 2:6, 3:8] = True
    segment = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="lesion",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Neoplasm,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
    )
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=stored,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment],
        series_instance_uid=hd.UID(),
        series_number=2,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="medimg tests",
        manufacturer_model_name="test",
        software_versions="0",
        device_serial_number="0",
    )
    seg.save_as(tmp_path / "seg.dcm")
    from medimg_cli.data.dicom import read_segmentation

    mask = read_segmentation(tmp_path / "seg.dcm", header.files)
    volume, _ = read_series(header.files)
    assert uid and mask.shape == volume.shape and np.array_equal(mask[0] == 1, volume[0] > 1000)
    with pytest.raises(ConfigError, match="cannot read it as a DICOM-SEG of its series"):
        read_segmentation(header.files[0], header.files)


def test_monochrome1_is_inverted_over_the_whole_series(tmp_path):
    write_series(tmp_path / "s", 4, "P1")
    (header,) = find_series(tmp_path)
    for path in header.files:
        ds = pydicom.dcmread(path)
        ds.PhotometricInterpretation = "MONOCHROME1"
        ds.save_as(path)
    volume, _ = read_series(header.files)
    # slices hold HU 0, 10, 20, 30; inverted over the series they read 30, 20, 10, 0
    assert volume[0, 0, 0, :].tolist() == [30.0, 20.0, 10.0, 0.0]


def test_a_dcm_file_that_is_not_dicom_is_a_bad_file(tmp_path):
    uid = write_series(tmp_path / "study" / "s0", 3, "P1")
    (tmp_path / "study" / "s0" / "broken.dcm").write_text("not DICOM")
    (tmp_path / "study" / "notes.txt").write_text("other files are not expected to be DICOM")
    (tmp_path / "labels.csv").write_text(f"SeriesInstanceUID,label\n{uid},x\n")
    overrides = ["data=dicom", f"data.root={tmp_path / 'study'}", f"data.labels={tmp_path / 'labels.csv'}"]
    with pytest.raises(ConfigError, match=r"broken.dcm: not a readable DICOM file \(1 such .dcm file"):
        build_data(dict(compose_config(overrides).data))
    unreadable = []
    assert len(find_series(tmp_path / "study", unreadable)) == 1 and unreadable == [
        tmp_path / "study" / "s0" / "broken.dcm"
    ]


def test_12_bit_jpeg_decodes_and_a_broken_one_is_one_line():
    """JPEG Extended (12-bit) needs pylibjpeg's libjpeg (Pillow stops at 8 bits); pydicom's own
    test file JPEG-lossy.dcm has a malformed scan, refused in one line instead of pydicom's list."""
    from pydicom.data import get_testdata_file

    volume, _ = read_series([Path(get_testdata_file("JPGExtended.dcm"))])
    assert volume.shape == (1, 1024, 256) and 0 <= volume.min() < volume.max() <= 4095
    with pytest.raises(ConfigError) as error:
        read_series([Path(get_testdata_file("JPEG-lossy.dcm"))])
    assert "JPEG-lossy.dcm: cannot decode the DICOM pixel data (JPEG Extended" in str(error.value)
    assert "12-bit" in str(error.value) and "\n" not in str(error.value)
