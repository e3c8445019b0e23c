"""Embedding cache: fp16 files in the agreed layout, computed once, never re-encoded on a hit."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from automedsam.annotation.preview import BoxPreview
from automedsam.conversion import convert_folder
from automedsam.files import load_json, save_json
from automedsam.foundation.cache import PREPROCESSING_STATE_FILE, EmbeddingCache, PlannedEmbeddingCache
from automedsam.foundation.registry import build_foundation_model
from automedsam.planning.plan_and_preprocess import plan_and_preprocess
from automedsam.plans import Plans


class CountingModel:
    """Stands in for a FoundationModel: each embedding is filled with its image's mean, calls are counted."""

    name = "fake"
    precision = "fp32"

    def __init__(self) -> None:
        self.calls: list[int] = []

    def prepare(self, image2d: np.ndarray) -> tuple[torch.Tensor, None]:
        return torch.full((3, 8, 8), float(np.mean(image2d))), None

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        self.calls.append(images.shape[0])
        return images.mean(dim=(1, 2, 3))[:, None, None, None].expand(-1, 256, 64, 64).clone()


def images(n: int, seed: int = 0) -> list[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [(f"case{i:02d}__z{i:03d}", rng.random((40 + 10 * i, 70))) for i in range(n)]


def test_put_get_layout_and_dtype(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path, "litemedsam")
    assert cache.get("case01") is None
    embedding = torch.randn(256, 64, 64)
    cache.put("case01", embedding)
    path = tmp_path / "embeddings" / "litemedsam" / "case01.npy"
    assert cache.path("case01") == path and path.is_file()
    stored = cache.get("case01")
    assert stored.dtype == np.float16 and stored.shape == (256, 64, 64)
    np.testing.assert_allclose(stored.astype(np.float32), embedding.numpy(), rtol=1e-3, atol=1e-3)
    assert sorted(p.name for p in path.parent.iterdir()) == ["case01.npy"]
    with pytest.raises(ValueError, match="shape"):
        cache.put("case02", np.zeros((256, 32, 32)))
    assert EmbeddingCache(tmp_path, "medsam_vit_b").get("case01") is None


def test_unreadable_or_misshapen_files_count_as_missing(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path, "litemedsam")
    cache.path("broken").parent.mkdir(parents=True)
    cache.path("broken").write_bytes(b"\x93NUMPY garbage")
    np.save(cache.path("small"), np.zeros((4, 4), dtype=np.float16))
    assert cache.get("broken") is None and cache.get("small") is None


def test_compute_missing_encodes_once_in_batches(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model = CountingModel()
    cache = EmbeddingCache(tmp_path, model.name)
    items = images(5)
    assert cache.compute_missing(model, items, batch_size=2) == 5
    assert model.calls == [2, 2, 1]
    shown = capsys.readouterr()
    assert shown.out == "" and "fake embeddings" in shown.err, "the progress bar goes to stderr, like every other"
    for sample_id, image in items:
        assert cache.get(sample_id)[0, 0, 0] == pytest.approx(image.mean(), abs=1e-3)

    model.calls.clear()
    assert cache.compute_missing(model, items, batch_size=2) == 0
    assert model.calls == []

    cache.path(items[3][0]).unlink()
    assert cache.compute_missing(model, iter(items), batch_size=2) == 1
    assert model.calls == [1]


def test_compute_missing_with_litemedsam_stores_its_embedding(tmp_path: Path) -> None:
    lite = build_foundation_model("litemedsam", device="cpu")
    cache = EmbeddingCache(tmp_path, lite.name)
    (sample_id, image), = images(1, seed=4)
    assert cache.compute_missing(lite, [(sample_id, image)]) == 1
    prepared, _ = lite.prepare(image)
    direct = lite.encode(prepared[None])[0].numpy()
    np.testing.assert_allclose(cache.get(sample_id).astype(np.float32), direct, atol=2e-2, rtol=1e-2)


def planned(tmp_path: Path, *, lower: float = 0.0) -> Plans:
    """Plans whose embedding choices (here the intensity window's lower end) make the cache key."""
    return Plans({"foundation_model": {"name": "fake"}, "slicing": {"axis": None},
                  "normalization": {"scheme": "fixed", "lower": lower, "upper": 1.0}}, tmp_path / "plans.json")


def record(root: Path, plans: Plans) -> None:
    save_json(root / PREPROCESSING_STATE_FILE, {"embeddings": {plans.foundation_name: plans.embeddings_key()}})


def test_planned_cache_encodes_each_sample_once_and_as_stored(tmp_path: Path) -> None:
    plans, model = planned(tmp_path), CountingModel()
    record(tmp_path, plans)
    samples = images(3)
    ids, planes = [sid for sid, _ in samples], [plane for _, plane in samples]
    first = PlannedEmbeddingCache(tmp_path, plans).embeddings(model, ids[:2], planes[:2])
    assert model.calls == [2] and first.dtype == torch.float32 and first.shape == (2, 256, 64, 64)
    again = PlannedEmbeddingCache(tmp_path, plans).embeddings(model, ids, planes)
    assert model.calls == [2, 1]  # only the third was encoded
    torch.testing.assert_close(again[:2], first, rtol=0, atol=0)
    fresh = model.encode(torch.stack([model.prepare(plane)[0] for plane in planes[2:]]))
    torch.testing.assert_close(again[2:], fresh.half().float(), rtol=0, atol=0)  # rounded as the cache stores it


def test_planned_cache_is_neither_read_nor_filled_under_other_plans(tmp_path: Path) -> None:
    plans, other, model = planned(tmp_path), planned(tmp_path, lower=-1.0), CountingModel()
    samples = images(2)
    ids, planes = [sid for sid, _ in samples], [plane for _, plane in samples]
    PlannedEmbeddingCache(tmp_path, plans).embeddings(model, ids, planes)
    assert not (tmp_path / "embeddings").exists()  # nothing recorded: the cache is preprocessing's to start
    record(tmp_path, other)
    EmbeddingCache(tmp_path, "fake").put(ids[0], torch.zeros(256, 64, 64))
    cache = PlannedEmbeddingCache(tmp_path, plans)
    assert cache.get(ids[0]) is None
    cache.embeddings(model, ids, planes)
    assert model.calls == [2, 2] and not EmbeddingCache(tmp_path, "fake").path(ids[1]).exists()
    for damaged in ("{damaged", '{"embeddings": null}', "[]"):
        (tmp_path / PREPROCESSING_STATE_FILE).write_text(damaged)
        assert cache.get(ids[0]) is None and not cache.holds_these_plans()
        cache.embeddings(model, ids, planes)  # a damaged record: encoded, no error
    assert model.calls == [2, 2, 2, 2, 2]


def test_planned_cache_serves_only_a_model_computing_in_the_plans_precision(tmp_path: Path) -> None:
    """bf16 planned (and cached) on a GPU runs in fp32 on a CPU without bf16: that model neither reads nor adds."""
    plans = Plans({**planned(tmp_path).data, "foundation_model": {"name": "fake", "precision": "bf16"}})
    record(tmp_path, plans)
    samples = images(2)
    ids, planes = [sid for sid, _ in samples], [plane for _, plane in samples]
    EmbeddingCache(tmp_path, "fake").put(ids[0], torch.zeros(256, 64, 64))
    fp32_model = CountingModel()
    PlannedEmbeddingCache(tmp_path, plans).embeddings(fp32_model, ids, planes)
    assert fp32_model.calls == [2] and not EmbeddingCache(tmp_path, "fake").path(ids[1]).exists()
    bf16_model = CountingModel()
    bf16_model.precision = "bf16"
    read = PlannedEmbeddingCache(tmp_path, plans).embeddings(bf16_model, ids, planes)
    assert bf16_model.calls == [1] and not read[0].any() and EmbeddingCache(tmp_path, "fake").path(ids[1]).exists()


def test_planned_cache_reads_without_a_usable_lock_file(tmp_path: Path) -> None:
    """A read takes no lock (a read-only folder, another user's lock file): it checks the record before and after."""
    plans, model = planned(tmp_path), CountingModel()
    record(tmp_path, plans)
    (sample_id, plane), = images(1)
    EmbeddingCache(tmp_path, "fake").put(sample_id, torch.ones(256, 64, 64))
    (tmp_path / ".embeddings.lock").mkdir()  # cannot be opened as a lock file
    cache = PlannedEmbeddingCache(tmp_path, plans)
    assert cache.embeddings(model, [sample_id], [plane]).eq(1).all() and model.calls == []
    (other_id, other_plane), = images(1, seed=3)
    cache.embeddings(model, [f"{other_id}x"], [other_plane])  # encoded; not stored, and no error
    assert model.calls == [1] and not EmbeddingCache(tmp_path, "fake").path(f"{other_id}x").exists()


def raw_image(root: Path, sample_id: str, content: bytes, *, dated: int) -> Path:
    """The raw image file of `sample_id`'s case under `root`/raw, modified at `dated` (ns)."""
    image = root / "raw" / f"{sample_id}_0000.png"
    image.parent.mkdir(exist_ok=True)
    image.write_bytes(content)
    os.utime(image, ns=(dated, dated))
    return image


def test_planned_cache_encodes_again_an_image_written_after_its_embedding(tmp_path: Path) -> None:
    """An image imported again under its name (new pixels) kept its old embedding for the preview, the review and
    Segment images: an unlabelled sample has no record that preprocessing could find outdated."""
    plans, model = planned(tmp_path), CountingModel()
    record(tmp_path, plans)
    (sample_id, plane), = images(1)
    image = raw_image(tmp_path, sample_id, b"written before its embedding", dated=10**18)
    EmbeddingCache(tmp_path, "fake").put(sample_id, torch.ones(256, 64, 64))
    stored = EmbeddingCache(tmp_path, "fake").path(sample_id)
    os.utime(stored, ns=(11 * 10**17, 11 * 10**17))
    cache = PlannedEmbeddingCache(tmp_path, plans, images={sample_id.split("__")[0]: image})
    assert cache.embeddings(model, [sample_id], [plane]).eq(1).all() and model.calls == []
    os.utime(image, ns=(12 * 10**17, 12 * 10**17))  # imported again (2008; the new embedding: now)
    fresh = cache.embeddings(model, [sample_id], [plane])
    assert model.calls == [1] and not fresh.eq(1).all()
    assert cache.embeddings(model, [sample_id], [plane]).equal(fresh) and model.calls == [1]  # stored anew


def test_planned_cache_encodes_again_an_image_replaced_by_an_older_dated_file(tmp_path: Path) -> None:
    """Told by time alone, an image replaced by an older-dated file (cp -p, rsync -a, an unzipped download) was no
    newer than the embedding of the pixels it replaced, which was served for it. The embedding keeps its image's
    digest (name, size, modification time) as it was when it was read."""
    plans, model = planned(tmp_path), CountingModel()
    record(tmp_path, plans)
    (sample_id, plane), = images(1)
    image = raw_image(tmp_path, sample_id, b"the first image", dated=12 * 10**17)
    cache = PlannedEmbeddingCache(tmp_path, plans, images={sample_id.split("__")[0]: image})
    first = cache.embeddings(model, [sample_id], [plane])
    assert cache.embeddings(model, [sample_id], [plane]).equal(first) and model.calls == [1], "a hit"
    image.write_bytes(b"another image, dated earlier")
    os.utime(image, ns=(11 * 10**17, 11 * 10**17))
    other = cache.embeddings(model, [sample_id], [-plane])
    assert model.calls == [1, 1] and not other.equal(first)
    assert cache.embeddings(model, [sample_id], [-plane]).equal(other) and model.calls == [1, 1], "stored anew"


def test_an_embedding_stored_without_a_digest_after_one_with_is_judged_by_time(tmp_path: Path) -> None:
    """A writer that knows no image file replaces the stamp of the embedding it overwrites: the old image's digest
    must not judge the new embedding."""
    cache = EmbeddingCache(tmp_path, "fake")
    image = tmp_path / "case00_0000.png"
    image.write_bytes(b"image")
    os.utime(image, ns=(10**18, 10**18))
    cache.put("case00", torch.ones(256, 64, 64), image_digest="another image's")
    assert cache.outdated("case00", image)
    cache.put("case00", torch.ones(256, 64, 64))
    assert not cache.stamp_path("case00").exists() and not cache.outdated("case00", image)
    assert cache.drop_outdated(["case00"], {"case00": image}) == 0 and cache.get("case00") is not None


class PreviewModel(CountingModel):
    """A CountingModel the box preview can draw a mask with: the mask is the embedding's corner, thresholded."""

    device = torch.device("cpu")

    def __call__(self) -> PreviewModel:
        """The preview calls what it was given in place of a FoundationModel, to build it."""
        return self

    def frame_for(self, shape: tuple[int, int]) -> None:
        return None

    def to_low_res(self, box: list[int], frame: None) -> list[float]:
        return [float(value) for value in box]

    def box_prompt(self, boxes: torch.Tensor) -> tuple[None, None]:
        return None, None

    def decode(self, embeddings: torch.Tensor, sparse: None, dense: None) -> torch.Tensor:
        return embeddings[:, :1, :4, :4]

    def logits_to_original(self, logits: torch.Tensor, frame: None) -> torch.Tensor:
        return logits


@pytest.mark.parametrize("imported_since_the_start", [False, True])
def test_the_box_preview_encodes_again_an_image_imported_again_while_the_page_runs(
        tmp_path: Path, imported_since_the_start: bool) -> None:
    """The preview kept the last samples' embeddings in memory by sample id alone: a case imported again while the
    page ran was previewed with the embedding of the image it replaced. Then the preview kept its own copy of the
    images: a case imported after the page started (the session hands the cache the dataset read again) had no image
    for it, so the embedding kept in memory was served after the image was replaced."""
    plans, model = planned(tmp_path), PreviewModel()
    image = recorded_image(tmp_path, plans, "case00_0000.png")
    preview = BoxPreview(plans, tmp_path, model, images={} if imported_since_the_start else {"case00": image})
    if imported_since_the_start:
        preview.cache.images = {"case00": image}  # what the session does when it reads the dataset again
    assert mask_read(preview, "case00", np.ones((6, 6))).all() and model.calls == [1]
    os.utime(EmbeddingCache(tmp_path, "fake").path("case00"), ns=(11 * 10**17, 11 * 10**17))
    assert mask_read(preview, "case00", np.ones((6, 6))).all() and model.calls == [1], "kept in memory"
    imported_again(image)
    assert not mask_read(preview, "case00", -np.ones((6, 6))).any() and model.calls == [1, 1]


def recorded_image(tmp_path: Path, plans: Plans, name: str) -> Path:
    """The cache recorded under `plans` and one raw image file `name` (its bytes stand for its pixels), dated."""
    record(tmp_path, plans)
    image = tmp_path / "raw" / name
    image.parent.mkdir()
    image.write_bytes(b"first image")
    os.utime(image, ns=(10**18, 10**18))
    return image


def imported_again(image: Path) -> None:
    """The image file replaced by another, older-dated one, as `cp -p` does."""
    image.write_bytes(b"image imported again")
    os.utime(image, ns=(12 * 10**17, 12 * 10**17))


def mask_read(preview: BoxPreview, sample_id: str, pixels: np.ndarray) -> np.ndarray:
    """The preview's mask of a fixed box on `pixels`, read as the session reads a sample's plane."""
    return preview.mask(sample_id, pixels, [0, 0, 3, 3], read_as=preview.note_read(sample_id))


def test_the_box_preview_encodes_again_an_image_imported_again_while_its_pixels_were_read(tmp_path: Path) -> None:
    """The preview stamped an embedding with the image file as it was after its pixels were read: an image
    imported again during that read kept the replaced pixels' embedding, in memory and in the cache, under the new
    file's stamp, and the page previewed the old image's masks on the new one."""
    plans, model = planned(tmp_path), PreviewModel()
    image = recorded_image(tmp_path, plans, "case00_0000.png")
    preview = BoxPreview(plans, tmp_path, model, images={"case00": image})
    read_as = preview.note_read("case00")
    imported_again(image)  # while the first image's pixels were read
    assert preview.mask("case00", np.ones((6, 6)), [0, 0, 3, 3], read_as=read_as).all() and model.calls == [1]
    assert EmbeddingCache(tmp_path, "fake").outdated("case00", image)
    assert not mask_read(preview, "case00", -np.ones((6, 6))).any() and model.calls == [1, 1]


def test_a_planned_interactive_dataset_keeps_what_the_box_preview_encodes(tmp_path: Path, roots) -> None:
    """A dataset to annotate in the browser is planned without preprocessing (nothing is boxed yet), which recorded
    no plans for the cache: the preview's embeddings were never stored, and every image was encoded again by the
    first Train and after each restart of the page. A key recorded by preprocessing (whose plans may hold the
    precision it measured, bf16 on a GPU) is left as it is by planning alone: its embeddings were deleted by every
    Train that planned without preprocessing (a sample marked No structure), then encoded again."""
    scans = tmp_path / "scans"
    scans.mkdir()
    rng = np.random.default_rng(0)
    for index in range(4):
        Image.fromarray(rng.integers(0, 200, (24, 32), dtype=np.uint8)).save(scans / f"scan{index}.png")
    convert_folder(scans, dataset_id=7, name="Scans", label_names=["head"])
    plan_and_preprocess(7, shots=2, folds=2, num_workers=1, plan_only=True, progress=False)
    out = roots["preprocessed"] / "Dataset007_Scans"
    plans, model = Plans.load(out / "plans.json"), CountingModel()
    PlannedEmbeddingCache(out, plans).add("scan0", np.ones((256, 64, 64), dtype=np.float16))
    read = PlannedEmbeddingCache(out, plans).embeddings(model, ["scan0"], [np.zeros((24, 32))])
    assert model.calls == [] and read.eq(1).all()
    state = load_json(out / PREPROCESSING_STATE_FILE, "state")
    save_json(out / PREPROCESSING_STATE_FILE, {**state, "embeddings": {plans.foundation_name: "measured plans"}})
    plan_and_preprocess(7, num_workers=1, plan_only=True, progress=False)
    assert EmbeddingCache(out, plans.foundation_name).path("scan0").exists()
    assert not PlannedEmbeddingCache(out, plans).holds_these_plans()  # so the preview neither reads nor adds


def test_planned_cache_is_not_read_after_the_weights_file_is_replaced(tmp_path: Path) -> None:
    """Weights saved over the planned checkpoint (a fine-tune) left the old embeddings served to the review, the box
    preview and --dataset-images, and new samples encoded with the new weights beside them."""
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"original weights")
    section = {"name": "fake", "checkpoint": str(weights)}
    plans = Plans({**planned(tmp_path).data, "foundation_model": section}, tmp_path / "plans.json")
    model, (sample_id, plane) = CountingModel(), images(1)[0]
    record(tmp_path, plans)
    PlannedEmbeddingCache(tmp_path, plans).embeddings(model, [sample_id], [plane])
    assert PlannedEmbeddingCache(tmp_path, plans).get(sample_id) is not None
    weights.write_bytes(b"finetuned weights")
    os.utime(weights, ns=(2 * 10**18, 2 * 10**18))
    cache = PlannedEmbeddingCache(tmp_path, Plans(plans.data, plans.where))
    assert cache.get(sample_id) is None and not cache.holds_these_plans()
    cache.embeddings(model, [sample_id], [plane])
    assert model.calls == [1, 1]


def test_two_preview_requests_on_one_volume_stamp_each_embedding_with_its_own_read(tmp_path: Path) -> None:
    """The digest noted before a read was kept per case and shared by the page's request threads: a request for
    another slice of the same volume, noted after the volume was imported again, stamped the first request's
    old-pixel embedding with the new volume's digest, and it was served as current from then on."""
    plans, model = planned(tmp_path), PreviewModel()
    image = recorded_image(tmp_path, plans, "case00_0000.nii.gz")
    preview = BoxPreview(plans, tmp_path, model, images={"case00": image})
    first = preview.note_read("case00__z001")
    imported_again(image)  # while the first request reads its slice
    preview.note_read("case00__z002")  # the second request, another slice of the volume
    preview.mask("case00__z001", np.ones((6, 6)), [0, 0, 3, 3], read_as=first)
    assert EmbeddingCache(tmp_path, "fake").outdated("case00__z001", image)
    assert PlannedEmbeddingCache(tmp_path, plans, images={"case00": image}).get("case00__z001") is None
