"""Checks ITK's NIfTI reader skips: it fills the voxels missing from a truncated file with zeros and turns NaN and
infinite intensities into 0, silently. We look at the file itself before trusting what ITK returns."""
from __future__ import annotations

import gzip
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from automedsam.errors import AutomedsamError

_FLOAT_TYPES = {16: "f4", 64: "f8"}


@dataclass
class _Layout:
    data_offset: int
    voxel_count: int
    bits_per_voxel: int
    float_dtype: np.dtype | None

    @property
    def data_end(self) -> int:
        return self.data_offset + self.voxel_count * self.bits_per_voxel // 8


def check_nifti_file(path: Path) -> None:
    """Raise AutomedsamError if the .nii/.nii.gz file is truncated or holds NaN/infinite intensities."""
    compressed = path.name.lower().endswith(".gz")
    try:
        with _open(path, compressed) as stream:
            layout = _layout(stream.read(540))
        if layout is None:
            return
        data = None
        if layout.float_dtype is not None:
            with _open(path, compressed) as stream:
                data = stream.read()
            size = len(data)
        elif not compressed:
            size = path.stat().st_size
        elif _gzip_declared_size(path) == layout.data_end % 2**32:
            size = layout.data_end
        else:
            with _open(path, compressed) as stream:
                size = sum(len(chunk) for chunk in iter(lambda: stream.read(1 << 24), b""))
    except (OSError, EOFError, zlib.error) as exc:
        raise unreadable_error(path, short_reason(exc)) from None
    if size < layout.data_end:
        raise unreadable_error(path, f"{size} bytes where its header announces {layout.data_end}")
    if data is not None:
        values = np.frombuffer(data, dtype=layout.float_dtype, count=layout.voxel_count, offset=layout.data_offset)
        bad = int(np.count_nonzero(~np.isfinite(values)))
        if bad:
            raise non_finite_error(path, bad)


def short_reason(exc: BaseException) -> str:
    """The informative last line of a (often multi-line ITK) error message."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1][:200] if lines else type(exc).__name__


def unreadable_error(path: Path, detail: str) -> AutomedsamError:
    return AutomedsamError(f"{path} could not be read ({detail}); the file is corrupt, truncated or not really "
                           f"an image of its extension. Export or copy it again.")


def non_finite_error(path: Path, count: int) -> AutomedsamError:
    return AutomedsamError(f"{path} contains {count} NaN or infinite intensities. Replace them (e.g. by the image "
                           "minimum) and save the image again.")


def _open(path: Path, compressed: bool):
    return gzip.open(path, "rb") if compressed else open(path, "rb")


def _gzip_declared_size(path: Path) -> int:
    """The uncompressed size (mod 2**32) that a complete gzip file records in its last 4 bytes."""
    with open(path, "rb") as raw:
        raw.seek(-4, os.SEEK_END)
        return int.from_bytes(raw.read(4), "little")


def _layout(header: bytes) -> _Layout | None:
    """Where a NIfTI-1/2 file's voxels lie, from its header; None when the header is not NIfTI."""
    for order in "<>":
        if len(header) >= 348 and struct.unpack(order + "i", header[:4])[0] == 348:
            dims = struct.unpack(order + "8h", header[40:56])
            datatype, bitpix = struct.unpack(order + "2h", header[70:74])
            offset = int(struct.unpack(order + "f", header[108:112])[0])
            break
        if len(header) >= 540 and struct.unpack(order + "i", header[:4])[0] == 540:
            datatype, bitpix = struct.unpack(order + "2h", header[12:16])
            dims = struct.unpack(order + "8q", header[16:80])
            offset = struct.unpack(order + "q", header[168:176])[0]
            break
    else:
        return None
    if not 1 <= dims[0] <= 7:
        return None
    count = int(np.prod([max(d, 1) for d in dims[1 : dims[0] + 1]]))
    float_dtype = np.dtype(order + _FLOAT_TYPES[datatype]) if datatype in _FLOAT_TYPES else None
    return _Layout(data_offset=offset, voxel_count=count, bits_per_voxel=bitpix, float_dtype=float_dtype)
