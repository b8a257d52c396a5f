"""Reading and writing safetensors one tensor at a time, without memory maps.

The safetensors library reads through a memory map (every page touched stays in the process's RSS
until the file is closed) and writes a whole dict of tensors at once. A streamed merge of K full
experts wants neither: it reads one tensor per expert, merges, writes, and forgets. The format is
simple (8-byte little-endian header length, a JSON header with dtype, shape and byte offsets, then
the raw bytes), so these few functions read tensors with positioned reads and write a file whose
header is computed up front from the shapes, in the library's own layout.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from merge_proxy.errors import CheckpointError

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
    "F8_E8M0": torch.float8_e8m0fnu,  # MXFP8 block scales
}
NAMES: dict[torch.dtype, str] = {v: k for k, v in DTYPES.items()}


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


class SafetensorsReader:
    """Positioned reads of single tensors from a safetensors file (no mmap, nothing cached)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        with self.path.open("rb") as fh:
            head = fh.read(8)
            length = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
            try:
                if not 0 < length <= self.path.stat().st_size - 8:
                    raise ValueError(f"header length {length}")
                header = json.loads(fh.read(length))
                self.tensors: dict[str, TensorInfo] = {
                    key: TensorInfo(str(v["dtype"]), tuple(v["shape"]), v["data_offsets"][0], v["data_offsets"][1])
                    for key, v in header.items() if key != "__metadata__"
                }
                end = max((t.end for t in self.tensors.values()), default=0)
                if 8 + length + end > self.path.stat().st_size:  # a download cut in the data
                    raise ValueError(f"its tensors end at byte {8 + length + end}, the file at {self.path.stat().st_size}")
            except (ValueError, KeyError, TypeError, IndexError, UnicodeDecodeError) as err:
                raise CheckpointError(
                    f"{self.path} is not a readable safetensors file ({err}); it may be damaged, cut short, or a "
                    "Git LFS pointer instead of the weights (git lfs pull, or download it again)"
                ) from None
        self.metadata: dict[str, str] = header.get("__metadata__") or {}
        self._data_start = 8 + length
        unknown = sorted({t.dtype for t in self.tensors.values()} - set(DTYPES))
        if unknown:
            raise CheckpointError(
                f"{self.path} stores tensors of dtype {', '.join(unknown)}, which merge-proxy cannot read; "
                f"it reads {', '.join(DTYPES)}"
            )

    def keys(self) -> list[str]:
        return list(self.tensors)

    def read(self, key: str) -> torch.Tensor:
        info = self.tensors[key]
        rows = info.shape[0] if info.shape else 1
        return self.read_rows(key, 0, rows)

    def read_rows(self, key: str, start: int, stop: int) -> torch.Tensor:
        """Rows ``start:stop`` of a tensor (along its first dimension), read from the file alone.

        Rows are contiguous in the file, so a merge can walk a large tensor in cache-sized pieces
        without ever holding it whole.
        """
        info = self.tensors[key]
        dtype = DTYPES[info.dtype]
        rows = info.shape[0] if info.shape else 1
        row_bytes = info.nbytes // rows if rows else 0
        shape = (stop - start, *info.shape[1:]) if info.shape else ()
        out = torch.empty(shape, dtype=dtype)
        nbytes = (stop - start) * row_bytes
        if nbytes == 0:
            return out
        view = memoryview(out.view(-1).view(torch.uint8).numpy())
        offset = self._data_start + info.start + start * row_bytes
        fd = os.open(self.path, os.O_RDONLY)
        try:
            done = 0
            while done < nbytes:
                n = os.preadv(fd, [view[done:]], offset + done)
                if n == 0:
                    raise OSError(f"{self.path} is truncated (tensor {key!r})")
                done += n
        finally:
            os.close(fd)
        return out


def write_streaming(path: str | Path, specs: list[tuple[str, str, tuple[int, ...]]],
                    tensors: Iterable[torch.Tensor], metadata: dict[str, str] | None = None) -> int:
    """Write ``tensors`` (produced one at a time, in ``specs`` order) as one safetensors file.

    ``specs`` gives each tensor's key, safetensors dtype name and shape, so the header (and every
    offset) is known before the first byte of data. Returns the bytes written.
    """
    header: dict[str, object] = {"__metadata__": metadata or {"format": "pt"}}
    offset = 0
    sizes = []
    for key, dtype, shape in specs:
        numel = 1
        for d in shape:
            numel *= d
        nbytes = numel * torch.empty((), dtype=DTYPES[dtype]).element_size()
        header[key] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        sizes.append(nbytes)
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # the library pads the header to 8-byte alignment
    written = 0
    with Path(path).open("wb") as fh:
        fh.write(struct.pack("<Q", len(raw)))
        fh.write(raw)
        for (key, dtype, shape), nbytes, tensor in zip(specs, sizes, tensors, strict=True):
            if NAMES.get(tensor.dtype) != dtype or tuple(tensor.shape) != tuple(shape):
                raise ValueError(f"tensor {key!r} is {tensor.dtype} {tuple(tensor.shape)}, header says {dtype} {shape}")
            if nbytes:
                fh.write(memoryview(tensor.contiguous().reshape(-1).view(torch.uint8).numpy()))
            written += nbytes
        fh.flush()
        os.fsync(fh.fileno())
    return 8 + len(raw) + written
