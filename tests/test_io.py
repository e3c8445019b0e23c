"""Image IO: round trips keep pixels and geometry; every kind of bad file gives an error naming it."""
from __future__ import annotations

import errno
import gzip
import io
import os
import re
import shutil
import struct
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from automedsam.errors import AutomedsamError
from automedsam.files import atomic_path, load_json
from automedsam.inference.naming import discover_inputs
from automedsam import io as io_module
from automedsam import nifti_check
from automedsam.io import (DEFAULT_MAX_PIXELS, Geometry, geometry_mismatch, is_supported, max_pixels, read_image,
                           read_segmentation, slice_placement, split_extension, write_image, write_segmentation)

OBLIQUE = Geometry(spacing=(0.7, 0.8, 2.5), origin=(-10.0, 20.5, 3.0),
                   direction=(0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0), kind="sitk")


@pytest.mark.parametrize("name, expected", [
    ("patient001_frame01_0000.nii.gz", ("patient001_frame01_0000", ".nii.gz")),
    ("dir/benign (3).PNG", ("benign (3)", ".PNG")),
    ("a.b.nrrd", ("a.b", ".nrrd")),
    ("notes.txt", ("notes", ".txt")),
])
def test_split_extension(name, expected):
    assert split_extension(name) == expected


def test_is_supported():
    assert is_supported("x.nii.gz") and is_supported("x.JPG") and not is_supported("x.txt")


@pytest.mark.parametrize("extension", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_medical_round_trip_keeps_pixels_and_geometry(tmp_path, extension):
    volume = np.random.default_rng(0).normal(size=(3, 5, 4)).astype(np.float32)
    write_image(tmp_path / f"img{extension}", volume, OBLIQUE)
    array, geometry = read_image(tmp_path / f"img{extension}")
    assert np.array_equal(array, volume)
    assert geometry.kind == "sitk" and geometry.ndim == 3
    assert geometry_mismatch(geometry, OBLIQUE, tolerance=1e-5) is None


def test_segmentation_round_trip_nifti(tmp_path):
    seg = np.zeros((3, 5, 4), dtype=np.int64)
    seg[1, 1:3, 2] = 2
    write_segmentation(tmp_path / "seg.nii.gz", seg, OBLIQUE)
    array, geometry = read_segmentation(tmp_path / "seg.nii.gz")
    assert array.dtype == np.uint8 and np.array_equal(array, seg)
    assert np.allclose(geometry.spacing, OBLIQUE.spacing) and np.allclose(geometry.origin, OBLIQUE.origin)
    assert np.allclose(geometry.direction, OBLIQUE.direction)


def test_segmentation_with_many_labels_is_uint16(tmp_path):
    seg = np.arange(20, dtype=np.int32).reshape(4, 5) * 20
    write_segmentation(tmp_path / "seg.nii.gz", seg, Geometry.natural())
    assert sitk.ReadImage(str(tmp_path / "seg.nii.gz")).GetPixelID() == sitk.sitkUInt16
    assert np.array_equal(read_segmentation(tmp_path / "seg.nii.gz")[0], seg)


def test_png_round_trip(tmp_path):
    image = np.random.default_rng(1).integers(0, 255, size=(6, 7), dtype=np.uint8)
    seg = (image > 128).astype(np.uint8) * 2
    write_image(tmp_path / "img.png", image, Geometry.natural())
    write_segmentation(tmp_path / "seg.png", seg, Geometry.natural())
    read, geometry = read_image(tmp_path / "img.png")
    assert np.array_equal(read, image) and geometry == Geometry.natural()
    assert np.array_equal(read_segmentation(tmp_path / "seg.png")[0], seg)


def test_sixteen_bit_png_keeps_values(tmp_path):
    values = np.array([[0, 1000], [40000, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    array, _ = read_image(tmp_path / "deep.png")
    assert array.dtype == np.uint16 and np.array_equal(array, values)


def test_gray_rgb_collapses_and_true_colour_stays(tmp_path):
    gray = np.random.default_rng(2).integers(0, 255, size=(4, 5), dtype=np.uint8)
    Image.fromarray(np.stack([gray] * 3, axis=-1)).save(tmp_path / "gray.png")
    colour = np.stack([gray, 255 - gray, gray // 2], axis=-1)
    Image.fromarray(colour).save(tmp_path / "colour.bmp")
    assert np.array_equal(read_image(tmp_path / "gray.png")[0], gray)
    assert np.array_equal(read_image(tmp_path / "colour.bmp")[0], colour)


def test_rgba_with_opaque_alpha_drops_alpha(tmp_path):
    rgba = np.zeros((4, 5, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 255
    Image.fromarray(rgba).save(tmp_path / "opaque.png")
    assert read_image(tmp_path / "opaque.png")[0].shape == (4, 5, 3)


def test_rgba_with_varying_alpha_is_refused(tmp_path):
    rgba = np.full((4, 5, 4), 100, dtype=np.uint8)
    rgba[0, 0, 3] = 0
    Image.fromarray(rgba).save(tmp_path / "transparent.png")
    with pytest.raises(AutomedsamError, match=r"transparent\.png.*transparency.*without transparency"):
        read_image(tmp_path / "transparent.png")


@pytest.mark.parametrize("name, content, expected", [
    ("empty.nii.gz", b"", r"empty\.nii\.gz is empty \(0 bytes\).*again"),
    ("absent.png", None, r"absent\.png does not exist"),
    ("scan.mnc", b"x", r"scan\.mnc.*'\.mnc' is not supported.*\.nii\.gz"),
    ("absent.dcm", None, r"absent\.dcm does not exist"),
    ("scan.dcm", b"x", r"scan\.dcm could not be read .*Export or copy it again"),
])
def test_a_file_that_cannot_be_read_is_named_with_the_fix(tmp_path, name, content, expected):
    if content is not None:
        (tmp_path / name).write_bytes(content)
    with pytest.raises(AutomedsamError, match=expected):
        read_image(tmp_path / name)


def test_garbage_png_is_unreadable(tmp_path):
    (tmp_path / "fake.png").write_text("not an image")
    with pytest.raises(AutomedsamError, match=r"fake\.png could not be read.*Export or copy it again"):
        read_image(tmp_path / "fake.png")


def test_truncated_png(tmp_path):
    Image.fromarray(np.random.default_rng(3).integers(0, 255, (64, 64), dtype=np.uint8)).save(tmp_path / "a.png")
    data = (tmp_path / "a.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(AutomedsamError, match=r"cut\.png could not be read.*truncated"):
        read_image(tmp_path / "cut.png")


@pytest.mark.parametrize("extension", [".nii.gz", ".nii", ".mha"])
def test_truncated_volume(tmp_path, extension):
    write_image(tmp_path / f"full{extension}", np.random.default_rng(4).normal(size=(8, 16, 16)).astype(np.float32),
                OBLIQUE)
    data = (tmp_path / f"full{extension}").read_bytes()
    (tmp_path / f"cut{extension}").write_bytes(data[: len(data) - 100])
    with pytest.raises(AutomedsamError, match=rf"cut{extension.replace('.', '[.]')} could not be read"):
        read_image(tmp_path / f"cut{extension}")


def test_nifti_with_uncompressed_twin_is_refused(tmp_path):
    write_image(tmp_path / "a.nii.gz", np.zeros((2, 3, 4), np.float32), OBLIQUE)
    write_image(tmp_path / "a.nii", np.ones((2, 3, 4), np.float32), OBLIQUE)
    with pytest.raises(AutomedsamError, match=r"a\.nii\.gz has an uncompressed twin a\.nii"):
        read_image(tmp_path / "a.nii.gz")


def test_four_d_input(tmp_path):
    sitk.WriteImage(sitk.Image([4, 4, 3, 2], sitk.sitkFloat32), str(tmp_path / "cine.nii.gz"))
    with pytest.raises(AutomedsamError, match=r"cine\.nii\.gz is a 4D image.*one 3D file per frame"):
        read_image(tmp_path / "cine.nii.gz")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("extension", [".nii.gz", ".nii", ".mha"])
def test_non_finite_intensities(tmp_path, bad, extension):
    volume = np.zeros((2, 3, 4), np.float64)
    volume[1, 1, 1] = bad
    write_image(tmp_path / f"nan{extension}", volume, OBLIQUE)
    with pytest.raises(AutomedsamError, match=r"nan\.(nii|mha).* contains 1 NaN or infinite.*save the image again"):
        read_image(tmp_path / f"nan{extension}")


def test_pixel_limit_from_environment(tmp_path, monkeypatch):
    write_image(tmp_path / "big.png", np.zeros((20, 30), np.uint8), Geometry.natural())
    write_image(tmp_path / "big.nii.gz", np.zeros((2, 20, 30), np.uint8), OBLIQUE)
    monkeypatch.setenv("AUTOMEDSAM_MAX_PIXELS", "500")
    with pytest.raises(AutomedsamError, match=r"big\.png has 600 pixels.*limit of 500.*AUTOMEDSAM_MAX_PIXELS"):
        read_image(tmp_path / "big.png")
    with pytest.raises(AutomedsamError, match=r"big\.nii\.gz has 1200 pixels/voxels"):
        read_image(tmp_path / "big.nii.gz")
    monkeypatch.setenv("AUTOMEDSAM_MAX_PIXELS", "lots")
    with pytest.raises(AutomedsamError, match=r"AUTOMEDSAM_MAX_PIXELS='lots' is not a positive"):
        max_pixels()
    monkeypatch.delenv("AUTOMEDSAM_MAX_PIXELS")
    assert max_pixels() == DEFAULT_MAX_PIXELS


def test_multi_frame_tiff_is_refused(tmp_path):
    frames = [Image.fromarray(np.full((4, 4), value, np.uint8)) for value in (0, 1)]
    frames[0].save(tmp_path / "stack.tif", save_all=True, append_images=frames[1:])
    with pytest.raises(AutomedsamError, match=r"stack\.tif holds 2 frames"):
        read_image(tmp_path / "stack.tif")


def write_tiff_with_a_sizeless_second_page(path: Path) -> None:
    """A valid one-page TIFF whose next-page pointer leads to a page without ImageWidth/ImageLength: Pillow opens
    it, then raises TypeError("Missing dimensions") when asked how many frames it holds."""
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((40, 50), np.uint8)).save(buffer, format="TIFF")
    data = bytearray(buffer.getvalue())
    next_page = 10 + 12 * struct.unpack_from("<H", data, 8)[0]  # the first page's "next IFD" offset
    struct.pack_into("<I", data, next_page, len(data))
    data += struct.pack("<H", 1) + struct.pack("<HHII", 0x7FFF, 3, 1, 0) + struct.pack("<I", 0)  # one unknown tag
    path.write_bytes(bytes(data))


def test_a_tiff_whose_second_page_has_no_size_is_unreadable_not_a_traceback(tmp_path):
    write_tiff_with_a_sizeless_second_page(tmp_path / "damaged.tif")
    with pytest.raises(AutomedsamError, match=r"damaged\.tif could not be read \(Missing dimensions\).*copy it again"):
        read_image(tmp_path / "damaged.tif")


@pytest.mark.parametrize("failure", [KeyError(273), IndexError("tuple index out of range"),
                                     struct.error("unpack requires a buffer of 4 bytes"), EOFError()])
def test_whatever_pillow_raises_on_a_damaged_header_names_the_file(tmp_path, monkeypatch, failure):
    """Pillow's parsers let a malformed field surface as the error they hit, not as OSError."""
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "scan.png")

    def damaged(*args, **kwargs):
        raise failure

    monkeypatch.setattr(io_module.Image, "open", damaged)
    with pytest.raises(AutomedsamError, match=r"scan\.png could not be read .*copy it again"):
        read_image(tmp_path / "scan.png")


PERMISSION = r"Permission denied for {}: this user may not read"
DAMAGE_ADVICE = ("corrupt", "truncated", "does not exist", "Export or copy")


def assert_refused_not_damaged(refused: pytest.ExceptionInfo, path: Path) -> None:
    """A file the user may not read needs a permission, not the export or copy that a damaged file needs."""
    message = str(refused.value)
    assert re.match(PERMISSION.format(re.escape(str(path))), message), message
    assert not any(advice in message for advice in DAMAGE_ADVICE), message


@pytest.mark.parametrize("name", ["scan.png", "scan.nii.gz", "scan.mha", "scan.nrrd", "scan.dcm"])
def test_a_file_this_user_may_not_read_is_named_as_refused_not_as_corrupt_or_missing(tmp_path, monkeypatch, name):
    """ITK said a chmod 000 NIfTI file does not exist and is corrupt, Pillow a PNG is "not really an image": the
    user exported again a file that only needed a permission."""
    path = tmp_path / name
    if name == "scan.dcm":
        path.write_bytes(b"x")
    else:
        write_image(path, np.ones((4, 5), np.uint8), Geometry.natural() if name.endswith(".png") else
                    Geometry(spacing=(1.0, 1.0), origin=(0.0, 0.0), direction=(1.0, 0.0, 0.0, 1.0), kind="sitk"))
    access = os.access
    monkeypatch.setattr(io_module.os, "access",
                        lambda where, mode, **kw: Path(where) != path and access(where, mode, **kw))
    with pytest.raises(AutomedsamError) as refused:
        read_image(path)
    assert_refused_not_damaged(refused, path)


@pytest.mark.parametrize("name, reader, opener", [("scan.png", io_module.Image, "open"),
                                                  ("scan.nii.gz", nifti_check, "_open")], ids=["pillow", "nifti"])
def test_a_read_the_file_system_refuses_after_access_allowed_it_is_named_as_refused(tmp_path, monkeypatch, name,
                                                                                    reader, opener):
    """os.access may answer yes where the file system then says no (NFS, ACLs): Pillow's and the NIfTI check's
    PermissionError must not read as a damaged file either."""
    path = tmp_path / name
    if name.endswith(".nii.gz"):
        write_image(path, np.ones((2, 4, 5), np.float32), OBLIQUE)
    else:
        write_image(path, np.ones((4, 5), np.uint8), Geometry.natural())

    def refused_open(where, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(where))

    monkeypatch.setattr(reader, opener, refused_open)
    with pytest.raises(AutomedsamError) as refused:
        read_image(path)
    assert_refused_not_damaged(refused, path)


def test_binarise_reads_0_255_and_colour_masks_as_0_1(tmp_path):
    mask = np.zeros((5, 6), dtype=np.uint8)
    mask[1:3, 2:5] = 1
    Image.fromarray(mask * 255).save(tmp_path / "mask255.png")
    colour = np.zeros((5, 6, 3), np.uint8)
    colour[mask == 1] = (200, 30, 0)
    Image.fromarray(colour).save(tmp_path / "mask_rgb.png")
    assert np.array_equal(read_segmentation(tmp_path / "mask255.png", binarise=True)[0], mask)
    assert np.array_equal(read_segmentation(tmp_path / "mask_rgb.png", binarise=True)[0], mask)
    assert np.array_equal(read_segmentation(tmp_path / "mask255.png")[0], mask * 255)


def test_palette_label_map_is_read_as_its_indices_and_binarised_by_colour(tmp_path):
    label_map = np.zeros((5, 6), np.uint8)
    label_map[1:3, 1:4], label_map[3, 2] = 1, 3
    palette_mask = Image.fromarray(label_map, mode="P")
    palette_mask.putpalette([0, 0, 0, 0, 0, 90, 0, 0, 0, 240, 240, 0] + [0] * (252 * 3))
    palette_mask.save(tmp_path / "mask.png")
    assert np.array_equal(read_segmentation(tmp_path / "mask.png")[0], label_map)
    assert read_image(tmp_path / "mask.png")[0].shape == (5, 6, 3)  # an image: its colours
    assert np.array_equal(read_segmentation(tmp_path / "mask.png", binarise=True)[0], (label_map == 3).astype(np.uint8))
    grey = Image.fromarray((label_map == 0).astype(np.uint8), mode="P")  # a 0/255 mask whose index 0 is white
    grey.putpalette([255, 255, 255, 0, 0, 0] + [0] * (254 * 3))
    grey.save(tmp_path / "grey.png")
    assert np.array_equal(read_segmentation(tmp_path / "grey.png")[0], np.where(label_map == 0, 0, 255))


def voc_palette() -> list[int]:
    """PASCAL VOC's colour table: index 3 is (128, 128, 0), index 7 the grey (128, 128, 128)."""
    table = []
    for index in range(256):
        rgb = [0, 0, 0]
        for bit in range(8):
            for channel in range(3):
                rgb[channel] |= ((index >> (3 * bit + channel)) & 1) << (7 - bit)
        table += rgb
    return table


@pytest.mark.parametrize("used", [(0, 3, 7), (0, 7), (0, 3)])
def test_palette_label_maps_of_one_table_read_by_index_whichever_entries_they_use(tmp_path, used):
    """With VOC's table, indices 0 and 7 (both grey entries) read as 0 and 128, while 0, 3 and 7 read as indices."""
    label_map = np.zeros((20, 20), np.uint8)
    for row, index in enumerate(used):
        label_map[row * 5:(row + 1) * 5] = index
    mask = Image.fromarray(label_map, mode="P")
    mask.putpalette(voc_palette())
    mask.save(tmp_path / "voc.png")
    assert voc_palette()[21:24] == [128, 128, 128]
    np.testing.assert_array_equal(read_segmentation(tmp_path / "voc.png")[0], label_map)


@pytest.mark.parametrize("used", [(0, 1), (0, 1, 2)])
def test_label_maps_of_a_black_white_colour_table_read_by_index_whichever_entries_they_use(tmp_path, used):
    """With the table black, white, red, green, indices 0 and 1 read as 0 and 255 beside 0, 1 and 2 read by index."""
    label_map = np.zeros((20, 20), np.uint8)
    for row, index in enumerate(used):
        label_map[row * 5:(row + 1) * 5] = index
    mask = Image.fromarray(label_map, mode="P")
    mask.putpalette([0, 0, 0, 255, 255, 255, 255, 0, 0, 0, 255, 0])
    mask.save(tmp_path / "labels.png")
    np.testing.assert_array_equal(read_segmentation(tmp_path / "labels.png")[0], label_map)


def test_a_0_255_mask_saved_with_a_colour_table_whose_index_0_is_white_reads_by_its_grey_values(tmp_path):
    """A classic Mac OS table (white at 0, black at 255, colours between) swapped object and background by index."""
    table = [255, 255, 255] + [(index * step) % 256 for index in range(1, 255) for step in (37, 91, 13)] + [0, 0, 0]
    mask = np.zeros((20, 20), np.uint8)
    mask[5:15, 5:15] = 1
    indices = Image.fromarray(np.where(mask > 0, 0, 255).astype(np.uint8), mode="P")
    indices.putpalette(table)
    indices.save(tmp_path / "mac.png")
    np.testing.assert_array_equal(read_segmentation(tmp_path / "mac.png")[0], mask * 255)
    np.testing.assert_array_equal(read_segmentation(tmp_path / "mac.png", binarise=True)[0], mask)


def test_a_0_1_mask_saved_as_jpeg_is_refused_where_it_is_binarised(tmp_path):
    """At quality 75 the disc of 1369 pixels came back as 24 pixels: those compression had pushed to 2."""
    rows, cols = np.mgrid[:128, :128]
    disc = ((rows - 60) ** 2 + (cols - 64) ** 2 < 21 ** 2).astype(np.uint8)
    Image.fromarray(disc).save(tmp_path / "mask01.jpg", quality=75)
    with pytest.raises(AutomedsamError, match=r"mask01\.jpg is a JPEG mask whose brightest value is 2.*as PNG"):
        read_segmentation(tmp_path / "mask01.jpg", binarise=True)
    Image.fromarray(disc * 255).save(tmp_path / "mask255.jpg", quality=75)
    read = read_segmentation(tmp_path / "mask255.jpg", binarise=True)[0]
    assert 2 * np.count_nonzero(read & disc) / (read.sum() + disc.sum()) > 0.95


def test_colour_mask_without_binarise_is_refused(tmp_path):
    colour = np.zeros((5, 6, 3), np.uint8)
    colour[1, 1] = (255, 0, 0)
    Image.fromarray(colour).save(tmp_path / "mask_rgb.png")
    with pytest.raises(AutomedsamError, match=r"mask_rgb\.png is a colour image, not a label map"):
        read_segmentation(tmp_path / "mask_rgb.png")


def test_fractional_and_negative_labels_are_refused(tmp_path):
    write_image(tmp_path / "soft.nii.gz", np.full((2, 2, 2), 0.5, np.float32), OBLIQUE)
    write_image(tmp_path / "neg.nii.gz", np.full((2, 2, 2), -1, np.int16), OBLIQUE)
    with pytest.raises(AutomedsamError, match=r"soft\.nii\.gz: a label map must hold whole numbers"):
        read_segmentation(tmp_path / "soft.nii.gz")
    with pytest.raises(AutomedsamError, match=r"neg\.nii\.gz: label maps cannot hold negative"):
        read_segmentation(tmp_path / "neg.nii.gz")


def test_segmentation_is_never_written_as_jpeg(tmp_path):
    with pytest.raises(AutomedsamError, match=r"seg\.jpg.*JPEG.*\.png"):
        write_segmentation(tmp_path / "seg.jpg", np.zeros((3, 3), np.uint8), Geometry.natural())
    assert not (tmp_path / "seg.jpg").exists()


def test_writing_a_volume_as_png_is_refused(tmp_path):
    with pytest.raises(AutomedsamError, match=r"Cannot write a 3D volume as vol\.png"):
        write_image(tmp_path / "vol.png", np.zeros((2, 3, 3), np.uint8), OBLIQUE)


def test_geometry_json_round_trip_and_mismatch():
    assert Geometry.from_json(OBLIQUE.to_json()) == OBLIQUE
    shifted = Geometry.from_json({**OBLIQUE.to_json(), "spacing": [0.7, 0.8, 3.0]})
    assert "spacing" in geometry_mismatch(OBLIQUE, shifted)
    assert geometry_mismatch(OBLIQUE, Geometry.natural()) == "3D vs 2D"


@pytest.mark.realdata
def test_reads_real_hc18_and_acdc(shared_data):
    image, geometry = read_image(shared_data / "HC18" / "training_set" / "000_HC.png")
    assert image.ndim == 2 and image.dtype == np.uint8 and geometry.kind == "natural"
    outline, _ = read_segmentation(shared_data / "HC18" / "training_set" / "000_HC_Annotation.png", binarise=True)
    assert set(np.unique(outline)) == {0, 1}
    gt, geometry = read_segmentation(shared_data / "ACDC" / "training" / "patient001" / "patient001_frame01_gt.nii.gz")
    assert gt.ndim == 3 and set(np.unique(gt)) == {0, 1, 2, 3} and geometry.ndim == 3


def test_writing_colour_to_a_volume_format_is_refused(tmp_path):
    colour = np.zeros((3, 4, 3), np.uint8)
    with pytest.raises(AutomedsamError, match=r"colour image .*rgb\.nii\.gz.*\.png or \.tif"):
        write_image(tmp_path / "rgb.nii.gz", colour, Geometry.natural())
    write_image(tmp_path / "rgb.png", colour + np.array([1, 2, 3]), Geometry.natural())
    assert np.array_equal(read_image(tmp_path / "rgb.png")[0], colour + np.array([1, 2, 3], np.uint8))


def test_a_folder_that_refuses_files_is_reported_with_the_reason(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path))

    monkeypatch.setattr("automedsam.files.tempfile.mkstemp", refuse)
    target = tmp_path / "predictions" / "case.png"
    with pytest.raises(AutomedsamError, match=r"Cannot write .*case\.png: Permission denied\. Choose a location"):
        write_segmentation(target, np.zeros((4, 5), np.uint8), Geometry.natural())
    assert not target.exists()


def _volume_geometry(tmp_path):
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((3, 4, 5), np.uint8)), str(tmp_path / "ref.nii.gz"))
    return read_image(tmp_path / "ref.nii.gz")[1]


@pytest.mark.parametrize("ending", [".nii.gz", ".nii"])
def test_a_nifti_file_left_truncated_by_a_full_disk_never_replaces_the_output(tmp_path, monkeypatch, ending):
    """SimpleITK's NIfTI writer leaves a truncated file on a full disk without raising (seen on a full tmpfs), and
    its reader fills the missing data with zeros: the prediction was reported as written."""
    real_write = sitk.WriteImage

    def write_then_lose_the_tail(image, path, *args, **kwargs):
        real_write(image, path, *args, **kwargs)
        with open(path, "r+b") as file:
            file.truncate(max(file.seek(0, 2) * 2 // 3, 400))

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, size=(12, 40, 50)).astype(np.uint8)
    geometry = _volume_geometry(tmp_path)
    target = tmp_path / "pred" / f"case{ending}"
    write_segmentation(target, labels, geometry)
    monkeypatch.setattr(sitk, "WriteImage", write_then_lose_the_tail)
    with pytest.raises(AutomedsamError, match=r"Cannot write .*case\.nii.* could not be written completely"):
        write_segmentation(target, labels[::-1].copy(), geometry)
    assert np.array_equal(read_image(target)[0], labels)  # the earlier file is intact
    assert sorted(path.name for path in target.parent.iterdir()) == [target.name]


def test_a_full_disk_while_writing_a_png_is_reported_with_the_reason(tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", full)
    target = tmp_path / "pred" / "case.png"
    with pytest.raises(AutomedsamError, match=r"Cannot write .*case\.png: the file could not be written completely"):
        write_segmentation(target, np.zeros((4, 5), np.uint8), Geometry.natural())
    assert not target.exists() and not any(target.parent.iterdir())


def _writer_failing_with(exc: BaseException):
    def fail(tmp):
        tmp.write_bytes(b"part")
        raise exc
    return fail


def test_a_full_disk_or_quota_during_any_atomic_write_is_reported_and_nothing_is_left(tmp_path, monkeypatch):
    """json, numpy and torch writes on a full disk raised OSError (ENOSPC, or numpy's "requested and written") or
    torch's RuntimeError ("unexpected pos"): a traceback."""
    target = tmp_path / "out" / "state.pt"
    for exc in (OSError(errno.ENOSPC, "No space left on device"), OSError(errno.EDQUOT, "Disk quota exceeded")):
        with pytest.raises(AutomedsamError, match=r"Cannot write .*state\.pt: the file could not be written"):
            with atomic_path(target) as tmp:
                _writer_failing_with(exc)(tmp)
    monkeypatch.setattr("automedsam.files.shutil.disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9, 0))
    with pytest.raises(AutomedsamError, match=r"\(0 MiB free on that disk"):  # no errno: the space left decides
        with atomic_path(target) as tmp:
            _writer_failing_with(RuntimeError("unexpected pos 576 vs 534"))(tmp)
    assert not any((tmp_path / "out").iterdir())


def test_a_writer_bug_with_space_left_stays_a_traceback(tmp_path):
    with pytest.raises(RuntimeError, match="a bug"):
        with atomic_path(tmp_path / "state.pt") as tmp:
            _writer_failing_with(RuntimeError("a bug"))(tmp)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("content, reason", [("[" * 200000, "nested too deeply"), ("7" * 5000, "digits")])
def test_json_that_python_cannot_parse_is_a_readable_error(tmp_path, content, reason):
    """json.loads raises RecursionError on deep nesting and ValueError on a 5000-digit integer, not JSONDecodeError:
    a --boxes file like these gave a traceback."""
    (tmp_path / "deep.json").write_text(content)
    with pytest.raises(AutomedsamError, match=rf"boxes file .*deep\.json is not valid JSON \(.*{reason}.*Fix or"):
        load_json(tmp_path / "deep.json", "boxes file")


def test_a_photo_is_read_as_viewers_show_it(tmp_path: Path):
    """A phone photo stores its rotation in EXIF: a mask drawn on the displayed photo must overlay what is read."""
    pixels = np.zeros((20, 30, 3), np.uint8)
    pixels[:5, :10] = 255  # a bright corner, top left as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    Image.fromarray(pixels).save(tmp_path / "photo.jpg", exif=exif, quality=95)
    read, geometry = read_image(tmp_path / "photo.jpg")
    assert read.shape == (30, 20) and geometry.kind == "natural"  # grey stored as colour is read as grey
    assert read[:10, -5:].mean() > 200 and read[-10:, :5].mean() < 50  # the corner is top right once displayed


AS_DISPLAYED = {1: lambda x: x, 2: np.fliplr, 3: lambda x: np.rot90(x, 2), 4: np.flipud,  # by TIFF orientation
                5: lambda x: np.flipud(np.rot90(x)), 6: lambda x: np.rot90(x, 3), 7: lambda x: np.fliplr(np.rot90(x)),
                8: np.rot90}


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("kind", ["grey8", "grey16", "rgb8", "rgb16"])
def test_a_tiff_with_an_orientation_tag_is_read_as_viewers_show_it_with_all_its_bits(tmp_path, kind, orientation):
    """Pillow 13 turns TIFFs while loading them and scrambled grey ones of orientations 5-8; ITK read a turned 16-bit
    colour TIFF with its 8-bit reader."""
    stored = np.random.default_rng(orientation).integers(0, 60000, (6, 9, 3)).astype(np.uint16)
    stored = stored[..., 0] if kind.startswith("grey") else stored
    stored = (stored >> 8).astype(np.uint8) if kind.endswith("8") else stored
    path = tmp_path / f"{kind}.tif"
    if kind == "rgb16":
        write_raw_tiff(path, stored, orientation=orientation)
    else:
        Image.fromarray(stored).save(path, tiffinfo={274: orientation})
    read = read_image(path)[0]
    assert read.dtype == stored.dtype and np.array_equal(read, AS_DISPLAYED[orientation](stored))


@pytest.mark.parametrize("extension", [".MHA", ".Mha", ".NRRD", ".Nrrd"])
def test_a_volume_under_an_upper_case_extension_reads_as_under_its_lower_case_one(tmp_path, extension):
    volume = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    geometry = Geometry(spacing=(0.5, 0.7, 2.0), origin=(1.0, 2.0, 3.0), direction=(1, 0, 0, 0, 1, 0, 0, 0, 1),
                        kind="sitk")
    lower = tmp_path / f"v{extension.lower()}"
    write_image(lower, volume, geometry)
    shutil.copy(lower, tmp_path / f"w{extension}")
    pixels, read = read_image(tmp_path / f"w{extension}")
    assert np.array_equal(pixels, volume) and read == read_image(lower)[1]


def test_a_nifti_file_under_a_mixed_case_extension_is_refused_with_the_true_reason(tmp_path):
    write_image(tmp_path / "v.nii.gz", np.zeros((2, 3, 4), np.int16), Geometry((1.0,) * 3, (0.0,) * 3,
                                                                              (1, 0, 0, 0, 1, 0, 0, 0, 1), "sitk"))
    shutil.copy(tmp_path / "v.nii.gz", tmp_path / "w.Nii.gz")
    with pytest.raises(AutomedsamError, match=r"only under \.nii\.gz or \.NII\.GZ, not \.Nii\.gz\. Rename"):
        read_image(tmp_path / "w.Nii.gz")


def test_a_16_bit_colour_png_keeps_its_16_bits(tmp_path):
    pixels = np.zeros((4, 5, 3), np.uint16)
    pixels[0, 0], pixels[0, 1] = (1000, 2000, 3000), (1001, 2001, 3001)
    sitk.WriteImage(sitk.GetImageFromArray(pixels, isVector=True), str(tmp_path / "rgb16.png"))
    read = read_image(tmp_path / "rgb16.png")[0]
    assert read.dtype == np.uint16 and np.array_equal(read, pixels), "Pillow gave 8 bits: both pixels [3, 7, 11]"


def write_raw_tiff(path: Path, pixels: np.ndarray, *, photometric: int = 2, extra_samples: tuple[int, ...] = (),
                   planar: bool = False, tiled: bool = False, orientation: int | None = None) -> None:
    """An uncompressed TIFF of `pixels` (H, W, samples; uint8 or uint16) written byte by byte, as Pillow writes
    neither 16-bit colour nor most files of several values per pixel: samples interleaved in one strip, in separate
    planes (one strip each), or in tiles of 16 x 16 pixels (`pixels` then a multiple of 16 wide and high), with
    ExtraSamples and an Orientation tag if given. Layout: header, blocks, values too long for their entry,
    directory."""
    height, width, samples = pixels.shape
    stored = pixels.astype(pixels.dtype.newbyteorder("<"))
    if planar:
        blocks = [stored[..., sample].tobytes() for sample in range(samples)]
    elif tiled:
        blocks = [stored[row:row + 16, col:col + 16].tobytes() for row in range(0, height, 16)
                  for col in range(0, width, 16)]
    else:
        blocks = [stored.tobytes()]
    sizes = [len(block) for block in blocks]
    offsets = [8 + sum(sizes[:index]) for index in range(len(blocks))]
    tags = {256: (4, [width]), 257: (4, [height]), 258: (3, [8 * pixels.itemsize] * samples), 259: (3, [1]),
            262: (3, [photometric]), 277: (3, [samples]), 284: (3, [2 if planar else 1])}
    if extra_samples:
        tags[338] = (3, list(extra_samples))
    if orientation is not None:
        tags[274] = (3, [orientation])
    if tiled:
        tags.update({322: (3, [16]), 323: (3, [16]), 324: (4, offsets), 325: (4, sizes)})
    else:
        tags.update({273: (4, offsets), 278: (4, [height]), 279: (4, sizes)})
    body, entries = b"".join(blocks), b""
    for tag, (kind, values) in sorted(tags.items()):
        packed = struct.pack(f"<{len(values)}{'H' if kind == 3 else 'I'}", *values)
        if len(packed) > 4:  # the entry holds where the values lie
            body, packed = body + packed, struct.pack("<I", 8 + len(body))
        entries += struct.pack("<HHI", tag, kind, len(values)) + packed.ljust(4, b"\0")
    path.write_bytes(b"II" + struct.pack("<HI", 42, 8 + len(body)) + body + struct.pack("<H", len(tags)) + entries
                     + struct.pack("<I", 0))


@pytest.mark.parametrize(("layout", "stored"), [("planar", "in separate colour planes"), ("tiled", "in tiles")])
def test_a_16_bit_colour_tiff_in_planes_or_tiles_is_refused_not_cut_to_8_bits(tmp_path, layout, stored):
    """Pillow read the planes as 8-bit garbage; ITK's TIFF reader cut the tiles to 8 bits with a note on stderr."""
    pixels = (np.random.default_rng(0).random((32, 48, 3)) * 60000).astype(np.uint16)
    write_raw_tiff(tmp_path / "interleaved.tif", pixels)
    np.testing.assert_array_equal(read_image(tmp_path / "interleaved.tif")[0], pixels)
    write_raw_tiff(tmp_path / f"{layout}.tif", pixels, **{layout: True})
    with pytest.raises(AutomedsamError, match=rf"{layout}\.tif is a 16-bit colour TIFF stored {stored}.*16-bit PNG"):
        read_image(tmp_path / f"{layout}.tif")


TIFF_PIXELS = np.random.default_rng(3).integers(0, 256, (32, 48, 4)).astype(np.uint8)


@pytest.mark.parametrize(("name", "pixels", "tiff", "described"), [
    ("two_interleaved", TIFF_PIXELS[..., :2], {"photometric": 1, "extra_samples": (0,)}, "2 values per pixel;"),
    ("two_16_bit", TIFF_PIXELS[..., :2].astype(np.uint16) * 257, {"photometric": 1}, "2 values per pixel;"),
    ("two_planes", TIFF_PIXELS[..., :2], {"photometric": 1, "planar": True}, "2 values per pixel;"),
    ("three_grey", TIFF_PIXELS[..., :3], {"photometric": 1}, "3 values per pixel;"),
    ("rgb_and_one_more", TIFF_PIXELS, {"extra_samples": (0,)}, r"4 values per pixel \(3 colour values and 1 other, "
                                                                 r"not alpha\);"),
    ("rgb_and_two_more", np.dstack([TIFF_PIXELS, TIFF_PIXELS[..., 0]]), {"extra_samples": (2, 0)},
     r"5 values per pixel \(3 colour values and 2 others\);"),
])
def test_a_tiff_of_several_values_per_pixel_is_refused_as_such(tmp_path, name, pixels, tiff, described):
    """Pillow read the first of two interleaved 8-bit samples and an RGB TIFF's colour without its unspecified fourth
    sample, saying nothing, and called the other layouts corrupt files to copy again."""
    write_raw_tiff(tmp_path / f"{name}.tif", pixels, **tiff)
    with pytest.raises(AutomedsamError, match=rf"{name}\.tif has {described} automedsam expects one channel per file"
                                              r".*its own file \(CASE_0000, CASE_0001, \.\.\.\)"):
        read_image(tmp_path / f"{name}.tif")


@pytest.mark.parametrize(("name", "pixels", "tiff"), [
    ("rgb", TIFF_PIXELS[..., :3], {}),
    ("rgb_planes", TIFF_PIXELS[..., :3], {"planar": True}),
    ("rgb_16_bit", TIFF_PIXELS[..., :3].astype(np.uint16) * 257, {}),
    ("rgba", np.dstack([TIFF_PIXELS[..., :3], np.full((32, 48), 255, np.uint8)]), {"extra_samples": (2,)}),
    ("rgba_associated", np.dstack([TIFF_PIXELS[..., :3], np.full((32, 48), 255, np.uint8)]), {"extra_samples": (1,)}),
    ("rgba_planes", np.dstack([TIFF_PIXELS[..., :3], np.full((32, 48), 255, np.uint8)]),
     {"extra_samples": (2,), "planar": True}),
    ("grey_alpha", np.dstack([TIFF_PIXELS[..., :1], np.full((32, 48), 255, np.uint8)]),
     {"photometric": 1, "extra_samples": (2,)}),
])
def test_a_grey_or_colour_tiff_with_at_most_an_alpha_channel_reads_unchanged(tmp_path, name, pixels, tiff):
    """The check on values per pixel leaves what was read before: a colour, in planes too, with a constant alpha."""
    write_raw_tiff(tmp_path / f"{name}.tif", pixels, **tiff)
    expected = pixels[..., 0] if tiff.get("photometric") == 1 else pixels[..., :3]
    read = read_image(tmp_path / f"{name}.tif")[0]
    assert read.dtype == expected.dtype and np.array_equal(read, expected)


def test_a_folder_where_an_output_goes_is_the_users_error_not_a_traceback(tmp_path):
    (tmp_path / "case.png").mkdir()
    with pytest.raises(AutomedsamError, match="Cannot write .*case.png"):
        write_segmentation(tmp_path / "case.png", np.zeros((4, 4), np.uint8), Geometry((1.0, 1.0), (0.0, 0.0),
                                                                                       (1, 0, 0, 1), "natural"))


def test_a_broken_link_among_the_inputs_is_an_input_that_cannot_be_read(tmp_path):
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "b.png").symlink_to(tmp_path / "gone.png")
    inputs = discover_inputs(tmp_path)
    assert [image.case_id for image in inputs] == ["a", "b"], "b was left out without a word"
    with pytest.raises(AutomedsamError, match="b.png does not exist"):
        read_image(inputs[1].path)


def test_images_read_in_two_threads_leave_pillows_bomb_guard_as_it_was(tmp_path):
    """Each read saved and restored Image.MAX_IMAGE_PIXELS alone: a thread that entered while another had the guard
    off saved None and restored it last, leaving the guard off for the whole process."""
    import sys
    import threading

    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(tmp_path / "a.png")
    before, interval = Image.MAX_IMAGE_PIXELS, sys.getswitchinterval()

    def read_many() -> None:
        for _ in range(300):
            read_image(tmp_path / "a.png")

    threads = [threading.Thread(target=read_many) for _ in range(2)]
    sys.setswitchinterval(1e-6)  # threads take turns often, as they do where decoding releases the GIL
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
        after, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, before
    assert after == before, "the decompression-bomb guard was left off"


def write_2d_nifti(path: Path, pixels: np.ndarray, affine: np.ndarray, *, version: int = 1) -> None:
    """A 2D NIfTI slice (dim[0] = 2) whose sform and qform are `affine` (a rotation times the voxel size, RAS), as
    nibabel saves a slice cut from a volume. `pixels` are (Y, X) int16."""
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    rotation = affine[:3, :3] / spacing
    a = np.sqrt(1.0 + np.trace(rotation)) / 2  # the quaternion of a rotation whose angle is below 180 degrees
    quatern = [(rotation[2, 1] - rotation[1, 2]) / (4 * a), (rotation[0, 2] - rotation[2, 0]) / (4 * a),
               (rotation[1, 0] - rotation[0, 1]) / (4 * a), *affine[:3, 3]]
    real, whole = ("f", "h") if version == 1 else ("d", "i")
    fields = ({"sizeof": 348, "dim": 40, "type": 70, "pixdim": 76, "offset": 108, "units": 123, "codes": 252,
               "quatern": 256, "srow": 280, "magic": 344} if version == 1 else
              {"sizeof": 540, "magic": 4, "type": 12, "dim": 16, "pixdim": 104, "offset": 168, "codes": 344,
               "quatern": 352, "srow": 400, "units": 500})
    header = bytearray(fields["sizeof"] + 4)
    struct.pack_into("<i", header, 0, fields["sizeof"])
    struct.pack_into("<8" + ("h" if version == 1 else "q"), header, fields["dim"], 2, pixels.shape[1], pixels.shape[0],
                     1, 1, 1, 1, 1)
    struct.pack_into("<2h", header, fields["type"], 4, 16)  # int16
    struct.pack_into(f"<8{real}", header, fields["pixdim"], 1.0, *spacing, 1.0, 1.0, 1.0, 1.0)
    struct.pack_into("<f" if version == 1 else "<q", header, fields["offset"], len(header))
    struct.pack_into("<B" if version == 1 else "<i", header, fields["units"], 2)  # mm
    struct.pack_into(f"<2{whole}", header, fields["codes"], 1, 1)  # scanner
    struct.pack_into(f"<6{real}", header, fields["quatern"], *quatern)
    struct.pack_into(f"<12{real}", header, fields["srow"], *affine[:3].ravel())
    magic = b"n+1\0" if version == 1 else b"n+2\0\r\n\x1a\n"
    header[fields["magic"]:fields["magic"] + len(magic)] = magic
    data = bytes(header) + pixels.astype("<i2").tobytes()  # (Y, X) in C order is x fastest, as NIfTI stores it
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)


def nifti_1_placement(path: Path) -> tuple:
    """The spatial fields of a NIfTI-1 header: pixdim[0:4], space unit, qform/sform codes, quaternion, srow."""
    header = (gzip.open(path) if path.name.endswith(".gz") else open(path, "rb")).read(348)
    assert struct.unpack_from("<i", header)[0] == 348
    return (struct.unpack_from("<4f", header, 76), header[123] & 7, struct.unpack_from("<2h", header, 252),
            struct.unpack_from("<6f", header, 256), struct.unpack_from("<12f", header, 280))


def tilted_affine(degrees: float) -> np.ndarray:
    """A slice 0.5 x 0.7 mm tilted `degrees` about x, its first voxel at (-40, 25, 63) mm."""
    angle = np.deg2rad(degrees)
    affine = np.eye(4)
    affine[:3, :3] = np.array([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]])
    affine[:3, :3] *= [0.5, 0.7, 1.0]
    affine[:3, 3] = [-40.0, 25.0, 63.0]
    return affine


@pytest.mark.parametrize("extension", [".nii.gz", ".nii"])
def test_a_2d_nifti_slice_placed_in_3d_gives_its_label_map_the_same_placement(tmp_path, extension):
    """ITK reads a 2D NIfTI file's in-plane geometry only: the label map of a slice tilted 25 degrees at z = 63 mm
    was written flat at z = 0, where header-based readers (nibabel) put it ~69 mm from its image."""
    pixels = np.random.default_rng(0).integers(0, 1000, (6, 8)).astype(np.int16)
    write_2d_nifti(tmp_path / f"slice{extension}", pixels, tilted_affine(25.0))
    image, geometry = read_image(tmp_path / f"slice{extension}")
    assert np.array_equal(image, pixels) and geometry.ndim == 2 and Geometry.from_json(geometry.to_json()) == geometry
    write_segmentation(tmp_path / f"seg{extension}", image > 500, geometry)
    assert nifti_1_placement(tmp_path / f"seg{extension}") == nifti_1_placement(tmp_path / f"slice{extension}")
    mask, mask_geometry = read_segmentation(tmp_path / f"seg{extension}")  # as training reads it
    assert np.array_equal(mask, image > 500) and mask_geometry == geometry
    assert geometry_mismatch(mask_geometry, read_image(tmp_path / f"seg{extension}")[1]) is None
    write_image(tmp_path / f"copy{extension}", image, geometry)
    assert nifti_1_placement(tmp_path / f"copy{extension}") == nifti_1_placement(tmp_path / f"slice{extension}")
    with pytest.raises(AutomedsamError, match=r"seg\.nrrd: its image is a 2D NIfTI slice placed in 3D.*\.nii\.gz"):
        write_segmentation(tmp_path / "seg.nrrd", image > 500, geometry)


def test_a_label_map_placed_in_3d_is_written_to_the_same_bytes_each_time(tmp_path):
    """gzip stored the time and the temporary file's name: each write of the same map gave other bytes, so
    automedsam_convert --overwrite took every such mask for changed and preprocessing wrote its samples again."""
    pixels = np.random.default_rng(0).integers(0, 1000, (6, 8)).astype(np.int16)
    write_2d_nifti(tmp_path / "slice.nii.gz", pixels, tilted_affine(25.0))
    image, geometry = read_image(tmp_path / "slice.nii.gz")
    written = []
    for name in ("first", "second"):
        write_segmentation(tmp_path / f"{name}.nii.gz", image > 500, geometry)
        written.append((tmp_path / f"{name}.nii.gz").read_bytes())
        time.sleep(1.1)  # gzip's header keeps whole seconds
    assert written[0] == written[1]


def test_slice_placement_is_the_placement_of_a_2d_nifti_slice_alone(tmp_path):
    """What a mask written flat by ITK needs to be written over its tilted slice (Segment images' masked cases)."""
    write_2d_nifti(tmp_path / "slice.nii.gz", np.zeros((6, 8), np.int16), tilted_affine(25.0))
    assert slice_placement(tmp_path / "slice.nii.gz") == read_image(tmp_path / "slice.nii.gz")[1].placement
    assert slice_placement(tmp_path / "slice.nii.gz") is not None
    write_segmentation(tmp_path / "volume.nii.gz", np.zeros((2, 6, 8), np.uint8),
                       Geometry(spacing=(1.0, 1.0, 2.0), origin=(0.0, 0.0, 0.0),
                                direction=tuple(np.eye(3).ravel()), kind="sitk"))
    Image.fromarray(np.zeros((6, 8), np.uint8)).save(tmp_path / "photo.png")
    assert [slice_placement(tmp_path / name) for name in ("volume.nii.gz", "photo.png")] == [None, None]


def place_sform_elsewhere(path: Path, *, shift_mm: float) -> None:
    """Move a NIfTI-1 file's sform `shift_mm` along x with code 2 (aligned), leaving its qform: what FSL or SPM
    write after a registration."""
    header = bytearray(gzip.decompress(path.read_bytes()))
    struct.pack_into("<h", header, 254, 2)
    struct.pack_into("<f", header, 280 + 12, struct.unpack_from("<f", header, 280 + 12)[0] + shift_mm)
    path.write_bytes(gzip.compress(bytes(header)))


def test_a_nifti_volume_whose_sform_differs_from_its_qform_gives_its_label_map_both(tmp_path):
    """ITK reads the qform: the label map was written with sform = qform, 20 mm from its image for sform-based
    readers (nibabel, FSLeyes)."""
    pixels = np.random.default_rng(0).integers(0, 1000, (3, 6, 8)).astype(np.int16)
    image = sitk.GetImageFromArray(pixels)
    image.SetSpacing((0.7, 0.8, 2.5))
    image.SetOrigin((-10.0, 20.5, 3.0))
    cos, sin = np.cos(np.deg2rad(20.0)), np.sin(np.deg2rad(20.0))
    image.SetDirection((1.0, 0.0, 0.0, 0.0, cos, -sin, 0.0, sin, cos))  # oblique: a tilt about x
    sitk.WriteImage(image, str(tmp_path / "volume.nii.gz"))
    place_sform_elsewhere(tmp_path / "volume.nii.gz", shift_mm=20.0)
    array, geometry = read_image(tmp_path / "volume.nii.gz")
    assert np.array_equal(array, pixels) and geometry.origin == pytest.approx((-10.0, 20.5, 3.0))
    assert Geometry.from_json(geometry.to_json()) == geometry
    assert slice_placement(tmp_path / "volume.nii.gz") == geometry.placement  # a copied mask's placement
    write_segmentation(tmp_path / "seg.nii.gz", array > 500, geometry)
    assert nifti_1_placement(tmp_path / "seg.nii.gz") == nifti_1_placement(tmp_path / "volume.nii.gz")
    mask, mask_geometry = read_segmentation(tmp_path / "seg.nii.gz")
    assert np.array_equal(mask, array > 500) and mask_geometry == geometry
    with pytest.raises(AutomedsamError, match=r"seg\.mha: its image is a NIfTI volume placed twice \(its sform "
                                              r"differs from its qform\).*\.nii\.gz"):
        write_segmentation(tmp_path / "seg.mha", array > 500, geometry)


def test_a_2d_nifti_slice_in_its_plane_is_read_and_written_as_before(tmp_path):
    """A slice whose header only rotates it in its plane at z = 0 needs no more than ITK's 2D geometry."""
    affine = tilted_affine(0.0)
    affine[:3, 3] = [-40.0, 25.0, 0.0]
    write_2d_nifti(tmp_path / "slice.nii.gz", np.zeros((6, 8), np.int16), affine)
    geometry = read_image(tmp_path / "slice.nii.gz")[1]
    assert geometry == Geometry(spacing=(0.5, 0.699999988079071), origin=(40.0, -25.0),
                                direction=(-1.0, 0.0, 0.0, -1.0), kind="sitk")
    write_segmentation(tmp_path / "seg.nrrd", np.zeros((6, 8), np.uint8), geometry)
    assert read_segmentation(tmp_path / "seg.nrrd")[1] == geometry


@pytest.mark.parametrize("direction", [(1, 0, 0, 1), (0, 1, 1, 0), (0.8, -0.6, 0.6, 0.8), (-1, 0, 0, 1)])
def test_a_2d_nifti_file_that_itk_wrote_needs_no_more_than_its_2d_geometry(tmp_path, direction):
    """A mirrored one's half-turn quaternion, stored in float32, must not read as a slice placed out of its plane."""
    geometry = Geometry(spacing=(0.5, 0.7), origin=(3.3, -4.1), direction=direction, kind="sitk")
    write_image(tmp_path / "slice.nii.gz", np.zeros((6, 8), np.int16), geometry)
    read = read_image(tmp_path / "slice.nii.gz")[1]
    assert read.placement is None and geometry_mismatch(read, geometry, tolerance=1e-6) is None


def test_a_nifti_2_file_is_refused_as_a_format_not_as_a_corrupt_file(tmp_path):
    """ITK reads NIfTI-1 only: a valid NIfTI-2 slice was called corrupt or truncated."""
    write_2d_nifti(tmp_path / "slice.nii", np.zeros((6, 8), np.int16), tilted_affine(25.0), version=2)
    with pytest.raises(AutomedsamError, match=r"slice\.nii is a NIfTI-2 file, which ITK's reader does not support\. "
                                              r"Save it as NIfTI-1") as raised:
        read_image(tmp_path / "slice.nii")
    assert "corrupt" not in str(raised.value)


def test_a_2d_nrrd_placed_in_3d_space_is_refused_as_a_layout_not_as_a_corrupt_file(tmp_path):
    """ITK refuses `dimension: 2` with a 3D `space`; that file is valid, not corrupt."""
    header = ("NRRD0004\ntype: short\ndimension: 2\nspace: left-posterior-superior\nsizes: 8 6\n"
              "space directions: (0.5,0,0) (0,0.634,0.296)\nkinds: domain domain\nendian: little\nencoding: raw\n"
              "space origin: (-40,25,63)\n\n")
    (tmp_path / "slice.nrrd").write_bytes(header.encode() + np.zeros((6, 8), "<i2").tobytes())
    with pytest.raises(AutomedsamError, match=r"slice\.nrrd is a 2D NRRD image placed in 3D space.*does not support.*"
                                              r"3D volume with one slice.*\.nii\.gz") as raised:
        read_image(tmp_path / "slice.nrrd")
    assert "corrupt" not in str(raised.value)


def patch_nifti_1_header(path: Path, offset: int, layout: str, *values: float) -> None:
    """Overwrite header fields of a NIfTI-1 file (.nii or .nii.gz) in place: what a broken exporter writes."""
    compressed = path.name.endswith(".gz")
    data = bytearray(gzip.decompress(path.read_bytes()) if compressed else path.read_bytes())
    struct.pack_into(layout, data, offset, *values)
    path.write_bytes(gzip.compress(bytes(data)) if compressed else bytes(data))


@pytest.mark.parametrize("size, shown", [(0.0, "0"), (np.nan, "nan"), (np.inf, "inf")])
@pytest.mark.parametrize("extension", [".nii.gz", ".nii"])
def test_a_nifti_voxel_size_of_zero_nan_or_infinity_is_refused_not_read_as_1_mm(tmp_path, size, shown, extension):
    """ITK read pixdim[3] = 0 as 1 mm with only a warning on stderr: 5 mm slices then looked finer than the 1.5 mm
    pixels, and the planner sliced the volumes along an in-plane axis."""
    path = tmp_path / f"volume{extension}"
    write_image(path, np.zeros((4, 5, 6), np.float32), OBLIQUE)
    patch_nifti_1_header(path, 76 + 3 * 4, "<f", size)  # pixdim[3]: the voxel size along z
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's invalid value in the qform of an infinite voxel size
        slice_placement(path)
        with pytest.raises(AutomedsamError, match=rf"volume\.nii.* gives its axis 3 \(z\) a voxel size of {shown} "
                                                  r"\(pixdim\[3\].*ITK would read as 1 mm\. Set the voxel size.*"
                                                  r"set_zooms.*save the image again"):
            read_image(path)


@pytest.mark.parametrize("axis", [1, 3])
@pytest.mark.parametrize("extension", [".nii.gz", ".nii"])
def test_a_negative_nifti_voxel_size_is_refused_not_read_as_a_mirrored_axis(tmp_path, axis, extension):
    """ITK read pixdim[1] = -2 as 2 mm with the x axis mirrored: the image lay mirrored from where its sform put it,
    and from its label map saved with the same sform (the dataset check then said they differ in direction)."""
    path = tmp_path / f"volume{extension}"
    write_image(path, np.zeros((4, 5, 6), np.float32), OBLIQUE)
    itk_steps = np.reshape(sitk.ReadImage(str(path)).GetDirection(), (3, 3))
    size = nifti_1_placement(path)[0][axis]
    patch_nifti_1_header(path, 76 + axis * 4, "<f", -size)
    mirrored = np.reshape(sitk.ReadImage(str(path)).GetDirection(), (3, 3))
    assert np.allclose(mirrored[:, axis - 1], -itk_steps[:, axis - 1]), "what ITK does with it"
    with pytest.raises(AutomedsamError, match=rf"volume\.nii.* gives its axis {axis} \({'xyz'[axis - 1]}\) a voxel "
                                              rf"size of -{size:g} \(pixdim\[{axis}\].*ITK would read as {size:g} mm "
                                              r"with that axis mirrored\. Set the voxel size in mm, positive.*set_zooms"
                                              r".*save the image again"):
        read_image(path)


@pytest.mark.parametrize("extension", [".nii.gz", ".nii"])
def test_a_nifti_file_placed_nowhere_gives_its_label_map_no_placement_either(tmp_path, extension):
    """qform_code = sform_code = 0 (nibabel's Nifti1Image(array, None)): header-based readers place such an image by
    its voxel size alone; its label map got codes 1 and ITK's LPS placement, flipped in y and shifted from it."""
    pixels = np.random.default_rng(0).integers(0, 1000, (5, 6, 8)).astype(np.int16)
    image = sitk.GetImageFromArray(pixels)
    image.SetSpacing((0.8, 0.8, 4.0))
    sitk.WriteImage(image, str(tmp_path / f"image{extension}"))
    patch_nifti_1_header(tmp_path / f"image{extension}", 252, "<2h", 0, 0)
    array, geometry = read_image(tmp_path / f"image{extension}")
    assert np.array_equal(array, pixels) and Geometry.from_json(geometry.to_json()) == geometry
    write_segmentation(tmp_path / f"seg{extension}", array > 500, geometry)
    seg_placement, image_placement = (nifti_1_placement(tmp_path / f"{name}{extension}") for name in ("seg", "image"))
    assert image_placement[2] == (0, 0) and image_placement[0][1:] == pytest.approx((0.8, 0.8, 4.0))
    assert seg_placement[2] == (0, 0) and seg_placement[0] == image_placement[0]
    assert seg_placement == image_placement
    mask, mask_geometry = read_segmentation(tmp_path / f"seg{extension}")
    assert np.array_equal(mask, array > 500) and mask_geometry == geometry
    write_segmentation(tmp_path / "seg.mha", array > 500, geometry)  # no placement to lose: as ITK reads the image
    assert geometry_mismatch(read_segmentation(tmp_path / "seg.mha")[1], geometry) is None


def write_grey_alpha_16_bit_png(path: Path, grey: np.ndarray, alpha: np.ndarray) -> None:
    """A PNG of colour type 4 (grey and alpha), 16 bits each, written byte by byte (Pillow cannot write one), its
    rows filtered by Sub (each byte less the one a pixel before), so that decoding must know a pixel's 4 bytes."""
    pixels = np.stack([grey, alpha], axis=-1).astype(">u2").view(np.uint8).reshape(grey.shape[0], -1)
    filtered = pixels.copy()
    filtered[:, 4:] = pixels[:, 4:] - pixels[:, :-4]  # uint8: modulo 256, as PNG's filters are
    rows = b"".join(b"\x01" + row.tobytes() for row in filtered)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", grey.shape[1], grey.shape[0], 16, 4, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
                     + chunk(b"IEND", b""))


def test_a_16_bit_grey_and_alpha_png_reads_as_its_16_bit_grey_values(tmp_path):
    """ITK cannot read this valid PNG (it was called corrupt) and Pillow keeps 8 of its 16 bits."""
    grey = np.random.default_rng(0).integers(0, 65536, (6, 7)).astype(np.uint16)
    write_grey_alpha_16_bit_png(tmp_path / "opaque.png", grey, np.full_like(grey, 65535))
    read = read_image(tmp_path / "opaque.png")[0]
    assert read.dtype == np.uint16 and np.array_equal(read, grey)
    alpha = np.full_like(grey, 65535)
    alpha[0, 0] = 0
    write_grey_alpha_16_bit_png(tmp_path / "transparent.png", grey, alpha)
    with pytest.raises(AutomedsamError, match=r"transparent\.png.*transparency.*without transparency"):
        read_image(tmp_path / "transparent.png")


@pytest.mark.parametrize("value, shown", [(1e200, "1e+200"), (-3e300, "-3e+300")])
@pytest.mark.parametrize("extension", [".nii.gz", ".mha"])
def test_intensities_beyond_float32_are_refused(tmp_path, value, shown, extension):
    """float64 intensities of 1e200 became infinities where images are normalised in float32: fingerprint.json got
    Infinity and NaN, which strict JSON parsers reject."""
    volume = np.zeros((2, 3, 4), np.float64)
    volume[1, 1, 1], volume[0, 0, 0] = value, -value / 1e10
    write_image(tmp_path / f"huge{extension}", volume, OBLIQUE)
    with pytest.raises(AutomedsamError, match=rf"huge\.(nii\.gz|mha) holds an intensity of {re.escape(shown)}, beyond "
                                              r"the range of 32-bit floats.*Rescale.*save the image again"):
        read_image(tmp_path / f"huge{extension}")
    volume[1, 1, 1], volume[0, 0, 0] = 3e38, -3e38  # within float32's range
    write_image(tmp_path / f"large{extension}", volume, OBLIQUE)
    assert read_image(tmp_path / f"large{extension}")[0].max() == 3e38


def write_16_bit_png_with_exif(path: Path, pixels: np.ndarray, *, colour_type: int, orientation: int) -> None:
    """A 16-bit PNG (colour type 0 grey, 2 colour, 4 grey and alpha: channels last) with an eXIf chunk giving its
    orientation, written byte by byte: Pillow writes neither 16-bit colour nor grey and alpha."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in pixels)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", pixels.shape[1], pixels.shape[0], 16, colour_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"eXIf", exif.tobytes()[6:])  # no "Exif\0\0"
                     + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("kind", ["grey8", "rgb8", "grey16", "rgb16", "grey_alpha16"])
def test_a_png_with_an_exif_orientation_is_read_as_viewers_show_it_whatever_its_bit_depth(tmp_path, kind, orientation):
    """An 8-bit or 16-bit grey PNG was turned by its eXIf orientation, a 16-bit colour or grey+alpha one was not."""
    stored = np.random.default_rng(orientation).integers(0, 60000, (6, 9, 3)).astype(np.uint16)
    stored = stored[..., 0] if kind.startswith("grey") else stored
    path = tmp_path / f"{kind}.png"
    if kind.endswith("8"):
        stored = (stored >> 8).astype(np.uint8)
        exif = Image.Exif()
        exif[0x0112] = orientation
        Image.fromarray(stored).save(path, exif=exif)
    else:
        opaque = np.stack([stored, np.full_like(stored, 65535)], axis=-1) if kind == "grey_alpha16" else stored
        write_16_bit_png_with_exif(path, opaque, colour_type={"grey16": 0, "rgb16": 2, "grey_alpha16": 4}[kind],
                                   orientation=orientation)
    read = read_image(path)[0]
    assert read.dtype == stored.dtype and np.array_equal(read, AS_DISPLAYED[orientation](stored))
