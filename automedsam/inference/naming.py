"""Which files of the input are images to predict, and where each prediction goes.

Case ids follow the contract: the file name minus its extension and minus the nnU-Net channel suffix `_0000`,
so `CASE_0000.nii.gz`, `NNN_HC.png` and `benign (3).png` all work; a DICOM file or series folder is named as
automedsam.dicom says. Which files named `CASE_0001`, `CASE_0002`, ... are other channels of a case, not cases, is
told from the model's channels (`channel_reading`). Outputs keep the input's extension, except JPEG (lossy
compression would change label values), which becomes PNG, and DICOM (read only), which becomes .nii.gz with the
image's geometry.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Collection, Mapping, Sequence

from automedsam.dicom import (DICOM_EXTENSIONS, DICOM_OUTPUT_EXTENSION, dicom_case_id, dicom_files, dicom_sources,
                              is_dicom_file, non_image_files)
from automedsam.errors import AutomedsamError
from automedsam.files import load_json
from automedsam.io import LOSSY_EXTENSIONS, SUPPORTED_EXTENSIONS, is_supported, split_extension
from automedsam.paths import check_outside_raw_datasets
from automedsam.samples import CHANNEL_NAME, CHANNEL_SUFFIX, MAX_CHANNELS, case_id_from_stem, channel_layout_cases

_DETACHED_HEADER = re.compile(r"^(?P<stem>.+)\.(?:mhd|nhdr)$", re.IGNORECASE)  # MetaImage's and NRRD's, data apart
_DETACHED_DATA = re.compile(r"^(?P<stem>.+)\.(?:raw|zraw)(?:\.gz)?$", re.IGNORECASE)
NOT_IMAGES = {".json", ".csv", ".tsv", ".txt", ".md"}  # sidecars, box files and notes kept beside images
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
    """The images under `input_path` as a reader of one channel takes them (`list_inputs`): the other channels of
    nnU-Net cases among them are refused (`refuse_other_channels`)."""
    images = list_inputs(input_path)
    refuse_other_channels(images, input_path)
    return images


def list_inputs(input_path: str | Path) -> list[InputImage]:
    """The images under `input_path` (a folder, not recursive, or one file), sorted by case id: image files, DICOM
    files, DICOM series folders inside it, or the folder itself when it holds one series' slices. Which of them are
    other channels of a case is for the model to say (`channel_reading`).

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


@dataclass(frozen=True)
class ChannelReading:
    """What a model reads of the input images: `images` to segment, a `note` naming the other channels of cases
    set aside (None if none), and why each image `left_out` is not segmented (a channel whose case has no `_0000`)."""

    images: list[InputImage]
    note: str | None = None
    left_out: tuple[str, ...] = ()


def channel_reading(images: Sequence[InputImage], input_path: str | Path, *,
                    channel_names: Mapping[str, str]) -> ChannelReading:
    """The images a model whose dataset.json names `channel_names` (`model_channel_names`) reads. With several, it
    reads channel 0 of each case as training did, so the dataset's own imagesTs is predicted as it is (it was
    refused), and a `CASE_0001` without its `CASE_0000` is left out (it was segmented as a case). With one, the
    folder is read as `discover_inputs` reads it."""
    channels = len(channel_names)
    refuse_other_channels(images, input_path, channels=max(channels, 1))
    if channels < 2:
        return ChannelReading(list(images))
    ignored: dict[int, int] = {}  # channel number -> how many cases' files of it are set aside
    left_out: list[str] = []
    aside: set[InputImage] = set()
    for case, files in _numbered(images).items():
        others = {number: image for number, image in sorted(files.items()) if number}
        if not (others and _channel_case(files, channels=channels)):
            continue
        aside.update(others.values())
        for number, image in others.items():
            if 0 in files:
                ignored[number] = ignored.get(number, 0) + 1
            else:
                left_out.append(_without_first_channel(image, case, number, channel_names))
    return ChannelReading([image for image in images if image not in aside], _ignored_note(ignored, channel_names),
                          tuple(left_out))


def _without_first_channel(image: InputImage, case: str, number: int, channel_names: Mapping[str, str]) -> str:
    return (f"{image.path.name} is {_channel_text(number, channel_names)} of case {case}; the model reads "
            f"{_channel_text(0, channel_names)}, and {case}{CHANNEL_SUFFIX} is missing. Add it to the folder, or "
            "take this file out.")


def _ignored_note(ignored: Mapping[int, int], channel_names: Mapping[str, str]) -> str | None:
    """One line for every channel set aside: 'ignored channel 1 (ADC) of 3 cases; the model reads channel 0 (T2)'."""
    if not ignored:
        return None
    counts = " and ".join(f"{_channel_text(number, channel_names)} of {cases} case{'s' if cases > 1 else ''}"
                          for number, cases in sorted(ignored.items()))
    return f"ignored {counts}; the model reads {_channel_text(0, channel_names)}."


def _channel_text(number: int, channel_names: Mapping[str, str]) -> str:
    name = channel_names.get(str(number))
    return f"channel {number}" + (f" ({name})" if name else "")


def refuse_other_channels(images: Sequence[InputImage], input_path: str | Path, *, channels: int = 1) -> None:
    """Refuse the files named as nnU-Net names a case's channels that a model of `channels` cannot take as cases.

    With one channel, `CASE_0001` beside `CASE_0000` is the case's second channel, not a case (it was predicted as
    one); they are told apart from numbered frames (frame_0000, frame_0001, ...) as nnU-Net lays channels out:
    several cases with the same few channels (at most MAX_CHANNELS). With several (`model_channel_names`), a case's
    channels past them (`CASE_0002` of a two-channel model): a case the model was not trained on, of which
    `channel_reading` would read channel 0 as if it were one."""
    numbered = _numbered(images)
    if channels > 1:
        _refuse_channels_past(numbered, input_path, channels=channels)
        return
    cases = channel_layout_cases({case: set(files) for case, files in numbered.items()})
    others = sorted(image.path.name for case in cases for number, image in numbered[case].items() if number)
    if others:
        raise AutomedsamError(f"{_listed(others)} in {input_path}: nnU-Net's name for another channel of a case whose "
                              f"{CHANNEL_SUFFIX} image is there. An automedsam model reads one channel: move the "
                              "other channels out of the folder.")


def _refuse_channels_past(numbered: Mapping[str, Mapping[int, InputImage]], input_path: str | Path, *,
                          channels: int) -> None:
    """Refuse the files numbered past a model's several `channels` beside a case's channels (`CASE_0002` beside
    `CASE_0000` for a model of two): a case of more channels than the model was trained on, not one of its cases."""
    past = [image.path.name for files in numbered.values() if _channel_case(files, channels=channels)
            for number, image in sorted(files.items()) if number >= channels]
    if past:
        raise AutomedsamError(f"{_listed(past)} in {input_path}: nnU-Net's name for a channel past the {channels} the "
                              f"model's dataset.json names (_0000 to _{channels - 1:04d}), beside other channels of "
                              "the same case. Move the files of channels the model was not trained on out of the "
                              "folder, or, if they are numbered frames rather than channels, rename them "
                              "(frame-0002.png, not frame_0002.png).")


def _listed(names: Sequence[str]) -> str:
    return f"{', '.join(names[:5])}{' ...' if len(names) > 5 else ''}"


def _numbered(images: Sequence[InputImage]) -> dict[str, dict[int, InputImage]]:
    """Case -> number -> image, for the images named as nnU-Net names a case's channels (`CASE_0001`)."""
    found: dict[str, dict[int, InputImage]] = {}
    for image in images:
        if match := CHANNEL_NAME.fullmatch(split_extension(image.path)[0]):
            found.setdefault(match.group("case"), {})[int(match.group("channel"))] = image
    return found


def _channel_case(numbers: Collection[int], *, channels: int) -> bool:
    """Whether a case's numbered files are channels for a model of several `channels`: at most MAX_CHANNELS, one
    numbered below `channels` among them. More are numbered frames (slice_0000 ... slice_0011), each a case, as is a
    lone number past the channels (patient_0005)."""
    return len(numbers) <= MAX_CHANNELS and min(numbers) < channels


def model_channel_names(model_dir: str | Path) -> dict[str, str]:
    """Channel number -> name as the dataset.json of a trained model folder names them (none where it has none to
    read): with several, `CASE_0001` beside `CASE_0000` in a folder to predict is that case's second channel, even
    for one case."""
    path = Path(model_dir) / "dataset.json"
    if not path.is_file():
        return {}
    meta = load_json(path, "dataset description")
    names = meta.get("channel_names") if isinstance(meta, dict) else None
    return {str(number): str(name) for number, name in names.items()} if isinstance(names, dict) else {}


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
    inputs = {_resolved(image.path) for image in images} - {None}
    for image in images:
        if _resolved(segmentation_path(output_dir, image)) in inputs:
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
    folders = {Path(os.path.abspath(path)).parent.resolve()}
    target = _resolved(path)
    return folders if target is None else folders | {target.parent}


def _resolved(path: Path) -> Path | None:
    """Where `path` leads; None for a link that leads nowhere (a loop of links), an input that is then left out
    with its reason when it is read, as a dangling link is."""
    try:
        return path.resolve()
    except (RuntimeError, OSError):  # Python 3.11 and 3.12 say RuntimeError for a loop
        return None


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
