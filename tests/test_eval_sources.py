"""Image folders read exactly as pytorch-fid reads them; corrupt files skipped and counted."""
from __future__ import annotations

import pytest
import torch
import torchvision.transforms as TF

from cutdist.eval.sources import SkipCount, folder_batches, image_files
from eval_fixtures import synth_uint8, write_folder


def test_folder_pixels_equal_pytorch_fids_reader(tmp_path):
    from pytorch_fid.fid_score import ImagePathDataset

    folder = write_folder(tmp_path / "f", synth_uint8("A", 3, 24))
    write_folder(tmp_path / "g", synth_uint8("B", 2, 24), fmt="jpg")
    for p in (tmp_path / "g").iterdir():
        p.rename(folder / f"z{p.stem}.JPG")   # upper-case extension: read too
    (folder / "notes.txt").write_text("not an image")
    files = image_files(folder)
    assert [p.name for p in files] == ["0000.png", "0001.png", "0002.png", "z0000.JPG", "z0001.JPG"]
    ours = torch.cat(list(folder_batches(files, batch_size=2)))
    theirs = torch.stack([ImagePathDataset(files, transforms=TF.ToTensor())[i] for i in range(len(files))])
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


def test_sizes_split_batches_and_corrupt_files_are_skipped(tmp_path):
    folder = write_folder(tmp_path / "f", synth_uint8("A", 2, 16))
    write_folder(tmp_path / "g", synth_uint8("A", 1, 20))
    (tmp_path / "g" / "0000.png").rename(folder / "0002.png")
    (folder / "0003.png").write_bytes(b"\x89PNG broken")
    skipped = SkipCount()
    with pytest.warns(UserWarning, match="0003.png: skipped, cannot decode"):
        batches = list(folder_batches(image_files(folder), batch_size=8, skipped=skipped))
    assert [tuple(b.shape) for b in batches] == [(2, 3, 16, 16), (1, 3, 20, 20)]
    assert skipped.count == 1 and skipped.examples == [str(folder / "0003.png")]
    with pytest.warns(UserWarning, match="0003.png"):
        resized = list(folder_batches(image_files(folder), batch_size=8, size=12, skipped=SkipCount()))
    assert [tuple(b.shape) for b in resized] == [(3, 3, 12, 12)]
