"""DICOM input: files and series folders read with their geometry, imported as .nii.gz, predicted to .nii.gz."""
from __future__ import annotations

import json
import locale
import math
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from automedsam import plans as plans_module
from automedsam.conversion import convert_folder
from automedsam.dicom import dicom_sources, is_dicom_file, series_slices
from automedsam.errors import AutomedsamError
from automedsam.inference import predict
from automedsam.inference import run as run_module
from automedsam.inference.naming import discover_inputs, ignored_files, segmentation_path
from automedsam.io import geometry_mismatch, read_image, read_segmentation, write_segmentation
from automedsam.plotting import plot_overlays_folder
from toy_model import INNER, OUTER, box_mask, shared_foundation, toy_image, write_model_folder

SERIES_UID = "1.2.826.0.1.3680043.2.1125.1.424242"
EXPLICIT_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
ENHANCED_MR = "1.2.840.10008.5.1.4.1.1.4.1"  # Enhanced MR Image Storage
RAW_VRS = {"0020|000e": "UI", "0020|0013": "IS", "0020|0032": "DS", "0020|0037": "DS", "0028|1052": "DS",
           "0028|1053": "DS"}


def write_dicom(path: Path, pixels: np.ndarray, *, spacing=(0.6, 0.7), tags: dict[str, str] | None = None) -> None:
    """One DICOM file through GDCM (any name: GDCM is named, so IM0001 needs no extension)."""
    image = sitk.GetImageFromArray(pixels, isVector=pixels.ndim == 3 and pixels.shape[-1] == 3)
    image.SetSpacing(spacing if image.GetDimension() == 2 else (*spacing, 1.0))
    write_gdcm(path, image, tags=tags or {})


def write_gdcm(path: Path, image: sitk.Image, *, tags: dict[str, str]) -> None:
    """A SimpleITK image as one DICOM file with `tags`, through GDCM."""
    for key, value in tags.items():
        image.SetMetaData(key, value)
    writer = sitk.ImageFileWriter()
    writer.SetImageIO("GDCMImageIO")
    writer.KeepOriginalImageUIDOn()
    writer.SetFileName(str(path))
    process_locale = locale.setlocale(locale.LC_ALL)
    try:
        writer.Execute(image)
    finally:  # GDCM's writer leaves the process in the C locale (ASCII text files) when tags are set
        locale.setlocale(locale.LC_ALL, process_locale)


def write_series(folder: Path, volume: np.ndarray, *, uid: str = SERIES_UID, z0: float = 4.0, step: float = 2.5,
                 sideways: float = 0.0, names=None) -> None:
    """The slices of `volume` (Z, Y, X) as one series, one file each, written in reverse so order comes from the
    positions, not the names; `sideways` shifts each slice that far (mm) along y from the one before (gantry tilt)."""
    folder.mkdir(parents=True, exist_ok=True)
    for z in reversed(range(len(volume))):
        name = names[z] if names else f"IM{len(volume) - z:04d}"
        write_dicom(folder / name, volume[z], spacing=(0.8, 0.9), tags={
            "0020|000e": uid, "0020|000d": uid + ".1", "0020|0013": str(z + 1), "0008|0060": "MR",
            "0020|0032": f"10\\{-4 + sideways * z}\\{z0 + step * z}", "0020|0037": "1\\0\\0\\0\\1\\0"})


def write_float_series(folder: Path, volume: sitk.Image) -> None:
    """A float volume as SimpleITK's DicomSeriesFromArray example writes it, one file per slice (in reverse, so that
    order comes from the positions): GDCM stores float pixels as Enhanced MR Image Storage, whose position and
    orientation lie in the functional groups, not in the top-level tags the example sets. (GDCM picks that class
    itself at a process's first such write only: it is named here.)"""
    folder.mkdir(parents=True, exist_ok=True)
    direction = np.reshape(volume.GetDirection(), (3, 3))
    orientation = "\\".join(f"{value:.15g}" for value in (*direction[:, 0], *direction[:, 1]))
    for z in reversed(range(volume.GetDepth())):
        position = "\\".join(f"{value:.15g}" for value in volume.TransformIndexToPhysicalPoint((0, 0, z)))
        write_gdcm(folder / f"IM{volume.GetDepth() - z:04d}", volume[:, :, z], tags={
            "0028|0100": "16", "0028|0101": "16", "0028|0102": "15", "0028|0103": "1",  # stored as int16 ...
            "0028|1053": "0.01", "0028|1052": "0",  # ... times 0.01
            "0020|000e": SERIES_UID, "0020|0013": str(z + 1), "0008|0018": f"{SERIES_UID}.{z + 1}",
            "0008|0060": "MR", "0008|0016": ENHANCED_MR, "0020|0032": position, "0020|0037": orientation})


def write_raw_dicom(path: Path, pixels: np.ndarray, *, tags: dict[str, str] | None = None,
                    transfer_syntax: str = EXPLICIT_LITTLE_ENDIAN, encapsulated: bool = False) -> None:
    """A 2D DICOM file written byte by byte, for what GDCM's writer will not write: an empty position, stored values
    with their own rescale intercept or slope, a compression it cannot encode (`encapsulated`: one fragment of junk
    in place of the pixels). `tags` are those of RAW_VRS, as "gggg|eeee"."""
    rows, columns = pixels.shape
    bits = pixels.dtype.itemsize * 8
    elements = {(0x0008, 0x0016): ("UI", b"1.2.840.10008.5.1.4.1.1.7"), (0x0028, 0x0002): ("US", _us(1)),
                (0x0028, 0x0004): ("CS", b"MONOCHROME2"), (0x0028, 0x0010): ("US", _us(rows)),
                (0x0028, 0x0011): ("US", _us(columns)), (0x0028, 0x0030): ("DS", b"0.8\\0.9"),
                (0x0028, 0x0100): ("US", _us(bits)), (0x0028, 0x0101): ("US", _us(bits)),
                (0x0028, 0x0102): ("US", _us(bits - 1)), (0x0028, 0x0103): ("US", _us(int(pixels.dtype.kind == "i")))}
    for key, value in (tags or {}).items():
        elements[tuple(int(part, 16) for part in key.split("|"))] = (RAW_VRS[key], value.encode())
    data_set = b"".join(_raw_element(tag, vr, value) for tag, (vr, value) in sorted(elements.items()))
    if encapsulated:
        item = struct.pack("<HHI", 0xFFFE, 0xE000, 64) + b"\xff\x0a" + bytes(62)
        data_set += (struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, 0xFFFFFFFF)
                     + struct.pack("<HHI", 0xFFFE, 0xE000, 0) + item + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0))
    else:
        data_set += _raw_element((0x7FE0, 0x0010), "OW", pixels.astype(pixels.dtype.newbyteorder("<")).tobytes())
    meta = b"".join(_raw_element((0x0002, element), vr, value) for element, vr, value in (
        (0x0001, "OB", b"\0\1"), (0x0002, "UI", b"1.2.840.10008.5.1.4.1.1.7"), (0x0003, "UI", b"1.2.3.9.1"),
        (0x0010, "UI", transfer_syntax.encode())))
    path.write_bytes(bytes(128) + b"DICM" + _raw_element((0x0002, 0x0000), "UL", struct.pack("<I", len(meta)))
                     + meta + data_set)


def write_structure_set(path: Path, *, sop_class: bytes = b"1.2.840.10008.5.1.4.1.1.481.3") -> None:
    """An RT structure set as an export puts it beside the images: a DICOM file without pixel data (or a file of
    another SOP class written the same way)."""
    meta = b"".join(_raw_element((0x0002, element), vr, value) for element, vr, value in (
        (0x0001, "OB", b"\0\1"), (0x0002, "UI", sop_class), (0x0003, "UI", b"1.2.3.9.9"),
        (0x0010, "UI", EXPLICIT_LITTLE_ENDIAN.encode())))
    data_set = b"".join(_raw_element(tag, vr, value) for tag, vr, value in (
        ((0x0008, 0x0016), "UI", sop_class), ((0x0008, 0x0018), "UI", b"1.2.3.9.9"),
        ((0x0008, 0x0060), "CS", b"RTSTRUCT"), ((0x0020, 0x000D), "UI", b"1.2.3"),
        ((0x0020, 0x000E), "UI", SERIES_UID.encode() + b".99")))
    path.write_bytes(bytes(128) + b"DICM" + _raw_element((0x0002, 0x0000), "UL", struct.pack("<I", len(meta)))
                     + meta + data_set)


def _raw_element(tag: tuple[int, int], vr: str, value: bytes) -> bytes:
    if len(value) % 2:
        value += b"\0" if vr in ("UI", "OB") else b" "
    if vr in ("OB", "OW"):
        return struct.pack("<HH2sHI", *tag, vr.encode(), 0, len(value)) + value
    return struct.pack("<HH2sH", *tag, vr.encode(), len(value)) + value


def _us(number: int) -> bytes:
    return struct.pack("<H", number)


def test_a_dicom_file_reads_as_a_2d_image_with_its_spacing(tmp_path: Path) -> None:
    pixels = (np.arange(40 * 30).reshape(40, 30) % 1000).astype(np.uint16)
    write_dicom(tmp_path / "scan.dcm", pixels)
    write_dicom(tmp_path / "IM0001", pixels)
    (tmp_path / "SIEMENS.IMA").write_bytes((tmp_path / "scan.dcm").read_bytes())
    for name in ("scan.dcm", "IM0001", "SIEMENS.IMA"):
        array, geometry = read_image(tmp_path / name)
        np.testing.assert_array_equal(array, pixels)
        assert geometry.ndim == 2 and geometry.spacing == pytest.approx((0.6, 0.7)) and geometry.kind == "sitk"
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "scan.png").write_bytes(b"\x89PNG")
    assert [is_dicom_file(tmp_path / name) for name in ("scan.dcm", "IM0001", "notes.txt", "scan.png")] == \
        [True, True, False, False]


def test_colour_dicom_is_colour_and_grey_saved_in_colour_is_grey(tmp_path: Path) -> None:
    grey = (np.arange(20 * 24).reshape(20, 24) % 250).astype(np.uint8)
    colour = np.stack([grey, grey // 2, np.full_like(grey, 7)], axis=-1)
    write_dicom(tmp_path / "doppler.dcm", colour)
    write_dicom(tmp_path / "bmode.dcm", np.stack([grey] * 3, axis=-1))
    np.testing.assert_array_equal(read_image(tmp_path / "doppler.dcm")[0], colour)
    np.testing.assert_array_equal(read_image(tmp_path / "bmode.dcm")[0], grey)


def test_a_series_folder_reads_as_one_volume_in_slice_order(tmp_path: Path) -> None:
    volume = np.random.default_rng(0).integers(-500, 1500, (4, 20, 3)).astype(np.int16)  # 3 columns: not colour
    write_series(tmp_path / "series", volume)
    encoding = locale.getpreferredencoding(False)
    array, geometry = read_image(tmp_path / "series")
    assert locale.getpreferredencoding(False) == encoding  # reading leaves the process's text encoding alone
    np.testing.assert_array_equal(array, volume)
    assert geometry.spacing == pytest.approx((0.8, 0.9, 2.5)) and geometry.origin == pytest.approx((10, -4, 4))
    assert [path.name for path in series_slices(tmp_path / "series")] == ["IM0004", "IM0003", "IM0002", "IM0001"]


def test_a_float_series_written_by_simpleitk_reads_as_one_volume_with_its_geometry(tmp_path: Path) -> None:
    """Its position and orientation lie in the functional groups of Enhanced MR files: read from the top-level tags
    only, the series was 4 separate 2D images without their z and tilt (and refused as a subfolder of stills)."""
    pixels = np.random.default_rng(0).integers(0, 10000, (4, 6, 8)) / 100
    volume = sitk.GetImageFromArray(pixels.astype(np.float32))
    volume.SetSpacing((0.8, 0.9, 2.5))
    volume.SetOrigin((10.0, -4.0, 7.0))
    cos, sin = math.cos(0.3), math.sin(0.3)
    volume.SetDirection((1.0, 0.0, 0.0, 0.0, cos, -sin, 0.0, sin, cos))  # tilted about x
    series = tmp_path / "exam" / "series"
    write_float_series(series, volume)
    header = sitk.ImageFileReader()
    header.SetFileName(str(series / "IM0001"))
    header.ReadImageInformation()
    assert header.GetMetaData("0008|0016") == ENHANCED_MR and not header.HasMetaDataKey("0020|0032")
    assert [path.name for path in series_slices(series)] == ["IM0004", "IM0003", "IM0002", "IM0001"]
    array, geometry = read_image(series)
    np.testing.assert_allclose(array, pixels, atol=1e-4)
    assert geometry.spacing == pytest.approx((0.8, 0.9, 2.5)) and geometry.origin == pytest.approx((10.0, -4.0, 7.0))
    assert geometry.direction == pytest.approx(volume.GetDirection(), abs=1e-6)
    assert dicom_sources(tmp_path / "exam") == {"series": series}
    assert [image.case_id for image in discover_inputs(series)] == ["series"]


def test_the_pixel_limit_holds_for_a_series_before_it_is_read(tmp_path: Path, monkeypatch) -> None:
    write_series(tmp_path / "series", np.zeros((4, 20, 10), np.int16))
    monkeypatch.setenv("AUTOMEDSAM_MAX_PIXELS", "799")
    with pytest.raises(AutomedsamError, match="series has 800 pixels/voxels, more than the limit of 799"):
        read_image(tmp_path / "series")


def test_stills_without_positions_are_images_and_two_series_in_one_folder_are_refused(tmp_path: Path) -> None:
    stills = tmp_path / "stills"
    stills.mkdir()
    for number in range(3):
        write_dicom(stills / f"US{number}.dcm", toy_image(number), tags={"0020|000e": SERIES_UID})
    assert series_slices(stills) is None
    assert sorted(dicom_sources(stills)) == ["US0", "US1", "US2"]
    mixed = tmp_path / "mixed"
    write_series(mixed, np.zeros((2, 8, 8), np.int16), names=["a1", "a2"])
    write_series(mixed, np.zeros((2, 8, 8), np.int16), uid=SERIES_UID + ".2", z0=50.0, names=["b1", "b2"])
    with pytest.raises(AutomedsamError, match="slices of 2 DICOM series. Put each series in a folder of its own"):
        dicom_sources(mixed)


def test_single_slices_of_different_patients_are_separate_images(tmp_path: Path) -> None:
    for number in range(3):
        write_series(tmp_path, toy_image(number)[None], uid=f"{SERIES_UID}.{number}", z0=10.0 * number,
                     names=[f"patient{number}_0000.dcm"])
    assert series_slices(tmp_path) is None
    assert sorted(dicom_sources(tmp_path)) == ["patient0", "patient1", "patient2"]


@pytest.mark.parametrize("kind", ["cine", "gap", "sizes", "localizer", "stills folder", "same id"])
def test_what_would_lose_or_misplace_slices_is_refused_with_the_fix(tmp_path: Path, kind: str) -> None:
    exam = tmp_path / "exam"
    volume = np.zeros((3, 8, 8), np.int16)
    if kind == "cine":
        write_series(exam, volume, names=["a1", "a2", "a3"])
        write_series(exam, volume, names=["b1", "b2", "b3"])
        expected = "6 DICOM images of one series at 3 positions .* one folder per phase or echo"
    elif kind == "gap":
        write_series(exam, volume, names=["a1", "a2", "a3"])
        write_series(exam, volume[:1], z0=14.0, names=["a5"])
        expected = r"uneven steps \(2.5, 2.5, 5 mm\)"
    elif kind == "sizes":  # ITK's series reader called the series corrupt
        write_series(exam, volume[:2], names=["a1", "a2"])
        write_series(exam, np.zeros((1, 8, 6), np.int16), z0=9.0, names=["a3"])
        expected = (r"slices of different sizes: a3 \(6 columns x 8 rows\) where the other 2 slices of the series "
                    r"are 8 columns x 8 rows\. .*Remove it, or export the series again")
    elif kind == "localizer":
        write_series(exam, volume, names=["a1", "a2", "a3"])
        write_dicom(exam / "scout", volume[0], tags={"0020|000e": SERIES_UID, "0020|0032": "0\\0\\0",
                                                     "0020|0037": "0\\1\\0\\0\\0\\-1"})
        expected = "different orientations"
    elif kind == "stills folder":
        (exam / "stills").mkdir(parents=True)
        write_dicom(exam / "stills" / "US1.dcm", toy_image(0))
        expected = "stills.* not the slices of one series.* move them into the images folder itself"
    else:
        write_series(exam / "case", volume)
        write_dicom(exam / "case.dcm", volume[0])
        expected = "several DICOM images of the same case id: case / case.dcm"
    with pytest.raises(AutomedsamError, match=expected):
        discover_inputs(exam)


@pytest.mark.parametrize("other", ["still", "multi-frame", "empty position", "another series and a still"])
def test_a_series_beside_other_dicom_images_is_refused_not_split_into_2d_images(tmp_path: Path, other: str) -> None:
    """A study exported flat (a series, a dose-report screenshot...) became one 2D case per file: slices of one
    patient in different folds."""
    study = tmp_path / "study"
    write_series(study, np.zeros((5, 8, 8), np.int16), names=[f"IM000{number}" for number in range(5)])
    if other == "still":  # written byte by byte: GDCM's writer may add a position of its own
        write_raw_dicom(study / "IM0099", np.zeros((8, 8), np.uint8), tags={"0020|000e": SERIES_UID + ".9"})
    elif other == "multi-frame":
        write_dicom(study / "IM0099", np.zeros((3, 8, 8), np.uint8), tags={"0020|000e": SERIES_UID})
    elif other == "empty position":
        write_raw_dicom(study / "IM0099", np.zeros((8, 8), np.int16), tags={"0020|000e": SERIES_UID,
                                                                             "0020|0032": ""})
    else:
        write_series(study, np.zeros((3, 8, 8), np.int16), uid=SERIES_UID + ".2", z0=50.0,
                     names=[f"IM100{number}" for number in range(3)])
        write_raw_dicom(study / "IM0099", np.zeros((8, 8), np.uint8), tags={"0020|000e": SERIES_UID + ".9"})
    series = 2 if other.startswith("another") else 1
    expected = (f"holds the slices of {series} DICOM series and 1 other DICOM image .* Put each series in a folder "
                "of its own")
    for reader in (dicom_sources, discover_inputs):
        with pytest.raises(AutomedsamError, match=expected):
            reader(study)


def test_a_position_that_is_not_three_numbers_is_no_position(tmp_path: Path) -> None:
    """An empty Image Position tag gave a numpy traceback; such stills are separate images, as without the tag."""
    for number in range(3):
        write_raw_dicom(tmp_path / f"US{number}.dcm", np.full((6, 8), number, np.uint8),
                        tags={"0020|000e": SERIES_UID, "0020|0032": "" if number else "1\\2",
                              "0020|0037": "1\\0\\0\\0\\1\\0"})
    assert series_slices(tmp_path) is None
    assert [image.case_id for image in discover_inputs(tmp_path)] == ["US0", "US1", "US2"]


def test_a_gantry_tilted_series_is_refused_rather_than_stacked_straight(tmp_path: Path) -> None:
    """Slices 2.5 mm apart along the normal, each 0.8 mm further along y: ITK stacked them at 2.62 mm, straight."""
    write_series(tmp_path / "tilted", np.zeros((5, 8, 8), np.int16), sideways=0.8)
    with pytest.raises(AutomedsamError, match=r"shift sideways .*up to 3.2 mm .*gantry tilt.* Resample the series"):
        read_image(tmp_path / "tilted")
    write_series(tmp_path / "rounded", np.zeros((5, 8, 8), np.int16), sideways=0.004)  # rounding, not a tilt
    assert read_image(tmp_path / "rounded")[0].shape == (5, 8, 8)


def test_an_oblique_series_with_rounded_orientation_is_no_tilt(tmp_path: Path) -> None:
    """40 slices 4 mm apart exactly along an oblique normal, the orientation written to 3 decimals: the normal of
    the rounded cosines was taken as exact and the straight stack refused as a gantry tilt (0.13 mm)."""
    angle = np.deg2rad(20)
    row, column = np.array([1.0, 0.0, 0.0]), np.array([0.0, np.cos(angle), np.sin(angle)])
    normal = np.cross(row, column)
    orientation = "\\".join(f"{value:.3f}" for value in (*row, *column))
    (tmp_path / "oblique").mkdir()
    for z in range(40):
        position = "\\".join(f"{value:.4f}" for value in np.array([10.0, -4.0, 7.0]) + 4.0 * z * normal)
        write_dicom(tmp_path / "oblique" / f"IM{z:04d}", np.zeros((8, 8), np.int16), spacing=(0.8, 0.9), tags={
            "0020|000e": SERIES_UID, "0020|000d": SERIES_UID + ".1", "0020|0013": str(z + 1), "0008|0060": "MR",
            "0020|0032": position, "0020|0037": orientation})
    assert read_image(tmp_path / "oblique")[0].shape == (40, 8, 8)


@pytest.mark.parametrize(("stored", "slopes", "intercepts", "expected"), [
    (np.uint16(100), [1, 1, 1], [0, -1024, -1024], [100, -924, -924]),
    (np.int16(11), [1, 0.5, 0.5], [0, 0, 0], [11, 5.5, 5.5])], ids=["intercept", "slope"])
def test_slices_rescaled_differently_keep_their_intensities(tmp_path: Path, stored, slopes, intercepts,
                                                             expected) -> None:
    """ITK read the series in the first slice's pixel type: -924 wrapped to 64612, 5.5 cut to 5."""
    for z, (slope, intercept) in enumerate(zip(slopes, intercepts)):
        write_raw_dicom(tmp_path / f"IM{z}", np.full((6, 8), stored), tags={
            "0020|000e": SERIES_UID, "0020|0032": f"0\\0\\{2.5 * z}", "0020|0037": "1\\0\\0\\0\\1\\0",
            "0028|1053": f"{slope:g}", "0028|1052": f"{intercept:g}"})
    volume, _ = read_image(tmp_path)
    assert volume[:, 0, 0].tolist() == expected


def test_a_one_frame_file_gets_a_rotation_for_its_direction(tmp_path: Path) -> None:
    """The 2x2 corner of an oblique plane's direction is no rotation: ITK coerced it on writing, turning the label
    map against the image. An axial image keeps its in-plane rotation; any other plane gets identity."""
    cos, sin = math.cos(0.3), math.sin(0.3)
    for name, orientation in (("oblique", (1, 0, 0, 0, cos, sin)), ("rotated", (cos, sin, 0, -sin, cos, 0))):
        write_dicom(tmp_path / f"{name}.dcm", toy_image(0), tags={
            "0020|0032": "1\\2\\3", "0020|0037": "\\".join(f"{value:.15g}" for value in orientation)})
    _, oblique = read_image(tmp_path / "oblique.dcm")
    assert oblique.direction == (1.0, 0.0, 0.0, 1.0)
    pixels, rotated = read_image(tmp_path / "rotated.dcm")
    assert rotated.direction == pytest.approx((cos, -sin, sin, cos))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        write_segmentation(tmp_path / "rotated.nii.gz", pixels > 100, rotated)
    assert read_segmentation(tmp_path / "rotated.nii.gz")[1].direction == pytest.approx(rotated.direction, abs=1e-6)


@pytest.mark.parametrize(("syntax", "name"), [("1.2.840.10008.1.2.4.110", "JPEG XL"),
                                              ("1.2.840.10008.1.2.4.102", "MPEG-4 video")])
def test_a_compression_the_reader_cannot_decode_is_named(tmp_path: Path, syntax: str, name: str) -> None:
    """It was reported as a corrupt or truncated file, to be copied again."""
    write_raw_dicom(tmp_path / "scan.dcm", np.zeros((6, 8), np.uint8), transfer_syntax=syntax, encapsulated=True)
    with pytest.raises(AutomedsamError, match=rf"scan.dcm is stored as {name} \(transfer syntax {syntax}\).* "
                                              r"uncompressed \(Explicit VR Little Endian\) or as JPEG baseline"):
        read_image(tmp_path / "scan.dcm")


def test_a_dicomdir_index_is_no_image_and_dot_names_the_series_folder(tmp_path: Path, monkeypatch) -> None:
    write_series(tmp_path / "MR1", np.zeros((2, 8, 8), np.int16))
    write_dicom(tmp_path / "DICOMDIR", np.zeros((8, 8), np.uint16))
    assert dicom_sources(tmp_path) == {"MR1": tmp_path / "MR1"}
    monkeypatch.chdir(tmp_path / "MR1")
    [image] = discover_inputs(Path("."))
    assert image.case_id == "MR1" and segmentation_path(tmp_path, image).name == "MR1.nii.gz"


def test_dicom_files_without_an_image_are_left_out_and_named(tmp_path: Path, monkeypatch) -> None:
    """A report or structure set beside the images stopped the whole import as a corrupt file to export again."""
    monkeypatch.setenv("AUTOMEDSAM_RAW", str(tmp_path / "raw"))
    stills, exam = tmp_path / "us", tmp_path / "exam"
    stills.mkdir()
    for number in range(3):
        write_dicom(stills / f"US{number}.dcm", toy_image(number))
    write_structure_set(stills / "SR000001")
    write_series(exam / "ct1", np.stack([toy_image(0), toy_image(1)]).astype(np.int16))
    write_structure_set(exam / "ct1" / "RS.ct1.dcm")
    said: list[str] = []
    raw = convert_folder(stills, dataset_id=34, name="Stills", label_names=["nodule"], report=said.append)
    assert sorted(path.name for path in (raw / "imagesTr").iterdir()) == [
        "US0_0000.nii.gz", "US1_0000.nii.gz", "US2_0000.nii.gz"]
    assert len(said) == 1 and "Left out 1 DICOM file" in said[0] and "no image" in said[0] and "SR000001" in said[0]
    said.clear()
    raw = convert_folder(exam, dataset_id=35, name="Series", label_names=["nodule"], report=said.append)
    assert read_image(raw / "imagesTr" / "ct1_0000.nii.gz")[0].shape == (2, 60, 80)
    assert len(said) == 1 and "Left out 1 DICOM file" in said[0] and "ct1/RS.ct1.dcm" in said[0], said
    with pytest.raises(AutomedsamError, match=r"RS\.ct1\.dcm is a DICOM file without an image"):
        read_image(exam / "ct1" / "RS.ct1.dcm")


@pytest.mark.parametrize("sop_class", [b"1.3.12.2.1107.5.9.1", b"1.2.840.10008.5.1.4.1.1.66",
                                       b"1.2.840.10008.5.1.4.1.1.66.1", b"1.2.840.10008.5.1.4.1.1.9.1.1",
                                       b"1.3.46.670589.11.0.0.12.4"])
def test_a_dicom_file_of_another_class_without_pixels_is_left_out_of_a_series(tmp_path: Path,
                                                                               sop_class: bytes) -> None:
    """Told only by a short list of non-image classes, a Siemens CSA non-image file, raw data, a registration, an
    ECG or a vendor's private class beside a series stopped the import as a corrupt file."""
    write_series(tmp_path / "mr1", np.zeros((3, 8, 8), np.int16))
    write_structure_set(tmp_path / "mr1" / "XX0001", sop_class=sop_class)
    assert [image.case_id for image in discover_inputs(tmp_path)] == ["mr1"]
    assert ignored_files(tmp_path) == ["mr1/XX0001"]


@pytest.mark.parametrize("sop_class", [b"1.2.840.10008.5.1.4.1.1.481.23", b"1.2.840.10008.5.1.4.1.1.481.1",
                                       b"1.2.840.10008.5.1.4.1.1.2", b"1.2.840.10008.5.1.4.1.1.4.1"])
def test_a_dicom_file_of_an_image_class_without_pixels_is_refused_not_skipped(tmp_path: Path,
                                                                               sop_class: bytes) -> None:
    """Enhanced RT Image (481.23) holds pixels: taken for one of the RT objects (481), it was left out unread."""
    write_dicom(tmp_path / "a.dcm", toy_image(0))
    write_structure_set(tmp_path / "b.dcm", sop_class=sop_class)
    inputs = discover_inputs(tmp_path)  # an input, for predict to leave out with the reason
    assert [image.case_id for image in inputs] == ["a", "b"]
    with pytest.raises(AutomedsamError, match=r"b\.dcm could not be read"):
        read_image(inputs[1].path)


def cut_before_pixels(path: Path) -> None:
    """An interrupted copy: the file ends where its pixel data (7FE0,0010) would begin."""
    data = path.read_bytes()
    path.write_bytes(data[:data.index(b"\xe0\x7f\x10\x00")])


def test_a_dicom_image_cut_short_before_its_pixels_is_refused_not_skipped(tmp_path: Path) -> None:
    """Taken for a file without an image, a cut still was left out of predict's inputs without a word."""
    for name in ("a", "b"):
        write_dicom(tmp_path / f"{name}.dcm", toy_image(0))
    cut_before_pixels(tmp_path / "b.dcm")
    inputs = discover_inputs(tmp_path)  # an input still, for predict to leave out with the reason
    assert [image.case_id for image in inputs] == ["a", "b"]
    with pytest.raises(AutomedsamError, match=r"b\.dcm could not be read.*truncated"):
        read_image(inputs[1].path)


def test_a_series_with_a_slice_cut_short_is_refused_not_read_without_it(tmp_path: Path) -> None:
    write_series(tmp_path / "vol", np.zeros((5, 8, 8), np.int16))
    assert len(series_slices(tmp_path / "vol")) == 5
    cut_before_pixels(tmp_path / "vol" / "IM0001")
    (image,) = discover_inputs(tmp_path)  # an input still, for predict to leave out with the reason, not a volume
    with pytest.raises(AutomedsamError, match=r"IM0001 could not be read"):
        read_image(image.path)


def test_predict_names_the_dicom_files_without_an_image_it_leaves_out(tmp_path: Path) -> None:
    write_dicom(tmp_path / "US0.dcm", toy_image(0))
    write_structure_set(tmp_path / "SR000001")
    write_series(tmp_path / "ct1", np.zeros((2, 8, 8), np.int16))
    write_structure_set(tmp_path / "ct1" / "RS.ct1.dcm")
    assert [image.case_id for image in discover_inputs(tmp_path)] == ["US0", "ct1"]
    assert ignored_files(tmp_path) == ["SR000001", "ct1/RS.ct1.dcm"]


def test_a_dicom_file_keeps_its_channel_suffix_in_an_import_as_any_image(tmp_path: Path, monkeypatch) -> None:
    """scan_0000.dcm was case `scan`, which its mask scan_0000.png did not pair with (a PNG keeps `_0000`)."""
    monkeypatch.setenv("AUTOMEDSAM_RAW", str(tmp_path / "raw"))
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    write_dicom(images / "scan_0000.dcm", toy_image(0))
    Image.fromarray(box_mask(INNER).astype(np.uint8)).save(masks / "scan_0000.png")
    raw = convert_folder(images, masks=masks, dataset_id=35, name="Suffix", label_names=["core"])
    assert [path.name for path in (raw / "labelsTr").iterdir()] == ["scan_0000.nii.gz"]
    np.testing.assert_array_equal(read_segmentation(raw / "labelsTr" / "scan_0000.nii.gz")[0], box_mask(INNER))
    assert [image.case_id for image in discover_inputs(images)] == ["scan"]  # a prediction input drops it, as any


@pytest.mark.parametrize("extension", [".dcm", ".png"])
def test_an_image_named_as_nnunet_channel_0000_pairs_with_the_mask_named_without_it(tmp_path: Path, monkeypatch,
                                                                                     extension: str) -> None:
    """Since an import kept a DICOM's _0000, a_0000.dcm against the mask a.png no longer paired, and the error sent
    the user to nnU-Net's raw dataset layout, which holds no DICOM. DICOM and PNG follow one rule."""
    monkeypatch.setenv("AUTOMEDSAM_RAW", str(tmp_path / "raw"))
    images, masks = tmp_path / "img", tmp_path / "msk"
    images.mkdir()
    masks.mkdir()
    for number, case in enumerate(("a", "b")):
        if extension == ".dcm":
            write_dicom(images / f"{case}_0000.dcm", toy_image(number))
        else:
            Image.fromarray(toy_image(number).astype(np.uint8)).save(images / f"{case}_0000.png")
        Image.fromarray(box_mask(INNER).astype(np.uint8) * 255).save(masks / f"{case}.png")
    raw = convert_folder(images, masks=masks, dataset_id=36, name="Channel", label_names=["core"])
    ending = ".nii.gz" if extension == ".dcm" else ".png"
    assert sorted(path.name for path in (raw / "imagesTr").iterdir()) == [f"a_0000{ending}", f"b_0000{ending}"]
    assert sorted(path.name for path in (raw / "labelsTr").iterdir()) == [f"a{ending}", f"b{ending}"]
    np.testing.assert_array_equal(read_segmentation(raw / "labelsTr" / f"a{ending}")[0], box_mask(INNER))


def test_a_dicom_folder_imports_as_nifti_with_masks_named_after_the_images(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("AUTOMEDSAM_RAW", str(tmp_path / "raw"))
    images, masks = tmp_path / "exam", tmp_path / "masks"
    masks.mkdir()
    write_series(images / "patient1", np.stack([toy_image(0), toy_image(1)]).astype(np.int16))
    write_series(images / "patient2", np.stack([toy_image(2), toy_image(3)]).astype(np.int16),
                 uid=SERIES_UID + ".2")
    for case in ("patient1", "patient2"):
        mask = sitk.GetImageFromArray(np.stack([box_mask(INNER)] * 2).astype(np.uint8))
        mask.CopyInformation(series_image(images / case))
        sitk.WriteImage(mask, str(masks / f"{case}.nii.gz"))
    raw = convert_folder(images, masks=masks, dataset_id=31, name="Dicom", label_names=["core"])
    dataset = json.loads((raw / "dataset.json").read_text())
    assert dataset["file_ending"] == ".nii.gz"
    assert sorted(p.name for p in (raw / "imagesTr").iterdir()) == ["patient1_0000.nii.gz", "patient2_0000.nii.gz"]
    imported, geometry = read_image(raw / "imagesTr" / "patient1_0000.nii.gz")
    original, original_geometry = read_image(images / "patient1")
    np.testing.assert_array_equal(imported, original)
    assert geometry_mismatch(geometry, original_geometry, 1e-6) is None  # NIfTI keeps float32
    label_map, _ = read_segmentation(raw / "labelsTr" / "patient1.nii.gz")
    assert label_map.shape == (2, 60, 80) and label_map.sum() == 2 * box_mask(INNER).sum()


def test_colour_dicom_images_import_as_png(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("AUTOMEDSAM_RAW", str(tmp_path / "raw"))
    images = tmp_path / "us"
    images.mkdir()
    for number in range(2):
        grey = toy_image(number)
        write_dicom(images / f"US{number}", np.stack([grey, grey, np.zeros_like(grey)], axis=-1))
    write_dicom(images / "US2.dcm", toy_image(2))  # a gray B-mode still beside the colour ones
    raw = convert_folder(images, dataset_id=32, name="Colour", label_names=["nodule"])
    assert json.loads((raw / "dataset.json").read_text())["file_ending"] == ".png"
    assert read_image(raw / "imagesTr" / "US0_0000.png")[0].shape == (60, 80, 3)
    np.testing.assert_array_equal(read_image(raw / "imagesTr" / "US2_0000.png")[0], toy_image(2))


def test_a_colour_png_beside_gray_dicom_makes_the_dataset_png(tmp_path: Path, monkeypatch) -> None:
    """.nii.gz was chosen for the DICOM, and writing the colour PNG into it failed halfway, naming a hidden path."""
    monkeypatch.setenv("AUTOMEDSAM_RAW", str(tmp_path / "raw"))
    images = tmp_path / "us"
    images.mkdir()
    write_dicom(images / "US1.dcm", toy_image(1))
    colour = np.stack([toy_image(2), toy_image(2) // 2, np.zeros_like(toy_image(2))], axis=-1)
    Image.fromarray(colour).save(images / "US2.png")
    raw = convert_folder(images, dataset_id=33, name="Mixed", label_names=["nodule"])
    assert json.loads((raw / "dataset.json").read_text())["file_ending"] == ".png"
    np.testing.assert_array_equal(read_image(raw / "imagesTr" / "US2_0000.png")[0], colour)
    np.testing.assert_array_equal(read_image(raw / "imagesTr" / "US1_0000.png")[0], toy_image(1))
    Image.fromarray(np.stack([toy_image(2)] * 3, axis=-1)).save(images / "US2.png")  # gray saved as RGB: gray
    raw = convert_folder(images, dataset_id=33, name="Mixed", label_names=["nodule"], overwrite=True)
    assert json.loads((raw / "dataset.json").read_text())["file_ending"] == ".nii.gz"


@pytest.fixture(scope="module")
def predicted(tmp_path_factory: pytest.TempPathFactory):
    """The toy model predicting a folder of a DICOM file, an extension-less one and a series folder."""
    root = tmp_path_factory.mktemp("dicom_predict")
    foundation = shared_foundation()
    patch = pytest.MonkeyPatch()
    patch.setattr(plans_module, "build_foundation_model", lambda *args, **kwargs: foundation)
    patch.setattr(run_module, "build_foundation_model", lambda *args, **kwargs: foundation)
    model_dir = write_model_folder(root / "results", foundation)
    inputs = root / "exam"
    inputs.mkdir()
    write_dicom(inputs / "still.dcm", toy_image(0))
    write_dicom(inputs / "IM0007", toy_image(1))
    write_series(inputs / "series", np.stack([toy_image(2), toy_image(3)]).astype(np.int16))
    summary = predict(inputs, root / "out", model_folder=model_dir, show_progress=False)
    yield {"root": root, "inputs": inputs, "model": model_dir, "summary": summary}
    patch.undo()


def test_dicom_inputs_are_predicted_to_nifti_with_their_geometry(predicted) -> None:
    out = predicted["root"] / "out"
    assert predicted["summary"].written == 3
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "IM0007.nii.gz", "fold_agreement.json", "series.nii.gz", "still.nii.gz"]
    for case, source in (("still", "still.dcm"), ("IM0007", "IM0007"), ("series", "series")):
        image, image_geometry = read_image(predicted["inputs"] / source)
        label_map, geometry = read_segmentation(out / f"{case}.nii.gz")
        assert label_map.shape == image.shape and geometry_mismatch(geometry, image_geometry, 1e-6) is None
        for plane in (label_map if label_map.ndim == 3 else [label_map]):
            core, outer = box_mask(INNER), box_mask(OUTER)
            assert ((plane == 2) & core).sum() >= 0.9 * core.sum()
            assert ((plane == 1) & outer & ~core).sum() >= 0.9 * (outer & ~core).sum()


def test_a_series_folder_given_as_the_input_is_one_volume(predicted, tmp_path: Path) -> None:
    series = predicted["inputs"] / "series"
    [image] = discover_inputs(series)
    assert image.case_id == "series" and image.path == series
    assert segmentation_path(tmp_path, image) == tmp_path / "series.nii.gz"
    [single] = discover_inputs(predicted["inputs"] / "IM0007")
    assert segmentation_path(tmp_path, single) == tmp_path / "IM0007.nii.gz"


def test_overlays_are_drawn_on_dicom_images(predicted, tmp_path: Path) -> None:
    written = plot_overlays_folder(predicted["inputs"], predicted["root"] / "out", tmp_path / "overlays")
    assert sorted(path.name for path in written) == ["IM0007.png", "series.png", "still.png"]
    assert Image.open(tmp_path / "overlays" / "still.png").size[0] > 100
    Image.fromarray(toy_image(0)).save(tmp_path / "still.png")
    write_dicom(tmp_path / "still.dcm", toy_image(0))
    with pytest.raises(AutomedsamError, match="an image file and a DICOM image of the same case id: still"):
        plot_overlays_folder(tmp_path, predicted["root"] / "out", tmp_path / "overlays2")


def series_image(folder: Path) -> sitk.Image:
    """The series as a SimpleITK image, to give a mask the volume's geometry."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


def test_a_series_folder_is_named_as_a_dicom_file_is(tmp_path: Path) -> None:
    """A series folder vTs00_0000 kept its channel suffix (prediction vTs00_0000.nii.gz) where vTs00_0000.nii.gz and
    scan_0000.dcm drop it, so the commands that read predictions back as case vTs00 found no image of it; an import
    keeps it, as it keeps a file's. Two series folders of one case id are refused, as two files are."""
    volume = np.zeros((2, 8, 8), np.int16)
    write_series(tmp_path / "exam" / "vTs00_0000", volume)
    assert dicom_sources(tmp_path / "exam") == {"vTs00": tmp_path / "exam" / "vTs00_0000"}
    assert list(dicom_sources(tmp_path / "exam", keep_channel_suffix=True)) == ["vTs00_0000"]
    [image] = discover_inputs(tmp_path / "exam" / "vTs00_0000")  # given as the input itself
    assert segmentation_path(tmp_path, image).name == "vTs00.nii.gz"
    write_series(tmp_path / "exam" / "vTs00", volume, uid=SERIES_UID + ".2")
    with pytest.raises(AutomedsamError, match=r"several DICOM images of the same case id: vTs00 / vTs00_0000\."):
        dicom_sources(tmp_path / "exam")
