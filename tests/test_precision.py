"""The foundation model's precision chosen by measurement: the check on the labelled samples' box-prompted masks,
the planner's decision per device, how preprocessing records it, and where a planned bf16 applies."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from rich.console import Console
from synthetic_raw import make_2d_masks, make_2d_rectangles, plane_geometry, rectangle_at
from toy_model import INNER, OUTER, shared_foundation, toy_image

from automedsam import plans as plans_module
from automedsam.dataset import load_raw_dataset
from automedsam.device import autocast_dtype, native_bf16
from automedsam.errors import AutomedsamError
from automedsam.files import load_json
from automedsam.foundation.base import FoundationModel
from automedsam.foundation.cache import EmbeddingCache
from automedsam.foundation.registry import build_foundation_model
from automedsam.io import write_segmentation
from automedsam.planning import precision as check_module
from automedsam.planning import preprocessing
from automedsam.planning.plan_and_preprocess import plan_and_preprocess
from automedsam.planning.precision import (MAX_DROP, MAX_MEAN_ABS_CHANGE, CheckResult, CheckSample, chosen_by_check,
                                           measure_change, plan_precision)
from automedsam.plans import Plans, without_reasons
from automedsam.training import train_fold

CPU = torch.device("cpu")
SECTION = {"name": "litemedsam", "checkpoint": None, "input_size": 256, "precision": "fp32", "reason": "planned"}
TARGETS = [{"label": 1, "region": [1, 2]}, {"label": 2, "region": [2]}]


@pytest.fixture
def bf16_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """A CPU with AVX512-BF16, whatever this machine has."""
    monkeypatch.setattr("automedsam.device.cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16"}))


def toy_samples() -> list[CheckSample]:
    samples = []
    for seed in (0, 1):
        mask = np.zeros((60, 80), np.uint8)
        mask[OUTER[1]:OUTER[3] + 1, OUTER[0]:OUTER[2] + 1] = 1
        mask[INNER[1]:INNER[3] + 1, INNER[0]:INNER[2] + 1] = 2
        samples.append(CheckSample(f"s{seed}", toy_image(seed).astype(np.float32) / 255, mask,
                                   {1: [list(OUTER)], 2: [list(INNER)]}))
    return samples


class ShiftedMasks(FoundationModel):
    """The real model whose masks come out shifted by 6 pixels: a precision that would harm Dice."""

    def __init__(self, model: FoundationModel) -> None:
        self.__dict__.update(model.__dict__)
        self.precision = "bf16"

    def logits_to_original(self, low_res, frame):
        return torch.roll(super().logits_to_original(low_res, frame), shifts=6, dims=-1)


def test_the_check_measures_no_change_for_the_same_precision_and_a_drop_for_worse_masks():
    fp32 = shared_foundation()
    same = measure_change(toy_samples(), TARGETS, reference=fp32, candidate=fp32)
    assert same.figures["pairs"] == 4 and same.figures["samples"] == 2
    assert same.figures["mean_abs_dice_change"] == 0 and same.figures["worst_dice_change"] == 0
    assert same.figures["passed"]
    assert set(same.embeddings["fp32"]) == {"s0", "s1"} and same.embeddings["fp32"]["s0"].shape == (256, 64, 64)
    worse = measure_change(toy_samples(), TARGETS, reference=fp32, candidate=ShiftedMasks(fp32))
    assert worse.figures["worst_dice_change"] < -MAX_DROP and not worse.figures["passed"]
    assert worse.figures["tolerance"] == {"mean_abs_dice_change": MAX_MEAN_ABS_CHANGE, "worst_drop": MAX_DROP}


def test_the_check_of_real_bf16_autocast_records_its_figures():
    bf16 = build_foundation_model("litemedsam", device="cpu", precision="bf16")
    result = measure_change(toy_samples()[:1], TARGETS, reference=shared_foundation(), candidate=bf16)
    assert result.figures["candidate"] == "bf16" and result.figures["pairs"] == 2
    assert result.figures["passed"] == (result.figures["mean_abs_dice_change"] <= MAX_MEAN_ABS_CHANGE
                                        and result.figures["worst_dice_change"] >= -MAX_DROP)
    assert not torch.equal(result.embeddings["fp32"]["s0"], result.embeddings["bf16"]["s0"])


def test_the_check_measures_at_most_a_seeded_draw_of_the_labelled_samples():
    """--shots all on a volume dataset measured every labelled slice, thousands, holding each one's embeddings."""
    labelled = [f"case{index // 40:03d}__z{index % 40:03d}" for index in range(2000)]
    drawn = check_module.check_subset(labelled)
    assert len(drawn) == check_module.MAX_CHECK_SAMPLES and drawn == sorted(set(drawn)) and set(drawn) <= set(labelled)
    assert drawn != sorted(labelled)[:len(drawn)], "a draw over the whole dataset, not its first cases"
    assert check_module.check_subset(labelled[::-1]) == drawn, "the sorted ids and the seed alone decide"
    assert check_module.check_subset(labelled[:10][::-1]) == sorted(labelled[:10])
    assert f"on at most {check_module.MAX_CHECK_SAMPLES} labelled samples" in check_module.RULE


ENCODED: dict[bytes, torch.Tensor] = {}


class Counted(FoundationModel):
    """The shared fp32 model named `precision`, its encoder passes counted and memoised per image (one takes seconds
    on a CPU; these tests follow which samples get measured), Ctrl-C at pass `interrupt_at`."""

    def __init__(self, precision: str = "fp32", *, interrupt_at: int | None = None) -> None:
        self.__dict__.update(shared_foundation().__dict__)
        self.precision, self.interrupt_at, self.encoded = precision, interrupt_at, 0

    def encode(self, images):
        self.encoded += 1
        if self.encoded == self.interrupt_at:
            raise KeyboardInterrupt
        key = images.numpy().tobytes()
        if key not in ENCODED:
            ENCODED[key] = super().encode(images)
        return ENCODED[key]


class CountedShift(Counted):
    """Counted as bf16, its masks shifted as ShiftedMasks' are: a precision that would harm Dice."""

    def __init__(self, *, interrupt_at: int | None = None) -> None:
        super().__init__("bf16", interrupt_at=interrupt_at)

    def logits_to_original(self, low_res, frame):
        return torch.roll(super().logits_to_original(low_res, frame), shifts=6, dims=-1)


def test_an_interrupted_check_measures_only_the_rest_and_gives_the_same_figures(tmp_path):
    """Everything was held in memory until the end: Ctrl-C after minutes of measuring kept nothing."""
    fp32, samples = Counted(), toy_samples()
    whole = measure_change(samples, TARGETS, reference=fp32, candidate=CountedShift(), labelled=5)
    assert whole.figures["samples"] == 2 and whole.figures["labelled"] == 5 and whole.figures["worst_dice_change"] < 0
    measured = check_module.Measured(tmp_path / check_module.MEASURED_FILE, "key")
    with pytest.raises(KeyboardInterrupt):  # during the second sample
        measure_change(samples, TARGETS, reference=fp32, candidate=CountedShift(interrupt_at=2), labelled=5,
                       measured=measured)
    assert list(measured.load()) == ["s0"] and check_module.Measured(measured.path, "other key").load() == {}
    candidate = CountedShift()
    resumed = measure_change(samples, TARGETS, reference=fp32, candidate=candidate, labelled=5, measured=measured)
    assert candidate.encoded == 1 and resumed.figures == whole.figures
    for precision in ("fp32", "bf16"):  # held compactly, and only of the samples measured in this call
        assert list(resumed.embeddings[precision]) == ["s1"]
        assert resumed.embeddings[precision]["s1"].dtype == torch.float16


def test_the_check_shows_its_progress_on_stderr_unless_progress_is_off(capsys):
    sample = toy_samples()[:1]
    measure_change(sample, TARGETS, reference=Counted(), candidate=CountedShift(), progress=True)
    shown = capsys.readouterr()
    assert "Precision check (fp32 vs bf16)" in shown.err and shown.out == ""
    measure_change(sample, TARGETS, reference=Counted(), candidate=CountedShift(), progress=False)
    assert capsys.readouterr().err == ""


def check(passed: bool) -> CheckResult:
    figures = {"candidate": "bf16", "samples": 10, "pairs": 10, "mean_abs_dice_change": 0.001 if passed else 0.01,
               "worst_dice_change": -0.005, "passed": passed}
    return CheckResult(figures, {"fp32": {}, "bf16": {}})


def test_the_planner_takes_bf16_only_where_the_device_has_it_and_the_check_passes(bf16_cpu):
    chosen, result = plan_precision(SECTION, mode="auto", device=CPU, measure=lambda: check(True), key="k")
    assert chosen["precision"] == "bf16" and result is not None
    record = chosen["precision_check"]
    assert record["passed"] and record["device"] == "cpu" and record["key"] == "k"
    assert "avx512_bf16" in record["hardware"] and "documentation/benchmarks.md" in record["reason"]
    assert chosen["reason"] == "planned"
    chosen, _ = plan_precision(SECTION, mode="auto", device=CPU, measure=lambda: check(False), key="k")
    assert chosen["precision"] == "fp32" and chosen["precision_check"]["mean_abs_dice_change"] == 0.01


@pytest.mark.parametrize("capability, native", [((7, 5), False), ((8, 0), True), ((9, 0), True)])
def test_a_gpu_emulating_bf16_is_not_taken_for_one_computing_it(monkeypatch, capability, native):
    """torch.cuda.is_bf16_supported() counts emulation: a T4 (7.5) planned bf16, slower there than fp32."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert native_bf16(torch.device("cuda", 0)) is native
    assert autocast_dtype(torch.device("cuda", 0), "bf16") == (torch.bfloat16 if native else torch.float16)


def test_a_cpu_without_bf16_keeps_fp32_without_measuring():
    def measure() -> CheckResult:
        raise AssertionError("nothing to measure on a CPU without bf16")
    chosen, result = plan_precision(SECTION, mode="auto", device=CPU, measure=measure)
    assert chosen["precision"] == "fp32" and result is None
    assert "does not compute bf16 in hardware" in chosen["precision_check"]["reason"]


def test_a_stored_check_of_the_same_key_is_reused_and_the_user_can_force_a_precision(bf16_cpu):
    stored = {**check(True).figures, "device": "cpu", "key": "k", "reason": "old words"}
    def measure() -> CheckResult:
        raise AssertionError("the stored check applies")
    chosen, result = plan_precision(SECTION, mode="auto", device=CPU, measure=measure, stored=stored, key="k")
    assert chosen["precision"] == "bf16" and result is None
    _, result = plan_precision(SECTION, mode="auto", device=CPU, measure=lambda: check(False), stored=stored,
                               key="other")
    assert result is not None
    forced, _ = plan_precision({**SECTION, "precision": "bf16"}, mode="fp32", device=CPU, measure=measure)
    assert forced["precision"] == "fp32" and forced["precision_check"]["reason"] == "--precision fp32 given: no check"
    with pytest.raises(AutomedsamError, match="--precision must be one of auto, fp32, bf16"):
        plan_precision(SECTION, mode="fp16", device=CPU, measure=measure)


def test_a_measured_bf16_applies_on_the_kind_of_device_it_was_measured_on_where_it_is_native(monkeypatch):
    measured = Plans({"foundation_model": {**SECTION, "precision": "bf16",
                                           "precision_check": {"device": "cpu", "passed": True}}})
    assert measured.planned_precision(CPU) == "fp32"  # the conftest's CPU lacks bf16
    monkeypatch.setattr("automedsam.device.cpu_flags", lambda: frozenset({"amx_bf16"}))
    assert measured.planned_precision(CPU) == "bf16"
    assert measured.planned_precision(torch.device("mps")) == "fp32"
    by_hand = Plans({"foundation_model": {**SECTION, "precision": "bf16"}})
    assert by_hand.planned_precision(torch.device("mps")) == "bf16"


def test_the_decoder_runs_in_the_model_precision_only_without_gradients():
    fp32, bf16 = shared_foundation(), build_foundation_model("litemedsam", device="cpu", precision="bf16")
    embedding = fp32.encode(fp32.prepare(toy_image())[0][None])
    sparse, dense = fp32.box_prompt(torch.tensor([[20.0, 20.0, 200.0, 150.0]]))
    with torch.enable_grad():
        assert torch.equal(fp32.decode(embedding, sparse, dense), bf16.decode(embedding, sparse, dense))
    with torch.no_grad():
        full, half = fp32.decode(embedding, sparse, dense), bf16.decode(embedding, sparse, dense)
    assert half.dtype == torch.float32 and not torch.equal(full, half)
    assert torch.corrcoef(torch.stack([full.flatten(), half.flatten()]))[0, 1] > 0.99


class CountingCheck:
    """Stands in for measure_change in preprocessing: a passing or failing check, with the real embeddings' shape;
    records the samples it was given and the progress asked for."""

    def __init__(self, passed: bool) -> None:
        self.passed = passed
        self.calls = 0
        self.with_masks: list[bool] = []
        self.sample_ids: list[str] = []
        self.progress: list[bool | None] = []

    def __call__(self, samples, targets, *, reference, candidate, **options) -> CheckResult:
        self.calls += 1
        self.with_masks += [sample.mask is not None for sample in samples]
        self.sample_ids += [sample.sample_id for sample in samples]
        self.progress.append(options.get("progress"))
        result = check(self.passed)
        fill = {"fp32": 1.0, "bf16": 2.0}
        embeddings = {name: {s.sample_id: torch.full((256, 64, 64), value) for s in samples}
                      for name, value in fill.items()}
        return CheckResult({**result.figures, "samples": len(samples), "labelled": options.get("labelled")},
                           embeddings)


def test_the_check_reads_the_masks_only_where_the_plans_may(roots, monkeypatch, bf16_cpu):
    """Under --shots N the check took its Dice against the drawn samples' full masks, which the strict protocol
    reduces to boxes; with every label given (--shots all) the masks are the better truth."""
    make_2d_masks(roots["raw"], n_cases=4)
    counting = CountingCheck(True)
    monkeypatch.setattr(preprocessing, "measure_change", counting)
    monkeypatch.setattr(preprocessing.EmbeddingCache, "compute_missing", lambda self, model, items, **_: len(items))
    out = plan_and_preprocess("1", shots="all", num_workers=1, device="cpu", progress=False).out_dir
    assert counting.with_masks and all(counting.with_masks)
    assert load_json(out / "plans.json", "plans")["protocol"]["regime"] == "all_labels"


@pytest.mark.parametrize("passed", [True, False])
def test_preprocessing_records_the_check_in_plans_and_embeds_in_the_chosen_precision(roots, monkeypatch, bf16_cpu,
                                                                                     passed):
    make_2d_masks(roots["raw"], n_cases=6)
    counting = CountingCheck(passed)
    monkeypatch.setattr(preprocessing, "measure_change", counting)
    built = []
    real_build = plans_module.build_foundation_model

    def build(name, checkpoint, *, device, precision, resize):
        built.append(precision)
        return real_build(name, checkpoint, device=device, precision=precision)
    monkeypatch.setattr(plans_module, "build_foundation_model", build)
    monkeypatch.setattr(preprocessing.EmbeddingCache, "compute_missing", lambda self, model, items, **_: len(items))
    out = plan_and_preprocess("1", shots=2, num_workers=1, device="cpu", progress=False).out_dir
    section = load_json(out / "plans.json", "plans")["foundation_model"]
    assert section["precision"] == ("bf16" if passed else "fp32")
    assert section["precision_check"]["passed"] is passed and section["precision_check"]["samples"] == 2
    assert counting.calls == 1 and "fp32,bf16" in ",".join(built)  # the check's two models, one after the other
    assert counting.progress == [False]  # progress off: no bar
    assert counting.with_masks == [False, False]  # --shots 2: the drawn masks are only their boxes, here too
    labelled = load_json(out / "splits.json", "splits")["labelled"]
    stored = EmbeddingCache(out, "litemedsam").get(labelled[0])
    assert stored is not None and float(stored.mean()) == (2.0 if passed else 1.0)
    plan_and_preprocess("1", shots=2, num_workers=1, device="cpu", progress=False)
    assert counting.calls == 1  # the rerun reuses the stored check
    assert load_json(out / "plans.json", "plans")["foundation_model"]["precision_check"]["passed"] is passed


def test_preprocessing_checks_a_bounded_draw_of_many_labelled_samples_with_progress(roots, monkeypatch, bf16_cpu):
    """--shots all measured every labelled sample; only the drawn ones' embeddings come from the check."""
    make_2d_masks(roots["raw"], n_cases=8)
    monkeypatch.setattr(check_module, "MAX_CHECK_SAMPLES", 3)
    counting = CountingCheck(True)
    monkeypatch.setattr(preprocessing, "measure_change", counting)
    monkeypatch.setattr(preprocessing.EmbeddingCache, "compute_missing", lambda self, model, items, **_: len(items))
    out = plan_and_preprocess("1", shots="all", num_workers=1, device="cpu", progress=True).out_dir
    labelled = load_json(out / "splits.json", "splits")["labelled"]
    assert len(labelled) > 3 and counting.sample_ids == check_module.check_subset(labelled)
    assert counting.progress == [True]
    record = load_json(out / "plans.json", "plans")["foundation_model"]["precision_check"]
    assert record["samples"] == 3 and record["labelled"] == len(labelled)
    cache = EmbeddingCache(out, "litemedsam")
    assert [sid for sid in labelled if cache.get(sid) is not None] == counting.sample_ids
    assert not (out / check_module.MEASURED_FILE).exists(), "the stored check holds what was measured"


def test_a_corrected_box_of_a_drawn_sample_is_checked_again(roots, monkeypatch, bf16_cpu):
    """The stored check was keyed by the samples' ids and the plans only: masks prompted by the old boxes decided
    the precision after a box was corrected."""
    root = make_2d_rectangles(roots["raw"])
    counting = CountingCheck(True)
    monkeypatch.setattr(preprocessing, "measure_change", counting)
    monkeypatch.setattr(preprocessing.EmbeddingCache, "compute_missing", lambda self, model, items, **_: len(items))
    out = plan_and_preprocess("1", shots=2, num_workers=1, device="cpu", progress=False).out_dir
    plan_and_preprocess("1", shots=2, num_workers=1, device="cpu", progress=False)
    assert counting.calls == 1
    plans = load_json(out / "plans.json", "plans")
    mask_file = root / "labelsTr" / f"{load_json(out / 'splits.json', 'splits')['labelled'][0]}.nii.gz"
    write_segmentation(mask_file, rectangle_at(55, 40), plane_geometry())
    plan_and_preprocess("1", shots=2, num_workers=1, device="cpu", progress=False)
    assert without_reasons(load_json(out / "plans.json", "plans")["targets"]) == without_reasons(plans["targets"])
    assert counting.calls == 2


def test_a_labelled_raw_image_touched_after_training_leaves_the_trained_folds_valid(roots, bf16_cpu, tiny_foundation):
    """`touch` on a labelled raw image (or a copy without -p, a git checkout) changed the check's key, which hashes
    the samples' sources: the rerun measured again, the plans differed in precision_check.key alone, and training
    the next fold was refused until every fold was retrained with --overwrite."""
    root = make_2d_masks(roots["raw"], n_cases=6)
    out = plan_and_preprocess("1", shots=4, folds=2, num_workers=1, device="cpu", progress=False).out_dir
    train_fold("1", 0, epochs=1, device="cpu", console=Console(quiet=True))
    key = load_json(out / "plans.json", "plans")["foundation_model"]["precision_check"]["key"]
    image = root / "imagesTr" / f"{load_json(out / 'splits.json', 'splits')['labelled'][0]}_0000.nii.gz"
    os.utime(image, (image.stat().st_atime, image.stat().st_mtime + 60))
    plan_and_preprocess("1", shots=4, folds=2, num_workers=1, device="cpu", progress=False)
    assert load_json(out / "plans.json", "plans")["foundation_model"]["precision_check"]["key"] != key
    train_fold("1", 1, epochs=1, device="cpu", console=Console(quiet=True))


def test_precision_fp32_forces_the_full_precision_path_and_is_planning(roots, monkeypatch, bf16_cpu):
    make_2d_masks(roots["raw"], n_cases=6)
    monkeypatch.setattr(preprocessing, "measure_change", CountingCheck(True))
    monkeypatch.setattr(preprocessing.EmbeddingCache, "compute_missing", lambda self, model, items, **_: len(items))
    out = plan_and_preprocess("1", shots=2, num_workers=1, device="cpu", precision="fp32", progress=False).out_dir
    section = load_json(out / "plans.json", "plans")["foundation_model"]
    assert section["precision"] == "fp32" and section["precision_check"]["reason"] == "--precision fp32 given: no check"
    with pytest.raises(AutomedsamError, match="--precision must be one of"):
        plan_and_preprocess("1", precision="half", progress=False)


def storing_encoder(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every foundation model built is the shared one, and computing the missing embeddings stores zeros (no encoder
    pass); returns the precision each model was built in, in order."""
    built: list[str] = []

    def build(name, checkpoint, *, device, precision, resize):
        built.append(precision)
        return shared_foundation()

    def compute_missing(self, model, items, **_):
        stored = [self.put(sid, torch.zeros(256, 64, 64)) for sid, _ in items]
        return len(stored)
    monkeypatch.setattr(plans_module, "build_foundation_model", build)
    monkeypatch.setattr(preprocessing.EmbeddingCache, "compute_missing", compute_missing)
    return built


def test_preprocess_only_on_another_kind_of_device_refuses_to_mix_precisions_in_the_cache(roots, monkeypatch,
                                                                                          bf16_cpu):
    """bf16 measured on a bf16 CPU, then --preprocess-only on a CPU without bf16: the embeddings of an added view
    were encoded in fp32 under the recorded key of the bf16 ones, one cache of both precisions."""
    make_2d_masks(roots["raw"], n_cases=6)
    monkeypatch.setattr(preprocessing, "measure_change", CountingCheck(True))
    built = storing_encoder(monkeypatch)
    out = plan_and_preprocess("1", shots=2, num_workers=1, device="cpu", progress=False).out_dir
    assert load_json(out / "plans.json", "plans")["foundation_model"]["precision"] == "bf16"
    monkeypatch.setattr("automedsam.device.cpu_flags", lambda: frozenset())  # another machine, no bf16
    plan_and_preprocess("1", preprocess_only=True, num_workers=1, device="cpu", progress=False)  # nothing missing
    plans = load_json(out / "plans.json", "plans")
    plans["augmentation"]["views"].append({"name": "extra", "flip": [0], "rot90": 0, "gamma": 1.0, "scale": 1.0})
    (out / "plans.json").write_text(json.dumps(plans))
    before = list(built)
    with pytest.raises(AutomedsamError, match=r"are bf16, chosen on another kind of device \(CPU with avx512_bf16\)"
                                              r".*runs the foundation model in fp32.*mix bf16 and fp32 in one cache"):
        plan_and_preprocess("1", preprocess_only=True, num_workers=1, device="cpu", progress=False)
    assert built == before and not list((out / "embeddings" / "litemedsam").glob("*__extra.npy"))
    monkeypatch.setattr("automedsam.device.cpu_flags", lambda: frozenset({"avx512_bf16"}))  # back where it was made
    plan_and_preprocess("1", preprocess_only=True, num_workers=1, device="cpu", progress=False)
    assert built[len(before):] == ["bf16"] and len(list((out / "embeddings" / "litemedsam").glob("*__extra.npy"))) == 2


def test_preprocess_only_after_plan_only_chooses_the_precision_as_a_full_run_does(roots, monkeypatch, bf16_cpu):
    """The documented override (--plan-only, edit, --preprocess-only) never ran the check: on a bf16 device the
    plans stayed fp32 with no precision_check, their reason saying the check would choose."""
    make_2d_masks(roots["raw"], n_cases=6)
    counting = CountingCheck(True)
    monkeypatch.setattr(preprocessing, "measure_change", counting)
    storing_encoder(monkeypatch)
    out = plan_and_preprocess("1", shots=2, num_workers=1, device="cpu", plan_only=True, progress=False).out_dir
    assert "precision_check" not in load_json(out / "plans.json", "plans")["foundation_model"]
    plan_and_preprocess("1", preprocess_only=True, num_workers=1, device="cpu", progress=False)
    section = load_json(out / "plans.json", "plans")["foundation_model"]
    assert section["precision"] == "bf16" and section["precision_check"]["passed"] and counting.calls == 1
    plan_and_preprocess("1", preprocess_only=True, num_workers=1, device="cpu", progress=False)
    assert counting.calls == 1  # chosen once: the stored plans keep it


def test_precision_given_to_plan_only_or_preprocess_only_is_recorded_and_kept(roots, monkeypatch, bf16_cpu):
    """--plan-only --precision bf16 was refused with "give it to the run that preprocesses", and --preprocess-only
    --precision bf16 was refused too, as planning: no run but a full one could set it."""
    make_2d_masks(roots["raw"], n_cases=6)
    counting = CountingCheck(True)
    monkeypatch.setattr(preprocessing, "measure_change", counting)
    storing_encoder(monkeypatch)
    out = plan_and_preprocess("1", shots=2, num_workers=1, device="cpu", plan_only=True, precision="fp32",
                              progress=False).out_dir
    section = load_json(out / "plans.json", "plans")["foundation_model"]
    assert section["precision"] == "fp32" and section["precision_check"]["reason"] == "--precision fp32 given: no check"
    plan_and_preprocess("1", preprocess_only=True, num_workers=1, device="cpu", progress=False)
    assert load_json(out / "plans.json", "plans")["foundation_model"]["precision"] == "fp32" and not counting.calls
    plan_and_preprocess("1", preprocess_only=True, precision="bf16", num_workers=1, device="cpu", progress=False)
    section = load_json(out / "plans.json", "plans")["foundation_model"]
    assert section["precision"] == "bf16" and section["precision_check"]["reason"] == "--precision bf16 given: no check"
    plan_and_preprocess("1", shots=2, num_workers=1, device="cpu", plan_only=True, precision="bf16", progress=False)
    assert load_json(out / "plans.json", "plans")["foundation_model"]["precision"] == "bf16" and not counting.calls
    plan_and_preprocess("1", shots=2, num_workers=1, device="cpu", progress=False)  # plans again: its own --precision
    section = load_json(out / "plans.json", "plans")["foundation_model"]
    assert counting.calls == 1 and section["precision_check"]["passed"] and section["precision"] == "bf16"


def old_gpu(monkeypatch: pytest.MonkeyPatch, capability: tuple[int, int]) -> torch.device:
    """A CUDA device of `capability`, whatever this machine has."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    return torch.device("cuda", 0)


@pytest.mark.parametrize("capability, planned", [((7, 5), "fp32"), ((8, 0), "bf16")])
def test_a_bf16_set_by_hand_runs_in_fp32_on_a_gpu_without_bf16_not_in_fp16(monkeypatch, capability, planned):
    """A hand-set bf16 held everywhere, and autocast turns bf16 into fp16 on a GPU without bf16: silently fp16."""
    gpu = old_gpu(monkeypatch, capability)
    by_hand = Plans({"foundation_model": {**SECTION, "precision": "bf16",
                                          "precision_check": {"device": "cpu", "reason": "--precision bf16 given"}}})
    assert by_hand.planned_precision(gpu) == planned
    assert autocast_dtype(gpu, by_hand.planned_precision(gpu)) == (None if planned == "fp32" else torch.bfloat16)


def test_precision_bf16_is_refused_on_a_gpu_without_bf16(monkeypatch):
    gpu = old_gpu(monkeypatch, (7, 5))
    with pytest.raises(AutomedsamError, match="--precision bf16: this cuda device does not compute bf16"):
        plan_precision(SECTION, mode="bf16", device=gpu, measure=lambda: check(True))
    chosen, _ = plan_precision(SECTION, mode="bf16", device=old_gpu(monkeypatch, (8, 6)), measure=lambda: check(True))
    assert chosen["precision"] == "bf16"


def test_preprocess_only_keeps_fp32_plans_an_earlier_version_preprocessed_without_a_check(roots, monkeypatch,
                                                                                          bf16_cpu):
    """--plan-only then --preprocess-only of an earlier version embedded fp32 plans without a precision_check; a
    --preprocess-only rerun then wrote a check into plans.json, which training takes for other plans than its folds
    were trained with (and a bf16 would encode every embedding again)."""
    make_2d_masks(roots["raw"], n_cases=6)
    counting = CountingCheck(True)
    monkeypatch.setattr(preprocessing, "measure_change", counting)
    storing_encoder(monkeypatch)
    out = plan_and_preprocess("1", shots=2, num_workers=1, device="cpu", plan_only=True, progress=False).out_dir
    preprocessing.preprocess(load_raw_dataset("1", check_images=False), load_json(out / "plans.json", "plans"),
                             splits=load_json(out / "splits.json", "splits"), out_dir=out, device="cpu",
                             fingerprint=load_json(out / "fingerprint.json", "fingerprint"), progress=False)
    before = (out / "plans.json").read_text()  # as that version's --preprocess-only left it: fp32, no check
    plan_and_preprocess("1", preprocess_only=True, num_workers=1, device="cpu", progress=False)
    assert (out / "plans.json").read_text() == before and not counting.calls


def test_preprocess_only_checks_plans_whose_key_is_recorded_with_nothing_preprocessed(roots, monkeypatch, bf16_cpu):
    """The box preview of an interactive dataset records the plans' embeddings key after --plan-only with nothing
    embedded; --preprocess-only took that for plans already embedded and kept fp32 without the check a full run
    runs."""
    make_2d_masks(roots["raw"], n_cases=6)
    counting = CountingCheck(True)
    monkeypatch.setattr(preprocessing, "measure_change", counting)
    storing_encoder(monkeypatch)
    out = plan_and_preprocess("1", shots=2, num_workers=1, device="cpu", plan_only=True, progress=False).out_dir
    preprocessing.clear_stale_embeddings(out, Plans.load(out / "plans.json"))  # as the box preview records it
    plan_and_preprocess("1", preprocess_only=True, num_workers=1, device="cpu", progress=False)
    section = load_json(out / "plans.json", "plans")["foundation_model"]
    assert counting.calls == 1 and section["precision"] == "bf16" and section["precision_check"]["passed"]


def test_plan_only_with_precision_auto_undoes_a_precision_set_by_hand(roots, monkeypatch, bf16_cpu):
    """--plan-only --precision auto kept a stored bf16 set by hand as it kept a measured one: no run but a full one
    could hand the precision back to the check."""
    make_2d_masks(roots["raw"], n_cases=6)
    counting = CountingCheck(False)
    monkeypatch.setattr(preprocessing, "measure_change", counting)
    storing_encoder(monkeypatch)
    out = plan_and_preprocess("1", shots=2, num_workers=1, device="cpu", precision="bf16", progress=False).out_dir
    plan_and_preprocess("1", shots=2, num_workers=1, device="cpu", plan_only=True, progress=False)
    assert load_json(out / "plans.json", "plans")["foundation_model"]["precision"] == "bf16"  # unset: kept
    plan_and_preprocess("1", shots=2, num_workers=1, device="cpu", plan_only=True, precision="auto", progress=False)
    section = load_json(out / "plans.json", "plans")["foundation_model"]
    assert section["precision"] == "fp32" and "precision_check" not in section
    plan_and_preprocess("1", preprocess_only=True, num_workers=1, device="cpu", progress=False)
    section = load_json(out / "plans.json", "plans")["foundation_model"]
    assert counting.calls == 1 and section["precision"] == "fp32" and section["precision_check"]["passed"] is False
    plan_and_preprocess("1", shots=2, num_workers=1, device="cpu", plan_only=True, precision="auto", progress=False)
    assert load_json(out / "plans.json", "plans")["foundation_model"] == section  # a measured one is kept


def test_an_fp32_set_by_hand_and_dropped_by_plan_only_is_kept_until_precision_auto_checks_it(roots, monkeypatch,
                                                                                             bf16_cpu):
    """What the documentation promises after --plan-only --precision auto drops a hand-set fp32: the plans' embeddings
    key is that of the fp32 already embedded, so --preprocess-only keeps fp32 unchecked; --precision auto checks."""
    make_2d_masks(roots["raw"], n_cases=6)
    counting = CountingCheck(True)
    monkeypatch.setattr(preprocessing, "measure_change", counting)
    storing_encoder(monkeypatch)
    out = plan_and_preprocess("1", shots=2, num_workers=1, device="cpu", precision="fp32", progress=False).out_dir
    plan_and_preprocess("1", shots=2, num_workers=1, device="cpu", plan_only=True, precision="auto", progress=False)
    assert "precision_check" not in load_json(out / "plans.json", "plans")["foundation_model"]  # dropped
    plan_and_preprocess("1", preprocess_only=True, num_workers=1, device="cpu", progress=False)
    section = load_json(out / "plans.json", "plans")["foundation_model"]
    assert not counting.calls and section["precision"] == "fp32" and "precision_check" not in section
    plan_and_preprocess("1", preprocess_only=True, precision="auto", num_workers=1, device="cpu", progress=False)
    section = load_json(out / "plans.json", "plans")["foundation_model"]
    assert counting.calls == 1 and section["precision"] == "bf16" and section["precision_check"]["passed"]


def test_a_precision_counts_as_chosen_by_the_check_when_measured_or_for_want_of_bf16(monkeypatch):
    """What --plan-only --precision auto keeps: the check's choices, fp32 on a CPU without bf16 included (dropping
    it would change plans.json under trained folds), not a precision set by hand."""
    unmeasured, _ = plan_precision(SECTION, mode="auto", device=CPU, measure=lambda: check(True))  # no bf16 here
    monkeypatch.setattr("automedsam.device.cpu_flags", lambda: frozenset({"avx512_bf16"}))
    measured, _ = plan_precision(SECTION, mode="auto", device=CPU, measure=lambda: check(True), key="k")
    by_hand, _ = plan_precision(SECTION, mode="bf16", device=CPU, measure=lambda: check(True))
    assert chosen_by_check(unmeasured) and chosen_by_check(measured)
    assert not chosen_by_check(by_hand) and not chosen_by_check({**SECTION, "precision": "bf16"})
