"""A page left open on automedsam_annotate names samples by id only: the server refuses (409, reload) a page opened on
another dataset or in another mode than it serves, so that a tab left open saves nothing into the dataset served on
its port next, while a plain restart of the same dataset in the same mode goes on serving it."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from automedsam.annotation.server import SESSION_HEADER, TOKEN_HEADER, create_app
from automedsam.annotation.session import AnnotationSession, ReviewItem
from automedsam.conversion import convert_folder
from automedsam.dataset import load_raw_dataset
from automedsam.paths import preprocessed_dataset_dir
from automedsam.planning.plan_and_preprocess import plan_and_preprocess
from toy_model import OUTER, shared_foundation, toy_image

SHOTS = 3
FROM_THE_PAGE = {"X-Automedsam-Page": "1"}


@pytest.fixture
def two_datasets(tmp_path: Path, roots: dict[str, Path]) -> None:
    """Datasets 11 and 12 imported from one folder of toy images: the same case ids in both, as two folders of
    images named alike give."""
    folder = tmp_path / "toys"
    folder.mkdir()
    for seed in range(6):
        Image.fromarray(toy_image(seed)).save(folder / f"toy{seed}.png")
    for dataset_id, name in ((11, "Toys"), (12, "Others")):
        convert_folder(folder, dataset_id=dataset_id, name=name, label_names=["ring", "core"])
        plan_and_preprocess(dataset_id, shots=SHOTS, folds=2, num_workers=1, plan_only=True, progress=False)


def make_session(dataset_id: int) -> AnnotationSession:
    raw = load_raw_dataset(dataset_id, check_images=False)
    return AnnotationSession(raw, preprocessed_dataset_dir(raw.name), foundation=shared_foundation)


def opened_page(session: AnnotationSession) -> tuple[str, str]:
    """What a page opened on a server for `session` holds: its session id and the first sample of the queue."""
    app = create_app(session)
    overview = TestClient(app, base_url="http://127.0.0.1", headers={TOKEN_HEADER: app.state.token}).get(
        "/api/session").json()
    return overview["session_id"], overview["samples"][0]["sample"]


def page_client(session: AnnotationSession, session_id: str) -> TestClient:
    """A server for `session`, asked by a page opened with `session_id`."""
    app = create_app(session)
    return TestClient(app, base_url="http://127.0.0.1",
                      headers={**FROM_THE_PAGE, SESSION_HEADER: session_id, TOKEN_HEADER: app.state.token})


def save_one_box(client: TestClient, sample: str):
    return client.put(f"/api/samples/{sample}/boxes",
                      json={"version": "none", "boxes": [{"label": 1, "box": list(OUTER)}]})


def in_review(session: AnnotationSession) -> AnnotationSession:
    sample = session.unlabelled()[0]
    session.start_review([ReviewItem(sample, 0.5, [{"label": 1, "box": list(OUTER)}],
                                     np.zeros(session.normalised_plane(sample).shape[:2], np.uint8))])
    return session


def test_a_page_opened_on_another_dataset_is_refused_and_nothing_is_written(two_datasets, roots):
    """The tab left open on Toys saved its boxes into Others, served next on the same port, and said "Saved"."""
    session_id, sample = opened_page(make_session(11))
    client = page_client(make_session(12), session_id)
    response = save_one_box(client, sample)
    assert response.status_code == 409 and response.json()["reload"] is True
    detail = response.json()["detail"]
    assert "another automedsam_annotate run" in detail and "Dataset012_Others in annotate mode" in detail
    assert "reload the page" in detail
    assert not (roots["raw"] / "Dataset012_Others" / "boxesTr" / f"{sample}.json").exists()
    for path in ("/api/session", "/api/training", f"/api/samples/{sample}"):  # the poll and loads say so too
        assert client.get(path).status_code == 409


def test_a_restart_of_the_same_dataset_in_the_same_mode_goes_on_serving_the_page(two_datasets, roots):
    """A page left open through a plain restart saves its unsaved boxes afterwards."""
    session_id, sample = opened_page(make_session(11))
    restarted = make_session(11)
    assert opened_page(restarted)[0] == session_id
    assert save_one_box(page_client(restarted, session_id), sample).status_code == 200
    saved = json.loads((roots["raw"] / "Dataset011_Toys" / "boxesTr" / f"{sample}.json").read_text())
    assert saved == [{"label": 1, "box": list(OUTER)}]


def test_a_restart_in_another_mode_is_refused(two_datasets, roots):
    """A review page after a restart without --review (how the review is left) named samples the annotate queue
    does not hold ("unknown sample"), and nothing said to reload."""
    session_id, _ = opened_page(in_review(make_session(11)))
    client = page_client(make_session(11), session_id)
    for path in ("/api/training", "/api/session"):
        response = client.get(path)
        assert response.status_code == 409 and "Dataset011_Toys in annotate mode" in response.json()["detail"]


def test_the_review_that_train_opens_in_the_same_run_still_serves_the_pages_opened_before(two_datasets, roots):
    """Train ends in review in the same server run: a tab opened before it (still annotating until it sees the run
    end) keeps saving, and reads the review's id from the overview."""
    session = make_session(11)
    session_id, sample = opened_page(session)
    client = page_client(session, session_id)
    assert client.get("/api/training").status_code == 200
    in_review(session)
    overview = client.get("/api/session")
    assert overview.status_code == 200 and overview.json()["mode"] == "review"
    assert overview.json()["session_id"] != session_id
    assert save_one_box(client, sample).status_code == 200
