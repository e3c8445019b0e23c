"""The accuracy benchmark: test-case choice, reference boxes, the table, and the orchestration over seeds and selection
methods (heavy stages stubbed)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from rich.console import Console
from encoder_counts import count_encoded, plan_bf16
from synthetic_raw import make_2d_masks

from automedsam.benchmarks.accuracy_report import accuracy_table, markdown
from automedsam.benchmarks.held_out import (choose_held_out_cases, embedding_cache, reference_boxes,
                                            write_held_out_set)
from automedsam.benchmarks import protocol
from automedsam.benchmarks.protocol import DATASETS, _drop_stale_results, _folder
from automedsam.benchmarks import tails
from automedsam.benchmarks.tails import draw_worst
from automedsam.conversion import make_synthetic_dataset
from automedsam.dataset import Case, RawDataset, load_raw_dataset
from automedsam.device import BF16_CPU_FLAGS
from automedsam.errors import AutomedsamError
from automedsam.files import load_json, save_json
from automedsam.foundation.base import EMBEDDING_SHAPE
from automedsam.foundation.cache import EmbeddingCache
from automedsam.io import read_segmentation
from automedsam.paths import preprocessed_dataset_dir
from automedsam.planning.plan_and_preprocess import PreprocessSummary, plan_and_preprocess
from automedsam.planning.preprocessing import adopt_embeddings
from automedsam.plans import Plans
from automedsam.training import TRAINER_VARIANTS, train_fold


def raw_with(groups: dict[str, str]) -> RawDataset:
    cases = [Case(case, Path(f"{case}_0000.png"), Path(f"{case}.png"), None, group) for case, group in groups.items()]
    return RawDataset("Dataset501_X", Path("."), {"background": 0, "a": 1}, {"0": "US"}, ".png", cases)


def test_test_cases_avoid_every_group_that_holds_a_labelled_sample():
    raw = raw_with({"p1_ed": "p1", "p1_es": "p1", "p2_ed": "p2", "p3_ed": "p3", "p4_ed": "p4"})
    chosen = choose_held_out_cases(raw, ["p1_ed__z003", "p3_ed__z001"], count=10)
    assert [case.case_id for case in chosen] == ["p2_ed", "p4_ed"]
    once = choose_held_out_cases(raw, ["p1_ed__z003"], count=2)
    assert once == choose_held_out_cases(raw, ["p1_ed__z003"], count=2)
    with pytest.raises(AutomedsamError, match="no unseen test image"):
        choose_held_out_cases(raw, ["p1_ed", "p2_ed", "p3_ed", "p4_ed"], count=2)


def test_reference_boxes_are_tight_per_label_and_per_slice():
    volume = np.zeros((2, 10, 12), np.uint8)
    volume[1, 2:5, 3:8] = 1
    volume[1, 6, 9] = 2
    entries = reference_boxes(volume)
    assert entries == [{"label": 1, "box": [3, 2, 7, 4], "slice": 1}, {"label": 2, "box": [9, 6, 9, 6], "slice": 1}]
    assert reference_boxes(volume[1])[0] == {"label": 1, "box": [3, 2, 7, 4]}


def test_reference_boxes_box_each_region_of_a_label_the_plans_box_per_component():
    """Two nodules got one box around both, where training boxes (and a clinician) give each its own."""
    nodules = np.zeros((40, 40), np.uint8)
    nodules[2:8, 3:9], nodules[25:35, 20:30] = 1, 1
    assert reference_boxes(nodules) == [{"label": 1, "box": [3, 2, 29, 34]}]
    assert reference_boxes(nodules, per_component={1: True}) == [{"label": 1, "box": [3, 2, 8, 7]},
                                                                 {"label": 1, "box": [20, 25, 29, 34]}]
    volume = np.stack([np.zeros_like(nodules), nodules])
    assert [entry["slice"] for entry in reference_boxes(volume, per_component={1: True})] == [1, 1]


def test_reference_boxes_leave_out_the_specks_a_clinician_leaves_unboxed():
    """The true-box reference boxed a stray pixel beside a structure, a prompt no annotator gives (training's boxes
    leave it out)."""
    mask = np.zeros((40, 40), np.uint8)
    mask[5:25, 5:25], mask[35, 35] = 1, 1
    assert reference_boxes(mask) == [{"label": 1, "box": [5, 5, 24, 24]}]
    assert reference_boxes(mask, per_component={1: True}) == [{"label": 1, "box": [5, 5, 24, 24]}]


def test_table_gives_mean_and_sample_std_over_seeds_and_the_label_mean():
    scores = {("box_prompted", "-"): {0: {1: 0.8, 2: 0.4}, 1: {1: 0.8, 2: 0.4}},
              ("default", "random"): {0: {1: 0.9, 2: 0.5}, 1: {1: 0.7, 2: 0.7}},
              ("default", "diverse"): {0: {1: 0.9, 2: 0.5}, 1: {1: 0.9, 2: 0.5}}}
    report = accuracy_table(scores, {1: "a", 2: "b"}, {"train": 3.0},
                            {"dataset": "X", "test_cases": ["c"], "shots": 10, "folds": 5, "epochs": 2,
                             "checkpoint": "best", "protocol": "few_shot"})
    rows = {(row["method"], row["label"]): row for row in report["rows"] if row["selection"] != "diverse"}
    assert rows[("default", "a")]["mean"] == pytest.approx(0.8)
    assert rows[("default", "a")]["std"] == pytest.approx(np.std([0.9, 0.7], ddof=1))
    assert rows[("default", "mean")]["per_seed"] == {"0": pytest.approx(0.7), "1": pytest.approx(0.7)}
    assert rows[("box_prompted", "b")]["std"] == pytest.approx(0.0)
    assert "| default | random | mean | 0.700 | 0.700 | 0.700 ± 0.000 |" in markdown(report)
    assert "| default | diverse | mean | 0.700 | 0.700 | 0.700 ± 0.000 |" in markdown(report)
    assert "planned under few_shot" in markdown(report), "every table states its protocol"


def test_results_trained_with_other_plans_are_dropped_and_matching_ones_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOMEDSAM_PREPROCESSED", str(tmp_path / "preprocessed"))
    monkeypatch.setenv("AUTOMEDSAM_RESULTS", str(tmp_path / "results"))
    plans = {"plans_name": "automedsamPlans", "augmentation": {"views": [], "reason": "few shots"}}
    save_json(tmp_path / "preprocessed" / "Dataset501_HC18" / "plans.json", plans)
    trained = tmp_path / "results" / "Dataset501_HC18" / "default__automedsamPlans"
    save_json(trained / "plans.json", {**plans, "augmentation": {"views": [], "reason": "reworded"}})
    (trained / "fold_0").mkdir()
    _drop_stale_results(DATASETS["hc18"], "default")
    assert (trained / "fold_0").is_dir(), "folds trained with the same choices, reasons aside, are reused"
    save_json(trained / "plans.json", {**plans, "augmentation": {"views": [{"name": "v01"}]}})
    _drop_stale_results(DATASETS["hc18"], "default")
    assert not trained.exists(), "a replanned seed retrains instead of failing on the old results"


PLANS = {"plans_name": "automedsamPlans", "augmentation": {"views": []}, "losses": {},
         "training": {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 1e-4, "epochs": 100, "batch_size": 4,
                      "lr_step_epoch": 80, "lr_gamma": 0.1, "val_every": 5, "seed": 0}}
SPLIT = {"train": ["a", "b"], "val": ["c"]}


def finished_fold(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variant: str, metadata: dict) -> None:
    """HC18 planned with PLANS and one fold (SPLIT), the variant's fold 0 finished with `metadata`."""
    monkeypatch.setenv("AUTOMEDSAM_PREPROCESSED", str(tmp_path / "preprocessed"))
    monkeypatch.setenv("AUTOMEDSAM_RESULTS", str(tmp_path / "results"))
    preprocessed = tmp_path / "preprocessed" / "Dataset501_HC18"
    save_json(preprocessed / "plans.json", PLANS)
    save_json(preprocessed / "splits.json", {"folds": [SPLIT]})
    trained = tmp_path / "results" / "Dataset501_HC18" / f"{variant}__automedsamPlans"
    save_json(trained / "plans.json", PLANS)
    save_json(trained / "fold_0" / "checkpoint_final.json", metadata)


def test_a_fold_trained_on_another_draw_is_trained_again(tmp_path, monkeypatch):
    """Only plans and epochs were compared: a fold of an earlier draw (same plans) was reused, and may have trained on
    an image that the new draw's test set holds."""
    config = TRAINER_VARIANTS["default"].configure(PLANS).with_epochs(3).to_json()
    metadata = {"config": config, "precision": "fp32", "samples": SPLIT}
    finished_fold(tmp_path, monkeypatch, "default", metadata)
    assert protocol._finished(DATASETS["hc18"], "default", 0, epochs=3, precision="fp32")
    finished_fold(tmp_path, monkeypatch, "default", {**metadata, "samples": {"train": ["a", "d"], "val": ["c"]}})
    assert not protocol._finished(DATASETS["hc18"], "default", 0, epochs=3, precision="fp32")


def test_a_fold_trained_with_another_configuration_or_precision_is_trained_again(tmp_path, monkeypatch):
    """Only the plans and the epochs were compared: a fold trained with another release's paper2024 constants (they
    live in code, not in plans.json), or in fp32 where `auto` now trains in bf16, joined the folds trained now."""
    config = TRAINER_VARIANTS["paper2024"].configure(PLANS).to_json()
    metadata = {"config": config, "precision": "fp32", "samples": SPLIT}
    finished_fold(tmp_path, monkeypatch, "paper2024", metadata)
    assert protocol._finished(DATASETS["hc18"], "paper2024", 0, epochs=None, precision="fp32")
    assert not protocol._finished(DATASETS["hc18"], "paper2024", 0, epochs=None, precision="bf16")
    older = {**config, "lr": 1e-4, "losses": {**config["losses"], "box_size": {"weight": 1.0, "margins": [0.1, 0.2]}}}
    finished_fold(tmp_path, monkeypatch, "paper2024", {**metadata, "config": older})
    assert not protocol._finished(DATASETS["hc18"], "paper2024", 0, epochs=None, precision="fp32")


def test_the_folds_train_in_what_auto_chooses_on_the_device(monkeypatch):
    assert protocol._training_precision(torch.device("cpu")) == "fp32"
    monkeypatch.setattr("automedsam.device.cpu_flags", lambda: frozenset(BF16_CPU_FLAGS))
    assert protocol._training_precision(torch.device("cpu")) == "bf16", "a CPU with bf16 arithmetic trains in bf16"


def test_a_rerun_keeps_only_its_own_worst_overlays(tmp_path):
    folder = tmp_path / "worst" / "default_random_seed0"
    folder.mkdir(parents=True)
    (folder / "case_of_an_earlier_run.png").write_bytes(b"png")
    image = tmp_path / "case1.png"
    Image.fromarray(np.full((20, 20), 80, np.uint8)).save(image)
    mask = np.zeros((20, 20), np.uint8)
    mask[5:10, 5:10] = 1
    row = {"method": "default", "seed": "0", "worst": [{"case": "case1", "dice": 0.0, "object_size": 0.06}]}
    draw_worst(row, {"case1": image}, {"case1": np.zeros_like(mask)}, {"case1": mask}, folder)
    assert sorted(path.name for path in folder.iterdir()) == ["case1.png"]


def test_ddti_images_of_one_case_share_a_group(tmp_path: Path, roots):
    for folder in ("images", "masks"):
        (tmp_path / "ddti" / folder).mkdir(parents=True)
    for name in ("ddti_12_1", "ddti_12_2", "ddti_7_1"):
        Image.fromarray(np.full((20, 30), 90, np.uint8)).save(tmp_path / "ddti" / "images" / f"{name}.png")
        mask = np.zeros((20, 30), np.uint8)
        mask[5:10, 5:12] = 255
        Image.fromarray(mask).save(tmp_path / "ddti" / "masks" / f"{name}.png")
    spec = DATASETS["thyroid"]
    spec.convert(tmp_path / "ddti", spec.dataset_id, name=spec.name)
    groups = {case.case_id: case.group for case in load_raw_dataset(spec.dataset_id).cases}
    assert groups == {"ddti_12_1": "12", "ddti_12_2": "12", "ddti_7_1": "7"}


def test_folds_trained_before_plans_recorded_the_selection_are_reused_and_random_keeps_its_folder(tmp_path,
                                                                                                  monkeypatch):
    monkeypatch.setenv("AUTOMEDSAM_PREPROCESSED", str(tmp_path / "preprocessed"))
    monkeypatch.setenv("AUTOMEDSAM_RESULTS", str(tmp_path / "results"))
    plans = {"plans_name": "automedsamPlans", "augmentation": {"views": []}}
    save_json(tmp_path / "preprocessed" / "Dataset501_HC18" / "plans.json",
              {**plans, "selection": {"method": "random", "cap": 2000, "reason": "default"}})
    trained = tmp_path / "results" / "Dataset501_HC18" / "default__automedsamPlans"
    save_json(trained / "plans.json", plans)
    (trained / "fold_0").mkdir()
    _drop_stale_results(DATASETS["hc18"], "default")
    assert (trained / "fold_0").is_dir()
    assert _folder(2, "random") == "seed_2" and _folder(2, "diverse") == "seed_2_diverse"


def test_a_later_seed_adopts_the_candidate_embeddings_but_not_the_views(tmp_path):
    first, later = tmp_path / "seed_0" / "Dataset501_HC18", tmp_path / "seed_1" / "Dataset501_HC18"
    cache = EmbeddingCache(first, "litemedsam")
    for sid in ("001_HC", "002_HC", "001_HC__v01", "p1__z003", "p1__z003__v02"):
        cache.put(sid, np.zeros(EMBEDDING_SHAPE, np.float16), image_digest=None if sid == "002_HC" else f"{sid}'s")
    save_json(first / "preprocessing_state.json", {"embeddings": {"litemedsam": "key0"}})
    assert adopt_embeddings(first, later, "litemedsam") == 3
    assert sorted(path.name for path in (later / "embeddings" / "litemedsam").iterdir()) == [
        "001_HC.image", "001_HC.npy", "002_HC.npy", "p1__z003.image", "p1__z003.npy"]
    assert EmbeddingCache(later, "litemedsam").stamp_path("p1__z003").read_text() == "p1__z003's"
    assert json.loads((later / "preprocessing_state.json").read_text())["embeddings"] == {"litemedsam": "key0"}
    assert adopt_embeddings(first, later, "litemedsam") == 0, "a folder with its own embeddings keeps them"


def test_every_seed_and_method_is_planned_before_the_shared_test_images_are_chosen(tmp_path, monkeypatch):
    """The orchestration with the heavy stages stubbed: planning per seed and method in its own folder, then one
    test set that no draw of any seed or method touches, then training and scoring per seed and method."""
    workdir = tmp_path / "bench"
    raw_dir = make_2d_masks(workdir / "raw", n_cases=16, per_group=2, folder="Dataset501_HC18")
    events: list[tuple[str, str]] = []
    drawn = {("0", "random"): "case00", ("1", "random"): "case02", ("0", "diverse"): "case06",
             ("1", "diverse"): "case08"}

    def plan(dataset_id, *, shots, seed, select, device):
        out_dir = preprocessed_dataset_dir("Dataset501_HC18")
        events.append(("plan", os.environ["AUTOMEDSAM_PREPROCESSED"]))
        save_json(out_dir / "splits.json", {"labelled": [drawn[str(seed), select]]})
        save_json(out_dir / "plans.json", {"protocol": {"regime": "few_shot"},
                                           "foundation_model": {"name": "litemedsam",
                                                                "precision": "bf16" if seed else "fp32"},
                                           "targets": [{"label": 1, "per_component": False}]})
        return PreprocessSummary("Dataset501_HC18", out_dir, True, 1, 5, None)

    def train(spec, variant, settings, *, precision):
        events.append(("train", os.environ["AUTOMEDSAM_RESULTS"]))
        return [0, 1], [1] if "diverse" in os.environ["AUTOMEDSAM_RESULTS"] else []

    def references(test) -> dict:
        return {case.case_id: read_segmentation(case.label)[0] for case in test.cases}

    def predictions(test, plans, foundation, name, variant, folds, checkpoint):
        """diverse: every image right; random: every image but the first missed (an empty mask)."""
        events.append(("test", ",".join(case.case_id for case in test.cases)))
        used.append((plans["foundation_model"]["precision"], foundation))
        if "diverse" in os.environ["AUTOMEDSAM_RESULTS"]:
            return references(test)
        return {case: (mask if index == 0 else np.zeros_like(mask))
                for index, (case, mask) in enumerate(references(test).items())}

    monkeypatch.setattr(protocol, "_converted", lambda spec, source: raw_dir)
    monkeypatch.setattr(protocol, "plan_and_preprocess", plan)
    used: list[tuple[str, str]] = []  # (the run's planned precision, the model it was given)
    monkeypatch.setattr(Plans, "build_foundation_model", lambda self, **kwargs: self["foundation_model"]["precision"])
    monkeypatch.setattr(protocol, "embedding_cache", lambda folder, plans: None)
    monkeypatch.setattr(protocol, "encode_held_out_set",
                        lambda cases, plans, cache, foundation: used.append((plans["foundation_model"]["precision"],
                                                                             foundation)))
    monkeypatch.setattr(protocol, "_box_reference", lambda test, plans, foundation: references(test))
    monkeypatch.setattr(protocol, "_train_folds", train)
    monkeypatch.setattr(protocol, "_ensemble_predictions", predictions)
    settings = protocol.BenchmarkSettings("hc18", tmp_path, workdir, seeds=[0, 1], variants=["default"],
                                          test_images=20, selections=["random", "diverse"])
    report = protocol.run_benchmark(settings, Console(quiet=True))
    assert len(used) == 8 and {planned for planned, _ in used} == {"fp32", "bf16"}
    assert all(planned == given for planned, given in used), "each seed encodes and decodes in its own precision"
    kinds = [kind for kind, _ in events]
    assert kinds == ["plan"] * 4 + ["train", "test"] * 4, "all four draws are planned before any test image is used"
    assert [Path(where).parent.name for kind, where in events if kind == "plan"] == [
        "seed_0", "seed_1", "seed_0_diverse", "seed_1_diverse"]
    tested = {where for kind, where in events if kind == "test"}
    assert len(tested) == 1, "every seed and method is measured on the same test images"
    cases = tested.pop().split(",")
    assert cases == [f"case{index:02d}" for index in (4, 5, 10, 11, 12, 13, 14, 15)], \
        "no image of an examination (two cases each) that any seed or method labelled"
    rows = {(row["method"], row["selection"], row["label"]): row["mean"] for row in report["rows"]}
    assert rows["default", "diverse", "mean"] == pytest.approx(1.0)
    assert rows["default", "random", "mean"] == pytest.approx(1 / 8)
    assert rows["box_prompted", "-", "mean"] == pytest.approx(1.0)
    tails = {(row["method"], row["selection"], row["seed"]): row for row in report["tails"]}
    assert set(tails) == {("box_prompted", "-", "all"), *(("default", method, seed) for method in ("random", "diverse")
                                                          for seed in ("0", "1"))}
    missed = tails["default", "random", "0"]
    assert (missed["images"], missed["missed"], missed["p10"]) == (8, 7, 0.0)
    assert [entry["case"] for entry in missed["worst"]] == cases[1:6], "the five worst, ties in case order"
    assert missed["worst"][0]["object_size"] == pytest.approx(
        np.mean(read_segmentation(raw_dir / "labelsTr" / f"{cases[1]}.nii.gz")[0] > 0))
    assert tails["default", "diverse", "1"]["missed"] == 0
    drawn_worst = sorted(path.name for path in (workdir / "worst" / "default_random_seed0").iterdir())
    assert drawn_worst == sorted(f"{case}.png" for case in cases[1:6])
    assert "| default | random | 0 | 8 | 0.125 | 0.000 | 7 (88%) |" in markdown(report)
    assert (report["device"], report["training_precision"]) == ("cpu", "fp32"), "what auto resolved to, not 'auto'"
    assert report["reused_folds"] == {"default": {"seed_0": [], "seed_1": [], "seed_0_diverse": [1],
                                                  "seed_1_diverse": [1]}}


def test_seeds_share_the_test_embeddings_unless_their_encoder_precision_differs(tmp_path):
    def plans(precision: str, mean_abs_change: float) -> dict:
        return {"slicing": {"is_3d": False, "axis": None, "reason": "2D"},
                "normalization": {"scheme": "percentile_window", "lower": 0.0, "upper": 223.0, "reason": "US"},
                "foundation_model": {"name": "litemedsam", "checkpoint": None, "input_size": 256,
                                     "precision": precision, "reason": "default",
                                     "precision_check": {"mean_abs_dice_change": mean_abs_change}}}

    first = embedding_cache(tmp_path, plans("fp32", 0.00215)).path("x")
    assert embedding_cache(tmp_path, plans("fp32", 0.00211)).path("x") == first
    assert embedding_cache(tmp_path, plans("bf16", 0.00169)).path("x") != first


def test_a_later_seed_after_a_bf16_plan_encodes_no_candidate(tmp_path, monkeypatch):
    """The first seed's preprocessing plans bf16 and clears the candidates' fp32 embeddings; the later seed still
    finds their pooled features, adopted from the first seed's folder."""
    workdir = tmp_path / "bench"
    make_2d_masks(workdir / "raw", n_cases=12, per_group=2, empty_every=4)  # 9 candidates
    monkeypatch.setenv("AUTOMEDSAM_RAW", str(workdir / "raw"))
    monkeypatch.setattr("automedsam.planning.planner.MAX_AUGMENTED_LABELLED", 0)
    plan_bf16(monkeypatch)
    counts = count_encoded(monkeypatch)
    monkeypatch.setenv("AUTOMEDSAM_PREPROCESSED", str(workdir / "seed_0_diverse" / "preprocessed"))
    first = plan_and_preprocess(1, shots=4, folds=2, seed=0, select="diverse", num_workers=1, progress=False)
    assert Plans.load(first.out_dir / "plans.json")["foundation_model"]["precision"] == "bf16"
    counts.clear()
    monkeypatch.setenv("AUTOMEDSAM_PREPROCESSED", str(workdir / "seed_1_diverse" / "preprocessed"))
    protocol._share_candidate_embeddings(workdir, "seed_0_diverse", first.dataset,
                                         Plans.load(first.out_dir / "plans.json"))
    plan_and_preprocess(1, shots=4, folds=2, seed=1, select="diverse", plan_only=True, num_workers=1, progress=False)
    assert sum(counts) == 4, "only the label statistics' 4 labelled samples: no candidate encoded again"


def test_an_image_with_one_structure_not_found_counts_as_missed_whatever_the_others_score():
    per_case = {"v1": {1: 0.0, 2: 0.95, 3: 0.97}, "v2": {1: 0.8, 2: 0.85, 3: 0.9}, "v3": {1: 0.05}}
    row = tails.tail_row("default", "random", 0, per_case, {case: 0.1 for case in per_case})
    assert row["missed"] == 2, "v1 lost its first structure although its mean is 0.64; v3 is missed outright"


def test_a_workdir_converted_from_another_source_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOMEDSAM_RAW", str(tmp_path / "bench" / "raw"))
    converted = []

    def convert(source, dataset_id, *, name):
        converted.append(source)
        folder = tmp_path / "bench" / "raw" / f"Dataset{dataset_id:03d}_{name}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "dataset.json").write_text("{}")
        return folder

    spec = protocol.DatasetSpec(503, "THYROID", convert)
    tune, report = tmp_path / "TUNE", tmp_path / "REPORT"
    first = protocol._converted(spec, tune)
    assert protocol._converted(spec, tune) == first and converted == [tune], "the same source is converted once"
    with pytest.raises(AutomedsamError, match="converted from .*TUNE, not from .*REPORT"):
        protocol._converted(spec, report)
    assert converted == [tune]
    other = protocol.DatasetSpec(501, "HC18", convert)  # another dataset in the same workdir has its own source
    protocol._converted(other, tmp_path / "HC18")
    assert protocol._converted(spec, tune) == first and converted == [tune, tmp_path / "HC18"]


class Outliner:
    """A frozen model that outlines nothing and notes, for every call, the intensity window of the plans it was built
    from and whether it was given the plane's embedding."""

    def __init__(self, upper: float, calls: list[tuple[float, bool]]) -> None:
        self.upper, self.calls = upper, calls

    def segment_boxes(self, plane, boxes, *, embedding=None) -> np.ndarray:
        self.calls.append((self.upper, embedding is not None))
        return np.zeros((len(boxes), *np.shape(plane)[:2]), dtype=bool)


class ZeroCache:
    def get(self, sample_id: str) -> np.ndarray:
        return np.zeros(EMBEDDING_SHAPE, np.float16)


def test_the_true_box_reference_follows_the_current_plans_not_a_model_trained_before_a_replan(tmp_path, monkeypatch):
    """The reference ran automedsam_predict -d, which takes a trained model's plans where the results root holds one:
    after a replan, the old model's intensity window (and precision), while benchmark.json named the current plans."""
    workdir = tmp_path / "bench"
    raw_dir = make_2d_masks(workdir / "raw", n_cases=8, per_group=2, folder="Dataset501_HC18")
    current = {"plans_name": "automedsamPlans", "foundation_model": {"name": "litemedsam", "precision": "fp32"},
               "slicing": {"is_3d": False, "axis": None},
               "normalization": {"scheme": "percentile_window", "lower": 0.0, "upper": 1000.0},
               "targets": [{"label": 1, "per_component": False}]}
    model = workdir / "seed_0" / "results" / "Dataset501_HC18" / "default__automedsamPlans"
    save_json(model / "plans.json", {**current, "normalization": {**current["normalization"], "upper": 10.0}})
    save_json(model / "fold_0" / "checkpoint_final.json", {})
    (model / "fold_0" / "checkpoint_final.pt").write_bytes(b"trained before the replan")

    def plan(dataset_id, *, shots, seed, select, device):
        out_dir = preprocessed_dataset_dir("Dataset501_HC18")
        save_json(out_dir / "splits.json", {"labelled": ["case00"]})
        save_json(out_dir / "plans.json", current)
        return PreprocessSummary("Dataset501_HC18", out_dir, True, 1, 5, None)

    outlined: list[tuple[float, bool]] = []
    monkeypatch.setattr(protocol, "_converted", lambda spec, source: raw_dir)
    monkeypatch.setattr(protocol, "plan_and_preprocess", plan)
    monkeypatch.setattr(Plans, "build_foundation_model",
                        lambda self, **kwargs: Outliner(self["normalization"]["upper"], outlined))
    monkeypatch.setattr(protocol, "embedding_cache", lambda folder, plans: ZeroCache())
    monkeypatch.setattr(protocol, "encode_held_out_set", lambda cases, plans, cache, foundation: None)
    monkeypatch.setattr(protocol, "_train_folds", lambda spec, variant, settings, *, precision: ([0], [0]))
    monkeypatch.setattr(protocol, "_ensemble_predictions",
                        lambda test, *args: {case.case_id: read_segmentation(case.label)[0] for case in test.cases})
    settings = protocol.BenchmarkSettings("hc18", tmp_path, workdir, variants=["default"], test_images=3)
    protocol.run_benchmark(settings, Console(quiet=True))
    assert len(outlined) == 3, "one box per test image"
    assert outlined == [(1000.0, True)] * 3, "the current plans' window, from the cached test embeddings"


def test_the_true_box_reference_follows_the_same_plans_whatever_the_order_of_the_seeds(tmp_path, monkeypatch):
    """runs[0] set the reference's plans: --seeds 2,0,1 prompted it in seed 2's bf16 and boxes, 0,1,2 in seed 0's."""
    raw_dir = make_2d_masks(tmp_path / "raw", n_cases=16, per_group=2, folder="Dataset501_HC18")
    drawn = {0: "case00", 1: "case02", 2: "case06"}

    def plan(dataset_id, *, shots, seed, select, device):
        out_dir = preprocessed_dataset_dir("Dataset501_HC18")
        save_json(out_dir / "splits.json", {"labelled": [drawn[seed]]})
        save_json(out_dir / "plans.json", {"foundation_model": {"name": "litemedsam",
                                                                "precision": "bf16" if seed == 2 else "fp32"},
                                           "targets": [{"label": 1, "per_component": seed == 2}]})
        return PreprocessSummary("Dataset501_HC18", out_dir, True, 1, 5, None)

    def held_out_set(cases, folder, *, per_component):
        boxed.append(per_component)
        return write_held_out_set(cases, folder, per_component=per_component)

    def references(test, *args) -> dict:
        return {case.case_id: read_segmentation(case.label)[0] for case in test.cases}

    def box_reference(test, plans, foundation):
        prompted.append(plans)
        return references(test)

    boxed, prompted = [], []
    monkeypatch.setattr(protocol, "_converted", lambda spec, source: raw_dir)
    monkeypatch.setattr(protocol, "plan_and_preprocess", plan)
    monkeypatch.setattr(protocol, "write_held_out_set", held_out_set)
    monkeypatch.setattr(Plans, "build_foundation_model", lambda self, **kwargs: None)
    monkeypatch.setattr(protocol, "embedding_cache", lambda folder, plans: None)
    monkeypatch.setattr(protocol, "encode_held_out_set", lambda cases, plans, cache, foundation: None)
    monkeypatch.setattr(protocol, "_box_reference", box_reference)
    monkeypatch.setattr(protocol, "_train_folds", lambda spec, variant, settings, *, precision: ([0], []))
    monkeypatch.setattr(protocol, "_ensemble_predictions", references)
    reports = [protocol.run_benchmark(protocol.BenchmarkSettings("hc18", tmp_path, tmp_path / f"bench{index}",
                                                                 seeds=seeds, variants=["default"], test_images=4),
                                      Console(quiet=True))
               for index, seeds in enumerate(([2, 0, 1], [0, 1, 2]))]
    assert [plans["foundation_model"]["precision"] for plans in prompted] == ["fp32", "fp32"]
    assert boxed == [{1: False}, {1: False}], "the reference's boxes follow seed 0's plans both times"
    for report in reports:
        assert report["reference_run"] == "seed_0"
        assert report["encoder_precision"] == {"box_prompted": "fp32", "seed_0": "fp32", "seed_1": "fp32",
                                               "seed_2": "bf16"}


def test_an_empty_list_of_variants_is_refused_before_converting(tmp_path):
    settings = protocol.BenchmarkSettings("hc18", tmp_path / "no_release", tmp_path / "work", variants=[])
    with pytest.raises(AutomedsamError, match="--variants must name distinct trainer variants among .*got none"):
        protocol.run_benchmark(settings)
    assert not (tmp_path / "work").exists()


def test_training_a_missing_fold_keeps_the_folds_trained_before_plans_recorded_the_selection(roots, tiny_foundation):
    """The benchmark kept fold 0, trained when plans had no `selection`, but training fold 1 compared every plans key
    and moved the whole model, fold 0 with it, to previous/: the ensemble then lacked fold 0."""
    make_synthetic_dataset(900, n_train=6, n_test=0, seed=0)
    planned = plan_and_preprocess(900, shots=4, folds=2, num_workers=1, device="cpu", progress=False)
    train_fold(900, 0, epochs=1, device="cpu", console=Console(quiet=True))
    model = roots["results"] / planned.dataset / "default__automedsamPlans"
    plans = load_json(model / "plans.json", "plans")
    assert "selection" in plans
    save_json(model / "plans.json", {key: value for key, value in plans.items() if key != "selection"})
    trained_at = (model / "fold_0" / "checkpoint_final.pt").stat().st_mtime_ns
    settings = protocol.BenchmarkSettings("synthetic", roots["raw"], roots["raw"].parent, epochs=1, device="cpu")
    spec = protocol.DatasetSpec(900, "SyntheticUS", make_synthetic_dataset)
    assert protocol._train_folds(spec, "default", settings, precision="fp32") == ([0, 1], [0])
    assert (model / "fold_0" / "checkpoint_final.pt").stat().st_mtime_ns == trained_at, "fold 0 kept, not retrained"
    assert (model / "fold_1" / "checkpoint_final.json").is_file()
    assert not (model.parent / "previous").exists()
