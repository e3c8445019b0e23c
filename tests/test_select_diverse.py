"""--select diverse and kmeanspp: the N labelled samples taken in a coverage order of the frozen model's pooled
embeddings, under the draw's rules (foreground only, one per group first, the seed matters), the candidates'
embeddings cached once and reused by preprocessing and by later plans, and the choice recorded in splits.json and
plans.json."""
from __future__ import annotations

import json
import os
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from encoder_counts import count_encoded, plan_bf16
from synthetic_raw import make_2d_masks

from automedsam.errors import AutomedsamError
from automedsam.foundation.cache import EmbeddingCache
from automedsam.io import read_image, write_image
from automedsam.planning.coverage import coverage_order, pooled_feature
from automedsam.planning.plan_and_preprocess import plan_and_preprocess
from automedsam.planning.planner import plan_selection
from automedsam.planning.selection_features import features_key, load_features
from automedsam.planning.splits import Selection, make_splits
from automedsam.plans import Plans

CRITERIA = ("k_center", "facility_location")


def unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def clusters(rng: np.random.Generator, sizes: tuple[int, ...], spread: float = 0.05) -> np.ndarray:
    """Unit vectors in tight clusters around orthogonal directions, `sizes[k]` in cluster k."""
    rows = [np.eye(16)[k] + spread * rng.standard_normal((size, 16)) for k, size in enumerate(sizes)]
    return unit(np.concatenate(rows))


@pytest.mark.parametrize("criterion", CRITERIA)
def test_an_order_covers_every_cluster_before_a_second_sample_of_one(criterion):
    features = clusters(np.random.default_rng(0), (30, 10, 5))
    cluster_of = np.repeat([0, 1, 2], (30, 10, 5))
    for seed in range(5):
        order = coverage_order(features, [str(i) for i in range(45)], 3, criterion=criterion,
                               rng=np.random.default_rng(seed))
        assert sorted(cluster_of[order]) == [0, 1, 2]


@pytest.mark.parametrize("criterion", (*CRITERIA, "kmeans_pp"))
def test_groups_give_one_sample_each_before_any_gives_a_second(criterion):
    features = clusters(np.random.default_rng(1), (12, 12))
    groups = [f"g{i // 4}" for i in range(24)]  # 6 groups, the first three inside cluster 0
    order = coverage_order(features, groups, 9, criterion=criterion, rng=np.random.default_rng(0))
    first = [groups[i] for i in order[:6]]
    assert len(set(first)) == 6
    assert max(Counter(groups[i] for i in order).values()) == 2


def test_the_order_is_reproducible_per_seed_and_seeds_differ():
    features = clusters(np.random.default_rng(2), (20, 20, 20, 20))
    groups = [str(i) for i in range(80)]
    orders = {seed: coverage_order(features, groups, 4, criterion="facility_location",
                                   rng=np.random.default_rng(seed)) for seed in range(4)}
    assert orders[0] == coverage_order(features, groups, 4, criterion="facility_location",
                                       rng=np.random.default_rng(0))
    assert len({tuple(order) for order in orders.values()}) > 1


def test_facility_location_takes_typical_samples_where_k_center_takes_the_outlier():
    rng = np.random.default_rng(3)
    features = np.concatenate([clusters(rng, (40, 40)), unit(-np.eye(16)[[0]] - np.eye(16)[[1]])])  # opposite both
    groups = [str(i) for i in range(81)]
    cluster_of = np.repeat([0, 1, 2], (40, 40, 1))
    for seed in range(3):  # the seeded first pick lands in a cluster for these seeds
        typical = coverage_order(features, groups, 2, criterion="facility_location", rng=np.random.default_rng(seed))
        farthest = coverage_order(features, groups, 2, criterion="k_center", rng=np.random.default_rng(seed))
        assert farthest[0] == typical[0] and cluster_of[typical[0]] != 2
        assert cluster_of[typical[1]] == 1 - cluster_of[typical[0]] and farthest[1] == 80


def test_kmeans_pp_reaches_a_rare_cluster_far_more_often_than_a_uniform_draw():
    rng = np.random.default_rng(4)
    features = clusters(rng, (95, 5))
    groups = [str(i) for i in range(100)]
    rare = set(range(95, 100))
    weighted = [bool(rare & set(coverage_order(features, groups, 2, criterion="kmeans_pp",
                                               rng=np.random.default_rng(seed)))) for seed in range(200)]
    uniform = [bool(rare & set(np.random.default_rng(seed).choice(100, 2, replace=False))) for seed in range(200)]
    assert np.mean(weighted) > 0.4 and np.mean(uniform) < 0.2


def test_kmeans_pp_is_reproducible_keeps_its_prefix_and_takes_no_duplicate_while_others_are_left():
    features = np.repeat(clusters(np.random.default_rng(5), (3, 3, 3)), 2, axis=0)  # every sample twice
    groups = [str(i) for i in range(18)]
    orders = [coverage_order(features, groups, count, criterion="kmeans_pp", rng=np.random.default_rng(7))
              for count in (9, 9, 12)]
    assert orders[0] == orders[1] == orders[2][:9]
    assert len({i // 2 for i in orders[0]}) == 9, "no sample's twin before every distinct sample is taken"
    seeds = {tuple(coverage_order(features, groups, 4, criterion="kmeans_pp", rng=np.random.default_rng(seed)))
             for seed in range(6)}
    assert len(seeds) > 1


def test_pooled_feature_is_the_unit_mean_over_the_grid():
    embedding = np.zeros((256, 64, 64), np.float16)
    embedding[3] = 2.0
    embedding[7, :32] = 1.0
    feature = pooled_feature(embedding)
    assert feature.shape == (256,) and feature[3] == pytest.approx(2 / np.sqrt(4.25))
    assert np.linalg.norm(feature) == pytest.approx(1.0)


def fingerprint(groups: int, per_group: int) -> dict:
    cases = [{"case": f"c{g}_{k}", "group": f"g{g}", "shape": [32, 32], "annotation": "masks",
              "has_foreground": k != 0, "foreground_slices": None} for g in range(groups) for k in range(per_group)]
    return {"dataset_name": "Dataset009_Test", "cases": cases, "annotation": {"masks": len(cases), "boxes": 0,
                                                                               "none": 0}}


def selection_over(fp: dict, seed: int = 5) -> Selection:
    """Features for every foreground sample: four clusters spread over the groups."""
    rng = np.random.default_rng(seed)
    ids = [case["case"] for case in fp["cases"] if case["has_foreground"]]
    features = clusters(rng, (len(ids) // 4,) * 3 + (len(ids) - 3 * (len(ids) // 4),))
    record = {"method": "diverse", "criterion": "facility_location"}
    return Selection("diverse", "facility_location", dict(zip(ids, features)), record)


def test_splits_record_the_choice_and_keep_the_draw_rules():
    fp = fingerprint(groups=8, per_group=3)  # c*_0 hold no foreground
    selection = selection_over(fp)
    draws = {seed: make_splits(fp, None, shots=6, folds=3, seed=seed, selection=selection) for seed in range(4)}
    for splits in draws.values():
        assert splits["selection"] == {"method": "diverse", "criterion": "facility_location"}
        assert not [sid for sid in splits["labelled"] if sid.endswith("_0")], "only samples holding foreground"
        assert len({sid.split("_")[0] for sid in splits["labelled"]}) == 6, "one per group while groups remain"
    assert draws[1] == make_splits(fp, None, shots=6, folds=3, seed=1, selection=selection)
    assert len({tuple(splits["labelled"]) for splits in draws.values()}) > 1, "the seed changes the draw"
    ids = list(selection.features)
    cluster = {sid: min(index // (len(ids) // 4), 3) for index, sid in enumerate(ids)}
    assert all({cluster[sid] for sid in splits["labelled"]} == {0, 1, 2, 3} for splits in draws.values()), \
        "six coverage picks reach all four clusters"
    randoms = [make_splits(fp, None, shots=6, folds=3, seed=seed)["labelled"] for seed in range(4)]
    assert [splits["labelled"] for splits in draws.values()] != randoms
    assert make_splits(fp, None, shots=6, folds=3, seed=0)["selection"] == {"method": "random"}


def test_unencoded_candidates_beyond_the_cap_fill_the_draw_at_random():
    fp = fingerprint(groups=8, per_group=3)
    selection = selection_over(fp)
    few = Selection("diverse", "facility_location", dict(list(selection.features.items())[:3]), selection.record)
    labelled = make_splits(fp, None, shots=6, folds=3, seed=0, selection=few)["labelled"]
    assert set(few.features) <= set(labelled) and len(labelled) == 6


def test_the_planner_names_the_method_and_refuses_an_unknown_one():
    assert plan_selection(None)["method"] == "random"
    assert "documentation/benchmarks.md" in plan_selection(None)["reason"]
    chosen = plan_selection("diverse")
    assert chosen["method"] == "diverse" and chosen["cap"] >= 1000 and "encoder pass" in chosen["reason"]
    assert plan_selection("kmeanspp")["criterion"] == "kmeans_pp" and plan_selection("random")["criterion"] is None
    with pytest.raises(AutomedsamError, match="--select"):
        plan_selection("typical")


def test_diverse_encodes_candidates_once_into_the_cache_that_preprocessing_and_later_plans_reuse(roots, monkeypatch):
    make_2d_masks(roots["raw"], n_cases=12, per_group=2, empty_every=4)  # cases 0, 4, 8 empty: 9 candidates
    monkeypatch.setattr("automedsam.planning.planner.MAX_AUGMENTED_LABELLED", 0)  # no views: fewer encoder passes
    summary = plan_and_preprocess(1, shots=4, folds=2, seed=0, select="diverse", embed_all=True, num_workers=1,
                                  progress=False)
    out = summary.out_dir
    splits = json.loads((out / "splits.json").read_text())
    plans = json.loads((out / "plans.json").read_text())
    candidates = [f"case{i:02d}" for i in range(12) if i % 4]
    assert splits["selection"]["method"] == "diverse" and plans["selection"]["method"] == "diverse"
    assert splits["selection"]["candidates"] == splits["selection"]["encoded"] == 9
    assert set(splits["labelled"]) <= set(candidates)
    assert len({int(sid[4:]) // 2 for sid in splits["labelled"]}) == 4, "four patients"
    cache = EmbeddingCache(out, "litemedsam")
    assert all(cache.get(sid) is not None for sid in candidates)
    assert plans["augmentation"]["views"] == []
    assert summary.preprocessing["embeddings_computed"] == 3, "only the 3 empty samples, which are no candidates"

    def no_encoding(*args, **kwargs):
        raise AssertionError("a cached candidate was encoded again")

    monkeypatch.setattr(EmbeddingCache, "_encode_and_store", no_encoding)
    again = plan_and_preprocess(1, shots=4, folds=2, seed=1, select="diverse", plan_only=True, num_workers=1,
                                progress=False)
    assert json.loads((again.out_dir / "splits.json").read_text())["selection"]["encoded"] == 9
    weighted = plan_and_preprocess(1, shots=4, folds=2, seed=1, select="kmeanspp", plan_only=True, num_workers=1,
                                   progress=False)
    splits = json.loads((weighted.out_dir / "splits.json").read_text())
    assert splits["selection"]["method"] == "kmeanspp" and splits["selection"]["criterion"] == "kmeans_pp"
    assert splits["selection"]["encoded"] == 9 and set(splits["labelled"]) <= set(candidates)
    assert "every sample drawn with the seed" in splits["reason"]


def test_a_rerun_after_a_bf16_plan_encodes_nothing_and_keeps_the_candidates_features(roots, monkeypatch):
    make_2d_masks(roots["raw"], n_cases=12, per_group=2, empty_every=4)  # 9 candidates
    monkeypatch.setattr("automedsam.planning.planner.MAX_AUGMENTED_LABELLED", 0)
    plan_bf16(monkeypatch)
    counts = count_encoded(monkeypatch)
    first = plan_and_preprocess(1, shots=4, folds=2, seed=0, select="diverse", num_workers=1, progress=False)
    plans = json.loads((first.out_dir / "plans.json").read_text())
    assert plans["foundation_model"]["precision"] == "bf16"
    assert sum(counts) == 9 + 4 + 4, "the candidates once (selection), the labelled in fp32 (label statistics) and bf16"
    assert sorted(path.stem for path in (first.out_dir / "embeddings" / "litemedsam").glob("*.npy")) == sorted(
        json.loads((first.out_dir / "splits.json").read_text())["labelled"])
    counts.clear()
    again = plan_and_preprocess(1, shots=4, folds=2, seed=0, select="diverse", num_workers=1, progress=False)
    assert sum(counts) == 0, "the rerun found the candidates' features and the bf16 embeddings"
    assert again.preprocessing["embeddings_computed"] == 0


def test_a_coverage_selection_with_every_sample_labelled_is_refused(roots):
    make_2d_masks(roots["raw"], n_cases=6, per_group=2, empty_every=4)
    with pytest.raises(AutomedsamError, match="--select kmeanspp chooses which --shots N"):
        plan_and_preprocess(1, shots="all", folds=2, seed=0, select="kmeanspp", num_workers=1, progress=False)


def import_again_flipped(image: Path) -> None:
    """A case's image replaced under its name (what automedsam_convert --overwrite does), a moment later."""
    pixels, geometry = read_image(image)
    write_image(image, np.ascontiguousarray(pixels[::-1, ::-1]), geometry)
    later = time.time_ns() + 10**9
    os.utime(image, ns=(later, later))


def test_a_candidate_whose_image_was_imported_again_is_pooled_from_the_new_image(roots, monkeypatch):
    raw = make_2d_masks(roots["raw"], n_cases=12, per_group=2, empty_every=4)  # 9 candidates
    monkeypatch.setattr("automedsam.planning.planner.MAX_AUGMENTED_LABELLED", 0)
    first = plan_and_preprocess(1, shots=4, folds=2, seed=0, select="diverse", plan_only=True, num_workers=1,
                                progress=False)
    key = features_key(Plans.load(first.out_dir / "plans.json"))
    before = load_features(first.out_dir, key=key)
    store, cached = EmbeddingCache._encode_and_store, []

    def counted(self, model, batch, **options):
        cached.extend(sid for sid, _ in batch)
        return store(self, model, batch, **options)

    monkeypatch.setattr(EmbeddingCache, "_encode_and_store", counted)
    path = first.out_dir / "selection_features.npz"
    with np.load(path) as arrays:  # a file from before digests were kept: taken as current once, not re-pooled
        legacy = {name: arrays[name] for name in arrays.files if name != "images"}
    np.savez(path, **legacy)
    plan_and_preprocess(1, shots=4, folds=2, seed=0, select="diverse", plan_only=True, num_workers=1,
                        progress=False)
    assert cached == [] and load_features(first.out_dir, key=key)["case01"].image == ""
    import_again_flipped(raw / "imagesTr" / "case01_0000.nii.gz")
    plan_and_preprocess(1, shots=4, folds=2, seed=0, select="diverse", plan_only=True, num_workers=1,
                        progress=False)
    after = load_features(first.out_dir, key=key)
    assert cached == ["case01"], "the replaced candidate alone is encoded again"
    assert after["case01"].image != before["case01"].image
    assert not np.allclose(after["case01"].vector, before["case01"].vector)
    assert all(np.array_equal(after[sid].vector, before[sid].vector) for sid in before if sid != "case01")


def test_a_sample_labelled_after_its_image_was_imported_again_is_not_given_the_old_embedding(roots, monkeypatch):
    raw = make_2d_masks(roots["raw"], n_cases=12, per_group=2, empty_every=4)
    monkeypatch.setattr("automedsam.planning.planner.MAX_AUGMENTED_LABELLED", 0)
    plan_and_preprocess(1, shots=4, folds=2, seed=0, select="diverse", plan_only=True, num_workers=1,
                        progress=False)  # every candidate's embedding cached, case01's among them
    import_again_flipped(raw / "imagesTr" / "case01_0000.nii.gz")
    summary = plan_and_preprocess(1, shots=4, folds=2, seed=0, embed_all=True, num_workers=1, progress=False)
    assert summary.preprocessing["embeddings_computed"] == 3 + 1, "the 3 empty samples and case01"
    assert any("stored before their image changed" in note for note in summary.preprocessing["notes"])


def test_a_candidate_replaced_by_an_older_dated_image_is_not_given_the_old_embedding(roots, monkeypatch):
    """An image restored with its archive time (cp -p, unzip, rsync -a) is no newer than its cached embedding: the
    features file saw its new digest but pooled the old image's embedding again, which preprocessing kept too."""
    raw = make_2d_masks(roots["raw"], n_cases=12, per_group=2, empty_every=4)
    monkeypatch.setattr("automedsam.planning.planner.MAX_AUGMENTED_LABELLED", 0)
    first = plan_and_preprocess(1, shots=4, folds=2, seed=0, select="diverse", plan_only=True, num_workers=1,
                                progress=False)
    cache = EmbeddingCache(first.out_dir, "litemedsam")
    old = cache.get("case01")
    image = raw / "imagesTr" / "case01_0000.nii.gz"
    dated = image.stat()
    pixels, geometry = read_image(image)
    write_image(image, np.ascontiguousarray(pixels[::-1, ::-1]), geometry)
    os.utime(image, ns=(dated.st_atime_ns, dated.st_mtime_ns - 10**9))
    plan_and_preprocess(1, shots=4, folds=2, seed=0, select="diverse", plan_only=True, num_workers=1,
                        progress=False)
    assert old is not None and not np.array_equal(cache.get("case01"), old), "encoded from the image there now"
