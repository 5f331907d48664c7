"""``python -m cutdist.translate --checkpoint CKPT --input PATH --output DIR [--size S] [--batch-size B]
[--device D]``: run a checkpoint's generator over images and write PNGs.

Inputs (``--input``):
- one image file -> ``DIR/<stem>.png``;
- a folder of images, searched recursively -> ``DIR/<relative folder>/<stem>.png``;
- a ``.tar`` shard, or a quoted glob of shards (``'shards/testA-*.tar'``) -> ``DIR/<sample key>.png``;
- a shard folder (holding ``*.tar``) -> ``DIR/<split>/<sample key>.png`` (split = shard name without ``-NNNNNN``).

Preprocessing is the reference's test-time transform: RGB; with ``--size S`` a bicubic resize to S x S (the
reference tests at load_size = crop_size), otherwise full resolution (the generator is fully convolutional);
then each side rounded to a multiple of 4 (bicubic resize when needed; bilinear for a SinCUT checkpoint, as the
reference's single-image test); scaled to [-1, 1]. Outputs are written at that size, converted to 8 bits as the
reference's ``tensor2im`` does ((y + 1) / 2 * 255, truncated; clamped to [0, 255], which SinCUT's unbounded output
needs).

SinCUT's decoder injects noise (its strength is learned, 0 at initialisation): torch's generator on the device is
seeded with ``--seed`` (default 0) before every forward, so a run is reproducible and matches the reference's
generator seeded the same way (``torch.manual_seed(seed)`` before its forward, same device).

A corrupt or non-image file (or a shard sample without an image), a shard member refused by the shared reader
(``cutdist.data.members``: negative or oversized size, too many pixels), an image the generator cannot process
(out of memory at full resolution: try ``--size``) and an output that cannot be written (a name over 255 bytes,
a file where a folder goes) are each reported on stderr in one line and skipped; the run goes on. A damaged
shard keeps the samples before the damage.
Exit status: 0 all translated; 1 some inputs were skipped; 2 usage error (bad or hostile checkpoint, no input
found, an --output that is not a writable folder), checked before any image is read.
"""
from __future__ import annotations

import argparse
import glob
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from cutdist.data.manifest import DataError, printable
from cutdist.data.members import open_image, tar_headers, tar_members
from cutdist.model.io import ModelIOError, load_generator
from cutdist.paths import prepare_output_dir

IMAGE_EXTENSIONS = {"jpg", "jpeg", "png", "ppm", "pgm", "pbm", "bmp", "webp", "tif", "tiff", "gif"}
_SHARD_INDEX = re.compile(r"-\d+$")
# WebDataset's sample naming: key = path up to the first dot of the file name, extension = the rest.
_KEY_EXT = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")


@dataclass
class Item:
    """One input: where its output goes (relative path without extension), a label for messages, its bytes."""
    out_stem: str
    label: str
    data: bytes | None
    problem: str = ""


def _file_item(path: Path, out_stem: str) -> Item:
    try:
        return Item(out_stem, str(path), path.read_bytes())
    except OSError as err:
        return Item(out_stem, str(path), None, f"cannot read ({err.strerror or err})")


def _shard_items(shard: Path, prefix: str) -> Iterator[Item]:
    """The samples of a shard in tar order (members of a sample are adjacent, as webdataset writes them), read
    by the shared bounded reader: a damaged or hostile member ends the shard with one problem item, after every
    sample before it."""
    def sample_item(key: str, members: dict[str, bytes]) -> Item:
        label = f"{shard} key {key}"
        ext = next((e for e in members if e in IMAGE_EXTENSIONS), None)
        if ext is None:
            return Item(prefix + key, label, None, f"no image member (has {sorted(members)})")
        return Item(prefix + key, label, members[ext])

    key, members = None, {}
    try:
        with open(shard, "rb") as stream:
            for name, data in tar_members(stream, str(shard)):
                m = _KEY_EXT.match(name)
                if m is None:
                    continue
                if key is not None and m.group(1) != key:
                    yield sample_item(key, members)
                    members = {}
                key = m.group(1)
                members[m.group(2).lower()] = data
    except (DataError, OSError) as err:
        if key is not None:
            yield sample_item(key, members)
        yield Item(prefix + "?", str(shard), None, f"unreadable shard ({str(err).split(': ', 1)[-1]})")
        return
    if key is not None:
        yield sample_item(key, members)


def _count_shard(shard: Path) -> int:
    try:
        with open(shard, "rb") as stream:
            return len({m.group(1) for name in tar_headers(stream, str(shard)) if (m := _KEY_EXT.match(name))}) or 1
    except (DataError, OSError):
        return 1


class InputError(ValueError):
    """``--input`` names nothing translatable."""


def collect_inputs(spec: str) -> tuple[int, Iterator[Item]]:
    """(number of inputs, the inputs) for an image, an image folder, a shard, a shard glob or a shard folder."""
    path = Path(spec).expanduser()
    if path.is_file():
        if path.suffix.lower() == ".tar":
            return _count_shard(path), _shard_items(path, "")
        return 1, iter([_file_item(path, path.stem)])
    if path.is_dir():
        shards = sorted(path.glob("*.tar"))
        if shards:
            total = sum(_count_shard(s) for s in shards)
            return total, (it for s in shards for it in _shard_items(s, _SHARD_INDEX.sub("", s.stem) + "/"))
        files = sorted(p for p in path.rglob("*") if p.is_file()
                       and not any(part.startswith(".") for part in p.relative_to(path).parts))
        if not files:
            raise InputError(f"--input: {path} holds no files")
        return len(files), (_file_item(p, str(p.relative_to(path).with_suffix(""))) for p in files)
    matches = sorted(Path(p) for p in glob.glob(str(path)))
    if not matches:
        raise InputError(f"--input: {spec} matches nothing")
    not_tar = [str(p) for p in matches if p.suffix.lower() != ".tar" or not p.is_file()]
    if not_tar:
        raise InputError(f"--input: a pattern must match .tar shards only; it also matches {not_tar[:3]}")
    return sum(_count_shard(s) for s in matches), (it for s in matches for it in _shard_items(s, ""))


def round_to_multiple(size: int, base: int = 4) -> int:
    return int(round(size / base) * base)


def preprocess(image: Image.Image, size: int | None, resample: int = Image.BICUBIC) -> torch.Tensor:
    """PIL image -> [3, H, W] in [-1, 1], the reference's test-time transform (see the module docstring)."""
    image = image.convert("RGB")
    if size is not None:
        image = image.resize((size, size), resample)
    w, h = image.size
    rw, rh = round_to_multiple(w), round_to_multiple(h)
    if rw < 4 or rh < 4:
        raise ValueError(f"image too small ({w}x{h})")
    if (rw, rh) != (w, h):
        image = image.resize((rw, rh), resample)
    x = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float().div(255)
    return (x - 0.5) / 0.5


def to_uint8(y: torch.Tensor) -> np.ndarray:
    """[3, H, W] in [-1, 1] -> H x W x 3 uint8, as the reference's tensor2im (truncation)."""
    return ((y.float().cpu().permute(1, 2, 0) + 1) / 2.0 * 255.0).clamp(0, 255).numpy().astype(np.uint8)


def _safe_stem(stem: str) -> bool:
    parts = Path(stem).parts
    return bool(parts) and not Path(stem).is_absolute() and ".." not in parts


@dataclass
class Summary:
    translated: int = 0
    skipped: int = 0


def translate(generator: torch.nn.Module, items: Iterator[Item], output: Path, *, size: int | None,
              batch_size: int, device: torch.device, total: int | None = None, resample: int = Image.BICUBIC,
              seed: int = 0) -> Summary:
    """Translate ``items`` in batches of equal-sized images; write ``output/<out_stem>.png``. torch is seeded with
    ``seed`` before every forward (SinCUT's noise injection)."""
    summary = Summary()
    written: set[str] = set()
    pending: list[tuple[str, str, torch.Tensor]] = []

    def skip(label: str, reason: str) -> None:
        summary.skipped += 1
        tqdm.write(f"skipped {printable(label)}: {printable(reason)}", file=sys.stderr)

    def generate(batch: list[tuple[str, str, torch.Tensor]]) -> list[tuple[str, str, torch.Tensor]]:
        """(stem, label, output) of the batch; when the generator fails (out of memory at full resolution),
        each image alone, and an image that still fails is skipped: the rest of the run goes on."""
        try:
            torch.manual_seed(seed)
            with torch.no_grad():
                fake = generator(torch.stack([x for _, _, x in batch]).to(device))
            return [(stem, label, y) for (stem, label, _), y in zip(batch, fake)]
        except (RuntimeError, MemoryError) as err:   # torch.OutOfMemoryError is a RuntimeError
            if device.type == "cuda":
                torch.cuda.empty_cache()
            if len(batch) > 1:
                return [out for one in batch for out in generate([one])]
            stem, label, x = batch[0]
            first = str(err).strip().splitlines()[0][:160] if str(err).strip() else ""
            skip(label, f"the generator failed on this {x.shape[-1]}x{x.shape[-2]} image ({type(err).__name__}: "
                        f"{first}); try --size")
            return []

    def flush() -> None:
        if not pending:
            return
        for stem, label, y in generate(list(pending)):
            target = output / f"{stem}.png"
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(to_uint8(y)).save(target)
            except (OSError, ValueError) as err:   # name too long, a file where a folder goes, disk full...
                skip(label, f"cannot write {target} ({getattr(err, 'strerror', None) or err})")
                continue
            summary.translated += 1
        pending.clear()

    with tqdm(total=total, unit="img", desc="translate", file=sys.stderr) as bar:
        for item in items:
            bar.update(1)
            if item.data is None:
                skip(item.label, item.problem or "no data")
                continue
            if not _safe_stem(item.out_stem):
                skip(item.label, f"unsafe output name {item.out_stem!r}")
                continue
            if item.out_stem in written:
                skip(item.label, f"another input already writes {item.out_stem}.png")
                continue
            try:
                with open_image(item.data) as image:
                    x = preprocess(image, size, resample)
            except Exception as err:  # noqa: BLE001 - any undecodable file is skipped, never fatal
                skip(item.label, f"not a readable image ({type(err).__name__}: {str(err)[:120]})")
                continue
            written.add(item.out_stem)
            if pending and pending[0][2].shape != x.shape:
                flush()
            pending.append((item.out_stem, item.label, x))
            if len(pending) >= batch_size:
                flush()
        flush()
    return summary


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cutdist.translate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True,
                   help="cutdist checkpoint directory (holding model.pt), or a run directory: its best-FID checkpoint "
                        "(summary.json's, else the lowest FID among the kept checkpoints' metrics.json)")
    p.add_argument("--input", required=True, help="image, image folder, .tar shard, quoted shard glob, shard folder")
    p.add_argument("--output", required=True, help="output folder for the PNGs")
    p.add_argument("--size", type=_positive, default=None, help="resize inputs to S x S first (default: full size)")
    p.add_argument("--batch-size", type=_positive, default=1, help="images per forward (equal sizes only)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--seed", type=int, default=0, help="torch seed before every forward (SinCUT's noise; default 0)")
    return p


def run_checkpoint(path: str) -> str:
    """``path`` itself, or for a run directory (no model.pt, checkpoints inside) its best checkpoint, said on stderr."""
    from cutdist.train.checkpoint import best_checkpoint_of_run

    where = Path(path).expanduser()
    if not where.is_dir() or (where / "model.pt").exists():
        return path
    best = best_checkpoint_of_run(where)
    if best is None:
        return path   # load_generator says what is missing
    chosen, why = best
    print(f"--checkpoint {path}: a run directory; using {chosen.name} ({why})", file=sys.stderr)
    return str(chosen)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError as err:
        print(f"error: --device: {err}", file=sys.stderr)
        return 2
    output = Path(args.output).expanduser()
    checkpoint = run_checkpoint(args.checkpoint)
    try:
        generator, cfg = load_generator(checkpoint, "cpu")   # checked and built on the CPU first
        total, items = collect_inputs(args.input)
    except (ModelIOError, InputError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        generator.to(device)
    except (RuntimeError, AssertionError) as err:   # e.g. a CUDA device that is not there
        print(f"error: --device {device}: {str(err).strip().splitlines()[0]}", file=sys.stderr)
        return 2
    problem = prepare_output_dir(output, "--output")
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    resample = Image.BILINEAR if cfg.model.mode == "sincut" else Image.BICUBIC
    summary = translate(generator, items, output, size=args.size, batch_size=args.batch_size, device=device,
                        total=total, resample=resample, seed=args.seed)
    print(f"translated {summary.translated} image(s) into {output}; skipped {summary.skipped}")
    return 1 if summary.skipped else 0


if __name__ == "__main__":
    sys.exit(main())
