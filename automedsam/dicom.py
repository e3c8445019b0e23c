"""DICOM as input: what a scanner or PACS exports, read without any other tool.

Two shapes are read, through SimpleITK's GDCM reader:
- a DICOM file (`.dcm`, `.dicom`, `.ima`, or no extension, recognised by its `DICM` preamble): a 2D image, or a volume
  when the file holds several frames;
- a folder holding the slices of one series, one file each (the usual export of a CT or MR series): a volume, with
  the slices ordered by their position.
A folder of images may hold both; a series folder's case id is the folder's name. DICOM is read only: the raw
dataset stores it as .nii.gz and predictions are written as .nii.gz with the image's geometry.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np
import SimpleITK as sitk

from automedsam.errors import AutomedsamError
from automedsam.nifti_check import short_reason, unreadable_error
from automedsam.samples import case_id_from_stem

DICOM_EXTENSIONS: tuple[str, ...] = (".dcm", ".dicom", ".ima")  # .IMA: Siemens exports
DICOM_OUTPUT_EXTENSION = ".nii.gz"  # what a DICOM input becomes in the raw dataset and in predictions
_PREAMBLE_END = 132  # 128 bytes of preamble, then b"DICM"
_POSITION = "0020|0032"  # Image Position (Patient): where a slice lies; a stack of 2D stills has none
_FRAMES = "0028|0008"
_SERIES = "0020|000e"  # Series Instance UID
_ORIENTATION = "0020|0037"  # Image Orientation (Patient): row and column directions
Slice = tuple[Path, str, tuple[float, ...], tuple[float, ...]]  # file, series UID, position, orientation


def is_dicom_file(path: str | os.PathLike) -> bool:
    """A file with a DICOM extension, or one without a known extension that starts like DICOM (PACS exports often
    name files IM0001 or by their UID)."""
    path = Path(path)
    if path.name.lower().endswith(DICOM_EXTENSIONS):
        return path.is_file()
    if path.suffix[1:] and not path.suffix[1:].isdigit():  # scan.png is no DICOM; 1.2.840.10008 may be
        return False
    if not path.is_file():
        return False
    try:
        with open(path, "rb") as handle:
            head = handle.read(_PREAMBLE_END)
    except OSError:
        return False
    return len(head) == _PREAMBLE_END and head[128:] == b"DICM"


def dicom_files(folder: Path) -> list[Path]:
    """The DICOM image files directly in `folder`, by name (a DICOMDIR index is not an image); [] when the folder
    cannot be listed (a system folder on a USB stick), since it holds nothing automedsam could read either."""
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return []
    return [path for path in entries if not path.name.startswith(".") and path.name.upper() != "DICOMDIR"
            and is_dicom_file(path)]


def series_slices(folder: Path) -> list[Path] | None:
    """The files of `folder` in slice order when they are the slices of one series (two or more single-frame files
    of one series, each at its own position, evenly spaced along one orientation), else None: 2D stills, single
    slices of different series, or no DICOM at all.

    What cannot be one volume nor separate images is refused with the fix: several series' slices in one folder,
    one series with several images per position (cine phases, echoes), uneven steps or mixed orientations."""
    files = dicom_files(folder)
    if len(files) < 2:
        return None
    slices = []
    for path in files:
        reader = _header(path)
        if not reader.HasMetaDataKey(_POSITION) or _frames(reader) > 1:
            return None
        slices.append((path, _tag(reader, _SERIES), _numbers(reader, _POSITION), _numbers(reader, _ORIENTATION)))
    series = {uid for _, uid, _, _ in slices}
    if len(series) > 1:
        if len(series) == len(files):
            return None  # one image of each series: separate 2D images
        raise AutomedsamError(f"{folder} holds the slices of {len(series)} DICOM series. Put each series in a "
                              "folder of its own: each folder is then one volume.")
    return _ordered_volume(folder, slices)


def _ordered_volume(folder: Path, slices: list[Slice]) -> list[Path] | None:
    """The slices of one series sorted along its normal, refused when they do not make one evenly spaced volume."""
    orientation = np.asarray(slices[0][3], dtype=float)
    if orientation.size != 6 or any(not np.allclose(other[3], orientation, atol=1e-4) for other in slices):
        raise AutomedsamError(f"{folder} holds DICOM slices of different orientations (a localizer among them?). "
                              "Keep the slices of one orientation in the folder.")
    normal = np.cross(orientation[:3], orientation[3:])
    depth = sorted((float(np.dot(position, normal)), path) for path, _, position, _ in slices)
    positions = [value for value, _ in depth]
    distinct = len(set(np.round(positions, 4)))
    if distinct == 1:
        return None  # every image at the same place: separate 2D images
    if distinct < len(positions):
        raise AutomedsamError(f"{folder} holds {len(positions)} DICOM images of one series at {distinct} positions "
                              "(cine phases, echoes or repeats). Split them into one folder per phase or echo: "
                              "each folder is then one volume.")
    steps = np.diff(positions)
    if not np.allclose(steps, np.median(steps), rtol=0.01, atol=1e-3):
        raise AutomedsamError(f"{folder} holds DICOM slices at uneven steps ({', '.join(f'{s:.3g}' for s in steps)} "
                              "mm): a slice is missing or belongs elsewhere. Complete the series, or keep evenly "
                              "spaced slices only.")
    return [path for _, path in depth]


def dicom_sources(folder: Path) -> dict[str, Path]:
    """Case id -> image for the DICOM in an images folder: each DICOM file directly in it (a 2D image or a multi-frame
    volume; id: the name without a DICOM extension or channel suffix), each subfolder holding one series (id: the
    subfolder's name), or the folder itself (id: its name) when its files are the slices of one series.

    Two sources of one case id, or a subfolder of DICOM files that are not one series, are refused: either would
    lose images without a word."""
    folder_name = folder.resolve().name
    if series_slices(folder) is not None:
        return {folder_name: folder}
    sources: dict[str, Path] = {}
    repeated = []
    try:
        subfolders = sorted(path for path in folder.iterdir() if path.is_dir() and not path.name.startswith("."))
    except OSError:
        subfolders = []
    for sub in subfolders:
        if series_slices(sub) is not None:
            sources[sub.name] = sub
        elif dicom_files(sub):
            raise AutomedsamError(f"{sub} holds DICOM files that are not the slices of one series (stills, single "
                                  "slices or multi-frame files): move them into the images folder itself, where "
                                  "each file is one image.")
    for path in dicom_files(folder):
        case_id = dicom_case_id(path)
        if case_id in sources:
            repeated.append(f"{sources[case_id].name} / {path.name}")
        sources[case_id] = path
    if repeated:
        raise AutomedsamError(f"{folder} holds several DICOM images of the same case id: {'; '.join(repeated)}. "
                              "Rename or remove one of each pair.")
    return sources


def dicom_layout(path: Path) -> tuple[int, int]:
    """(spatial dimensions, values per pixel) of a DICOM file or series folder, from the headers alone: a file of
    one frame is 2D, a file of several frames or a series folder 3D."""
    if path.is_dir():
        return 3, 1
    reader = _header(path)
    return (3 if _frames(reader) > 1 else 2), reader.GetNumberOfComponents()


def read_dicom(path: Path, *, check_size: Callable[[Path, int], None]) -> sitk.Image:
    """The image of a DICOM file (2D when it holds one frame) or of a series folder (3D); `check_size(path, voxels)`
    (io's size limit) runs on the headers' size before any pixel is read."""
    files = series_slices(path) if path.is_dir() else [path]
    if files is None:
        raise AutomedsamError(f"{path} is not a DICOM series: a series folder holds two or more slices of one "
                              "series, one file each, with their positions.")
    first = _header(files[0])
    size = list(first.GetSize())
    check_size(path, int(np.prod(size)) * len(files))
    try:
        if len(files) == 1:
            image = sitk.ReadImage(str(files[0]))
        else:
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames([str(file) for file in files])
            image = reader.Execute()
    except RuntimeError as exc:
        raise unreadable_error(path, short_reason(exc)) from None
    if image.GetDimension() == 3 and image.GetSize()[2] == 1:
        image = image[:, :, 0]  # one frame: a 2D image, its in-plane geometry kept
    if image.GetNumberOfComponentsPerPixel() not in (1, 3) or (image.GetNumberOfComponentsPerPixel() == 3
                                                               and image.GetDimension() == 3):
        raise AutomedsamError(f"{path} holds {image.GetNumberOfComponentsPerPixel()} values per pixel in "
                              f"{image.GetDimension()}D; automedsam reads gray images and volumes, and colour 2D "
                              "images. Export the series in gray (monochrome), or each frame as its own file.")
    return image


def _header(path: Path) -> sitk.ImageFileReader:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.SetImageIO("GDCMImageIO")
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise unreadable_error(path, short_reason(exc)) from None
    return reader


def _tag(reader: sitk.ImageFileReader, key: str) -> str:
    return reader.GetMetaData(key).strip() if reader.HasMetaDataKey(key) else ""


def _numbers(reader: sitk.ImageFileReader, key: str) -> tuple[float, ...]:
    try:
        return tuple(float(value) for value in _tag(reader, key).split("\\") if value.strip())
    except ValueError:
        return ()


def _frames(reader: sitk.ImageFileReader) -> int:
    frames = reader.GetMetaData(_FRAMES).strip() if reader.HasMetaDataKey(_FRAMES) else ""
    size = reader.GetSize()
    return max(int(frames) if frames.isdigit() else 1, size[2] if len(size) == 3 else 1)


def dicom_case_id(path: Path) -> str:
    """A DICOM file's name without its DICOM extension and channel suffix (a series folder's name as it is)."""
    name = path.name
    if name.lower().endswith(DICOM_EXTENSIONS):
        name = name[: name.rindex(".")]
    return case_id_from_stem(name)
