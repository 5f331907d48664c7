"""Hostile and broken inputs to translate / fid / convert / verify (issue 18, items 8-10 and the minor ones):
each ends in one line with the documented exit status, later good inputs are still written, and outputs are
checked before any work. Each test fails on the code before the fix (checked by hand)."""
from __future__ import annotations

import io
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from cutdist import config, convert, fid, translate
from cutdist.data.manifest import MANIFEST_NAME, write_manifest
from cutdist.model.io import save_model
from cutdist.model.networks import build_generator
from data_fixtures import image_bytes

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A tiny cutdist checkpoint (the smoke job's generator: ngf 8, 2 blocks)."""
    cfg = config.load(ROOT / "jobs" / "smoke.yaml")
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("ckpt") / "tiny"
    save_model(out, {"g": build_generator(cfg)}, cfg, step=0, epoch=0)
    return out


def shard(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def skipped_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("skipped ")]


# ------------------------------------------------------------------------------ 8. translate goes on

def test_translate_skips_unwritable_names_and_keeps_going(ckpt, tmp_path, capsys):
    good = image_bytes(16, 16, "PNG")
    long_key = "k" * 300
    src = shard(tmp_path / "testA-000000.tar", [
        (f"{long_key}.png", good),        # output name over 255 bytes
        ("x.png", good),                  # writes x.png ...
        ("x.png/y.png", good),            # ... where this one needs a folder x.png
        ("z.png", good),                  # a later good input
    ])
    out = tmp_path / "out"
    rc = translate.main(["--checkpoint", str(ckpt), "--input", str(src), "--output", str(out), "--device", "cpu"])
    captured = capsys.readouterr()
    assert rc == 1, captured.err
    assert "Traceback" not in captured.err
    skipped = skipped_lines(captured.err)
    assert len(skipped) == 2, captured.err
    assert "cannot write" in skipped[0] and "name too long" in skipped[0].lower()
    assert "x.png/y" in skipped[1] and "cannot write" in skipped[1]
    assert sorted(p.name for p in out.iterdir()) == ["x.png", "z.png"]
    assert "translated 2 image(s)" in captured.out and "skipped 2" in captured.out


def test_translate_output_that_is_a_file_is_one_line_exit_2(ckpt, tmp_path, capsys):
    src = tmp_path / "in.png"
    src.write_bytes(image_bytes(16, 16, "PNG"))
    target = tmp_path / "taken"
    target.write_text("a file")
    rc = translate.main(["--checkpoint", str(ckpt), "--input", str(src), "--output", str(target)])
    err = capsys.readouterr().err
    assert rc == 2 and lines(err) == [f"error: --output: {target} exists and is not a folder"], err


def test_translate_generator_out_of_memory_skips_that_image_only(tmp_path, capsys):
    class SmallOnly(torch.nn.Module):
        """Fails as a CUDA out-of-memory does on a full-resolution image; identity otherwise."""
        def forward(self, x):
            if x.shape[-1] * x.shape[-2] > 64 * 64:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
            return x

    items = [translate.Item(name, name, image_bytes(w, w, "PNG")) for name, w in
             (("before", 16), ("huge", 128), ("after", 16), ("after2", 16))]
    summary = translate.translate(SmallOnly(), iter(items), tmp_path, size=None, batch_size=2,
                                  device=torch.device("cpu"))
    err = capsys.readouterr().err
    assert (summary.translated, summary.skipped) == (3, 1)
    skipped = skipped_lines(err)
    assert len(skipped) == 1 and "huge" in skipped[0] and "OutOfMemoryError" in skipped[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["after.png", "after2.png", "before.png"]


# ------------------------------------------------------------------------------ 9. hostile checkpoint config

def _with_stored_config(ckpt: Path, dst: Path, **model) -> Path:
    payload = torch.load(ckpt / "model.pt", weights_only=True)
    payload["config"]["model"].update(model)
    dst.mkdir()
    torch.save(payload, dst / "model.pt")
    return dst


def test_hostile_checkpoint_config_is_refused_before_building(ckpt, tmp_path):
    hostile = _with_stored_config(ckpt, tmp_path / "hostile", n_blocks=100_000_000)
    src = tmp_path / "in.png"
    src.write_bytes(image_bytes(16, 16, "PNG"))

    def cap():   # the code before the fix builds 10^8 residual blocks: keep the machine safe
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (4 * 2 ** 30, 4 * 2 ** 30))

    start = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "cutdist.translate", "--checkpoint", str(hostile), "--input",
                             str(src), "--output", str(tmp_path / "out"), "--device", "cpu"],
                            capture_output=True, text=True, timeout=120, preexec_fn=cap,
                            env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(lines(result.stderr)) == 1, result.stderr
    assert "model.n_blocks=100000000" in result.stderr and "--device" not in result.stderr
    assert time.monotonic() - start < 60
    assert not (tmp_path / "out").exists()


def test_bad_checkpoint_config_is_not_reported_as_a_device_error(ckpt, tmp_path, capsys):
    hostile = _with_stored_config(ckpt, tmp_path / "hostile", ngf=-3)
    src = tmp_path / "in.png"
    src.write_bytes(image_bytes(16, 16, "PNG"))
    rc = translate.main(["--checkpoint", str(hostile), "--input", str(src), "--output", str(tmp_path / "out"),
                         "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and len(lines(err)) == 1 and "model.ngf=-3" in err and "--device" not in err, err


# ------------------------------------------------------------------------------ 10. fid / convert outputs

@pytest.fixture
def two_images(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(2):
        (folder / f"{i}.png").write_bytes(image_bytes(16, 16, "PNG", seed=i))
    return folder


@pytest.mark.parametrize("where", ["folder", "under_a_file", "no_npz_suffix"])
def test_fid_save_stats_path_checked_before_any_work(two_images, tmp_path, capsys, monkeypatch, where):
    import cutdist.eval.inception as inception

    (tmp_path / "a_file").write_text("x")
    (tmp_path / "a_folder.npz").mkdir()
    target = {"folder": tmp_path / "a_folder.npz", "under_a_file": tmp_path / "a_file" / "s.npz",
              "no_npz_suffix": tmp_path / "stats"}[where]
    calls = []
    real = inception.load_inception
    monkeypatch.setattr(inception, "load_inception", lambda *a, **k: calls.append(1) or real(*a, **k))
    rc = fid.main([str(two_images), "--save-stats", str(target), "--weights", "random", "--no-progress",
                   "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and len(lines(err)) == 1 and err.startswith("error: --save-stats:"), err
    assert not calls, "the statistics were computed before the output path was checked"


def test_fid_two_npz_one_malformed_is_one_line(tmp_path, capsys):
    from cutdist.eval.stats import save_stats

    good = save_stats(tmp_path / "good.npz", np.zeros(4), np.eye(4), backbone="x")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    rc = fid.main([str(good), str(bad)])
    err = capsys.readouterr().err
    assert rc == 2 and len(lines(err)) == 1 and "bad.npz" in err, err


def test_fid_manifest_with_zero_width_is_one_line(tmp_path, capsys):
    from cutdist.data.synth import write_synth_dataset

    root = write_synth_dataset(tmp_path / "s", size=16, count=2, test_count=2)
    rows = pq.read_table(root / MANIFEST_NAME).to_pylist()
    for row in rows:
        if row["split"] == "testB":
            row["width"] = 0
    write_manifest(rows, root / MANIFEST_NAME)
    rc = fid.main([str(root), str(root), "--weights", "random", "--no-progress", "--device", "cpu"])
    err = "\n".join(line for line in lines(capsys.readouterr().err) if not line.startswith("warning: backbone"))
    assert rc == 2 and len(lines(err)) == 1 and "width 0" in err, err


def test_convert_out_that_is_a_file_is_one_line_before_reading(tmp_path, capsys):
    from cutdist.model.networks import ResnetGenerator

    official = tmp_path / "official"
    official.mkdir()
    torch.save(ResnetGenerator(3, 3, ngf=4, n_blocks=2).state_dict(), official / "latest_net_G.pth")
    taken = tmp_path / "taken"
    taken.write_text("a file")
    rc = convert.main(["--official-dir", str(official), "--out", str(taken)])
    err = capsys.readouterr().err
    assert rc == 2 and lines(err) == [f"error: --out: {taken} exists and is not a folder"], err
    rc = convert.main(["--official-dir", str(official), "--out", str(taken / "sub")])
    err = capsys.readouterr().err
    assert rc == 2 and len(lines(err)) == 1 and "--out" in err and "Traceback" not in err, err


# ------------------------------------------------------------------------------ minor: verify

def test_verify_checks_sizes_and_escapes_names(tmp_path, capsys):
    from cutdist.data.synth import write_synth_dataset

    root = write_synth_dataset(tmp_path / "s", size=16, count=2, test_count=1, max_count=2)
    rows = pq.read_table(root / MANIFEST_NAME).to_pylist()
    rows[0]["width"] = 17
    rows[1]["bytes"] += 1
    rows[2]["key"] = "000000\nverify: OK, every sample matches the manifest"
    write_manifest(rows, root / MANIFEST_NAME)
    from cutdist import shards

    rc = shards.main(["inspect", "--verify", str(root)])
    out = capsys.readouterr().out.splitlines()
    assert rc == 1
    assert any(f"key {rows[0]['key']}: 16x16, manifest says 17x16" in line for line in out), out
    assert any(f"key {rows[1]['key']}: {rows[1]['bytes'] - 1} bytes, manifest says {rows[1]['bytes']}" in line
               for line in out), out
    assert not any(line.startswith("verify: OK") for line in out), out
    assert any("'000000\\nverify: OK" in line for line in out), out


# ------------------------------------------------------------------------------ minor: resume checkpoint

def test_unreadable_train_state_is_refused_before_ray_starts(tmp_path, capsys, monkeypatch):
    import ray

    from cutdist.data.synth import write_synth_dataset
    from cutdist.model.networks import build_nets
    from cutdist.train import __main__ as train_cli

    root = write_synth_dataset(tmp_path / "s", size=32, count=4, test_count=1)
    job = {"data.root": str(root), "storage_path": str(tmp_path / "runs")}
    cfg = config.load(ROOT / "jobs" / "smoke.yaml", job)
    ckpt = tmp_path / "checkpoint_000000003"
    save_model(ckpt, build_nets(cfg), cfg, step=3, epoch=0)
    (ckpt / "train_state.pt").write_bytes(b"PK\x03\x04 truncated")

    def no_ray(*args, **kwargs):
        raise AssertionError("Ray started before the resume checkpoint was checked")

    monkeypatch.setattr(ray, "init", no_ray)
    rc = train_cli.main(["--config", str(ROOT / "jobs" / "smoke.yaml"), *(f"{k}={v}" for k, v in job.items()),
                         f"checkpoint.resume_from={ckpt}"])
    err = capsys.readouterr().err
    assert rc == 2 and len(lines(err)) == 1 and "train_state.pt: unreadable" in err, err


def test_sweep_whose_stored_url_lost_its_credentials_is_not_resumed(tmp_path, capsys):
    import yaml

    from cutdist.redact import redact_values
    from cutdist.tune import __main__ as tune_cli

    saved = {"job_file": "job.yaml", "space_file": "space.yaml", "overrides": {},
             "job_values": {"data": {"root": "http://user:secret@127.0.0.1:1/shards"}}, "space": {}}
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / tune_cli.SWEEP_FILE).write_text(yaml.safe_dump(redact_values(saved)))
    assert "secret" not in (sweep / tune_cli.SWEEP_FILE).read_text()
    rc = tune_cli.main(["--resume", str(sweep)])
    err = capsys.readouterr().err
    assert rc == 2 and len(lines(err)) == 1 and "job_values.data.root" in err and "credentials" in err, err


def test_best_config_yaml_carries_no_credentials(tmp_path):
    from cutdist.tune.results import TERMINATED, write_best_config
    from cutdist.tune.space import parse_space
    from test_tune_cli import SPACE, summary

    space = parse_space(SPACE, {"data.root": "http://user:secret@127.0.0.1:1/shards"})
    best = write_best_config(summary("a", 1.0, "all", TERMINATED, 50.0, tmp_path), space, tmp_path / "best.yaml",
                             name="sweep-best", storage_path="s3://bucket/runs?X-Amz-Security-Token=secret")
    text = best.read_text()
    assert "secret" not in text and "http://***@127.0.0.1:1/shards" in text
