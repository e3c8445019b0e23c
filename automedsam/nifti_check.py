"""What ITK's NIfTI reader skips: it fills the voxels missing from a truncated file with zeros and turns NaN and
infinite intensities into 0, silently, reads a voxel size of 0, NaN or infinity as 1 mm (a warning on stderr only),
a negative one as its absolute value with that axis mirrored, and keeps only the in-plane part of a 2D file's
placement. We look at the file itself before trusting what ITK
returns, and keep the placement ITK drops to write it back."""
from __future__ import annotations

import gzip
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from automedsam.errors import AutomedsamError
from automedsam.files import permission_denied_error

_FLOAT_TYPES = {16: "f4", 64: "f8"}
_MM_PER_SPACE_UNIT = {1: 1000.0, 3: 0.001}  # metres, microns: ITK turns them into mm; other units are read as mm


@dataclass
class _Layout:
    data_offset: int
    voxel_count: int
    bits_per_voxel: int
    float_dtype: np.dtype | None

    @property
    def data_end(self) -> int:
        return self.data_offset + self.voxel_count * self.bits_per_voxel // 8


@dataclass(frozen=True)
class NiftiPlacement:
    """Where a NIfTI-1 header places its voxels: pixdim[0:4] (qfac, voxel size), the space unit, the qform and sform
    codes, the quaternion with its offset (quatern_b/c/d, qoffset_x/y/z) and the sform rows. ITK reads only the
    in-plane part of a 2D file's placement: copied into the header of its label map, these fields put the map
    where header-based readers (nibabel) put the slice."""

    pixdim: tuple[float, ...]
    space_unit: int
    codes: tuple[int, int]
    quatern: tuple[float, ...]
    srow: tuple[float, ...]

    def affines(self) -> list[np.ndarray]:
        """The transforms the header declares (sform, qform: those with a code), as 3 x 4 RAS matrices in mm."""
        declared = [np.reshape(self.srow, (3, 4))] if self.codes[1] > 0 else []
        declared += [self._qform()] if self.codes[0] > 0 else []
        return [affine * _MM_PER_SPACE_UNIT.get(self.space_unit, 1.0) for affine in declared]

    def _qform(self) -> np.ndarray:
        b, c, d = self.quatern[:3]
        squares = b * b + c * c + d * d
        if 1.0 - squares < 1e-7:  # a half turn stored with float rounding, normalised as nifti1_io reads it
            b, c, d = (value / np.sqrt(squares) for value in (b, c, d))
        a = np.sqrt(max(1.0 - (b * b + c * c + d * d), 0.0))
        rotation = np.array([[a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
                             [2 * (b * c + a * d), a * a + c * c - b * b - d * d, 2 * (c * d - a * b)],
                             [2 * (b * d - a * c), 2 * (c * d + a * b), a * a + d * d - b * b - c * c]])
        steps = [size if 0 < size < np.inf else 1.0 for size in self.pixdim[1:4]]  # NaN too: as ITK reads them
        steps[2] *= -1.0 if self.pixdim[0] < 0 else 1.0
        return np.column_stack([rotation * steps, self.quatern[3:]])

    def to_json(self) -> dict[str, Any]:
        return {"pixdim": list(self.pixdim), "space_unit": self.space_unit, "codes": list(self.codes),
                "quatern": list(self.quatern), "srow": list(self.srow)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> NiftiPlacement:
        return cls(pixdim=tuple(float(v) for v in data["pixdim"]), space_unit=int(data["space_unit"]),
                   codes=(int(data["codes"][0]), int(data["codes"][1])),
                   quatern=tuple(float(v) for v in data["quatern"]), srow=tuple(float(v) for v in data["srow"]))


def read_placement(path: Path) -> NiftiPlacement | None:
    """The placement a NIfTI-1 file's header gives its voxels; None for another header (NIfTI-2)."""
    with _open(path, path.name.lower().endswith(".gz")) as stream:
        header = stream.read(348)
    order = _nifti_1_order(header)
    if order is None:
        return None
    return NiftiPlacement(pixdim=struct.unpack_from(order + "4f", header, 76), space_unit=header[123] & 7,
                          codes=struct.unpack_from(order + "2h", header, 252),
                          quatern=struct.unpack_from(order + "6f", header, 256),
                          srow=struct.unpack_from(order + "12f", header, 280))


def write_placement(path: Path, placement: NiftiPlacement) -> None:
    """Copy `placement` into the header of the NIfTI-1 file `path` (one ITK just wrote on the same voxel grid)."""
    compressed = path.name.lower().endswith(".gz")
    with _open(path, compressed) as stream:
        data = bytearray(stream.read())
    order = _nifti_1_order(data)
    if order is None:
        raise ValueError(f"{path} is not a NIfTI-1 file: its placement cannot be written")
    struct.pack_into(order + "4f", data, 76, *placement.pixdim)
    data[123] = (data[123] & ~7) | placement.space_unit
    struct.pack_into(order + "2h", data, 252, *placement.codes)
    struct.pack_into(order + "6f", data, 256, *placement.quatern)
    struct.pack_into(order + "12f", data, 280, *placement.srow)
    with open(path, "wb") as raw:
        if compressed:  # no time or name in the gzip header: the same map gives the same bytes (convert --overwrite)
            with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as stream:
                stream.write(data)
        else:
            raw.write(data)


def is_nifti_2(path: Path) -> bool:
    """Whether the file starts as a NIfTI-2 header does (ITK reads NIfTI-1 only)."""
    try:
        with _open(path, path.name.lower().endswith(".gz")) as stream:
            start = stream.read(4)
    except (OSError, EOFError, zlib.error):
        return False
    return len(start) == 4 and 540 in struct.unpack("<i", start) + struct.unpack(">i", start)


def check_voxel_size(path: Path) -> None:
    """Raise AutomedsamError if a NIfTI-1 header gives an image axis a voxel size ITK misreads: 0, NaN or infinity,
    which it reads as 1 mm with only a warning on stderr (that changes the spacing and can change the axis the images
    are sliced along), or a negative one, which it reads as the absolute value with that axis mirrored (the image then
    lies mirrored from where its header's transform and header-based readers put it, and from a label map saved
    with the same transform). Checked before ITK reads the header, whose warnings would come before the error."""
    try:
        with _open(path, path.name.lower().endswith(".gz")) as stream:
            header = stream.read(348)
    except (OSError, EOFError, zlib.error):  # reading the image says why
        return
    order = _nifti_1_order(header)
    if order is None:
        return
    axes = min(max(struct.unpack_from(order + "h", header, 40)[0], 0), 3)
    for axis, size in enumerate(struct.unpack_from(order + f"{axes}f", header, 80), start=1):
        misread = _misread_voxel_size(size)
        if misread:
            raise AutomedsamError(
                f"{path} gives its axis {axis} ({'xyz'[axis - 1]}) a voxel size of {size:g} (pixdim[{axis}] in its "
                f"header), {misread}. Set the voxel size in mm, positive (e.g. nibabel: "
                "image.header.set_zooms(...)), and save the image again.")


def _misread_voxel_size(size: float) -> str | None:
    """How ITK reads a voxel size the NIfTI standard does not allow (it must be positive); None for a valid one."""
    if size == 0 or not np.isfinite(size):
        return "which ITK would read as 1 mm"
    if size < 0:
        return f"which ITK would read as {-size:g} mm with that axis mirrored"
    return None


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
    except PermissionError:  # refused, not truncated: no advice to export the file again
        raise permission_denied_error(path) from None
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


def _nifti_1_order(header: bytes) -> str | None:
    """The byte order ("<" or ">") of a NIfTI-1 header; None for another header."""
    for order in "<>":
        if len(header) >= 348 and struct.unpack_from(order + "i", header)[0] == 348:
            return order
    return None


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
