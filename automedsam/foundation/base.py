"""One frozen SAM-family model behind the interface every stage uses: prepare, encode, prompt, decode.

Encoder, prompt encoder and mask decoder are segment_anything modules (LiteMedSAM swaps in a TinyViT
encoder). Only the pixel scaling and the input size differ between the models.
"""
from __future__ import annotations

import numbers
from contextlib import AbstractContextManager, nullcontext
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.modeling import Sam

from automedsam.boxes import Box, validate_box
from automedsam.device import autocast_dtype, resolve_device
from automedsam.errors import AutomedsamError
from automedsam.foundation.frame import RESIZES, Frame, box_to_frame, logits_to_shape, make_frame, mask_to_frame

EMBEDDING_SHAPE = (256, 64, 64)
LOW_RES_SIZE = 256
PIXEL_SCALINGS = ("minmax", "sam")  # [0, 1] min-max, or SAM's 0-255 standardised with its pixel mean/std


def placement(device: str | torch.device | None, precision: str) -> torch.device:
    """The device to build a model on (auto when None), after checking `precision`: before any weights are read."""
    resolved = device if isinstance(device, torch.device) else resolve_device(device)
    autocast_dtype(resolved, precision)
    return resolved


def default_batch_size(device: torch.device) -> int:
    """Images per encoder call unless the user says otherwise: 8 on a GPU; 1 on a CPU, where batching gains no
    speed and each image of a LiteMedSAM batch holds about 225 MB of activations (8 at once: a 2.6 GB peak)."""
    return 1 if device.type == "cpu" else 8


def default_decoder_rows(device: torch.device) -> int | None:
    """Prompts per decoder pass: 4 on a CPU, where a pass over more rows costs more per row (its activations
    outgrow the caches; documentation/benchmarks.md, Speed); no limit on a GPU, where one large pass is fastest."""
    return 4 if device.type == "cpu" else None


class FoundationModel:
    """A frozen foundation model; everything runs without gradients except `decode`.

    `decode` keeps the graph so training can backpropagate through the frozen decoder into the prompt
    embeddings predicted by the prompt module.
    """

    low_res_size = LOW_RES_SIZE
    embedding_shape = EMBEDDING_SHAPE

    def __init__(
        self,
        name: str,
        network: Sam,
        input_size: int,
        pixel_scaling: str,
        device: torch.device,
        precision: str = "fp32",
        resize: str = "longest_side",
    ) -> None:
        if pixel_scaling not in PIXEL_SCALINGS:
            raise ValueError(f"pixel_scaling must be one of {PIXEL_SCALINGS}, got {pixel_scaling!r}")
        if resize not in RESIZES:
            raise ValueError(f"resize must be one of {RESIZES}, got {resize!r}")
        self._autocast = autocast_dtype(device, precision)
        self.name = name
        self.input_size = input_size
        self.pixel_scaling = pixel_scaling
        self.resize = resize  # how images reach the input square: as the model was trained (foundation.frame)
        self.device = device
        self.precision = precision
        network.requires_grad_(False)
        network.eval()
        self.network = network.to(device)
        self.image_encoder = self.network.image_encoder
        self.prompt_encoder = self.network.prompt_encoder
        self.mask_decoder = self.network.mask_decoder
        self.decoder_rows = default_decoder_rows(device)
        with torch.no_grad():  # fixed by the frozen prompt encoder: computed once, not per decoder call
            self._dense_pe = self.prompt_encoder.get_dense_pe()

    def __repr__(self) -> str:
        return f"FoundationModel({self.name!r}, input_size={self.input_size}, device={self.device}, {self.precision})"

    def frame_for(self, shape: Sequence[int]) -> Frame:
        """Geometry of an image of `shape` (H, W) inside this model's input square."""
        return make_frame(shape[:2], self.input_size, resize=self.resize)

    @torch.no_grad()
    def prepare(self, image2d: np.ndarray) -> tuple[torch.Tensor, Frame]:
        """(H, W) or (H, W, 3) image -> the model's (3, S, S) float32 input and its frame.

        Longest side resized to S (bilinear, antialiased), min-max to [0, 1], for SAM then scaled to
        0-255 and standardised with its pixel mean/std, zero padded bottom/right.
        """
        pixels = _channels_first(image2d)
        frame = self.frame_for(pixels.shape[1:])
        resized = _resized(pixels, frame.resized_shape)
        low, high = resized.min(), resized.max()
        resized = (resized - low) / torch.clamp(high - low, min=1e-8)
        if self.pixel_scaling == "sam":
            mean, std = self.network.pixel_mean.cpu(), self.network.pixel_std.cpu()
            resized = (resized * 255.0 - mean) / std
        padded = torch.zeros((3, self.input_size, self.input_size), dtype=torch.float32)
        padded[:, : frame.resized_shape[0], : frame.resized_shape[1]] = resized
        return padded, frame

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) prepared images -> (B, 256, 64, 64) float32 embeddings, autocast per `precision`."""
        expected = (3, self.input_size, self.input_size)
        if images.ndim != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(f"{self.name} encodes (B, {expected}) images, got {tuple(images.shape)}")
        images = images.to(self.device, torch.float32)
        with self._precision():
            embeddings = self.image_encoder(images)
        return embeddings.float()

    def _precision(self) -> AbstractContextManager:
        """Autocast to the model's `precision` (nothing for fp32)."""
        if self._autocast is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self._autocast)

    def dense_pe(self) -> torch.Tensor:
        """The decoder's dense positional encoding of the embedding grid, (1, 256, 64, 64)."""
        return self._dense_pe

    @torch.no_grad()
    def box_prompt(self, boxes_low_res: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Boxes (B, 4) in the low-res frame -> sparse (B, 2, 256) and dense (B, 256, 64, 64) embeddings."""
        boxes = torch.as_tensor(boxes_low_res, dtype=torch.float32, device=self.device).reshape(-1, 4)
        factor = self.input_size / self.low_res_size  # inclusive corners: the far ones end at (x + 1) * factor - 1
        if factor != 1:  # LiteMedSAM prompts in the low-res frame itself: its boxes are passed as they are
            boxes = torch.cat([boxes[:, :2] * factor, (boxes[:, 2:] + 1.0) * factor - 1.0], dim=1)
        return self.prompt_encoder(points=None, boxes=boxes, masks=None)

    def decode(self, embeddings: torch.Tensor, sparse: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        """B image embeddings with one prompt each -> (B, 1, 256, 256) mask logits over the padded input.

        segment_anything's decoder repeats the image embeddings once per prompt and then adds the dense
        prompt embedding; it uses the image embedding nowhere else. Passing a zero image embedding and
        `embeddings + dense` as the dense prompt gives exactly that sum per image, for many images in one
        call; the rows go through in passes of at most `decoder_rows` prompts (each row is computed on its
        own, so the pass size changes the speed, not the logits). Gradients flow to `sparse` and `dense`.
        Without gradients (prediction, pseudo-labels) the decoder runs in the model's `precision` like the
        encoder; with them (training) under the caller's autocast (the training's own precision, not the model's).
        """
        return self.decode_scored(embeddings, sparse, dense)[0]

    def decode_scored(self, embeddings: torch.Tensor, sparse: torch.Tensor,
                      dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`decode`, plus the decoder's own estimate of each mask's IoU with the prompted object, (B,)."""
        embeddings = embeddings.to(self.device, torch.float32)
        sparse = sparse.to(self.device)
        dense = dense.to(self.device)
        batch = embeddings.shape[0]
        if sparse.ndim != 3 or sparse.shape[0] != batch or dense.shape[0] != batch:
            raise ValueError(
                f"decode needs one prompt per image: embeddings {tuple(embeddings.shape)}, "
                f"sparse {tuple(sparse.shape)}, dense {tuple(dense.shape)}"
            )
        rows = self.decoder_rows or max(batch, 1)
        zeros = embeddings.new_zeros((1, *embeddings.shape[1:]))
        training = torch.is_grad_enabled()
        with nullcontext() if training else self._precision():
            passes = [
                self.mask_decoder(
                    image_embeddings=zeros,
                    image_pe=self.dense_pe(),
                    sparse_prompt_embeddings=sparse[start : start + rows],
                    dense_prompt_embeddings=embeddings[start : start + rows] + dense[start : start + rows],
                    multimask_output=False,
                )
                for start in range(0, max(batch, 1), rows)
            ]
        logits = passes[0][0] if len(passes) == 1 else torch.cat([masks for masks, _ in passes])
        scores = torch.cat([quality[:, 0] for _, quality in passes])
        return (logits, scores) if training else (logits.float(), scores.float())

    def to_low_res(self, box: Sequence[float], frame: Frame) -> list[float]:
        """Inclusive box in original pixels -> inclusive float corners in the low-res frame."""
        return box_to_frame(box, self._low_res_scale(frame), self.low_res_size)

    def mask_to_low_res(self, mask2d: np.ndarray, frame: Frame) -> np.ndarray:
        """(H, W) mask -> (256, 256) low-res mask, nearest neighbour, zero padded like the image."""
        if tuple(np.shape(mask2d)) != frame.original_shape:
            raise ValueError(f"mask shape {np.shape(mask2d)} does not match frame {frame.original_shape}")
        return mask_to_frame(mask2d, self._low_res_scale(frame), self.low_res_size)

    def logits_to_original(self, low_res: torch.Tensor, frame: Frame) -> torch.Tensor:
        """(B, 1, 256, 256) low-res logits -> (B, 1, H, W) logits on the original image grid."""
        return logits_to_shape(low_res, frame, self.input_size)

    @torch.no_grad()
    def segment_boxes(self, image2d: np.ndarray, boxes: Sequence[Sequence[int]], *,
                      embedding: torch.Tensor | np.ndarray | None = None) -> np.ndarray:
        """Classic box-prompted MedSAM: one bool (H, W) mask per box of `boxes` (a list of inclusive [x0, y0, x1, y1]
        pixel boxes inside the image, as in a box file), stacked as (n, H, W). `embedding`: the image's
        (1, 256, 64, 64) embedding when the caller has it (a cache; (256, 64, 64) or a numpy array also do), else the
        image is encoded. Both are checked first: a wrong one is refused with why, not decoded into an empty mask."""
        frame = self.frame_for(_plane_shape(np.shape(image2d)))
        checked = _checked_boxes(boxes, frame.original_shape)
        if embedding is not None:
            embedding = self._checked_embedding(embedding)
        if not checked:
            return np.zeros((0, *frame.original_shape), dtype=bool)
        if embedding is None:
            embedding = self.encode(self.prepare(image2d)[0][None])
        low_res_boxes = torch.tensor([self.to_low_res(box, frame) for box in checked], dtype=torch.float32)
        sparse, dense = self.box_prompt(low_res_boxes)
        logits = self.decode(embedding.expand(len(checked), -1, -1, -1), sparse, dense)
        return (self.logits_to_original(logits, frame)[:, 0] > 0).cpu().numpy()

    def _checked_embedding(self, embedding: object) -> torch.Tensor:
        """A caller's image embedding as float32 (1, 256, 64, 64) on the model's device, or why it cannot be one:
        the decoder fails deep inside on another shape, and decodes NaN into an empty mask without a word."""
        expected = (1, *self.embedding_shape)
        if isinstance(embedding, np.ndarray) and np.issubdtype(embedding.dtype, np.floating):
            embedding = torch.from_numpy(np.array(embedding, dtype=np.float32))
        if not isinstance(embedding, torch.Tensor) or not embedding.is_floating_point():
            kind = f"{type(embedding).__name__} of dtype {embedding.dtype}" if hasattr(embedding, "dtype") else (
                type(embedding).__name__)
            raise AutomedsamError(f"segment_boxes: embedding must be a float tensor of shape {expected}, the image's "
                                  f"own as {self.name}'s encode gives it; got a {kind}.")
        if tuple(embedding.shape) not in (expected, expected[1:]):
            raise AutomedsamError(f"segment_boxes: embedding must have shape {expected}, the image's own as "
                                  f"{self.name}'s encode gives it; got shape {tuple(embedding.shape)}.")
        if not torch.isfinite(embedding).all():
            raise AutomedsamError("segment_boxes: embedding holds NaN or infinite values; encode the image again.")
        return embedding.to(self.device, torch.float32).reshape(expected)

    def _low_res_scale(self, frame: Frame) -> tuple[float, float]:
        factor = self.low_res_size / self.input_size
        return frame.scale[0] * factor, frame.scale[1] * factor


def _resized(pixels: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """(C, H, W) -> (C, *shape), bilinear and antialiased. A one-column shape is resized transposed, as one row:
    torch's antialiased resize on the CPU returns a constant column there, so a (300, 1) image reached the encoder
    blank."""
    if shape[1] == 1 and shape[0] != 1:
        return _resized(pixels.transpose(1, 2), (1, shape[0])).transpose(1, 2)
    return F.interpolate(pixels[None], size=shape, mode="bilinear", align_corners=False, antialias=True)[0]


def _checked_boxes(boxes: object, shape: tuple[int, int]) -> list[Box]:
    """`boxes` as 4 ints each, every one inside an image of (H, W) `shape` (`validate_box`, as the CLI checks box
    files). One flat box is refused, not guessed: its masks would come back (1, H, W) where (H, W) is expected."""
    if isinstance(boxes, (np.ndarray, torch.Tensor)):
        boxes = boxes.tolist()
    if isinstance(boxes, (str, bytes)) or not isinstance(boxes, Sequence) or any(
            isinstance(value, numbers.Number) for value in boxes):
        raise AutomedsamError(f"segment_boxes takes a list of boxes [[x0, y0, x1, y1], ...], got {boxes!r}; "
                              "for one box pass [box].")
    return [validate_box(box.tolist() if isinstance(box, (np.ndarray, torch.Tensor)) else box, shape,
                         f"segment_boxes box {index}") for index, box in enumerate(boxes)]


def _plane_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    """(H, W) of a grey (H, W), (H, W, 1) or colour (H, W, 3) image, the shapes a foundation model takes."""
    if len(shape) == 2 or (len(shape) == 3 and shape[2] in (1, 3)):
        return int(shape[0]), int(shape[1])
    raise AutomedsamError(
        f"A foundation model takes a 2D grey (H, W) or colour (H, W, 3) image; got shape {tuple(shape)}."
    )


def _channels_first(image2d: np.ndarray) -> torch.Tensor:
    """(H, W), (H, W, 1) or (H, W, 3) -> float32 (3, H, W), grey repeated to three channels."""
    array = np.asarray(image2d)
    _plane_shape(array.shape)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    array = np.repeat(array[None], 3, axis=0) if array.ndim == 2 else np.moveaxis(array, 2, 0)
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise AutomedsamError(f"Image of dtype {array.dtype} is not a real-valued image.")
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    if not torch.isfinite(tensor).all():
        raise AutomedsamError("Image contains NaN or infinite values; clean it before segmenting.")
    return tensor
