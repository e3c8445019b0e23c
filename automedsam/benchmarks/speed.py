"""Speed benchmark on real data: prediction, preprocessing and training measured against the encoder alone.

One encoder pass per 2D image is the pipeline's physical limit, so each figure is a ratio to the encoder alone on
the same images (same precision, same device), measured in the same run and, where possible, image by image in
turn, so that a busy machine slows both sides alike. Parts: (a) predict with 5 folds and every target vs the
encoder, image by image and through the command's own loop (reading, combining and writing beside the model), with a
breakdown of where the rest goes; (b) plan_and_preprocess vs the encoder for the samples it embeds,
and the fingerprint pass; (c) training one fold of the default plan (10 labelled samples), with a count of files
opened during training steps; (d) peak memory of automedsam_predict for two image counts; (e) bf16 vs fp32 encoder:
time and Dice of the pipeline's predictions; (f) predict vs encoder alone in fp32 and in bf16 (encoder and decoder),
beside the precision the plans chose and their precision check; (g) scale: time per image from the first to the last
of many images predicted in one run (repeated past the held-out ones), its ratio to the encoder alone and its peak
memory; (h) plan_and_preprocess --embed-all on many 2D images (repeated past the release's): images per second and
the ratio to the encoder alone; (i) the encoder's images per second per batch size. On a GPU, parts (a), (b), (c),
(h) and (i) give the peak GPU memory too. Everything runs under temporary AUTOMEDSAM_* roots, on the CPU unless
--device says otherwise. Box refinement and the second look are off throughout: the folds train one epoch, and
what their validation checks would choose for such weights says nothing of a trained model's cost.

Run: python -m automedsam.benchmarks.speed --data ../shared/data
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from rich.console import Console

from automedsam.benchmarks.speed_profile import DiskReads, StageProfile, peak_memory_of_command
from automedsam.benchmarks.speed_workspace import (DATASETS, FOLDS, converted, held_out_cases, input_folder,
                                                   quick_folds, repeated_input_folder, repeated_raw_dataset,
                                                   workspace_roots)
from automedsam.cli.common import run_app
from automedsam.dataset import Case, RawDataset
from automedsam.device import resolve_device
from automedsam.errors import AutomedsamError
from automedsam.evaluation import dice
from automedsam.files import load_json, save_json
from automedsam.foundation.base import FoundationModel, default_batch_size
from automedsam.foundation.cache import PREPROCESSING_STATE_FILE
from automedsam.inference import Predictor, predict
from automedsam.io import is_supported, read_image, read_segmentation
from automedsam.parallel import default_workers
from automedsam.paths import preprocessed_dataset_dir, results_dataset_dir
from automedsam.samples import stored_image
from automedsam.planning.plan_and_preprocess import plan_and_preprocess
from automedsam.plans import Plans
from automedsam.training import train_fold

PARTS = ("a", "b", "c", "d", "e", "f", "g", "h", "i")
PREDICT_TARGET = 1.15
PREPROCESS_TARGET = 1.15
TRAINING_TARGET_S = 180.0
MEMORY_TARGET_MB = 2048.0
EXTRA_PASSES_OFF = {"box_refinement": "off", "second_look": "off"}


@dataclass
class Clock:
    """Wall and process CPU seconds accumulated over the timed blocks."""

    wall: float = 0.0
    cpu: float = 0.0

    @contextmanager
    def running(self) -> Iterator[None]:
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.wall += time.perf_counter() - wall
            self.cpu += time.process_time() - cpu


def say(text: str) -> None:
    print(text, flush=True)


def ratio(numerator: Clock, denominator: Clock) -> str:
    return f"x{numerator.wall / denominator.wall:.2f} wall (x{numerator.cpu / denominator.cpu:.2f} CPU time)"


def gpu_memory_reset(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def gpu_memory(device: str) -> str:
    """'; peak GPU memory ...' since the last gpu_memory_reset, or nothing on a CPU."""
    if torch.device(device).type != "cuda":
        return ""
    return (f"; peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**20:.0f} MB allocated, "
            f"{torch.cuda.max_memory_reserved(device) / 2**20:.0f} MB reserved")


def slices_of(image: np.ndarray, is_volume: bool, axis: int) -> np.ndarray:
    """The 2D images the predictor feeds the encoder, in order: (N, H, W[, 3])."""
    return np.moveaxis(image, axis, 0) if is_volume else image[None]


def encode_timed(foundation: FoundationModel, images: Sequence[np.ndarray], batch_size: int,
                 clock: Clock) -> torch.Tensor:
    """Embeddings of 2D `images`, encoded `batch_size` at a time as the predictor does; only `encode` is timed."""
    prepared = torch.stack([foundation.prepare(image)[0] for image in images])
    parts = []
    for start in range(0, len(prepared), batch_size):
        with clock.running():
            parts.append(foundation.encode(prepared[start:start + batch_size]))
            if foundation.device.type == "cuda":
                torch.cuda.synchronize(foundation.device)
    return torch.cat(parts)


def normalised_slices(predictor: Predictor, case: Case) -> tuple[np.ndarray, bool]:
    image, geometry = read_image(case.image)
    is_volume = geometry.ndim == 3
    return slices_of(predictor.plans.normalise(image), is_volume, predictor.slicing_axis), is_volume


def part_a(raw: RawDataset, model_dir: Path, cases: list[Case], out_dir: Path, args: argparse.Namespace) -> None:
    """(a) predict_file vs the encoder alone, image by image in turn, then the command's own loop over the same
    images, then where predict_file's time goes."""
    gpu_memory_reset(args.device)
    predictor = Predictor.from_folder(model_dir, device=args.device, batch_size=args.batch_size, **EXTRA_PASSES_OFF)
    prompts = len(predictor.labels) * len(predictor.fold_modules)
    encoder, after, full = Clock(), Clock(), Clock()
    slices = 0
    counts = {}
    for index, case in enumerate([cases[0], *cases]):  # the first pass over case 0 only warms up
        stack, is_volume = normalised_slices(predictor, case)
        clocks = (encoder, after, full) if index > 0 else (Clock(), Clock(), Clock())
        embeddings = encode_timed(predictor.foundation, stack, predictor.batch_size, clocks[0])
        with clocks[1].running():
            predictor.predict_embeddings(embeddings, stack.shape[1:3], is_volume, slices=stack)
        with clocks[2].running():
            predictor.predict_file(case.image, out_dir / output_name(case))
        slices += len(stack) if index > 0 else 0
        counts[output_name(case)] = len(stack)
    say(f"(a) automedsam_predict vs encoder alone, {raw.name}: {len(cases)} held-out case(s), {slices} 2D image(s), "
        f"{len(predictor.fold_modules)} folds x {len(predictor.labels)} target(s) = {prompts} prompts per image, "
        f"batch {predictor.batch_size}, {predictor.foundation.precision} on {predictor.foundation.device}"
        f"{gpu_memory(args.device)}")
    say(f"    encoder alone   {encoder.wall / slices:.3f} s per 2D image ({encoder.cpu / slices:.3f} s CPU)")
    say(f"    predict_file    {full.wall / slices:.3f} s per 2D image: {ratio(full, encoder)} "
        f"[target <= x{PREDICT_TARGET}]")
    floor = Clock(encoder.wall + after.wall, encoder.cpu + after.cpu)
    say(f"    encoder + prompt modules + decoder + resize + combine, no file IO: {ratio(floor, encoder)}, i.e. "
        f"x{after.wall / encoder.wall / prompts:.3f} of an encoder pass per prompt")
    if len(cases) > 1:
        per_slice = command_seconds_per_slice(model_dir, cases, out_dir, args, slices=counts)
        say(f"    automedsam_predict's own loop (next images read, finished ones combined and written beside the "
            f"model), between its first and last output: {per_slice:.3f} s per 2D image: "
            f"x{per_slice / (encoder.wall / slices):.2f} wall")
    profile = StageProfile()
    with profile.running():
        predictor.predict_file(cases[0].image, out_dir / output_name(cases[0]))
    say(f"    where predict_file's time goes (cProfile, {cases[0].case_id}): {profile.summary()}")


def command_seconds_per_slice(model_dir: Path, cases: list[Case], out_dir: Path, args: argparse.Namespace, *,
                              slices: dict[str, int]) -> float:
    """Seconds per 2D image of the command's path (inference.run.predict) from its first output to its last, so the
    model's loading and the first image's predicting are left out; `slices`: 2D images per output name."""
    out = out_dir / "command"
    shutil.rmtree(out, ignore_errors=True)
    predict(input_folder(cases, out_dir / "inputs"), out, model_folder=model_dir, device=args.device,
            batch_size=args.batch_size, show_progress=False, **EXTRA_PASSES_OFF)
    finished = sorted((path.stat().st_mtime, path.name) for path in out.iterdir() if is_supported(path))
    return (finished[-1][0] - finished[0][0]) / (sum(slices.values()) - slices[finished[0][1]])


def output_name(case: Case) -> str:
    return case.image.name.replace("_0000.", ".")


def part_b(raw: RawDataset, args: argparse.Namespace) -> None:
    """(b) the fingerprint pass, then a first run's planning and preprocessing vs encoding the same samples alone
    (repeated, best of each)."""
    folder = preprocessed_dataset_dir(raw.name)
    for stale in (folder, results_dataset_dir(raw.name)):  # a reused workspace is measured from scratch too
        shutil.rmtree(stale, ignore_errors=True)
    fingerprint = Clock()
    with fingerprint.running():
        plan_and_preprocess(raw.name, plan_only=True, num_workers=args.num_workers, device=args.device,
                            progress=False)
    foundation, built_in, build = None, None, Clock()  # the encoder alone, the precision it was built in
    preprocessing_runs, encoder_runs = [], []
    gpu_memory_reset(args.device)
    for _ in range(args.repeats):
        for stale in ("samples", "embeddings"):
            shutil.rmtree(folder / stale, ignore_errors=True)
        forget_precision_check(folder)  # every repeat pays it, as each dataset's first preprocessing does
        preprocessing_runs.append(Clock())
        # planned again from the kept fingerprint, as a first run plans and checks the precision
        with preprocessing_runs[-1].running():
            done = plan_and_preprocess(raw.name, num_workers=args.num_workers, device=args.device,
                                       progress=False).preprocessing
        plans = Plans.load(folder / "plans.json", "plans")
        embedded = sorted(path.stem for path in (folder / "embeddings" / plans.foundation_name).glob("*.npy"))
        images = [stored_image(folder, sid) for sid in embedded]  # the labelled samples and their views
        if built_in != plans.planned_precision(args.device):  # the encoder alone in the precision chosen
            built_in = plans.planned_precision(args.device)
            with build.running():
                foundation = plans.build_foundation_model(device=args.device)
            encode_timed(foundation, images[:1], 1, Clock())  # warm-up
        encoder_runs.append(Clock())
        encode_timed(foundation, images, default_batch_size(foundation.device), encoder_runs[-1])
    preprocessing = min(preprocessing_runs, key=lambda clock: clock.wall)
    encoder = min(encoder_runs, key=lambda clock: clock.wall)
    every = ", ".join(f"x{p.wall / e.wall:.2f}" for p, e in zip(preprocessing_runs, encoder_runs))
    say(f"(b) automedsam_plan_and_preprocess, {raw.name}: {len(raw.cases)} cases, -np {args.num_workers}")
    say(f"    fingerprint pass (+ plans, splits): {fingerprint.wall:.1f} s, "
        f"{fingerprint.wall / len(raw.cases) * 1000:.0f} ms per case")
    say(f"    planning again and preprocessing, precision check included ({done['samples_written']} samples written, "
        f"{done['embeddings_computed']} embedded) "
        f"{preprocessing.wall:.1f} s vs encoder alone {encoder.wall:.1f} s (best of {args.repeats}): "
        f"{ratio(preprocessing, encoder)} [target <= x{PREPROCESS_TARGET}]; per run {every}; building the model "
        f"takes {build.wall:.1f} s of it{gpu_memory(args.device)}")


def forget_precision_check(folder: Path) -> None:
    state = folder / PREPROCESSING_STATE_FILE
    if state.is_file():
        save_json(state, {key: value for key, value in load_json(state, "state").items() if key != "precision_check"})


def part_c(raw: RawDataset, args: argparse.Namespace, console: Console) -> None:
    """(c) one fold of the default plan, timed, with the files opened during training steps counted."""
    reads = DiskReads(Path(os.environ["AUTOMEDSAM_PREPROCESSED"]), Path(os.environ["AUTOMEDSAM_RESULTS"]))
    plans = load_json(preprocessed_dataset_dir(raw.name) / "plans.json", "plans")["training"]
    total = Clock()
    gpu_memory_reset(args.device)
    with total.running(), reads.during_training_steps():
        result = train_fold(raw.name, 0, epochs=args.epochs or None, device=args.device, overwrite=True,
                            console=console)
    summary = result.summary
    steps = summary["epochs"] * -(-summary["train_samples"] // int(plans["batch_size"]))
    setup_s = total.wall - summary["time_s"]
    whole = setup_s + summary["time_per_epoch_s"] * plans["epochs"]
    say(f"(c) automedsam_train {raw.name} fold 0, default trainer: {summary['train_samples']} training + "
        f"{summary['val_samples']} validation samples, {summary['epochs']} of the plan's {plans['epochs']} epochs, "
        f"batch {plans['batch_size']} ({steps} steps)")
    say(f"    {total.wall:.1f} s in all: set-up {setup_s:.1f} s, {summary['time_per_epoch_s']:.2f} s per epoch "
        f"(validation every {plans['val_every']} included); the plan's {plans['epochs']} epochs: about "
        f"{whole:.0f} s [target < {TRAINING_TARGET_S:.0f} s]{gpu_memory(args.device)}")
    say(f"    files opened during training steps: {reads.count} {reads.examples()}")


def part_d(runs: list[tuple[str, Path, Path, int]], out_root: Path, args: argparse.Namespace) -> None:
    """(d) peak resident memory of the automedsam_predict command: (what, model folder, inputs, count) per run."""
    say(f"(d) peak memory of automedsam_predict on {args.device}, all folds, one process per run")
    for what, model_dir, folder, count in runs:
        trace = peak_memory_of_command(predict_arguments(folder, out_root / folder.name, model_dir, args,
                                                         "--overwrite"))
        say(f"    {count:>4} {what}: peak resident memory {trace.peak_mb:.0f} MB [target < {MEMORY_TARGET_MB:.0f} "
            f"MB], reached {trace.peak_at(0.25):.0f} MB in the first quarter of the run, {trace.peak_at(0.5):.0f} "
            f"MB by half way; {trace.seconds:.1f} s ({trace.seconds / count:.2f} s per {what[:-1]}, start-up "
            "included)")


def part_e(model_dir: Path, cases: list[Case], args: argparse.Namespace) -> None:
    """(e) bf16 autocast of the encoder vs fp32: encoder time and Dice of fold 0's predictions, image by image."""
    predictor = Predictor.from_folder(model_dir, folds=[0], device=args.device, batch_size=args.batch_size,
                                      **EXTRA_PASSES_OFF)
    encoders = {precision: predictor.plans.build_foundation_model(device=args.device, precision=precision)
                for precision in ("fp32", "bf16")}
    clocks = {precision: Clock() for precision in encoders}
    scores: dict[str, list[float]] = {precision: [] for precision in encoders}
    changed = 0
    for index, case in enumerate([cases[0], *cases]):  # the first pass over case 0 only warms up
        stack, is_volume = normalised_slices(predictor, case)
        reference = read_segmentation(case.label)[0]
        maps = {}
        for precision, foundation in encoders.items():
            embeddings = encode_timed(foundation, stack, predictor.batch_size, clocks[precision] if index else Clock())
            maps[precision] = predictor.predict_embeddings(embeddings, stack.shape[1:3], is_volume, slices=stack)[0]
            if index:
                scores[precision].append(_mean_dice(reference, maps[precision], predictor.labels))
        changed += int(index > 0 and not np.array_equal(maps["fp32"], maps["bf16"]))
    difference = np.subtract(scores["bf16"], scores["fp32"])
    say(f"(e) bf16 vs fp32 encoder: {predictor.plans['dataset_name']} fold 0 ({predictor.foundation.device}) on "
        f"{len(cases)} held-out case(s)")
    for precision, clock in clocks.items():
        say(f"    {precision}: encoder {clock.wall / len(cases):.3f} s per case, Dice mean "
            f"{statistics.mean(scores[precision]):.4f} (min {min(scores[precision]):.4f})")
    say(f"    bf16 speed-up {ratio(clocks['fp32'], clocks['bf16'])}; Dice change mean {difference.mean():+.4f}, "
        f"largest per case {difference[np.argmax(np.abs(difference))]:+.4f}; label maps changed in {changed} of "
        f"{len(cases)} case(s)")


def part_f(model_dir: Path, cases: list[Case], args: argparse.Namespace) -> None:
    """(f) predict / encoder alone in fp32 and in bf16, same images, image by image in turn, beside the precision the
    plans chose and their check's Dice change (box prompts on the labelled samples)."""
    predictors = {precision: Predictor.from_folder(model_dir, device=args.device, batch_size=args.batch_size,
                                                   precision=precision, **EXTRA_PASSES_OFF)
                  for precision in ("fp32", "bf16")}
    section = predictors["fp32"].plans["foundation_model"]
    clocks = {precision: (Clock(), Clock()) for precision in predictors}
    runs: dict[str, list[float]] = {precision: [] for precision in predictors}
    slices = 0
    for index, case in enumerate([cases[0], *cases]):  # the first pass over case 0 only warms up
        for precision, predictor in predictors.items():
            stack, _ = normalised_slices(predictor, case)
            encoder, full = clocks[precision] if index else (Clock(), Clock())
            before = (encoder.wall, full.wall)
            encode_timed(predictor.foundation, stack, predictor.batch_size, encoder)
            with full.running():
                predictor.predict_file(case.image, args.scratch / f"{precision}_{output_name(case)}")
            if index:
                runs[precision].append((full.wall - before[1]) / (encoder.wall - before[0]))
        slices += len(stack) if index else 0
        if index:
            say(f"    {case.case_id}: " + ", ".join(f"{precision} x{runs[precision][-1]:.2f}" for precision in runs))
    check = section.get("precision_check", {})
    prompts = len(predictors["fp32"].labels) * len(predictors["fp32"].fold_modules)
    say(f"(f) predict vs encoder alone per precision, {predictors['fp32'].plans['dataset_name']}: {len(cases)} "
        f"held-out case(s), {slices} 2D image(s), {prompts} prompts per image, on {args.device}")
    for precision, (encoder, full) in clocks.items():
        spread = statistics.quantiles(runs[precision], n=4) if len(runs[precision]) > 1 else runs[precision] * 3
        say(f"    {precision}: encoder {encoder.wall / slices:.3f} s, predict_file {full.wall / slices:.3f} s per 2D "
            f"image: {ratio(full, encoder)}; per image quartiles x{spread[0]:.2f} / x{spread[1]:.2f} / "
            f"x{spread[2]:.2f}")
    say(f"    bf16 vs fp32: encoder x{clocks['fp32'][0].wall / clocks['bf16'][0].wall:.2f} faster, predict_file "
        f"x{clocks['fp32'][1].wall / clocks['bf16'][1].wall:.2f} faster")
    say(f"    planned precision {section.get('precision')}; precision check: "
        f"{ {key: value for key, value in check.items() if key not in ('reason', 'key')} }")


def part_g(model_dir: Path, cases: list[Case], count: int, workdir: Path, args: argparse.Namespace) -> None:
    """(g) scale: one automedsam_predict run over `count` 2D images (the cases repeated where there are fewer); the
    time per image at the start and at the end (from when each output file was written), the peak resident memory,
    and the ratio to the encoder alone, timed on a sample of the same images just before and just after the run."""
    folder = repeated_input_folder(cases, count, workdir / "inputs" / f"scale_{count}")
    out = workdir / "scale"
    shutil.rmtree(out, ignore_errors=True)
    predictor = Predictor.from_folder(model_dir, device=args.device, batch_size=args.batch_size, **EXTRA_PASSES_OFF)
    sample = cases[::max(1, len(cases) // 10)][:10]
    encoder = [encoder_seconds(predictor, case) for case in [sample[0], *sample]][1:]  # the first one warms up
    trace = peak_memory_of_command(predict_arguments(folder, out, model_dir, args))
    encoder += [encoder_seconds(predictor, case) for case in sample]
    finished = np.sort([path.stat().st_mtime for path in out.iterdir() if is_supported(path)])
    gaps = np.diff(finished)
    tenth = max(1, len(gaps) // 10)
    say(f"(g) one automedsam_predict run over {count} 2D images ({len(cases)} distinct) on {args.device}, precision "
        f"{predictor.plans['foundation_model'].get('precision')}: {trace.seconds:.0f} s with start-up; per image "
        f"(between outputs) {np.mean(gaps[:tenth]):.2f} s over the first {tenth}, {np.mean(gaps[-tenth:]):.2f} s over "
        f"the last {tenth}, median {np.median(gaps):.2f} s; encoder alone {np.median(encoder):.2f} s per image "
        f"(median of {len(encoder)}, before and after the run): x{np.median(gaps) / np.median(encoder):.2f} "
        f"[target <= x{PREDICT_TARGET}]; peak resident memory {trace.peak_mb:.0f} MB [target < "
        f"{MEMORY_TARGET_MB:.0f} MB], {trace.peak_at(0.25):.0f} MB in the first quarter")


def part_h(raw: RawDataset, cases: list[Case], count: int, args: argparse.Namespace) -> None:
    """(h) automedsam_plan_and_preprocess --embed-all on `count` 2D images (held-out images repeated under new case
    ids): images per second from the raw files to the cached embeddings, and the ratio to encoding the stored
    samples alone."""
    repeated = repeated_raw_dataset(raw, cases, count, dataset_id=900 + DATASETS["hc18"].dataset_id)
    for stale in (preprocessed_dataset_dir(repeated.name), results_dataset_dir(repeated.name)):
        shutil.rmtree(stale, ignore_errors=True)
    gpu_memory_reset(args.device)
    whole = Clock()
    with whole.running():
        done = plan_and_preprocess(repeated.name, embed_all=True, num_workers=args.num_workers, device=args.device,
                                   progress=False).preprocessing
    memory = gpu_memory(args.device)
    folder = preprocessed_dataset_dir(repeated.name)
    plans = Plans.load(folder / "plans.json", "plans")
    foundation = plans.build_foundation_model(device=args.device)
    images = [stored_image(folder, path.stem) for path in
              sorted((folder / "embeddings" / plans.foundation_name).glob("*.npy"))]
    encode_timed(foundation, images[:1], 1, Clock())  # warm-up
    encoder = Clock()
    encode_timed(foundation, images, default_batch_size(foundation.device), encoder)
    say(f"(h) automedsam_plan_and_preprocess --embed-all, {count} 2D images ({len(cases)} distinct) on {args.device}, "
        f"precision {plans['foundation_model'].get('precision')}, -np {args.num_workers}: {whole.wall:.1f} s "
        f"({count / whole.wall:.1f} images per second; {done['samples_written']} samples written, "
        f"{done['embeddings_computed']} embedded); encoder alone on the {len(images)} stored samples "
        f"{encoder.wall:.1f} s ({len(images) / encoder.wall:.1f} per second): {ratio(whole, encoder)}{memory}")


def part_i(predictor_dir: Path, cases: list[Case], args: argparse.Namespace) -> None:
    """(i) the encoder's images per second per batch size, on the same held-out images (repeated to fill the
    largest batch), in the planned precision."""
    predictor = Predictor.from_folder(predictor_dir, folds=[0], device=args.device)
    stack = np.concatenate([normalised_slices(predictor, case)[0] for case in cases])
    images = [stack[index % len(stack)] for index in range(max(args.encoder_batches) * 2)]
    say(f"(i) encoder alone per batch size, {len(images)} 2D images, {predictor.foundation.precision} on "
        f"{args.device}")
    for batch in args.encoder_batches:
        encode_timed(predictor.foundation, images[:batch], batch, Clock())  # warm-up at this shape
        gpu_memory_reset(args.device)
        clock = Clock()
        encode_timed(predictor.foundation, images, batch, clock)
        say(f"    batch {batch:>3}: {len(images) / clock.wall:7.1f} images per second "
            f"({clock.wall / len(images) * 1000:.1f} ms per image){gpu_memory(args.device)}")


def predict_arguments(inputs: Path, out: Path, model_dir: Path, args: argparse.Namespace, *extra: str) -> list[str]:
    """automedsam_predict's arguments as the timed predictors run: same device, batch size and passes."""
    batch = ["--batch-size", str(args.batch_size)] if args.batch_size is not None else []
    passes = [item for name, value in EXTRA_PASSES_OFF.items() for item in (f"--{name.replace('_', '-')}", value)]
    return ["-i", str(inputs), "-o", str(out), "-m", str(model_dir), "--device", args.device, *batch, *passes,
            *extra]


def encoder_seconds(predictor: Predictor, case: Case) -> float:
    """Wall seconds of the encoder alone on one case's 2D images, in the predictor's precision and batch size."""
    clock = Clock()
    stack, _ = normalised_slices(predictor, case)
    encode_timed(predictor.foundation, stack, predictor.batch_size, clock)
    return clock.wall / len(stack)


def _mean_dice(reference: np.ndarray, prediction: np.ndarray, labels: list[int]) -> float:
    values = [dice(reference == label, prediction == label) for label in labels]
    return float(np.nanmean(values)) if not all(np.isnan(values)) else 1.0


def machine_line() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    names = [line.split(":", 1)[1].strip() for line in (cpuinfo.read_text().splitlines() if cpuinfo.is_file() else [])
             if line.startswith("model name")]
    return (f"{names[0] if names else platform.processor()}, {os.cpu_count()} cores, torch {torch.__version__} with "
            f"{torch.get_num_threads()} threads; load average {load_average()}")


def load_average() -> str:
    return ", ".join(f"{value:.1f}" for value in os.getloadavg())


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="folder holding the HC18/ and ACDC/ releases")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="workspace (default: a temporary folder, deleted at the end); reused when given")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="parts to run (default all)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N")
    parser.add_argument("--images", type=int, default=10, help="(a, f) held-out HC18 images (default 10)")
    parser.add_argument("--volumes", type=int, default=2, help="(a) held-out ACDC volumes (default 2)")
    parser.add_argument("-np", "--num-workers", type=int, default=default_workers(), help="(b) preprocessing workers")
    parser.add_argument("--repeats", type=int, default=3, help="(b) preprocessing/encoder repeats, best kept (3)")
    parser.add_argument("--train", nargs="*", choices=sorted(DATASETS), default=["hc18"],
                        help="(c) datasets whose fold 0 is timed (default hc18); every other fold trains 1 epoch")
    parser.add_argument("--epochs", type=int, default=20,
                        help="(c) epochs to time; the plan's full run is extrapolated (0: run the plan's, 100)")
    parser.add_argument("--memory-counts", type=int, nargs=2, default=[10, 30], help="(d) HC18 image counts (10 30)")
    parser.add_argument("--memory-volumes", type=int, default=2, help="(d) ACDC volumes (default 2)")
    parser.add_argument("--dice-images", type=int, default=20, help="(e) held-out HC18 images (default 20)")
    parser.add_argument("--scale-images", type=int, default=500,
                        help="(g) 2D images predicted in one run (default 500): HC18's held-out images, repeated "
                        "under new names past the held-out cases there are")
    parser.add_argument("--preprocess-images", type=int, default=1000,
                        help="(h) 2D images preprocessed with --embed-all (default 1000): HC18's held-out images "
                        "repeated under new case ids")
    parser.add_argument("--encoder-batches", type=int, nargs="+", default=[1, 8, 16, 32, 64],
                        help="(i) encoder batch sizes to time (default 1 8 16 32 64)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="predictor batch size (default: automedsam_predict's, 1 on a CPU)")
    args = parser.parse_args(argv)
    counts = {"--images": [args.images], "--volumes": [args.volumes], "--repeats": [args.repeats],
              "-np": [args.num_workers], "--memory-counts": args.memory_counts,
              "--memory-volumes": [args.memory_volumes],
              "--dice-images": [args.dice_images], "--scale-images": [args.scale_images],
              "--preprocess-images": [args.preprocess_images], "--encoder-batches": args.encoder_batches,
              "--batch-size": [args.batch_size] if args.batch_size is not None else []}
    below = [name for name, values in counts.items() if values and min(values) < 1]
    if below:
        parser.error(f"{', '.join(below)} must be at least 1.")
    if args.epochs < 0:
        parser.error("--epochs must be at least 0 (0: the plan's).")
    missing = [spec.release_folder for spec in DATASETS.values() if not (args.data / spec.release_folder).is_dir()]
    if missing:
        parser.error(f"--data {args.data} lacks {' and '.join(f'{name}/' for name in missing)}; give the folder "
                     "holding the HC18/ and ACDC/ releases.")
    try:  # before the releases are converted and planned, which takes minutes
        args.device = str(resolve_device(args.device))
    except AutomedsamError as refusal:
        parser.error(str(refusal))
    return args


def main(argv: list[str] | None = None) -> None:
    """Measure, with a user error told in one line, not a traceback."""
    run_app(lambda: measure(parse_arguments(argv)))


def measure(args: argparse.Namespace) -> None:
    """Run the asked parts in the workspace (a temporary one is deleted at the end), timed in all."""
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="automedsam_speed_"))
    say(f"automedsam speed benchmark on {machine_line()}\nworkspace {workdir}")
    started = time.perf_counter()
    try:
        with workspace_roots(workdir):
            run(args, workdir, Console(quiet=True))
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    say(f"total {time.perf_counter() - started:.0f} s; load average now {load_average()}")


def run(args: argparse.Namespace, workdir: Path, console: Console) -> None:
    raws = {}
    for key in DATASETS:
        clock = Clock()
        with clock.running():
            raws[key] = converted(key, args.data)
        say(f"converted {raws[key].name} ({len(raws[key].cases)} cases) in {clock.wall:.1f} s")
        if "b" in args.parts:
            part_b(raws[key], args)
        else:  # keep existing plans, so that the folds trained with them stay valid
            planned = (preprocessed_dataset_dir(raws[key].name) / "plans.json").is_file()
            plan_and_preprocess(raws[key].name, num_workers=args.num_workers, device=args.device, progress=False,
                                preprocess_only=planned)
    models = {}
    for key, raw in raws.items():
        if "c" in args.parts and key in args.train:
            part_c(raw, args, console)
        models[key] = quick_folds(raw, range(FOLDS), 1, args.device, console)
    if "a" in args.parts:
        for key, count in (("hc18", args.images), ("acdc", args.volumes)):
            part_a(raws[key], models[key], held_out_cases(raws[key], count), workdir / "predictions" / key, args)
    if "e" in args.parts:
        part_e(models["hc18"], held_out_cases(raws["hc18"], args.dice_images), args)
    if "f" in args.parts:
        args.scratch = workdir / "predictions" / "precisions"
        args.scratch.mkdir(parents=True, exist_ok=True)
        part_f(models["hc18"], held_out_cases(raws["hc18"], args.images), args)
    if "g" in args.parts:
        hc18 = held_out_cases(raws["hc18"], args.scale_images, fewer_ok=True)
        part_g(models["hc18"], hc18, args.scale_images, workdir, args)
    if "h" in args.parts:
        hc18 = held_out_cases(raws["hc18"], args.preprocess_images, fewer_ok=True)
        part_h(raws["hc18"], hc18, args.preprocess_images, args)
    if "i" in args.parts:
        part_i(models["hc18"], held_out_cases(raws["hc18"], args.images), args)
    if "d" in args.parts:
        hc18 = held_out_cases(raws["hc18"], max(args.memory_counts))
        runs = [("images", models["hc18"], input_folder(hc18[:count], workdir / "inputs" / f"hc18_{count}"), count)
                for count in args.memory_counts]
        acdc = held_out_cases(raws["acdc"], args.memory_volumes)
        runs.append(("volumes", models["acdc"], input_folder(acdc, workdir / "inputs" / "acdc"), len(acdc)))
        part_d(runs, workdir / "memory", args)

if __name__ == "__main__":
    main()
