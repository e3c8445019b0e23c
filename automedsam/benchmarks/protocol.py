"""The few-shot accuracy benchmark: convert, plan, train, predict and evaluate a dataset under the protocol.

Protocol (issue 7): 10 labelled 2D samples chosen per seed and selection method (`--select`: random, or a coverage
order of the frozen model's embeddings, diverse or kmeanspp; planned under the strict few-shot protocol: nothing
label-derived from outside their boxes, plans.json `protocol`), 5 folds, each variant's 5-fold ensemble predicts
test images that no seed and no method labelled (every seed and method is planned before they are chosen, so all
are measured on the same images); the reference is the frozen model prompted with the true tight box on every test
image (what `automedsam_predict --boxes` does), under the current plans of one run chosen whatever the order of
--seeds and --select (the smallest random seed: its boxes per region or per label, its normalisation and encoder
precision, recorded in benchmark.json), from that run's cached test embeddings. Every seed and method has its own
preprocessed and results roots under the workdir (`seed_S` for random, `seed_S_METHOD` for the others); the raw data,
the test set and the test embeddings are shared, and so are the candidates' pooled features and embeddings a coverage
selection computes (encoded by the first seed, adopted by the others). Cached embeddings are reused, and so is a
finished fold trained as training would train it now (plans, trainer configuration, precision on the device, samples),
so a rerun only does what is missing; benchmark.json names the folds reused.
Beside each mean, the tail (benchmarks.tails): 10th percentile, images missed, the five worst with overlays.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterator, Sequence

import numpy as np
import torch
from rich.console import Console

from automedsam.benchmarks.accuracy_report import accuracy_table, write_report
from automedsam.benchmarks.held_out import (HeldOutSet, case_embeddings, case_slices, choose_held_out_cases,
                                            embedding_cache, encode_held_out_set, slice_embedding,
                                            write_held_out_set)
from automedsam.benchmarks.tails import case_dice, draw_worst, label_means, object_size, summary_line, tail_row
from automedsam.checkpoint import load_metadata, metadata_path
from automedsam.conversion import convert_acdc, convert_folder, convert_hc18
from automedsam.dataset import load_raw_dataset
from automedsam.device import resolve_device
from automedsam.errors import AutomedsamError
from automedsam.files import load_json, save_json
from automedsam.folds import SPLITS_FILE, fold_dir_name
from automedsam.foundation.base import FoundationModel
from automedsam.foundation.cache import EmbeddingCache
from automedsam.inference import Predictor
from automedsam.inference.box_prompted import BoxPredictor, PlaneEmbedding, check_case_boxes, read_prompt_boxes
from automedsam.inference.predictor import refined_labels, second_look_sizes
from automedsam.inference.model_folder import DEFAULT_CHECKPOINT, open_model_folder
from automedsam.io import is_supported, read_image, read_segmentation
from automedsam.paths import dataset_folder_name, preprocessed_dataset_dir, roots_at
from automedsam.planning.plan_and_preprocess import MAX_SEED, plan_and_preprocess
from automedsam.planning.planner import SELECTION_METHODS
from automedsam.planning.preprocessing import adopt_embeddings
from automedsam.planning.selection_features import adopt_features
from automedsam.plans import Plans, without_reasons
from automedsam.prompt_module import load_modules
from automedsam.samples import sample_id
from automedsam.training import TRAINER_VARIANTS, train_fold
from automedsam.training.layout import trainer_output_dir
from automedsam.training.loop import training_autocast

REFERENCE = "box_prompted"
SHOTS = 10
NO_SELECTION = "-"  # the reference's selection column: it labels nothing
WORST_FOLDER = "worst"  # overlays of each run's five worst test images
SOURCE_FILE = "benchmark_sources.json"  # beside the workdir's raw datasets: the folder each was converted from
DDTI_LABEL = "nodule"
DDTI_GROUP_PATTERN = r"ddti_(\d+)_"  # ddti_CASE_K.png: the frames K of one case share a fold
TRAINING_PRECISION = "auto"  # what the benchmark trains its folds in (train_fold's default)


@dataclass(frozen=True)
class DatasetSpec:
    dataset_id: int
    name: str
    convert: Callable[..., Path]


def convert_ddti(source: Path, dataset_id: int, *, name: str) -> Path:
    """A DDTI thyroid release folder (images/, masks/: ddti_CASE_K.png) as a user would import it."""
    _check_ddti_release(source)
    return convert_folder(source / "images", masks=source / "masks", dataset_id=dataset_id, name=name,
                          label_names=[DDTI_LABEL], group_pattern=DDTI_GROUP_PATTERN)


def _check_ddti_release(source: Path) -> None:
    """Refuse a folder that is not a DDTI release in the benchmark's words: convert_folder's own errors tell the user
    to check automedsam_convert's --images and --masks, options the benchmark does not have."""
    missing = [f"{sub}/" for sub in ("images", "masks") if not (source / sub).is_dir()]
    if not missing and not any(is_supported(path) for path in (source / "images").iterdir()):
        missing = ["images in images/"]
    if missing:
        raise AutomedsamError(f"{source} is not a DDTI thyroid release folder: it holds no {' and no '.join(missing)}. "
                              "Point SRC at the folder holding images/ and masks/ (ddti_CASE_K.png).")


DATASETS = {"hc18": DatasetSpec(501, "HC18", convert_hc18), "acdc": DatasetSpec(502, "ACDC", convert_acdc),
            "thyroid": DatasetSpec(503, "THYROID", convert_ddti)}


def convert_command(dataset: str, source: Path) -> str:
    """The automedsam_convert command that converts `source` as the benchmark does, for the stage's header: DDTI has
    no subcommand of its own, its folders are imported as a user would with `folder`."""
    spec = DATASETS[dataset]
    named = f"-d {spec.dataset_id} -n {spec.name}"
    if spec.convert is convert_ddti:
        return (f"automedsam_convert folder --images {shlex.quote(str(source / 'images'))} --masks "
                f"{shlex.quote(str(source / 'masks'))} {named} --label {DDTI_LABEL} --group-pattern "
                f"{shlex.quote(DDTI_GROUP_PATTERN)}")
    return f"automedsam_convert {dataset} {shlex.quote(str(source))} {named}"


@dataclass
class BenchmarkSettings:
    dataset: str
    source: Path
    workdir: Path
    seeds: list[int] = field(default_factory=lambda: [0])
    variants: list[str] = field(default_factory=lambda: ["default", "paper2024", "fullsup"])
    test_images: int = 50
    selections: list[str] = field(default_factory=lambda: ["random"])
    epochs: int | None = None
    checkpoint: str = DEFAULT_CHECKPOINT
    device: str | None = None


def run_benchmark(settings: BenchmarkSettings, console: Console | None = None) -> dict[str, Any]:
    """Run the whole protocol; returns the report (also written as benchmark.json / benchmark.md in the workdir)."""
    console = console or Console()
    spec = _checked(settings)
    workdir = settings.workdir.resolve()
    timings: dict[str, float] = defaultdict(float)
    runs = [(seed, method) for method in settings.selections for seed in settings.seeds]
    reference_run = _reference_run(runs)
    training_precision = _training_precision(resolve_device(settings.device))
    with _stage(console, timings, "convert", convert_command(settings.dataset, settings.source)):
        with _roots(workdir, *runs[0]):
            raw_dir = _converted(spec, settings.source)
    raw = load_raw_dataset(raw_dir, check_images=False)
    labelled, plans = [], {}
    for seed, method in runs:
        with _stage(console, timings, "plan_and_preprocess", f"automedsam_plan_and_preprocess -d {spec.dataset_id} "
                    f"--shots {SHOTS} --seed {seed} --select {method}"):
            with _roots(workdir, seed, method):
                _reuse_fingerprint(workdir, _folder(*runs[0]), raw.name)
                if method != "random":
                    _share_candidate_embeddings(workdir, _folder(settings.seeds[0], method), raw.name,
                                                plans.get((settings.seeds[0], method)))
                summary = plan_and_preprocess(spec.dataset_id, shots=SHOTS, seed=seed, select=method,
                                              device=settings.device)
                console.print(summary.line())
                labelled += load_json(summary.out_dir / SPLITS_FILE, "splits")["labelled"]
                plans[seed, method] = Plans.load(summary.out_dir / "plans.json", "plans")
    test = write_held_out_set(choose_held_out_cases(raw, labelled, settings.test_images), workdir / "test",
                              per_component={int(target["label"]): bool(target["per_component"])
                                             for target in plans[reference_run].targets})
    built: dict[str, FoundationModel] = {}

    def foundation(run: tuple[int, str]) -> FoundationModel:
        """The run's model in its planned precision (seeds may plan differently): its test embeddings and its
        ensemble's decoding are its own."""
        section = without_reasons(plans[run]["foundation_model"])
        key = json.dumps({name: value for name, value in section.items() if name != "precision_check"}, sort_keys=True)
        if key not in built:
            built[key] = plans[run].build_foundation_model(device=settings.device)
        return built[key]

    references = {case.case_id: read_segmentation(case.label)[0] for case in test.cases}
    sizes = {case: object_size(reference) for case, reference in references.items()}
    images = {case.case_id: case.image for case in test.cases}
    scores: dict[tuple[str, str], dict[int, dict[int, float]]] = {}
    tails: list[dict[str, Any]] = []

    def scored(predictions: dict[str, np.ndarray], method: str, selection: str, seed: int | str) -> dict[int, float]:
        per_case = case_dice(predictions, references)
        tails.append(tail_row(method, selection, seed, per_case, sizes))
        draw_worst(tails[-1], images, predictions, references,
                   workdir / WORST_FOLDER / f"{method}_{selection if selection != NO_SELECTION else 'box'}_seed{seed}")
        console.print(summary_line(tails[-1]))
        return label_means(per_case)

    with _stage(console, timings, "test_embeddings", f"encode {len(test.cases)} test images once"):
        for run in runs:
            encode_held_out_set(test.cases, plans[run], embedding_cache(test.images.parent, plans[run]),
                                foundation(run))
    with _stage(console, timings, "reference", f"the frozen model prompted with the boxes of {test.boxes} under "
                f"{_folder(*reference_run)}'s plans (automedsam_predict --boxes)"):
        reference = scored(_box_reference(test, plans[reference_run], foundation(reference_run)), REFERENCE,
                           NO_SELECTION, "all")
        scores[REFERENCE, NO_SELECTION] = {seed: reference for seed in settings.seeds}
    reused: dict[str, dict[str, list[int]]] = defaultdict(dict)
    for variant in settings.variants:
        for seed, method in runs:
            with _roots(workdir, seed, method):
                with _stage(console, timings, f"train {variant}", f"automedsam_train {spec.dataset_id} 0..4 "
                            f"--trainer {variant} (seed {seed}, --select {method})"):
                    folds, reused[variant][_folder(seed, method)] = _train_folds(spec, variant, settings,
                                                                                 precision=training_precision)
                with _stage(console, timings, f"predict {variant}", f"5-fold ensemble on {len(test.cases)} images"):
                    predictions = _ensemble_predictions(test, plans[seed, method], foundation((seed, method)),
                                                        raw.name, variant, folds, settings.checkpoint)
                scores.setdefault((variant, method), {})[seed] = scored(predictions, variant, method, seed)
    labels = {int(v): k for k, v in raw.labels.items() if int(v) != 0}
    regimes = sorted({plan.get("protocol", {}).get("regime", "an unrecorded regime") for plan in plans.values()})
    description = {**_describe(settings, test, raw.name, regimes),
                   **_precisions(plans, reference_run, settings.device), "training_precision": training_precision,
                   "reused_folds": dict(reused)}
    report = accuracy_table(scores, labels, dict(timings), description, tails=tails)
    write_report(report, workdir)
    return report


def _checked(settings: BenchmarkSettings) -> DatasetSpec:
    if settings.dataset not in DATASETS:
        raise AutomedsamError(f"Unknown benchmark dataset '{settings.dataset}'; choose one of {', '.join(DATASETS)}.")
    unknown = [name for name in settings.variants if name not in TRAINER_VARIANTS]
    if unknown or not settings.variants or len(set(settings.variants)) != len(settings.variants):
        raise AutomedsamError(f"--variants must name distinct trainer variants among {', '.join(TRAINER_VARIANTS)}, "
                              f"got {', '.join(settings.variants) or 'none'}.")
    if (not settings.seeds or len(set(settings.seeds)) != len(settings.seeds) or min(settings.seeds) < 0
            or max(settings.seeds) > MAX_SEED):
        raise AutomedsamError(f"--seeds must be distinct whole numbers from 0 to {MAX_SEED}, got {settings.seeds}.")
    unknown = [name for name in settings.selections if name not in SELECTION_METHODS]
    if unknown or not settings.selections or len(set(settings.selections)) != len(settings.selections):
        raise AutomedsamError(f"--select must name distinct methods among {', '.join(SELECTION_METHODS)}, got "
                              f"{', '.join(settings.selections) or 'none'}.")
    if settings.test_images < 1:
        raise AutomedsamError(f"--test-images must be at least 1, got {settings.test_images}.")
    if settings.checkpoint not in ("best", "final"):
        raise AutomedsamError(f"--checkpoint must be best or final, got {settings.checkpoint!r}.")
    resolve_device(settings.device)
    return DATASETS[settings.dataset]


def _reference_run(runs: Sequence[tuple[int, str]]) -> tuple[int, str]:
    """The run whose plans the true-box reference follows (boxes per region or per label, encoder precision): the
    smallest random seed, else the smallest seed of the first method by name, whatever the order of --seeds and
    --select, so that the same runs give the same reference row."""
    return min(runs, key=lambda run: (run[1] != "random", run[1], run[0]))


def _folder(seed: int, method: str) -> str:
    """A seed's folder: `seed_S` for the random draw (the layout from before --select), `seed_S_METHOD` else."""
    return f"seed_{seed}" if method == "random" else f"seed_{seed}_{method}"


def _roots(workdir: Path, seed: int, method: str) -> ContextManager[None]:
    """The AUTOMEDSAM_* roots in the workdir: raw shared, preprocessed and results per seed and selection method."""
    folder = workdir / _folder(seed, method)
    return roots_at({"raw": workdir / "raw", "preprocessed": folder / "preprocessed", "results": folder / "results"})


@contextmanager
def _stage(console: Console, timings: dict[str, float], name: str, command: str) -> Iterator[None]:
    console.rule(f"[bold]{command}", align="left")
    began = time.perf_counter()
    yield
    timings[name] += time.perf_counter() - began


def _converted(spec: DatasetSpec, source: Path) -> Path:
    """The raw dataset in the workdir, converted on the first run only; a workdir holding another source's (the
    tune part's when the report part is asked for) is refused rather than measured under the wrong name."""
    raw_root = Path(os.environ["AUTOMEDSAM_RAW"])
    existing = raw_root / dataset_folder_name(spec.dataset_id, spec.name)
    record = raw_root / SOURCE_FILE
    sources = load_json(record, "benchmark sources") if record.is_file() else {}
    wanted = str(source.resolve())
    if (existing / "dataset.json").is_file():
        converted_from = sources.get(existing.name)
        if converted_from is None:  # a workdir from before sources were recorded: taken to be the run that made it
            save_json(record, {**sources, existing.name: wanted})
        elif converted_from != wanted:
            raise AutomedsamError(f"The workdir {raw_root.parent} holds {existing.name} converted from "
                                  f"{converted_from}, not from {wanted}: give another --workdir for another source "
                                  f"(if only the folder moved, edit {record}).")
        return existing
    converted = spec.convert(source, spec.dataset_id, name=spec.name)
    save_json(record, {**sources, existing.name: wanted})
    return converted


def _reuse_fingerprint(workdir: Path, first_folder: str, name: str) -> None:
    """The fingerprint depends on neither seed nor method: the others start from the first seed's (rechecked)."""
    source = workdir / first_folder / "preprocessed" / name / "fingerprint.json"
    target = preprocessed_dataset_dir(name) / "fingerprint.json"
    if source.is_file() and not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)


def _share_candidate_embeddings(workdir: Path, first_folder: str, name: str, first_plans: Plans | None) -> None:
    """The candidates' pooled features and embeddings the method's first seed computed serve the later seeds: each
    training image is encoded once per workdir, not once per seed, whichever precision preprocessing planned (the
    key checks of selection and preprocessing still apply)."""
    source = workdir / first_folder / "preprocessed" / name
    if first_plans is not None and source != preprocessed_dataset_dir(name):
        adopt_features(source, preprocessed_dataset_dir(name))
        adopt_embeddings(source, preprocessed_dataset_dir(name), first_plans.foundation_name)


def _box_reference(test: HeldOutSet, plans: Plans, foundation: FoundationModel) -> dict[str, np.ndarray]:
    """The frozen model prompted with the true tight boxes of every test image (the same for every seed), under the
    reference run's current `plans` and from its cached test embeddings: label maps per case. Not through
    automedsam_predict -d, which takes a trained model's plans where the results root holds one: after a replan, the
    old model's normalisation and precision, until its folds are trained again."""
    predictor = BoxPredictor(foundation, plans)
    cache = embedding_cache(test.images.parent, plans)
    entries = read_prompt_boxes(test.boxes)
    references = {}
    for case in test.cases:
        image, geometry = read_image(case.image)
        is_volume = geometry.ndim == 3
        checked = check_case_boxes(entries[case.case_id], image.shape, is_volume=is_volume,
                                   where=f"box file {test.boxes}, case '{case.case_id}'")
        references[case.case_id] = predictor.predict_array(
            image, checked, is_volume, embedding_of=_cached_plane(case.case_id, plans, cache, is_volume=is_volume))
    return references


def _cached_plane(case_id: str, plans: Plans, cache: EmbeddingCache, *, is_volume: bool) -> PlaneEmbedding | None:
    """A boxed plane's cached test embedding: box slices index a volume's first axis, the cached samples the planned
    one, so a volume sliced along another axis is encoded (None)."""
    if is_volume and plans.slicing_axis != 0:
        return None
    return lambda slice_index, plane: slice_embedding(cache, sample_id(case_id, slice_index))[None]


def _train_folds(spec: DatasetSpec, variant: str, settings: BenchmarkSettings, *,
                 precision: str) -> tuple[list[int], list[int]]:
    """Train the 5 folds of a seed, keeping those finished as they would train now (`precision`: what training
    chooses on the device); returns the fold numbers and the folds kept."""
    splits = load_json(preprocessed_dataset_dir(_dataset_name(spec)) / SPLITS_FILE, "splits")
    folds = list(range(len(splits["folds"])))
    _drop_stale_results(spec, variant)
    _adopt_current_plans(spec, variant)
    kept = [fold for fold in folds if _finished(spec, variant, fold, epochs=settings.epochs, precision=precision)]
    for fold in folds:
        if fold not in kept:
            train_fold(spec.dataset_id, fold, trainer=variant, epochs=settings.epochs, overwrite=True,
                       device=settings.device, precision=TRAINING_PRECISION)
    return folds, kept


def _drop_stale_results(spec: DatasetSpec, variant: str) -> None:
    """Delete the variant's results when they were trained with other plans (the seed was replanned): they live in
    the benchmark's own workdir and no longer answer the question the benchmark asks."""
    plans = load_json(preprocessed_dataset_dir(_dataset_name(spec)) / "plans.json", "plans")
    folder = trainer_output_dir(_dataset_name(spec), variant, plans)
    trained = folder / "plans.json"
    if trained.is_file() and not _same_choices(load_json(trained, "plans"), plans):
        shutil.rmtree(folder)


def _adopt_current_plans(spec: DatasetSpec, variant: str) -> None:
    """Give the variant's kept results the current plans when theirs differ only in what `_same_choices` sets aside:
    train_fold compares every key, and training a missing fold would move the whole model, its finished folds with
    it, to previous/."""
    plans = load_json(preprocessed_dataset_dir(_dataset_name(spec)) / "plans.json", "plans")
    trained = trainer_output_dir(_dataset_name(spec), variant, plans) / "plans.json"
    if not trained.is_file():
        return
    recorded = load_json(trained, "plans")
    if _same_choices(recorded, plans) and without_reasons(recorded) != without_reasons(plans):
        save_json(trained, plans)


def _same_choices(trained: Any, current: Any) -> bool:
    """Equal plans once their "reason" texts and their `selection` and `second_look` sections are set aside: a
    reworded reason trains nothing differently, how the samples were chosen lives in splits.json, which is redrawn
    identically per seed and method (a random seed's folds trained before plans recorded the selection are reused),
    and the second look acts at prediction only (a fold trained before it has no check, so `auto` leaves it off)."""
    return _training_choices(trained) == _training_choices(current)


def _training_choices(plans: Any) -> Any:
    return without_reasons({key: value for key, value in plans.items() if key not in ("selection", "second_look")})


def _finished(spec: DatasetSpec, variant: str, fold: int, *, epochs: int | None, precision: str) -> bool:
    """A fold trained as it would train now: with these plans' choices, the trainer's configuration for these
    epochs (losses and schedule, some of them constants in code), in `precision`, on the samples splits.json gives
    it now. Otherwise one ensemble would mix folds trained differently, and a fold of an earlier draw may have
    trained on an image that is a test image now."""
    name = _dataset_name(spec)
    plans = load_json(preprocessed_dataset_dir(name) / "plans.json", "plans")
    model_dir = trainer_output_dir(name, variant, plans)
    fold_dir = model_dir / fold_dir_name(fold)
    if not metadata_path(fold_dir, "final").is_file() or not (model_dir / "plans.json").is_file():
        return False
    metadata = load_metadata(fold_dir, "final")
    split = load_json(preprocessed_dataset_dir(name) / SPLITS_FILE, "splits")["folds"][fold]
    return (_same_choices(load_json(model_dir / "plans.json", "plans"), plans)
            and metadata.get("config") == _training_config(plans, variant, epochs)
            and metadata.get("precision") == precision
            and metadata.get("samples") == {"train": split["train"], "val": split["val"]})


def _training_config(plans: dict[str, Any], variant: str, epochs: int | None) -> dict[str, Any]:
    """The configuration train_fold records for the variant and --epochs, as the fold's JSON metadata holds it."""
    config = TRAINER_VARIANTS[variant].configure(plans)
    if epochs is not None:
        config = config.with_epochs(epochs)
    return json.loads(json.dumps(config.to_json()))


def _training_precision(device: torch.device) -> str:
    """What the folds train in on `device`, named as a fold's metadata records it: `auto` changes with the device
    (bf16 on a GPU or a CPU with bf16 arithmetic, else fp32)."""
    names = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
    return names[training_autocast(device, TRAINING_PRECISION)]


def _ensemble_predictions(test: HeldOutSet, plans: Plans, foundation: FoundationModel, name: str, variant: str,
                          folds: Sequence[int], checkpoint: str) -> dict[str, np.ndarray]:
    """Predict every test case from its cached embeddings with the variant's 5-fold ensemble: label maps per case."""
    folder = open_model_folder(trainer_output_dir(name, variant, plans), folds=list(folds), checkpoint=checkpoint)
    modules = [load_modules(folder.load_state(fold), folder.plans, where=str(folder.checkpoint_path(fold)))
               for fold in folder.folds]
    predictor = Predictor(foundation, folder.plans, modules, refined_labels=refined_labels(folder),
                          second_look=second_look_sizes(folder))
    cache = embedding_cache(test.images.parent, plans)
    predictions = {}
    for case in test.cases:
        embeddings, shape, is_volume = case_embeddings(case, plans, cache)
        slices = (np.stack([plane for _, plane in case_slices(case, plans)[1]]) if predictor.second_look else None)
        predictions[case.case_id] = predictor.predict_embeddings(embeddings, shape, is_volume, slices=slices)[0]
    return predictions


def _dataset_name(spec: DatasetSpec) -> str:
    return dataset_folder_name(spec.dataset_id, spec.name)


def _precisions(plans: dict[tuple[int, str], Plans], reference_run: tuple[int, str],
                device: str | None) -> dict[str, Any]:
    """The encoder precision each run planned (seeds may plan differently) and the reference's, with the run whose
    plans the reference follows: a row is read knowing what it was computed in."""
    precisions = {_folder(*run): plan.planned_precision(device) for run, plan in plans.items()}
    return {"reference_run": _folder(*reference_run),
            "encoder_precision": {REFERENCE: precisions[_folder(*reference_run)], **precisions}}


def _describe(settings: BenchmarkSettings, test: HeldOutSet, name: str, regimes: list[str]) -> dict[str, Any]:
    return {"dataset": name, "source": str(settings.source), "seeds": settings.seeds, "variants": settings.variants,
            "selections": settings.selections, "shots": SHOTS, "protocol": " and ".join(regimes), "folds": 5,
            "epochs": settings.epochs or "planned", "checkpoint": settings.checkpoint,
            "test_cases": [case.case_id for case in test.cases], "device": str(resolve_device(settings.device))}
