"""The few-shot accuracy benchmark: convert, plan, train, predict and evaluate a dataset under the protocol.

Protocol (issue 7): 10 labelled 2D samples drawn per seed (planned under the strict few-shot protocol: nothing
label-derived from outside their boxes, plans.json `protocol`), 5 folds, each variant's 5-fold ensemble predicts test
images that no seed labelled; the reference is the frozen model prompted with the true tight box on every test
image (`automedsam_predict --boxes`). Every seed has its own preprocessed and results roots under the workdir;
the raw data, the test set and the test embeddings are shared. Finished folds and cached embeddings are reused,
so a rerun only does what is missing.
"""
from __future__ import annotations

import os
import shutil
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterator, Sequence

import numpy as np
from rich.console import Console

from automedsam.benchmarks.accuracy_report import accuracy_table, write_report
from automedsam.benchmarks.held_out import (HeldOutSet, case_embeddings, choose_held_out_cases, embedding_cache,
                                            encode_held_out_set, write_held_out_set)
from automedsam.checkpoint import load_metadata, metadata_path
from automedsam.conversion import convert_acdc, convert_folder, convert_hc18
from automedsam.dataset import load_raw_dataset
from automedsam.errors import AutomedsamError
from automedsam.evaluation import dice
from automedsam.files import load_json
from automedsam.folds import fold_dir_name
from automedsam.foundation.base import FoundationModel
from automedsam.inference import Predictor, predict
from automedsam.inference.predictor import refined_labels
from automedsam.inference.model_folder import DEFAULT_CHECKPOINT, open_model_folder
from automedsam.io import read_segmentation
from automedsam.paths import dataset_folder_name, preprocessed_dataset_dir, roots_at
from automedsam.planning.plan_and_preprocess import plan_and_preprocess
from automedsam.plans import Plans, without_reasons
from automedsam.prompt_module import load_modules
from automedsam.training import TRAINER_VARIANTS, train_fold
from automedsam.training.layout import trainer_output_dir

REFERENCE = "box_prompted"
SHOTS = 10


@dataclass(frozen=True)
class DatasetSpec:
    dataset_id: int
    name: str
    convert: Callable[..., Path]


def convert_ddti(source: Path, dataset_id: int, *, name: str) -> Path:
    """A DDTI thyroid release folder (images/, masks/: ddti_CASE_K.png) as a user would import it."""
    return convert_folder(source / "images", masks=source / "masks", dataset_id=dataset_id, name=name,
                          label_names=["nodule"], group_pattern=r"ddti_(\d+)_")


DATASETS = {"hc18": DatasetSpec(501, "HC18", convert_hc18), "acdc": DatasetSpec(502, "ACDC", convert_acdc),
            "thyroid": DatasetSpec(503, "THYROID", convert_ddti)}


@dataclass
class BenchmarkSettings:
    dataset: str
    source: Path
    workdir: Path
    seeds: list[int] = field(default_factory=lambda: [0])
    variants: list[str] = field(default_factory=lambda: ["default", "paper2024", "fullsup"])
    test_images: int = 50
    epochs: int | None = None
    checkpoint: str = DEFAULT_CHECKPOINT
    device: str | None = None


def run_benchmark(settings: BenchmarkSettings, console: Console | None = None) -> dict[str, Any]:
    """Run the whole protocol; returns the report (also written as benchmark.json / benchmark.md in the workdir)."""
    console = console or Console()
    spec = _checked(settings)
    workdir = settings.workdir.resolve()
    timings: dict[str, float] = defaultdict(float)
    with _stage(console, timings, "convert", f"automedsam_convert {settings.dataset} {settings.source}"):
        with _roots(workdir, settings.seeds[0]):
            raw_dir = _converted(spec, settings.source)
    raw = load_raw_dataset(raw_dir, check_images=False)
    labelled, plans = [], {}
    for seed in settings.seeds:
        with _stage(console, timings, "plan_and_preprocess",
                    f"automedsam_plan_and_preprocess -d {spec.dataset_id} --shots {SHOTS} --seed {seed}"):
            with _roots(workdir, seed):
                _reuse_fingerprint(workdir, settings.seeds[0], seed, raw.name)
                summary = plan_and_preprocess(spec.dataset_id, shots=SHOTS, seed=seed, device=settings.device)
                console.print(summary.line())
                labelled += load_json(summary.out_dir / "splits.json", "splits")["labelled"]
                plans[seed] = Plans.load(summary.out_dir / "plans.json", "plans")
    test = write_held_out_set(choose_held_out_cases(raw, labelled, settings.test_images), workdir / "test")
    foundation = plans[settings.seeds[0]].build_foundation_model(device=settings.device)
    scores: dict[str, dict[int, dict[int, float]]] = {}
    with _stage(console, timings, "test_embeddings", f"encode {len(test.cases)} test images once"):
        for seed in settings.seeds:
            encode_held_out_set(test.cases, plans[seed], embedding_cache(test.images.parent, plans[seed]), foundation)
    with _stage(console, timings, "reference", f"automedsam_predict -i {test.images} -o ... --boxes {test.boxes}"):
        with _roots(workdir, settings.seeds[0]):
            reference = _box_reference(test, spec, settings.device)
            scores[REFERENCE] = {seed: reference for seed in settings.seeds}
    for variant in settings.variants:
        scores[variant] = {}
        for seed in settings.seeds:
            with _roots(workdir, seed):
                with _stage(console, timings, f"train {variant}",
                            f"automedsam_train {spec.dataset_id} 0..4 --trainer {variant} (seed {seed})"):
                    folds = _train_folds(spec, variant, settings)
                with _stage(console, timings, f"predict {variant}", f"5-fold ensemble on {len(test.cases)} images"):
                    scores[variant][seed] = _ensemble_scores(test, plans[seed], foundation, raw.name, variant,
                                                             folds, settings.checkpoint)
    labels = {int(v): k for k, v in raw.labels.items() if int(v) != 0}
    regimes = sorted({plan.get("protocol", {}).get("regime", "an unrecorded regime") for plan in plans.values()})
    report = accuracy_table(scores, labels, dict(timings), _describe(settings, test, raw.name, regimes))
    write_report(report, workdir)
    return report


def _checked(settings: BenchmarkSettings) -> DatasetSpec:
    if settings.dataset not in DATASETS:
        raise AutomedsamError(f"Unknown benchmark dataset '{settings.dataset}'; choose one of {', '.join(DATASETS)}.")
    unknown = [name for name in settings.variants if name not in TRAINER_VARIANTS]
    if unknown:
        raise AutomedsamError(f"--variants {', '.join(unknown)} unknown; choose among {', '.join(TRAINER_VARIANTS)}.")
    if not settings.seeds or len(set(settings.seeds)) != len(settings.seeds) or min(settings.seeds) < 0:
        raise AutomedsamError(f"--seeds must be distinct whole numbers >= 0, got {settings.seeds}.")
    if settings.checkpoint not in ("best", "final"):
        raise AutomedsamError(f"--checkpoint must be best or final, got {settings.checkpoint!r}.")
    return DATASETS[settings.dataset]


def _roots(workdir: Path, seed: int) -> ContextManager[None]:
    """The AUTOMEDSAM_* roots in the workdir: raw shared, preprocessed and results per seed."""
    return roots_at({"raw": workdir / "raw", "preprocessed": workdir / f"seed_{seed}" / "preprocessed",
                     "results": workdir / f"seed_{seed}" / "results"})


@contextmanager
def _stage(console: Console, timings: dict[str, float], name: str, command: str) -> Iterator[None]:
    console.rule(f"[bold]{command}", align="left")
    began = time.perf_counter()
    yield
    timings[name] += time.perf_counter() - began


def _converted(spec: DatasetSpec, source: Path) -> Path:
    """The raw dataset in the workdir, converted on the first run only."""
    existing = Path(os.environ["AUTOMEDSAM_RAW"]) / dataset_folder_name(spec.dataset_id, spec.name)
    if (existing / "dataset.json").is_file():
        return existing
    return spec.convert(source, spec.dataset_id, name=spec.name)


def _reuse_fingerprint(workdir: Path, first_seed: int, seed: int, name: str) -> None:
    """The fingerprint does not depend on the seed: later seeds start from the first seed's (it is rechecked)."""
    source = workdir / f"seed_{first_seed}" / "preprocessed" / name / "fingerprint.json"
    target = preprocessed_dataset_dir(name) / "fingerprint.json"
    if seed != first_seed and source.is_file() and not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)


def _box_reference(test: HeldOutSet, spec: DatasetSpec, device: str | None) -> dict[int, float]:
    """The frozen model prompted with the true tight boxes of every test image: the same for every seed."""
    output = test.images.parent / "box_prompted"
    predict(test.images, output, dataset=spec.dataset_id, boxes=test.boxes, device=device)
    written = {path.name.split(".")[0]: path for path in output.iterdir()}
    return _mean_dice({case.case_id: read_segmentation(written[case.case_id])[0] for case in test.cases}, test)


def _train_folds(spec: DatasetSpec, variant: str, settings: BenchmarkSettings) -> list[int]:
    """Train the 5 folds of a seed (a fold finished with the same epochs is kept); returns the fold numbers."""
    splits = load_json(preprocessed_dataset_dir(_dataset_name(spec)) / "splits.json", "splits")
    folds = list(range(len(splits["folds"])))
    _drop_stale_results(spec, variant)
    for fold in folds:
        if not _finished(spec, variant, fold, settings.epochs):
            train_fold(spec.dataset_id, fold, trainer=variant, epochs=settings.epochs, overwrite=True,
                       device=settings.device)
    return folds


def _drop_stale_results(spec: DatasetSpec, variant: str) -> None:
    """Delete the variant's results when they were trained with other plans (the seed was replanned): they live in
    the benchmark's own workdir and no longer answer the question the benchmark asks."""
    plans = load_json(preprocessed_dataset_dir(_dataset_name(spec)) / "plans.json", "plans")
    folder = trainer_output_dir(_dataset_name(spec), variant, plans)
    trained = folder / "plans.json"
    if trained.is_file() and not _same_choices(load_json(trained, "plans"), plans):
        shutil.rmtree(folder)


def _same_choices(trained: Any, current: Any) -> bool:
    """Equal plans once their "reason" texts are set aside: a reworded reason trains nothing differently."""
    return without_reasons(trained) == without_reasons(current)


def _finished(spec: DatasetSpec, variant: str, fold: int, epochs: int | None) -> bool:
    name = _dataset_name(spec)
    plans = load_json(preprocessed_dataset_dir(name) / "plans.json", "plans")
    model_dir = trainer_output_dir(name, variant, plans)
    fold_dir = model_dir / fold_dir_name(fold)
    if not metadata_path(fold_dir, "final").is_file() or not (model_dir / "plans.json").is_file():
        return False
    wanted = epochs if epochs is not None else TRAINER_VARIANTS[variant].configure(plans).epochs
    return (_same_choices(load_json(model_dir / "plans.json", "plans"), plans)
            and load_metadata(fold_dir, "final")["config"]["epochs"] == wanted)


def _ensemble_scores(test: HeldOutSet, plans: Plans, foundation: FoundationModel, name: str, variant: str,
                     folds: Sequence[int], checkpoint: str) -> dict[int, float]:
    """Predict every test case from its cached embeddings with the variant's 5-fold ensemble; Dice per label."""
    folder = open_model_folder(trainer_output_dir(name, variant, plans), folds=list(folds), checkpoint=checkpoint)
    modules = [load_modules(folder.load_state(fold), folder.plans, where=str(folder.checkpoint_path(fold)))
               for fold in folder.folds]
    predictor = Predictor(foundation, folder.plans, modules, refined_labels=refined_labels(folder))
    cache = embedding_cache(test.images.parent, plans)
    predictions = {}
    for case in test.cases:
        embeddings, shape, is_volume = case_embeddings(case, plans, cache)
        predictions[case.case_id] = predictor.predict_embeddings(embeddings, shape, is_volume)[0]
    return _mean_dice(predictions, test)


def _mean_dice(predictions: dict[str, np.ndarray], test: HeldOutSet) -> dict[int, float]:
    """Per label, the mean over test cases of the case's Dice (cases where the label is absent in both skipped)."""
    per_label: dict[int, list[float]] = defaultdict(list)
    for case in test.cases:
        reference = read_segmentation(case.label)[0]
        prediction = predictions[case.case_id]
        for label in (int(v) for v in np.unique(reference) if v != 0):
            per_label[label].append(dice(reference == label, prediction == label))
    return {label: float(np.nanmean(values)) for label, values in sorted(per_label.items())}


def _dataset_name(spec: DatasetSpec) -> str:
    return dataset_folder_name(spec.dataset_id, spec.name)


def _describe(settings: BenchmarkSettings, test: HeldOutSet, name: str, regimes: list[str]) -> dict[str, Any]:
    return {"dataset": name, "source": str(settings.source), "seeds": settings.seeds, "variants": settings.variants,
            "shots": SHOTS, "protocol": " and ".join(regimes), "folds": 5, "epochs": settings.epochs or "planned", "checkpoint": settings.checkpoint,
            "test_cases": [case.case_id for case in test.cases], "device": settings.device or "auto"}
