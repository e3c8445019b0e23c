"""A locally trained model is tied to the foundation weights it was trained with: each fold records their sha256 in
its checkpoint metadata, prediction refuses other weights (a fine-tune saved over the planned file, another file
given with --foundation-checkpoint), and export records the hash the folds trained with, not the file's now.

The synthetic dataset is planned with a weights file named by path, one fold trained one epoch with the
TinyFoundation of tests/toy_model.py standing in for the model those weights make, so the file's bytes only matter
for their hash.
"""
from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest
from rich.console import Console

from automedsam.checkpoint import load_metadata, metadata_path
from automedsam.conversion import make_synthetic_dataset
from automedsam.errors import AutomedsamError
from automedsam.files import save_json
from automedsam.foundation.weights_file import PACKAGED_SHA256, TRAINED_WITH, sha256_of
from automedsam.inference import predict
from automedsam.model_sharing.export import export_model
from automedsam.paths import roots_at
from automedsam.planning.plan_and_preprocess import plan_and_preprocess
from automedsam.plans import weights_sha256
from automedsam.training import train_fold

DATASET_ID = 903
MODEL = "Dataset903_SyntheticUS/default__automedsamPlans"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_foundation) -> dict[str, Path]:
    """Fold 0 trained with the weights file `weights`, planned by path."""
    base = tmp_path_factory.mktemp("pinned")
    roots = {name: base / name for name in ("raw", "preprocessed", "results")}
    weights = base / "weights" / "lite_medsam.pth"
    weights.parent.mkdir()
    weights.write_bytes(b"the weights the folds are trained with")
    with roots_at(roots):
        make_synthetic_dataset(DATASET_ID, n_train=6, n_test=1, seed=0)
        plan_and_preprocess(DATASET_ID, shots=4, folds=2, num_workers=1, device="cpu", progress=False,
                            foundation_checkpoint=weights)
        train_fold(DATASET_ID, 0, epochs=1, device="cpu", console=Console(quiet=True))
    return {**roots, "weights": weights, "images": roots["raw"] / "Dataset903_SyntheticUS" / "imagesTs"}


@pytest.fixture
def model(trained, tmp_path: Path) -> tuple[Path, Path]:
    """(model folder, planned weights file): a copy of the trained model whose plans name a copy of its weights."""
    model_dir = tmp_path / "results" / MODEL
    shutil.copytree(trained["results"] / MODEL, model_dir)
    weights = tmp_path / "planned" / "lite_medsam.pth"
    weights.parent.mkdir()
    shutil.copyfile(trained["weights"], weights)
    set_planned_weights(model_dir, weights)
    return model_dir, weights


def set_planned_weights(model_dir: Path, weights: Path | None) -> None:
    plans = json.loads((model_dir / "plans.json").read_text())
    plans["foundation_model"]["checkpoint"] = None if weights is None else str(weights)
    (model_dir / "plans.json").write_text(json.dumps(plans))


def recorded(model_dir: Path) -> str | None:
    return load_metadata(model_dir / "fold_0", "final").get(TRAINED_WITH)


def predicted(trained, model_dir: Path, out: Path, **options) -> int:
    return predict(trained["images"], out, model_folder=model_dir, device="cpu", show_progress=False,
                   **options).written


def test_a_fold_records_the_sha256_of_the_weights_it_trained_with(trained) -> None:
    model_dir = trained["results"] / MODEL
    assert recorded(model_dir) == sha256_of(trained["weights"])
    assert load_metadata(model_dir / "fold_0", "best").get(TRAINED_WITH) == sha256_of(trained["weights"])


def test_the_packaged_weights_are_known_by_their_hash_and_planned_files_hashed_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a fold records: the packaged weights' hash without reading them, a planned file's hash once per process."""
    with monkeypatch.context() as patch:
        patch.setattr("automedsam.foundation.weights_file._hash", lambda *args: pytest.fail("hashed"))
        assert weights_sha256({"name": "litemedsam", "checkpoint": None}) == PACKAGED_SHA256["litemedsam"]
        assert weights_sha256({"name": "medsam_vit_b", "checkpoint": None, "sha256": "a" * 64},
                              weights=tmp_path / "given.pth") == "a" * 64  # an installed model builds only with these
    weights = tmp_path / "planned.pth"
    weights.write_bytes(b"weights")
    assert weights_sha256({"name": "medsam_vit_b", "checkpoint": str(weights)}) == sha256_of(weights)
    assert weights_sha256({"name": "medsam_vit_b", "checkpoint": str(tmp_path / "gone.pth")}) is None


def test_weights_saved_over_the_planned_file_are_refused_at_prediction(trained, model, tmp_path: Path) -> None:
    model_dir, weights = model
    assert predicted(trained, model_dir, tmp_path / "before") == 1
    weights.write_bytes(b"a fine-tune saved over the planned file")
    with pytest.raises(AutomedsamError) as refused:
        predicted(trained, model_dir, tmp_path / "after")
    message = str(refused.value)
    assert f"{weights} have sha256 {sha256_of(weights)}" in message
    assert f"fold 0: sha256 {sha256_of(trained['weights'])}" in message
    assert f"Put the weights they were trained with back at {weights}" in message and "--overwrite" in message
    assert not (tmp_path / "after").exists() or not any((tmp_path / "after").iterdir())
    assert predicted(trained, model_dir, tmp_path / "given", foundation_checkpoint=trained["weights"]) == 1


def test_another_weights_file_given_at_prediction_is_refused(trained, model, tmp_path: Path) -> None:
    model_dir, _ = model
    other = tmp_path / "other.pth"
    other.write_bytes(b"another release of the weights")
    with pytest.raises(AutomedsamError, match=f"{other} have sha256 {sha256_of(other)}.*Give the weights file they "
                                              "were trained with via --foundation-checkpoint PATH"):
        predicted(trained, model_dir, tmp_path / "out", foundation_checkpoint=other)


def test_a_model_trained_on_the_packaged_weights_refuses_another_file(trained, model, tmp_path: Path) -> None:
    """The packaged weights' hash is known: recorded without hashing, and another file given is refused."""
    model_dir, weights = model
    set_planned_weights(model_dir, None)
    for which in ("best", "final"):
        path = metadata_path(model_dir / "fold_0", which)
        save_json(path, {**json.loads(path.read_text()), TRAINED_WITH: PACKAGED_SHA256["litemedsam"]})
    assert predicted(trained, model_dir, tmp_path / "packaged") == 1
    with pytest.raises(AutomedsamError, match=f"{weights} have sha256 {sha256_of(weights)}.*fold 0: sha256 "
                                              f"{PACKAGED_SHA256['litemedsam']}"):
        predicted(trained, model_dir, tmp_path / "other", foundation_checkpoint=weights)


def test_folds_trained_before_the_hash_was_recorded_predict_as_before(trained, model, tmp_path: Path) -> None:
    model_dir, weights = model
    for which in ("best", "final"):
        path = metadata_path(model_dir / "fold_0", which)
        metadata = json.loads(path.read_text())
        del metadata[TRAINED_WITH]
        save_json(path, metadata)
    weights.write_bytes(b"a fine-tune saved over the planned file")
    assert predicted(trained, model_dir, tmp_path / "out") == 1


def test_export_records_the_hash_the_folds_trained_with(trained, model, tmp_path: Path) -> None:
    model_dir, weights = model
    trained_with = sha256_of(trained["weights"])
    weights.write_bytes(b"a fine-tune saved over the planned file")
    with roots_at({"preprocessed": tmp_path / "preprocessed"}):
        with pytest.raises(AutomedsamError, match=f"{weights} have sha256 {sha256_of(weights)}, but the model was "
                                                  f"trained with other weights \\(sha256 {trained_with}\\)"):
            export_model(model_dir, tmp_path / "m.zip", folds=(0,))
        assert not (tmp_path / "m.zip").exists()
        with pytest.raises(AutomedsamError, match=f"have sha256 {sha256_of(weights)}, but the model was trained with "
                                                  f"the weights its folds recorded \\(sha256 {trained_with}\\)"):
            export_model(model_dir, tmp_path / "m.zip", folds=(0,), foundation_checkpoint=weights)
        export_model(model_dir, tmp_path / "m.zip", folds=(0,), foundation_checkpoint=trained["weights"])
        assert card_sha256(tmp_path / "m.zip") == trained_with
        weights.unlink()  # the file moved away: the folds still say which weights they were trained with
        export_model(model_dir, tmp_path / "moved.zip", folds=(0,))
    assert card_sha256(tmp_path / "moved.zip") == trained_with


def test_export_refuses_folds_trained_with_different_weights(trained, model, tmp_path: Path) -> None:
    model_dir, _ = model
    shutil.copytree(model_dir / "fold_0", model_dir / "fold_1")
    path = metadata_path(model_dir / "fold_1", "final")
    save_json(path, {**json.loads(path.read_text()), TRAINED_WITH: "0" * 64})
    with roots_at({"preprocessed": tmp_path / "preprocessed"}):
        with pytest.raises(AutomedsamError, match="trained with different foundation weights.*fold 1 "
                                                  f"checkpoint_final: sha256 {'0' * 64}.*-f"):
            export_model(model_dir, tmp_path / "m.zip", folds=(0, 1))


def card_sha256(archive: Path) -> str:
    with zipfile.ZipFile(archive) as opened:
        return json.loads(opened.read("model_card.json"))["foundation_model"]["sha256"]
