"""Hostile and broken shard data (issue 18): no command runs, no path escapes the root, nothing hangs, every
bomb is refused within bounded time and memory. Each test fails on the code before the fix (checked by hand)."""
from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
import textwrap
import time
import zlib
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from cutdist.data.manifest import MANIFEST_NAME, DataError, write_manifest
from cutdist.data.synth import write_synth_dataset
from data_fixtures import image_bytes

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return write_synth_dataset(tmp_path_factory.mktemp("synth") / "shards", size=16, count=4, test_count=2,
                               max_count=2)


def copy_with_shard_name(src: Path, dst: Path, old: str, new: str) -> Path:
    """A copy of the shard directory ``src`` whose manifest lists shard ``old`` as ``new``."""
    import shutil

    shutil.copytree(src, dst)
    rows = pq.read_table(dst / MANIFEST_NAME).to_pylist()
    for row in rows:
        if row["shard"] == old:
            row["shard"] = new
    write_manifest(rows, dst / MANIFEST_NAME)
    return dst


def run(args: list[str], cwd: Path, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    env = {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", **kw.pop("env", {})}
    return subprocess.run([PY, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env, **kw)


# ------------------------------------------------------------------------------ 1. shell injection, 4. escape

def test_manifest_shard_name_cannot_run_a_command(synth, tmp_path, capsys, monkeypatch):
    from cutdist import shards

    hostile = copy_with_shard_name(synth, tmp_path / "hostile", "testB-000000.tar",
                                   "testB-000000.tar; touch PWNED")
    monkeypatch.chdir(tmp_path)   # where the injected command would write
    rc = shards.main(["inspect", "--verify", f"pipe:cat {hostile}"])
    captured = capsys.readouterr()
    assert not (tmp_path / "PWNED").exists()
    assert rc == 2, captured.out + captured.err
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "not a plain file name" in lines[0] and "row " in lines[0], captured.err
    assert "verify: OK" not in captured.out


@pytest.mark.parametrize("name", ["/etc/passwd", "../x.tar", "sub/testA-000000.tar", "-rf.tar", "a b.tar",
                                  "x.tar\nMISMATCH forged", "x.tar$(id)", ".."])
def test_manifest_shard_paths_stay_inside_the_root(synth, tmp_path, name):
    from cutdist.config import load
    from cutdist.data import resolve_splits
    from cutdist.eval.sources import shard_split

    hostile = copy_with_shard_name(synth, tmp_path / "hostile", "trainA-000000.tar", name)
    cfg = load(ROOT / "jobs" / "smoke.yaml", {"data.root": str(hostile), "data.synth_if_missing": False})
    with pytest.raises(DataError, match="not a plain file name"):
        resolve_splits(cfg.data)
    with pytest.raises(DataError, match="not a plain file name"):
        shard_split(str(hostile), "trainA")


def test_manifest_sizes_must_be_positive(synth, tmp_path):
    from cutdist.data.manifest import read_manifest
    import shutil

    shutil.copytree(synth, tmp_path / "s")
    rows = pq.read_table(tmp_path / "s" / MANIFEST_NAME).to_pylist()
    rows[3]["width"] = 0
    write_manifest(rows, tmp_path / "s" / MANIFEST_NAME)
    with pytest.raises(DataError, match=r"row 3 .*width 0, must be >= 1"):
        read_manifest(str(tmp_path / "s"))


# ------------------------------------------------------------------------------ 3. empty shards end the stream

def test_training_on_empty_shards_ends_with_an_error_within_seconds(synth, tmp_path):
    import shutil

    root = tmp_path / "empty"
    shutil.copytree(synth, root)
    for shard in root.glob("trainA-*.tar"):   # valid tars holding a directory and no file
        with tarfile.open(shard, "w") as tar:
            info = tarfile.TarInfo("000000.d")
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
    script = textwrap.dedent(f"""
        import sys
        from cutdist import config
        from cutdist.data import DataError, resolve_splits
        from cutdist.train.loop import run_local
        cfg = config.load({str(ROOT / 'jobs' / 'smoke.yaml')!r}, {{"data.root": {str(root)!r},
                          "storage_path": {str(tmp_path)!r}, "train.num_workers": 1}})
        try:
            run_local(cfg, resolve_splits(cfg.data), run_dir={str(tmp_path / 'run')!r})
        except DataError as err:
            print(f"error: {{err}}", file=sys.stderr)
            sys.exit(2)
    """)
    start = time.monotonic()
    try:
        result = run(["-W", "ignore", "-c", script], cwd=tmp_path, timeout=90)
    except subprocess.TimeoutExpired:
        pytest.fail("training on shards without samples did not end within 90 s")
    elapsed = time.monotonic() - start
    assert result.returncode == 2, result.stderr[-2000:]
    error = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(error) == 1 and "trainA-" in error[0] and "no readable sample" in error[0]
    assert "no samples (an empty tar" in error[0], result.stderr[-2000:]
    assert elapsed < 60


# ------------------------------------------------------------------------------ 5. negative size, 7. gzip bomb

def negative_size_tar(path: Path) -> Path:
    """A 3.5 KB tar whose second member's header declares size -512 (base-256), checksum fixed."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name in ("000000.png", "000001.png"):
            data = image_bytes(8, 8, "PNG")
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    raw = bytearray(buffer.getvalue())
    second = 512 + (len(image_bytes(8, 8, "PNG")) + 511) // 512 * 512
    header = raw[second:second + 512]
    assert header[:10] == b"000001.png"
    header[124:136] = b"\xff" + (256 ** 11 - 512).to_bytes(11, "big")
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    raw[second:second + 512] = header
    path.write_bytes(bytes(raw))
    return path


def gzip_bomb_tar(path: Path, member_bytes: int) -> Path:
    """A gzip-compressed tar (named .tar) with one valid image and then one member of ``member_bytes`` zeros."""
    compressor = zlib.compressobj(1, zlib.DEFLATED, 31)
    with open(path, "wb") as out:
        def put(chunk: bytes) -> None:
            out.write(compressor.compress(chunk))
        image = image_bytes(8, 8, "PNG")
        for name, size in (("000000.png", len(image)), ("000001.png", member_bytes)):
            info = tarfile.TarInfo(name)
            info.size = size
            put(info.tobuf(format=tarfile.USTAR_FORMAT))
            if name == "000000.png":
                put(image + b"\0" * (-len(image) % 512))
            else:
                zeros = b"\0" * 2 ** 20
                for _ in range(size // 2 ** 20):
                    put(zeros)
        put(b"\0" * 1024)
        out.write(compressor.flush())
    return path


READERS = textwrap.dedent("""
    import json, resource, sys, time, warnings
    from pathlib import Path
    warnings.simplefilter("ignore")
    from cutdist.data.stream import SkipCounter, _shard_samples
    from cutdist.data.inspection import _read_shard
    from cutdist.data.gpu_decode import read_encoded
    from cutdist.data.indexed import split_index
    from cutdist.eval.sources import shard_batches
    from cutdist.translate import _count_shard, _shard_items
    shard = sys.argv[1]
    def rss():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    out = {}
    def measure(name, fn):
        base, start = rss(), time.monotonic()
        try:
            result = fn()
        except Exception as err:
            result = f"{type(err).__name__}: {err}"
        out[name] = {"result": str(result)[:300], "seconds": time.monotonic() - start, "grew": rss() - base}
    measure("train", lambda: (split_index([shard]).key, split_index([shard]).problems))
    measure("test", lambda: [s["__key__"] for s in _shard_samples([{"url": shard}], SkipCounter(warn=False))])
    measure("verify", lambda: _read_shard(shard))
    measure("fid", lambda: sum(b.shape[0] for b in shard_batches([shard], size=8, batch_size=4)))
    measure("device", lambda: [n for _, n, _ in read_encoded([shard])])
    measure("translate", lambda: (_count_shard(Path(shard)), [(i.out_stem, i.problem) for i in _shard_items(Path(shard), "")]))
    print(json.dumps(out))
""")


def run_readers(shard: Path, tmp_path: Path, limit_gb: float = 4) -> dict:
    import resource

    def cap():   # the code before the fix grows without bound on these files: keep the machine safe
        resource.setrlimit(resource.RLIMIT_AS, (int(limit_gb * 2 ** 30), int(limit_gb * 2 ** 30)))

    result = run(["-c", READERS, str(shard)], cwd=tmp_path, timeout=120, preexec_fn=cap)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_negative_member_size_is_refused_by_every_reader(tmp_path):
    shard = negative_size_tar(tmp_path / "testA-000000.tar")
    out = run_readers(shard, tmp_path)
    for name, entry in out.items():
        assert entry["seconds"] < 30, (name, entry)
        assert entry["grew"] < 100 * 2 ** 20, (name, entry)
    assert "negative size" in out["train"]["result"]
    assert out["test"]["result"] == "['000000']"
    assert "negative size" in out["verify"]["result"] and "000000" in out["verify"]["result"]
    assert out["fid"]["result"] == "1"
    assert "negative size" in out["device"]["result"]
    # translate keeps the sample before the broken member, then reports the shard once
    assert "('000000', '')" in out["translate"]["result"] and "negative size" in out["translate"]["result"]


@pytest.mark.slow
def test_gzip_bomb_is_refused_in_bounded_time_and_memory(tmp_path):
    shard = gzip_bomb_tar(tmp_path / "testA-000000.tar", 256 * 2 ** 20)
    assert shard.stat().st_size < 2 * 2 ** 20
    out = run_readers(shard, tmp_path)
    for name, entry in out.items():
        assert entry["seconds"] < 30, (name, entry)
        assert entry["grew"] < 100 * 2 ** 20, (name, entry)   # the member alone is 256 MiB
    # the indexed training reader refuses a compressed tar (it reads at offsets)
    assert out["train"]["result"].startswith("([], [") and "ReadError" in out["train"]["result"]
    assert out["test"]["result"] == "['000000']"
    assert "more than the" in out["verify"]["result"]
    assert "more than the" in out["device"]["result"]
    assert "('000000', '')" in out["translate"]["result"] and "more than the" in out["translate"]["result"]


# ------------------------------------------------------------------------------ 6. pixel bound on the device path

def png_declaring(width: int, height: int) -> bytes:
    """A valid greyscale PNG of width x height zeros (small: zeros compress ~1000:1)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    compressor = zlib.compressobj(1)
    row = b"\0" * (1 + width)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_device_decode_refuses_too_many_pixels_before_decoding(tmp_path, monkeypatch):
    import cutdist.data.gpu_decode as gpu_decode

    bomb = png_declaring(10_000, 10_000)   # 100 Mpx > 89.5 Mpx; decoded RGB would be 300 MB
    decoded = []
    real = gpu_decode.decode_image

    def recording(data, *args, **kwargs):
        decoded.append(len(data))
        return real(data, *args, **kwargs)

    monkeypatch.setattr(gpu_decode, "decode_image", recording)
    counts = gpu_decode.DecodeCounts()
    good = image_bytes(8, 8, "PNG")
    images = gpu_decode.decode_batch([("bomb", bomb), ("good", good)], "cpu", counts)
    assert counts.skipped_names == ["bomb"] and [list(i.shape) for i in images] == [[3, 8, 8]]
    assert decoded == [len(good)], "the bomb reached the decoder"


# ------------------------------------------------------------------------------ 2. credentials never leak

@pytest.mark.slow
def test_url_credentials_appear_in_no_output_and_no_run_file(synth, tmp_path, capfd):
    import shutil
    import warnings

    from cutdist import config
    from cutdist.data import resolve_splits
    from cutdist.train.loop import run_local
    from data_fixtures import ServedDirectory, flip_byte, member_offsets

    served = tmp_path / "served"
    shutil.copytree(synth, served)
    shard = served / "trainA-000001.tar"   # one damaged image: its warning names the shard's URL
    offset, _ = member_offsets(shard)["000002.png"]
    flip_byte(shard, offset + 40)
    run_dir = tmp_path / "run"
    with ServedDirectory(served) as url, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        root = url.replace("http://", "http://user:secret@")
        cfg = config.load(ROOT / "jobs" / "smoke.yaml", {
            "data.root": root, "storage_path": str(tmp_path), "train.num_workers": 1, "optim.max_steps": 3,
            "logging.sample_every_steps": 3, "logging.tensorboard": True})
        run_local(cfg, resolve_splits(cfg.data), run_dir=run_dir)
        with pytest.raises(DataError) as missing:
            resolve_splits(config.load(ROOT / "jobs" / "smoke.yaml", {"data.root": root + "/nothing"}).data)
    captured = capfd.readouterr()
    output = captured.out + captured.err + "\n".join(str(w.message) for w in caught) + str(missing.value)
    assert "skipped key 000002" in output and "http://***@127.0.0.1" in output, output[-3000:]
    assert str(missing.value).startswith("http://***@127.0.0.1")
    assert "secret" not in output
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    assert any(p.name == "model.pt" for p in files)
    leaking = [str(p) for p in files if b"secret" in p.read_bytes()]
    assert not leaking


def test_best_config_and_redaction_of_presigned_urls(tmp_path):
    from cutdist.redact import redact_uri, redact_values, redacted_values

    url = ("https://bucket.s3.amazonaws.com/shards?X-Amz-Credential=AKIA%2Fsecret&X-Amz-Signature=secret"
           "&X-Amz-Security-Token=secret&part=1")
    assert "secret" not in redact_uri(url) and "part=1" in redact_uri(url)
    assert redact_uri("pipe:curl -s -H 'Authorization: Bearer secret' http://h/x") \
        == "pipe:curl -s -H 'Authorization: ***' http://h/x"
    assert redact_uri("/data/shards:v1@local") == "/data/shards:v1@local"
    stored = redact_values({"data": {"root": "http://u:secret@h/s", "train_a": ""}, "name": "x"})
    assert stored == {"data": {"root": "http://***@h/s", "train_a": ""}, "name": "x"}
    assert redacted_values(stored) == ["data.root"] and redacted_values({"a": "http://h/s"}) == []
