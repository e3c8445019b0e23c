"""Import any folder of 2D/3D images with masks, with boxes drawn by an annotator, or with nothing yet.

Without masks or boxes the dataset is marked `"annotation": "interactive"` in dataset.json: its labels are declared,
`automedsam_plan_and_preprocess` draws the samples to annotate and `automedsam_annotate` collects their boxes.

Masks are matched to images by file name: the same stem in the masks folder, or the stem plus a common suffix
(`benign (3).png` <- `benign (3)_mask.png`, also `_seg`, `_label`, `_gt`); several numbered masks of one image
(`_mask_1`, `_mask_2`) are merged. With one structure, masks may be saved as 0/1, 0/255 or colour: every object
pixel becomes label 1, and a label map of several structures (values 1, 2, 3, colours), or pixels brighter than the
object (an ignore border), is refused rather than merged or kept in the object's place. With
several structures (`--label` repeated), masks are label maps whose values 1, 2, ... are the structures in the order
named; boxes carry those label values too.
Case ids keep the image's own name so users find their files again, but for an image CASE_0000 that takes the mask
CASE (nnU-Net's naming of a case's first channel, whatever the format): it is case CASE. Images and masks may share
one folder.
DICOM images (files, and series folders read as volumes: automedsam.dicom) are written as .nii.gz, or .png when any
2D image is colour (a colour DICOM, or a colour .png/.jpg beside them; dataset.json's `spacing` then keeps the pixel
spacing a .png cannot); their masks are any other supported format, named after the DICOM file or series folder.
Images of one patient or examination are grouped by a regular expression on the case id (`--group-pattern`), so
that the few-shot draw and the folds keep them together.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
from PIL import Image

from automedsam.boxes import validate_box, write_box_file
from automedsam.conversion.staging import progress_over, staged_dataset, write_dataset_json
from automedsam.dataset import (GEOMETRY_TOLERANCE, IGNORE_LABEL, INTERACTIVE, RingGaps, case_id_budget,
                                checked_case_boxes, checked_rings, checked_shapes, malformed_case_id,
                                missing_ring_labels, nfc, printable_name, refuse_normalisation_twins, ring_gaps,
                                too_long_case_id, volumes_slicing_axis)
from automedsam.dicom import DICOM_OUTPUT_EXTENSION, dicom_layout, dicom_sources, non_image_files
from automedsam.errors import AutomedsamError
from automedsam.files import copy_file, load_json
from automedsam.io import (LOSSY_EXTENSIONS, MEDICAL_EXTENSIONS, Geometry, as_label_map, geometry_mismatch,
                           header_size, is_colour, is_supported, one_object_mask, read_image, split_extension,
                           write_image, write_segmentation)
from automedsam.samples import (CHANNEL_NAME, CHANNEL_SUFFIX, SEPARATOR, SLICE_DIGITS, case_id_from_stem,
                                channel_layout_cases)

MASK_SUFFIXES = ("_mask", "_seg", "_label", "_gt")
MIN_PLATEAU_PIXELS = 20  # a mask value filling fewer pixels is an edge or a speck, not a structure of its own
OVERSHOOT = 1.25  # mask pixels this much brighter than the object are resampling overshoot, not a value of their own
COLOUR_TOLERANCE = 8  # mask colours within the peak channel value / this, in every channel, are one colour (JPEG noise)
BLACK_NOISE = 16  # a colour mask's colours within the peak channel value / this of black are background (JPEG noise)
# Volumes up to this long (along their longest side) share the largest case id budget a volume has, checked on the
# names before anything is written; a longer one's, once its image is read.
SHORT_VOLUME_SLICES = 10 ** SLICE_DIGITS
_MASK_NAME = re.compile(r"^(?P<stem>.+?)(?:" + "|".join(MASK_SUFFIXES) + r")(?:_\d+)?$")


def convert_folder(images: str | Path, *, masks: str | Path | None = None, boxes: str | Path | None = None,
                   dataset_id: int, name: str, label_names: Sequence[str] = ("foreground",),
                   group_pattern: str | None = None, rings: Mapping[str, Sequence[str]] | None = None,
                   shapes: Mapping[str, str] | None = None, overwrite: bool = False,
                   report: Callable[[str], None] | None = None) -> Path:
    """Convert `images` with a `masks` folder, a `boxes` JSON file, or neither (to annotate interactively) into
    raw/DatasetXXX_Name; `label_names` become labels 1, 2, ..., the values of the masks and boxes. `rings` (ring
    name -> enclosed names) and `shapes` (name -> "ellipse") are written to dataset.json as declared structure.
    `report` is told which entries of the images folder no image was read from (an unsupported format, a folder of
    non-DICOM files, a DICOM file without an image) and which --label no mask holds, so that none is left out
    without a word."""
    if masks is not None and boxes is not None:
        raise AutomedsamError("Give --masks DIR (one mask per image) or --boxes FILE (boxes per image), not both; "
                              "give neither to draw the boxes with automedsam_annotate.")
    labels = _checked_label_names(label_names)
    declared = {key: value for key, value in (("rings", {ring: list(inner) for ring, inner in (rings or {}).items()}),
                                              ("shapes", dict(shapes or {}))) if value}
    checked_rings(declared.get("rings", {}), labels, "--ring")
    checked_shapes(declared.get("shapes", {}), labels, "--shape")
    masks_here = masks is not None and Path(masks).resolve() == Path(images).resolve()
    image_files = list_images(Path(images), masks_here=masks_here)
    dimensions = _check_one_kind(image_files, Path(images))
    _refuse_long_case_ids(image_files, Path(images), slices=SHORT_VOLUME_SLICES if 3 in dimensions else None)
    _refuse_other_channels(image_files, Path(images))
    image_files, mask_files = match_masks(image_files, Path(masks)) if masks is not None else (image_files, None)
    groups = case_groups(image_files, group_pattern)
    if report is not None:
        _report_left_out(Path(images), image_files, [path for paths in (mask_files or {}).values() for path in paths],
                         report=report)
    box_entries = read_boxes(Path(boxes), image_files) if boxes is not None else None
    kept = {path: _kept_extension(path) for path in image_files.values()}  # a DICOM's header read once
    file_ending = output_file_ending(set(kept.values()))
    if file_ending == DICOM_OUTPUT_EXTENSION and dimensions == {2} and any(
            _stored_in_colour(path, ending) for path, ending in kept.items()):
        file_ending = ".png"  # a colour image among 2D images: a .nii.gz would hold one channel
    spacing: dict[str, list[float]] = {}
    found_labels: set[int] = set()
    ring_values = {labels[ring]: [labels[inner] for inner in enclosed]
                   for ring, enclosed in declared.get("rings", {}).items()}
    with staged_dataset(dataset_id, name, overwrite) as staging:
        shapes = {}
        volumes: list[tuple[tuple[float, ...], tuple[int, ...]]] = []  # (SimpleITK spacing, shape) of each volume
        gaps: dict[str, dict[int | None, RingGaps]] = {}
        for case_id, image in progress_over(image_files.items(), len(image_files), "cases"):
            shape, geometry = _write_image(staging.folder / "imagesTr" / f"{case_id}_0000{file_ending}", image,
                                           case_id=case_id)
            shapes[case_id] = shape
            if len(shape) == 3:
                volumes.append((geometry.spacing, shape))
            if geometry.kind == "sitk" and file_ending not in MEDICAL_EXTENSIONS:
                spacing[case_id] = [float(value) for value in geometry.spacing]  # a .png cannot store it
            if mask_files is not None:
                label_map = _merged_mask(mask_files[case_id], shape, geometry, case_id, labels=labels)
                write_segmentation(staging.folder / "labelsTr" / f"{case_id}{file_ending}", label_map, geometry)
                found_labels.update(np.unique(label_map).tolist())
                if ring_values:
                    gaps[case_id] = ring_gaps(label_map, ring_values)
            elif box_entries is not None:
                where = f"{boxes}, case {case_id!r}"
                entries = _checked_boxes(box_entries[case_id], shape, where, structures=len(labels) - 1)
                write_box_file(staging.folder / "boxesTr" / f"{case_id}.json",
                               checked_case_boxes(entries, shape=shape, labels=labels, rings=ring_values, where=where))
        if gaps:
            _refuse_missing_rings(gaps, labels=labels, volumes=volumes, mask_files=mask_files)
        interactive = {"annotation": INTERACTIVE} if mask_files is None and box_entries is None else {}
        if interactive:
            _carry_drawn_boxes(staging.target / "boxesTr", staging.folder / "boxesTr", shapes,
                               structures=len(labels) - 1)
        write_dataset_json(
            staging.folder, name=name, labels=labels, channel_names={"0": "image"},
            file_ending=file_ending, groups=groups,
            description=f"Imported with automedsam_convert folder from {Path(images).resolve()}.", **interactive,
            **declared, **({"spacing": spacing} if spacing else {}),
        )
    unused = None
    if mask_files is not None:
        lossy = any(split_extension(path)[1].lower() in LOSSY_EXTENSIONS for paths in mask_files.values()
                    for path in paths)
        unused = _unused_labels(labels, found_labels, Path(masks), lossy=lossy)
    if unused and report is not None:
        report(unused)
    return staging.target


def _refuse_missing_rings(gaps: Mapping[str, Mapping[int | None, RingGaps]], *, labels: dict[str, int],
                          volumes: list[tuple[tuple[float, ...], tuple[int, ...]]],
                          mask_files: Mapping[str, list[Path]]) -> None:
    """Refuse masks holding a label that --ring encloses without the ring, on the slicing axis planning will take
    (the import's volumes all have masks): loading the dataset would refuse them, as the import of box files does."""
    axis = volumes_slicing_axis(volumes, boxed=False) if volumes else None
    problems = [f"Case {case_id!r} ({', '.join(map(str, mask_files[case_id]))}): {message}"
                for case_id, messages in missing_ring_labels(gaps, labels=labels, axis=axis).items()
                for message in messages]
    if problems:
        more = f" And {len(problems) - 5} more." if len(problems) > 5 else ""
        raise AutomedsamError(" ".join(problems[:5]) + more)


def _report_left_out(images: Path, image_files: Mapping[str, Path], masks: list[Path], *,
                     report: Callable[[str], None]) -> None:
    """Name the entries of the images folder that no image or mask was read from, and apart from them the DICOM
    files without an image (a report beside the stills, an RT structure set in a series folder), which need no
    conversion but are named so that none is left out without a word."""
    without_image = _dicom_without_image(images, image_files.values())
    skipped = [name for name in left_out(images, [*image_files.values(), *masks]) if name not in without_image]
    if skipped:
        report(f"Left out {len(skipped)} entr{'y' if len(skipped) == 1 else 'ies'} of {images} that hold no image "
               f"automedsam reads: {_shown(skipped)}. To import them, save them as PNG, TIFF, NIfTI or DICOM "
               "directly in that folder.")
    if without_image:
        report(f"Left out {len(without_image)} DICOM file{'' if len(without_image) == 1 else 's'} of {images} that "
               f"hold{'s' if len(without_image) == 1 else ''} no image (a structured report, an RT structure set or "
               f"plan, a presentation state, an encapsulated PDF, another kind without pixel data such as raw data "
               f"or a vendor's private header): {_shown(without_image)}.")


def _dicom_without_image(images: Path, sources: Iterable[Path]) -> list[str]:
    """The DICOM files without an image in the images folder and in the series folders read from it, named from the
    images folder (`series/RS.1.dcm`)."""
    folders = dict.fromkeys([images, *(path for path in sources if path.is_dir())])
    return sorted(path.relative_to(images).as_posix() for folder in folders for path in non_image_files(folder))


def _unused_labels(labels: dict[str, int], found: set[int], masks: Path, *, lossy: bool) -> str | None:
    """A warning naming the --label values that no mask holds: per-structure 0/1 masks all read as label 1, and the
    labels after it would stay empty without a word; masks that are all background leave every label empty (JPEG
    masks saved as 0/1 may have lost their objects to compression: `lossy` says to look for that too)."""
    missing = [f"{name} (value {value})" for name, value in labels.items() if value and value not in found]
    if not missing:
        return None
    if not found - {0}:
        return (f"No mask in {masks} holds an object: every mask is all background, so the dataset has nothing to "
                "learn from. Check that --masks names the folder of the masks and that they mark the structure with "
                "values other than 0" + (" (a 0/1 mask saved as JPEG can come back all 0, its object lost to "
                                          "compression: save such masks as PNG)." if lossy else "."))
    return (f"No mask holds --label {', '.join(missing)}, so the dataset has no object of it to learn from. A mask's "
            "values 1, 2, ... are the --label names in the order given (a mask saved as 0/1 or 0/255 marks the "
            "first): save each mask as a label map of the structures it shows, or leave out the --label.")


def _carry_drawn_boxes(previous: Path, boxes_dir: Path, shapes: Mapping[str, tuple[int, ...]], *,
                       structures: int) -> None:
    """An unannotated import into a dataset that exists (--overwrite, e.g. to add images) keeps the boxes drawn on
    the annotation page (and the images marked empty) for the images it imports again; boxes that no longer fit
    their image or labels are refused, never dropped."""
    for path in sorted(previous.glob("*.json")) if previous.is_dir() else []:
        case_id = path.name[: -len(".json")]
        if case_id in shapes:
            where = f"{path} (drawn before this import; move it away to import without it)"
            write_box_file(boxes_dir / path.name, _checked_boxes(load_json(path, "box file"), shapes[case_id],
                                                                 where, structures=structures))


def _checked_label_names(names: Sequence[str]) -> dict[str, int]:
    """dataset.json labels for the --label names: background 0, then 1, 2, ... in the order given."""
    if isinstance(names, str):
        names = [names]
    if not names:
        raise AutomedsamError("Name the structure to segment with --label, e.g. --label lesion.")
    for label_name in names:
        if not label_name.strip():
            raise AutomedsamError(f"--label {label_name!r} is empty: give the structure's name, e.g. --label lesion.")
        if label_name in ("background", IGNORE_LABEL):
            raise AutomedsamError(f"--label {label_name!r} cannot name a structure (nnU-Net reserves 'background' and "
                                  "'ignore'); use e.g. --label lesion.")
    if len(set(names)) != len(names):
        raise AutomedsamError(f"--label names {list(names)} repeat a name; give each structure once.")
    return {"background": 0, **{label_name: value for value, label_name in enumerate(names, start=1)}}


def output_file_ending(extensions: set[str]) -> str:
    """The images' own extension when it is lossless; else .png (or .nii.gz when volumes are among them)."""
    if len(extensions) == 1 and not extensions & set(LOSSY_EXTENSIONS):
        return extensions.pop()
    return ".nii.gz" if extensions & set(MEDICAL_EXTENSIONS) else ".png"


def _kept_extension(path: Path) -> str:
    """The extension an image would keep in the raw dataset: its own, or for DICOM (a series folder, or a file of
    no supported extension: nnU-Net's layout holds no DICOM) .nii.gz, .png for a colour 2D image (a .nii.gz holds
    one channel)."""
    if path.is_file() and is_supported(path):
        return split_extension(path)[1].lower()
    return ".png" if dicom_layout(path) == (2, 3) else DICOM_OUTPUT_EXTENSION


def _stored_in_colour(path: Path, kept_ending: str) -> bool:
    """Whether a 2D image keeps colour channels: a colour DICOM (its kept ending says so), or a natural image whose
    pixels are colour (decoded only when its mode allows colour: a gray image saved as RGB is read as gray)."""
    if path.is_dir() or not is_supported(path):
        return kept_ending == ".png"
    if kept_ending in MEDICAL_EXTENSIONS or not _mode_allows_colour(path):
        return False
    pixels, geometry = read_image(path)
    return is_colour(pixels, geometry)


def _mode_allows_colour(path: Path) -> bool:
    """From the header alone: a gray, 16-bit or float mode holds no colour; an unreadable file is read to say why."""
    try:
        with Image.open(path) as image:
            return not (image.mode in ("1", "L", "LA", "La", "I", "F") or image.mode.startswith("I;16"))
    except (OSError, ValueError, SyntaxError):
        return True


def case_groups(case_ids: Iterable[str], pattern: str | None) -> dict[str, str]:
    """Case id -> group: the regular expression's named group `group` (else its first group, else the whole match)
    searched in the case id; every case its own group without a pattern."""
    case_ids = list(case_ids)
    if pattern is None:
        return {case_id: case_id for case_id in case_ids}
    try:
        compiled = re.compile(pattern)
    except re.error as error:
        raise AutomedsamError(f"--group-pattern {pattern!r} is not a valid regular expression ({error}).") from None
    groups, unmatched = {}, []
    for case_id in case_ids:
        match = compiled.search(case_id)
        if match is not None:
            group = match.group("group" if "group" in compiled.groupindex else 1 if compiled.groups else 0)
        if match is None or not group:  # an alternative that leaves the group out finds no patient either
            unmatched.append(case_id)
            continue
        groups[case_id] = group
    if unmatched:
        shown = ", ".join(unmatched[:5]) + (f" and {len(unmatched) - 5} more" if len(unmatched) > 5 else "")
        raise AutomedsamError(f"--group-pattern {pattern!r} matches no part of the case id(s) {shown}. Give a "
                              "pattern that finds the patient in every image name, e.g. '^(\\w+?)_\\d+$' for "
                              "'patient7_2'.")
    if len(set(groups.values())) < 2:
        raise AutomedsamError(f"--group-pattern {pattern!r} puts all {len(groups)} images into one group "
                              f"({next(iter(groups.values()))!r}), so no fold could validate on another patient. "
                              "Capture the part of the name that differs between patients.")
    return groups


def list_images(folder: Path, masks_here: bool = False) -> dict[str, Path]:
    """Case id -> image (a file, or a DICOM series folder) for every readable image in `folder`. A file named as the
    mask of another image (scan1_label.png beside scan1.png) is left out when the masks are in this folder
    (`masks_here`), else refused: leaving it out silently lost an image, importing it would make a mask a case to
    annotate."""
    if folder.is_file():  # "does not exist" sent users looking for a path that was there
        raise AutomedsamError(f"The images folder {folder} is a file, not a folder. Check --images.")
    if not folder.is_dir():
        raise AutomedsamError(f"The images folder {folder} does not exist. Check --images.")
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and is_supported(p))
    dicom = dicom_sources(folder, keep_channel_suffix=True)
    stems = {split_extension(p)[0] for p in files} | set(dicom)
    mask_named = [path.name for path in files if (mask_of := _MASK_NAME.match(split_extension(path)[0]))
                  and mask_of.group("stem") in stems]
    images, duplicates = _by_stem(path for path in files if path.name not in mask_named)
    duplicates += [f"{images[case_id].name} / {path.name}" for case_id, path in dicom.items() if case_id in images]
    images.update(dicom)
    if duplicates:
        raise AutomedsamError(f"{folder} holds several images with the same name: {'; '.join(duplicates)}. "
                              "Rename or remove one of each pair.")
    if mask_named and not masks_here:
        raise AutomedsamError(f"{folder} holds file(s) named as the mask of another image there: "
                              f"{_shown(mask_named)}. If they are masks, give this folder as --masks too "
                              "(automedsam_convert folder --images DIR --masks DIR) or move them out; if they are "
                              f"images, rename them so that they do not end in {', '.join(MASK_SUFFIXES)}.")
    if not images:
        raise AutomedsamError(f"{folder} holds no images in a supported format (.png, .jpg, .tif, .bmp, .nii.gz, "
                              ".nrrd, .mha, DICOM files or DICOM series folders). Check --images.")
    separated = sorted(images[case_id].name for case_id in images if SEPARATOR in case_id)
    if separated:
        raise AutomedsamError(f"{folder} holds image(s) whose name contains '{SEPARATOR}': {_shown(separated)}. "
                              f"automedsam names slices and views of a case with '{SEPARATOR}' (CASE{SEPARATOR}z007), "
                              "so such a name would be read as another case's. Rename them (e.g. with one '_').")
    unsafe = sorted(f"{printable_name(images[case_id].name)} ({reason})" for case_id in images
                    if (reason := malformed_case_id(case_id)) is not None)
    if unsafe:  # refused now rather than by every command after a conversion that seemed to succeed
        raise AutomedsamError(f"{folder} holds image(s) whose name cannot be a case id: {_shown(unsafe)}. Rename "
                              "them (letters, digits, '-', '_' and '.').")
    refuse_normalisation_twins(images, where=str(folder))
    return images


def left_out(folder: Path, used: Iterable[Path]) -> list[str]:
    """The visible entries of `folder` (files, subfolders with a trailing /) that no image or mask was read from;
    none when the folder itself is one DICOM series."""
    used_names = {Path(path).name for path in used if Path(path).parent.resolve() == folder.resolve()}
    if any(Path(path).resolve() == folder.resolve() for path in used):
        return []
    return sorted(entry.name + ("/" if entry.is_dir() else "") for entry in folder.iterdir()
                  if not entry.name.startswith(".") and entry.name not in used_names
                  and entry.name.upper() != "DICOMDIR")


def _check_one_kind(images: dict[str, Path], folder: Path) -> set[int | None]:
    """Refuse 2D images mixed with 3D volumes before anything is written: automedsam_plan_and_preprocess would
    refuse the dataset, after a conversion that seemed to succeed. Returns the dimensions found (None: unreadable)."""
    names_by_ndim: dict[int, list[str]] = {}
    for path in images.values():
        names_by_ndim.setdefault(_header_ndim(path), []).append(path.name)
    if 2 in names_by_ndim and 3 in names_by_ndim:
        raise AutomedsamError(f"{folder} mixes 2D images ({_shown(names_by_ndim[2])}) and 3D volumes "
                              f"({_shown(names_by_ndim[3])}). A dataset holds one kind: move the images of one kind "
                              "to a folder of their own and import each folder as its own dataset (another -d).")
    return set(names_by_ndim)


def _shown(names: list[str], most: int = 5) -> str:
    """The first few names, and how many more there are."""
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")


def _header_ndim(path: Path) -> int | None:
    """2 or 3 (spatial dimensions) from the file's header alone; None when unreadable, which the conversion reports
    when it reads the pixels."""
    if path.is_dir() or not is_supported(path):
        try:
            return dicom_layout(path)[0]
        except AutomedsamError:
            return None
    if split_extension(path)[1].lower() not in MEDICAL_EXTENSIONS:
        return 2
    size = header_size(path)
    return len(size) if size is not None else None


def _refuse_other_channels(images: Mapping[str, Path], folder: Path) -> None:
    """Refuse CASE_0001, ... beside CASE_0000 where several cases share one such layout (`channel_layout_cases`, the
    rule by which automedsam_predict tells nnU-Net's channels from numbered frames): whatever the annotation, each
    channel became a case of its own, to annotate and to put in a fold apart from its first channel."""
    numbers: dict[str, set[int]] = {}
    for case_id in images:
        if match := CHANNEL_NAME.fullmatch(case_id):
            numbers.setdefault(match.group("case"), set()).add(int(match.group("channel")))
    cases = channel_layout_cases(numbers)
    if not cases:
        return
    lines = sorted(_other_channel_line(images[f"{case}{CHANNEL_SUFFIX}"], images[f"{case}_{number:04d}"])
                   for case in cases for number in numbers[case] if number != 0)
    shown = lines[:5] + ([f"and {len(lines) - 5} more"] if len(lines) > 5 else [])
    raise AutomedsamError(f"{folder} holds the other channels of its cases as nnU-Net names them (CASE_0001 beside "
                          f"CASE_0000, in {len(cases)} cases alike):\n  " + "\n  ".join(shown))


def match_masks(images: dict[str, Path], folder: Path) -> tuple[dict[str, Path], dict[str, list[Path]]]:
    """Case id -> image and case id -> its mask file(s); every image needs one, and every mask must belong to an
    image. An image named CASE_0000 without a mask of its own name takes CASE's and is case CASE, as nnU-Net names
    a case's first channel (imagesTr/CASE_0000 against labelsTr/CASE), whatever the image's format."""
    if folder.is_file():  # "does not exist" sent users looking for a path that was there
        raise AutomedsamError(f"The masks folder {folder} is a file, not a folder. Check --masks.")
    if not folder.is_dir():
        raise AutomedsamError(f"The masks folder {folder} does not exist. Check --masks.")
    by_stem = _masks_by_stem(folder, {path.resolve() for path in images.values()})
    masks_of = _masks_by_case(by_stem, spellings=_spellings(images))
    case_ids = {case_id: _paired_case_id(case_id, images, masks_of) for case_id in images}
    unmatched = sorted((case_id for case_id in images if case_ids[case_id] not in masks_of),
                       key=lambda case_id: images[case_id].name)
    used = {path for case_id in case_ids.values() for path in masks_of.get(case_id, [])}
    unused = sorted(path.name for path in by_stem.values() if path not in used)
    if unmatched or unused:
        first_channels = {case_id for case_id in images
                          if case_ids[case_id] in masks_of and case_ids[case_id] != case_id}
        lines = [_unmatched_line(case_id, images, first_channels=first_channels) for case_id in unmatched]
        lines += [f"mask without an image: {name}" for name in unused]
        raise AutomedsamError(f"Images in {images[next(iter(images))].parent} and masks in {folder} do not pair up. "
                              f"A mask must have its image's name (CASE for an image CASE_0000 too), optionally "
                              f"followed by one of {', '.join(MASK_SUFFIXES)}:\n  " + "\n  ".join(lines))
    return ({case_ids[case_id]: path for case_id, path in images.items()},
            {case_ids[case_id]: masks_of[case_ids[case_id]] for case_id in images})


def _unmatched_line(case_id: str, images: Mapping[str, Path], *, first_channels: set[str]) -> str:
    """What is wrong with an image without a mask. CASE_0001, ... beside a CASE_0000 that took the mask CASE
    (`first_channels`) are that case's other channels as nnU-Net names them: a mask named after one would import it
    as an unrelated case. Beside a CASE_0000 paired under its own name they are cases numbered alike."""
    match = CHANNEL_NAME.fullmatch(case_id)
    first = f"{match.group('case')}{CHANNEL_SUFFIX}" if match else None
    if first is None or first == case_id or first not in first_channels:
        return f"image without a mask: {images[case_id].name}"
    return _other_channel_line(images[first], images[case_id])


def _other_channel_line(first: Path, other: Path) -> str:
    """How an image named as another channel of the image `first` is refused."""
    return (f"another channel of {first.name}: {other.name} (automedsam reads a case's first channel only; take the "
            "other channels out of the images folder)")


def _masks_by_case(by_stem: Mapping[str, Path], *, spellings: Mapping[str, str]) -> dict[str, list[Path]]:
    """Stem -> the mask file(s) of an image of that stem: the mask of the same stem, else those of the stem plus a
    mask suffix (scan1_mask_1.png, scan1_mask_2.png). A stem is spelled as the image's name of the same `nfc` form
    (`spellings`), whatever Unicode normalisation the mask's name has."""
    suffixed: dict[str, list[Path]] = {}
    for stem, path in by_stem.items():
        if match := _MASK_NAME.match(stem):
            suffixed.setdefault(_spelled(match.group("stem"), spellings), []).append(path)
    return {**suffixed, **{_spelled(stem, spellings): [path] for stem, path in by_stem.items()}}


def _spellings(images: Iterable[str]) -> dict[str, str]:
    """`nfc` form -> the spelling of the images' names (and of CASE for an image CASE_0000), which the dataset
    keeps: masks and boxes named in another Unicode normalisation pair with them."""
    bases = [case_id_from_stem(case_id) for case_id in images]
    return {nfc(name): name for name in [*bases, *images]}  # an image's own name wins over another's CASE


def _spelled(name: str, spellings: Mapping[str, str]) -> str:
    return spellings.get(nfc(name), name)


def _paired_case_id(case_id: str, images: Mapping[str, Path], masks_of: Mapping[str, list[Path]]) -> str:
    """The case id an image is imported as: its own name, or CASE for an image CASE_0000 without masks of its own
    when CASE has masks and is no image itself (two images would share them)."""
    base = case_id_from_stem(case_id)
    if case_id in masks_of or base in images or base not in masks_of:
        return case_id
    return base


def _by_stem(paths: Iterable[Path]) -> tuple[dict[str, Path], list[str]]:
    """Files by name without extension (the last of a name wins), and the "a / b" pairs that shared a name."""
    by_stem: dict[str, Path] = {}
    repeated = []
    for path in paths:
        stem = split_extension(path)[0]
        if stem in by_stem:
            repeated.append(f"{by_stem[stem].name} / {path.name}")
        by_stem[stem] = path
    return by_stem, repeated


def _masks_by_stem(folder: Path, image_files: set[Path]) -> dict[str, Path]:
    """Mask file by stem; two masks of one stem (p0_mask.png, p0_mask.bmp) would leave one unused without a word.
    The images (`image_files`, resolved) are skipped by their real path, however --images and --masks spell it."""
    by_stem, repeated = _by_stem(path for path in sorted(folder.iterdir()) if path.is_file()
                                 and not path.name.startswith(".") and is_supported(path)
                                 and path.resolve() not in image_files)
    if repeated:
        raise AutomedsamError(f"{folder} holds two masks of the same name for one image: {'; '.join(repeated)}. "
                              "Keep the right one of each pair and move or delete the other.")
    refuse_normalisation_twins(by_stem, where=str(folder))
    return by_stem


def read_boxes(path: Path, images: dict[str, Path]) -> dict[str, list[dict]]:
    """Case id -> box entries from a JSON file {"CASE": [{"label": 1, "box": [x0, y0, x1, y1]}, ...]}."""
    if path.is_dir():
        raise AutomedsamError(f"The boxes file {path} is a folder, not a file. Check --boxes: it takes one JSON file "
                              "of every image's boxes.")
    content = load_json(path, "boxes file")
    if not isinstance(content, dict) or not all(isinstance(v, list) for v in content.values()):
        raise AutomedsamError(f"{path} must map each image name to a list of boxes, e.g. "
                              '{"case_1": [{"label": 1, "box": [x0, y0, x1, y1]}]}.')
    entries = _boxes_by_case(content, path, spellings=_spellings(images))
    missing = sorted(set(images) - set(entries))
    unknown = sorted(set(entries) - set(images))
    if missing or unknown:
        lines = [f"no boxes for image {case_id}" for case_id in missing]
        lines += [f"boxes for {case_id}, which is not an image in {next(iter(images.values())).parent}"
                  for case_id in unknown]
        raise AutomedsamError(f"{path} and the images do not pair up (keys are image names without extension):\n  "
                              + "\n  ".join(lines))
    return entries


def _boxes_by_case(content: dict[str, list], path: Path, *, spellings: Mapping[str, str]) -> dict[str, list]:
    """Keys with and without the image's extension, or in another Unicode normalisation (`spellings`), name the same
    case: two of them would keep one list silently."""
    entries: dict[str, list] = {}
    keys: dict[str, str] = {}
    repeated = []
    for key, value in content.items():
        case_id = _spelled(split_extension(key)[0] if is_supported(key) else key, spellings)
        if case_id in keys:
            repeated.append(f"{keys[case_id]!r} and {key!r}")
        keys[case_id], entries[case_id] = key, value
    if repeated:
        raise AutomedsamError(f"{path} gives the boxes of one image under two keys: {'; '.join(repeated)}. Keep one "
                              "key per image, with all its boxes in one list.")
    return entries


def _write_image(target: Path, image: Path, *, case_id: str) -> tuple[tuple[int, ...], Geometry]:
    """Copy the image unchanged when its format is kept, else re-encode it losslessly; return shape and geometry.
    A volume longer than SHORT_VOLUME_SLICES whose case id is too long for its slices' file names is refused before
    it is written."""
    target.parent.mkdir(parents=True, exist_ok=True)
    pixels, geometry = read_image(image)
    shape = pixels.shape[: geometry.ndim]
    if len(shape) == 3:
        _refuse_long_case_ids({case_id: image}, image.parent, slices=max(shape))  # cut along any axis
    if image.is_file() and is_supported(image) and split_extension(image)[1].lower() == split_extension(target)[1]:
        copy_file(image, target)
    else:
        write_image(target, pixels, geometry)
    return shape, geometry


def _refuse_long_case_ids(images: Mapping[str, Path], folder: Path, *, slices: int | None) -> None:
    """Refuse, naming each, the 2D images (`slices` None) or volumes of `slices` slices whose case id is too long
    for the names of the files made from it: preprocessing would fail writing them (loading the dataset refuses
    them, dataset._check_files), after a conversion that seemed to succeed. A volume's name is told a volume's
    limit the first time, not a 2D image's and then, renamed to fit that, its own."""
    long = sorted(f"{printable_name(path.name)}: {len(case_id.encode('utf-8'))} bytes"
                  for case_id, path in images.items() if too_long_case_id(case_id, slices=slices) is not None)
    if long:
        kind = "image(s)" if slices is None else "volume(s)"
        raise AutomedsamError(f"{folder} holds {kind} whose name is too long for a case id: {_shown(long)}; at "
                              f"most {case_id_budget(slices=slices)}. Rename them to shorter names.")


def _merged_mask(masks: list[Path], shape: tuple[int, ...], geometry: Geometry, case_id: str, *,
                 labels: dict[str, int]) -> np.ndarray:
    """The case's label map from its mask files (a later file's object pixels win where files overlap); the masks
    are written with the image's `geometry`, so a mask placed elsewhere in the world is refused, not moved."""
    merged = np.zeros(shape, dtype=np.uint8)
    reader = _one_structure if len(labels) == 2 else _structures
    for path in masks:
        pixels, mask_geometry = read_image(path, palette_indices=reader is _structures)
        mask = reader(pixels, mask_geometry, path, labels)
        if mask.shape != shape:
            raise AutomedsamError(f"{path}: mask shape {mask.shape} differs from its image's {shape}. Masks must "
                                  "have their image's size.")
        _check_mask_geometry(path, mask_geometry, geometry, case_id)
        merged = np.where(mask > 0, mask, merged).astype(np.uint8)
    return merged


def _check_mask_geometry(path: Path, mask: Geometry, image: Geometry, case_id: str) -> None:
    """Refuse a mask whose spacing, origin or direction differ from its image's beyond the tolerance that
    automedsam_plan_and_preprocess applies; a png/jpg/bmp/tif carries no geometry, so only files that both have one
    are compared."""
    if "natural" in (mask.kind, image.kind):
        return
    mismatch = geometry_mismatch(image, mask, GEOMETRY_TOLERANCE)
    if mismatch:
        raise AutomedsamError(
            f"Case {case_id!r}: the mask {path} lies elsewhere than its image ({mismatch}; image: {_described(image)}; "
            f"mask: {_described(mask)}). Save the mask on its image's grid, with the same spacing, origin and "
            f"direction (within {GEOMETRY_TOLERANCE:g}), e.g. by resampling it onto the image.")


def _described(geometry: Geometry) -> str:
    """Spacing, origin and direction, short enough for one error line."""
    return "; ".join(f"{field} (" + ", ".join(f"{value:.4g}" for value in getattr(geometry, field)) + ")"
                     for field in ("spacing", "origin", "direction"))


def _one_structure(pixels: np.ndarray, geometry: Geometry, path: Path, labels: dict[str, int]) -> np.ndarray:
    """0/1 from a mask saved any way; a label map of several structures would lose them, so it is refused."""
    values = _label_values(pixels, geometry, path)
    if len(values) > 1:
        name = next(iter(labels.keys() - {"background"}))
        raise AutomedsamError(
            f"{path} holds the values {', '.join(map(str, values))}: a label map of {len(values)} structures, which "
            f"one --label ({name}) would merge or drop. Name each structure with --label, in the order of its value "
            f"({' '.join(f'--label NAME{value}' for value in values)}), or save one structure per mask.")
    if split_extension(path)[1].lower() not in LOSSY_EXTENSIONS:  # a JPEG mask holds noise at every value
        _check_one_object_value(pixels, geometry, path)
    return one_object_mask(pixels, geometry, path=path)


def _check_one_object_value(pixels: np.ndarray, geometry: Geometry, path: Path) -> None:
    """Refuse a lossless mask whose object is not one value (one colour) with an anti-aliased edge: regions of two
    values are two structures, and pixels brighter than the object (an ignore border, stray marks) would replace it,
    since `one_object_mask` keeps what is brighter than half the maximum. A resampled float mask rings at countless
    values around its object, which say nothing of a border: only its regions are checked."""
    value_map, colours = _numbered_colours(pixels) if is_colour(pixels, geometry) else (pixels, None)
    keys, counts = np.unique(value_map[value_map != 0], return_counts=True)
    if not len(keys):
        return
    values = keys if colours is None else colours[keys - 1]
    _check_one_region(values, counts, path)
    if not _has_fractions(pixels):
        _check_nothing_brighter(values, counts, path, interior=_interior_counts(value_map, keys))


def _check_one_region(values: np.ndarray, counts: np.ndarray, path: Path) -> None:
    """Refuse values that each fill a region: at least a fifth of the most common value's pixels (and 20 pixels);
    an edge value fills fewer."""
    regions = values[counts >= max(MIN_PLATEAU_PIXELS, counts.max() / 5)]
    if len(regions) > 1:
        raise AutomedsamError(
            f"{path} holds regions of different values ({_shown_values(regions)}): read as one structure, they would "
            "be merged or cut to the brightest. Save one structure as one value (0/1, 0/255 or one colour), or give "
            "each structure its own --label and save the mask as a label map 0, 1, 2, ... (with several --label, a "
            "palette PNG's indices are its values).")


def _check_nothing_brighter(values: np.ndarray, counts: np.ndarray, path: Path, *, interior: np.ndarray) -> None:
    """Refuse values brighter than the object's beyond resampling overshoot (`interior`: each value's solid pixels,
    which tell the object)."""
    brightness = values.max(axis=1) if values.ndim == 2 else values
    top = _object_index(brightness, interior)
    if top is None:
        return
    brighter = brightness > OVERSHOOT * brightness[top]
    if brighter.any():
        raise AutomedsamError(
            f"{path} holds {int(counts[brighter].sum())} pixel(s) of value(s) {_shown_values(values[brighter])} beside "
            f"the object's {_shown_values(values[top][None])}: an ignore or border value? Read as one structure, they "
            "would count as the object or replace it. Set them to 0 (background) or to the object's value, or give "
            "each value its own --label and save the mask as a label map 0, 1, 2, ...")


def _object_index(brightness: np.ndarray, interior: np.ndarray) -> int | None:
    """Which value is the object's: the one with the most solid pixels, ties to the brighter, the brightest where no
    value has any (a small anti-aliased object's faint halo outnumbers its core, which the most common value would
    miss). A value <= 0 is background to `one_object_mask`, never the object: None where every value is."""
    positive = np.flatnonzero(brightness > 0)
    if not len(positive):
        return None
    return int(positive[np.lexsort((brightness[positive], interior[positive]))[-1]])


def _interior_counts(value_map: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """How many pixels of each value (`keys`, sorted) are solid: their four neighbours in the image plane (a
    volume's slices each on their own) hold the same value. An object fills its inside; an anti-aliased halo, an
    ignore border or stray marks are thin."""
    centre = value_map[..., 1:-1, 1:-1]
    solid = ((centre != 0) & (centre == value_map[..., :-2, 1:-1]) & (centre == value_map[..., 2:, 1:-1])
             & (centre == value_map[..., 1:-1, :-2]) & (centre == value_map[..., 1:-1, 2:]))
    return np.bincount(np.searchsorted(keys, centre[solid]), minlength=len(keys))


def _numbered_colours(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A colour mask as one number per pixel (0 background, 1, 2, ... its colours) and the colour each number
    stands for: two colours of one brightness are two structures. Colours within a tolerance (an eighth of the peak
    channel value, in every channel) are one: a mask saved as JPEG once holds (0, 255, 1) beside its (0, 255, 0) and
    (0, 1, 0) beside black, while red and green, or two palette colours, stay apart. Within a 16th of the peak of
    black is background (a dark object's colour is not); a colour near a more common one takes its number."""
    colours, inverse, counts = np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0, return_inverse=True,
                                         return_counts=True)
    channels = colours.astype(np.float64)
    tolerance = channels.max() / COLOUR_TOLERANCE
    coloured = channels.max(axis=1) > channels.max() / BLACK_NOISE  # not a dark object beside a bright mark
    numbers, leaders = np.zeros(len(colours), np.int64), []
    for index in np.argsort(-counts, kind="stable"):
        if numbers[index] or not coloured[index]:
            continue
        near = np.abs(channels - channels[index]).max(axis=1) <= tolerance
        leaders.append(index)
        numbers[near & coloured & (numbers == 0)] = len(leaders)
    return numbers[inverse.reshape(-1)].reshape(pixels.shape[:-1]), colours[leaders]


def _has_fractions(pixels: np.ndarray) -> bool:
    """A float mask with values that are no whole numbers: resampled, not a label map."""
    return pixels.dtype.kind == "f" and not np.array_equal(pixels, np.round(pixels))


def _shown_values(values: np.ndarray) -> str:
    """Mask values (grey, or colours as (r, g, b)) for an error line."""
    shown = [f"({', '.join(f'{channel:g}' for channel in value)})" if np.ndim(value) else f"{value:g}"
             for value in values.tolist()]
    return _shown(shown)


def _label_values(pixels: np.ndarray, geometry: Geometry, path: Path) -> list[int]:
    """The object values of a mask that reads as a label map (small whole numbers, lossless format), else [].

    A 0/255 mask, a colour mask, an anti-aliased or JPEG mask are one structure saved another way: they never list.
    """
    if is_colour(pixels, geometry) or split_extension(path)[1].lower() in LOSSY_EXTENSIONS:
        return []
    if _has_fractions(pixels):
        return []
    values = [int(value) for value in np.unique(pixels) if value != 0]
    return values if values and 0 < min(values) and max(values) < 128 else []


def _structures(pixels: np.ndarray, geometry: Geometry, path: Path, labels: dict[str, int]) -> np.ndarray:
    """A label map whose values are the --label structures in order; anything else is refused, never guessed."""
    named = ", ".join(f"{value} = {name}" for name, value in labels.items() if value)
    if is_colour(pixels, geometry):
        raise AutomedsamError(f"{path} is a colour image. With several --label, each mask is a one-channel label map: "
                              f"0 = background, {named}.")
    label_map = as_label_map(pixels, str(path))
    unknown = sorted(set(np.unique(label_map).tolist()) - set(labels.values()))
    if unknown:
        raise AutomedsamError(f"{path} holds the value(s) {', '.join(map(str, unknown))}, but the --label names "
                              f"declare 0 = background, {named}. Give one --label per structure, in the order of "
                              "their values (a 0/255 mask marks one structure: give one --label).")
    return label_map


def _checked_boxes(entries: list, shape: tuple[int, ...], where_case: str, *, structures: int) -> list[dict]:
    """Entries checked against the image (a declared label, 1 by default; box inside the image; slice for 3D)."""
    checked = []
    for number, entry in enumerate(entries):
        where = f"{where_case}, entry {number}"
        if not isinstance(entry, dict) or "box" not in entry:
            raise AutomedsamError(f"{where}: expected {{\"label\": 1, \"box\": [x0, y0, x1, y1]}}, found {entry!r}.")
        unknown = sorted(set(entry) - {"label", "box", "slice"})
        if unknown:  # a misspelt "Label" would otherwise give label 1 without a word
            raise AutomedsamError(f"{where}: unknown keys {unknown}; allowed are label, box and slice.")
        if len(shape) == 2 and "slice" in entry:
            raise AutomedsamError(f"{where}: the image is 2D, so the entry must not have a \"slice\".")
        label = entry.get("label", 1)
        if not isinstance(label, int) or isinstance(label, bool) or not 1 <= label <= structures:
            declared = "label 1 (one --label)" if structures == 1 else f"labels 1 to {structures} (the --label names)"
            raise AutomedsamError(f"{where}: label {label!r}; this import declares {declared}.")
        clean: dict[str, Any] = {"label": label}
        if len(shape) == 3:
            slice_index = entry.get("slice")
            if not isinstance(slice_index, int) or not 0 <= slice_index < shape[0]:
                raise AutomedsamError(f"{where}: a 3D image needs \"slice\" between 0 and {shape[0] - 1} "
                                      f"(found {slice_index!r}).")
            clean["slice"] = slice_index
        clean["box"] = list(validate_box(entry["box"], shape[-2:], where))
        checked.append(clean)
    return checked
