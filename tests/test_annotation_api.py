"""The annotation server through its HTTP API (FastAPI's TestClient): the queue, boxes saved into boxesTr/ exactly
as validated box files, nothing written on bad input, no save lost to another tab, rejections, 3D slices, the
frozen model's preview mask, and review adding a sample to the labelled set."""
from __future__ import annotations

import errno
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from automedsam.annotation import review_queue
from automedsam.annotation import server as annotation_server
from automedsam.annotation.retraining import TrainingSettings, review_steps, training_steps
from automedsam.annotation.segmenting import segmentation_steps
from automedsam.annotation.server import (MAX_BODY_BYTES, TOKEN_HEADER, allowed_hosts_for, create_app, is_loopback,
                                          page_url)
from automedsam.annotation.session import AnnotationSession, ReviewItem
from automedsam.annotation.training_job import CallStep, StepStopped
from automedsam.cli import annotate as annotate_cli
from automedsam.conversion import convert_folder
from automedsam.dataset import load_raw_dataset
from automedsam.errors import AutomedsamError
from automedsam.files import save_json
from automedsam.foundation.cache import PlannedEmbeddingCache
from automedsam.inference.agreement import AGREEMENT_FILE
from automedsam.inference.dataset_images import case_annotations
from automedsam.inference.model_folder import open_model_folder
from automedsam.inference.predictor import Predictor
from automedsam.inference.review import disagreement, proposed_boxes, rank_by_disagreement
from automedsam.inference.segmented_record import RECORD_FILE
from automedsam.io import Geometry, write_image
from automedsam.model_sharing.export import shared_dataset_name
from automedsam.paths import preprocessed_dataset_dir
from automedsam.planning import plan_and_preprocess as plan_module
from automedsam.planning.plan_and_preprocess import plan_and_preprocess
from automedsam.samples import case_of
from automedsam.trained_models import keep_previous, restore_previous
from toy_model import INNER, OUTER, shared_foundation, toy_image, unannotated_volumes, write_model_folder

SHOTS = 3
FROM_THE_PAGE = {"X-Automedsam-Page": "1"}  # what the page's script adds to every request


def make_session(dataset_id: int, review: list[ReviewItem] | None = None) -> AnnotationSession:
    raw = load_raw_dataset(dataset_id, check_images=False)
    return AnnotationSession(raw, preprocessed_dataset_dir(raw.name), foundation=shared_foundation, review=review)


def client_for(session: AnnotationSession, *, training: TrainingSettings = TrainingSettings()) -> TestClient:
    app = create_app(session, training=training)
    return TestClient(app, base_url="http://127.0.0.1", headers={**FROM_THE_PAGE, **token_of(app)})


def token_of(app) -> dict[str, str]:
    """The header that gives a script the server run's token (the page has it in a cookie)."""
    return {TOKEN_HEADER: app.state.token}


def from_another_site(client: TestClient) -> TestClient:
    """The same server, asked without the page's header: what any other web page open in the browser can send (with
    the token, as if the browser sent the page's cookie along)."""
    return TestClient(client.app, base_url="http://127.0.0.1", headers=token_of(client.app))


@pytest.fixture
def toy_dataset(tmp_path: Path, roots: dict[str, Path]) -> Path:
    """Eight 60 x 80 toy images, labels ring and core, imported unannotated and planned with --shots 3."""
    folder = tmp_path / "toys"
    folder.mkdir()
    for seed in range(8):
        Image.fromarray(toy_image(seed)).save(folder / f"toy{seed}.png")
    target = convert_folder(folder, dataset_id=11, name="Toys", label_names=["ring", "core"])
    plan_and_preprocess(11, shots=SHOTS, folds=2, num_workers=1, plan_only=True, progress=False)
    return target


def splits(raw_root: Path) -> dict:
    return json.loads((raw_root.parent / "preprocessed" / "Dataset011_Toys" / "splits.json").read_text())


def decoded(response) -> np.ndarray:
    """An array answer as the page reads it: the element type its X-Dtype names, little-endian, its X-Shape."""
    dtype = {"uint8": "u1", "uint16": "<u2", "float32": "<f4"}[response.headers["X-Dtype"]]
    return np.frombuffer(response.content, dtype).reshape([int(v) for v in response.headers["X-Shape"].split(",")])


def test_queue_lists_the_drawn_samples_and_their_pixels(toy_dataset: Path, roots):
    client = client_for(make_session(11))
    overview = client.get("/api/session").json()
    assert overview["total"] == SHOTS and overview["done"] == 0
    assert [entry["sample"] for entry in overview["samples"]] == splits(roots["raw"])["interactive"]["order"][:SHOTS]
    assert all(entry["case"] == entry["sample"] and entry["slice"] is None for entry in overview["samples"])
    assert overview["labels"] == {"ring": 1, "core": 2}
    sample = overview["samples"][0]["sample"]
    meta = client.get(f"/api/samples/{sample}").json()
    assert meta["shape"] == [60, 80] and meta["boxes"] == [] and meta["slice"] is None
    response = client.get(f"/api/samples/{sample}/pixels")
    assert response.headers["X-Shape"] == "60,80" and response.headers["X-Dtype"] == "float32"
    expected = np.asarray(Image.open(toy_dataset / "imagesTr" / f"{sample}_0000.png"), dtype=np.float32)
    assert np.array_equal(decoded(response), expected)


def test_saved_boxes_land_in_boxes_tr_and_count_as_done(toy_dataset: Path, roots):
    client = client_for(make_session(11))
    sample = client.get("/api/session").json()["samples"][0]["sample"]
    boxes = [{"label": 1, "box": list(OUTER)}, {"label": 2, "box": list(INNER)}]
    response = client.put(f"/api/samples/{sample}/boxes", json={"version": "none", "boxes": boxes})
    assert response.status_code == 200 and response.json()["done"] == 1
    assert json.loads((toy_dataset / "boxesTr" / f"{sample}.json").read_text()) == boxes
    assert {case.case_id for case in load_raw_dataset(11).cases if case.boxes is not None} == {sample}
    assert client.get(f"/api/samples/{sample}").json()["boxes"] == boxes


def test_a_drawn_sample_annotated_by_its_label_map_counts_as_done(toy_dataset: Path, roots):
    """Planning counts a drawn sample whose case has a label map with foreground as annotated (not to_annotate):
    the page must not ask boxes of it, nor leave it out of "k of N done" and Train waiting for it."""
    masked = splits(roots["raw"])["interactive"]["order"][0]
    give_a_label_map(toy_dataset, masked)
    plan_and_preprocess(11, shots=SHOTS, folds=2, num_workers=1, plan_only=True, progress=False)
    planned = splits(roots["raw"])
    assert masked in planned["labelled"] and masked not in planned["interactive"]["to_annotate"]
    client = client_for(make_session(11))
    overview = client.get("/api/session").json()
    assert {entry["sample"]: entry["status"] for entry in overview["samples"]}[masked] == "done"
    assert overview["done"] == 1 and client.get(f"/api/samples/{masked}").json()["status"] == "done"
    assert "2 of the 3 drawn samples still need boxes" in client.get("/api/training").json()["blocker"]


def give_a_label_map(toy_dataset: Path, sample: str) -> None:
    (toy_dataset / "labelsTr").mkdir(exist_ok=True)
    label_map = np.zeros((60, 80), np.uint8)
    label_map[OUTER[1]:OUTER[3] + 1, OUTER[0]:OUTER[2] + 1] = 1
    Image.fromarray(label_map).save(toy_dataset / "labelsTr" / f"{sample}.png")


def test_a_sample_marked_no_structure_then_given_a_label_map_counts_as_done_as_planning_counts_it(toy_dataset: Path,
                                                                                                   roots):
    """Planning reads a label map's case from the map alone (box file or not): the sample is annotated and back in
    the draw. Its empty box file made it "rejected" on the page, inside the draw: "2 of 3 done" for good."""
    masked = splits(roots["raw"])["interactive"]["order"][0]
    assert client_for(make_session(11)).post(f"/api/samples/{masked}/reject", json={"version": "none"}).is_success
    give_a_label_map(toy_dataset, masked)
    plan_and_preprocess(11, shots=SHOTS, folds=2, num_workers=1, plan_only=True, progress=False)
    planned = splits(roots["raw"])
    assert masked in planned["labelled"] and masked not in planned["interactive"]["rejected"]
    client = client_for(make_session(11))
    for sid in planned["interactive"]["to_annotate"]:
        assert client.put(f"/api/samples/{sid}/boxes", json={"version": "none", "boxes": [
            {"label": 1, "box": list(OUTER)}]}).is_success
    overview = client.get("/api/session").json()
    assert {entry["sample"]: entry["status"] for entry in overview["samples"]}[masked] == "done"
    assert overview["done"] == overview["total"] == SHOTS and client.get("/api/training").json()["blocker"] is None


def test_no_structure_on_a_sample_annotated_by_its_label_map_is_refused_with_the_reason(toy_dataset: Path, roots):
    """Planning takes the label map over an empty box list: the sample came back into the draw at the next Train,
    shown "rejected" and never done."""
    masked = splits(roots["raw"])["interactive"]["order"][0]
    give_a_label_map(toy_dataset, masked)
    plan_and_preprocess(11, shots=SHOTS, folds=2, num_workers=1, plan_only=True, progress=False)
    client = client_for(make_session(11))
    response = client.post(f"/api/samples/{masked}/reject", json={"version": "none"})
    assert response.status_code == 422 and f"labelsTr/{masked}.png" in response.json()["detail"]
    assert not (toy_dataset / "boxesTr" / f"{masked}.json").exists()
    assert masked not in splits(roots["raw"])["interactive"]["rejected"]


@pytest.mark.parametrize("body, status", [
    ({"version": "none", "boxes": [{"label": 1, "box": [10, 10, 80, 20]}]}, 422),     # outside the 80 columns
    ({"version": "none", "boxes": [{"label": 3, "box": [10, 10, 20, 20]}]}, 422),     # label not in dataset.json
    ({"version": "none", "boxes": [{"label": 1, "box": [20, 10, 10, 20]}]}, 422),     # inverted
    ({"version": "none", "boxes": [{"label": 1, "box": [1, 2, 3]}]}, 422),            # three numbers
    ({"version": "none", "boxes": [{"label": "1", "box": [1, 2, 3, 4]}]}, 422),       # a string for a number
    ({"version": "none", "boxes": [{"label": 1, "box": [1, 2, 3, 4], "x": 1}]}, 422),  # unknown key
    ({"boxes": []}, 422),                                                              # no version
])
def test_bad_boxes_are_refused_and_nothing_is_written(toy_dataset: Path, roots, body: dict, status: int):
    client = client_for(make_session(11))
    sample = client.get("/api/session").json()["samples"][0]["sample"]
    response = client.put(f"/api/samples/{sample}/boxes", json=body)
    assert response.status_code == status and response.json()["detail"]
    assert not (toy_dataset / "boxesTr").exists()


def test_malformed_and_oversized_bodies_and_unknown_paths_are_refused(toy_dataset: Path, roots):
    client = client_for(make_session(11))
    sample = client.get("/api/session").json()["samples"][0]["sample"]
    malformed = client.put(f"/api/samples/{sample}/boxes", content=b"{not json",
                           headers={"Content-Type": "application/json"})
    assert malformed.status_code == 422
    huge = {"version": "none", "boxes": [{"label": 1, "box": [1, 1, 2, 2]}] * (MAX_BODY_BYTES // 20)}
    assert client.put(f"/api/samples/{sample}/boxes", json=huge).status_code == 413
    for path in ("/api/samples/../dataset.json/pixels", "/api/samples/..%2F..%2Fdataset.json",
                 "/api/samples/toy_unknown/pixels", "/static/../server.py", "/static/%2e%2e/session.py"):
        assert client.get(path).status_code == 404, path
    not_drawn = next(sid for sid in splits(roots["raw"])["interactive"]["order"][SHOTS:])
    assert client.get(f"/api/samples/{not_drawn}").status_code == 404
    assert client.get("/api/session", headers={"Host": "attacker.example"}).status_code == 400
    assert not (toy_dataset / "boxesTr").exists()


def test_two_tabs_saving_from_the_same_version_lose_nothing(toy_dataset: Path, roots):
    first, second = client_for(make_session(11)), client_for(make_session(11))
    sample = first.get("/api/session").json()["samples"][0]["sample"]
    mine = {"label": 1, "box": list(OUTER)}
    theirs = {"label": 2, "box": list(INNER)}
    assert first.put(f"/api/samples/{sample}/boxes", json={"version": "none", "boxes": [mine]}).status_code == 200
    clash = second.put(f"/api/samples/{sample}/boxes", json={"version": "none", "boxes": [theirs]})
    assert clash.status_code == 409 and clash.json()["boxes"] == [mine]
    merged = second.put(f"/api/samples/{sample}/boxes", json={"version": clash.json()["version"],
                                                              "boxes": [mine, theirs]})
    assert merged.status_code == 200
    assert json.loads((toy_dataset / "boxesTr" / f"{sample}.json").read_text()) == [mine, theirs]


def test_a_save_interrupted_before_the_rename_leaves_the_previous_file(toy_dataset: Path, roots, monkeypatch):
    client = client_for(make_session(11))
    sample = client.get("/api/session").json()["samples"][0]["sample"]
    saved = client.put(f"/api/samples/{sample}/boxes", json={"version": "none", "boxes": [
        {"label": 1, "box": list(OUTER)}]}).json()
    before = (toy_dataset / "boxesTr" / f"{sample}.json").read_bytes()

    def stopped(*args):
        raise OSError("the server stopped before renaming the new file into place")

    monkeypatch.setattr(os, "replace", stopped)
    refused = client.put(f"/api/samples/{sample}/boxes", json={"version": saved["version"], "boxes": [
        {"label": 2, "box": list(INNER)}]})
    assert refused.status_code == 422 and "Cannot write" in refused.json()["detail"], "the page says why"
    assert (toy_dataset / "boxesTr" / f"{sample}.json").read_bytes() == before
    assert sorted(p.name for p in (toy_dataset / "boxesTr").iterdir()) == [f"{sample}.json"]


def refusing(monkeypatch, method: str, refused: Path) -> None:
    """Path.`method` raises PermissionError for `refused`, as for a raw dataset folder this user may not write."""
    original = getattr(Path, method)

    def refuse(self, *args, **kwargs):
        if self == refused:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Path, method, refuse)


def test_a_dataset_folder_that_may_not_hold_boxes_tr_refuses_the_save_with_the_reason(toy_dataset: Path, roots,
                                                                                        monkeypatch):
    """Making boxesTr/ lay outside the report of what cannot be written: the page got a server error (500)."""
    client = client_for(make_session(11))
    sample = client.get("/api/session").json()["samples"][0]["sample"]
    refusing(monkeypatch, "mkdir", toy_dataset / "boxesTr")
    refused = client.put(f"/api/samples/{sample}/boxes", json={"version": "none", "boxes": [
        {"label": 1, "box": list(OUTER)}]})
    assert refused.status_code == 422, refused.text
    assert refused.json()["detail"].startswith(f"Cannot write {toy_dataset / 'boxesTr'}: Permission denied.")
    assert not (toy_dataset / "boxesTr").exists()


def test_a_box_file_that_may_not_be_deleted_refuses_the_restore_with_the_reason(toy_dataset: Path, roots,
                                                                                monkeypatch):
    client = client_for(make_session(11))
    sample = client.get("/api/session").json()["samples"][0]["sample"]
    assert client.post(f"/api/samples/{sample}/reject", json={"version": "none"}).status_code == 200
    version = client.get(f"/api/samples/{sample}").json()["version"]
    box_file = toy_dataset / "boxesTr" / f"{sample}.json"
    refusing(monkeypatch, "unlink", box_file)
    refused = client.post(f"/api/samples/{sample}/restore", json={"version": version})
    assert refused.status_code == 422, refused.text
    assert refused.json()["detail"].startswith(f"Cannot write {box_file}: Permission denied.")
    assert json.loads(box_file.read_text()) == []


def test_rejecting_a_sample_brings_in_the_next_one_and_the_next_plan_agrees(toy_dataset: Path, roots):
    client = client_for(make_session(11))
    order = splits(roots["raw"])["interactive"]["order"]
    response = client.post(f"/api/samples/{order[0]}/reject", json={"version": "none"})
    assert response.status_code == 200
    listed = [(entry["sample"], entry["status"]) for entry in response.json()["samples"]]
    assert listed == [(order[0], "rejected")] + [(sid, "todo") for sid in order[1:SHOTS + 1]]
    assert response.json()["total"] == SHOTS
    assert json.loads((toy_dataset / "boxesTr" / f"{order[0]}.json").read_text()) == []
    assert splits(roots["raw"])["interactive"]["rejected"] == [order[0]]
    plan_and_preprocess(11, shots=SHOTS, folds=2, num_workers=1, plan_only=True, progress=False)
    assert splits(roots["raw"])["labelled"] == sorted(order[1:SHOTS + 1])


def test_another_site_can_read_nothing_into_the_dataset(toy_dataset: Path, roots):
    """Every request that changes something needs the page's header, which another web page cannot add without a
    preflight; reading stays open (the page loads with plain GETs)."""
    client = client_for(make_session(11))
    stranger = from_another_site(client)
    order = splits(roots["raw"])["interactive"]["order"]
    boxes = toy_dataset / "boxesTr"
    before = sorted(path.name for path in boxes.iterdir()) if boxes.is_dir() else []
    for method, url, body in (("post", f"/api/samples/{order[0]}/reject", {"version": "none"}),
                              ("put", f"/api/samples/{order[0]}/boxes", {"version": "none", "boxes": [
                                  {"label": 1, "box": list(OUTER)}]}),
                              ("post", f"/api/samples/{order[0]}/segment", {"box": list(OUTER)}),
                              ("post", f"/api/samples/{order[0]}/propose", {"point": [40, 30]}),
                              ("post", "/api/review", None), ("delete", "/api/training", None)):
        refused = stranger.request(method, url, json=body)
        assert refused.status_code == 403 and "X-Automedsam-Page" in refused.json()["detail"], (url, refused.text)
    assert (sorted(path.name for path in boxes.iterdir()) if boxes.is_dir() else []) == before
    assert splits(roots["raw"])["interactive"]["rejected"] == []
    assert stranger.get("/api/session").status_code == 200 and stranger.get("/").status_code == 200


def test_preview_mask_is_the_frozen_models_mask_of_the_box(toy_dataset: Path, roots):
    client = client_for(make_session(11))
    sample = client.get("/api/session").json()["samples"][0]["sample"]
    response = client.post(f"/api/samples/{sample}/segment", json={"box": list(INNER)})
    assert response.status_code == 200 and response.headers["X-Shape"] == "60,80"
    assert response.headers["X-Dtype"] == "uint8"
    mask = decoded(response).astype(bool)
    inside = np.zeros_like(mask)
    inside[INNER[1]:INNER[3] + 1, INNER[0]:INNER[2] + 1] = True
    assert mask[inside].mean() > 0.8 and mask[~inside].mean() < 0.05
    assert client.post(f"/api/samples/{sample}/segment", json={"box": [0, 0, 90, 10]}).status_code == 422


def test_a_double_click_proposes_the_box_of_what_the_frozen_model_outlines_there(toy_dataset: Path, roots):
    client = client_for(make_session(11))
    sample = client.get("/api/session").json()["samples"][0]["sample"]
    response = client.post(f"/api/samples/{sample}/propose", json={"point": [40, 30]})  # inside the toy's squares
    assert response.status_code == 200
    x0, y0, x1, y1 = response.json()["boxes"][0]
    overlap = max(0, min(x1, OUTER[2]) - max(x0, OUTER[0]) + 1) * max(0, min(y1, OUTER[3]) - max(y0, OUTER[1]) + 1)
    area = (x1 - x0 + 1) * (y1 - y0 + 1) + (OUTER[2] - OUTER[0] + 1) * (OUTER[3] - OUTER[1] + 1) - overlap
    assert overlap / area > 0.8
    for point in ([80, 30], [40, -1], [40, 30, 1], [40.5, 30]):  # outside the 60 x 80 image, or not a pixel
        assert client.post(f"/api/samples/{sample}/propose", json={"point": point}).status_code == 422, point


def test_two_boxes_drawn_at_once_encode_their_sample_once(toy_dataset: Path, roots, monkeypatch):
    foundation = shared_foundation()
    encoded: list[int] = []
    original = foundation.encode

    def slow_encode(images):
        encoded.append(len(images))
        time.sleep(0.5)  # the second box's request arrives while the first is encoding
        return original(images)

    raw = load_raw_dataset(11, check_images=False)
    session = AnnotationSession(raw, preprocessed_dataset_dir(raw.name), foundation=foundation)
    monkeypatch.setattr(foundation, "encode", slow_encode)  # the shared model: undone after the test
    sample = session.queue()[0]
    with ThreadPoolExecutor(2) as pool:
        masks = list(pool.map(lambda box: session.segment(sample, box), [list(OUTER), list(INNER)]))
    assert encoded == [1] and masks[0].shape == (60, 80)


def test_volume_slices_are_saved_per_slice_in_one_box_file(tmp_path: Path, roots):
    unannotated_volumes(tmp_path / "vols", dataset_id=12, shots=4)
    client = client_for(make_session(12))
    entries = client.get("/api/session").json()["samples"]
    assert all((entry["case"], entry["slice"]) == (entry["sample"].split("__")[0], int(entry["sample"][-3:]))
               for entry in entries)  # the queue names a volume's samples by case and slice
    queue = [entry["sample"] for entry in entries]
    by_case: dict[str, list[str]] = {}
    for sid in queue:
        by_case.setdefault(sid.split("__")[0], []).append(sid)
    case, samples = max(by_case.items(), key=lambda item: len(item[1]))
    meta = client.get(f"/api/samples/{samples[0]}").json()
    assert meta["slices"] == 4 and meta["shape"] == [30, 40]
    neighbour = (meta["slice"] + 1) % 4
    assert client.get(f"/api/samples/{samples[0]}/pixels?slice={neighbour}").headers["X-Shape"] == "30,40"
    assert client.get(f"/api/samples/{samples[0]}/pixels?slice=4").status_code == 422
    for number, sid in enumerate(samples):
        box = [1 + number, 2, 20, 25]
        assert client.put(f"/api/samples/{sid}/boxes", json={"version": "none", "boxes": [
            {"label": 1, "box": box}]}).status_code == 200
    stored = json.loads((roots["raw"] / "Dataset012_Vols" / "boxesTr" / f"{case}.json").read_text())
    assert sorted(entry["slice"] for entry in stored) == sorted(int(sid[-3:]) for sid in samples)
    other = next(sid for sid in queue if sid not in samples)
    assert client.post(f"/api/samples/{other}/reject", json={"version": "none"}).status_code == 200
    assert other in json.loads((roots["preprocessed"] / "Dataset012_Vols" / "splits.json").read_text())[
        "interactive"]["rejected"]


def test_a_dataset_not_imported_for_annotation_is_refused(roots):
    from synthetic_raw import make_2d_masks
    make_2d_masks(roots["raw"], folder="Dataset001_Discs")
    plan_and_preprocess(1, shots=4, folds=2, num_workers=1, plan_only=True, progress=False)
    with pytest.raises(AutomedsamError, match="automedsam_convert folder"):
        make_session(1)


def test_only_loopback_hosts_count_as_local():
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4")


def test_a_server_on_another_loopback_address_answers_its_page_and_refuses_other_names(toy_dataset: Path, roots):
    app = create_app(make_session(11), allowed_hosts=allowed_hosts_for("127.0.0.2"))
    for base_url, status in (("http://127.0.0.2:8765", 200), ("http://127.0.0.1:8765", 200),
                             ("http://rebound.example:8765", 400)):
        assert TestClient(app, base_url=base_url, headers=token_of(app)).get("/api/session").status_code == status
    assert page_url("127.0.0.2", 8765, token="T") == "http://127.0.0.2:8765/?token=T"
    assert page_url("::1", 80, token="T") == "http://[::1]:80/?token=T"
    assert page_url("0.0.0.0", 8765, token="T") == "http://127.0.0.1:8765/?token=T"


def test_a_server_on_every_interface_answers_this_machines_names_only(toy_dataset: Path, roots):
    """With --host 0.0.0.0 any Host was answered: a site whose name was pointed at this machine (DNS rebinding) read
    the answers, the images included."""
    allowed = allowed_hosts_for("0.0.0.0")
    assert "*" not in allowed and {"127.0.0.1", "localhost", socket.gethostname().lower()} <= set(allowed)
    assert "192.168.1.4" in allowed_hosts_for("192.168.1.4") and "*" not in allowed_hosts_for("192.168.1.4")
    app = create_app(make_session(11), allowed_hosts=allowed)
    assert TestClient(app, base_url="http://evil.example:8765", headers=token_of(app)).get("/").status_code == 400
    here = TestClient(app, base_url=f"http://{socket.gethostname()}:8765", headers=token_of(app))
    assert here.get("/api/session").status_code == 200


def test_every_api_request_needs_the_server_runs_token(toy_dataset: Path, roots):
    """Any account of a shared machine read every image (and changed boxes, trained, downloaded the model): the
    server answered whoever reached its port."""
    client = client_for(make_session(11))
    sample = client.get("/api/session").json()["samples"][0]["sample"]
    for headers in ({}, {TOKEN_HEADER: "wrong"}, {TOKEN_HEADER: ""}):
        stranger = TestClient(client.app, base_url="http://127.0.0.1", headers={**FROM_THE_PAGE, **headers})
        for method, url in (("get", "/api/session"), ("get", f"/api/samples/{sample}/pixels"), ("get", "/api/model"),
                            ("post", "/api/training"), ("get", "/api/nothing-here")):
            refused = stranger.request(method, url)
            assert refused.status_code == 403, (headers, url, refused.text)
            assert "open the address that automedsam_annotate printed" in refused.json()["detail"]
        opened = stranger.get("/")
        assert opened.status_code == 403 and "<code>?token=...</code>" in opened.text
        assert 'id="view"' not in opened.text and "set-cookie" not in opened.headers
    assert client.get(f"/api/samples/{sample}/pixels").status_code == 200


def test_the_printed_address_sets_the_pages_cookie(toy_dataset: Path, roots):
    """The page opened from the printed address holds the token in an HttpOnly, SameSite=Strict cookie, with which
    every request of the page is answered; a wrong token sets none."""
    app = create_app(make_session(11))
    browser = TestClient(app, base_url="http://127.0.0.1:8765", headers=FROM_THE_PAGE)
    assert browser.get("/", params={"token": "wrong"}).status_code == 403 and not browser.cookies
    opened = browser.get("/", params={"token": app.state.token})
    assert opened.status_code == 200 and 'id="view"' in opened.text
    cookie = opened.headers["set-cookie"]
    assert cookie.startswith(f"automedsam_token_8765={app.state.token};"), cookie
    assert {"HttpOnly", "Path=/", "SameSite=strict"} <= {part.strip() for part in cookie.split(";")}, cookie
    sample = browser.get("/api/session").json()["samples"][0]["sample"]
    assert browser.get(f"/api/samples/{sample}/pixels").status_code == 200
    assert browser.get("/").status_code == 200  # a reload, the token gone from the address
    stale = TestClient(app, base_url="http://127.0.0.1:8765", cookies={"automedsam_token_8765": "wrong"})
    assert stale.get("/api/session").status_code == 403 and stale.get("/").status_code == 403
    other_port = TestClient(app, base_url="http://127.0.0.1:8766", cookies={"automedsam_token_8765": app.state.token})
    assert other_port.get("/api/session").status_code == 403  # another server's cookie (browsers ignore ports)


def test_every_answer_forbids_framing_and_sniffing(toy_dataset: Path, roots):
    """A site showed the page in an invisible frame and turned a click on it into No structure (clickjacking)."""
    client = client_for(make_session(11))
    stranger = TestClient(client.app, base_url="http://127.0.0.1")
    rebound = TestClient(client.app, base_url="http://rebound.example")
    for answer in (client.get("/"), client.get("/static/annotate.js"), client.get("/api/session"),
                   stranger.get("/"), stranger.get("/api/session"), rebound.get("/")):
        assert answer.headers.get("X-Frame-Options") == "DENY", (answer.url, answer.headers)
        assert answer.headers.get("X-Content-Type-Options") == "nosniff", (answer.url, answer.headers)
        policy = answer.headers.get("Content-Security-Policy", "")
        assert "frame-ancestors 'none'" in policy and "default-src 'self'" in policy, (answer.url, policy)


def test_review_ranks_the_first_review_samples_of_the_seeded_order(toy_dataset: Path, roots, monkeypatch):
    """A folder of volumes holds hundreds of unlabelled slices: --review ranks a seeded draw of them, and says so."""
    session = make_session(11)
    write_model_folder(roots["results"], shared_foundation(), dataset="Dataset011_Toys")
    ranked_ids: list[str] = []
    said: list[str] = []
    planes: list[tuple[str, np.ndarray, object]] = []

    def spy(folder, samples, **options):
        for sample_id, plane in samples:
            ranked_ids.append(sample_id)
            planes.append((sample_id, plane, folder.plans))
        return []
    monkeypatch.setattr(review_queue, "rank_by_disagreement", spy)
    review_queue.review_items(session, trainer="default", device="cpu", limit=2, report=said.append)
    assert ranked_ids == session.unlabelled()[:2]
    assert said and "Ranking 2 of the 5 unlabelled samples" in said[0]
    ranked_ids.clear()
    said.clear()
    review_queue.review_items(session, trainer="default", device="cpu", limit=100, report=said.append)
    assert ranked_ids == session.unlabelled() and not said
    # the toy model's plans window images otherwise than the session's: the planes are in the model's window, as
    # automedsam_predict gives them (they were the session's)
    sample_id, plane, model_plans = planes[0]
    assert np.array_equal(plane, session.normalised_plane(sample_id, model_plans))
    assert not np.array_equal(plane, session.normalised_plane(sample_id))
    save_json(roots["results"] / "Dataset011_Toys" / "default__toyPlans" / "plans.json", dict(session.plans.data))
    planes.clear()
    review_queue.review_items(session, trainer="default", device="cpu", limit=2, report=said.append)
    assert np.array_equal(planes[0][1], session.normalised_plane(planes[0][0]))  # the same plans: the same window


def test_the_pages_review_names_the_command_that_ranks_more_not_a_bare_flag(toy_dataset: Path, roots, monkeypatch):
    """The page's Review said "(--review-samples 5 ranks them all)": the page has no such field; the server's command
    takes it. The terminal's --review keeps the flag alone."""
    session = make_session(11)
    write_model_folder(roots["results"], shared_foundation(), dataset="Dataset011_Toys")
    monkeypatch.setattr(review_queue, "rank_by_disagreement", lambda folder, samples, **options: [])
    said: list[str] = []
    review_steps(session, TrainingSettings(device="cpu", review_samples=2))[0].run(
        lambda line, live=False: said.append(line), threading.Event())
    assert any("(automedsam_annotate started with --review-samples 5 ranks them all)" in line for line in said), said
    said.clear()
    review_queue.review_items(session, trainer="default", device="cpu", limit=2, report=said.append)
    assert said[0].endswith("order (--review-samples 5 ranks them all).")


def test_the_review_notes_each_image_before_reading_its_pixels(toy_dataset: Path, roots, monkeypatch):
    """The review read a plane and only then stamped its embedding with the image file's digest: an image imported
    again during that read kept the replaced pixels' embedding under the new file's digest, served from then on."""
    session = make_session(11)
    write_model_folder(roots["results"], shared_foundation(), dataset="Dataset011_Toys")
    events: list[tuple[str, str]] = []
    noted, read = PlannedEmbeddingCache.note_read, session.normalised_plane
    monkeypatch.setattr(PlannedEmbeddingCache, "note_read",
                        lambda cache, case_id: (events.append(("noted", case_id)), noted(cache, case_id))[1])
    monkeypatch.setattr(session, "normalised_plane",
                        lambda sample_id, plans=None: (events.append(("read", case_of(sample_id))),
                                                       read(sample_id, plans))[1])

    def consume(folder, samples, **options):
        for _ in samples:
            pass
        return []
    monkeypatch.setattr(review_queue, "rank_by_disagreement", consume)
    review_queue.review_items(session, trainer="default", device="cpu", limit=2, report=lambda _: None)
    cases = [case_of(sample_id) for sample_id in session.unlabelled()[:2]]
    assert events == [event for case in cases for event in (("noted", case), ("read", case))]


def test_the_review_leaves_out_samples_annotated_outside_the_draw(toy_dataset: Path, roots):
    session = make_session(11)
    masked, boxed = session.unlabelled()[:2]
    (toy_dataset / "labelsTr").mkdir(exist_ok=True)
    Image.fromarray(np.zeros((60, 80), np.uint8)).save(toy_dataset / "labelsTr" / f"{masked}.png")
    save_json(toy_dataset / "boxesTr" / f"{boxed}.json", [{"label": 1, "box": list(OUTER)}])
    session = make_session(11)
    assert masked not in session.unlabelled() and boxed not in session.unlabelled()
    assert len(session.unlabelled()) == 8 - SHOTS - 2


def test_review_ranks_unlabelled_samples_and_saving_one_adds_it(toy_dataset: Path, roots):
    session = make_session(11)
    model_dir = write_model_folder(roots["results"], shared_foundation(), dataset="Dataset011_Toys")
    assert len(session.unlabelled()) == 8 - SHOTS
    candidates = session.unlabelled()[:2]
    ranked = rank_by_disagreement(open_model_folder(model_dir), [(sid, session.normalised_plane(sid))
                                                                  for sid in candidates],
                                  cache=PlannedEmbeddingCache(session.preprocessed_dir, session.plans),
                                  foundation=shared_foundation(), progress=False)
    assert sorted(item["sample_id"] for item in ranked) == sorted(candidates)
    assert all(0.0 <= item["disagreement"] <= 1.0 for item in ranked)
    assert [item["disagreement"] for item in ranked] == sorted((item["disagreement"] for item in ranked), reverse=True)
    session.start_review([ReviewItem(item["sample_id"], item["disagreement"], item["boxes"], item["label_map"])
                          for item in ranked])
    client = client_for(session)
    first = ranked[0]["sample_id"]
    meta = client.get(f"/api/samples/{first}").json()
    assert meta["proposed"] == ranked[0]["boxes"] and {entry["label"] for entry in meta["proposed"]} == {1, 2}
    prediction = client.get(f"/api/samples/{first}/prediction")
    assert prediction.headers["X-Dtype"] == "uint8"  # ids that fit a byte are sent one byte each
    assert set(np.unique(decoded(prediction))) == {0, 1, 2}
    assert client.post(f"/api/samples/{first}/reject", json={"version": "none"}).status_code == 422
    saved = client.put(f"/api/samples/{first}/boxes", json={"version": "none", "boxes": meta["proposed"]})
    assert saved.status_code == 200
    assert splits(roots["raw"])["interactive"]["added"] == [first]
    plan_and_preprocess(11, shots=SHOTS, folds=2, num_workers=1, plan_only=True, progress=False)
    assert len(splits(roots["raw"])["labelled"]) == SHOTS + 1 and first in splits(roots["raw"])["labelled"]


def test_the_review_prediction_of_a_label_id_above_255_reaches_the_page_as_that_id(tmp_path: Path, roots):
    """The prediction was sent as bytes: label 300 arrived as 44 (another structure's colour, 256 as background)."""
    folder = tmp_path / "big"
    folder.mkdir()
    for seed in range(4):
        Image.fromarray(toy_image(seed)).save(folder / f"toy{seed}.png")
    target = convert_folder(folder, dataset_id=15, name="BigLabels", label_names=["a", "big"])
    meta = json.loads((target / "dataset.json").read_text())
    (target / "dataset.json").write_text(json.dumps({**meta, "labels": {"background": 0, "a": 1, "big": 300}}))
    plan_and_preprocess(15, shots=2, folds=2, num_workers=1, plan_only=True, progress=False)
    session = make_session(15)
    candidate = session.unlabelled()[0]
    label_map = np.zeros((60, 80), np.uint16)
    label_map[10:20, 10:20], label_map[30:40, 30:40] = 300, 1
    session.start_review([ReviewItem(candidate, 0.5, [], label_map)])
    client = client_for(session)
    assert client.get("/api/session").json()["labels"] == {"a": 1, "big": 300}
    prediction = client.get(f"/api/samples/{candidate}/prediction")
    assert prediction.status_code == 200 and prediction.headers["X-Dtype"] == "uint16"
    np.testing.assert_array_equal(decoded(prediction), label_map)


def test_in_review_the_candidates_are_still_the_unlabelled_and_the_drawn_samples_stay_savable(toy_dataset: Path,
                                                                                             roots):
    """In review, unlabelled() subtracted the review list from the order: Train's next review ranked the drawn,
    boxed samples; and a tab's unsaved boxes of a drawn sample were refused (404) once another tab's run ended."""
    session = make_session(11)
    drawn = session.queue()
    candidates = session.unlabelled()
    item = ReviewItem(candidates[0], 0.5, [], np.zeros((60, 80), np.uint8))
    session.start_review([item])
    assert session.unlabelled() == candidates and not set(drawn) & set(session.unlabelled())
    client = client_for(session)
    saved = client.put(f"/api/samples/{drawn[0]}/boxes", json={"version": "none", "boxes": [
        {"label": 1, "box": list(OUTER)}]})
    assert saved.status_code == 200
    assert splits(roots["raw"])["interactive"]["added"] == []  # a drawn sample is labelled already, not added
    assert client.put("/api/samples/nowhere/boxes", json={"version": "none", "boxes": []}).status_code == 404


def test_a_2d_sample_saved_without_boxes_is_refused_no_structure_says_that(toy_dataset: Path, roots):
    """An empty save read as a rejection nobody recorded: the plan drew a replacement, and Train went on."""
    client = client_for(make_session(11))
    sample = client.get("/api/session").json()["samples"][0]["sample"]
    response = client.put(f"/api/samples/{sample}/boxes", json={"version": "none", "boxes": []})
    assert response.status_code == 422 and "No structure" in response.json()["detail"]
    assert not (toy_dataset / "boxesTr" / f"{sample}.json").exists()


def test_an_empty_save_of_a_2d_sample_marked_no_structure_says_so_not_press_x(toy_dataset: Path, roots):
    """A tab showing the image's boxes deleted them after another tab's No structure and pressed S: the answer said
    "No box to save ... press X", though it was marked already."""
    client = client_for(make_session(11))
    sample = client.get("/api/session").json()["samples"][0]["sample"]
    saved = client.put(f"/api/samples/{sample}/boxes", json={"version": "none", "boxes": [
        {"label": 1, "box": list(OUTER)}]})
    assert client.post(f"/api/samples/{sample}/reject", json={"version": saved.json()["version"]}).status_code == 200
    response = client.put(f"/api/samples/{sample}/boxes", json={"version": saved.json()["version"], "boxes": []})
    detail = response.json()["detail"]
    assert response.status_code == 422 and "marked No structure already" in detail and "draw its boxes" in detail
    assert "press X" not in detail and sample in splits(roots["raw"])["interactive"]["rejected"]


def test_an_empty_save_of_a_sample_marked_no_structure_carries_its_state_for_the_page_to_take(toy_dataset: Path,
                                                                                                 roots):
    """The refusal was a message alone: the page, told nothing it could act on, stayed unsaved and N met it again. It
    names the sample marked, with the version and the queue the server holds now; Restore with that version works."""
    client = client_for(make_session(11))
    sample = client.get("/api/session").json()["samples"][0]["sample"]
    saved = client.put(f"/api/samples/{sample}/boxes", json={"version": "none", "boxes": [
        {"label": 1, "box": list(OUTER)}]})
    client.post(f"/api/samples/{sample}/reject", json={"version": saved.json()["version"]})
    refused = client.put(f"/api/samples/{sample}/boxes", json={"version": saved.json()["version"], "boxes": []})
    answer = refused.json()
    assert refused.status_code == 422 and answer["marked_no_structure"] == sample
    assert answer["version"] == client.get(f"/api/samples/{sample}").json()["version"] != saved.json()["version"]
    assert answer["samples"] == client.get("/api/session").json()["samples"]
    assert {entry["sample"]: entry["status"] for entry in answer["samples"]}[sample] == "rejected"
    restored = client.post(f"/api/samples/{sample}/restore", json={"version": answer["version"]})
    assert restored.status_code == 200
    nothing = client.put(f"/api/samples/{sample}/boxes", json={"version": restored.json()["version"], "boxes": []})
    assert nothing.status_code == 422 and "marked_no_structure" not in nothing.json()


@pytest.mark.parametrize("replacement_boxed", [False, True])
def test_restore_takes_no_structure_back_and_keeps_the_boxes_of_the_sample_drawn_for_it(toy_dataset: Path, roots,
                                                                                      replacement_boxed: bool):
    """An X could not be undone: the sample left the queue for good. Restored, it rejoins the draw at its place; the
    sample drawn in its stead leaves unless it has boxes (then it stays, added), and the next plan agrees."""
    client = client_for(make_session(11))
    order = splits(roots["raw"])["interactive"]["order"]
    rejected = client.post(f"/api/samples/{order[0]}/reject", json={"version": "none"})
    if replacement_boxed:
        client.put(f"/api/samples/{order[SHOTS]}/boxes", json={"version": "none", "boxes": [
            {"label": 1, "box": list(OUTER)}]})
    version = client.get(f"/api/samples/{order[0]}").json()["version"]
    assert client.post(f"/api/samples/{order[0]}/restore", json={"version": "stale"}).status_code == 409
    response = client.post(f"/api/samples/{order[0]}/restore", json={"version": version})
    assert rejected.status_code == 200 and response.status_code == 200
    kept = [order[SHOTS]] if replacement_boxed else []
    assert [entry["sample"] for entry in response.json()["samples"]] == order[:SHOTS] + kept
    assert response.json()["samples"][0]["status"] == "todo"
    assert not (toy_dataset / "boxesTr" / f"{order[0]}.json").exists()  # an empty 2D list reads as No structure
    record = splits(roots["raw"])["interactive"]
    assert record["rejected"] == [] and record["added"] == kept
    again = client.post(f"/api/samples/{order[0]}/restore", json={"version": "none"})  # a stale tab's Restore
    assert again.status_code == 409, "a conflict the page shows the sample again for, not a dead end"
    plan_and_preprocess(11, shots=SHOTS, folds=2, num_workers=1, plan_only=True, progress=False)
    assert splits(roots["raw"])["labelled"] == sorted(order[:SHOTS] + kept)


def test_a_tab_boxing_the_sample_another_tabs_restore_pushed_out_can_still_save_it(toy_dataset: Path, roots):
    """Tab 2 drew boxes on the sample the draw brought in for an X; tab 1's Restore pushed it out: the save was a
    404 and the page could not move on without losing the boxes."""
    client = client_for(make_session(11))
    order = splits(roots["raw"])["interactive"]["order"]
    client.post(f"/api/samples/{order[0]}/reject", json={"version": "none"})
    assert client.get(f"/api/samples/{order[SHOTS]}").status_code == 200  # tab 2 shows the sample brought in
    version = client.get(f"/api/samples/{order[0]}").json()["version"]
    assert client.post(f"/api/samples/{order[0]}/restore", json={"version": version}).status_code == 200
    saved = client.put(f"/api/samples/{order[SHOTS]}/boxes", json={"version": "none", "boxes": [
        {"label": 1, "box": list(OUTER)}]})
    assert saved.status_code == 200 and splits(roots["raw"])["interactive"]["added"] == [order[SHOTS]]
    assert client.get(f"/api/samples/{order[SHOTS + 1]}").status_code == 404, "never drawn: still unknown"


def test_a_restore_made_while_a_terminal_plans_is_kept(toy_dataset: Path, roots, monkeypatch):
    """The planner read the image's empty box file (No structure) before the page's Restore deleted it, and the
    record after: the restore was undone, for good."""
    session = make_session(11)
    order = splits(roots["raw"])["interactive"]["order"]
    session.reject(order[0], version="none")
    plan_and_preprocess(11, shots=SHOTS, folds=2, num_workers=1, plan_only=True, progress=False)
    session.reload()
    fingerprint = plan_module._fingerprint

    def restoring_meanwhile(*args, **kwargs):
        found = fingerprint(*args, **kwargs)
        session.restore(order[0], version=session.sample(order[0])["version"])
        return found
    monkeypatch.setattr(plan_module, "_fingerprint", restoring_meanwhile)
    plan_and_preprocess(11, shots=SHOTS, folds=2, num_workers=1, plan_only=True, progress=False)
    assert splits(roots["raw"])["interactive"]["rejected"] == []
    monkeypatch.setattr(plan_module, "_fingerprint", fingerprint)
    plan_and_preprocess(11, shots=SHOTS, folds=2, num_workers=1, plan_only=True, progress=False)
    assert order[0] in splits(roots["raw"])["labelled"]


def test_a_damaged_box_file_entry_is_named_not_taken_for_an_unknown_sample(toy_dataset: Path, roots):
    client = client_for(make_session(11))
    sample = client.get("/api/session").json()["samples"][0]["sample"]
    (toy_dataset / "boxesTr").mkdir(exist_ok=True)
    (toy_dataset / "boxesTr" / f"{sample}.json").write_text('[{"box": [1, 2, 3, 4]}]')
    response = client.get("/api/session")
    assert response.status_code == 422 and f"{sample}.json, entry 0" in response.json()["detail"]


def test_train_stops_before_the_model_moves_when_planning_drew_samples_still_to_box(toy_dataset: Path, roots):
    session = make_session(11)
    client = client_for(session)
    order = splits(roots["raw"])["interactive"]["order"]
    assert client.post(f"/api/samples/{order[0]}/reject", json={"version": "none"}).status_code == 200
    for sample in order[1:SHOTS]:  # the replacement, order[SHOTS], stays unboxed
        client.put(f"/api/samples/{sample}/boxes", json={"version": "none", "boxes": [
            {"label": 1, "box": list(OUTER)}]})
    plan_and_preprocess(11, num_workers=1, plan_only=True, progress=False)
    model_dir = write_model_folder(roots["results"], shared_foundation(), dataset="Dataset011_Toys")
    keep = training_steps(session, TrainingSettings())[1]
    with pytest.raises(AutomedsamError, match=f"1 more sample.*{order[SHOTS]}.*unchanged"):
        keep.run(lambda line, live=False: None, threading.Event())
    assert model_dir.is_dir() and not (model_dir.parent / "previous").exists()
    assert order[SHOTS] in session.queue()


def test_a_fold_that_planning_no_longer_makes_is_left_out(toy_dataset: Path, roots):
    session = make_session(11)
    steps = training_steps(session, TrainingSettings())
    fold_two = steps[3]
    path = session.preprocessed_dir / "splits.json"
    stored = json.loads(path.read_text())
    path.write_text(json.dumps({**stored, "folds": stored["folds"][:1]}))
    said: list[str] = []
    fold_two.run(lambda line, live=False: said.append(line), threading.Event())
    assert said == ["Planning made 1 folds (fewer case groups than before): fold 1 is not trained."]


def test_review_takes_the_second_look_that_prediction_takes(toy_dataset: Path, roots, monkeypatch):
    session = make_session(11)
    model_dir = write_model_folder(roots["results"], shared_foundation(), dataset="Dataset011_Toys")
    plans = json.loads((model_dir / "plans.json").read_text())
    plans["second_look"] = {"object_size": {"1": 0.3, "2": 0.05}, "reason": "test"}
    (model_dir / "plans.json").write_text(json.dumps(plans))
    for fold in (0, 1):  # both folds' validation found the second look better for label 2: auto takes it
        (model_dir / f"fold_{fold}" / "validation").mkdir(parents=True)
        (model_dir / f"fold_{fold}" / "validation" / "summary.json").write_text(json.dumps(
            {"second_look": {"2": {"per_sample": [{"first": 0.4, "second": 0.9}]}}}))
    looked_at: list[np.ndarray] = []
    monkeypatch.setattr(Predictor, "_look_again", lambda self, stack, probabilities: looked_at.append(stack))
    candidate = session.unlabelled()[0]
    plane = session.normalised_plane(candidate)
    ranked = rank_by_disagreement(open_model_folder(model_dir), [(candidate, plane)], foundation=shared_foundation(),
                                  progress=False)
    assert [item["sample_id"] for item in ranked] == [candidate]
    assert len(looked_at) == 1 and np.array_equal(looked_at[0], plane[None])


def test_disagreement_is_zero_for_agreeing_folds_and_grows_with_disjoint_ones():
    agree = np.zeros((10, 10), np.uint8)
    agree[2:5, 2:5] = 1
    apart = np.zeros((10, 10), np.uint8)
    apart[6:9, 6:9] = 1
    probabilities = {1: agree.astype(np.float32)}
    assert disagreement([agree, agree], probabilities, [1]) == 0.0
    assert disagreement([agree, apart], probabilities, [1]) == 1.0
    assert disagreement([agree], {1: np.full((10, 10), 0.5, np.float32)}, [1]) == 1.0


def test_review_proposes_no_box_for_a_speck_of_the_prediction():
    """A nodule with a 2-pixel speck far from it: Accept must not save a 2-pixel nodule, nor a box stretched to it."""
    mask = np.zeros((60, 80), bool)
    mask[10:30, 12:40] = True
    mask[50:51, 70:72] = True
    assert proposed_boxes(mask, per_component=True) == [[12, 10, 39, 29]]
    assert proposed_boxes(mask, per_component=False) == [[12, 10, 39, 29]]
    mask[35:50, 45:60] = True  # a second object of a third of the first's area is kept
    assert proposed_boxes(mask, per_component=True) == [[12, 10, 39, 29], [45, 35, 59, 49]]
    assert proposed_boxes(mask, per_component=False) == [[12, 10, 59, 49]]
    assert proposed_boxes(np.zeros((4, 4), bool), per_component=False) == []


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """(exit code, stdout, stderr as one line) of automedsam_annotate's main() in this process."""
    monkeypatch.setattr(sys, "argv", ["automedsam_annotate", *args])
    try:
        annotate_cli.main()
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, " ".join(captured.err.split())


def test_the_command_serves_on_loopback_prints_the_url_and_warns_for_another_interface(toy_dataset: Path, roots,
                                                                                       monkeypatch, capsys):
    served = []
    monkeypatch.setattr(annotate_cli.uvicorn, "run", lambda app, host, port, **_: served.append((host, port)))
    code, out, err = run_cli(monkeypatch, capsys, "-d", "11", "--port", "8799")
    assert code == 0 and served == [("127.0.0.1", 8799)]
    assert "Open http://127.0.0.1:8799/" in out and f"0 of {SHOTS} samples done" in out and not err
    code, out, err = run_cli(monkeypatch, capsys, "-d", "11", "--host", "0.0.0.0")
    assert code == 0 and served[-1] == ("0.0.0.0", 8765) and "Warning: listening on 0.0.0.0" in err


def test_the_command_prints_the_address_with_the_token_that_opens_the_page(toy_dataset: Path, roots, monkeypatch,
                                                                          capsys):
    """Without a token, any account of the machine used the page; beyond loopback the warning says the token is what
    protects it."""
    served = []
    monkeypatch.setattr(annotate_cli.uvicorn, "run", lambda app, host, port, **_: served.append(app))
    code, out, err = run_cli(monkeypatch, capsys, "-d", "11", "--port", "8799")
    token = served[-1].state.token
    assert code == 0 and len(token) >= 40 and f"Open http://127.0.0.1:8799/?token={token} (Ctrl+C" in out
    browser = TestClient(served[-1], base_url="http://127.0.0.1:8799")
    assert browser.get("/", params={"token": token}).status_code == 200
    assert browser.get("/api/session").status_code == 200
    code, out, err = run_cli(monkeypatch, capsys, "-d", "11", "--host", "0.0.0.0")
    assert code == 0 and served[-1].state.token != token and "The token is what protects the page" in err


@pytest.mark.parametrize("signum", [signal.SIGHUP, signal.SIGTERM])
def test_a_closed_terminal_or_a_kill_ends_the_server_as_ctrl_c_does(toy_dataset: Path, roots, signum):
    """SIGHUP and SIGTERM ended the server without its finally: a training command it had started ran on."""
    with annotate_process() as process:
        process.send_signal(signum)
        out, _ = process.communicate(timeout=60)
    assert f"0 of {SHOTS} samples done" in out, out  # the finally ran: it stops a run before saying this


def test_a_bad_device_or_trainer_is_refused_before_the_page_opens(toy_dataset: Path, roots, monkeypatch, capsys):
    """The server started with --device tpu and every box preview failed on the page."""
    monkeypatch.setattr(annotate_cli.uvicorn, "run", lambda *args, **kwargs: pytest.fail("served"))
    code, _, err = run_cli(monkeypatch, capsys, "-d", "11", "--device", "tpu")
    assert code == 2 and "Unknown device 'tpu'" in err
    code, _, err = run_cli(monkeypatch, capsys, "-d", "11", "--trainer", "bogus")
    assert code == 2 and "bogus" in err


def test_a_server_started_with_nohup_outlives_its_terminal(toy_dataset: Path, roots):
    """The SIGHUP handler replaced the SIG_IGN that nohup set: the server died with its terminal all the same."""
    with annotate_process(ignore_hangup=True) as process:
        process.send_signal(signal.SIGHUP)
        time.sleep(2)
        assert process.poll() is None, "the server ended on SIGHUP under nohup"
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=60)
    assert f"0 of {SHOTS} samples done" in out, out


@contextmanager
def annotate_process(*, ignore_hangup: bool = False) -> Iterator[subprocess.Popen]:
    """`automedsam_annotate -d 11` in a process of its own (SIGHUP ignored as nohup does), yielded once it listens;
    killed at the end."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ignore = (lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN)) if ignore_hangup else None
    process = subprocess.Popen([sys.executable, "-c", "from automedsam.cli.annotate import main; main()", "-d", "11",
                                "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               preexec_fn=ignore)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.2)
        yield process
    finally:
        process.kill()


def test_the_command_explains_what_to_run_first(tmp_path: Path, roots, monkeypatch, capsys):
    folder = tmp_path / "toys"
    folder.mkdir()
    Image.fromarray(toy_image(0)).save(folder / "toy0.png")
    convert_folder(folder, dataset_id=13, name="Unplanned", label_names=["ring"])
    code, _, err = run_cli(monkeypatch, capsys, "-d", "13")
    assert code == 2 and "Run automedsam_plan_and_preprocess -d Dataset013_Unplanned first" in err


def test_one_command_imports_a_folder_draws_the_samples_and_serves(tmp_path: Path, roots, monkeypatch, capsys):
    folder = tmp_path / "thyroid scans"
    folder.mkdir()
    for seed in range(6):
        Image.fromarray(toy_image(seed)).save(folder / f"p{seed % 3}_img{seed}.png")
    served = []
    monkeypatch.setattr(annotate_cli.uvicorn, "run", lambda app, host, port, **_: served.append(port))
    code, out, err = run_cli(monkeypatch, capsys, "-d", "14", "--images", str(folder), "-n", "Nodules", "--label",
                             "nodule", "--group-pattern", r"(p\d)_", "--shots", "3")
    assert code == 0 and served == [8765], err
    assert "Imported" in out and "as Dataset014_Nodules and drew 3 samples to box" in out
    assert "3 samples drawn, 0 done" in out
    meta = json.loads((roots["raw"] / "Dataset014_Nodules" / "dataset.json").read_text())
    assert meta["labels"] == {"background": 0, "nodule": 1} and meta["annotation"] == "interactive"
    drawn = json.loads((roots["preprocessed"] / "Dataset014_Nodules" / "splits.json").read_text())
    assert drawn["shots"] == 3 and len({sid.split("_")[0] for sid in drawn["labelled"]}) == 3  # one per patient
    code, _, err = run_cli(monkeypatch, capsys, "-d", "14", "--images", str(folder), "--label", "nodule")
    assert code == 2 and "Dataset014_Nodules exists already" in err and "without --images" in err
    code, _, err = run_cli(monkeypatch, capsys, "-d", "14", "--shots", "5")
    assert code == 2 and "describe the folder given with --images" in err
    code, _, err = run_cli(monkeypatch, capsys, "-d", "Dataset015_X", "--images", str(folder))
    assert code == 2 and "-d is the new dataset's number" in err
    assert served == [8765] and not (roots["raw"] / "Dataset015_X").exists()


def test_a_taken_port_is_a_clear_error(toy_dataset: Path, roots, monkeypatch, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        code, _, err = run_cli(monkeypatch, capsys, "-d", "11", "--port", str(taken.getsockname()[1]))
    assert code == 2 and "Choose another --port" in err


def test_rejecting_a_boxed_slice_removes_its_boxes_so_the_next_plan_keeps_it_rejected(tmp_path: Path, roots):
    """X on a volume's slice that had saved boxes left them in the box file, and the next plan, which counts a
    boxed slice as annotated, put the sample back into the draw."""
    unannotated_volumes(tmp_path / "vols", dataset_id=12, shots=2)
    client = client_for(make_session(12))
    boxed, kept = [entry["sample"] for entry in client.get("/api/session").json()["samples"]]
    for sid in (boxed, kept):
        assert client.put(f"/api/samples/{sid}/boxes", json={"version": "none", "boxes": [
            {"label": 1, "box": [2, 3, 20, 25]}]}).status_code == 200
    boxed_version = client.get(f"/api/samples/{boxed}").json()["version"]
    assert client.post(f"/api/samples/{boxed}/reject", json={"version": boxed_version}).status_code == 200
    stored = json.loads((roots["raw"] / "Dataset012_Vols" / "boxesTr" / f"{boxed.split('__')[0]}.json").read_text())
    assert int(boxed[-3:]) not in [entry["slice"] for entry in stored]
    plan_and_preprocess(12, shots=2, folds=2, num_workers=1, plan_only=True, progress=False)
    record = json.loads((roots["preprocessed"] / "Dataset012_Vols" / "splits.json").read_text())["interactive"]
    queue = make_session(12).queue()
    assert record["rejected"] == [boxed] and kept in queue and boxed not in queue


def test_a_slice_left_without_boxes_answers_the_version_it_reads_as(tmp_path: Path, roots):
    """Saving [] on a slice answered the digest of an empty list, while the slice then reads as never saved ("none"):
    the tab's next save was a false 409. X and Restore on a slice answer through the same save."""
    unannotated_volumes(tmp_path / "vols", dataset_id=12, shots=2)
    client = client_for(make_session(12))
    emptied, rejected = [entry["sample"] for entry in client.get("/api/session").json()["samples"]]
    path = f"/api/samples/{emptied}/boxes"
    boxed = client.put(path, json={"version": "none", "boxes": [{"label": 1, "box": [2, 3, 20, 25]}]}).json()
    cleared = client.put(path, json={"version": boxed["version"], "boxes": []}).json()["version"]
    assert cleared == client.get(f"/api/samples/{emptied}").json()["version"]
    again = client.put(path, json={"version": cleared, "boxes": [{"label": 1, "box": [4, 3, 20, 25]}]})
    assert again.status_code == 200, again.text
    version = client.put(f"/api/samples/{rejected}/boxes", json={"version": "none", "boxes": [
        {"label": 1, "box": [2, 3, 20, 25]}]}).json()["version"]
    for action in ("reject", "restore"):
        answered = client.post(f"/api/samples/{rejected}/{action}", json={"version": version})
        assert answered.status_code == 200, answered.text
        version = answered.json()["version"]
        assert version == client.get(f"/api/samples/{rejected}").json()["version"], action
    stale = client.post(f"/api/samples/{rejected}/reject", json={"version": "a version from before"}).json()
    assert stale["version"] == client.get(f"/api/samples/{rejected}").json()["version"]


def test_a_slice_marked_no_structure_is_a_conflict_for_a_tab_that_loaded_it_before(tmp_path: Path, roots):
    """A volume's slice marked No structure keeps no trace in its box file, so its version did not change: a tab
    that had loaded it before saved boxes over the decision with no 409, and the page could not ask."""
    unannotated_volumes(tmp_path / "vols", dataset_id=12, shots=2)
    client = client_for(make_session(12))
    rejected = lambda: json.loads((roots["preprocessed"] / "Dataset012_Vols" / "splits.json").read_text())[
        "interactive"]["rejected"]
    sample = client.get("/api/session").json()["samples"][0]["sample"]
    loaded = client.get(f"/api/samples/{sample}").json()["version"]  # the other tab, before X
    marked = client.post(f"/api/samples/{sample}/reject", json={"version": loaded}).json()["version"]
    assert marked == client.get(f"/api/samples/{sample}").json()["version"] != loaded
    path, boxes = f"/api/samples/{sample}/boxes", [{"label": 1, "box": [2, 3, 20, 25]}]
    stale = client.put(path, json={"version": loaded, "boxes": boxes})
    assert stale.status_code == 409 and stale.json()["rejected"] and stale.json()["version"] == marked
    assert rejected() == [sample]
    asked = client.put(path, json={"version": stale.json()["version"], "boxes": boxes})  # S again: saved over it
    assert asked.status_code == 200, asked.text
    assert sample not in rejected()
    assert client.get(f"/api/samples/{sample}").json()["boxes"] == boxes


def test_a_slice_marked_no_structure_saved_without_boxes_answers_the_version_it_reads_as(tmp_path: Path, roots):
    """S with no boxes on a slice marked No structure answered the box file's "none", while the slice, still marked,
    reads as NO_STRUCTURE_SLICE: the same tab's Restore (or save) with it was a 409 said to come from another tab."""
    unannotated_volumes(tmp_path / "vols", dataset_id=12, shots=2)
    client = client_for(make_session(12))
    sample = client.get("/api/session").json()["samples"][0]["sample"]
    loaded = client.get(f"/api/samples/{sample}").json()["version"]
    marked = client.post(f"/api/samples/{sample}/reject", json={"version": loaded}).json()["version"]
    saved = client.put(f"/api/samples/{sample}/boxes", json={"version": marked, "boxes": []})
    assert saved.status_code == 200, saved.text
    assert saved.json()["version"] == client.get(f"/api/samples/{sample}").json()["version"]
    restored = client.post(f"/api/samples/{sample}/restore", json={"version": saved.json()["version"]})
    assert restored.status_code == 200, restored.text


def test_an_empty_save_of_a_slice_another_tab_marked_no_structure_is_taken_as_marked(tmp_path: Path, roots):
    """A tab whose slice held no boxes saved it after another tab's No structure: the answer was the 409 of boxes
    changed meanwhile, and the page said "these boxes were not saved" of none. It is the 2D answer now: marked, with
    the version and the queue the server holds, and the decision stays."""
    unannotated_volumes(tmp_path / "vols", dataset_id=12, shots=2)
    client = client_for(make_session(12))
    sample = client.get("/api/session").json()["samples"][0]["sample"]
    loaded = client.get(f"/api/samples/{sample}").json()["version"]  # the other tab, before X
    marked = client.post(f"/api/samples/{sample}/reject", json={"version": loaded}).json()["version"]
    refused = client.put(f"/api/samples/{sample}/boxes", json={"version": loaded, "boxes": []})
    answer = refused.json()
    assert refused.status_code == 422 and answer["marked_no_structure"] == sample, refused.text
    assert "marked No structure already" in answer["detail"] and answer["version"] == marked
    assert {entry["sample"]: entry["status"] for entry in answer["samples"]}[sample] == "rejected"
    assert sample in json.loads((roots["preprocessed"] / "Dataset012_Vols" / "splits.json").read_text())[
        "interactive"]["rejected"]
    restored = client.post(f"/api/samples/{sample}/restore", json={"version": answer["version"]})
    assert restored.status_code == 200, restored.text


def box_every_drawn_sample(client: TestClient) -> None:
    for entry in client.get("/api/session").json()["samples"]:
        response = client.put(f"/api/samples/{entry['sample']}/boxes",
                              json={"version": "none", "boxes": [{"label": 1, "box": list(OUTER)},
                                                                 {"label": 2, "box": list(INNER)}]})
        assert response.status_code == 200


def wait_for_training(client: TestClient, timeout_s: float) -> dict:
    deadline = time.monotonic() + timeout_s
    while (status := client.get("/api/training").json())["state"] == "running" and time.monotonic() < deadline:
        time.sleep(0.2)
    return status


def test_train_waits_for_every_drawn_sample_and_locks_the_boxes_while_it_runs(toy_dataset: Path, roots,
                                                                               monkeypatch):
    release, asked = threading.Event(), []

    def steps(session, settings):
        asked.append(settings)
        return [CallStep("Training fold 1 of 2", lambda output, stop: release.wait(30))]
    monkeypatch.setattr(annotation_server, "training_steps", steps)
    client = client_for(make_session(11))
    status = client.get("/api/training").json()
    assert status["state"] == "idle" and not status["model"]
    assert status["blocker"].startswith(f"{SHOTS} of the {SHOTS} drawn samples still need boxes")
    refused = client.post("/api/training", headers=FROM_THE_PAGE)
    assert refused.status_code == 422 and "still need boxes" in refused.json()["detail"] and not asked
    box_every_drawn_sample(client)
    assert client.get("/api/training").json()["blocker"] is None
    stranger = from_another_site(client).post("/api/training")  # a bodiless POST any web page can send
    assert stranger.status_code == 403 and not asked
    assert from_another_site(client).delete("/api/training").status_code == 403
    started = client.post("/api/training", headers=FROM_THE_PAGE).json()
    assert started["state"] == "running" and started["title"] == "Training fold 1 of 2" and len(asked) == 1
    sample = client.get("/api/session").json()["samples"][0]["sample"]
    version = client.get(f"/api/samples/{sample}").json()["version"]
    locked = client.put(f"/api/samples/{sample}/boxes", json={"version": version, "boxes": []})
    assert locked.status_code == 423 and "Training is running" in locked.json()["detail"]
    assert client.post(f"/api/samples/{sample}/reject", json={"version": version}).status_code == 423
    assert client.post("/api/training", headers=FROM_THE_PAGE).status_code == 422  # one run at a time
    release.set()
    assert wait_for_training(client, 30)["state"] == "finished"
    assert client.put(f"/api/samples/{sample}/boxes", json={"version": version, "boxes": [
        {"label": 1, "box": list(OUTER)}]}).status_code == 200


def test_a_drawn_sample_still_to_box_blocks_review_and_train_in_review_too(toy_dataset: Path, roots):
    """X on a drawn sample brings in the next, to box; Review then opened (the review hides that sample) and, in
    review, Train was allowed: every Train stopped at planning ("Planning drew 1 more sample(s) to box")."""
    write_model_folder(roots["results"], shared_foundation(), dataset="Dataset011_Toys")
    session = make_session(11)
    client = client_for(session)
    box_every_drawn_sample(client)
    first = client.get("/api/session").json()["samples"][0]["sample"]
    version = client.get(f"/api/samples/{first}").json()["version"]
    assert client.post(f"/api/samples/{first}/reject", json={"version": version}).status_code == 200
    blocker = client.get("/api/training").json()["blocker"]
    assert blocker.startswith(f"1 of the {SHOTS} drawn samples still need boxes")
    refused = client.post("/api/review")
    assert refused.status_code == 422 and refused.json()["detail"] == blocker
    assert client.get("/api/training").json()["state"] == "idle"
    todo = next(entry["sample"] for entry in client.get("/api/session").json()["samples"] if entry["status"] == "todo")
    candidate = session.unlabelled()[0]
    session.start_review([ReviewItem(candidate, 0.5, [], np.zeros((60, 80), np.uint8))])  # as --review starts
    in_review = client.get("/api/training").json()["blocker"]
    assert in_review.startswith(f"1 of the {SHOTS} drawn samples still need boxes")
    # whether --review or the page's Train opened the review ("start ... without --review" misled after a Train)
    assert in_review.endswith("leave it to box them (restart automedsam_annotate -d Dataset011_Toys without --review).")
    assert client.post("/api/training").status_code == 422
    assert client.put(f"/api/samples/{todo}/boxes", json={"version": "none", "boxes": [
        {"label": 1, "box": list(OUTER)}]}).status_code == 200  # a tab still showing the draw boxes it
    assert client.get("/api/training").json()["blocker"] is None


def test_review_from_the_terminal_waits_for_every_drawn_sample_as_the_pages_review_does(toy_dataset: Path, roots,
                                                                                       monkeypatch, capsys):
    """--review ranked every unlabelled sample (an encoder pass each), then hid the drawn samples still to box."""
    write_model_folder(roots["results"], shared_foundation(), dataset="Dataset011_Toys")
    monkeypatch.setattr(annotate_cli, "review_items", lambda *args, **kwargs: pytest.fail("ranked"))
    monkeypatch.setattr(annotate_cli.uvicorn, "run", lambda *args, **kwargs: pytest.fail("served"))
    code, out, err = run_cli(monkeypatch, capsys, "-d", "11", "--review")
    assert code == 2 and not out and "Traceback" not in err
    assert f"{SHOTS} of the {SHOTS} drawn samples still need boxes" in err, err
    assert "Box them first: automedsam_annotate -d Dataset011_Toys without --review, then --review." in err


def test_the_steps_are_the_annotation_guides_commands_with_the_pages_settings(toy_dataset: Path, roots):
    session = make_session(11)
    steps = training_steps(session, TrainingSettings(trainer="paper2024", device="cpu", epochs=3))
    assert [step.title for step in steps] == ["Preprocessing the boxes", "Keeping the previous model",
                                              "Training fold 1 of 2", "Training fold 2 of 2",
                                              "Ranking the unlabelled samples for review"]
    assert steps[0].shell_line() == "automedsam_plan_and_preprocess -d Dataset011_Toys --device cpu"
    assert steps[3].shell_line() == ("automedsam_train Dataset011_Toys 1 --trainer paper2024 --overwrite --epochs 3 "
                                     "--device cpu")
    assert training_steps(session, TrainingSettings())[2].shell_line() == (
        "automedsam_train Dataset011_Toys 0 --trainer default --overwrite")


def test_the_commands_epochs_reach_the_pages_train(toy_dataset: Path, roots, monkeypatch, capsys):
    """The page's Train always ran the planned 100 epochs: a first look at the model took the whole schedule."""
    settings = []
    monkeypatch.setattr(annotate_cli, "create_app", lambda session, **kwargs: (
        settings.append(kwargs["training"]), create_app(session, **kwargs))[1])
    monkeypatch.setattr(annotate_cli.uvicorn, "run", lambda *args, **kwargs: None)
    code, _, err = run_cli(monkeypatch, capsys, "-d", "11", "--epochs", "30", "--device", "cpu")
    assert code == 0 and not err and settings == [TrainingSettings(device="cpu", epochs=30)]
    assert training_steps(make_session(11), settings[0])[2].shell_line() == (
        "automedsam_train Dataset011_Toys 0 --trainer default --overwrite --epochs 30 --device cpu")
    code, _, err = run_cli(monkeypatch, capsys, "-d", "11", "--epochs", "0")
    assert code == 2 and "Traceback" not in err and "--epochs" in err and len(settings) == 1


def test_download_gives_the_trained_model_as_an_installable_zip(toy_dataset: Path, roots):
    client = client_for(make_session(11))
    missing = client.get("/api/model")
    assert missing.status_code == 422 and "no trained model" in missing.json()["detail"]
    nothing_to_review = client.post("/api/review", headers=FROM_THE_PAGE)
    assert nothing_to_review.status_code == 422 and "no trained model to review" in nothing_to_review.json()["detail"]
    model_dir = write_model_folder(roots["results"], shared_foundation(), dataset="Dataset011_Toys")
    for fold in (0, 1):  # what a finished fold holds beside its checkpoints
        (model_dir / f"fold_{fold}" / "log.json").write_text(json.dumps({"epochs": [], "summary": {}}))
    assert client.get("/api/training").json()["model"]
    response = client.get("/api/model")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/zip"
    assert 'filename="Dataset011_Toys_default__toyPlans.zip"' in response.headers["content-disposition"]
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        names = set(archive.namelist())
    assert {"plans.json", "model_card.json", "fold_0/checkpoint_final.pt", "fold_1/checkpoint_final.pt"} <= names


def test_download_carries_the_name_given_as_export_models_name_does(toy_dataset: Path, roots):
    """The dataset's name may identify a patient (a folder imported with --images): the page's download takes the
    name the zip carries, validated as automedsam_export_model --name validates it."""
    client = client_for(make_session(11))
    model_dir = write_model_folder(roots["results"], shared_foundation(), dataset="Dataset011_Toys")
    for fold in (0, 1):
        (model_dir / f"fold_{fold}" / "log.json").write_text(json.dumps({"epochs": [], "summary": {}}))
    for name, carried in (("Shared", "Dataset011_Shared"), ("Dataset042_Other", "Dataset042_Other")):
        response = client.get("/api/model", params={"name": name})
        assert response.status_code == 200, response.text
        assert f'filename="{carried}_default__toyPlans.zip"' in response.headers["content-disposition"]
        with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
            assert json.loads(archive.read("model_card.json"))["dataset"] == carried
            assert all("Toys" not in archive.read(member).decode() for member in archive.namelist()
                       if member.endswith(".json"))
    for bad, reason in (("a b", "is invalid"), ("x" * 100, "more than the 100")):
        refused = client.get("/api/model", params={"name": bad})
        assert refused.status_code == 422 and reason in refused.json()["detail"]
        assert "Traceback" not in refused.text


def test_a_download_name_refused_is_worded_for_the_pages_question_not_the_clis_flag(toy_dataset: Path, roots):
    """The page asks for the name in a field: its refusals said "Give a shorter one with --name NEW", a flag the page
    has not; automedsam_export_model keeps the flag's wording."""
    client = client_for(make_session(11))
    model_dir = write_model_folder(roots["results"], shared_foundation(), dataset="Dataset011_Toys")
    for fold in (0, 1):
        (model_dir / f"fold_{fold}" / "log.json").write_text(json.dumps({"epochs": [], "summary": {}}))
    too_long = client.get("/api/model", params={"name": "Dataset011_" + "A" * 100})
    assert too_long.status_code == 422 and too_long.json()["detail"].endswith("Give a shorter one.")
    log = model_dir / "fold_0" / "log.json"  # the model's own name where renaming does not reach
    log.write_text(json.dumps({"epochs": [], "summary": {}, "note": "Dataset011_Toys"}))
    left_behind = client.get("/api/model", params={"name": "Shared"})
    assert left_behind.status_code == 422 and "under the name Dataset011_Shared" in left_behind.json()["detail"]
    for refused in (too_long, left_behind):
        assert "--" not in refused.json()["detail"], refused.json()["detail"]
    with pytest.raises(AutomedsamError, match="Give a shorter one with --name NEW."):
        shared_dataset_name("Dataset011_Toys", "Dataset011_" + "A" * 100)


def test_a_run_starts_only_once_the_download_being_packed_is_done(toy_dataset: Path, roots, monkeypatch):
    """Train moves or rewrites what a download reads (the model, the segmentations): it waits for the packing."""
    packing, release, started = threading.Event(), threading.Event(), []

    def slow_export(model_dir, archive, *, folds, name, wording):
        packing.set()
        release.wait(30)
        archive.write_bytes(b"a model")
    monkeypatch.setattr(annotation_server, "export_model", slow_export)
    monkeypatch.setattr(annotation_server, "training_steps", lambda session, settings: [
        CallStep("Training fold 1 of 2", lambda output, stop: started.append(True))])
    client = client_for(make_session(11))
    write_model_folder(roots["results"], shared_foundation(), dataset="Dataset011_Toys")
    box_every_drawn_sample(client)
    with ThreadPoolExecutor(2) as pool:
        download = pool.submit(client.get, "/api/model")
        assert packing.wait(30)
        train = pool.submit(client.post, "/api/training")
        time.sleep(1.0)
        assert not train.done() and not started  # waiting for the packing
        release.set()
        assert download.result(30).status_code == 200 and download.result().content == b"a model"
        assert train.result(30).status_code == 200
    assert wait_for_training(client, 30)["state"] == "finished" and started


def test_segment_images_runs_the_guides_command_and_downloads_every_label_map(toy_dataset: Path, roots):
    """The real automedsam_predict --dataset-images in the background (about 20 s here): a sample boxed on the
    page comes back outlined from its boxes, every other image as the model segments it."""
    session = make_session(11)
    client = client_for(session, training=TrainingSettings(device="cpu"))
    untrained = client.post("/api/segmentations", headers=FROM_THE_PAGE)
    assert untrained.status_code == 422 and "no trained model to segment" in untrained.json()["detail"]
    write_model_folder(roots["results"], shared_foundation(), dataset="Dataset011_Toys")
    boxed = client.get("/api/session").json()["samples"][0]["sample"]
    assert client.put(f"/api/samples/{boxed}/boxes", json={"version": "none", "boxes": [
        {"label": 2, "box": list(INNER)}]}).status_code == 200
    assert client.get("/api/segmentations").status_code == 422
    assert from_another_site(client).post("/api/segmentations").status_code == 403
    results = roots["results"] / "Dataset011_Toys"
    step = segmentation_steps(session, TrainingSettings(device="cpu"))[1]
    assert step.shell_line() == (f"automedsam_predict -d Dataset011_Toys --dataset-images -o "
                                 f"{results / '.segmentations_in_progress'} --trainer default --device cpu")
    (results / "segmentations").mkdir()
    Image.fromarray(np.zeros((60, 80), np.uint8)).save(results / "segmentations" / "from_an_older_run.png")
    started = client.post("/api/segmentations", headers=FROM_THE_PAGE).json()
    assert started["state"] == "running" and started["run"] == "segmentation"
    locked = client.put(f"/api/samples/{boxed}/boxes", json={"version": "x", "boxes": []})
    assert locked.status_code == 423 and "Segmentation is running" in locked.json()["detail"]
    assert client.get("/api/training").json()["segmentations"] == 0  # nothing to download while it runs
    status = wait_for_training(client, 300)
    assert status["state"] == "finished", status
    assert status["segmentations"] == 8 and not status["segmentations_out_of_date"]
    assert sorted(path.name for path in results.iterdir()) == ["default__toyPlans", "segmentations"]
    assert any("Wrote 8 segmentation(s)" in line and "1 outlined from the annotator's boxes" in line
               for line in status["lines"])
    response = client.get("/api/segmentations")
    assert response.status_code == 200 and response.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        assert sorted(archive.namelist()) == [AGREEMENT_FILE] + [f"toy{seed}.png" for seed in range(8)]
        maps = {name: np.array(Image.open(io.BytesIO(archive.read(name)))) for name in archive.namelist()
                if name != AGREEMENT_FILE}
        agreement = json.loads(archive.read(AGREEMENT_FILE))
    assert sorted(agreement) == sorted(f"toy{seed}" for seed in range(8) if f"toy{seed}" != boxed)  # the model's
    assert set(np.unique(maps[f"{boxed}.png"])) == {0, 2}
    assert all(set(np.unique(label_map)) == {0, 1, 2} for name, label_map in maps.items() if name != f"{boxed}.png")
    version = client.get(f"/api/samples/{boxed}").json()["version"]
    time.sleep(0.01)  # the box file must be newer than the segmentations, whatever the clock's resolution
    assert client.put(f"/api/samples/{boxed}/boxes", json={"version": version, "boxes": [
        {"label": 1, "box": list(OUTER)}]}).status_code == 200
    assert client.get("/api/training").json()["segmentations_out_of_date"]
    assert client.post("/api/segmentations", headers=FROM_THE_PAGE).json()["state"] == "running"
    status = wait_for_training(client, 300)  # only the image whose box changed is segmented again
    assert status["state"] == "finished" and status["segmentations"] == 8, status
    summary = [line for line in status["lines"] if line.startswith("Wrote ")][-1]
    assert "Wrote 1 segmentation(s)" in summary and "skipped 7 up to date" in summary
    assert "--" not in summary, "the command's --overwrite, which the page has no control for"
    assert not status["segmentations_out_of_date"]
    with zipfile.ZipFile(io.BytesIO(client.get("/api/segmentations").content)) as archive:
        assert set(np.unique(np.array(Image.open(io.BytesIO(archive.read(f"{boxed}.png")))))) == {0, 1}


def test_a_stopped_segmentation_run_leaves_the_last_complete_segmentations(toy_dataset: Path, roots):
    """Stop or a failure ends the run before the publishing step: the folder the page zips keeps the last complete
    run's label maps, never a mix of two runs."""
    session = make_session(11)
    results = roots["results"] / "Dataset011_Toys"
    _, command, publish = segmentation_steps(session, TrainingSettings())
    for folder, name in (("segmentations", "old.png"), (".segmentations_in_progress", "new.png")):
        (results / folder).mkdir(parents=True)
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(results / folder / name)
    stop = threading.Event()
    stop.set()
    with pytest.raises(StepStopped):
        command.run(lambda line, live=False: None, stop)
    assert [path.name for path in (results / "segmentations").iterdir()] == ["old.png"]
    said: list[str] = []
    publish.run(lambda line, live=False: said.append(line), threading.Event())
    assert sorted(path.name for path in results.iterdir()) == ["segmentations"]
    assert [path.name for path in (results / "segmentations").iterdir()] == ["new.png"]
    assert said == [f"The segmentations are in {results / 'segmentations'}."]


def test_segment_images_goes_on_from_a_stopped_runs_folder_else_from_the_published_one(toy_dataset: Path, roots):
    """A stopped run's folder holds the command's record: its label maps are kept for the next run; without one the
    run starts from links to the published label maps. Files of images no longer in the dataset are left behind."""
    session = make_session(11)
    results = roots["results"] / "Dataset011_Toys"
    start, _, _ = segmentation_steps(session, TrainingSettings())
    published, running = results / "segmentations", results / ".segmentations_in_progress"
    published.mkdir(parents=True)
    for name in ("toy0.png", "toy1.png", "removed.png", RECORD_FILE, AGREEMENT_FILE):
        (published / name).write_text(f"published {name}")
    start.run(lambda line, live=False: None, threading.Event())
    assert sorted(path.name for path in running.iterdir()) == sorted([RECORD_FILE, AGREEMENT_FILE, "toy0.png",
                                                                      "toy1.png"])
    assert (running / "toy0.png").stat().st_ino == (published / "toy0.png").stat().st_ino  # a link, not a copy
    (running / "toy2.png").write_text("written before the stop")
    (running / "removed.png").write_text("an image removed since")
    start.run(lambda line, live=False: None, threading.Event())
    assert sorted(path.name for path in running.iterdir()) == sorted([RECORD_FILE, AGREEMENT_FILE, "toy0.png",
                                                                      "toy1.png", "toy2.png"])
    (running / RECORD_FILE).unlink()  # stopped before the command recorded anything: start from the published
    start.run(lambda line, live=False: None, threading.Event())
    assert sorted(path.name for path in running.iterdir()) == sorted([RECORD_FILE, AGREEMENT_FILE, "toy0.png",
                                                                      "toy1.png"])


@pytest.mark.slow  # about 90 s on a 2-core CPU: three commands start, LiteMedSAM encodes the samples
def test_train_from_the_page_preprocesses_trains_every_fold_and_shows_the_new_models_review(toy_dataset: Path,
                                                                                           roots):
    """The whole loop with the real commands (2 epochs): boxes drawn, Train, the folds trained, the review shown."""
    session = make_session(11)
    client = client_for(session, training=TrainingSettings(device="cpu", epochs=2))
    box_every_drawn_sample(client)
    assert client.post("/api/training", headers=FROM_THE_PAGE).status_code == 200
    status = wait_for_training(client, 600)
    assert status["state"] == "finished", status
    assert status["model"] and status["step"] == status["steps"] == 5
    model_dir = roots["results"] / "Dataset011_Toys" / "default__automedsamPlans"
    assert all((model_dir / f"fold_{fold}" / "checkpoint_final.pt").is_file() for fold in (0, 1))
    overview = client.get("/api/session").json()
    assert overview["mode"] == "review" and overview["total"] == 8 - SHOTS
    first = overview["samples"][0]["sample"]
    assert client.get(f"/api/samples/{first}/prediction").status_code == 200
    log = (roots["preprocessed"] / "Dataset011_Toys" / "page_training.log").read_text()
    assert "Note: kept the draw being annotated" in log and "=== finished" in log
    assert "No model trained before." in log
    assert f"Segmenting {8 - SHOTS} unlabelled samples with every fold" in log
    assert "Finished fold 1" in log and "\x1b" not in log and "\r" not in log  # bars were shown live, not kept


def test_stop_during_the_review_ranking_keeps_the_queue_shown(toy_dataset: Path, roots):
    """The ranking runs in the server: Stop was ignored there, and the ranking replaced the queue all the same."""
    session = make_session(11)
    write_model_folder(roots["results"], shared_foundation(), dataset="Dataset011_Toys")
    stop = threading.Event()
    stop.set()
    with pytest.raises(StepStopped):
        review_steps(session, TrainingSettings(device="cpu"))[0].run(lambda line, live=False: None, stop)
    assert session.overview()["mode"] == "annotate"


def test_a_sample_added_in_review_then_marked_no_structure_leaves_the_labelled_set(toy_dataset: Path, roots):
    """Accepted in review, then rejected on the next page: it stayed in `added`, still labelled, so every plan asked
    for its boxes again and every Train stopped there."""
    session = make_session(11)
    candidate = session.unlabelled()[0]
    session.start_review([ReviewItem(candidate, 0.5, [], np.zeros((60, 80), np.uint8))])
    saved = client_for(session).put(f"/api/samples/{candidate}/boxes", json={"version": "none", "boxes": [
        {"label": 1, "box": list(OUTER)}]}).json()
    assert splits(roots["raw"])["interactive"]["added"] == [candidate]
    page = client_for(make_session(11))  # the next session annotates; the added sample is in its queue
    assert page.post(f"/api/samples/{candidate}/reject", json={"version": saved["version"]}).status_code == 200
    record = splits(roots["raw"])["interactive"]
    assert record["added"] == [] and record["rejected"] == [candidate]
    plan_and_preprocess(11, shots=SHOTS, folds=2, num_workers=1, plan_only=True, progress=False)
    planned = splits(roots["raw"])
    assert candidate not in planned["labelled"] and candidate not in planned["interactive"]["to_annotate"]


def test_in_review_a_2d_sample_whose_boxes_are_all_deleted_leaves_the_labelled_set(toy_dataset: Path, roots):
    """Accepted in review, its boxes deleted: the empty save was refused (422), and the page, which saves before
    every move, stayed on the sample for good."""
    session = make_session(11)
    candidate = session.unlabelled()[0]
    session.start_review([ReviewItem(candidate, 0.5, [], np.zeros((60, 80), np.uint8))])
    client = client_for(session)
    saved = client.put(f"/api/samples/{candidate}/boxes", json={"version": "none", "boxes": [
        {"label": 1, "box": list(OUTER)}]}).json()
    assert splits(roots["raw"])["interactive"]["added"] == [candidate]
    emptied = client.put(f"/api/samples/{candidate}/boxes", json={"version": saved["version"], "boxes": []})
    assert emptied.status_code == 200 and emptied.json()["done"] == 0
    assert splits(roots["raw"])["interactive"]["added"] == []
    assert not (toy_dataset / "boxesTr" / f"{candidate}.json").exists()  # an empty 2D list reads as No structure
    assert candidate in session.unlabelled()
    plan_and_preprocess(11, shots=SHOTS, folds=2, num_workers=1, plan_only=True, progress=False)
    assert candidate not in splits(roots["raw"])["interactive"]["rejected"] + splits(roots["raw"])["labelled"]


def test_a_box_whose_corner_is_an_integer_of_hundreds_of_digits_is_refused_not_a_server_error(toy_dataset: Path):
    client = client_for(make_session(11))
    sample = client.get("/api/session").json()["samples"][0]["sample"]
    body = '{"version": "none", "boxes": [{"label": 1, "box": [0, 0, 5, ' + "9" * 400 + "]}]}"
    refused = client.put(f"/api/samples/{sample}/boxes", content=body, headers={"Content-Type": "application/json"})
    assert refused.status_code == 422 and "whole pixel indices" in refused.text


def test_what_the_page_records_while_a_terminal_plans_is_kept(toy_dataset: Path, roots, monkeypatch):
    """The planner read splits.json, measured for a while, then wrote it whole: a review Accept made meanwhile was
    lost (its box file written, the sample neither labelled nor offered for review again)."""
    from automedsam.planning import plan_and_preprocess as planning

    session = make_session(11)
    candidate = session.unlabelled()[0]
    session.start_review([ReviewItem(candidate, 0.5, [], np.zeros((60, 80), np.uint8))])
    measure = planning._label_statistics

    def accepted_meanwhile(*args, **kwargs):
        assert client_for(session).put(f"/api/samples/{candidate}/boxes", json={"version": "none", "boxes": [
            {"label": 1, "box": list(OUTER)}]}).status_code == 200
        return measure(*args, **kwargs)

    monkeypatch.setattr(planning, "_label_statistics", accepted_meanwhile)
    summary = plan_and_preprocess(11, shots=SHOTS, folds=2, num_workers=1, plan_only=True, progress=False)
    assert splits(roots["raw"])["interactive"]["added"] == [candidate]
    assert any(candidate in note and "next automedsam_plan_and_preprocess" in note for note in summary.notes)
    monkeypatch.setattr(planning, "_label_statistics", measure)
    plan_and_preprocess(11, shots=SHOTS, folds=2, num_workers=1, plan_only=True, progress=False)
    assert candidate in splits(roots["raw"])["labelled"]


def test_a_dataset_folder_given_by_a_path_outside_the_raw_root_is_refused(toy_dataset: Path, roots, tmp_path: Path,
                                                                          monkeypatch, capsys):
    """Boxes were saved into the folder given, while Train planned the raw root's dataset of that name (or failed:
    none there)."""
    served = []
    monkeypatch.setattr(annotate_cli.uvicorn, "run", lambda app, host, port, **_: served.append(port))
    copy = tmp_path / "elsewhere" / toy_dataset.name
    shutil.copytree(toy_dataset, copy)
    code, _, err = run_cli(monkeypatch, capsys, "-d", str(copy))
    assert code == 2 and f"is not {toy_dataset}" in err and "Annotate that one with -d Dataset011_Toys" in err
    shutil.rmtree(toy_dataset)
    code, _, err = run_cli(monkeypatch, capsys, "-d", str(copy))
    assert code == 2 and f"is outside the raw root {roots['raw']}" in err
    assert f"AUTOMEDSAM_RAW={copy.parent}" in err and served == []
    shutil.move(str(copy), str(toy_dataset))
    code, _, err = run_cli(monkeypatch, capsys, "-d", str(toy_dataset))
    assert code == 0 and served == [8765], err
    misnamed = roots["raw"] / "toys"  # in the raw root, but no DatasetXXX_Name: refused by its name, not later
    shutil.move(str(toy_dataset), str(misnamed))
    code, _, err = run_cli(monkeypatch, capsys, "-d", str(misnamed))
    assert code == 2 and "is not named DatasetXXX_Name" in " ".join(err.split()) and served == [8765], err


def test_a_drawn_image_taken_out_of_the_folder_asks_to_plan_again_which_keeps_the_record(toy_dataset: Path, roots,
                                                                                          tmp_path: Path, monkeypatch,
                                                                                          capsys):
    """The folder imported again without a drawn image: the page's start was a KeyError traceback."""
    session = make_session(11)
    rejected, removed = session.queue()[:2]
    session.reject(rejected, version="none")
    (tmp_path / "toys" / f"{removed}.png").unlink()
    convert_folder(tmp_path / "toys", dataset_id=11, name="Toys", label_names=["ring", "core"], overwrite=True)
    with pytest.raises(AutomedsamError, match=f"did not find in .*imagesTr \\({removed}\\).*Run "
                                              "automedsam_plan_and_preprocess -d Dataset011_Toys"):
        make_session(11)
    monkeypatch.setattr(annotate_cli.uvicorn, "run", lambda *args, **kwargs: pytest.fail("served"))
    code, _, err = run_cli(monkeypatch, capsys, "-d", "11")
    assert code == 2 and "Run automedsam_plan_and_preprocess -d Dataset011_Toys" in err
    plan_and_preprocess(11, shots=SHOTS, folds=2, num_workers=1, plan_only=True, progress=False)
    session = make_session(11)
    assert removed not in session.queue() and session.status(rejected) == "rejected"


def test_images_imported_while_the_page_runs_join_the_review_candidates_after_trains_planning(toy_dataset: Path,
                                                                                                  roots,
                                                                                                  tmp_path: Path):
    """Train's planning put the new images in the order: every later read of splits.json refused them (422s)."""
    session = make_session(11)
    drawn = session.queue()
    for seed in (8, 9):
        Image.fromarray(toy_image(seed)).save(tmp_path / "toys" / f"toy{seed}.png")
    convert_folder(tmp_path / "toys", dataset_id=11, name="Toys", label_names=["ring", "core"], overwrite=True)
    plan_and_preprocess(11, shots=SHOTS, folds=2, num_workers=1, plan_only=True, progress=False)
    session.reload()
    session.reject(drawn[0], version="none")
    assert session.status(drawn[0]) == "rejected" and drawn[0] in splits(roots["raw"])["interactive"]["rejected"]
    assert {"toy8", "toy9"} <= set(session.unlabelled())


def test_a_no_structure_the_record_refuses_leaves_the_box_file_alone(toy_dataset: Path, roots):
    """The 2D image's box file was written [] (No structure) before the record's refusal."""
    session = make_session(11)
    drawn = session.queue()
    path = session.preprocessed_dir / "splits.json"
    stored = json.loads(path.read_text())
    stored["interactive"]["added"].append("toy_gone")
    path.write_text(json.dumps(stored))
    with pytest.raises(AutomedsamError, match="did not find in .*imagesTr \\(toy_gone\\)"):
        session.reject(drawn[0], version="none")
    assert not (toy_dataset / "boxesTr" / f"{drawn[0]}.json").exists()


def test_a_drawn_slice_beyond_a_volume_imported_again_with_fewer_slices_asks_to_plan_again(tmp_path: Path, roots):
    """The slice was read past the volume's end: an IndexError, a 500."""
    folder = tmp_path / "vols"
    geometry = Geometry(spacing=(1.0, 1.0, 3.0), origin=(0.0, 0.0, 0.0), direction=tuple(np.eye(3).ravel()),
                        kind="sitk")
    volumes = [np.random.default_rng(index).normal(size=(12, 30, 40)).astype(np.float32) for index in range(2)]
    for index, volume in enumerate(volumes):
        write_image(folder / f"vol{index}.nii.gz", volume, geometry)
    convert_folder(folder, dataset_id=12, name="Vols", label_names=["organ"])
    plan_and_preprocess(12, shots=6, folds=2, num_workers=1, plan_only=True, progress=False)
    for index, volume in enumerate(volumes):
        write_image(folder / f"vol{index}.nii.gz", volume[:4], geometry)
    convert_folder(folder, dataset_id=12, name="Vols", label_names=["organ"], overwrite=True)
    session = make_session(12)
    beyond = [sid for sid in session.queue() if int(sid[-3:]) >= 4]
    assert beyond
    response = client_for(session).get(f"/api/samples/{beyond[0]}")
    assert response.status_code == 422
    assert re.search(f"{beyond[0]} is slice {int(beyond[0][-3:])} of {beyond[0][:4]}, whose image now has 4 slices.*"
                     "Run automedsam_plan_and_preprocess -d Dataset012_Vols", response.json()["detail"])


def test_a_record_lacking_a_list_asks_to_plan_which_writes_it_back_and_keeps_the_rejections(toy_dataset: Path,
                                                                                            roots):
    """The message said to delete splits.json, which forgets the samples rejected, while planning repairs it."""
    session = make_session(11)
    rejected = session.queue()[0]
    session.reject(rejected, version="none")
    path = session.preprocessed_dir / "splits.json"
    stored = json.loads(path.read_text())
    del stored["interactive"]["order"], stored["interactive"]["added"]
    path.write_text(json.dumps(stored))
    with pytest.raises(AutomedsamError, match="lacks the list.s. order, added. Run automedsam_plan_and_preprocess -d "
                                              "Dataset011_Toys first: it writes the record again") as refused:
        make_session(11)
    assert "delete" not in str(refused.value)
    plan_and_preprocess(11, shots=SHOTS, folds=2, num_workers=1, plan_only=True, progress=False)
    assert make_session(11).status(rejected) == "rejected"


@pytest.mark.parametrize("edit, problem", [
    (lambda splits: splits["interactive"].pop("added"), "interactive lacks the list(s) added"),
    (lambda splits: splits["interactive"].pop("rejected"), "interactive lacks the list(s) rejected"),
    (lambda splits: splits["interactive"].pop("order"), "interactive lacks the list(s) order"),
    (lambda splits: splits.pop("shots"), "it lacks the key(s) shots"),
    (lambda splits: splits.update(interactive=None), "interactive must be an object"),
    (lambda splits: splits["interactive"]["added"].append("toy_gone"), "did not find in"),
])
def test_a_hand_edited_splits_file_the_page_cannot_index_is_named(toy_dataset: Path, roots, edit, problem: str):
    session = make_session(11)
    path = session.preprocessed_dir / "splits.json"
    stored = json.loads(path.read_text())
    edit(stored)
    path.write_text(json.dumps(stored))
    for read in (lambda: make_session(11), session.reload):
        with pytest.raises(AutomedsamError, match=re.escape(problem)) as refused:
            read()
        assert str(path) in str(refused.value)


def test_the_pages_steps_and_the_dataset_images_name_a_broken_splits_file(toy_dataset: Path, roots):
    """Each reader indexed what it needed: a TypeError or KeyError instead of the file and the fix."""
    session = make_session(11)
    fold_two = training_steps(session, TrainingSettings())[3]
    path = session.preprocessed_dir / "splits.json"
    stored = json.loads(path.read_text())
    del stored["folds"]
    path.write_text(json.dumps({**stored, "interactive": None}))
    with pytest.raises(AutomedsamError, match="splits.json: it lacks the key.s. folds"):
        fold_two.run(lambda line, live=False: None, threading.Event())
    with pytest.raises(AutomedsamError, match="splits.json: it lacks the key.s. folds"):
        case_annotations(load_raw_dataset(11, check_images=False))


@pytest.mark.parametrize("entries, problem", [
    ('[{"label": 1, "box": [1, 2, "3", 4]}]', "whole pixel indices"),
    ('[{"label": "ring", "box": [1, 2, 3, 4]}]', "label must be a foreground label id"),
    ('[{"label": 1, "box": null}]', "a box must be"),
    ('[{"label": 1, "box": [1, 2, 3]}]', "a box must be"),
    ('[{"label": 1.7, "box": [1, 2, 3, 4]}]', "label must be a foreground label id"),
])
def test_a_hand_edited_box_file_is_named_not_counted_done_nor_a_server_error(toy_dataset: Path, roots, entries: str,
                                                                             problem: str, monkeypatch, capsys):
    client = client_for(make_session(11))
    sample = client.get("/api/session").json()["samples"][0]["sample"]
    (toy_dataset / "boxesTr").mkdir()
    (toy_dataset / "boxesTr" / f"{sample}.json").write_text(entries)
    for path in ("/api/session", f"/api/samples/{sample}"):
        response = client.get(path)
        assert response.status_code == 422, path
        assert f"{sample}.json, entry 0" in response.json()["detail"] and problem in response.json()["detail"]
    status = client.get("/api/training")  # the run's status answers (Stop too), naming the file; Train stays blocked
    assert status.status_code == 200, status.text
    assert f"{sample}.json, entry 0" in status.json()["problem"] and problem in status.json()["problem"]
    assert status.json()["blocker"] == status.json()["problem"]
    monkeypatch.setattr(annotate_cli.uvicorn, "run", lambda *args, **kwargs: pytest.fail("served"))
    code, _, err = run_cli(monkeypatch, capsys, "-d", "11")
    assert code == 2 and problem in err and "Fix or delete the file" in err


@pytest.mark.parametrize("damaged, entries", [("outside", '{"label": 1, "box": [1, 2, 3, 4]}'), ("outside", '["x"]'),
                                             ("outside", '[{"label": 1, "box": [1, 2, 3, 4], "slice": "a"}]'),
                                             ("stray", "[]"), ("queued", '["x"]')])
def test_a_damaged_box_file_is_named_by_the_run_status_whose_stop_still_answers(
        toy_dataset: Path, roots, monkeypatch, damaged: str, entries: str):
    """With segmentations made, every poll of the run's status read every case's box file unchecked (to say whether
    they are out of date): a 500 the page ignored, its buttons frozen; then a 422 for every status, Stop's too (the
    run stopped, the page kept "Stop training"), and still so for a drawn sample's file, which Train's blocker reads.
    The segmentations read as up to date then, though new boxes or a retrain may have come since."""
    def until_stopped(output, stop: threading.Event) -> None:
        stop.wait(30)
        raise StepStopped
    monkeypatch.setattr(annotation_server, "training_steps", lambda session, settings: [
        CallStep("Training fold 1 of 2", until_stopped)])
    write_model_folder(roots["results"], shared_foundation(), dataset="Dataset011_Toys")
    session = make_session(11)
    client = client_for(session)
    box_every_drawn_sample(client)
    queued = [entry["sample"] for entry in client.get("/api/session").json()["samples"]]
    outside = next(case_id for case_id in session.cases if case_id not in queued)
    segmentations = roots["results"] / "Dataset011_Toys" / "segmentations"
    segmentations.mkdir()
    Image.fromarray(np.zeros((60, 80), np.uint8)).save(segmentations / f"{outside}.png")
    status = client.get("/api/training").json()
    assert status["segmentations_out_of_date"] and status["problem"] is None
    assert client.post("/api/training").json()["state"] == "running"
    damaged_file = toy_dataset / "boxesTr" / f"{dict(outside=outside, stray='ghost', queued=queued[0])[damaged]}.json"
    damaged_file.write_text(entries)  # a stray one: no such image
    stopped = client.delete("/api/training")
    assert stopped.status_code == 200, stopped.text
    problem = stopped.json()["problem"]
    assert stopped.json()["state"] == "stopped" and damaged_file.name in problem and "Fix or " in problem, problem
    assert stopped.json()["blocker"] == (problem if damaged == "queued" else None)  # Train stays blocked by it
    assert stopped.json()["segmentations_out_of_date"]  # up to date cannot be confirmed
    response = client.get("/api/training")
    assert response.status_code == 200 and response.json()["problem"] == problem, response.text
    if damaged != "queued":  # a start reads only the drawn samples' files
        assert client.post("/api/training").json()["state"] == "running"
        assert client.delete("/api/training").json()["state"] == "stopped"
    damaged_file.unlink()
    assert client.get("/api/training").json()["problem"] is None


@pytest.mark.parametrize("corner", ["NaN", "1e400", "-Infinity"])
def test_a_non_finite_number_in_a_request_is_refused_not_a_server_error(toy_dataset: Path, corner: str):
    client = client_for(make_session(11))
    sample = client.get("/api/session").json()["samples"][0]["sample"]
    body = '{"version": "none", "boxes": [{"label": 1, "box": [0, 0, 5, ' + corner + "]}]}"
    refused = client.put(f"/api/samples/{sample}/boxes", content=body, headers={"Content-Type": "application/json"})
    assert refused.status_code == 422 and "integer" in refused.json()["detail"][0]["msg"]
    assert not (toy_dataset / "boxesTr").exists()


def test_segment_images_names_the_published_folder_and_a_stopped_train_leaves_them_up_to_date(toy_dataset: Path,
                                                                                              roots):
    """The page repeated the command's "Wrote ... to .segmentations_in_progress", a folder gone once published; and a
    Train stopped before its model replaced the last one (planning rewrote splits.json unchanged, the model went to
    previous/ and back) made the segmentations "out of date" though Segment images had nothing to redo."""
    session = make_session(11)
    client = client_for(session, training=TrainingSettings(device="cpu"))
    model_dir = write_model_folder(roots["results"], shared_foundation(), dataset="Dataset011_Toys")
    boxed = client.get("/api/session").json()["samples"][0]["sample"]
    assert client.put(f"/api/samples/{boxed}/boxes", json={"version": "none", "boxes": [
        {"label": 2, "box": list(INNER)}]}).status_code == 200
    assert client.post("/api/segmentations").json()["state"] == "running"
    status = wait_for_training(client, 300)
    assert status["state"] == "finished" and not status["segmentations_out_of_date"], status
    published = roots["results"] / "Dataset011_Toys" / "segmentations"
    summary = [line for line in status["lines"] if line.startswith("Wrote ")][-1]
    assert f"Wrote 8 segmentation(s) to {published} with" in summary and ".segmentations_in_progress" not in summary

    time.sleep(0.01)  # what the stopped Train rewrites must be newer than the segmentations
    splits_path = preprocessed_dataset_dir("Dataset011_Toys") / "splits.json"
    save_json(splits_path, json.loads(splits_path.read_text()))
    restore_previous(keep_previous(model_dir), model_dir)
    assert not client.get("/api/training").json()["segmentations_out_of_date"]
    checkpoint = model_dir / "fold_1" / "checkpoint_final.pt"  # a retrained fold: Segment images would redo them
    checkpoint.write_bytes(checkpoint.read_bytes())
    assert client.get("/api/training").json()["segmentations_out_of_date"]


def test_the_stop_line_counts_every_boxed_sample_also_after_a_review(toy_dataset: Path, roots, monkeypatch, capsys):
    """In review the line counted the review's queue ("1 of 2 samples done") and left out the drawn samples boxed."""
    session = make_session(11)
    client = client_for(session)
    box_every_drawn_sample(client)
    review = [ReviewItem(sid, 0.5, [], np.zeros((60, 80), np.uint8)) for sid in session.unlabelled()[:2]]
    session.start_review(review)
    assert client.put(f"/api/samples/{review[0].sample_id}/boxes", json={"version": "none", "boxes": [
        {"label": 1, "box": list(OUTER)}]}).status_code == 200
    monkeypatch.setattr(annotate_cli, "review_items", lambda session, **_: review)
    monkeypatch.setattr(annotate_cli.uvicorn, "run", lambda *args, **kwargs: None)
    code, out, _ = run_cli(monkeypatch, capsys, "-d", "11", "--review")
    assert code == 0 and (f"{SHOTS + 1} of {SHOTS + 1} samples done (1 of them added beyond the draw, in review or "
                          "on a Restore).") in out, out


def test_the_stop_line_does_not_count_a_sample_a_restore_kept_as_added_in_review(toy_dataset: Path, roots,
                                                                                monkeypatch, capsys):
    """A boxed sample the draw brought in for an X, kept (splits.json `added`) when the X was restored, was counted
    "added in review" on a server never in review."""
    client = client_for(make_session(11))
    order = splits(roots["raw"])["interactive"]["order"]
    assert client.post(f"/api/samples/{order[0]}/reject", json={"version": "none"}).status_code == 200
    for sample in order[1:SHOTS + 1]:
        assert client.put(f"/api/samples/{sample}/boxes", json={"version": "none", "boxes": [
            {"label": 1, "box": list(OUTER)}]}).status_code == 200
    version = client.get(f"/api/samples/{order[0]}").json()["version"]
    assert client.post(f"/api/samples/{order[0]}/restore", json={"version": version}).status_code == 200
    assert splits(roots["raw"])["interactive"]["added"] == [order[SHOTS]]
    monkeypatch.setattr(annotate_cli.uvicorn, "run", lambda *args, **kwargs: None)
    code, out, _ = run_cli(monkeypatch, capsys, "-d", "11")
    assert code == 0 and "in review)" not in out, out
    assert (f"{SHOTS} of {SHOTS + 1} samples done (1 of them added beyond the draw, in review or on a "
            "Restore).") in out, out
    added = order[SHOTS]  # marked No structure and restored: added still, but not done
    version = client.get(f"/api/samples/{added}").json()["version"]
    assert client.post(f"/api/samples/{added}/reject", json={"version": version}).status_code == 200
    version = client.get(f"/api/samples/{added}").json()["version"]
    assert client.post(f"/api/samples/{added}/restore", json={"version": version}).status_code == 200
    assert splits(roots["raw"])["interactive"]["added"] == [added]
    code, out, _ = run_cli(monkeypatch, capsys, "-d", "11")
    assert code == 0 and f"{SHOTS - 1} of {SHOTS + 1} samples done. Next" in out, out
