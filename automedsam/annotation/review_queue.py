"""The review's queue: the unlabelled samples ranked by how much the trained folds disagree on them, worst first."""
from __future__ import annotations

import threading
from typing import Callable, Iterator

import numpy as np

from automedsam.annotation.session import AnnotationSession, ReviewItem
from automedsam.annotation.training_job import Output
from automedsam.errors import AutomedsamError
from automedsam.foundation.cache import PlannedEmbeddingCache
from automedsam.inference.model_folder import locate_model_folder, open_model_folder
from automedsam.inference.review import RANKING_TASK, rank_by_disagreement
from automedsam.plans import Plans
from automedsam.samples import case_of, slice_of

REVIEW_SAMPLES = 100  # a volume dataset has hundreds of slices, each an encoder pass: rank a seeded draw of them
# how the ranking's note names the option that sets how many it ranks: automedsam_annotate's own, said to its user
# in the terminal; on the page, which has no such field, as the command that takes it
CLI_LIMIT_OPTION = "--review-samples"
PAGE_LIMIT_OPTION = "automedsam_annotate started with --review-samples"


def review_items(session: AnnotationSession, *, trainer: str, device: str | None, limit: int, report: Output,
                 stop: threading.Event | None = None, limit_option: str = CLI_LIMIT_OPTION,
                 bar: bool = False) -> list[ReviewItem]:
    """The first `limit` unlabelled samples of the seeded order, ranked with the dataset's `trainer` model; once
    `stop` is set, the samples left are not segmented (the caller discards the partial ranking). `report` says when
    `limit` leaves samples out, naming `limit_option` as the way to rank them all, and gets each sample's count as a
    live line: the page shows it while the step runs (a bar would draw on the server's terminal, which the page's
    user may not see). With `bar`, for --review in automedsam_annotate's own terminal, rich's bar shows the count
    there and `report` gets the note alone."""
    dataset = session.dataset.name
    folder = open_model_folder(locate_model_folder(dataset, trainer=trainer), folds=None)
    unlabelled = session.unlabelled()
    if not unlabelled:
        raise AutomedsamError(f"{dataset} has no unlabelled sample left to review.")
    candidates = unlabelled[:limit]
    if len(candidates) < len(unlabelled):
        report(f"Ranking {len(candidates)} of the {len(unlabelled)} unlabelled samples, the first of the seeded draw "
               f"order ({limit_option} {len(unlabelled)} ranks them all).")
    # the planes in the model's window, as automedsam_predict gives them; the cache serves embeddings only while
    # its record holds the model's plans
    cache = PlannedEmbeddingCache(session.preprocessed_dir, folder.plans, images=session.images())
    samples = _planes_read(session, candidates, plans=folder.plans, cache=cache, stop=stop)
    ranked = rank_by_disagreement(folder, samples, expected=expected_labels(session), cache=cache, device=device,
                                  total=len(candidates), progress=bar,
                                  segmented=None if bar else _counted(report, total=len(candidates)))
    return [ReviewItem(item["sample_id"], item["disagreement"], item["boxes"], item["label_map"]) for item in ranked]


def _counted(report: Output, *, total: int) -> Callable[[int], None]:
    """The ranking's count, `Review: segmenting unlabelled samples 3/11`, as `report`'s live line."""
    return lambda done: report(f"{RANKING_TASK} {done}/{total}", live=True)


def _planes_read(session: AnnotationSession, sample_ids: list[str], *, plans: Plans, cache: PlannedEmbeddingCache,
                 stop: threading.Event | None) -> Iterator[tuple[str, np.ndarray]]:
    """(sample id, normalised plane) pairs until `stop`, each image's digest noted in `cache` before its pixels are
    read: an image imported again during the review's encode leaves an embedding that is encoded again later."""
    for sample_id in sample_ids:
        if stop is not None and stop.is_set():
            return
        cache.note_read(case_of(sample_id))
        yield sample_id, session.normalised_plane(sample_id, plans)


def expected_labels(session: AnnotationSession) -> set[int]:
    """The labels every annotated sample of the session holds a box of: where the folds all miss one, the review
    shows that sample first. The boxed samples of the labelled set (drawn or added) decide; one marked No structure
    shows that an image can lack every label, so then none is expected (nor when nothing is boxed yet). Only for 2D
    images: a volume's review ranks all its slices, and the slices past the organ lack labels its boxed slices hold."""
    labelled = session.labelled()
    if session.splits["interactive"]["rejected"] or any(slice_of(sid) is not None for sid in labelled):
        return set()
    per_sample = [_box_labels(session, sid) for sid in labelled]
    boxed = [labels for labels in per_sample if labels is not None]
    return set.intersection(*boxed) if boxed else set()


def _box_labels(session: AnnotationSession, sample_id: str) -> set[int] | None:
    """The labels of a sample's saved boxes; None when it has none saved yet (still to annotate: it tells nothing).
    A 2D image saved with an empty list was marked No structure: the empty set."""
    boxes, _ = session.boxes.read(session.cases[case_of(sample_id)], slice_of(sample_id))
    return None if boxes is None else {int(entry["label"]) for entry in boxes}
