"""Coverage orders: which samples, taken one after another, best cover the frozen model's view of all candidates.

Both criteria are greedy, so the first k of an order do not depend on how long the order is (an interactive
dataset's rejected sample is replaced by the next one without moving the others), and both keep the draw's group
rule: a sample is taken only from the groups (patients, examinations) that have given the fewest so far, so every
group gives one before any gives a second. The first sample is drawn with the seed among the allowed ones, so
seeds give different orders.

- `k_center`: the next sample is the one farthest from every sample taken (k-center greedy, Sener and Savarese
  2018): it minimises the largest distance from a candidate to its nearest labelled sample, and tends to take
  outliers.
- `facility_location`: the next sample is the one that most raises the summed similarity of every candidate to
  its most similar labelled sample: typical samples first, then those that cover what is still uncovered.
- `kmeans_pp`: the next sample is drawn with the seed, with a probability proportional to its squared distance to
  the nearest sample taken (k-means++ seeding, Arthur and Vassilvitskii 2007): a random draw that never takes a
  near-duplicate of a sample it holds, and reaches unusual samples more often than a uniform draw without taking
  only outliers.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

CRITERIA = ("k_center", "facility_location", "kmeans_pp")
SAMPLED = ("kmeans_pp",)  # criteria that draw the next sample with the seed instead of taking the best


def pooled_feature(embedding: np.ndarray) -> np.ndarray:
    """A (256, 64, 64) image embedding as one unit vector: the mean over the 64 x 64 grid, L2-normalised (cosine
    similarity then ranks images by what they show, not by their contrast)."""
    mean = np.asarray(embedding, dtype=np.float32).reshape(embedding.shape[0], -1).mean(axis=1)
    norm = float(np.linalg.norm(mean))
    return mean / norm if norm > 0 else mean


def coverage_order(features: np.ndarray, groups: Sequence[str], count: int, *, criterion: str,
                   rng: np.random.Generator) -> list[int]:
    """Indices of `count` rows of `features` (unit vectors, one per candidate) in the order `criterion` takes them,
    under the group rule; the first drawn with `rng`."""
    if criterion not in CRITERIA:
        raise ValueError(f"unknown coverage criterion {criterion!r}; expected one of {CRITERIA}")
    features = np.asarray(features, dtype=np.float64)
    total = len(features)
    count = min(count, total)
    if count == 0:
        return []
    group_index = {name: index for index, name in enumerate(sorted(set(groups)))}
    member = np.array([group_index[name] for name in groups])
    taken_per_group = np.zeros(len(group_index), dtype=int)
    remaining_per_group = np.bincount(member, minlength=len(group_index))
    free = np.ones(total, dtype=bool)
    score = _scorer(features, criterion)
    order: list[int] = []
    while len(order) < count:
        allowed = _allowed(free, member, taken_per_group, remaining_per_group)
        if not order:
            choice = int(rng.choice(np.flatnonzero(allowed)))
        elif criterion in SAMPLED:
            choice = _weighted_choice(np.flatnonzero(allowed), score(None), rng)
        else:
            gains = score(None)
            gains = np.where(allowed, gains, -np.inf)
            choice = int(np.argmax(gains))
        score(choice)
        order.append(choice)
        free[choice] = False
        taken_per_group[member[choice]] += 1
        remaining_per_group[member[choice]] -= 1
    return order


def _weighted_choice(allowed: np.ndarray, weights: np.ndarray, rng: np.random.Generator) -> int:
    """One of the `allowed` indices drawn with probability proportional to its weight; uniformly when every
    allowed weight is zero (only duplicates of taken samples are left)."""
    chances = weights[allowed]
    total = float(chances.sum())
    return int(rng.choice(allowed, p=chances / total if total > 0 else None))


def _allowed(free: np.ndarray, member: np.ndarray, taken: np.ndarray, remaining: np.ndarray) -> np.ndarray:
    """Free samples of the groups that still have free samples and have given the fewest so far."""
    open_groups = remaining > 0
    fewest = taken[open_groups].min()
    return free & open_groups[member] & (taken[member] == fewest)


def _scorer(features: np.ndarray, criterion: str) -> Callable[[int | None], np.ndarray | None]:
    """A closure over the criterion's state: called with None it returns every candidate's gain, called with an
    index it records that sample as taken."""
    if criterion in ("k_center", "kmeans_pp"):
        nearest = np.full(len(features), np.inf)  # distance of each candidate to its nearest taken sample
        power = 2 if criterion == "kmeans_pp" else 1

        def distance_to_taken(taken: int | None) -> np.ndarray | None:
            if taken is None:
                return nearest ** power
            np.minimum(nearest, np.linalg.norm(features - features[taken], axis=1), out=nearest)
            return None
        return distance_to_taken
    similarity = features @ features.T
    best = np.full(len(features), -1.0)  # cosine similarity of each candidate to its most similar taken sample

    def facility_location(taken: int | None) -> np.ndarray | None:
        nonlocal best
        if taken is None:
            return np.maximum(similarity - best[:, None], 0.0).sum(axis=0)
        best = np.maximum(best, similarity[:, taken])
        return None
    return facility_location
