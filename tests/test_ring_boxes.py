"""The annotation page refuses boxes of a label without the ring dataset.json declares around it (ACDC's LV boxed
without MYO): saved, training read the ring's filled region as absent on a slice where its cavity is drawn."""
from __future__ import annotations

import json

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image

from automedsam.annotation.server import TOKEN_HEADER, create_app
from automedsam.annotation.session import AnnotationSession
from automedsam.conversion import convert_folder
from automedsam.dataset import load_raw_dataset
from automedsam.io import Geometry, write_image
from automedsam.paths import preprocessed_dataset_dir
from automedsam.planning.plan_and_preprocess import plan_and_preprocess
from toy_model import INNER, OUTER, shared_foundation, toy_image

FROM_THE_PAGE = {"X-Automedsam-Page": "1"}
RING = {"ring": ["core"]}


def client_for(dataset_id: int) -> TestClient:
    raw = load_raw_dataset(dataset_id, check_images=False)
    session = AnnotationSession(raw, preprocessed_dataset_dir(raw.name), foundation=shared_foundation)
    app = create_app(session)
    return TestClient(app, base_url="http://127.0.0.1", headers={**FROM_THE_PAGE, TOKEN_HEADER: app.state.token})


def drawn_samples(client: TestClient) -> list[str]:
    return [entry["sample"] for entry in client.get("/api/session").json()["samples"]]


def save(client: TestClient, sample: str, boxes: list[dict]):
    return client.put(f"/api/samples/{sample}/boxes", json={"version": "none", "boxes": boxes})


def test_a_2d_image_saved_with_the_core_boxed_but_not_its_ring_is_refused_and_nothing_written(tmp_path, roots):
    folder = tmp_path / "toys"
    folder.mkdir()
    for seed in range(4):
        Image.fromarray(toy_image(seed)).save(folder / f"toy{seed}.png")
    target = convert_folder(folder, dataset_id=31, name="Rings", label_names=["ring", "core"], rings=RING)
    plan_and_preprocess(31, shots=2, folds=2, num_workers=1, plan_only=True, progress=False)
    client = client_for(31)
    sample, other = drawn_samples(client)
    refused = save(client, sample, [{"label": 2, "box": list(INNER)}])
    assert refused.status_code == 422
    assert refused.json()["detail"] == (f"boxes of {sample}: core is boxed but ring is not; dataset.json declares ring "
                                        "a ring around core, so draw ring's box around its outer edge too (or remove "
                                        "the core box).")
    assert not (target / "boxesTr" / f"{sample}.json").exists(), "nothing written"
    both = [{"label": 1, "box": list(OUTER)}, {"label": 2, "box": list(INNER)}]
    assert save(client, sample, both).status_code == 200
    assert save(client, other, [{"label": 1, "box": list(OUTER)}]).status_code == 200, \
        "the ring alone (no cavity in view) is no slip"


def test_a_volume_slice_saved_with_the_lv_boxed_but_not_the_myocardium_is_refused_naming_the_slice(tmp_path, roots):
    folder = tmp_path / "hearts"
    geometry = Geometry(spacing=(1.0, 1.0, 3.0), origin=(0.0, 0.0, 0.0), direction=tuple(np.eye(3).ravel()),
                        kind="sitk")
    for index in range(2):
        volume = np.random.default_rng(index).normal(size=(4, 30, 40)).astype(np.float32)
        write_image(folder / f"heart{index}.nii.gz", volume, geometry)
    target = convert_folder(folder, dataset_id=32, name="Hearts", label_names=["MYO", "LV"], rings={"MYO": ["LV"]})
    plan_and_preprocess(32, shots=2, folds=2, num_workers=1, plan_only=True, progress=False)
    client = client_for(32)
    sample = drawn_samples(client)[0]
    case, slice_index = sample.split("__")[0], int(sample[-3:])
    refused = save(client, sample, [{"label": 2, "box": [10, 8, 20, 18]}])
    assert refused.status_code == 422
    assert f"LV is boxed on slice {slice_index} but MYO is not; dataset.json declares MYO a ring around LV, so draw " \
           "MYO's box around its outer edge too (or remove the LV box)." in refused.json()["detail"]
    assert not (target / "boxesTr" / f"{case}.json").exists(), "nothing written"
    both = [{"label": 1, "box": [6, 4, 24, 22]}, {"label": 2, "box": [10, 8, 20, 18]}]
    assert save(client, sample, both).status_code == 200
    stored = json.loads((target / "boxesTr" / f"{case}.json").read_text())
    assert sorted(entry["label"] for entry in stored) == [1, 2]
    assert len(load_raw_dataset(32).cases) == 2, "the saved slice passes the planner's check of box files"
