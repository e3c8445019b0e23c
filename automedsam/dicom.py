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
import re
import struct
from collections import Counter
from dataclasses import dataclass
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
_SLOPE = "0028|1053"  # Rescale Slope and Intercept: what turns a slice's stored values into intensities
_INTERCEPT = "0028|1052"
_SIDEWAYS_TOLERANCE_MM = 0.05  # how far a slice may lie beside the first slice's normal (rounded positions)
_SIDEWAYS_PER_MM = 2e-3  # and per mm of stack: orientation cosines rounded to 3 decimals tilt the normal ~1e-3 rad
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_META_BYTES = 8192  # enough for any file meta header (group 0002) that precedes the data set
_SOP_CLASS, _TRANSFER_SYNTAX = 0x0002, 0x0010  # meta header elements (0002,0002) and (0002,0010)
_STORAGE = "1.2.840.10008.5.1.4.1.1."  # the storage SOP classes: what kind of object a file holds
# Storage SOP class families (a class and its sub-classes) -> whether they hold an image; a class of several
# families takes the most specific (RT Image 481.1 within the RT objects 481). Classes of none: `_has_pixel_data`.
_CLASS_HOLDS_IMAGE = {
    **dict.fromkeys(("1", "2", "3.1", "4", "6", "7", "12", "13", "14", "20", "30", "77.1", "128", "130"), True),
    # CR, DX, MG, IO, CT, MR, US, SC, XA, RF, X-ray 3D, IVOCT, NM, parametric map, VL and ophthalmic, PET
    **dict.fromkeys(("481.1", "481.2", "481.23", "481.24"), True),  # RT Image, RT Dose, Enhanced RT Image
    **dict.fromkeys(("4.2",  # MR spectroscopy
                     "88",  # structured reports, key object selection (88.59) among them
                     "11",  # presentation states
                     "104",  # encapsulated PDF and CDA
                     "481"), False)}  # RT structure sets, plans, treatment records
_PIXEL_DATA = re.compile(rb"\xe0\x7f\x10\x00|\x7f\xe0\x00\x10")  # the tag (7FE0,0010), little and big endian
# the Plane Position Sequence (0020,9113), explicit or implicit VR, then its first item: where an enhanced image (the
# Enhanced CT/MR that GDCM writes for float pixels) keeps a frame's position, in its functional groups
_PLANE_POSITION = re.compile(rb"\x20\x00\x13\x91(?:SQ\x00\x00)?.{4}\xfe\xff\x00\xe0", re.DOTALL)
_MATCH_BYTES = 16  # the longest match of these patterns: a search keeps the last bytes of a block minus one
_DEFLATED = "1.2.840.10008.1.2.1.99"  # a data set compressed whole: its tags cannot be searched
_SCAN_BYTES = 1 << 16  # a file is searched for a tag this many bytes at a time
_DECODED_SYNTAXES = {  # the transfer syntaxes GDCM decodes: uncompressed, deflated, JPEG, JPEG-LS, JPEG 2000, RLE
    "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.2",
    *(f"1.2.840.10008.1.2.4.{number}" for number in (50, 51, 57, 70, 80, 81, 90, 91)), "1.2.840.10008.1.2.5"}
_SYNTAX_NAMES = {f"1.2.840.10008.1.2.4.{number}": name for name, numbers in (
    ("JPIP-referenced pixels", (94, 95)), ("MPEG-2 video", (100, 101)),
    ("MPEG-4 video", (102, 103, 104, 105, 106)), ("HEVC/H.265 video", (107, 108)), ("JPEG XL", (110, 111, 112)),
    ("HTJ2K", (201, 202, 203))) for number in numbers}


@dataclass(frozen=True)
class _Slice:
    """What a file's header says about where it lies: enough to order a series and read it right."""
    path: Path
    series: str  # Series Instance UID
    position: tuple[float, ...] | None  # None: no position, or not the 3 numbers of one
    orientation: tuple[float, ...]
    frames: int
    rescale: tuple[float, float] | None  # slope, intercept; None: in the functional groups, which ITK does not list
    size: tuple[int, int]  # columns, rows


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
    """The DICOM image files directly in `folder`, by name (a DICOMDIR index, and the files of `non_image_files`,
    are no images); [] when the folder cannot be listed (a system folder on a USB stick), since it holds nothing
    automedsam could read either."""
    return [path for path in _dicom_entries(folder) if _holds_image(path)]


def non_image_files(folder: Path) -> list[Path]:
    """The DICOM files directly in `folder` that hold no image, by name: a structured report, an RT structure set or
    plan, a presentation state, an encapsulated PDF, a vendor's header without pixels, which an export puts beside
    the images (`_holds_image`). They are left out of a folder's images, to be named, not read: reading one failed
    as a corrupt file."""
    return [path for path in _dicom_entries(folder) if not _holds_image(path)]


def _dicom_entries(folder: Path) -> list[Path]:
    """The DICOM files directly in `folder` but a DICOMDIR index, by name; [] when the folder cannot be listed."""
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return []
    return [path for path in entries if not path.name.startswith(".") and path.name.upper() != "DICOMDIR"
            and is_dicom_file(path)]


def _holds_image(path: Path) -> bool:
    """Whether a DICOM file holds an image. An image storage class (CT, MR, ...) does, with or without its pixels,
    so that one cut short before them is refused when it is read, not skipped: a series would lose a slice without a
    word. A non-image class (a structured report, an RT structure set or plan, a presentation state, an encapsulated
    PDF) does not. Any other class (raw data, a waveform, a registration, a vendor's private class such as Siemens'
    CSA non-image) holds one only where it has pixel data; a file without a meta header counts as an image."""
    sop_class = _meta_element(path, _SOP_CLASS)
    if sop_class is None:
        return True
    holds_image = _class_holds_image(sop_class)
    return _has_pixel_data(path) if holds_image is None else holds_image


def _class_holds_image(sop_class: str) -> bool | None:
    """Whether a storage SOP class holds an image by its most specific family in `_CLASS_HOLDS_IMAGE`; None for a
    class of none of them."""
    families = [family for family in _CLASS_HOLDS_IMAGE
                if sop_class == f"{_STORAGE}{family}" or sop_class.startswith(f"{_STORAGE}{family}.")]
    return _CLASS_HOLDS_IMAGE[max(families, key=len)] if families else None


def _has_pixel_data(path: Path) -> bool:
    """Whether a DICOM file holds a Pixel Data element (7FE0,0010); a deflated data set, whose tags cannot be
    searched, or a file that cannot be opened counts as one that does, so that it is reported when it is read."""
    if _meta_element(path, _TRANSFER_SYNTAX) == _DEFLATED:
        return True
    return _contains(path, _PIXEL_DATA) is not False


def _contains(path: Path, pattern: re.Pattern[bytes]) -> bool | None:
    """Whether a file's bytes match `pattern`, searched a block at a time (a match split between two blocks
    included); None where the file cannot be read."""
    try:
        with open(path, "rb") as handle:
            tail = b""
            while chunk := handle.read(_SCAN_BYTES):
                if pattern.search(tail + chunk):
                    return True
                tail = (tail + chunk)[1 - _MATCH_BYTES:]
    except OSError:
        return None
    return False


def series_slices(folder: Path) -> list[Path] | None:
    """The files of `folder` in slice order when they are the slices of one series (two or more single-frame files
    of one series, each at its own position, evenly spaced along one orientation), else None: 2D stills, single
    slices of different series, or no DICOM at all.

    What cannot be one volume nor separate images is refused with the fix: a series' slices beside anything else
    (another series, stills, multi-frame files), one series with several images per position (cine phases, echoes),
    uneven steps, slices of different sizes, slices shifted sideways (gantry tilt) or mixed orientations."""
    slices = _series(folder)
    return None if slices is None else [item.path for item in slices]


def _series(folder: Path, *, files: list[Path] | None = None) -> list[_Slice] | None:
    """The headers of `folder`'s files (or of `files` in it) in slice order when they are one series (see
    series_slices), else None."""
    files = dicom_files(folder) if files is None else files
    if len(files) < 2:
        return None
    slices = [_slice(path) for path in files]
    placed = [item for item in slices if item.position is not None and item.frames == 1]
    places: dict[str, set[tuple[float, ...]]] = {}
    for item in placed:
        places.setdefault(item.series, set()).add(tuple(np.round(item.position, 4)))
    if all(len(positions) < 2 for positions in places.values()):
        return None  # stills, multi-frame files, single slices of different series: separate images
    if len(places) > 1 or len(placed) < len(slices):
        raise _mixed_folder_error(folder, series=len(places), others=len(slices) - len(placed))
    return _ordered_volume(folder, placed)


def _slice(path: Path) -> _Slice:
    """A file's header; a position that is not 3 numbers (an empty tag) places nothing, as a missing one. A
    one-frame enhanced image (Enhanced CT/MR: what GDCM and SimpleITK write for float pixels) has no such tags: its
    position, orientation and rescale lie in the functional groups, which ITK's header does not list but GDCM reads
    into the image's origin and direction. Taken from there, its slices make one volume, not separate 2D images
    without their z and tilt."""
    reader = _header(path)
    position, orientation = _numbers(reader, _POSITION), _numbers(reader, _ORIENTATION)
    rescale = ((_numbers(reader, _SLOPE) or (1.0,))[0], (_numbers(reader, _INTERCEPT) or (0.0,))[0])
    if len(position) != 3 and _frames(reader) == 1 and _contains(path, _PLANE_POSITION):
        position, orientation, rescale = reader.GetOrigin(), _orientation(reader.GetDirection()), None
    columns, rows = reader.GetSize()[:2]
    return _Slice(path=path, series=_tag(reader, _SERIES), position=position if len(position) == 3 else None,
                  orientation=orientation, frames=_frames(reader), rescale=rescale, size=(columns, rows))


def _orientation(direction: tuple[float, ...]) -> tuple[float, ...]:
    """Image Orientation (Patient) of an ITK direction: its first two columns, the row and column directions."""
    matrix = np.reshape(direction, (3, 3))
    return tuple(float(value) for value in (*matrix[:, 0], *matrix[:, 1]))


def _mixed_folder_error(folder: Path, *, series: int, others: int) -> AutomedsamError:
    """Slices of a series beside other DICOM images: read one way, they would become separate 2D images (slices of
    one patient in different folds); read the other, images would be lost."""
    if not others:
        return AutomedsamError(f"{folder} holds the slices of {series} DICOM series. Put each series in a folder of "
                               "its own: each folder is then one volume.")
    return AutomedsamError(f"{folder} holds the slices of {series} DICOM series and {others} other DICOM "
                           f"image{'s' if others > 1 else ''} (without a slice position, or of several frames: a "
                           "still, a report screenshot, a cine). Put each series in a folder of its own, where it is "
                           "one volume, and leave the other images directly in the images folder, where each file is "
                           "one image.")


def _ordered_volume(folder: Path, slices: list[_Slice]) -> list[_Slice] | None:
    """The slices of one series sorted along its normal, refused when they do not make one evenly spaced volume."""
    orientation = np.asarray(slices[0].orientation, dtype=float)
    if orientation.size != 6 or any(not np.allclose(other.orientation, orientation, atol=1e-4) for other in slices):
        raise AutomedsamError(f"{folder} holds DICOM slices of different orientations (a localizer among them?). "
                              "Keep the slices of one orientation in the folder.")
    normal = np.cross(orientation[:3], orientation[3:])
    length = float(np.linalg.norm(normal))
    normal = normal / length if length else normal
    depth = {item.path: float(np.dot(item.position, normal)) for item in slices}
    ordered = sorted(slices, key=lambda item: depth[item.path])
    positions = [depth[item.path] for item in ordered]
    distinct = len(set(np.round(positions, 4)))
    if distinct == 1:
        return None  # every image at the same place: separate 2D images
    if distinct < len(positions):
        raise AutomedsamError(f"{folder} holds {len(positions)} DICOM images of one series at {distinct} positions "
                              "(cine phases, echoes or repeats). Split them into one folder per phase or echo: "
                              "each folder is then one volume.")
    _check_one_size(folder, ordered)
    steps = np.diff(positions)
    if not np.allclose(steps, np.median(steps), rtol=0.01, atol=1e-3):
        raise AutomedsamError(f"{folder} holds DICOM slices at uneven steps ({', '.join(f'{s:.3g}' for s in steps)} "
                              "mm): a slice is missing or belongs elsewhere. Complete the series, or keep evenly "
                              "spaced slices only.")
    _check_stacked_straight(folder, ordered, normal)
    return ordered


def _check_one_size(folder: Path, slices: list[_Slice]) -> None:
    """Refuse slices of different sizes, naming them: ITK's series reader failed on the first one with a message
    that called the series corrupt."""
    sizes = Counter(item.size for item in slices)
    if len(sizes) == 1:
        return
    common = sizes.most_common(1)[0][0]
    odd = [item for item in slices if item.size != common]
    named = ", ".join(f"{item.path.name} ({_size_text(item.size)})" for item in odd[:3])
    raise AutomedsamError(f"{folder} holds DICOM slices of different sizes: {named}{', ...' if len(odd) > 3 else ''}"
                          f" where the other {len(slices) - len(odd)} slices of the series are "
                          f"{_size_text(common)}. A slice of another series, or one cropped or resized? Remove it, "
                          "or export the series again.")


def _size_text(size: tuple[int, int]) -> str:
    return f"{size[0]} columns x {size[1]} rows"


def _check_stacked_straight(folder: Path, ordered: list[_Slice], normal: np.ndarray) -> None:
    """Refuse slices that drift sideways along the stack (a CT gantry tilt): ITK stacks them straight, along the
    normal, at the distance between the first two, so every slice but the first would lie elsewhere than recorded.
    The drift is measured from the first slice, so that rounded positions do not add up to a tilt."""
    offsets = np.asarray([item.position for item in ordered], dtype=float) - np.asarray(ordered[0].position)
    along = offsets @ normal
    sideways = offsets - np.outer(along, normal)
    drift = float(np.linalg.norm(sideways, axis=1).max())
    if drift > max(_SIDEWAYS_TOLERANCE_MM, _SIDEWAYS_PER_MM * float(np.abs(along).max())):
        raise AutomedsamError(f"{folder} holds DICOM slices that shift sideways from one to the next (up to "
                              f"{drift:.3g} mm beside the first slice's normal: a CT gantry tilt?). Read as one "
                              "volume they would be stacked straight, every slice misplaced. Resample the series "
                              "onto a regular grid first (dcm2niix, or 3D Slicer's DICOM import, corrects a gantry "
                              "tilt) and import the resulting .nii.gz.")


def dicom_sources(folder: Path, *, keep_channel_suffix: bool = False,
                  keep_broken_series: bool = False) -> dict[str, Path]:
    """Case id -> image for the DICOM in an images folder: each DICOM file directly in it (a 2D image or a multi-frame
    volume; id: `dicom_case_id`), each subfolder holding one series, or the folder itself when its files are the
    slices of one series (id: `_series_case_id`).

    Two sources of one case id, or a subfolder of DICOM files that are not one series, are refused: either would
    lose images without a word. With `keep_broken_series`, a subfolder whose slices make no volume (one missing or
    damaged) is a source all the same, whose reading fails with the reason: predict leaves it out with a warning
    and segments the others (one broken series stopped the whole run)."""
    if _is_one_series(folder, keep_broken_series=keep_broken_series):
        return {_series_case_id(folder.resolve(), keep_channel_suffix=keep_channel_suffix): folder}
    sources: dict[str, Path] = {}
    repeated = []
    try:
        subfolders = sorted(path for path in folder.iterdir() if path.is_dir() and not path.name.startswith("."))
    except OSError:
        subfolders = []
    for sub in subfolders:
        try:
            series = series_slices(sub)
        except AutomedsamError:
            if not keep_broken_series:
                raise
            series = sub
        if series is not None:
            case_id = _series_case_id(sub, keep_channel_suffix=keep_channel_suffix)
            if case_id in sources:
                repeated.append(f"{sources[case_id].name} / {sub.name}")
            sources[case_id] = sub
        elif dicom_files(sub):
            raise AutomedsamError(f"{sub} holds DICOM files that are not the slices of one series (stills, single "
                                  "slices or multi-frame files): move them into the images folder itself, where "
                                  "each file is one image.")
    for path in dicom_files(folder):
        case_id = dicom_case_id(path, keep_channel_suffix=keep_channel_suffix)
        if case_id in sources:
            repeated.append(f"{sources[case_id].name} / {path.name}")
        sources[case_id] = path
    if repeated:
        raise AutomedsamError(f"{folder} holds several DICOM images of the same case id: {'; '.join(repeated)}. "
                              "Rename or remove one of each pair.")
    return sources


def _series_case_id(folder: Path, *, keep_channel_suffix: bool) -> str:
    """A series folder's name, without nnU-Net's channel suffix `_0000` unless `keep_channel_suffix`, as
    `dicom_case_id` names a file: named as it was, a folder `CASE_0000` gave the prediction `CASE_0000.nii.gz`,
    which plot_overlays and evaluate read as case `CASE` and found no image of."""
    return folder.name if keep_channel_suffix else case_id_from_stem(folder.name)


def _is_one_series(folder: Path, *, keep_broken_series: bool) -> bool:
    """Whether `folder`'s own files are the slices of one series. With `keep_broken_series`, files whose header
    cannot be read leave the others to decide: separate images (the damaged one fails alone when it is read: one
    damaged still stopped the whole run) or one series (refused, naming the damaged file)."""
    try:
        return _series(folder) is not None
    except AutomedsamError as damaged:
        if not keep_broken_series:
            raise
        files = dicom_files(folder)
        readable = [path for path in files if _header_readable(path)]
        if len(readable) == len(files):
            raise
        try:
            return _series(folder, files=readable) is not None
        except AutomedsamError:
            raise damaged from None  # a series that lacks the damaged slice: that slice is the reason


def _header_readable(path: Path) -> bool:
    try:
        _header(path)
    except AutomedsamError:
        return False
    return True


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
    slices = _series(path) if path.is_dir() else None
    if path.is_dir() and slices is None:
        raise AutomedsamError(f"{path} is not a DICOM series: a series folder holds two or more slices of one "
                              "series, one file each, with their positions.")
    files = [item.path for item in slices] if slices else [path]
    first = _header(files[0])
    size = list(first.GetSize())
    check_size(path, int(np.prod(size)) * len(files))
    image = _read_pixels(path, files, rescaled_alike=slices is None or _rescaled_alike(slices))
    if image.GetDimension() == 3 and image.GetSize()[2] == 1:
        image = _one_frame(image)
    if image.GetNumberOfComponentsPerPixel() not in (1, 3) or (image.GetNumberOfComponentsPerPixel() == 3
                                                               and image.GetDimension() == 3):
        raise AutomedsamError(f"{path} holds {image.GetNumberOfComponentsPerPixel()} values per pixel in "
                              f"{image.GetDimension()}D; automedsam reads gray images and volumes, and colour 2D "
                              "images. Export the series in gray (monochrome), or each frame as its own file.")
    return image


def _rescaled_alike(slices: list[_Slice]) -> bool:
    """Whether every slice turns its stored values into intensities alike, as far as the headers tell: an enhanced
    image's rescale, in the functional groups, may differ from slice to slice unseen."""
    rescales = {item.rescale for item in slices}
    return len(rescales) == 1 and None not in rescales


def _read_pixels(path: Path, files: list[Path], *, rescaled_alike: bool) -> sitk.Image:
    """The pixels of one file, or of a series' files in slice order. ITK gives a series the first slice's pixel type:
    where slices rescale their values differently (another slope or intercept), or may (`_rescaled_alike`), the
    others would be cut or wrapped (-924 read as 64612), so they are read as float."""
    try:
        if len(files) == 1:
            return sitk.ReadImage(str(files[0]))
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames([str(file) for file in files])
        if not rescaled_alike:
            reader.SetOutputPixelType(sitk.sitkFloat32)
        return reader.Execute()
    except RuntimeError as exc:
        raise _unreadable(path, files[0], exc) from None


def _one_frame(image: sitk.Image) -> sitk.Image:
    """A one-frame volume as a 2D image with its in-plane spacing and origin. Its direction is the in-plane rotation
    of an axial image, else identity: the 2x2 corner of a sagittal, coronal or oblique plane's direction is no
    rotation, which a NIfTI writer would coerce into another one, so that label maps would turn."""
    plane = image[:, :, 0]
    corner = np.reshape(image.GetDirection(), (3, 3))[:2, :2]
    if not np.allclose(corner @ corner.T, np.eye(2), atol=1e-2):  # rounded cosines: the SVD below repairs them
        corner = np.eye(2)
    left, _, right = np.linalg.svd(corner)  # the nearest rotation: rounded header values leave none exact
    plane.SetDirection(tuple(float(value) for value in (left @ right).ravel()))
    return plane


def _header(path: Path) -> sitk.ImageFileReader:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.SetImageIO("GDCMImageIO")
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise _unreadable(path, path, exc) from None
    return reader


def _unreadable(path: Path, file: Path, exc: RuntimeError) -> AutomedsamError:
    """Why `path` (a file, or a series read from `file` on) could not be read: a compression GDCM does not decode,
    named with an export that works, else a damaged file."""
    if not _holds_image(file):
        return AutomedsamError(f"{file} is a DICOM file without an image (a structured report, an RT structure set "
                               "or plan, a presentation state, an encapsulated PDF, another kind without pixel data): "
                               "there is no image to read. Give the image files of the export.")
    syntax = _meta_element(file, _TRANSFER_SYNTAX)
    if syntax is None or syntax in _DECODED_SYNTAXES:
        return unreadable_error(path, short_reason(exc))
    name = f"transfer syntax {syntax}"
    if syntax in _SYNTAX_NAMES:
        name = f"{_SYNTAX_NAMES[syntax]} ({name})"
    return AutomedsamError(f"{file} is stored as {name}, which automedsam's DICOM reader (GDCM) could not decode. "
                           "Export the images again from the scanner or PACS uncompressed (Explicit VR Little Endian) "
                           "or as JPEG baseline.")


def _meta_element(path: Path, element: int) -> str | None:
    """A UID of a DICOM file's meta header (group 0002: the SOP class, the transfer syntax), which ITK does not pass
    on; None where the file has none. The meta header is always explicit VR little endian."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(_META_BYTES)
    except OSError:
        return None
    if head[128:_PREAMBLE_END] != b"DICM":
        return None
    offset = _PREAMBLE_END
    try:
        while struct.unpack_from("<H", head, offset)[0] == 0x0002:
            found, vr = struct.unpack_from("<H2s", head, offset + 2)
            if vr in _LONG_VRS:
                start, length = offset + 12, struct.unpack_from("<I", head, offset + 8)[0]
            else:
                start, length = offset + 8, struct.unpack_from("<H", head, offset + 6)[0]
            if found == element:
                return head[start:start + length].decode("ascii", "replace").strip("\0 ")
            offset = start + length
    except struct.error:  # the header ends before the element
        pass
    return None


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


def dicom_case_id(path: Path, *, keep_channel_suffix: bool = False) -> str:
    """A DICOM file's name without its DICOM extension (a series folder's name as it is), named as any other image:
    without nnU-Net's channel suffix `_0000` as a prediction input, with it (`keep_channel_suffix`) in an import,
    which keeps every image's own name, so that scan_0000.dcm pairs with the mask scan_0000.png."""
    name = path.name
    if name.lower().endswith(DICOM_EXTENSIONS):
        name = name[: name.rindex(".")]
    return name if keep_channel_suffix else case_id_from_stem(name)
