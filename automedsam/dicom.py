"""DICOM as input: what a scanner or PACS exports, read without any other tool.

Two shapes are read, through SimpleITK's GDCM reader:
- a DICOM file (`.dcm`, `.dicom`, or no extension at all, recognised by its `DICM` preamble): a 2D image, or a volume
  when the file holds several frames;
- a folder holding the slices of one series, one file each (the usual export of a CT or MR series): a volume, with
  the slices ordered by their position.
A folder of images may hold both; a series folder's case id is the folder's name. DICOM is read only: the raw
dataset stores it as .nii.gz and predictions are written as .nii.gz with the image's geometry.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from automedsam.errors import AutomedsamError
from automedsam.nifti_check import short_reason, unreadable_error

DICOM_EXTENSIONS: tuple[str, ...] = (".dcm", ".dicom")
DICOM_OUTPUT_EXTENSION = ".nii.gz"  # what a DICOM input becomes in the raw dataset and in predictions
_PREAMBLE_END = 132  # 128 bytes of preamble, then b"DICM"
_POSITION = "0020|0032"  # Image Position (Patient): where a slice lies; a stack of 2D stills has none
_FRAMES = "0028|0008"


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
    """The DICOM files directly in `folder`, by name."""
    return sorted(path for path in folder.iterdir() if not path.name.startswith(".") and is_dicom_file(path))


def series_slices(folder: Path) -> list[Path] | None:
    """The files of `folder` in slice order when they are the slices of one series (two or more single-frame files
    with a position each, at distinct positions), else None (a folder of 2D stills, or no DICOM at all).

    A folder that holds several series is refused: which one is the volume cannot be guessed."""
    files = dicom_files(folder)
    if len(files) < 2:
        return None
    positions = set()
    for path in files:
        reader = _header(path)
        if not reader.HasMetaDataKey(_POSITION) or _frames(reader) > 1:
            return None
        positions.add(reader.GetMetaData(_POSITION).strip())
    if len(positions) < len(files):
        return None
    series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if len(series) != 1:
        raise AutomedsamError(f"{folder} holds the slices of {len(series)} DICOM series. Put each series in a "
                              "folder of its own: each folder is then one volume.")
    ordered = [Path(name) for name in sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series[0])]
    if len(ordered) != len(files):
        raise AutomedsamError(f"{folder} holds {len(files)} DICOM files, of which {len(ordered)} read as slices of "
                              "its series. Remove the files that do not belong to the series.")
    return ordered


def dicom_sources(folder: Path) -> dict[str, Path]:
    """Case id -> image for the DICOM in an images folder: each DICOM file directly in it (a 2D image or a multi-frame
    volume; id: the name without a DICOM extension), each subfolder holding one series (id: the subfolder's name),
    or the folder itself (id: its name) when its files are the slices of one series."""
    if series_slices(folder) is not None:
        return {folder.name: folder}
    sources = {dicom_case_id(path): path for path in dicom_files(folder)}
    for sub in sorted(path for path in folder.iterdir() if path.is_dir() and not path.name.startswith(".")):
        if series_slices(sub) is not None:
            sources[sub.name] = sub
    return sources


def dicom_layout(path: Path) -> tuple[int, int]:
    """(spatial dimensions, values per pixel) of a DICOM file or series folder, from the headers alone: a file of
    one frame is 2D, a file of several frames or a series folder 3D."""
    if path.is_dir():
        return 3, 1
    reader = _header(path)
    return (3 if _frames(reader) > 1 else 2), reader.GetNumberOfComponents()


def read_dicom(path: Path, *, max_pixels: int) -> sitk.Image:
    """The image of a DICOM file (2D when it holds one frame) or of a series folder (3D); at most `max_pixels`."""
    files = series_slices(path) if path.is_dir() else [path]
    if files is None:
        raise AutomedsamError(f"{path} is not a DICOM series: a series folder holds two or more slices of one "
                              "series, one file each, with their positions.")
    first = _header(files[0])
    size = list(first.GetSize())
    count = int(np.prod(size)) * len(files)
    if count > max_pixels:
        raise AutomedsamError(f"{path} has {count} pixels/voxels, more than the limit of {max_pixels}. Crop or "
                              "downsample the image, or raise the limit (env AUTOMEDSAM_MAX_PIXELS).")
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


def _frames(reader: sitk.ImageFileReader) -> int:
    frames = reader.GetMetaData(_FRAMES).strip() if reader.HasMetaDataKey(_FRAMES) else ""
    size = reader.GetSize()
    return max(int(frames) if frames.isdigit() else 1, size[2] if len(size) == 3 else 1)


def dicom_case_id(path: Path) -> str:
    """A DICOM file's name without its DICOM extension (a series folder's name as it is)."""
    lower = path.name.lower()
    for extension in DICOM_EXTENSIONS:
        if lower.endswith(extension):
            return path.name[: -len(extension)]
    return path.name
