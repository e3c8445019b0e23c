"""The review's ranking when every fold misses a structure the annotator boxed on every sample: on a dataset whose
images all hold it (THYROID's nodules) a total miss is the failure to box first, not agreement; once a sample is
marked No structure (ACDC's apex slices), an empty prediction is legitimate and stays last. And the boxes the
review proposes from the ensemble's label map, a ring's (ACDC's myocardium) enclosing its filled region."""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from PIL import Image

from automedsam import plans as plans_module
from automedsam.annotation import review_queue
from automedsam.annotation.retraining import TrainingSettings, review_steps
from automedsam.annotation.session import AnnotationSession
from automedsam.conversion import convert_folder
from automedsam.dataset import load_raw_dataset
from automedsam.inference.predictor import Predictor
from automedsam.inference.review import disagreement, ensemble_proposals
from automedsam.paths import preprocessed_dataset_dir
from automedsam.planning.plan_and_preprocess import plan_and_preprocess
from toy_model import INNER, OUTER, EncodeCounter, shared_foundation, toy_image, write_model_folder

RING, CORE = [{"label": 1, "box": list(OUTER)}], [{"label": 2, "box": list(INNER)}]


def label_map(*rows: int) -> np.ndarray:
    """An (8, 30) label map holding label 1 on the first ten pixels of each row in `rows`."""
    mapped = np.zeros((8, 30), np.uint8)
    for row in rows:
        mapped[row, :10] = 1
    return mapped


def no_probability(labels: list[int]) -> dict[int, np.ndarray]:
    return {label: np.zeros((8, 30), np.float32) for label in labels}


def test_a_label_every_image_holds_that_no_fold_found_is_full_disagreement() -> None:
    empty = [label_map(), label_map()]
    assert disagreement(empty, no_probability([1]), [1], expected={1}) == 1.0
    assert disagreement(empty, no_probability([1]), [1]) == 0.0  # nothing expected: the folds agree on nothing
    partly = [label_map(1, 2), label_map(2, 3)]  # Dice 0.5
    assert disagreement(partly, no_probability([1]), [1], expected={1}) == pytest.approx(0.5)  # found: as before
    ranked = sorted({"missed": empty, "partly": partly}.items(),
                    key=lambda item: -disagreement(item[1], no_probability([1]), [1], expected={1}))
    assert [name for name, _ in ranked] == ["missed", "partly"]


def test_a_missed_expected_label_counts_beside_the_labels_found() -> None:
    ring_only = [label_map(1), label_map(1)]  # label 1 agreed on fully, label 2 found by no fold
    assert disagreement(ring_only, no_probability([1, 2]), [1, 2], expected={1, 2}) == pytest.approx(0.5)
    assert disagreement(ring_only, no_probability([1, 2]), [1, 2], expected={1}) == 0.0  # 2 may be absent


def test_a_single_fold_missing_an_expected_label_is_fully_uncertain() -> None:
    assert disagreement([label_map()], no_probability([1]), [1], expected={1}) == 1.0
    assert disagreement([label_map()], no_probability([1]), [1]) == 0.0
    found = label_map(1)
    sure = {1: found.astype(np.float32)}  # probabilities 0 and 1 only: no uncertainty
    assert disagreement([found], sure, [1], expected={1}) == 0.0
    weak_core = {**sure, 2: np.full((8, 30), 0.3, np.float32)}  # below one half everywhere: core is not found
    assert disagreement([found], weak_core, [1, 2]) == pytest.approx(240 * 0.6 / 250)  # the pixels pooled, as before
    assert disagreement([found], weak_core, [1, 2], expected={1, 2}) == pytest.approx(0.5)  # sure ring, missed core
    half = {1: np.where(found > 0, 0.75, 0.0).astype(np.float32), 2: np.zeros((8, 30), np.float32)}
    assert disagreement([found], half, [1, 2], expected={1, 2}) == pytest.approx((0.5 + 1.0) / 2)


@pytest.fixture
def session(tmp_path: Path, roots: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> AnnotationSession:
    """Five copies of a toy image (labels ring and core), two drawn, and the toy model; the review builds the test
    session's one CPU LiteMedSAM, which encodes the copies once."""
    folder = tmp_path / "toys"
    folder.mkdir()
    for index in range(5):
        Image.fromarray(toy_image()).save(folder / f"toy{index}.png")
    convert_folder(folder, dataset_id=12, name="Misses", label_names=["ring", "core"])
    plan_and_preprocess(12, shots=2, folds=2, num_workers=1, plan_only=True, progress=False)
    foundation = shared_foundation()
    write_model_folder(roots["results"], foundation, dataset="Dataset012_Misses")
    monkeypatch.setattr(plans_module, "build_foundation_model", lambda *args, **kwargs: foundation)
    monkeypatch.setattr(foundation, "encode", EncodeCounter(foundation))
    raw = load_raw_dataset(12, check_images=False)
    return AnnotationSession(raw, preprocessed_dataset_dir(raw.name), foundation=shared_foundation)


def test_the_expected_labels_are_those_every_annotated_sample_holds(session: AnnotationSession) -> None:
    first, second = session.labelled()
    assert review_queue.expected_labels(session) == set()  # nothing boxed yet
    session.save(first, RING + CORE, version="none")
    assert review_queue.expected_labels(session) == {1, 2}  # the unboxed second sample tells nothing
    session.save(second, RING, version="none")
    assert review_queue.expected_labels(session) == {1}
    session.reject(second, version=session.sample(second)["version"])
    assert review_queue.expected_labels(session) == set()  # an image may show no structure at all


def test_no_label_is_expected_in_every_slice_of_a_volume() -> None:
    """A volume's review ranks all its slices: those past the organ lack labels every boxed slice holds, and ranked
    as total misses they came before the slices the folds disagree on."""
    class VolumeSession:
        splits = {"interactive": {"rejected": []}}

        def labelled(self) -> list[str]:
            return ["patient1__z004", "patient2__z006"]

    assert review_queue.expected_labels(VolumeSession()) == set()


def test_a_total_miss_ranks_first_unless_a_sample_was_marked_no_structure(session: AnnotationSession,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Every fold misses both labels on a black image. It scored 0.0, shown after every sample the folds barely
    disagree on, though each drawn sample holds both; once a drawn sample is marked No structure, it stays last."""
    for sample in session.labelled():
        session.save(sample, RING + CORE, version="none")
    black = session.unlabelled()[-1]  # not the next of the draw: it stays unlabelled after a rejection
    Image.fromarray(np.zeros_like(toy_image())).save(session.cases[black].image)
    monkeypatch.setattr(Predictor, "predict_plane_and_folds", missing_on_black(Predictor.predict_plane_and_folds))

    ranked = review_queue.review_items(session, trainer="default", device="cpu", limit=10, report=ignored)
    assert ranked[0].sample_id == black and ranked[0].disagreement == 1.0
    assert all(0.0 < item.disagreement < 1.0 for item in ranked[1:])

    rejected = session.labelled()[0]
    session.reject(rejected, version=session.sample(rejected)["version"])
    ranked = review_queue.review_items(session, trainer="default", device="cpu", limit=10, report=ignored)
    assert ranked[-1].sample_id == black and ranked[-1].disagreement == 0.0
    assert len(ranked) > 1 and all(item.disagreement > 0.0 for item in ranked[:-1])


def ignored(line: str, *, live: bool = False) -> None:
    """The review's notes and counts, where a test does not read them."""


def test_the_pages_review_counts_each_sample_on_the_page_and_prints_nothing(session: AnnotationSession,
                                                                            capsys: pytest.CaptureFixture) -> None:
    """The page's Review (and Train's last step) showed only "Segmenting 3 unlabelled samples with every fold" for
    minutes, while rich's bar counted the samples on the server's terminal, where the page's user may not look."""
    capsys.readouterr()
    said: list[tuple[str, bool]] = []
    review_steps(session, TrainingSettings(device="cpu"))[0].run(lambda line, live=False: said.append((line, live)),
                                                                 threading.Event())
    total = len(session.unlabelled())
    assert [line for line, live in said if live] == [f"Review: segmenting unlabelled samples {done}/{total}"
                                                     for done in range(1, total + 1)]
    assert session.review is not None and len(session.review) == total
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("", "")


def test_reviews_bar_in_the_terminal_passes_only_the_note_on(session: AnnotationSession,
                                                             capsys: pytest.CaptureFixture) -> None:
    """automedsam_annotate --review ranks in its own terminal: rich's bar counts there, its report prints the note
    alone (it takes no live lines)."""
    said: list[str] = []
    review_queue.review_items(session, trainer="default", device="cpu", limit=2, report=said.append, bar=True)
    assert len(said) == 1 and said[0].startswith("Ranking 2 of the 3 unlabelled samples")
    assert "Review: segmenting unlabelled samples" in capsys.readouterr().err


def missing_on_black(predict: Callable) -> Callable:
    """Predictor.predict_plane_and_folds finding nothing on a black plane: every fold misses the structure there."""
    def wrapped(self: Predictor, embedding: torch.Tensor, plane: np.ndarray):
        ensemble, probabilities, fold_maps = predict(self, embedding, plane)
        if plane.any():
            return ensemble, probabilities, fold_maps
        return (np.zeros_like(ensemble), {label: np.zeros_like(p) for label, p in probabilities.items()},
                [np.zeros_like(fold_map) for fold_map in fold_maps])
    return wrapped


ACDC_TARGETS = [{"label": 1, "region": [1], "subtract": [], "per_component": False},
                {"label": 2, "region": [2, 3], "subtract": [3], "per_component": False},  # the myocardium, a ring
                {"label": 3, "region": [3], "subtract": [], "per_component": False}]


def open_ring() -> np.ndarray:
    """A (12, 16) ACDC-like label map: the LV (3) reaching out through the gap of a myocardium (2) open on the
    right, and the RV (1) apart."""
    mapped = np.zeros((12, 16), np.uint8)
    mapped[2:10, 2:8] = 2
    mapped[4:8, 4:10] = 3
    mapped[2:6, 12:15] = 1
    return mapped


def box_of(boxes: list[dict], label: int) -> list[list[int]]:
    return [entry["box"] for entry in boxes if entry["label"] == label]


def test_a_ring_is_proposed_the_box_of_its_filled_region() -> None:
    """Training reads a ring's boxes as its filled region's (ring and cavity); the ring's own pixels, open where the
    ensemble predicts it open, gave a myocardium box cutting through the LV, which Accept saved as training data."""
    boxes = ensemble_proposals(open_ring(), ACDC_TARGETS)
    assert box_of(boxes, 3) == [[4, 4, 9, 7]]
    assert box_of(boxes, 2) == [[2, 2, 9, 9]]  # encloses the LV's box: the ring's own pixels end at column 7
    assert box_of(boxes, 1) == [[12, 2, 14, 5]]


def test_a_cavity_without_its_ring_proposes_no_ring_box() -> None:
    """Only the filled region's components that hold some of the ring count: an LV predicted with no myocardium
    around it, or apart from it, is no myocardium, as the annotator's boxes of a reference mask say."""
    cavity_only = np.where(open_ring() == 2, 0, open_ring())
    assert box_of(ensemble_proposals(cavity_only, ACDC_TARGETS), 2) == []
    apart = open_ring()
    apart[9:12, 11:16] = 3  # a second LV component away from the ring
    boxes = ensemble_proposals(apart, ACDC_TARGETS)
    assert box_of(boxes, 2) == [[2, 2, 9, 9]]
    assert box_of(boxes, 3) == [[4, 4, 15, 11]]
