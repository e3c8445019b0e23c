"""Which files of the input are images to predict, and where each prediction goes.

Case ids follow the contract: the file name minus its extension and minus the nnU-Net channel suffix `_0000`,
so `CASE_0000.nii.gz`, `NNN_HC.png` and `benign (3).png` all work; a DICOM file or series folder is named as
automedsam.dicom says. Outputs keep the input's extension, except JPEG (lossy compression would change label
values), which becomes PNG, and DICOM (read only), which becomes .nii.gz with the image's geometry.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from automedsam.dicom import (DICOM_EXTENSIONS, DICOM_OUTPUT_EXTENSION, dicom_case_id, dicom_files, dicom_sources,
                              is_dicom_file, non_image_files)
from automedsam.errors import AutomedsamError
from automedsam.files import load_json
from automedsam.io import LOSSY_EXTENSIONS, SUPPORTED_EXTENSIONS, is_supported, split_extension
from automedsam.paths import check_outside_raw_datasets
from automedsam.samples import CHANNEL_SUFFIX, case_id_from_stem

_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
_DETACHED_HEADER = re.compile(r"^(?P<stem>.+)\.(?:mhd|nhdr)$", re.IGNORECASE)  # MetaImage's and NRRD's, data apart
_DETACHED_DATA = re.compile(r"^(?P<stem>.+)\.(?:raw|zraw)(?:\.gz)?$", re.IGNORECASE)
NOT_IMAGES = {".json", ".csv", ".tsv", ".txt", ".md"}  # sidecars, box files and notes kept beside images
MAX_CHANNELS = 8  # more "channels" than an MR protocol has modalities: numbered frames, not nnU-Net channels
FORMATS = ", ".join(SUPPORTED_EXTENSIONS) + ", DICOM files and series folders"


@dataclass(frozen=True)
class InputImage:
    """One image to predict and the case id its outputs are named after; `extension` is the input's format (.dcm for
    any DICOM input, a series folder included), which the segmentation's is derived from."""

    case_id: str
    path: Path
    extension: str


def case_id_of(path: str | Path) -> str:
    """The case id of an image file: name minus extension minus a trailing `_0000`."""
    return case_id_from_stem(split_extension(path)[0])


def discover_inputs(input_path: str | Path) -> list[InputImage]:
    """The images under `input_path` (a folder, not recursive, or one file), sorted by case id: image files, DICOM
    files, DICOM series folders inside it, or the folder itself when it holds one series' slices.

    Hidden files and half-written `.partial` files of an interrupted run are ignored; two files with the same
    case id (e.g. `A.png` and `A_0000.png`) are an error because their outputs would collide.
    """
    input_path = Path(input_path)
    if input_path.is_file():
        if is_dicom_file(input_path):
            candidates = [_dicom_input(dicom_case_id(input_path), input_path)]
        elif not is_supported(input_path):
            raise AutomedsamError(f"{input_path} is not an image automedsam can read. Supported formats: "
                                  f"{FORMATS}.")
        else:
            candidates = [_input(input_path)]
    elif input_path.is_dir():
        candidates = [_input(p) for p in sorted(input_path.iterdir())  # a broken link too: it is named unreadable
                      if (p.is_file() or p.is_symlink()) and not p.name.startswith(".") and is_supported(p)]
        candidates += [_dicom_input(case_id, path)
                       for case_id, path in dicom_sources(input_path, keep_broken_series=True).items()]
    else:
        raise AutomedsamError(f"The input {input_path} does not exist. Give a folder of images or one image file.")
    if not candidates:
        raise AutomedsamError(f"No images found in {input_path}. Supported formats: {FORMATS}.")
    refuse_other_channels(candidates, input_path)
    images: dict[str, InputImage] = {}
    for image in candidates:
        path = image.path
        if image.case_id in images:
            raise AutomedsamError(f"{images[image.case_id].path.name} and {path.name} in {input_path} are both case "
                                  f"'{image.case_id}' and would write the same output. Keep only one of them.")
        images[image.case_id] = image
    return [images[case_id] for case_id in sorted(images)]


def ignored_files(input_path: str | Path) -> list[str]:
    """The names of the files in an input folder that no reader takes (an .mhd, a .gif), of the DICOM files without
    an image in it and in its series folders (`ct1/RS.1.dcm`), and of its subfolders without DICOM (`sub/`), for a
    warning: without it they were left out with no word, the summary counting only the images read. Hidden entries
    are not named, nor metadata beside the images (a BIDS .json sidecar, a boxes file), nor the data file beside a
    detached header (m.raw of m.mhd), which the header already names."""
    folder = Path(input_path)
    if not folder.is_dir():
        return []
    entries = [path for path in sorted(folder.iterdir()) if not path.name.startswith(".")]
    names = [path.name for path in entries if path.is_file() and path.suffix.lower() not in NOT_IMAGES
             and not is_supported(path) and not is_dicom_file(path)]
    headers = {match.group("stem") for name in names if (match := _DETACHED_HEADER.match(name))}
    files = [name for name in names if not ((match := _DETACHED_DATA.match(name)) and match.group("stem") in headers)]
    series = [path for path in entries if path.is_dir() and dicom_files(path)]
    return (files + _dicom_without_image(folder, series)
            + [f"{path.name}/" for path in entries if path.is_dir() and path not in series])


def _dicom_without_image(folder: Path, series: list[Path]) -> list[str]:
    """The DICOM files without an image (a report, an RT structure set) in `folder` and its series folders, named
    from `folder`: they are no input, but are named so that none is left out without a word."""
    return [path.relative_to(folder).as_posix() for place in (folder, *series) for path in non_image_files(place)]


def refuse_other_channels(images: Sequence[InputImage], input_path: str | Path, *, channels: int = 1) -> None:
    """nnU-Net's `CASE_0001` beside `CASE_0000` is the case's second channel, not a case: it was predicted as one.
    For a model of a dataset whose dataset.json names several `channels` (`model_channels`), a case whose numbers
    all lie within them is one, however many cases the folder holds. Otherwise they are told apart from numbered
    frames (frame_0000, frame_0001, ...) as nnU-Net lays channels out: several cases with the same few channels (at
    most MAX_CHANNELS)."""
    named = [(image.path.name, match) for image in images
             if (match := _CHANNEL.match(split_extension(image.path)[0]))]
    found: dict[str, set[int]] = {}
    for _, match in named:
        found.setdefault(match.group("case"), set()).add(int(match.group("channel")))
    cases = _cases_with_channels(found, channels=channels)
    others = sorted(name for name, match in named if match.group("channel") != "0000" and match.group("case") in cases)
    if others:
        raise AutomedsamError(f"{', '.join(others[:5])}{' ...' if len(others) > 5 else ''} in {input_path}: "
                              f"nnU-Net's name for another channel of a case whose {CHANNEL_SUFFIX} image is there. "
                              "An automedsam model reads one channel: move the other channels out of the folder.")


def _cases_with_channels(found: Mapping[str, set[int]], *, channels: int) -> set[str]:
    """The cases whose numbered files (`found`: case -> numbers) are channels: where the model's dataset.json names
    several `channels`, every case with a `_0000` file beside others, all numbered below `channels` (a case numbered
    past them is frames: slice_0000 ... slice_0011); beyond those, only where several cases share one layout of at
    most MAX_CHANNELS, which numbered frames do not."""
    layouts = {case: frozenset(numbers) for case, numbers in found.items() if 0 in numbers and len(numbers) > 1}
    within = {case for case, numbers in layouts.items() if channels > 1 and max(numbers) < channels}
    if within:
        return within
    if len(layouts) < 2 or len(set(layouts.values())) > 1 or len(next(iter(layouts.values()))) > MAX_CHANNELS:
        return set()
    return set(layouts)


def model_channels(model_dir: str | Path) -> int:
    """How many channels the dataset.json of a trained model folder names (1 where it has none to read): with
    several, `CASE_0001` beside `CASE_0000` in a folder to predict is that case's second channel, even for one case."""
    path = Path(model_dir) / "dataset.json"
    if not path.is_file():
        return 1
    meta = load_json(path, "dataset description")
    names = meta.get("channel_names") if isinstance(meta, dict) else None
    return len(names) if isinstance(names, dict) else 1


def _input(path: Path) -> InputImage:
    return InputImage(case_id_of(path), path, split_extension(path)[1])


def _dicom_input(case_id: str, path: Path) -> InputImage:
    return InputImage(case_id, path, DICOM_EXTENSIONS[0])


def output_extension(extension: str) -> str:
    """The extension of a segmentation written for an input with `extension` (JPEG becomes PNG, DICOM .nii.gz)."""
    if extension.lower() in DICOM_EXTENSIONS:
        return DICOM_OUTPUT_EXTENSION
    return ".png" if extension.lower() in LOSSY_EXTENSIONS else extension


def segmentation_path(output_dir: str | Path, image: InputImage) -> Path:
    """`OUT/CASE<extension>` for one input image."""
    return Path(output_dir) / f"{image.case_id}{output_extension(image.extension)}"


def probabilities_paths(segmentation: str | Path) -> tuple[Path, Path]:
    """`OUT/CASE.npz` (probabilities) and `OUT/CASE.json` (their geometry) beside the segmentation `OUT/CASE.ext`."""
    segmentation = Path(segmentation)
    stem, _ = split_extension(segmentation)
    return segmentation.with_name(f"{stem}.npz"), segmentation.with_name(f"{stem}.json")


def check_output_folder(input_path: str | Path, output_dir: str | Path, images: list[InputImage]) -> None:
    """Refuse an output folder inside the input folder, the folder that holds an input image, or in the raw data,
    outputs that would overwrite an input image, or a folder that cannot be written, before any image is encoded.

    Predictions written inside the input folder would be taken as new input images by the next run; written into
    a raw dataset (its labelsTs, say) they would replace the reference label maps.
    """
    input_path, output_dir = Path(input_path).resolve(), Path(output_dir).resolve()
    if output_dir.exists() and not output_dir.is_dir():
        raise AutomedsamError(f"The output {output_dir} is a file; -o takes a folder. Choose a folder path.")
    _check_writable(output_dir)
    if input_path.is_dir() and (output_dir == input_path or input_path in output_dir.parents):
        raise AutomedsamError(f"The output folder {output_dir} is inside the input folder {input_path}: the "
                              "predictions would be read as input images by the next run. Choose an output folder "
                              "outside the input folder.")
    inputs = {image.path.resolve() for image in images}
    for image in images:
        if segmentation_path(output_dir, image).resolve() in inputs:
            raise AutomedsamError(f"The prediction for {image.path} would overwrite that image. Choose another "
                                  "output folder.")
    check_outside_raw_datasets(output_dir, what="The output folder")  # before the example of a subfolder below
    _check_not_beside_inputs(output_dir, images)


def _check_not_beside_inputs(output_dir: Path, images: list[InputImage]) -> None:
    """Refuse the folder that holds an input (one file or a DICOM series folder given as -i, or the target of a
    linked image): an image there named like a prediction (the user's `a.png` beside `a.jpg`) was taken as already
    predicted, or replaced with --overwrite, and the predictions mixed with the images made a later run of the
    folder refuse two files of one case."""
    for image in images:
        if output_dir in _holding_folders(image.path):
            prediction = segmentation_path(output_dir, image).name
            raise AutomedsamError(f"The output folder {output_dir} is the folder that holds the input {image.path}: "
                                  f"its prediction {prediction} would be written among the images, where a file of "
                                  "that name would be taken as already predicted, or replaced with --overwrite. "
                                  f"Choose another output folder, e.g. {output_dir / 'predictions'}.")


def _holding_folders(path: Path) -> set[Path]:
    """The folder an input lies in as given and, for a link, the folder of the file it points to."""
    return {Path(os.path.abspath(path)).parent.resolve(), path.resolve().parent}


def _check_writable(output_dir: Path) -> None:
    """The folder, or the nearest existing folder above it, must let us create files: checked without creating
    anything, so a refused run leaves no empty folder behind."""
    existing = next(folder for folder in (output_dir, *output_dir.parents) if folder.exists())
    if not existing.is_dir():
        raise AutomedsamError(f"Cannot write {output_dir}: {existing} is a file, not a folder. Choose a location "
                              "you can write to, then run the command again.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise AutomedsamError(f"Cannot write {output_dir}: {existing} is not writable for you. Choose a location "
                              "you can write to, then run the command again.")
