"""2D samples: how a case becomes the 2D images the foundation model sees, and what each one is called.

A 2D case is one sample named after the case; a 3D volume gives one sample per slice along the planned slicing
axis, named `CASE__z007`; an augmentation view of a sample adds the view's name, `CASE__z007__v01`. Fingerprint,
splits, preprocessing, training and the benchmarks all name and slice samples through these helpers, so a sample id
always points at the same pixels.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

SPACING_TIE_TOLERANCE = 1e-3
SEPARATOR = "__"
CHANNEL_SUFFIX = "_0000"
CHANNEL_NAME = re.compile(r"(?P<case>.+)_(?P<channel>\d{4})")  # nnU-Net's name of a case's channel: CASE_0001
MAX_CHANNELS = 8  # more "channels" than an MR protocol has modalities: numbered frames, not nnU-Net channels
# A volume whose coarsest spacing is this many times its spacing along the axis it is cut along has its own slices
# along another axis: cut across them, the model sees images unlike its training ones. Near-isotropic volumes (thin-
# slice CT with slices finer than its pixels) are cut as planned without a word.
ACROSS_SLICES_RATIO = 2.0
IMAGE_STAMP_SUFFIX = ".image"  # beside SAMPLE.npy: the digest (files.files_digest) of the image it was encoded from
WIDEST_VIEW_NAME = "v99"  # as long as the planner's view names, v01 to v09 (planner.DEFAULT_VIEWS); a longer
# hand-made name shortens what a case id may have, and preprocessing refuses one too long for a labelled sample
LONGEST_FILE_ENDING = ".nii.gz"  # the longest of io.SUPPORTED_EXTENSIONS: a raw image's name, CASE_0000.nii.gz
SLICE_DIGITS = 3  # the fewest digits of a slice index in a sample id: CASE__z007


def case_id_from_stem(stem: str) -> str:
    """The case id of a file's stem (its name without the extension): nnU-Net's first-channel suffix `_0000` is
    not part of it, so `CASE_0000.nii.gz` and `CASE.nii.gz` are both case `CASE` (and `_0000.png` is case `_0000`:
    a case id is never empty)."""
    return stem[: -len(CHANNEL_SUFFIX)] if stem.endswith(CHANNEL_SUFFIX) and stem != CHANNEL_SUFFIX else stem


def channel_layout_cases(numbers: Mapping[str, set[int]]) -> set[str]:
    """The cases whose numbered files (`numbers`: case -> the NNNN of its `CASE_NNNN` files) are nnU-Net channels to
    a reader of one channel: those with a `_0000` file beside others where several cases share one layout of at most
    MAX_CHANNELS, which numbered frames (frame_0000, frame_0001, ... of one clip) do not."""
    layouts = {case: frozenset(found) for case, found in numbers.items() if 0 in found and len(found) > 1}
    if len(layouts) < 2 or len(set(layouts.values())) > 1 or len(next(iter(layouts.values()))) > MAX_CHANNELS:
        return set()
    return set(layouts)


def sample_id(case_id: str, slice_index: int | None) -> str:
    """`CASE` for a 2D case, `CASE__z007` for slice 7 of a 3D case (index along the slicing axis)."""
    return case_id if slice_index is None else f"{case_id}{SEPARATOR}z{slice_index:0{SLICE_DIGITS}d}"


def view_sample_id(sample_id: str, view: Mapping[str, Any]) -> str:
    """`CASE__v01`, `CASE__z007__v01`: the sample id of a view (a plans `augmentation.views` entry) of a sample."""
    return f"{sample_id}{SEPARATOR}{view['name']}"


def longest_sample_file_name(case_id: str, *, slices: int | None) -> str:
    """The longest file name automedsam derives from `case_id`, which must fit the file system: for a 2D case (`slices`
    None) its raw image `CASE_0000.nii.gz` (a 2D NIfTI or DICOM input is written so), a byte longer than the image
    stamp beside the embedding of a view, `CASE__v01.image`; for a volume that stamp of its last slice,
    `CASE__z0123__v01.image` (from 10,001 slices, `sample_id` writes 5 digits). Sample, prediction and overlay files
    add less (`.npy`, `.json`, `.nii.gz` after `CASE` alone)."""
    last = None if slices is None else max(slices - 1, 0)
    stamp = f"{view_sample_id(sample_id(case_id, last), {'name': WIDEST_VIEW_NAME})}{IMAGE_STAMP_SUFFIX}"
    return max(stamp, f"{case_id}{CHANNEL_SUFFIX}{LONGEST_FILE_ENDING}", key=lambda name: len(name.encode("utf-8")))


def case_of(sample_id: str) -> str:
    """The case a sample id (of a slice or a view too) belongs to: `CASE__z007__v01` -> `CASE`."""
    return sample_id.split(SEPARATOR)[0]


def slice_of(sample_id: str) -> int | None:
    """The slice index of a sample id (`CASE__z007` -> 7), None for a 2D case's sample."""
    parts = sample_id.split(SEPARATOR)
    if len(parts) > 1 and parts[1].startswith("z") and parts[1][1:].isdigit():
        return int(parts[1][1:])
    return None


def numpy_spacing(spacing_xyz: Sequence[float]) -> tuple[float, ...]:
    """SimpleITK's (x, y[, z]) spacing in numpy axis order ((Z,) Y, X)."""
    return tuple(float(value) for value in reversed(tuple(spacing_xyz)))


def slicing_axis(spacing_numpy: Sequence[float], shape: Sequence[float]) -> int:
    """The numpy axis 2D samples are taken along: the one of largest spacing, near-ties (relative 1e-3) to the
    lowest axis as for isotropic data; but an axis one voxel thick first: a slice saved as a volume is that slice,
    and cut along another axis it would give images one row high."""
    thin = [axis for axis, size in enumerate(shape) if size <= 1]
    if thin:
        return thin[0]
    spacing = np.asarray(spacing_numpy, dtype=float)
    return int(np.flatnonzero(spacing >= spacing.max() * (1 - SPACING_TIE_TOLERANCE))[0])


def own_axis_cut_across(shape: Sequence[int], *, axis: int, spacing_xyz: Sequence[float]) -> int | None:
    """The array axis a volume's own slices run along (`slicing_axis` of the volume alone) where cutting it along
    `axis` cuts across them, else None: a volume stored in another axis order (e.g. permuted with sitk.PermuteAxes)
    gives strips across its slices, unlike the other volumes' images. Planning and prediction judge it alike."""
    spacing = numpy_spacing(spacing_xyz)
    own = slicing_axis(spacing, shape)
    return None if spacing[own] < ACROSS_SLICES_RATIO * spacing[axis] else own


def swapping_order(own: int, axis: int) -> list[int]:
    """The sitk.PermuteAxes order that swaps array axes `own` and `axis` of a volume (array axis a is ITK axis
    2 - a), so that its slices run along `axis`."""
    order = [0, 1, 2]
    order[2 - own], order[2 - axis] = 2 - axis, 2 - own
    return order


def take_slice(volume: np.ndarray, axis: int, index: int) -> np.ndarray:
    """Slice `index` of a (Z, Y, X) volume along `axis`; the remaining axes keep their order (rows, columns)."""
    return np.take(volume, index, axis=axis)


def slice_spacing(spacing_xyz: Sequence[float], axis: int | None) -> list[float]:
    """Pixel spacing [sx, sy] (column, row) of a 2D sample of an image with SimpleITK spacing `spacing_xyz`."""
    if axis is None:
        return [float(spacing_xyz[0]), float(spacing_xyz[1])]
    rows, columns = [a for a in range(3) if a != axis]
    spacing = numpy_spacing(spacing_xyz)
    return [spacing[columns], spacing[rows]]


def stored_image(preprocessed_dir: Path, sample_id: str) -> np.ndarray:
    """A sample's normalised image as preprocessing stored it (`samples/<id>.npz`, key "image"), float32."""
    with np.load(Path(preprocessed_dir) / "samples" / f"{sample_id}.npz", allow_pickle=False) as arrays:
        return np.asarray(arrays["image"], dtype=np.float32)
