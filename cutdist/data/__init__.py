"""Shard writing, inspection and the image streams; see shards/README.md for the layout.

- ``cutdist.data.manifest``: split names, manifest schema, ``DataError``, URL helpers
- ``cutdist.data.writer``: ``write_splits`` / ``write_image_folder`` (planned, parallel, resumable, optional
  re-encoding: ``Encoding``) and ``ShardSetWriter`` (generated images, in one go)
- ``cutdist.data.inspection``: ``inspect_shards``, ``verify_shards``
- ``cutdist.data.splits``: ``Splits``, ``resolve_splits`` (driver side, before workers start)
- ``cutdist.data.stream``: ``unpaired_loader``, ``test_loader``, ``load_test_pairs``
- ``cutdist.data.indexed``: ``split_index`` (image members' byte offsets from the tar headers), ``MemberReader``
- ``cutdist.data.members``: the bounds every shard reader applies (``tar_members``, ``check_member``,
  ``open_image``: member sizes, image pixels); a new reader of shards must go through it
- ``cutdist.data.transforms``: decoding and the paper's augmentations
- ``cutdist.data.synth``: the demo domains and ``write_synth_dataset``
- ``cutdist.data.frames``: synthetic GTA5 / Cityscapes frames in their folder layouts (tests, benchmarks)
"""
from cutdist.data.manifest import CorruptSampleWarning, DataError
from cutdist.data.splits import Splits, resolve_splits

__all__ = ["CorruptSampleWarning", "DataError", "Splits", "resolve_splits"]
