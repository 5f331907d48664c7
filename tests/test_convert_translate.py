"""Official checkpoint -> ``cutdist.convert`` -> ``cutdist.translate`` round trip, and both CLIs' errors.

The "official" files are written here from the reference key layout spelled out by hand in
tests/test_model_reference.py (not from our modules), so a layout drift in cutdist would show up.
"""
from __future__ import annotations

import io
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cutdist import convert, translate
from cutdist.model.io import load_model
from cutdist.model.networks import ResnetGenerator
from test_model_reference import (random_state, reference_discriminator_layout, reference_f_layout,
                                  reference_generator_forward, reference_generator_layout)


NGF, N_BLOCKS, NDF, NC = 4, 5, 4, 8


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    """An official run folder: latest_net_{G,D,F}.pth in the reference's key layout."""
    root = tmp_path_factory.mktemp("official")
    states = {
        "G": random_state(reference_generator_layout(NGF, N_BLOCKS, True), seed=1),
        "D": random_state(reference_discriminator_layout(NDF, 3, True), seed=2),
        # taps 0, 4, 8, 12, 16: RGB, 2*ngf, 4*ngf, 4*ngf, 4*ngf channels
        "F": random_state(reference_f_layout([3, 2 * NGF, 4 * NGF, 4 * NGF, 4 * NGF], NC), seed=3),
    }
    for name, state in states.items():
        torch.save(state, root / f"latest_net_{name}.pth")
    return root, states


@pytest.fixture(scope="module")
def converted(official, tmp_path_factory):
    root, _ = official
    out = tmp_path_factory.mktemp("ckpt") / "h2z"
    assert convert.main(["--official-dir", str(root), "--out", str(out), "--mode", "fastcut"]) == 0
    return out


def _png(path: Path, h: int, w: int, seed: int) -> np.ndarray:
    arr = np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return arr


def _reference_translation(state, path: Path) -> np.ndarray:
    """The reference pipeline written out: RGB, bicubic to a multiple of 4, [-1, 1], G, tensor2im."""
    image = Image.open(path).convert("RGB")
    w, h = image.size
    rw, rh = int(round(w / 4) * 4), int(round(h / 4) * 4)
    if (rw, rh) != (w, h):
        image = image.resize((rw, rh), Image.BICUBIC)
    x = torch.from_numpy(np.array(image)).permute(2, 0, 1).float()[None] / 255
    x = (x - 0.5) / 0.5
    with torch.no_grad():
        y, _ = reference_generator_forward(state, x, N_BLOCKS, True)
    return ((y[0].permute(1, 2, 0).numpy() + 1) / 2.0 * 255.0).astype(np.uint8)


def test_convert_keeps_every_tensor_and_infers_the_architecture(official, converted):
    _, states = official
    payload, cfg = load_model(converted)
    assert (cfg.model.ngf, cfg.model.n_blocks, cfg.model.antialias) == (NGF, N_BLOCKS, True)
    assert (cfg.model.ndf, cfg.model.n_layers_d, cfg.model.netf_nc) == (NDF, 3, NC)
    assert cfg.model.mode == "fastcut" and cfg.loss.lambda_x == 10.0 and cfg.loss.nce_layers == [0, 4, 8, 12, 16]
    assert payload["source"].startswith("official:")
    for part in ("g", "d", "f"):
        state = states[part.upper()]
        assert list(payload[part]) == list(state)
        assert all(torch.equal(payload[part][k], v) for k, v in state.items())


def test_translate_folder_equals_generator_output(official, converted, tmp_path, capsys):
    _, states = official
    src = tmp_path / "in"
    _png(src / "horse1.png", 36, 52, seed=1)
    _png(src / "odd.png", 30, 45, seed=2)                 # -> 32 x 44, as the reference rounds
    _png(src / "sub" / "horse2.png", 36, 52, seed=3)
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    (src / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    rc = translate.main(["--checkpoint", str(converted), "--input", str(src), "--output", str(out),
                         "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 1                                        # some inputs were skipped
    assert "broken.png" in err and "notes.txt" in err
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*.png"))
    assert written == ["horse1.png", "odd.png", "sub/horse2.png"]
    g = ResnetGenerator(3, 3, ngf=NGF, n_blocks=N_BLOCKS)
    g.load_state_dict(states["G"])
    g.eval()
    for name in written:
        got = np.asarray(Image.open(out / name))
        x = translate.preprocess(Image.open(src / name), None)
        with torch.no_grad():
            direct = translate.to_uint8(g(x[None])[0])
        assert got.shape == direct.shape
        assert np.array_equal(got, direct), name
        # and the reference's pipeline, transcribed independently, agrees (float rounding may flip a level)
        ref = _reference_translation(states["G"], src / name)
        assert ref.shape == got.shape and np.abs(ref.astype(int) - got).max() <= 1
    assert np.asarray(Image.open(out / "odd.png")).shape == (32, 44, 3)


def test_translate_batches_sizes_and_shards(official, converted, tmp_path):
    _, states = official
    shard_dir = tmp_path / "shards"
    shard_dir.mkdir()
    images = {}
    for shard_index, keys in enumerate((["k0", "k1", "k2"], ["k3"])):
        with tarfile.open(shard_dir / f"testA-{shard_index:06d}.tar", "w") as tar:
            for i, key in enumerate(keys):
                buf = io.BytesIO()
                arr = np.random.default_rng(i + 10 * shard_index).integers(0, 256, (32, 40, 3), dtype=np.uint8)
                Image.fromarray(arr).save(buf, format="PNG")
                images[key] = arr
                info = tarfile.TarInfo(f"{key}.png")
                info.size = len(buf.getvalue())
                tar.addfile(info, io.BytesIO(buf.getvalue()))
            info = tarfile.TarInfo("lonely.json")
            info.size = 2
            tar.addfile(info, io.BytesIO(b"{}"))
    out = tmp_path / "out"
    rc = translate.main(["--checkpoint", str(converted), "--input", str(shard_dir), "--output", str(out),
                         "--batch-size", "3", "--size", "24", "--device", "cpu"])
    assert rc == 1                                        # the two image-less 'lonely' samples
    assert sorted(p.name for p in (out / "testA").iterdir()) == ["k0.png", "k1.png", "k2.png", "k3.png"]
    g = ResnetGenerator(3, 3, ngf=NGF, n_blocks=N_BLOCKS)
    g.load_state_dict(states["G"])
    for key, arr in images.items():
        got = np.asarray(Image.open(out / "testA" / f"{key}.png"))
        assert got.shape == (24, 24, 3)
        x = translate.preprocess(Image.fromarray(arr), 24)
        with torch.no_grad():
            direct = translate.to_uint8(g(x[None])[0])
        assert np.abs(direct.astype(int) - got).max() <= 1      # batched vs single forward: rounding only
    # one shard by name, keys straight into the output folder
    rc = translate.main(["--checkpoint", str(converted), "--input", str(shard_dir / "testA-000001.tar"),
                         "--output", str(tmp_path / "one"), "--device", "cpu"])
    assert rc == 1 and sorted(p.name for p in (tmp_path / "one").iterdir()) == ["k3.png"]


def test_convert_lists_unknown_and_missing_keys(official, tmp_path, capsys):
    _, states = official
    bad = tmp_path / "bad"
    bad.mkdir()
    g = dict(states["G"])
    g["model.99.weight"] = torch.zeros(1)
    del g["model.12.conv_block.5.bias"]
    torch.save(g, bad / "latest_net_G.pth")
    assert convert.main(["--official-dir", str(bad), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "missing keys ['model.12.conv_block.5.bias']" in err and "unexpected keys ['model.99.weight']" in err
    assert not (tmp_path / "x").exists()


def test_convert_checks_f_against_the_taps(official, tmp_path, capsys):
    _, states = official
    run = tmp_path / "run"
    run.mkdir()
    torch.save(states["G"], run / "latest_net_G.pth")
    torch.save(random_state(reference_f_layout([3, 2 * NGF, 4 * NGF], NC), seed=4), run / "latest_net_F.pth")
    assert convert.main(["--official-dir", str(run), "--out", str(tmp_path / "a")]) == 2
    assert "--nce-layers" in capsys.readouterr().err
    assert convert.main(["--official-dir", str(run), "--out", str(tmp_path / "b"), "--nce-layers", "0,4,8"]) == 0
    payload, cfg = load_model(tmp_path / "b")
    assert cfg.loss.nce_layers == [0, 4, 8] and payload["d"] is None
    assert convert.main(["--official-dir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "c")]) == 2


def test_cli_errors_exit_2(converted, tmp_path):
    rc = translate.main(["--checkpoint", str(tmp_path / "none"), "--input", str(tmp_path), "--output",
                         str(tmp_path / "o")])
    assert rc == 2
    rc = translate.main(["--checkpoint", str(converted), "--input", str(tmp_path / "nope-*.tar"), "--output",
                         str(tmp_path / "o")])
    assert rc == 2
    proc = subprocess.run([sys.executable, "-m", "cutdist.translate", "--checkpoint", str(converted),
                           "--input", str(tmp_path / "missing.png"), "--output", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "missing.png" in proc.stderr and "Traceback" not in proc.stderr
