"""automedsam_predict on inputs unlike the training images: a single slice saved as a volume along another axis,
intensities the planned window clips flat or a constant image (warned once per image), and a volume's progress
told slice by slice."""
from __future__ import annotations

import json
import unicodedata
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image
from rich.progress import Progress

from automedsam.errors import AutomedsamError
from automedsam.files import load_json, save_json
from automedsam.foundation.cache import PREPROCESSING_STATE_FILE, EmbeddingCache
from automedsam.inference import Predictor, predict
from automedsam.inference import run as run_module
from automedsam.inference.predictor import intensity_doubt
from automedsam.io import read_image, read_segmentation
from automedsam.plans import Plans
from automedsam.progress import progress_bar
from test_dataset_images import built_once, import_unannotated, ring_and_core  # noqa: F401 (a fixture)
from test_dicom import cut_before_pixels, write_dicom, write_series
from toy_model import (INNER, OUTER, EncodeCounter, TinyFoundation, fold_modules, shared_foundation, toy_image,
                       toy_plans, write_model_folder)

SAGITTAL = {"spacing": (0.7, 0.8, 5.0), "origin": (10.0, -4.0, 2.5), "direction": (0, 0, 1, 0, 1, 0, -1, 0, 0)}


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory, tiny_foundation: TinyFoundation) -> Path:
    """A two-fold model folder of the tiny foundation (which every stage builds, box mode's too)."""
    patch = pytest.MonkeyPatch()
    patch.setattr(run_module, "build_foundation_model", lambda *args, **kwargs: tiny_foundation)
    yield write_model_folder(tmp_path_factory.mktemp("model") / "results", tiny_foundation)
    patch.undo()


def write_volume(path: Path, volume: np.ndarray) -> None:
    """`volume` as a NIfTI volume, placed and oriented as a sagittal slice would be."""
    image = sitk.GetImageFromArray(volume.astype(np.int16))
    image.SetSpacing(SAGITTAL["spacing"])
    image.SetOrigin(SAGITTAL["origin"])
    image.SetDirection(SAGITTAL["direction"])
    sitk.WriteImage(image, str(path))


# ---------------------------------------------------------------- a single slice saved as a volume


@pytest.mark.parametrize(("planned", "thin"), [(None, 2), (0, 2), (0, 1), (2, 0)],
                         ids=["2d-model-ZY1", "axis0-ZY1", "axis0-Z1X", "axis2-1YX"])
def test_a_single_slice_saved_as_a_volume_is_predicted_as_that_slice(planned: int | None, thin: int) -> None:
    """Cut along the planned axis, a (Z, Y, 1) volume became Z images one pixel wide: Z encoder passes and a label
    map of nothing. It is its one slice: one encoder pass, the 2D image's label map and probabilities, in the
    volume's shape."""
    foundation = TinyFoundation()
    counter = EncodeCounter(foundation)
    foundation.encode = counter
    plans = toy_plans(axis=planned)
    predictor = Predictor(foundation, plans, [fold_modules(foundation, plans, 0)])
    image = toy_image(0)
    plane_map, plane = predictor.predict_array(image, is_volume=False)
    counter.images = 0
    label_map, probabilities = predictor.predict_array(np.expand_dims(image, thin), is_volume=True)
    assert counter.images == 1
    assert label_map.shape == probabilities[1].shape == np.expand_dims(image, thin).shape
    np.testing.assert_array_equal(np.squeeze(label_map, thin), plane_map)
    for label in (1, 2):
        np.testing.assert_allclose(np.squeeze(probabilities[label], thin), plane[label], atol=1e-6)
    assert plane_map.any()


def test_the_command_writes_a_sagittal_slices_label_map_in_its_shape_and_geometry(
        tmp_path: Path, built_once) -> None:  # noqa: F811
    """A sagittal slice exported as NIfTI, (Z, Y, 1), is segmented as the same pixels given as a PNG (the toy's ring
    and core, with the real frozen model); its label map and probabilities keep its shape and its geometry."""
    model = write_model_folder(tmp_path / "results", shared_foundation())
    inputs = tmp_path / "in"
    inputs.mkdir()
    write_volume(inputs / "sagittal.nii.gz", toy_image(0)[:, :, None])
    Image.fromarray(toy_image(0)).save(inputs / "flat.png")
    out = tmp_path / "out"
    summary = predict(inputs, out, model_folder=model, save_probabilities=True, show_progress=False)
    assert summary.written == 2
    label_map, geometry = read_segmentation(out / "sagittal.nii.gz")
    image, image_geometry = read_image(inputs / "sagittal.nii.gz")
    assert label_map.shape == image.shape == (60, 80, 1) and geometry == image_geometry
    assert ring_and_core(label_map[:, :, 0])
    np.testing.assert_array_equal(label_map[:, :, 0], read_segmentation(out / "flat.png")[0])
    with np.load(out / "sagittal.npz", allow_pickle=False) as arrays:
        assert arrays["1"].shape == (60, 80, 1)
    assert json.loads((out / "sagittal.json").read_text())["shape"] == [60, 80, 1]


def test_boxes_on_a_sagittal_slice_saved_as_a_volume_are_refused_with_how_to_save_it(model: Path,
                                                                                     tmp_path: Path) -> None:
    """A box file's "slice" counts along the first axis: on a (Z, Y, 1) volume each such slice is one pixel wide,
    where the user's box of the slice they see was refused as 'outside the image of 1 columns'."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    write_volume(inputs / "sagittal.nii.gz", toy_image(0)[:, :, None])
    boxes = tmp_path / "boxes.json"
    save_json(boxes, {"sagittal": [{"label": 1, "box": list(OUTER), "slice": 0}]})
    with pytest.raises(AutomedsamError) as refusal:
        predict(inputs, tmp_path / "out", boxes=boxes, show_progress=False)
    message = str(refusal.value)
    assert "single slice saved as a volume of shape (60, 80, 1)" in message and "along array axis 2" in message
    assert "Save the slice as a 2D image" in message


def test_dataset_images_reads_no_cached_sample_of_another_axis_for_a_single_slice_volume(
        tmp_path: Path, roots, built_once, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """The preprocessed cache holds a volume's samples along the planned axis: sliced along its thin axis instead,
    a single-slice volume's one image is none of them (vol0__z000 is a one-pixel-wide row there)."""
    raw = import_unannotated(tmp_path / "scans", {"vol0": toy_image(0)[:, :, None], "vol1": toy_image(1)[:, :, None]},
                             18)
    model_dir = write_model_folder(roots["results"], shared_foundation(), dataset=raw.name)
    model_plans = Plans(toy_plans(axis=0))
    save_json(model_dir / "plans.json", dict(model_plans.data))
    preprocessed = roots["preprocessed"] / raw.name
    state = preprocessed / PREPROCESSING_STATE_FILE
    save_json(state, {**(load_json(state) if state.is_file() else {}),
                      "embeddings": {model_plans.foundation_name: model_plans.embeddings_key()}})
    cache = EmbeddingCache(preprocessed, model_plans.foundation_name)
    foundation = shared_foundation()
    row = model_plans.normalise(toy_image(0)[:, :, None])[0]  # the planned axis' sample vol0__z000: (80, 1)
    cache.put("vol0__z000", foundation.encode(foundation.prepare(row)[0][None])[0])
    out = tmp_path / "out"
    assert predict(None, out, dataset=18, dataset_images=True, device="cpu", show_progress=False).written == 2
    for name in ("vol0", "vol1"):
        label_map = read_segmentation(out / f"{name}.nii.gz")[0]
        assert label_map.shape == (60, 80, 1) and ring_and_core(label_map[:, :, 0])


# ---------------------------------------------------------------- intensities the model cannot read


def test_intensity_doubts_name_what_is_wrong_and_leave_ordinary_images_alone() -> None:
    plans = Plans(toy_plans())  # window [0, 255]
    image = toy_image(0)
    assert intensity_doubt(image, plans, colour=False) is None
    assert intensity_doubt(np.stack([image] * 3, axis=-1), plans, colour=True) is None
    with_black = image.copy()
    with_black[:18] = 0  # 30 % black: black stays black in a 16-bit export, everything else lies above 255
    sixteen = intensity_doubt(with_black.astype(np.uint16) * 257, plans, colour=False)
    assert ("70% of its pixels lie outside the intensity window the model was planned with [0, 255] (a 16-bit export "
            "of 8-bit images?)") in sixteen and "Convert the image as the training images" in sixteen
    assert "none of its pixels lies inside" in intensity_doubt(image.astype(np.int32) + 1000, plans, colour=False)
    assert "none of its pixels lies inside" in intensity_doubt(image.astype(np.int32) - 1000, plans, colour=False)
    assert "constant (every pixel 7)" in intensity_doubt(np.full((20, 30), 7), None, colour=False)
    every_tenth = np.arange(image.size).reshape(image.shape) % 10
    mostly_bright = np.where(every_tenth < 6, 300, image.astype(np.int32))
    assert "60% of its pixels lie outside" in intensity_doubt(mostly_bright, plans, colour=False)
    assert intensity_doubt(np.where(every_tenth < 4, 300, image.astype(np.int32)), plans,
                           colour=False) is None  # 40 %: half or less is no warning


def test_a_ct_window_of_the_structures_warns_only_when_no_pixel_lies_inside_it() -> None:
    """A CT window holds the labelled structures' intensities: most of a scan (air, fat, lungs) lies outside it in
    training too, so only an image the window leaves blank is warned about."""
    ct = Plans({**toy_plans(), "normalization": {"scheme": "ct_foreground_window", "lower": -100.0, "upper": 300.0}})
    scan = np.full((40, 40), -1000, dtype=np.int16)
    scan[10:20, 10:20] = 50
    assert intensity_doubt(scan, ct, colour=False) is None
    assert "none of its pixels lies inside" in intensity_doubt(np.clip(scan, None, -500), ct, colour=False)


def test_the_command_warns_once_per_image_the_model_cannot_read_and_counts_them(model: Path, tmp_path: Path,
                                                                                 capsys: pytest.CaptureFixture) -> None:
    """A 16-bit export of the 8-bit images the model saw, a constant image and a constant volume of 3 slices were
    segmented without a word (the constant image got an object): each is warned about once, by name, and the
    summary counts them; an ordinary image is not."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    Image.fromarray(toy_image(0)).save(inputs / "ordinary.png")
    Image.fromarray(toy_image(0).astype(np.uint16) * 257).save(inputs / "sixteen.png")
    Image.fromarray(np.full((60, 80), 90, dtype=np.uint8)).save(inputs / "blank.png")
    write_volume(inputs / "flat.nii.gz", np.full((3, 60, 80), 40))
    summary = predict(inputs, tmp_path / "out", model_folder=model, show_progress=False)
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("Warning: ")]
    assert sorted(line.split(":")[1].strip() for line in warnings) == ["blank", "flat", "sixteen"]
    assert any("16-bit export of 8-bit images?" in line for line in warnings if line.startswith("Warning: sixteen"))
    assert summary.written == 4 and summary.doubtful == 3
    assert ("; 3 of them unreliable: their image is constant, lies outside the model's intensity window or is a "
            "volume cut across its own slices (see the warnings above)") in summary.line()


def test_box_mode_warns_about_a_constant_image_too(model: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    Image.fromarray(np.full((60, 80), 90, dtype=np.uint8)).save(inputs / "blank.png")
    Image.fromarray(toy_image(0)).save(inputs / "ordinary.png")
    boxes = tmp_path / "boxes.json"
    save_json(boxes, {name: [{"label": 1, "box": list(INNER)}] for name in ("blank", "ordinary")})
    summary = predict(inputs, tmp_path / "out", boxes=boxes, show_progress=False)
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("Warning: ")]
    assert len(warnings) == 1 and warnings[0].startswith("Warning: blank: the image is constant (every pixel 90)")
    assert summary.doubtful == 1 and "1 of them unreliable" in summary.line()


def test_box_file_keys_pair_with_images_named_in_another_unicode_normalisation(model: Path, tmp_path: Path) -> None:
    """An image saved on macOS (decomposed café.png) and a box file typed elsewhere (composed "café") gave "names
    case(s) café that are not among the input images (cases found: café)"."""
    decomposed, composed = unicodedata.normalize("NFD", "café"), unicodedata.normalize("NFC", "café")
    inputs = tmp_path / "in"
    inputs.mkdir()
    Image.fromarray(toy_image(0)).save(inputs / f"{decomposed}.png")
    boxes = tmp_path / "boxes.json"
    save_json(boxes, {composed: [{"label": 1, "box": list(INNER)}]})
    summary = predict(inputs, tmp_path / "out", boxes=boxes, show_progress=False)
    assert summary.written == 1 and (tmp_path / "out" / f"{decomposed}.png").is_file()


def test_dataset_images_warns_about_an_image_the_model_cannot_read(tmp_path: Path, roots, built_once,  # noqa: F811
                                                                  capsys: pytest.CaptureFixture) -> None:
    raw = import_unannotated(tmp_path / "scans", {"toy0": toy_image(0), "toy1": toy_image(1),
                                                  "blank": np.full((60, 80), 90, dtype=np.uint8)}, 19)
    write_model_folder(roots["results"], shared_foundation(), dataset=raw.name)
    capsys.readouterr()
    summary = predict(None, tmp_path / "out", dataset=19, dataset_images=True, device="cpu", show_progress=False)
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("Warning: ")]
    assert len(warnings) == 1 and warnings[0].startswith("Warning: blank: the image is constant (every pixel 90)")
    assert summary.written == 3 and summary.doubtful == 1 and "1 of them unreliable" in summary.line()


# ---------------------------------------------------------------- progress


def recorded_bar(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, float, float | None]]:
    """Every state of the progress bar: its description, completed images and the time left it shows.

    The bar's clock moves one second per update, not with the wall clock: rich estimates the time left from the
    steps of the last 30 s only, so on a loaded machine a step of over 30 s left one step in that window and no time
    left to show, although the bar moved as it should."""
    seen: list[tuple[str, float, float | None]] = []
    update = Progress.update
    clock = [0.0]

    def recorded(self: Progress, task, **fields) -> None:
        clock[0] += 1.0
        update(self, task, **fields)
        state = self.tasks[0]
        seen.append((state.description, state.completed, state.time_remaining))

    monkeypatch.setattr(Progress, "update", recorded)
    monkeypatch.setattr(run_module, "progress_bar", partial(progress_bar, clock=lambda: clock[0]))
    return seen


def assert_moved_slice_by_slice(seen: list[tuple[str, float, float | None]], volumes: int) -> None:
    """Each volume of 4 slices moved the bar a quarter of a step at a time, naming the slice, with a time estimate
    while it was under way."""
    during = [(description, completed, left) for description, completed, left in seen if completed % 1]
    assert [(description.split(": ")[1], completed) for description, completed, _ in during] == [
        (f"slice {done}/4", image + done / 4) for image in range(volumes) for done in (1, 2, 3)]
    assert all(left is not None for _, _, left in during[1:])
    assert seen[-1][1] == volumes


def test_a_volumes_progress_moves_slice_by_slice_with_a_time_estimate(model: Path, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The bar counted images only: one large volume showed 0/1 and no time left for all its minutes."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    write_volume(inputs / "vol.nii.gz", np.stack([toy_image(seed) for seed in range(4)]))
    seen = recorded_bar(monkeypatch)
    predict(inputs, tmp_path / "out", model_folder=model, batch_size=1, show_progress=True)
    assert_moved_slice_by_slice(seen, volumes=1)


def test_dataset_images_progress_moves_through_a_volume_too(tmp_path: Path, roots, built_once,  # noqa: F811
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    volume = np.stack([toy_image(seed) for seed in range(4)])
    raw = import_unannotated(tmp_path / "scans", {"vol": volume, "other": volume[::-1]}, 20)
    write_model_folder(roots["results"], shared_foundation(), dataset=raw.name)
    seen = recorded_bar(monkeypatch)
    predict(None, tmp_path / "out", dataset=20, dataset_images=True, device="cpu", batch_size=1, show_progress=True)
    assert_moved_slice_by_slice(seen, volumes=2)


# ---------------------------------------------------------------- a DICOM series that makes no volume


@pytest.mark.parametrize("damage", ["slice missing", "empty slice"])
def test_a_series_that_makes_no_volume_is_left_out_while_the_others_are_segmented(
        model: Path, tmp_path: Path, capsys: pytest.CaptureFixture, damage: str) -> None:
    """One incomplete or damaged series folder stopped the run before any image was segmented; it is left out with
    a warning that names it and why, the others are written, and the run ends in the error that counts it."""
    inputs = tmp_path / "in"
    volume = np.stack([toy_image(0)] * 4).astype(np.int16)
    names = [f"IM{z:04d}.dcm" for z in range(len(volume))]
    write_series(inputs / "good", volume, names=names)
    write_series(inputs / "bad", volume, names=names)
    if damage == "slice missing":
        (inputs / "bad" / "IM0002.dcm").unlink()
    else:
        (inputs / "bad" / "IM0002.dcm").write_bytes(b"")
    Image.fromarray(toy_image(1)).save(inputs / "photo.png")
    reason = "uneven steps" if damage == "slice missing" else "IM0002.dcm could not be read"
    with pytest.raises(AutomedsamError, match=rf"(?s)Wrote 2 segmentation.*But 1 image\(s\) could not be read.*"
                                              rf"bad.*{reason}"):
        predict(inputs, tmp_path / "out", model_folder=model, show_progress=False)
    out = tmp_path / "out"
    assert (out / "good.nii.gz").is_file() and (out / "photo.png").is_file() and not list(out.glob("bad*"))
    assert any(line.startswith("Left out: ") and "bad" in line and reason in line
               for line in capsys.readouterr().err.splitlines())
    with pytest.raises(AutomedsamError, match=reason):  # given alone, the series folder is still refused
        predict(inputs / "bad", tmp_path / "alone", model_folder=model, show_progress=False)


def test_a_damaged_dicom_still_is_left_out_while_the_others_are_segmented(model: Path, tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture) -> None:
    """Reading the input folder's headers to tell a series from stills stopped the whole run at one damaged file."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("a", "b"):
        write_dicom(inputs / f"{name}.dcm", toy_image(0))
    cut_before_pixels(inputs / "b.dcm")
    Image.fromarray(toy_image(1)).save(inputs / "photo.png")
    with pytest.raises(AutomedsamError, match=r"(?s)Wrote 2 segmentation.*But 1 image\(s\) could not be read.*"
                                              r"b\.dcm could not be read"):
        predict(inputs, tmp_path / "out", model_folder=model, show_progress=False)
    written = sorted(path.name for path in (tmp_path / "out").iterdir() if not path.name.startswith((".", "fold_")))
    assert written == ["a.nii.gz", "photo.png"], written
    assert any(line.startswith("Left out: ") and "b.dcm could not be read" in line
               for line in capsys.readouterr().err.splitlines())


def test_a_loop_of_links_is_left_out_while_the_image_beside_it_is_segmented(model: Path, tmp_path: Path,
                                                                           capsys: pytest.CaptureFixture) -> None:
    """Checking the output folder against the inputs resolved every input, and a loop of links ended the command
    with Python's RuntimeError "Symlink loop" before any image was segmented."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    Image.fromarray(toy_image(0)).save(inputs / "photo.png")
    (inputs / "l1.png").symlink_to(inputs / "l2.png")
    (inputs / "l2.png").symlink_to(inputs / "l1.png")
    with pytest.raises(AutomedsamError, match=r"(?s)Wrote 1 segmentation.*But 2 image\(s\) could not be read.*"
                                              r"l1\.png does not exist.*l2\.png does not exist"):
        predict(inputs, tmp_path / "out", model_folder=model, show_progress=False)
    assert written_cases(tmp_path / "out") == ["photo.png"]
    left_out = [line for line in capsys.readouterr().err.splitlines() if line.startswith("Left out: ")]
    assert [line.split()[2] for line in left_out] == [str(inputs / "l1.png"), str(inputs / "l2.png")], left_out


# ---------------------------------------------------------------- nnU-Net's channels, for a model of two


@pytest.fixture(scope="module")
def two_channel_model(tmp_path_factory: pytest.TempPathFactory, tiny_foundation: TinyFoundation) -> Path:
    """The tiny model, of a dataset whose dataset.json names two channels (T2 and ADC), as nnU-Net's MR datasets."""
    patch = pytest.MonkeyPatch()
    patch.setattr(run_module, "build_foundation_model", lambda *args, **kwargs: tiny_foundation)
    model_dir = write_model_folder(tmp_path_factory.mktemp("two_channels") / "results", tiny_foundation)
    meta = load_json(model_dir / "dataset.json")
    save_json(model_dir / "dataset.json", {**meta, "channel_names": {"0": "T2", "1": "ADC"}})
    yield model_dir
    patch.undo()


def channel_files(folder: Path, names: list[str]) -> Path:
    """`folder` holding the toy image as each PNG of `names`."""
    folder.mkdir(parents=True)
    for seed, name in enumerate(names):
        Image.fromarray(toy_image(seed)).save(folder / f"{name}.png")
    return folder


def written_cases(out: Path) -> list[str]:
    return sorted(path.name for path in out.glob("*.png")) if out.is_dir() else []


def test_a_channel_without_its_case_s_channel_0_is_left_out_not_segmented(two_channel_model: Path, tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture) -> None:
    """A folder holding only a_0001.png (the ADC image of a T2 model's case) wrote a_0001.png, exit 0: the model
    segmented the wrong channel without a word."""
    inputs = channel_files(tmp_path / "in", ["a_0001"])
    with pytest.raises(AutomedsamError, match=r"(?s)Wrote 0 segmentation.*But 1 image\(s\) were left out.*a_0001\.png "
                                              r"is channel 1 \(ADC\) of case a; the model reads channel 0 \(T2\), and "
                                              r"a_0000 is missing"):
        predict(inputs, tmp_path / "out", model_folder=two_channel_model, show_progress=False)
    assert written_cases(tmp_path / "out") == []
    err = capsys.readouterr().err.splitlines()
    assert any(line.startswith("Left out: a_0001.png is channel 1 (ADC)") for line in err)


def test_a_channel_beside_another_case_is_left_out_while_that_case_is_segmented(two_channel_model: Path,
                                                                                 tmp_path: Path) -> None:
    """a_0000 and b_0001 wrote a.png and b_0001.png: b's ADC image segmented as a case of its own."""
    inputs = channel_files(tmp_path / "in", ["a_0000", "b_0001"])
    with pytest.raises(AutomedsamError, match=r"(?s)Wrote 1 segmentation.*But 1 image\(s\) were left out.*b_0001\.png "
                                              r"is channel 1 \(ADC\) of case b;.*b_0000 is missing"):
        predict(inputs, tmp_path / "out", model_folder=two_channel_model, show_progress=False)
    assert written_cases(tmp_path / "out") == ["a.png"]


def test_the_datasets_own_imagests_layout_is_read_channel_0_with_one_note(two_channel_model: Path, tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture) -> None:
    """imagesTs as nnU-Net lays it out (a_0000, a_0001, b_0000, b_0001) was refused: every case's channel 0 had to
    be copied out first, while planning and training read that layout with a note."""
    inputs = channel_files(tmp_path / "in", ["a_0000", "a_0001", "b_0000", "b_0001"])
    summary = predict(inputs, tmp_path / "out", model_folder=two_channel_model, show_progress=False)
    assert summary.written == 2 and written_cases(tmp_path / "out") == ["a.png", "b.png"]
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("Note: ")]
    assert notes == ["Note: ignored channel 1 (ADC) of 2 cases; the model reads channel 0 (T2)."]


def test_a_case_of_more_channels_than_the_model_names_is_refused(two_channel_model: Path, tmp_path: Path) -> None:
    """One case a_0000, a_0001, a_0002 for a two-channel model wrote three segmentations, one per channel."""
    inputs = channel_files(tmp_path / "in", ["a_0000", "a_0001", "a_0002"])
    with pytest.raises(AutomedsamError, match=r"a_0002\.png in .*a channel past the 2 the model's dataset\.json names "
                                              r"\(_0000 to _0001\)"):
        predict(inputs, tmp_path / "out", model_folder=two_channel_model, show_progress=False)
    assert written_cases(tmp_path / "out") == []


def test_a_series_folder_named_as_channel_0_is_its_case_which_plot_overlays_finds(two_channel_model: Path,
                                                                                  tmp_path: Path) -> None:
    """Series folders a_0000 and a_0001 gave a_0000.nii.gz and a_0001.nii.gz, where a_0000.nii.gz gives a.nii.gz;
    automedsam_plot_overlays -i of that folder then refused the predictions made from it."""
    from automedsam.plotting import plot_overlays_folder
    inputs = tmp_path / "in"
    volume = np.stack([toy_image(0)] * 3).astype(np.int16)
    write_series(inputs / "a_0000", volume, uid="1.2.826.0.1.3680043.2.1125.7.1")
    write_series(inputs / "a_0001", volume[::-1], uid="1.2.826.0.1.3680043.2.1125.7.2")
    summary = predict(inputs, tmp_path / "out", model_folder=two_channel_model, show_progress=False)
    assert summary.written == 1 and sorted(path.name for path in (tmp_path / "out").glob("*.nii.gz")) == ["a.nii.gz"]
    drawn = plot_overlays_folder(inputs, tmp_path / "out", tmp_path / "overlays")
    assert [path.name for path in drawn] == ["a.png"]
