"""Our streamed safetensors reader/writer against the safetensors library itself."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from merge_proxy.safetensors_io import NAMES, SafetensorsReader, write_streaming

TENSORS = {
    "bf16": torch.randn(3, 5).to(torch.bfloat16),
    "f32": torch.randn(7),
    "f16": torch.randn(2, 2, 2).to(torch.float16),
    "i64": torch.arange(5),
    "bool": torch.tensor([True, False, True]),
    "scalar": torch.tensor(3.5),
    "empty": torch.empty(0, 4),
}


def test_written_files_read_back_by_the_library(tmp_path):
    path = tmp_path / "ours.safetensors"
    specs = [(k, NAMES[t.dtype], tuple(t.shape)) for k, t in TENSORS.items()]
    size = write_streaming(path, specs, iter(TENSORS.values()))
    assert size == path.stat().st_size
    with safe_open(path, framework="pt") as fh:
        assert set(fh.keys()) == set(TENSORS)
        assert fh.metadata() == {"format": "pt"}
        for key, tensor in TENSORS.items():
            assert torch.equal(fh.get_tensor(key), tensor), key


def test_library_files_read_by_ours(tmp_path):
    path = tmp_path / "lib.safetensors"
    save_file(TENSORS, path, metadata={"format": "pt"})
    reader = SafetensorsReader(path)
    assert set(reader.keys()) == set(TENSORS) and reader.metadata == {"format": "pt"}
    for key, tensor in TENSORS.items():
        got = reader.read(key)
        assert got.dtype == tensor.dtype and torch.equal(got, tensor), key


def test_writer_refuses_a_tensor_that_does_not_match_its_header(tmp_path):
    with pytest.raises(ValueError, match="header says F32"):
        write_streaming(tmp_path / "x.safetensors", [("a", "F32", (2,))], iter([torch.zeros(3)]))
    with pytest.raises(ValueError):
        write_streaming(tmp_path / "y.safetensors", [("a", "F32", (2,)), ("b", "F32", (1,))], iter([torch.zeros(2)]))


def test_row_ranges_are_the_slices_of_the_tensor(tmp_path):
    tensors = {"w": torch.randn(37, 11).to(torch.bfloat16), "conv": torch.randn(5, 3, 2, 2), "v": torch.randn(9)}
    path = tmp_path / "rows.safetensors"
    save_file(tensors, path)
    reader = SafetensorsReader(path)
    for key, tensor in tensors.items():
        n = tensor.shape[0]
        for start, stop in [(0, n), (0, 1), (3, 4), (2, n), (n, n)]:
            got = reader.read_rows(key, start, stop)
            assert got.dtype == tensor.dtype and torch.equal(got, tensor[start:stop]), (key, start, stop)
