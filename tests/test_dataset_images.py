"""automedsam_predict --dataset-images: the dataset's own images, the annotator's boxes outlined where given."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from automedsam import plans as plans_module
from automedsam.cli import predict as predict_cli
from automedsam.conversion import convert_folder
from automedsam.dataset import load_raw_dataset
from automedsam.errors import AutomedsamError
from automedsam.files import load_json, save_json
from automedsam.foundation.cache import PREPROCESSING_STATE_FILE, EmbeddingCache
from automedsam.inference import predict
from automedsam.inference import run as run_module
from automedsam.inference.agreement import AGREEMENT_FILE
from automedsam.inference.dataset_images import DatasetImageSegmenter, case_annotations
from automedsam.inference.segmented_record import RECORD_FILE
from automedsam.io import read_segmentation
from automedsam.planning.plan_and_preprocess import plan_and_preprocess
from automedsam.plans import Plans
from encoder_counts import count_encoded
from test_io import nifti_1_placement, tilted_affine, write_2d_nifti
from toy_model import INNER, OUTER, box_mask, shared_foundation, toy_image, toy_plans, write_model_folder

CORE, RING = 2, 1


@pytest.fixture
def built_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every run reuses the session's LiteMedSAM instead of loading it again."""
    monkeypatch.setattr(plans_module, "build_foundation_model", lambda *args, **kwargs: shared_foundation())


AROUND_OUTER = (17, 12, 62, 47)


def import_unannotated(folder: Path, images: dict[str, np.ndarray], dataset_id: int) -> Path:
    folder.mkdir()
    for name, pixels in images.items():
        if pixels.ndim == 2 or pixels.shape[-1] == 3:  # greyscale or colour PNG; else a volume
            Image.fromarray(pixels).save(folder / f"{name}.png")
        else:
            sitk.WriteImage(sitk.GetImageFromArray(pixels.astype(np.int16)), str(folder / f"{name}.nii.gz"))
    raw = convert_folder(folder, dataset_id=dataset_id, name="Toys", label_names=["ring", "core"])
    plan_and_preprocess(dataset_id, shots=2, folds=2, num_workers=1, plan_only=True, progress=False)
    return raw


def ring_and_core(label_map: np.ndarray) -> bool:
    """The toy's ring and core where they are, and nothing beyond the ring's box grown by the folds' 1-pixel spread
    and one more (a map labelling everything outside the core as ring is wrong)."""
    core, outer = box_mask(INNER), box_mask(OUTER)
    return (((label_map == CORE) & core).sum() >= 0.9 * core.sum()
            and ((label_map == RING) & outer & ~core).sum() >= 0.8 * (outer & ~core).sum()
            and not label_map[~box_mask(AROUND_OUTER)].any())


def test_masks_kept_boxes_outlined_empty_where_rejected_the_model_elsewhere(tmp_path: Path, roots,
                                                                            built_once) -> None:
    raw = import_unannotated(tmp_path / "scans", {f"toy{seed}": toy_image(seed) for seed in range(5)}, 12)
    reference = np.zeros((60, 80), np.uint8)
    reference[5:15, 5:25] = CORE
    (raw / "labelsTr").mkdir()
    Image.fromarray(reference).save(raw / "labelsTr" / "toy4.png")
    write_model_folder(roots["results"], shared_foundation(), dataset=raw.name)
    # drawn core first: the ring's box (its filled region) must not cover the core drawn before it
    save_json(raw / "boxesTr" / "toy0.json", [{"label": CORE, "box": list(INNER)}, {"label": RING, "box": list(OUTER)}])
    save_json(raw / "boxesTr" / "toy1.json", [{"label": CORE, "box": list(INNER)}])
    save_json(raw / "boxesTr" / "toy2.json", [])
    out = tmp_path / "segmentations"
    summary = predict(None, out, dataset=12, dataset_images=True, device="cpu", show_progress=False)
    assert summary.written == 5 and "default__toyPlans (folds 0, 1, checkpoint_final)" in summary.line()
    assert ("1 copied from the reference masks, 2 outlined from the annotator's boxes, 1 marked as not showing the "
            "structure (left empty), 1 segmented by the model") in summary.line()
    maps = {name: read_segmentation(out / f"{name}.png")[0] for name in ("toy0", "toy1", "toy2", "toy3", "toy4")}
    np.testing.assert_array_equal(maps["toy4"], reference)
    assert ring_and_core(maps["toy0"])
    assert set(np.unique(maps["toy1"])) == {0, CORE}  # the model would add the ring: the boxes were used
    assert not maps["toy2"].any()
    assert ring_and_core(maps["toy3"])
    # which to check first: only what the model segmented has the folds' agreement
    assert load_json(out / AGREEMENT_FILE, "agreement").keys() == {"toy3"}
    assert "The folds agree least on toy3 (" in summary.line()


def test_a_mask_of_a_slice_placed_in_3d_is_written_where_its_slice_lies(tmp_path: Path, roots, built_once) -> None:
    """The mask's own header was written: one ITK made lies flat at z = 0 while its slice is tilted at z = 63 mm, so
    header-based readers put the copied masks ~69 mm from the model's segmentations of the other images."""
    scans = tmp_path / "scans"
    scans.mkdir()
    for seed in range(3):
        write_2d_nifti(scans / f"toy{seed}.nii.gz", toy_image(seed).astype(np.int16), tilted_affine(25.0))
    raw = convert_folder(scans, dataset_id=13, name="Toys", label_names=["ring", "core"])
    plan_and_preprocess(13, shots=2, folds=2, num_workers=1, plan_only=True, progress=False)
    image = sitk.ReadImage(str(raw / "imagesTr" / "toy2_0000.nii.gz"))
    reference = sitk.GetImageFromArray(box_mask(INNER).astype(np.uint8) * CORE)
    reference.CopyInformation(image)  # as a user makes a mask with ITK: flat, as ITK reads the slice
    (raw / "labelsTr").mkdir()
    sitk.WriteImage(reference, str(raw / "labelsTr" / "toy2.nii.gz"))
    write_model_folder(roots["results"], shared_foundation(), dataset=raw.name)
    out = tmp_path / "segmentations"
    summary = predict(None, out, dataset=13, dataset_images=True, device="cpu", show_progress=False)
    assert "1 copied from the reference masks" in summary.line()
    assert nifti_1_placement(out / "toy2.nii.gz") == nifti_1_placement(raw / "imagesTr" / "toy2_0000.nii.gz")
    assert nifti_1_placement(out / "toy2.nii.gz") == nifti_1_placement(out / "toy0.nii.gz")


def test_a_volumes_boxed_slices_come_from_boxes_its_rejected_slices_are_empty(tmp_path: Path, roots,
                                                                                 built_once) -> None:
    volume = np.stack([toy_image(seed) for seed in range(4)])
    raw = import_unannotated(tmp_path / "scans", {"vol0": volume, "vol1": volume[::-1]}, 13)
    write_model_folder(roots["results"], shared_foundation(), dataset=raw.name)
    save_json(raw / "boxesTr" / "vol0.json", [{"label": CORE, "box": list(INNER), "slice": 1}])
    splits_path = roots["preprocessed"] / raw.name / "splits.json"
    splits = json.loads(splits_path.read_text())
    splits["interactive"]["rejected"] = ["vol0__z003", "vol1__z000"]
    splits_path.write_text(json.dumps(splits))
    out = tmp_path / "segmentations"
    summary = predict(None, out, dataset=13, dataset_images=True, device="cpu", show_progress=False)
    assert "2 segmented by the model (1 volume(s) with their boxed slices outlined from boxes)" in summary.line()
    first, second = (read_segmentation(out / f"{name}.nii.gz")[0] for name in ("vol0", "vol1"))
    assert ring_and_core(first[0]) and ring_and_core(first[2])
    assert set(np.unique(first[1])) == {0, CORE}
    assert not first[3].any() and not second[0].any()
    assert all(ring_and_core(second[z]) for z in (1, 2, 3))
    assert load_json(out / AGREEMENT_FILE, "agreement").keys() == {"vol0", "vol1"}
    splits["interactive"]["rejected"] += ["vol1__z001", "vol1__z002", "vol1__z003"]  # the user did all of vol1
    splits_path.write_text(json.dumps(splits))
    predict(None, out, dataset=13, dataset_images=True, device="cpu", show_progress=False)
    assert not read_segmentation(out / "vol1.nii.gz")[0].any()
    assert load_json(out / AGREEMENT_FILE, "agreement").keys() == {"vol0"}  # nothing of the model's left to check


def test_running_again_redoes_only_the_images_whose_inputs_changed(tmp_path: Path, roots, built_once,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    raw = import_unannotated(tmp_path / "scans", {f"toy{seed}": toy_image(seed) for seed in range(3)}, 14)
    model_dir = write_model_folder(roots["results"], shared_foundation(), dataset=raw.name)
    out = tmp_path / "segmentations"

    def run(**options) -> tuple[int, int]:
        summary = predict(None, out, dataset=14, dataset_images=True, device="cpu", show_progress=False, **options)
        return summary.written, summary.skipped

    assert run() == (3, 0) and run() == (0, 3)
    assert load_json(out / AGREEMENT_FILE, "agreement").keys() == {"toy0", "toy1", "toy2"}
    save_json(raw / "boxesTr" / "toy0.json", [])  # marked as not showing the structure
    assert run() == (1, 2) and not read_segmentation(out / "toy0.png")[0].any()
    assert load_json(out / AGREEMENT_FILE, "agreement").keys() == {"toy1", "toy2"}  # the model's score went with it
    (out / "toy1.png").unlink()
    assert run() == (1, 2)
    checkpoint = next(model_dir.glob("fold_0/checkpoint_final.pt"))
    os.utime(checkpoint, ns=(checkpoint.stat().st_mtime_ns + 10**9,) * 2)  # a fold retrained
    assert run() == (3, 0)
    summary = model_dir / "fold_1" / "validation" / "summary.json"  # its checks choose box refinement ("auto")
    save_json(summary, {**(load_json(summary) if summary.is_file() else {}), "box_refinement": {}})
    assert run() == (3, 0)
    predict(tmp_path / "scans", out, dataset=14, device="cpu", overwrite=True, show_progress=False)
    assert run() == (3, 0)  # label maps another command wrote are not the recorded ones
    assert run(box_refinement="on") == (3, 0) and run(box_refinement="on") == (0, 3)

    save_json(raw / "boxesTr" / "toy1.json", [{"label": CORE, "box": list(INNER)}])
    save_json(raw / "boxesTr" / "toy2.json", [{"label": CORE, "box": list(INNER)}])
    segment, calls = DatasetImageSegmenter.segment, []

    def stopped_after_one(self, image, out_path):
        calls.append(image.case_id)
        if len(calls) > 1:
            raise KeyboardInterrupt
        segment(self, image, out_path)

    monkeypatch.setattr(DatasetImageSegmenter, "segment", stopped_after_one)
    monkeypatch.setattr(run_module, "RECORD_EVERY_S", 0.0)  # the progress is recorded after every image
    with pytest.raises(KeyboardInterrupt):
        run(box_refinement="on")
    recorded = json.loads((out / RECORD_FILE).read_text())["cases"]
    assert sorted(recorded) == ["toy0", "toy1"]  # toy2, being redone when it stopped, stays unrecorded
    monkeypatch.setattr(DatasetImageSegmenter, "segment", segment)
    assert run(box_refinement="on") == (1, 2)
    (out / RECORD_FILE).write_text("{damaged")
    assert run(box_refinement="on") == (3, 0)
    assert run(box_refinement="on", overwrite=True) == (3, 0)
    with pytest.raises(AutomedsamError, match="-i, --save-probabilities do not apply"):
        predict(tmp_path / "scans", out, dataset=14, dataset_images=True, save_probabilities=True)
    with pytest.raises(AutomedsamError, match="--dataset-images needs -d"):
        predict(None, out, dataset_images=True)
    with pytest.raises(AutomedsamError, match="inside the input folder"):
        predict(None, raw / "imagesTr" / "out", dataset=14, dataset_images=True)


def test_the_command_without_images_explains_both_ways(monkeypatch: pytest.MonkeyPatch, capsys, tmp_path: Path):
    monkeypatch.setattr(sys, "argv", ["automedsam_predict", "-o", str(tmp_path / "out"), "-d", "1"])
    with pytest.raises(SystemExit) as exit_info:
        predict_cli.main()
    assert exit_info.value.code != 0
    error = capsys.readouterr().err
    assert "Give the images to segment with -i" in error and "--dataset-images" in error
    assert "Traceback" not in error


def test_boxes_on_colour_images_are_outlined(tmp_path: Path, roots, built_once) -> None:
    """A colour image is 2D with 3 channels: its box file has no "slice", as the page writes it."""
    tinted = {f"toy{seed}": np.stack([toy_image(seed), toy_image(seed) // 2, toy_image(seed)], axis=-1)
              for seed in range(3)}
    raw = import_unannotated(tmp_path / "scans", tinted, 15)
    write_model_folder(roots["results"], shared_foundation(), dataset=raw.name)
    save_json(raw / "boxesTr" / "toy0.json", [{"label": CORE, "box": list(INNER)}])
    out = tmp_path / "segmentations"
    summary = predict(None, out, dataset=15, dataset_images=True, device="cpu", show_progress=False)
    assert "1 outlined from the annotator's boxes" in summary.line()
    label_map = read_segmentation(out / "toy0.png")[0]
    assert label_map.shape == (60, 80) and set(np.unique(label_map)) == {0, CORE}


def test_a_boxed_ring_is_the_models_ring_inside_its_box_under_the_other_outlines(tmp_path: Path, roots,
                                                                               built_once) -> None:
    """The frozen model outlines the cavity inside a myocardium's box, not the ring: a boxed ring comes from the
    trained model, clipped to the box the annotator drew."""
    raw = import_unannotated(tmp_path / "scans", {f"toy{seed}": toy_image(seed) for seed in range(3)}, 16)
    write_model_folder(roots["results"], shared_foundation(), dataset=raw.name)
    predict(raw / "imagesTr", tmp_path / "model_only", dataset=16, device="cpu", show_progress=False)
    left_half = [OUTER[0], OUTER[1], 39, OUTER[3]]
    save_json(raw / "boxesTr" / "toy0.json", [{"label": RING, "box": left_half}, {"label": CORE, "box": list(INNER)}])
    out = tmp_path / "segmentations"
    predict(None, out, dataset=16, dataset_images=True, device="cpu", show_progress=False)
    label_map = read_segmentation(out / "toy0.png")[0]
    model_map = read_segmentation(tmp_path / "model_only" / "toy0.png")[0]
    expected_ring = (model_map == RING) & box_mask(tuple(left_half)) & (label_map != CORE)
    np.testing.assert_array_equal(label_map == RING, expected_ring)
    assert expected_ring.sum() > 300 and ((label_map == CORE) & box_mask(INNER)).sum() >= 0.9 * box_mask(INNER).sum()


def test_a_second_run_reads_every_embedding_from_the_preprocessed_cache(tmp_path: Path, roots, built_once,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    raw = import_unannotated(tmp_path / "scans", {f"toy{seed}": toy_image(seed) for seed in range(3)}, 16)
    write_model_folder(roots["results"], shared_foundation(), dataset=raw.name)
    save_json(raw / "boxesTr" / "toy0.json", [{"label": CORE, "box": list(INNER)}])
    state = roots["preprocessed"] / raw.name / PREPROCESSING_STATE_FILE
    model_plans = Plans(toy_plans())  # preprocessing made its embeddings under the model's plans
    save_json(state, {**(load_json(state) if state.is_file() else {}),
                      "embeddings": {model_plans.foundation_name: model_plans.embeddings_key()}})
    encoded = count_encoded(monkeypatch)
    first = predict(None, tmp_path / "first", dataset=16, dataset_images=True, device="cpu", show_progress=False)
    stored = roots["preprocessed"] / raw.name / "embeddings" / model_plans.foundation_name
    assert first.written == 3 and sum(encoded) == 3 and sorted(p.stem for p in stored.glob("*.npy")) == [
        "toy0", "toy1", "toy2"]
    encoded.clear()
    predict(None, tmp_path / "second", dataset=16, dataset_images=True, device="cpu", show_progress=False)
    assert encoded == []  # the boxed image and the model's two: no encoder pass
    for name in ("toy0", "toy1", "toy2"):
        np.testing.assert_array_equal(read_segmentation(tmp_path / "second" / f"{name}.png")[0],
                                      read_segmentation(tmp_path / "first" / f"{name}.png")[0])
    assert set(np.unique(read_segmentation(tmp_path / "second" / "toy0.png")[0])) == {0, CORE}


def test_an_image_imported_again_while_it_is_encoded_is_encoded_again_next_time(tmp_path: Path, roots) -> None:
    """The embedding of the old pixels, stored after the new image was written, was newer than it: served as
    current, and the case recorded up to date."""
    from automedsam.foundation.cache import PlannedEmbeddingCache

    raw = import_unannotated(tmp_path / "scans", {f"toy{seed}": toy_image(seed) for seed in range(2)}, 17)
    state = roots["preprocessed"] / raw.name / PREPROCESSING_STATE_FILE
    model_plans = Plans(toy_plans())
    save_json(state, {**(load_json(state) if state.is_file() else {}),
                      "embeddings": {model_plans.foundation_name: model_plans.embeddings_key()}})
    image = raw / "imagesTr" / "toy1_0000.png"
    cache = PlannedEmbeddingCache(roots["preprocessed"] / raw.name, model_plans, images={"toy1": image})
    cache.note_read("toy1")  # the pixels are read...
    os.utime(image, ns=(image.stat().st_mtime_ns + 10**9,) * 2)  # ...the image is imported again...
    cache.add("toy1", np.zeros((256, 64, 64), np.float16))  # ...and the old pixels' embedding stored
    assert cache.get("toy1") is None


@pytest.mark.parametrize("entries", [{"label": CORE, "box": [1, 2, 3, 4]}, ["x"],
                                     [{"label": CORE, "box": [1, 2, 3, 4], "slice": "a"}]])
def test_a_damaged_box_file_is_named_before_the_record_reads_its_entries(tmp_path: Path, roots, entries) -> None:
    """The entries were read unchecked: the record's digest of them failed with an AttributeError or a ValueError."""
    raw = import_unannotated(tmp_path / "scans", {f"toy{seed}": toy_image(seed) for seed in range(2)}, 17)
    save_json(raw / "boxesTr" / "toy0.json", [{"label": CORE, "box": list(INNER)}])
    assert case_annotations(load_raw_dataset(17))["toy0"].entries == [{"label": CORE, "box": list(INNER)}]
    save_json(raw / "boxesTr" / "toy1.json", entries)
    with pytest.raises(AutomedsamError, match=f"box file {raw / 'boxesTr' / 'toy1.json'}.*Fix or delete the file"):
        case_annotations(load_raw_dataset(17, check_images=False))


def test_a_slice_saved_again_unchanged_leaves_the_record_as_it_was() -> None:
    """Saving one slice again moves its entries to the end of the box file: the volume was segmented again."""
    from automedsam.inference.segmented_record import _by_slice

    first, second = {"label": 1, "box": [1, 2, 3, 4], "slice": 1}, {"label": 1, "box": [2, 3, 4, 5], "slice": 2}
    over = {"label": 2, "box": [1, 1, 9, 9], "slice": 1}
    assert _by_slice([first, over, second]) == _by_slice([second, first, over]) == [first, over, second]
    assert _by_slice([over, first, second]) == [over, first, second]  # within a slice, later outlines win: kept


def test_a_volumes_slices_are_read_from_the_cache_but_not_added_to_it(tmp_path: Path, roots, built_once,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Stored slices (preprocessing's, e.g. --embed-all) are read, boxed ones too; a volume's other slices are
    encoded and not stored: every slice of a CT collection would cost gigabytes."""
    volume = np.stack([toy_image(seed) for seed in range(4)])
    raw = import_unannotated(tmp_path / "scans", {"vol0": volume, "vol1": volume[::-1]}, 17)
    model_dir = write_model_folder(roots["results"], shared_foundation(), dataset=raw.name)
    model_plans = Plans(toy_plans(axis=0))
    save_json(model_dir / "plans.json", dict(model_plans.data))
    save_json(raw / "boxesTr" / "vol0.json", [{"label": CORE, "box": list(INNER), "slice": 1}])
    preprocessed = roots["preprocessed"] / raw.name
    state = preprocessed / PREPROCESSING_STATE_FILE
    save_json(state, {**(load_json(state) if state.is_file() else {}),
                      "embeddings": {model_plans.foundation_name: model_plans.embeddings_key()}})
    cache = EmbeddingCache(preprocessed, model_plans.foundation_name)
    foundation, normalised = shared_foundation(), model_plans.normalise(volume)
    for index in range(4):
        cache.put(f"vol0__z{index:03d}", foundation.encode(foundation.prepare(normalised[index])[0][None])[0])
    encoded = count_encoded(monkeypatch)
    assert predict(None, tmp_path / "out", dataset=17, dataset_images=True, device="cpu",
                   show_progress=False).written == 2
    assert sum(encoded) == 4  # vol1's slices only
    assert sorted(path.stem for path in cache.directory.glob("*.npy")) == [f"vol0__z{i:03d}" for i in range(4)]
    label_map = read_segmentation(tmp_path / "out" / "vol0.nii.gz")[0]
    assert set(np.unique(label_map[1])) == {0, CORE} and ring_and_core(label_map[0])
