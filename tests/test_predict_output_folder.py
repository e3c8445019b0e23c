"""One input file (or one DICOM series folder) predicted into the folder that holds it is refused before anything is
written: the prediction `a.png` of `scans/a.jpg` would land among the images, where the user's own `scans/a.png`
was taken as already predicted (kept, the run content) or, with --overwrite, replaced by a label map."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from automedsam import api
from automedsam.cli import predict as predict_cli
from automedsam.errors import AutomedsamError
from automedsam.files import save_json
from automedsam.inference import run as run_module
from automedsam.inference.naming import check_output_folder, discover_inputs, segmentation_path
from test_dicom import write_dicom, write_series
from toy_model import OUTER, TinyFoundation, toy_image

REFUSAL = "is the folder that holds the input"


@pytest.fixture
def scans(tmp_path: Path, roots: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> Path:
    """scans/a.jpg to predict from a box file, beside the user's own image scans/a.png (named like its prediction);
    a model that would be built segments in a blink, so an accepted run really writes."""
    monkeypatch.setattr(run_module, "build_foundation_model", lambda *args, **kwargs: TinyFoundation())
    folder = tmp_path / "scans"
    folder.mkdir()
    Image.fromarray(toy_image(0)).save(folder / "a.jpg", quality=95)
    Image.fromarray(np.full((60, 80), 77, dtype=np.uint8)).save(folder / "a.png")
    save_json(tmp_path / "boxes.json", {"a": [{"label": 1, "box": list(OUTER)}]})
    return folder


def _contents(folder: Path) -> dict[str, bytes | None]:
    """Each entry of `folder`: a file's bytes, None for a folder."""
    return {path.name: path.read_bytes() if path.is_file() else None for path in sorted(folder.iterdir())}


@pytest.mark.parametrize("overwrite", [False, True], ids=["kept-as-predicted", "replaced-with-overwrite"])
def test_the_command_refuses_to_predict_a_file_into_its_own_folder(scans: Path, overwrite: bool,
                                                                   monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture) -> None:
    before = _contents(scans)
    argv = ["automedsam_predict", "-i", str(scans / "a.jpg"), "-o", str(scans), "--boxes",
            str(scans.parent / "boxes.json"), "--device", "cpu"] + (["--overwrite"] if overwrite else [])
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        predict_cli.main()
    assert exit_info.value.code != 0
    error = capsys.readouterr().err
    assert REFUSAL in error and "a.png" in error and "Traceback" not in error
    assert _contents(scans) == before  # the user's a.png byte for byte, and nothing added beside it


def test_the_python_api_refuses_it_too_and_other_folders_are_accepted(scans: Path) -> None:
    before = _contents(scans)
    boxes = scans.parent / "boxes.json"
    with pytest.raises(AutomedsamError, match=f"{REFUSAL}.*another output folder"):
        api.predict(scans / "a.jpg", scans, boxes=boxes, overwrite=True, device="cpu", show_progress=False)
    with pytest.raises(AutomedsamError, match=REFUSAL):  # the same folder named another way
        api.predict(scans / "a.jpg", scans / ".." / "scans", boxes=boxes, device="cpu", show_progress=False)
    assert _contents(scans) == before
    for output in (scans / "predictions", scans.parent / "out"):  # a folder of its own, even under scans
        summary = api.predict(scans / "a.jpg", output, boxes=boxes, device="cpu", show_progress=False)
        assert summary.written == 1 and (output / "a.png").is_file()
    assert _contents(scans) == before | {"predictions": None}


def test_a_linked_file_may_not_be_predicted_beside_its_link_nor_beside_its_target(tmp_path: Path) -> None:
    originals, links = tmp_path / "originals", tmp_path / "links"
    originals.mkdir()
    links.mkdir()
    Image.fromarray(toy_image(0)).save(originals / "a.jpg", quality=95)
    (links / "b.jpg").symlink_to(originals / "a.jpg")
    for input_path in (links / "b.jpg", links):
        images = discover_inputs(input_path)
        for output in (links, originals):
            if output == input_path:
                continue  # inside the input folder: refused by its own rule
            with pytest.raises(AutomedsamError, match=REFUSAL):
                check_output_folder(input_path, output, images)
        check_output_folder(input_path, tmp_path / "out", images)


def test_a_dicom_series_folder_or_file_may_not_be_predicted_into_the_folder_that_holds_it(tmp_path: Path) -> None:
    exam = tmp_path / "exam"
    write_series(exam / "ct1", np.stack([toy_image(2), toy_image(3)]).astype(np.int16))
    write_dicom(exam / "still.dcm", toy_image(0))
    for input_path in (exam / "ct1", exam / "still.dcm"):
        images = discover_inputs(input_path)
        user_file = segmentation_path(exam, images[0])  # exam/ct1.nii.gz, exam/still.nii.gz
        with pytest.raises(AutomedsamError, match=f"{REFUSAL} {input_path}.*{user_file.name}"):
            check_output_folder(input_path, exam, images)
        check_output_folder(input_path, exam / "predictions", images)
        check_output_folder(input_path, tmp_path / "out", images)
    check_output_folder(exam, tmp_path / "out", discover_inputs(exam))  # the folder of both, as before


def test_a_raw_dataset_image_predicted_beside_itself_is_pointed_outside_the_raw_data(roots: dict[str, Path]) -> None:
    """`-i RAW/Dataset001_X/imagesTs/case_0000.png -o RAW/Dataset001_X/imagesTs` was told to choose, e.g.,
    imagesTs/predictions, which was then refused as raw data: the raw-data refusal comes first, pointing outside."""
    images = roots["raw"] / "Dataset001_X" / "imagesTs"
    images.mkdir(parents=True)
    Image.fromarray(toy_image(0)).save(images / "case_0000.png")
    inputs = discover_inputs(images / "case_0000.png")
    with pytest.raises(AutomedsamError) as refused:
        check_output_folder(images / "case_0000.png", images, inputs)
    message = str(refused.value)
    assert f"is in the raw data (AUTOMEDSAM_RAW={roots['raw']})" in message
    assert f"Choose a folder outside {roots['raw']}" in message and "predictions" not in message
