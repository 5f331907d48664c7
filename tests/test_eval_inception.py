"""The FID Inception: weights from a file / the hub cache / random (labelled), clear errors, activations."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from cutdist.eval.inception import (InceptionWeightsError, WEIGHTS_FILENAME, activations, is_random_backbone,
                                    load_inception)
from eval_fixtures import as_tensor01, synth_uint8, torch_home, weights_file


@pytest.fixture(scope="module")
def images():
    """4 images of each demo domain, 32 px."""
    return as_tensor01(synth_uint8("A", 4, 32)), as_tensor01(synth_uint8("B", 4, 32))


@pytest.fixture(scope="module")
def random_model(images):
    model, label = load_inception("random", seed=0)
    return model, label, activations(model, images[0], batch_size=3)


def test_random_backbone_is_labelled_deterministic_and_not_degenerate(images, random_model):
    model, label, acts_a = random_model
    assert label == "RANDOM-INIT-INCEPTION(seed=0) — not a real FID" and is_random_backbone(label)
    acts_b = activations(model, images[1])
    assert acts_a.shape == (4, 2048) and acts_a.dtype == np.float64
    # calibrated BN: features vary across images and domains on an FID-like scale (an uncalibrated random net
    # gives near-constant features, std ~1e-8, and FIDs ~1e-13)
    assert acts_a.std(axis=0).mean() > 0.05
    assert np.trace(np.cov(acts_a, rowvar=False)) > 10.0
    assert np.sum((acts_a.mean(0) - acts_b.mean(0)) ** 2) > 10.0
    # the same seed rebuilds the same network (its state dict is cached; the network is built anew)
    same = load_inception("random", seed=0)[0]
    assert same is not model
    np.testing.assert_array_equal(activations(same, images[0][:1]), acts_a[:1])


def test_weights_file_loads_with_its_hash_label(images, random_model, tmp_path):
    first = images[0][:1]
    path = weights_file()
    model, label = load_inception(str(path))
    assert label.startswith("pt_inception-2015-12-05 (sha256 ") and not is_random_backbone(label)
    # the file holds the random backbone's seed-0 weights
    np.testing.assert_array_equal(activations(model, first), random_model[2][:1])
    # a state dict without num_batches_tracked (older torch.save layouts) loads too
    older = {k: v for k, v in torch.load(path, weights_only=True).items() if not k.endswith("num_batches_tracked")}
    torch.save(older, tmp_path / "older.pth")
    model2, label2 = load_inception(str(tmp_path / "older.pth"))
    assert label2.startswith("older (sha256 ")
    np.testing.assert_array_equal(activations(model2, first), random_model[2][:1])


def test_auto_reads_the_torch_hub_cache(monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(torch_home()))
    _, label = load_inception("auto", download=False)
    assert label == load_inception(str(weights_file()))[1]


def test_missing_weights_is_one_clear_line(tmp_path, monkeypatch):
    with pytest.raises(InceptionWeightsError) as err:
        load_inception(str(tmp_path / "nope.pth"))
    message = str(err.value)
    assert "\n" not in message and str(tmp_path / "nope.pth") in message and "eval.inception_weights=random" in message

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "home"))
    expected = tmp_path / "home" / "hub" / "checkpoints" / WEIGHTS_FILENAME
    with pytest.raises(InceptionWeightsError, match=f"at {expected}"):
        load_inception("auto", download=False)

    def offline(url, dst, **kwargs):
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(InceptionWeightsError, match=r"download failed: OSError\).*put pt_inception") as err:
        load_inception("auto")
    assert str(expected) in str(err.value) and "\n" not in str(err.value)


def test_wrong_files_are_clear_errors(tmp_path):
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(InceptionWeightsError, match="junk.pth: cannot read"):
        load_inception(str(tmp_path / "junk.pth"))
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "other.pth")
    with pytest.raises(InceptionWeightsError, match=r"other.pth: not a pytorch-fid FID-Inception state dict"):
        load_inception(str(tmp_path / "other.pth"))
    state = torch.load(weights_file(), weights_only=True)
    state["fc.bias"] = torch.zeros(10)
    torch.save(state, tmp_path / "shape.pth")
    with pytest.raises(InceptionWeightsError, match=r"shape.pth: .*size mismatch for fc.bias"):
        load_inception(str(tmp_path / "shape.pth"))


def test_activations_checks_shape_and_ignores_autocast(images, random_model):
    model, _, acts_a = random_model
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        activations(model, torch.zeros(2, 1, 32, 32))
    with torch.autocast("cpu", dtype=torch.bfloat16):   # a training loop's bf16 autocast must not leak in
        np.testing.assert_array_equal(activations(model, images[0][:1]), acts_a[:1])


def test_a_stalled_download_times_out_instead_of_hanging(tmp_path, monkeypatch):
    """A server that accepts the connection and never answers (a proxy black-holing the request): the download
    gives up after DOWNLOAD_TIMEOUT_S with the clear error, and the process-wide socket default is restored."""
    import socket
    import threading

    from cutdist.eval import inception

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)   # the kernel completes the handshake; nobody ever reads or writes
    monkeypatch.setattr(inception, "DOWNLOAD_TIMEOUT_S", 1.0)
    outcome: list[BaseException] = []

    def download() -> None:
        try:
            inception._download(tmp_path / WEIGHTS_FILENAME, url=f"http://127.0.0.1:{server.getsockname()[1]}/w.pth")
        except BaseException as err:   # noqa: BLE001 - handed to the test thread
            outcome.append(err)

    worker = threading.Thread(target=download, daemon=True)   # a hang fails the test instead of stalling the suite
    worker.start()
    worker.join(30)
    hung = worker.is_alive()
    server.close()   # resets the stalled connection, so a hung download ends too
    assert not hung, "the download did not give up within 30 s"
    assert len(outcome) == 1 and isinstance(outcome[0], InceptionWeightsError)
    assert re.search(r"download failed: .*put pt_inception", str(outcome[0]))
    assert socket.getdefaulttimeout() is None
    assert not (tmp_path / WEIGHTS_FILENAME).exists()


def test_only_the_official_weights_give_a_real_fid(tmp_path, monkeypatch):
    """fid_real is decided by the file's content (its sha256 prefix, as torch hub checks it), not by its name: a
    test-made or fine-tuned file named like pytorch-fid's gets a caveat, the official digest none."""
    from cutdist.eval import inception

    made = weights_file()   # named pt_inception-2015-12-05-6726825d.pth, random content
    _, label = load_inception(str(made))
    assert not inception.is_official_backbone(label) and "NOT comparable" in inception.backbone_caveat(label)
    assert "random-init" in inception.backbone_caveat(inception.random_label(0))

    monkeypatch.setattr(inception, "_file_sha256", lambda *a: "6726825d" + "0" * 56)   # the official digest's prefix
    official = inception.weights_label(made)
    assert official == "pt_inception-2015-12-05 (sha256 6726825d)"
    assert inception.is_official_backbone(official) and inception.backbone_caveat(official) is None
