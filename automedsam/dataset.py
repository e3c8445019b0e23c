"""A raw dataset (nnU-Net v2 layout plus optional boxesTr/): load it, find its cases, and check it.

Every problem is collected first and reported in one error that lists each offending case and the fix, so a user
repairs a dataset in one pass. Loading only reads: nothing inside raw/ is ever written.
"""
from __future__ import annotations

import math
import os
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence, TypeVar

import numpy as np

from automedsam.boxes import BOX_SLICE_AXIS, check_box_entries
from automedsam.errors import AutomedsamError
from automedsam.files import NAME_MAX_BYTES, load_json
from automedsam.io import (MAX_LABEL, MEDICAL_EXTENSIONS, SUPPORTED_EXTENSIONS, Geometry, geometry_mismatch,
                           header_size, max_pixels, read_image, read_segmentation, split_extension)
from automedsam.paths import (DATASET_FOLDER, preprocessed_root, raw_dataset_dir, raw_root, resolve_dataset_name,
                              results_root)
from automedsam.samples import SEPARATOR, SLICE_DIGITS, longest_sample_file_name, numpy_spacing, slicing_axis

REQUIRED_KEYS = ("channel_names", "labels", "numTraining", "file_ending")
SHAPES = ("ellipse",)  # shape priors a dataset.json may declare for a label
CHANNEL_SUFFIX = re.compile(r"^(?P<case>.*)_(?P<channel>\d{4})$")
GEOMETRY_TOLERANCE = 1e-3
FORMAT_DOC = "documentation/dataset_format.md"
INTERACTIVE = "interactive"  # dataset.json "annotation": boxes are drawn with automedsam_annotate, cases may lack them
RingGaps = dict[tuple[int, int], list[int | None]]  # (ring, enclosed label) -> slices holding the label, not the ring
IGNORE_LABEL = "ignore"  # nnU-Net v2's label of unannotated pixels: not a structure, so refused
Keyed = TypeVar("Keyed")  # what a case id keys: a file's path, a box file's boxes


@dataclass
class Case:
    case_id: str
    image: Path
    label: Path | None
    boxes: Path | None
    group: str


@dataclass
class RawDataset:
    name: str
    root: Path
    labels: dict[str, int]
    channel_names: dict[str, str]
    file_ending: str
    cases: list[Case]
    warnings: list[str] = field(default_factory=list)
    interactive: bool = False  # annotated with automedsam_annotate: a case without label or boxes is not drawn yet
    rings: dict[int, list[int]] = field(default_factory=dict)  # declared: ring label -> the labels it encloses
    shapes: dict[int, str] = field(default_factory=dict)  # declared: label -> shape prior ("ellipse")

    @property
    def label_ids(self) -> list[int]:
        """Foreground label ids, sorted."""
        return sorted(value for value in self.labels.values() if value != 0)


def load_raw_dataset(name_or_dir: str | int | os.PathLike, check_images: bool = True) -> RawDataset:
    """Load and validate a raw dataset given by id, folder name or path; never writes.

    With `check_images`, every image, label and box file is opened: readability, matching shape and geometry,
    label values known to dataset.json, boxes inside their image. All-background labels and constant images are
    allowed and listed in `RawDataset.warnings`.
    """
    root = _dataset_root(name_or_dir)
    meta = _load_metadata(root)
    warnings: list[str] = []
    cases, problems = _discover_cases(root, meta, warnings)
    if not cases and not problems:
        raise AutomedsamError(f"{root / 'imagesTr'} holds no image named CASE_0000{meta['file_ending']}. Put the "
                              f"training images there (see {FORMAT_DOC}).")
    unknown_groups = sorted(set(meta["groups"]) - {case.case_id for case in cases} - set(problems))
    if unknown_groups:
        warnings.append(f"dataset.json groups name cases that do not exist: {', '.join(unknown_groups)}.")
    if check_images:
        max_pixels()  # a bad AUTOMEDSAM_MAX_PIXELS is one error, not one per case
        _check_files(cases, meta["labels"], problems, warnings, rings=meta["rings"],
                     interactive=meta["annotation"] == INTERACTIVE)
    if problems:
        lines = "\n".join(f"  - {case_id}: {'; '.join(messages)}" for case_id, messages in sorted(problems.items()))
        raise AutomedsamError(printable_name(f"The dataset {root} has problems in {len(problems)} case(s):\n{lines}\n"
                                             f"Fix or remove these files (format: {FORMAT_DOC}); nothing was changed."))
    return RawDataset(name=root.name, root=root, labels=meta["labels"], channel_names=meta["channel_names"],
                      file_ending=meta["file_ending"], cases=cases, warnings=warnings,
                      interactive=meta["annotation"] == INTERACTIVE, rings=meta["rings"], shapes=meta["shapes"])


def _dataset_root(name_or_dir: str | int | os.PathLike) -> Path:
    text = str(name_or_dir).strip()
    is_identifier = not isinstance(name_or_dir, os.PathLike) and (text.isdigit() or DATASET_FOLDER.match(text))
    # a path made absolute (links kept), so that `-d .` inside a dataset folder has that folder's name
    if is_identifier:
        root = raw_dataset_dir(resolve_dataset_name(text, roots=[raw_root()]))
    else:
        root = Path(os.path.abspath(text))
    if root.is_file():
        raise AutomedsamError(f"{root} is a file, not a dataset folder. Give the dataset id (e.g. 1), its folder name "
                              "(Dataset001_Name) or the path of its raw folder, the one holding dataset.json.")
    if not root.is_dir():
        raise AutomedsamError(f"The dataset folder {root} does not exist. Give the dataset id (e.g. 1), its folder "
                              "name (Dataset001_Name) or the path of its raw folder.")
    return root


def check_dataset_folder(root: Path) -> None:
    """Refuse a dataset folder that the commands after this one could not find by `-d`: the folders written for it
    (preprocessed, results) take its name, so it must be DatasetXXX_Name, and outside the raw root its id must be
    one no other dataset uses (`-d ID` would be ambiguous). A dataset of the raw root is found there as it is."""
    match = DATASET_FOLDER.match(root.name)
    if match is None:
        raise AutomedsamError(f"The dataset folder {root} is not named DatasetXXX_Name, and the folders written for "
                              "it take its name, which the -d of the other commands could not name. Rename it "
                              "DatasetXXX_Name with an id XXX from 001 to 999 that no other dataset uses (see "
                              f"{FORMAT_DOC}).")
    if (raw_root() / root.name).resolve() == root.resolve():
        return
    for searched in (raw_root(), preprocessed_root(), results_root()):
        # a folder of its own name is its own in preprocessed/ and results/, but another dataset in the raw root
        own_name = root.name if searched != raw_root() else None
        others = sorted(path.name for path in searched.glob(f"Dataset{match.group(1)}_*")
                        if path.is_dir() and path.name != own_name and DATASET_FOLDER.match(path.name))
        if root.name in others:
            raise AutomedsamError(f"{root} has the name of the dataset {searched / root.name}: its preprocessed and "
                                  f"results folders would be replaced by this one's, and -d {root.name} would name "
                                  "both for the commands after this one. Rename the folder to an id no other dataset "
                                  "uses.")
        if others:
            raise AutomedsamError(f"The dataset id {match.group(1)} of {root} is already used by {others[0]} in "
                                  f"{searched}, so -d {int(match.group(1))} would be ambiguous for the commands after "
                                  "this one. Rename the folder to an id no other dataset uses.")


def _load_metadata(root: Path) -> dict[str, Any]:
    """dataset.json, checked and normalised; errors name the key and what a valid value looks like."""
    path = root / "dataset.json"
    if path.is_file() and path.stat().st_size == 0:
        raise AutomedsamError(f"{path} is empty. Write the dataset description into it (see {FORMAT_DOC}).")
    if not path.is_file():
        raise AutomedsamError(f"{root} has no dataset.json. Create one with channel_names, labels, numTraining and "
                              f"file_ending (see {FORMAT_DOC}).")
    meta = load_json(path, "dataset description")
    if not isinstance(meta, dict):
        raise AutomedsamError(f"{path} must hold a JSON object with {', '.join(REQUIRED_KEYS)}.")
    missing = [key for key in REQUIRED_KEYS if key not in meta]
    if missing:
        raise AutomedsamError(f"{path} lacks the key(s) {', '.join(missing)}. Add them (see {FORMAT_DOC}).")
    channels = meta["channel_names"]
    if not isinstance(channels, dict) or not channels:
        raise AutomedsamError(f'{path}: channel_names must be an object like {{"0": "CT"}}.')
    if "0" not in channels:
        raise AutomedsamError(f'{path}: channel_names names no channel "0" ({", ".join(map(repr, channels))}), the '
                              'channel of the CASE_0000 images automedsam reads. Key the channels by their file '
                              'suffix number from "0", e.g. {"0": "CT", "1": "PET"} for CASE_0000 and CASE_0001.')
    ending = meta["file_ending"]
    if not isinstance(ending, str) or ending.lower() not in SUPPORTED_EXTENSIONS:
        raise AutomedsamError(f"{path}: file_ending {ending!r} is not supported. Use the extension of the image "
                              f"files, one of {', '.join(SUPPORTED_EXTENSIONS)}. A raw dataset holds no DICOM: "
                              "import DICOM files or series folders with automedsam_convert folder --images DIR.")
    count = meta["numTraining"]
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise AutomedsamError(f"{path}: numTraining must be the number of training cases, got {count!r}.")
    groups = meta.get("groups", {})
    if not isinstance(groups, dict) or not all(isinstance(g, (str, int)) and not isinstance(g, bool)
                                               for g in groups.values()):
        raise AutomedsamError(f'{path}: groups must map case ids to group names, e.g. {{"001_HC": "001"}}.')
    annotation = meta.get("annotation")
    if annotation not in (None, INTERACTIVE):
        raise AutomedsamError(f'{path}: annotation {annotation!r} is unknown; the only value is "{INTERACTIVE}" '
                              "(boxes drawn with automedsam_annotate), or leave the key out.")
    labels = checked_labels(meta["labels"], path)
    if ending.lower() not in MEDICAL_EXTENSIONS:  # medical formats carry their own spacing: the key is ignored there
        _check_spacing(meta.get("spacing", {}), path)
    return {"annotation": annotation, "channel_names": {str(k): str(v) for k, v in channels.items()}, "labels": labels,
            "numTraining": count, "file_ending": ending, "groups": {str(k): str(v) for k, v in groups.items()},
            "rings": checked_rings(meta.get("rings", {}), labels, path),
            "shapes": checked_shapes(meta.get("shapes", {}), labels, path)}


def _check_spacing(spacing: Any, path: Path) -> None:
    """dataset.json's optional pixel spacing per case, [sx, sy] for 2D images in formats that cannot store it (PNG):
    every entry is checked here, since planning would fail on it long after loading, or plan with a zero spacing."""
    example = '{"000_HC": [0.15, 0.15]}'
    if not isinstance(spacing, dict):
        raise AutomedsamError(f"{path}: spacing must map case ids to their pixel spacing [sx, sy] in mm, e.g. "
                              f"{example}.")
    bad = [f"{case_id} {value!r}" for case_id, value in spacing.items() if not _is_pixel_spacing(value)]
    if bad:
        shown = "; ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise AutomedsamError(f"{path}: spacing must give each case two positive numbers [sx, sy], its pixel size in "
                              f"mm (2D images), e.g. {example}; these entries do not: {shown}. Fix or remove them.")


def _is_pixel_spacing(value: Any) -> bool:
    """Two finite positive numbers: a 2D image's pixel size."""
    return isinstance(value, list) and len(value) == 2 and all(
        isinstance(number, (int, float)) and not isinstance(number, bool) and math.isfinite(number) and number > 0
        for number in value)


def checked_rings(rings: Any, labels: dict[str, int], where: str | Path) -> dict[int, list[int]]:
    """Declared ring structure by label id (`where` names the file or option in errors): a ring label is trained as
    its filled region, itself and the labels it encloses."""
    example = '{"MYO": ["LV"]}'
    names = [name for name in labels if labels[name] != 0]
    if not isinstance(rings, dict) or not all(isinstance(inner, list) and inner for inner in rings.values()):
        raise AutomedsamError(f"{where}: rings must map a ring label's name to the names of the labels it encloses, "
                              f"e.g. {example}.")
    unknown = sorted({str(name) for ring, inner in rings.items() for name in [ring, *inner]} - set(names))
    if unknown:
        raise AutomedsamError(f"{where}: rings name label(s) {', '.join(unknown)} that dataset.json labels do not "
                              f"define (foreground labels: {', '.join(names)}).")
    for ring, inner in rings.items():
        if ring in inner or len(set(inner)) != len(inner):
            raise AutomedsamError(f"{where}: rings[{ring!r}] must list other labels, each once, got {inner}.")
        nested = sorted(set(inner) & set(rings))
        if nested:
            raise AutomedsamError(f"{where}: rings[{ring!r}] encloses {', '.join(nested)}, itself declared a ring; "
                                  "nested rings are not supported.")
    return {labels[ring]: sorted(labels[name] for name in inner) for ring, inner in rings.items()}


def checked_shapes(shapes: Any, labels: dict[str, int], where: str | Path) -> dict[int, str]:
    """Declared shape priors by label id (`where` names the file or option in errors): a label declared an ellipse
    learns from the ellipse inscribed in each of its boxes."""
    names = [name for name in labels if labels[name] != 0]
    if not isinstance(shapes, dict) or not all(value in SHAPES for value in shapes.values()):
        raise AutomedsamError(f'{where}: shapes must map label names to one of {", ".join(SHAPES)}, e.g. '
                              '{"head": "ellipse"}.')
    unknown = sorted(set(map(str, shapes)) - set(names))
    if unknown:
        raise AutomedsamError(f"{where}: shapes name label(s) {', '.join(unknown)} that dataset.json labels do not "
                              f"define (foreground labels: {', '.join(names)}).")
    return {labels[name]: shape for name, shape in shapes.items()}


def checked_labels(labels: Any, path: Path) -> dict[str, int]:
    """dataset.json's labels checked (names -> distinct ids from 0 to MAX_LABEL, background 0, one structure at
    least, no nnU-Net ignore label), for every reader of a dataset.json: errors name `path` and show a valid value."""
    example = '{"background": 0, "tumour": 1}'
    if not isinstance(labels, dict) or not labels:
        raise AutomedsamError(f"{path}: labels must map names to integer ids, e.g. {example}.")
    regions = [name for name, value in labels.items() if isinstance(value, (list, tuple))]
    if regions:
        raise AutomedsamError(_region_labels_message(labels, regions, path))
    bad = [name for name, value in labels.items() if isinstance(value, bool) or not isinstance(value, int) or value < 0]
    if bad:
        raise AutomedsamError(f"{path}: label(s) {', '.join(bad)} must have a non-negative integer id, e.g. "
                              f"{example}.")
    too_large = [f"{name} ({value})" for name, value in labels.items() if value > MAX_LABEL]
    if too_large:
        raise AutomedsamError(f"{path}: label(s) {', '.join(too_large)} exceed {MAX_LABEL}, the largest id automedsam "
                              f"keeps: the preprocessed samples store masks as uint16. Renumber them to {MAX_LABEL} or "
                              "below, in labels and in the labelsTr/ masks.")
    values = list(labels.values())
    if 0 not in values:
        raise AutomedsamError(f"{path}: labels must include the background as 0, e.g. {example}.")
    if len(set(values)) != len(values):
        raise AutomedsamError(f"{path}: two labels share an id ({labels}); give each structure its own id.")
    if len(values) < 2:
        raise AutomedsamError(f"{path}: labels name no structure besides the background, e.g. {example}.")
    if IGNORE_LABEL in labels:
        ignored = labels[IGNORE_LABEL]
        scored = ",".join(str(value) for value in sorted(values) if value not in (0, ignored)) or "IDS"
        raise AutomedsamError(
            f"{path}: the label {IGNORE_LABEL!r} ({ignored}) marks unannotated pixels in nnU-Net v2, "
            "which automedsam does not support: it would learn and predict them as a structure. To train, remove it "
            "from labels and set those pixels to 0 in labelsTr/ where they are background, or give partly annotated "
            f"images as boxes of their structures in boxesTr/ instead (see {FORMAT_DOC}). To score predictions, use "
            f"automedsam_evaluate --labels {scored} --ignore-label {ignored} instead of -d: it leaves those pixels out "
            "of every metric, as nnU-Net's evaluation does.")
    return {str(name): int(value) for name, value in labels.items()}


def _region_labels_message(labels: dict[str, Any], regions: list[str], path: Path) -> str:
    """Why nnU-Net's region-based labels (a name -> a list of class ids, overlapping structures trained as unions)
    are refused, and the way forward: the plain class ids labelsTr/ holds, which automedsam learns one by one."""
    plain = ", ".join(['"background": 0', *(f'"class{value}": {value}' for value in _class_ids(labels))])
    return (f"{path}: label(s) {', '.join(regions)} are nnU-Net region-based labels (lists of class ids trained as "
            "overlapping regions), which automedsam does not support. To use the dataset, list as labels the plain "
            "class ids its labelsTr/ files hold, each named after its structure, e.g. "
            f"{{{plain}}}, without regions_class_order, in a copy of dataset.json: keep nnU-Net's beside it as "
            "dataset_regions.json and write the plain labels into dataset.json (or into the dataset.json of a copy "
            f"of the dataset folder under another DatasetXXX id; see {FORMAT_DOC}). Each class is then learnt and "
            "predicted on its own; a region is the union of its classes in the predicted label maps.")


def _class_ids(labels: dict[str, Any]) -> list[int]:
    """The foreground class ids that region-based labels name, in a region's list or alone."""
    found = set()
    for value in labels.values():
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(item, int) and not isinstance(item, bool) and item > 0:
                found.add(item)
    return sorted(found)


def _discover_cases(root: Path, meta: dict[str, Any], warnings: list[str]) -> tuple[list[Case], dict[str, list[str]]]:
    """Match imagesTr/CASE_0000, labelsTr/CASE and boxesTr/CASE.json; collect problems per case."""
    ending = meta["file_ending"]
    images_dir, labels_dir, boxes_dir = root / "imagesTr", root / "labelsTr", root / "boxesTr"
    if not images_dir.is_dir():
        raise AutomedsamError(f"{root} has no imagesTr/ folder. Put the training images there as CASE_0000{ending} "
                              f"(see {FORMAT_DOC}).")
    problems: dict[str, list[str]] = {}
    images: dict[str, Path] = {}
    other_endings: set[str] = set()
    extra_channels = 0
    for path in sorted(images_dir.iterdir()):
        if not path.name.endswith(ending):
            if _visible(path.name, path.name) and split_extension(path)[1].lower() in SUPPORTED_EXTENSIONS:
                other_endings.add(split_extension(path)[1])
            continue
        stem = path.name[: -len(ending)]
        match = CHANNEL_SUFFIX.match(stem)
        if not _visible(path.name, match["case"] if match else stem):
            continue
        if match is None:
            problems.setdefault(stem, []).append(f"image {path.name} lacks the channel suffix; rename it to "
                                                 f"{stem}_0000{ending}")
        elif match["channel"] != "0000":
            extra_channels += 1
        else:
            images[match["case"]] = path
    if other_endings and not images:
        raise AutomedsamError(f"{root / 'dataset.json'}: file_ending is {ending!r} but imagesTr/ holds "
                              f"{', '.join(sorted(other_endings))} files. Set file_ending to the images' extension.")
    if other_endings and images:
        warnings.append(f"imagesTr/ also holds {', '.join(sorted(other_endings))} files, ignored: file_ending is "
                        f"{ending!r}.")
    if extra_channels:
        warnings.append(f"imagesTr/ holds {extra_channels} files of channels other than _0000; automedsam uses "
                        "channel 0 only.")
    if images and meta["numTraining"] != len(images):
        warnings.append(f"dataset.json says numTraining={meta['numTraining']} but imagesTr/ holds {len(images)} "
                        "cases.")
    # a labelsTr/ or boxesTr/ copied from macOS names its files in another Unicode normalisation than imagesTr/
    labels = spelled_as(_files_by_case(labels_dir, ending), images, folders=(labels_dir, images_dir))
    boxes = spelled_as(_files_by_case(boxes_dir, ".json"), images, folders=(boxes_dir, images_dir))
    for case_id in sorted(set(images) | set(labels) | set(boxes)):
        reason = unsafe_case_id(case_id, image=images.get(case_id) or labels.get(case_id))
        if reason:
            problems.setdefault(case_id, []).append(f"case id {reason}; rename the files to a plain case id")
        elif case_id not in images:
            stray = labels.get(case_id) or boxes.get(case_id)
            problems.setdefault(case_id, []).append(f"{stray.parent.name}/{stray.name} has no image "
                                                    f"imagesTr/{case_id}_0000{ending}; add the image or remove it")
        elif case_id not in labels and case_id not in boxes and meta["annotation"] != INTERACTIVE:
            where = "labelsTr/" if labels_dir.is_dir() else "labelsTr/ (folder absent)"
            problems.setdefault(case_id, []).append(f"image has no label {where}{case_id}{ending} and no box file "
                                                    f"boxesTr/{case_id}.json; add one of them")
    cases = [Case(case_id=case_id, image=images[case_id], label=labels.get(case_id), boxes=boxes.get(case_id),
                  group=meta["groups"].get(case_id, case_id))
             for case_id in sorted(images) if case_id not in problems]
    return cases, problems


def _files_by_case(folder: Path, ending: str) -> dict[str, Path]:
    if not folder.is_dir():
        return {}
    return {path.name[: -len(ending)]: path for path in sorted(folder.iterdir())
            if path.name.endswith(ending) and _visible(path.name, path.name[: -len(ending)])}


def _visible(name: str, case_id: str) -> bool:
    """Hidden files (.DS_Store, leftovers of interrupted copies) are skipped, but `.`/`..` case ids are reported."""
    return not name.startswith(".") or case_id in (".", "..")


def unsafe_case_id(case_id: str, *, image: Path | None = None) -> str | None:
    """Why a case id could not serve as a file name inside its folder (`..`, separators, absolute), nor start the
    names of the files automedsam derives from it (not UTF-8, too long for a 2D case's), or None. A name too long
    even for a 2D case is told the limit of its kind, a volume's when `image`'s header says it is one: told a 2D
    image's first, a volume renamed to fit that was refused again with its own."""
    if (reason := malformed_case_id(case_id)) is not None:
        return reason
    if too_long_case_id(case_id, slices=None) is None:  # no header read for the names that fit
        return None
    return too_long_case_id(case_id, slices=_longest_volume_side(image))


def _longest_volume_side(image: Path | None) -> int | None:
    """The longest side of `image` when its header says it is a volume, else None: a 2D image, a format that holds
    only 2D images, or a header that cannot be read (reading the image says why)."""
    size = header_size(image) if image is not None else None
    return max(size) if size is not None and len(size) == 3 else None


def malformed_case_id(case_id: str) -> str | None:
    """`unsafe_case_id` but for the length, whose limit depends on the kind of case: a conversion checks it once it
    knows whether the images are volumes, so that a volume's name is refused with a volume's limit."""
    if not case_id.strip():
        return "is empty"
    if case_id in (".", "..") or "/" in case_id or "\\" in case_id:
        return "would point outside its folder ('.', '..' or a path separator)"
    if os.path.isabs(case_id) or re.match(r"^[A-Za-z]:", case_id):
        return "is an absolute path"
    if any(ord(char) < 32 for char in case_id):
        return "contains control characters"
    if SEPARATOR in case_id:
        return f"contains '{SEPARATOR}', which names a case's slices and views (CASE{SEPARATOR}z007)"
    if not _encodes_as_utf8(case_id):
        return "is not valid UTF-8: a name made on another system, as in some zip files"
    return None


def max_case_id_bytes(*, slices: int | None) -> int:
    """The most UTF-8 bytes a case id may have for the names automedsam derives from it to fit the file system: a 2D
    case's (`slices` None), or a volume's of `slices` slices, whose slice index adds digits."""
    return NAME_MAX_BYTES - len(longest_sample_file_name("", slices=slices).encode("utf-8"))


MAX_CASE_ID_BYTES = max_case_id_bytes(slices=None)
"""What every case id must fit, checked on its name alone (`unsafe_case_id`); a volume's, once its image is read,
fits the fewer bytes its slice names leave (`too_long_case_id`)."""


def too_long_case_id(case_id: str, *, slices: int | None) -> str | None:
    """Why `case_id` (valid UTF-8) is too long for the file names of a 2D case (`slices` None) or of a volume of
    `slices` slices, or None: refused when the dataset loads rather than by the preprocessing that writes them."""
    size = len(case_id.encode("utf-8"))
    if size <= max_case_id_bytes(slices=slices):
        return None
    return f"is {size} bytes; at most {case_id_budget(slices=slices)}"


def case_id_budget(*, slices: int | None) -> str:
    """The most bytes a case id of a 2D case (`slices` None) or of a volume of `slices` slices may have, and why, to
    follow "at most": `243, as the names of automedsam's files add up to 12 bytes to it (CASE_0000.nii.gz)`."""
    longest = longest_sample_file_name("CASE", slices=slices)
    if slices is not None:
        longest += f" for a volume whose longest side has {_sides_alike(slices)} voxels: it may be cut along any axis"
    most = max_case_id_bytes(slices=slices)
    return (f"{most}, as the names of automedsam's files add up to {NAME_MAX_BYTES - most} bytes to it "
            f"({longest})")


def _sides_alike(slices: int) -> str:
    """The longest sides of the volumes whose slice index takes as many digits as the last of `slices` slices, which
    share its case id budget: `at most 1000`, `1001 to 10000`."""
    digits = max(len(str(max(slices - 1, 0))), SLICE_DIGITS)
    return f"at most {10 ** digits}" if digits == SLICE_DIGITS else f"{10 ** (digits - 1) + 1} to {10 ** digits}"


def _encodes_as_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def nfc(name: str) -> str:
    """`name` in Unicode's composed form (NFC). macOS writes file names decomposed (NFD), while names typed in a masks
    folder, a boxes file or a reference folder are mostly composed: they look alike and must pair up."""
    return unicodedata.normalize("NFC", name)


def refuse_normalisation_twins(names: Iterable[str], *, where: str) -> None:
    """Refuse names of `where` that differ only in Unicode normalisation: they look identical, and pairing them by
    `nfc` would take one for the other."""
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(nfc(name), []).append(name)
    twins = [" / ".join(ascii(name) for name in sorted(group)) for group in groups.values() if len(group) > 1]
    if twins:
        raise AutomedsamError(f"{where} holds names that differ only in how their accented letters are encoded "
                              f"(Unicode normalisation), so that they look identical: {'; '.join(twins)}. Rename or "
                              "remove one of each pair.")


def spelled_as(files: Mapping[str, Keyed], spelled: Mapping[str, Any], *,
               folders: tuple[str | os.PathLike, str | os.PathLike]) -> dict[str, Keyed]:
    """`files` keyed by the spelling of the same case id in `spelled` where the two differ only in Unicode
    normalisation (`nfc`): a folder written on macOS holds decomposed names, one written elsewhere composed ones.
    `folders` are where each comes from, named when one holds look-alike twins."""
    for folder, names in zip(folders, (files, spelled)):
        refuse_normalisation_twins(names, where=str(folder))
    spellings = {nfc(case): case for case in spelled}
    return {spellings.get(nfc(case), case): value for case, value in files.items()}


def printable_name(text: str) -> str:
    """`text` with the bytes of a file name that are not UTF-8, which Python reads as lone surrogates, shown as \\xNN:
    printed as they are, they stopped the command with a UnicodeEncodeError."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate that no file name's byte gives (JSON's \udXXX)
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _check_files(cases: list[Case], labels: dict[str, int], problems: dict[str, list[str]],
                 warnings: list[str], *, rings: dict[int, list[int]], interactive: bool) -> None:
    """Open every file of every case; record problems per case (never raises for a single bad case)."""
    known = set(labels.values())
    dims: dict[int, list[str]] = {}
    volumes: list[tuple[tuple[float, ...], tuple[int, ...]]] = []  # (SimpleITK spacing, shape) of each volume
    gaps: dict[str, dict[int | None, RingGaps]] = {}
    for case in cases:
        found = problems.setdefault(case.case_id, [])
        try:
            image, geometry = read_image(case.image)
        except AutomedsamError as exc:
            found.append(str(exc))
            continue
        shape = image.shape[: geometry.ndim]
        dims.setdefault(len(shape), []).append(case.case_id)
        if len(shape) == 3:
            volumes.append((geometry.spacing, shape))
            if (reason := too_long_case_id(case.case_id, slices=max(shape))) is not None:  # cut along any axis
                found.append(f"case id {reason}; rename the files to a shorter case id")
        if image.size and image.min() == image.max():
            warnings.append(f"{case.case_id}: the image is constant (every pixel {image.flat[0]}).")
        if case.label is not None:
            label = _check_label(case, shape, geometry, known, found, warnings)
            if label is not None and rings:
                gaps[case.case_id] = ring_gaps(label, rings)
        if case.boxes is not None:
            try:
                checked_case_boxes(load_json(case.boxes, "box file"), shape=shape, labels=labels, rings=rings,
                                   where=f"box file {case.boxes}")
            except AutomedsamError as exc:
                found.append(str(exc))
    if gaps:
        boxed = boxes_fix_slicing_axis(cases, interactive=interactive)
        axis = volumes_slicing_axis(volumes, boxed=boxed) if volumes else None
        for case_id, messages in missing_ring_labels(gaps, labels=labels, axis=axis).items():
            problems[case_id].extend(messages)
    if len(dims) > 1:
        fewer = min(dims, key=lambda ndim: len(dims[ndim]))
        for case_id in dims[fewer]:
            problems[case_id].append(f"the image is {fewer}D while other cases are "
                                     f"{max(dims, key=lambda ndim: len(dims[ndim]))}D; a dataset holds one kind")
    for case_id in [case_id for case_id, messages in problems.items() if not messages]:
        del problems[case_id]


def checked_case_boxes(entries: Any, *, shape: tuple[int, ...], labels: dict[str, int],
                       rings: Mapping[int, Sequence[int]] | None = None, where: str) -> list[dict]:
    """A case's box entries checked as every box file is: structure, slice and box inside the image of numpy
    `shape`, labels that dataset.json defines (the background excluded), and the box of each of its `rings`
    (`RawDataset.rings`) on every slice, or 2D image, that boxes a label the ring encloses. Raises AutomedsamError
    naming `where`."""
    checked = check_box_entries(entries, shape, where)
    known = set(labels.values()) - {0}
    unknown = sorted({entry["label"] for entry in checked} - known)
    if unknown:
        raise AutomedsamError(f"{where} uses label(s) {unknown} that dataset.json does not define ({sorted(known)}); "
                              "fix the box file or add the labels")
    missing_rings = _missing_ring_boxes(checked, labels=labels, rings=rings or {})
    if missing_rings:
        raise AutomedsamError(f"{where}: {' '.join(missing_rings)}")
    return checked


def declared_rings(root: Path) -> dict[int, list[int]]:
    """The rings the dataset.json of the dataset folder `root` declares now, for a check that outlives the loaded
    dataset (the annotation page's saves, while the folder may be imported again)."""
    return _load_metadata(root)["rings"]


def _missing_ring_boxes(entries: list[dict], *, labels: dict[str, int],
                        rings: Mapping[int, Sequence[int]]) -> list[str]:
    """One sentence per enclosed label boxed where its ring is not: the ring is trained as its filled region, which
    holds the enclosed label, so such a slice would teach that the region is absent where its cavity is drawn
    (always an annotator's slip)."""
    boxed: dict[int | None, set[int]] = {}
    for entry in entries:
        boxed.setdefault(entry.get("slice"), set()).add(entry["label"])
    names = {value: name for name, value in labels.items()}
    problems = []
    for ring, enclosed in sorted(rings.items()):
        for inner in enclosed:
            slices = [index for index, present in boxed.items() if inner in present and ring not in present]
            if slices:
                problems.append(_missing_ring_message(names[inner], names[ring], slices))
    return problems


def _missing_ring_message(inner: str, ring: str, slices: list[int | None], *, in_mask: bool = False,
                          axis: int | None = BOX_SLICE_AXIS) -> str:
    """What to draw where `inner` is boxed (labelled, `in_mask`) on `slices` along array `axis` (None: the 2D image)
    without the ring around it."""
    numbers = sorted(index for index in slices if index is not None)
    on = f" on slice{'s' if len(numbers) > 1 else ''} {', '.join(map(str, numbers))}" if numbers else ""
    if numbers and axis != BOX_SLICE_AXIS:
        on += f" along array axis {axis}"
    declared = f"dataset.json declares {ring} a ring around {inner}"
    if in_mask:
        return (f"{inner} is labelled{on} but {ring} is not; {declared}, so label {ring}'s pixels around it there too "
                f"(or remove the {inner} label there; if {ring} lies inside {inner}, the ring is declared the wrong "
                f'way round: "rings": {{"{inner}": ["{ring}"]}}).')
    plural = "es" if len(numbers) > 1 else ""
    return (f"{inner} is boxed{on} but {ring} is not; {declared}, so draw {ring}'s box{plural} around its outer edge "
            f"too (or remove the {inner} box{plural}).")


def ring_gaps(label_map: np.ndarray, rings: Mapping[int, Sequence[int]]) -> dict[int | None, RingGaps]:
    """Where a mask holds a label that a declared ring encloses but not the ring, as a box file may not (the ring's
    filled region would be trained absent around its drawn cavity): under None for a 2D map, under each array axis
    for a volume, since the dataset's slicing axis is known only once every case is read."""
    axes: list[int | None] = [None] if label_map.ndim == 2 else list(range(label_map.ndim))
    gaps: dict[int | None, RingGaps] = {axis: {} for axis in axes}
    for ring, enclosed in sorted(rings.items()):
        ring_mask = label_map == ring
        for inner in enclosed:
            inner_mask = label_map == inner
            for axis in axes:
                lacking = np.flatnonzero(_presence(inner_mask, axis) & ~_presence(ring_mask, axis))
                if lacking.size:
                    gaps[axis][(ring, inner)] = [None] if axis is None else lacking.tolist()
    return gaps


def _presence(mask: np.ndarray, axis: int | None) -> np.ndarray:
    """Whether each slice along `axis` holds some of `mask` (None: the whole map, one slice)."""
    return np.atleast_1d(mask.any(axis=tuple(other for other in range(mask.ndim) if other != axis)))


def dataset_slicing_axis(*, boxed: bool, coarsest: int) -> int:
    """The rule choosing the array axis a 3D dataset is cut along: the box files' axis when they fix it (`boxed`,
    `boxes_fix_slicing_axis`), else the `coarsest` median spacing (`coarsest_median_axis`). Planning
    (planner.plan_slicing, from the fingerprint) and the load-time ring check (`volumes_slicing_axis`) both call it,
    so the masks are checked along the axis their samples are cut along."""
    return BOX_SLICE_AXIS if boxed else coarsest


def boxes_fix_slicing_axis(cases: Sequence[Case], *, interactive: bool) -> bool:
    """Whether box files fix the slicing axis: some case is given as boxes alone, or the dataset is annotated on the
    page (`interactive`), and a box file numbers its slices along BOX_SLICE_AXIS."""
    return interactive or any(case.boxes is not None and case.label is None for case in cases)


def coarsest_median_axis(volumes: Sequence[tuple[Sequence[float], Sequence[int]]]) -> int:
    """The array axis of the coarsest median spacing of volumes (SimpleITK spacing, numpy shape), as
    samples.slicing_axis picks it: cut along it, the in-plane images keep their full resolution."""
    return slicing_axis(np.median([numpy_spacing(spacing) for spacing, _ in volumes], axis=0),
                        np.median([shape for _, shape in volumes], axis=0))


def volumes_slicing_axis(volumes: Sequence[tuple[Sequence[float], Sequence[int]]], *, boxed: bool) -> int:
    """The array axis planning cuts a dataset's volumes (SimpleITK spacing, numpy shape) along, by
    `dataset_slicing_axis`."""
    return dataset_slicing_axis(boxed=boxed, coarsest=coarsest_median_axis(volumes))


def missing_ring_labels(gaps: Mapping[str, Mapping[int | None, RingGaps]], *, labels: dict[str, int],
                        axis: int | None) -> dict[str, list[str]]:
    """Per case, one sentence per label its mask holds without the ring declared around it, on the dataset's
    slicing `axis` (None for 2D; `ring_gaps` gives each case's gaps)."""
    names = {value: name for name, value in labels.items()}
    found: dict[str, list[str]] = {}
    for case_id, by_axis in gaps.items():
        along = None if None in by_axis else axis  # a 2D map has one slice, whatever the dataset's axis
        for (ring, inner), slices in by_axis[along].items():
            found.setdefault(case_id, []).append(
                _missing_ring_message(names[inner], names[ring], slices, in_mask=True, axis=along))
    return found


def _check_label(case: Case, shape: tuple[int, ...], geometry: Geometry, known: set[int], found: list[str],
                 warnings: list[str]) -> np.ndarray | None:
    """Record the problems of the case's mask in `found`; return it when its values are the dataset's labels, for
    the checks that need every case read first."""
    try:
        label, label_geometry = read_segmentation(case.label)
    except AutomedsamError as exc:
        found.append(str(exc))
        return None
    if label.shape != shape:
        found.append(f"image shape {shape} differs from label shape {label.shape} ({case.label.name}); the label "
                     "must be drawn on the same pixel grid")
        return None
    mismatch = geometry_mismatch(geometry, label_geometry, GEOMETRY_TOLERANCE)
    if mismatch:
        found.append(f"image and label {case.label.name} differ in geometry ({mismatch}); save the label with the "
                     "image's spacing, origin and direction")
    values = {int(value) for value in np.unique(label)}
    unknown = sorted(values - known)
    if unknown:
        hint = " (a 0/255 mask: save it as 0/1)" if unknown == [255] else ""
        found.append(f"label {case.label.name} holds value(s) {unknown} not defined in dataset.json labels "
                     f"{sorted(known)}{hint}; fix the label or add the values to dataset.json")
        return None
    if values <= {0}:
        warnings.append(f"{case.case_id}: the label {case.label.name} is all background.")
    return label
