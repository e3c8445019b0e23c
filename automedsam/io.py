"""Read and write 2D/3D images with the geometry needed to write a segmentation that overlays its image.

Medical formats go through SimpleITK, natural 2D images (png, bmp, tif, jpg) through Pillow, DICOM (a file, or a
folder of one series' slices) through automedsam.dicom, for reading only. Every problem with a file (missing, not
readable by this user, empty, truncated, 4D, NaN, too large) becomes an AutomedsamError naming the file and the fix.
"""
from __future__ import annotations

import os
import shutil
import struct
import tempfile
import threading
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, NamedTuple

import numpy as np
import SimpleITK as sitk
from PIL import Image, ImageOps, UnidentifiedImageError

from automedsam.dicom import DICOM_EXTENSIONS, is_dicom_file, read_dicom
from automedsam.errors import AutomedsamError
from automedsam.files import atomic_path, incomplete_write_error, permission_denied_error
from automedsam.nifti_check import (NiftiPlacement, check_nifti_file, check_voxel_size, is_nifti_2, non_finite_error,
                                    read_placement, short_reason, unreadable_error, write_placement)

MEDICAL_EXTENSIONS: tuple[str, ...] = (".nii.gz", ".nii", ".nrrd", ".mha")
NIFTI_EXTENSIONS: tuple[str, ...] = (".nii.gz", ".nii")
NATURAL_EXTENSIONS: tuple[str, ...] = (".png", ".bmp", ".tif", ".tiff", ".jpg", ".jpeg")
SUPPORTED_EXTENSIONS: tuple[str, ...] = MEDICAL_EXTENSIONS + NATURAL_EXTENSIONS
SITK_IMAGE_IOS = {".mha": "MetaImageIO", ".nrrd": "NrrdImageIO"}
MAX_PIXELS_ENV = "AUTOMEDSAM_MAX_PIXELS"
DEFAULT_MAX_PIXELS = 2**28
LOSSY_EXTENSIONS = (".jpg", ".jpeg")
MAX_LABEL = int(np.iinfo(np.uint16).max)  # the largest label id: label maps and masks are stored as uint16
_FLOAT32_MAX = float(np.finfo(np.float32).max)
LOSSY_MASK_MIN_PEAK = 64  # a JPEG mask's object this bright (of 255) stands above its compression noise
_BITS_PER_SAMPLE, _ORIENTATION, _PLANAR_CONFIGURATION, _TILE_WIDTH = 258, 274, 284, 322  # TIFF tags
_PHOTOMETRIC, _SAMPLES_PER_PIXEL, _EXTRA_SAMPLES = 262, 277, 338  # TIFF tags
_COLOUR_SAMPLES = {2: 3, 5: 4, 6: 3, 8: 3, 9: 3, 10: 3}  # TIFF photometric -> values per colour: RGB, CMYK, YCbCr, Lab
_ALPHA_SAMPLES = (1, 2)  # TIFF ExtraSamples: associated, unassociated alpha
_PNG_GREY_ALPHA_16_BIT = "LA;16B"  # Pillow's raw mode for a PNG of colour type 4, 16 bits
_AS_DISPLAYED = {  # TIFF/EXIF orientation -> the stored raster (rows, columns first) as viewers show it
    2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1], 5: lambda a: a.swapaxes(0, 1),
    6: lambda a: np.rot90(a, -1), 7: lambda a: a[::-1, ::-1].swapaxes(0, 1), 8: lambda a: np.rot90(a, 1)}
_PIL_FORMATS = {".png": "PNG", ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF", ".jpg": "JPEG", ".jpeg": "JPEG"}
# what Pillow raises on a damaged file: besides OSError and ValueError, a malformed header's missing or mistyped field
# surfaces as whatever its parser hit (a TIFF page without ImageWidth: TypeError "Missing dimensions")
_PILLOW_READ_ERRORS = (UnidentifiedImageError, OSError, ValueError, SyntaxError, TypeError, KeyError, IndexError,
                       EOFError, ZeroDivisionError, struct.error)


@dataclass
class Geometry:
    """Where an image sits in the world: enough to write a segmentation that overlays it. `placement` is a NIfTI
    file's header placement where it says more than ITK's spacing, origin and direction: a 2D slice that lies
    outside its plane (an offset or tilt in z), a volume whose sform differs from the qform ITK reads (a
    registration's result), an image whose header places it nowhere (qform and sform codes 0)."""

    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]
    kind: str
    placement: NiftiPlacement | None = None

    @property
    def ndim(self) -> int:
        """Number of spatial dimensions (2 or 3)."""
        return len(self.spacing)

    def to_json(self) -> dict[str, Any]:
        placement = {"nifti_placement": self.placement.to_json()} if self.placement is not None else {}
        return {"spacing": list(self.spacing), "origin": list(self.origin), "direction": list(self.direction),
                "kind": self.kind, **placement}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Geometry:
        placement = NiftiPlacement.from_json(data["nifti_placement"]) if "nifti_placement" in data else None
        return cls(spacing=tuple(float(v) for v in data["spacing"]), origin=tuple(float(v) for v in data["origin"]),
                   direction=tuple(float(v) for v in data["direction"]), kind=str(data["kind"]), placement=placement)

    @classmethod
    def natural(cls) -> Geometry:
        """The geometry of a png/bmp/tif/jpg image: unit pixels, no position."""
        return cls(spacing=(1.0, 1.0), origin=(0.0, 0.0), direction=(1.0, 0.0, 0.0, 1.0), kind="natural")


def geometry_mismatch(a: Geometry, b: Geometry, tolerance: float = 1e-3) -> str | None:
    """Describe how two geometries differ beyond `tolerance` (relative and absolute), or None when they agree."""
    if a.ndim != b.ndim:
        return f"{a.ndim}D vs {b.ndim}D"
    for field in ("spacing", "origin", "direction"):
        left, right = getattr(a, field), getattr(b, field)
        if not np.allclose(left, right, rtol=tolerance, atol=tolerance):
            return f"{field} {_fmt(left)} vs {_fmt(right)}"
    return None


def split_extension(path: str | os.PathLike) -> tuple[str, str]:
    """Split a file name into stem and extension, knowing that `.nii.gz` is one extension.

    A supported extension is matched case-insensitively and returned as written; any other name is split at its
    last dot, so callers can list a folder and skip what `is_supported` rejects.
    """
    name = Path(path).name
    lower = name.lower()
    for extension in SUPPORTED_EXTENSIONS:
        if lower.endswith(extension) and len(name) > len(extension):
            return name[: -len(extension)], name[-len(extension):]
    suffix = Path(name).suffix
    return name[: len(name) - len(suffix)], suffix


def is_supported(path: str | os.PathLike) -> bool:
    """True when automedsam can read this file's format (judged by its extension)."""
    return split_extension(path)[1].lower() in SUPPORTED_EXTENSIONS


def max_pixels() -> int:
    """The largest image (pixels or voxels) automedsam will load; env AUTOMEDSAM_MAX_PIXELS, default 2**28."""
    value = os.environ.get(MAX_PIXELS_ENV)
    if value is None or value.strip() == "":
        return DEFAULT_MAX_PIXELS
    try:
        limit = int(value)
    except ValueError:
        limit = 0
    if limit <= 0:
        raise AutomedsamError(f"{MAX_PIXELS_ENV}={value!r} is not a positive whole number of pixels. "
                              f"Set it to e.g. {DEFAULT_MAX_PIXELS} or unset it to use that default.")
    return limit


def read_image(path: str | os.PathLike, *, palette_indices: bool = False) -> tuple[np.ndarray, Geometry]:
    """Read an image as a numpy array (numpy axis order) with its geometry.

    2D images come back as `(H, W)`, or `(H, W, 3)` for true colour (RGB whose channels all agree is gray and
    collapses to `(H, W)`; a constant alpha channel is dropped); 3D volumes as `(Z, Y, X)`. `path` may also be a
    DICOM file or a folder holding the slices of one DICOM series. With `palette_indices`, a palette image (a PNG
    label map saved with a colour table) comes back as its indices, which are then the label ids.
    """
    path = Path(path)
    if path.is_dir() or path.name.lower().endswith(DICOM_EXTENSIONS) or is_dicom_file(path):
        if not path.is_dir():
            _require_nonempty_file(path)
        array, geometry = _from_sitk(read_dicom(path, check_size=_check_size))
        return (_gray_if_channels_agree(array) if is_colour(array, geometry) else array), geometry
    extension = _checked_extension(path)
    _require_nonempty_file(path)
    if extension in MEDICAL_EXTENSIONS:
        array, geometry = _read_sitk(path)
    else:
        array, geometry = _read_natural(path, palette_indices=palette_indices), Geometry.natural()
    if array.dtype.kind == "f":
        _check_intensities(array, path)
    return array, geometry


def _check_intensities(array: np.ndarray, path: Path) -> None:
    """Refuse NaN or infinite intensities, and those beyond float32's range, in which images are normalised: they
    would become infinities there (and Infinity/NaN in fingerprint.json, which strict JSON parsers reject)."""
    if not np.isfinite(array).all():
        raise non_finite_error(path, int(np.count_nonzero(~np.isfinite(array))))
    largest = max(float(array.max()), float(array.min()), key=abs) if array.size else 0.0
    if abs(largest) > _FLOAT32_MAX:
        raise AutomedsamError(f"{path} holds an intensity of {largest:g}, beyond the range of 32-bit floats "
                              f"(±{_FLOAT32_MAX:.3g}) in which automedsam computes. Rescale its "
                              "intensities (e.g. divide them by a power of ten) and save the image again.")


def read_segmentation(path: str | os.PathLike, binarise: bool = False) -> tuple[np.ndarray, Geometry]:
    """Read an integer label map (smallest unsigned dtype that holds it) with its geometry.

    With `binarise=True` the file is taken as a one-object mask saved any way (0/1, 0/255, colour, JPEG noise):
    pixels brighter than half the mask's maximum become 1, the rest 0 (a 0/1 mask saved as JPEG is refused:
    `one_object_mask`). Without it, values are kept as they are and a colour or non-integer mask is an error (so
    label values are never guessed).
    """
    path = Path(path)
    array, geometry = read_image(path, palette_indices=not binarise)
    if binarise:
        return one_object_mask(array, geometry, path=path), geometry
    if is_colour(array, geometry):
        raise AutomedsamError(f"{path} is a colour image, not a label map. Save masks as one-channel images whose "
                              "values are the label ids (0 = background), or import them with `automedsam_convert "
                              "folder`, which reads 0/255 and colour masks as 0/1.")
    return as_label_map(array, str(path)), geometry


def one_object_mask(array: np.ndarray, geometry: Geometry, *, path: Path | None = None) -> np.ndarray:
    """0/1 from a one-object mask saved any way: pixels brighter than half the mask's maximum are the object.

    Read from a JPEG file (`path`), an object fainter than LOSSY_MASK_MIN_PEAK is refused: a 0/1 mask comes back as
    values 0 to 3 where half the maximum cuts through the compression noise, keeping a few stray pixels of the
    object (or none)."""
    brightness = array.max(axis=-1) if is_colour(array, geometry) else array
    peak = brightness.max() if brightness.size else 0
    if path is not None and 0 < peak < LOSSY_MASK_MIN_PEAK and split_extension(path)[1].lower() in LOSSY_EXTENSIONS:
        raise AutomedsamError(
            f"{path} is a JPEG mask whose brightest value is {peak:g}: a mask saved as 0/1 (or with small label "
            "values), which JPEG compression turns into noise (its object comes back as scattered 1s and 2s, or not "
            "at all). Save the mask losslessly, as PNG, with its values 0/1 or 0/255.")
    return (brightness > max(peak, 0) / 2).astype(np.uint8)


def header_size(path: str | os.PathLike) -> tuple[int, ...] | None:
    """The size of a medical image (.nii.gz, .nii, .nrrd, .mha) from its header alone, (x, y[, z]) as ITK orders it;
    None for another format or a header that cannot be read (reading the image says why): to tell a volume from a 2D
    image without reading the pixels."""
    extension = split_extension(path)[1].lower()
    if extension not in MEDICAL_EXTENSIONS:
        return None
    reader = _sitk_reader(path, extension)
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return None
    return tuple(reader.GetSize())


def _sitk_reader(path: str | os.PathLike, extension: str) -> sitk.ImageFileReader:
    """ITK's reader of `path`, whose lower-case `extension` names the format: ITK picks its reader by the extension's
    exact case, so x.MHA found none unless told."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    if extension in SITK_IMAGE_IOS:
        reader.SetImageIO(SITK_IMAGE_IOS[extension])
    return reader


def slice_placement(path: str | os.PathLike) -> NiftiPlacement | None:
    """The header placement of a NIfTI image beyond ITK's geometry (`Geometry.placement`: a 2D slice placed out of
    its plane, a volume whose sform differs from its qform; None for any other image): what a label map written with
    another file's geometry (its mask's) needs to overlay the image for header-based readers."""
    path = Path(path)
    if split_extension(path)[1].lower() not in NIFTI_EXTENSIONS:
        return None
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:  # reading the image says why
        return None
    if reader.GetDimension() not in (2, 3):  # refused when the image is read
        return None
    geometry = Geometry(spacing=reader.GetSpacing(), origin=reader.GetOrigin(), direction=reader.GetDirection(),
                        kind="sitk")
    return _placement_beyond_itk(path, geometry)


def write_image(path: str | os.PathLike, array: np.ndarray, geometry: Geometry) -> None:
    """Write an image atomically; medical formats carry `geometry`, natural formats only the pixels."""
    path = Path(path)
    extension = _checked_extension(path)
    array = np.asarray(array)
    if array.dtype == bool:
        array = array.astype(np.uint8)
    colour = array.ndim == geometry.ndim + 1 and array.shape[-1] == 3
    if array.ndim != geometry.ndim and not colour:
        raise ValueError(f"array of shape {array.shape} does not fit a {geometry.ndim}D geometry (writing {path})")
    if extension in MEDICAL_EXTENSIONS:
        if colour:
            raise AutomedsamError(f"Cannot write the colour image {path}: automedsam reads one channel per {extension} "
                                  "file. Write colour images as .png or .tif.")
        placement = geometry.placement if extension in NIFTI_EXTENSIONS else None
        if geometry.placement is not None and placement is None and geometry.placement.codes != (0, 0):
            placed = ("a 2D NIfTI slice placed in 3D (its header moves or tilts it out of its plane)"
                      if geometry.ndim == 2 else "a NIfTI volume placed twice (its sform differs from its qform)")
            raise AutomedsamError(f"Cannot write {path}: its image is {placed}, which a {extension} file cannot say. "
                                  "Write it as .nii.gz.")
        image = sitk.GetImageFromArray(array)
        image.SetSpacing(geometry.spacing)
        image.SetOrigin(geometry.origin)
        image.SetDirection(geometry.direction)
        with atomic_path(path, suffix=extension) as tmp:
            _write_with_simpleitk(image, tmp, target=path, extension=extension)
            if placement is not None:
                write_placement(tmp, placement)
        return
    if array.ndim - colour != 2:
        raise AutomedsamError(f"Cannot write a {array.ndim - colour}D volume as {path.name}: {extension} holds 2D "
                              "images only. Choose .nii.gz, .nrrd or .mha for volumes.")
    with atomic_path(path, suffix=extension) as tmp:
        Image.fromarray(_natural_pixels(array, path)).save(tmp, format=_PIL_FORMATS[extension.lower()])


def _write_with_simpleitk(image: sitk.Image, tmp: Path, *, target: Path, extension: str) -> None:
    """Write `image` to `tmp`; an incomplete file (a full disk, a quota) fails with the reason.

    SimpleITK's NRRD and MetaImage writers raise then (atomic_path reports it), but its NIfTI writer only prints to
    stderr and leaves a truncated file that its reader reads without complaint (zeros where data is missing), which
    atomic_path would rename into place: a NIfTI file is therefore read back and compared first (the reader gives
    NaN and infinities as 0, so those are compared as 0)."""
    sitk.WriteImage(image, str(tmp), useCompression=True)
    if extension not in NIFTI_EXTENSIONS:
        return
    written = sitk.GetArrayViewFromImage(image)
    expected = np.where(np.isfinite(written), written, 0) if written.dtype.kind == "f" else written
    try:
        complete = np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp))), expected)
    except RuntimeError:
        complete = False
    if not complete:
        raise incomplete_write_error(target)


def write_segmentation(path: str | os.PathLike, seg: np.ndarray, geometry: Geometry) -> None:
    """Write a label map atomically as uint8 (uint16 beyond 255), with the geometry of its image."""
    path = Path(path)
    if _checked_extension(path) in LOSSY_EXTENSIONS:
        raise AutomedsamError(f"Cannot write the segmentation {path}: JPEG compression would change label values. "
                              "Write it as .png instead.")
    seg = as_label_map(np.asarray(seg), str(path))
    if seg.ndim != geometry.ndim:
        raise ValueError(f"segmentation of shape {seg.shape} does not fit a {geometry.ndim}D geometry ({path})")
    if seg.dtype.itemsize > 2:
        raise AutomedsamError(f"Cannot write the segmentation {path}: label {int(seg.max())} exceeds {MAX_LABEL}.")
    write_image(path, seg, geometry)


def _checked_extension(path: Path) -> str:
    extension = split_extension(path)[1].lower()
    if extension not in SUPPORTED_EXTENSIONS:
        raise AutomedsamError(f"{path}: the format {extension or '(no extension)'!r} is not supported. Convert it to "
                              f"one of {', '.join(SUPPORTED_EXTENSIONS)}.")
    return extension


def _require_nonempty_file(path: Path) -> None:
    """A file to read, checked before any reader sees it: ITK says a file it may not open does not exist, or is
    corrupt, and the user would export again or delete a file that only needs a permission."""
    if not path.is_file():
        raise AutomedsamError(f"{path} does not exist (or is not a file). Check the path.")
    if path.stat().st_size == 0:
        raise AutomedsamError(f"{path} is empty (0 bytes), probably an interrupted copy. Copy or export it again.")
    if not os.access(path, os.R_OK):
        raise permission_denied_error(path)


def _check_size(path: Path, count: int) -> None:
    limit = max_pixels()
    if count > limit:
        raise AutomedsamError(f"{path} has {count} pixels/voxels, more than the limit of {limit} "
                              f"(env {MAX_PIXELS_ENV}, default {DEFAULT_MAX_PIXELS}). Crop or downsample the image, "
                              f"or raise the limit, e.g. `export {MAX_PIXELS_ENV}={count}`.")


def _read_sitk(path: Path) -> tuple[np.ndarray, Geometry]:
    stem, extension = split_extension(path)
    if extension.lower() == ".nii.gz" and path.with_name(stem + extension[:-3]).exists():
        raise AutomedsamError(f"{path} has an uncompressed twin {path.with_name(stem + extension[:-3]).name} in the "
                              "same folder, and ITK would silently read that one instead. Remove one of the two.")
    lower = extension.lower()
    if lower in NIFTI_EXTENSIONS and extension not in (lower, lower.upper()):
        raise AutomedsamError(f"{path}: ITK reads a NIfTI file only under {lower} or {lower.upper()}, not "
                              f"{extension}. Rename the file.")
    if lower in NIFTI_EXTENSIONS:
        check_voxel_size(path)
    reader = _sitk_reader(path, lower)
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise _information_error(path, lower, exc) from None
    size, components = reader.GetSize(), reader.GetNumberOfComponents()
    if len(size) not in (2, 3):
        raise AutomedsamError(f"{path} is a {len(size)}D image of size {size}; automedsam takes 2D images and 3D "
                              "volumes. Split a time series or multi-channel 4D file into one 3D file per frame.")
    if components != 1:
        raise AutomedsamError(f"{path} has {components} values per voxel; automedsam expects one channel per file. "
                              "Save each channel as its own file.")
    _check_size(path, int(np.prod(size)))
    if lower in NIFTI_EXTENSIONS:
        check_nifti_file(path)
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise unreadable_error(path, short_reason(exc)) from None
    array, geometry = _from_sitk(image)
    if lower in NIFTI_EXTENSIONS:
        geometry.placement = _placement_beyond_itk(path, geometry)
    return array, geometry


def _information_error(path: Path, extension: str, exc: RuntimeError) -> AutomedsamError:
    """Why ITK could not read the header: a valid layout it does not support, with how to save the file instead, or
    a damaged file."""
    if extension == ".nrrd" and "doesn't match dimension of space" in str(exc):
        return AutomedsamError(f"{path} is a 2D NRRD image placed in 3D space (dimension: 2 with a 3D space and "
                               "3-component space directions), a layout ITK's reader does not support. Save it as a "
                               "3D volume with one slice (sizes: X Y 1), or as .nii.gz.")
    if extension in NIFTI_EXTENSIONS and is_nifti_2(path):
        return AutomedsamError(f"{path} is a NIfTI-2 file, which ITK's reader does not support. Save it as NIfTI-1 "
                               "(.nii.gz), the format most tools write by default.")
    return unreadable_error(path, short_reason(exc))


def _placement_beyond_itk(path: Path, geometry: Geometry) -> NiftiPlacement | None:
    """The header placement of a NIfTI file where it says more than ITK's geometry, kept to be written into its
    label maps: a 2D slice's offset or tilt in z (as nibabel saves a slice cut from a volume), a volume's sform
    beside the qform ITK reads (FSL and SPM keep a registration's result there), by which header-based readers
    (nibabel, FSLeyes) place the image, and a header that places it nowhere (qform_code = sform_code = 0: such
    readers take the voxel size alone, where ITK's label map would say where it lies). None where the geometry says
    it all, and the label maps are written as ITK writes them."""
    placement = read_placement(path)
    dimensions = geometry.ndim
    steps = np.reshape(geometry.direction, (dimensions, dimensions)) * geometry.spacing  # column j: a step along j
    itk = np.zeros((3, dimensions + 1))
    itk[:dimensions] = np.column_stack([steps, geometry.origin])
    itk[:2] *= -1  # ITK's LPS as the header's RAS
    declared = [*range(dimensions), 3]  # a 2D slice's header steps along z too, which its 2D geometry cannot say
    if placement is None or (placement.codes != (0, 0) and all(
            np.allclose(affine[:, declared], itk, rtol=1e-5, atol=1e-4) for affine in placement.affines())):
        return None
    return placement


def _from_sitk(image: sitk.Image) -> tuple[np.ndarray, Geometry]:
    geometry = Geometry(spacing=tuple(image.GetSpacing()), origin=tuple(image.GetOrigin()),
                        direction=tuple(image.GetDirection()), kind="sitk")
    return sitk.GetArrayFromImage(image), geometry


class _PillowGuardOff:
    """Pillow's decompression-bomb guard is one process-wide setting: readers in several threads turn it off
    together, the first one in keeping the user's value and the last one out putting it back (each saving and
    restoring it alone, two overlapping readers could leave it off for good)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._holders = 0
        self._saved: int | None = None

    @contextmanager
    def held(self) -> Iterator[None]:
        with self._lock:
            if self._holders == 0:
                self._saved = Image.MAX_IMAGE_PIXELS
                Image.MAX_IMAGE_PIXELS = None  # also silences its DecompressionBombWarning
            self._holders += 1
        try:
            yield
        finally:
            with self._lock:
                self._holders -= 1
                if self._holders == 0:
                    Image.MAX_IMAGE_PIXELS = self._saved


_PILLOW_GUARD_OFF = _PillowGuardOff()


def _own_pixel_limit() -> AbstractContextManager[None]:
    """Let our configurable limit, not Pillow's fixed decompression-bomb guard, decide what is too large."""
    return _PILLOW_GUARD_OFF.held()


def _read_natural(path: Path, *, palette_indices: bool) -> np.ndarray:
    """The pixels as viewers show them: a phone or scanner image stores its rotation apart, and masks are drawn on
    the view. A TIFF's rotation is applied here to its stored raster, read from a copy that says none: recent Pillow
    turns a TIFF while loading it, scrambling grey ones, and ITK turns 16-bit colour with its 8-bit reader."""
    try:
        with _own_pixel_limit():
            tags = _tiff_tags(path)
            _check_one_value_per_pixel(tags, path)
            orientation = tags.get(_ORIENTATION)
            if orientation is None or orientation.value not in _AS_DISPLAYED:
                return _decoded(path, path, palette_indices=palette_indices)
            with _unturned_tiff(path, orientation) as unturned:
                pixels = _decoded(unturned, path, palette_indices=palette_indices)
            return np.ascontiguousarray(_AS_DISPLAYED[orientation.value](pixels))
    except PermissionError:  # refused, not damaged: os.access can answer yes where the file system says no (NFS)
        raise permission_denied_error(path) from None
    except _PILLOW_READ_ERRORS as exc:
        raise unreadable_error(path, short_reason(exc)) from None


def _decoded(source: Path, path: Path, *, palette_indices: bool) -> np.ndarray:
    """The pixels of the image file `source`, the file `path` or a copy of it, with EXIF orientation applied."""
    with Image.open(source) as image:
        frames = getattr(image, "n_frames", 1)
        if frames > 1:
            raise AutomedsamError(f"{path} holds {frames} frames; automedsam reads one 2D image per file. Save "
                                  "a stack as one .nii.gz/.mha volume, or each frame as its own file.")
        width, height = image.size
        _check_size(path, width * height)
        if image.format == "PNG" and image.tile and image.tile[0][3] == _PNG_GREY_ALPHA_16_BIT:
            return _without_alpha(_as_displayed(_grey_alpha_16_bit(image), image), path)
        if image.mode in ("RGB", "RGBA") and _deep_colour(image):
            _check_deep_colour_layout(image, path)
            pixels = _colour_16_bit(source, path)  # Pillow would keep 8 of 16 bits a channel
            return _without_alpha(_as_displayed(pixels, image), path)
        image.load()
        return _pil_to_array(ImageOps.exif_transpose(image), path, palette_indices=palette_indices)


def _as_displayed(pixels: np.ndarray, image: Image.Image) -> np.ndarray:
    """16-bit pixels decoded past Pillow, turned by the file's EXIF orientation (a PNG's eXIf chunk) as
    `ImageOps.exif_transpose` turns what Pillow decodes: an 8-bit copy of the file must not read turned apart from
    it. A TIFF's copy here says none (`_read_natural` turns its pixels)."""
    turn = _AS_DISPLAYED.get(image.getexif().get(_ORIENTATION))
    return pixels if turn is None else np.ascontiguousarray(turn(pixels))


class _TiffTag(NamedTuple):
    """A one-number TIFF tag: its value, where the value lies in the file and its struct layout."""

    value: int
    at: int
    layout: str


def _tiff_tags(path: Path) -> dict[int, _TiffTag]:
    """The one-number tags of a TIFF file's first page (SHORT or LONG, the first value where it lies in the entry
    itself), read before any decoder: Pillow turns a TIFF while loading it and cannot open some with several values
    per pixel. Empty for a file that is no TIFF (or too damaged to tell: its reader then says why)."""
    try:
        with open(path, "rb") as stream:
            head = stream.read(16)
            order = {b"II": "<", b"MM": ">"}.get(head[:2])
            if order is None:
                return {}
            big = struct.unpack_from(order + "H", head, 2)[0] == 43  # BigTIFF: 8-byte counts and offsets
            count_layout, entry_size = (order + "Q", 20) if big else (order + "H", 12)
            directory = struct.unpack_from(order + ("Q" if big else "I"), head, 8 if big else 4)[0]
            stream.seek(directory)
            count = struct.unpack(count_layout, stream.read(struct.calcsize(count_layout)))[0]
            entries = stream.read(min(count, 4096) * entry_size)
    except (OSError, struct.error):
        return {}
    tags = {}
    for start in range(0, len(entries) - entry_size + 1, entry_size):
        tag, kind = struct.unpack_from(order + "HH", entries, start)
        number = struct.unpack_from(order + ("Q" if big else "I"), entries, start + 4)[0]
        size = {3: 2, 4: 4}.get(kind, 0)  # SHORT, LONG
        if size and number and number * size <= (8 if big else 4):
            layout = order + ("H" if kind == 3 else "I")
            value_at = start + (12 if big else 8)
            at = directory + struct.calcsize(count_layout) + value_at
            tags.setdefault(tag, _TiffTag(struct.unpack_from(layout, entries, value_at)[0], at, layout))
    return tags


def _check_one_value_per_pixel(tags: dict[int, _TiffTag], path: Path) -> None:
    """Refuse a TIFF whose pixels hold more than a grey or colour value and an alpha (an unspecified extra sample, two
    channels, three stored as grey): Pillow read its first sample, or its colour alone, or called it damaged."""
    samples = tags[_SAMPLES_PER_PIXEL].value if _SAMPLES_PER_PIXEL in tags else 1
    colour = _COLOUR_SAMPLES.get(tags[_PHOTOMETRIC].value, 1) if _PHOTOMETRIC in tags else 1
    alpha = _EXTRA_SAMPLES in tags and tags[_EXTRA_SAMPLES].value in _ALPHA_SAMPLES
    if samples <= colour or (samples == colour + 1 and alpha):
        return
    others = f"{samples - colour} other, not alpha" if samples == colour + 1 else f"{samples - colour} others"
    detail = "" if colour == 1 else f" ({colour} colour values and {others})"
    raise AutomedsamError(f"{path} has {samples} values per pixel{detail}; automedsam expects one channel per file (a "
                          "grey image, or a colour one with at most an alpha channel). Save each channel as its own "
                          "file (CASE_0000, CASE_0001, ...).")


@contextmanager
def _unturned_tiff(path: Path, orientation: _TiffTag) -> Iterator[Path]:
    """A temporary copy of the TIFF `path` whose `orientation` says 1: readers give its stored raster."""
    with tempfile.TemporaryDirectory(prefix="automedsam-") as folder:
        copy = Path(folder) / path.name  # so that what a reader says of the copy names the file
        try:
            shutil.copyfile(path, copy)
            with open(copy, "r+b") as stream:
                stream.seek(orientation.at)
                stream.write(struct.pack(orientation.layout, 1))
        except OSError as exc:
            raise AutomedsamError(f"Could not copy {path} to {folder} ({exc.strerror or exc}), which automedsam does "
                                  "to read a TIFF with an orientation tag. Free space there, or point TMPDIR at a "
                                  "folder with room.") from None
        yield copy


def _deep_colour(image: Image.Image) -> bool:
    """Whether a colour image stores more than 8 bits per channel: a TIFF says so in its tags (its decoder's mode
    does not where the channels lie in separate planes), a PNG in its decoder's mode."""
    if image.format == "TIFF":
        return int(np.max(image.tag_v2.get(_BITS_PER_SAMPLE, 8))) > 8
    return any(";16" in str(tile[3]) for tile in image.tile)


def _grey_alpha_16_bit(image: Image.Image) -> np.ndarray:
    """The grey and alpha values (channels last) of a 16-bit grey+alpha PNG, which Pillow cuts to 8 bits (mode RGBA)
    and ITK cannot read: its 4 bytes a pixel decoded as 8-bit RGBA (which filters them alike), then joined in pairs."""
    image.tile = [(*tile[:3], "RGBA") for tile in image.tile]
    image.load()
    pairs = np.asarray(image).astype(np.uint16)
    return pairs[..., 0::2] << 8 | pairs[..., 1::2]


def _check_deep_colour_layout(image: Image.Image, path: Path) -> None:
    """Refuse a 16-bit colour TIFF stored in separate colour planes or in tiles: Pillow reads it as 8-bit garbage
    and ITK's TIFF reader cuts it to 8 bits with only a note on stderr."""
    if image.format != "TIFF":
        return
    layouts = [name for name, stored in (("in separate colour planes", image.tag_v2.get(_PLANAR_CONFIGURATION) == 2),
                                         ("in tiles", _TILE_WIDTH in image.tag_v2)) if stored]
    if layouts:
        raise AutomedsamError(f"{path} is a 16-bit colour TIFF stored {' and '.join(layouts)}, which automedsam "
                              "cannot read without cutting its values to 8 bits. Save it as a 16-bit PNG, or as a "
                              "TIFF with interleaved channels in strips (planar configuration contiguous, no tiles).")


def _colour_16_bit(source: Path, path: Path) -> np.ndarray:
    """The pixels of the 16-bit colour image file `source` (the file `path` or a copy of it)."""
    try:
        return sitk.GetArrayFromImage(sitk.ReadImage(str(source)))
    except RuntimeError as exc:
        raise unreadable_error(path, short_reason(exc)) from None


def _pil_to_array(image: Image.Image, path: Path, *, palette_indices: bool) -> np.ndarray:
    if image.mode == "1" or (palette_indices and image.mode == "P" and _colour_palette(image)):
        return np.asarray(image, dtype=np.uint8)
    if image.mode in ("P", "PA"):
        image = image.convert("RGBA" if image.mode == "PA" or "transparency" in image.info else "RGB")
    elif image.mode in ("LA", "La"):
        image = image.convert("RGBA")
    elif image.mode not in ("L", "RGB", "RGBA", "I", "F") and not image.mode.startswith("I;16"):
        image = image.convert("RGB")
    array = np.asarray(image)
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    return _without_alpha(array, path)


def _without_alpha(array: np.ndarray, path: Path) -> np.ndarray:
    """A colour (or grey+alpha) image's pixels without a constant alpha channel, grey when its channels agree."""
    if array.ndim == 3 and array.shape[2] in (2, 4):
        alpha = array[..., -1]
        if alpha.min() != alpha.max():
            raise AutomedsamError(f"{path} has a transparency (alpha) channel that varies across the image, so its "
                                  "meaning is ambiguous. Save it without transparency (flattened RGB or gray).")
        array = array[..., 0] if array.shape[2] == 2 else array[..., :3]
    return _gray_if_channels_agree(array) if array.ndim == 3 else np.ascontiguousarray(array)


def _colour_palette(image: Image.Image) -> bool:
    """Whether a P image's table holds colour: a label map's colour table. The whole table decides, not the entries
    a file uses, so that every mask saved with one table reads alike (a VOC table's index 7 is grey: a mask of
    indices 0 and 7 read 0 and 128 beside one of 0, 3 and 7 read by index). A file that uses only pure black and
    white, away from the indices 0 and 1 a label map would give them, is a 0/255 mask saved with whatever table its
    program had (MS Paint's 16 colours put white at index 15, a classic Mac table at index 0), and a grey table a
    grey image saved with a table: both read by their grey values."""
    table = np.asarray(image.getpalette() or [], dtype=np.int64).reshape(-1, 3)
    return bool(len(table)) and not (table == table[:, :1]).all() and not _black_and_white_by_grey(image, table)


def _black_and_white_by_grey(image: Image.Image, table: np.ndarray) -> bool:
    """Whether every table entry the P image's pixels use is (0, 0, 0) or (255, 255, 255), one of them at another
    index than a label map's (black 0, white 1): a table of black, white, red, ... is a label map's, whose masks
    of indices 0 and 1 read as 0 and 1 beside those of 0, 1 and 2."""
    used = np.unique(np.asarray(image))
    used = used[used < len(table)]
    entries = table[used]
    if not len(entries) or not (np.isin(entries, (0, 255)).all() and (entries == entries[:, :1]).all()):
        return False
    return bool((used != np.where(entries[:, 0] == 255, 1, 0)).any())


def _gray_if_channels_agree(array: np.ndarray) -> np.ndarray:
    """A colour image (channels last) whose three channels agree is a gray image saved in colour."""
    if (array[..., 0] == array[..., 1]).all() and (array[..., 1] == array[..., 2]).all():
        array = array[..., 0]
    return np.ascontiguousarray(array)


def _natural_pixels(array: np.ndarray, path: Path) -> np.ndarray:
    """Pixels Pillow can store in this format without silently changing them."""
    extension = split_extension(path)[1].lower()
    if array.dtype == np.uint8 or (array.dtype == np.float32 and extension in (".tif", ".tiff") and array.ndim == 2):
        return array
    if array.dtype.kind in "iu" and array.size and array.min() >= 0:
        if array.max() <= 255:
            return array.astype(np.uint8)
        if array.ndim == 2 and array.max() <= 65535 and extension in (".png", ".tif", ".tiff"):
            return array.astype(np.uint16)
    raise AutomedsamError(f"Cannot write {array.dtype} pixels of shape {array.shape} to {path} without changing "
                          "them. Write .nii.gz (any type) or scale the image to 8 bits first.")


def is_colour(array: np.ndarray, geometry: Geometry) -> bool:
    """Whether the pixels carry a channel axis beyond the image's dimensions (RGB)."""
    return array.ndim == geometry.ndim + 1


def as_label_map(array: np.ndarray, where: str) -> np.ndarray:
    """The array as label ids in the smallest unsigned dtype; fractional or negative values are an error."""
    if array.dtype == bool:
        return array.astype(np.uint8)
    if array.dtype.kind not in "iuf":
        raise AutomedsamError(f"{where}: a label map must hold numbers, found {array.dtype}.")
    if array.dtype.kind == "f" and not np.array_equal(array, np.round(array)):
        raise AutomedsamError(f"{where}: a label map must hold whole numbers (label ids), found fractional values. "
                              "Save the segmentation with integer labels (0 = background).")
    if array.size and array.min() < 0:
        raise AutomedsamError(f"{where}: label maps cannot hold negative values (found {array.min()}). "
                              "Use 0 for background and 1, 2, ... for the structures.")
    peak = int(array.max()) if array.size else 0
    dtype = np.uint8 if peak <= 255 else np.uint16 if peak <= MAX_LABEL else np.uint32
    return array.astype(dtype, copy=False)


def _fmt(values: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{value:.4g}" for value in values) + ")"
