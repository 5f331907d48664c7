"""Import the authors' released CUT/FastCUT/SinCUT checkpoints (taesungp/contrastive-unpaired-translation).

Their ``save_networks`` writes ``<epoch>_net_G.pth`` (and ``_net_D`` / ``_net_F`` for training runs): plain state
dicts of ``networks.py``'s modules, keys such as ``model.1.weight``, ``model.7.filt`` (blur buffers),
``model.12.conv_block.1.weight``, and F's ``mlp_0.0.weight``. No options file travels with them, so the
architecture is inferred from the tensors' names and shapes, then the state dicts are checked strictly against the
networks built from that inference: any missing, unknown or mis-shaped key is one ``OfficialCheckpointError``.
SinCUT's (``--mode sincut``): keys such as ``encoder.convs.2.conv2.1.weight`` (G), ``final_linear.0.weight`` (D).
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch

from cutdist import config as config_mod
from cutdist.config import JobConfig
from cutdist.model.io import ModelIOError, check_state_dict
from cutdist.model.networks import NLayerDiscriminator, PatchSampleF, ResnetGenerator

StateDict = Mapping[str, torch.Tensor]
DEFAULT_NCE_LAYERS = [0, 4, 8, 12, 16]
SINCUT_NCE_LAYERS = [0, 2, 4]


class OfficialCheckpointError(ValueError):
    """An official checkpoint that cannot be imported; one line naming the file and what is wrong."""


def read_official(official_dir: str | Path, epoch: str = "latest") -> dict[str, dict[str, torch.Tensor] | None]:
    """{"g", "d", "f"} state dicts from ``<epoch>_net_{G,D,F}.pth``; G is required, D and F are optional."""
    root = Path(official_dir).expanduser()
    if not root.is_dir():
        raise OfficialCheckpointError(f"--official-dir: {root} is not a directory")
    out: dict[str, dict[str, torch.Tensor] | None] = {}
    for part in ("G", "D", "F"):
        path = root / f"{epoch}_net_{part}.pth"
        if not path.is_file():
            if part == "G":
                raise OfficialCheckpointError(f"{path}: no such file (the generator is required)")
            out[part.lower()] = None
            continue
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - one clear line for any unreadable file
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise OfficialCheckpointError(f"{path}: cannot read as a weights-only state dict ({first})") from None
        if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise OfficialCheckpointError(f"{path}: not a state dict of tensors")
        out[part.lower()] = dict(state)
    return out


def _need(state: StateDict, key: str, what: str) -> torch.Tensor:
    if key not in state:
        raise OfficialCheckpointError(f"{what}: key {key!r} missing; not a CUT ResNet generator / PatchGAN / "
                                      f"PatchSampleF state dict (keys: {sorted(state)[:8]}...)")
    return state[key]


def infer_generator(state: StateDict, what: str = "G") -> dict[str, int | bool]:
    """ngf, n_blocks, antialias and input channels of a reference ResnetGenerator state dict (the output
    channels are checked by the strict comparison that follows)."""
    stem = _need(state, "model.1.weight", what)
    blocks = {int(m.group(1)) for k in state if (m := re.fullmatch(r"model\.(\d+)\.conv_block\.1\.weight", k))}
    # Anti-aliased down-sampling puts a Downsample (buffer 'filt') at layer 7; plain strided convs do not.
    antialias = "model.7.filt" in state
    return {"input_nc": int(stem.shape[1]), "ngf": int(stem.shape[0]), "n_blocks": len(blocks),
            "antialias": antialias}


def infer_discriminator(state: StateDict, what: str = "D") -> dict[str, int | bool]:
    """ndf, n_layers, antialias of a reference NLayerDiscriminator state dict."""
    first = _need(state, "model.0.weight", what)
    convs = [k for k, v in state.items() if re.fullmatch(r"model\.\d+\.weight", k) and v.dim() == 4]
    # Convs: the first, n_layers - 1 middle ones, one more at stride 1, the 1-channel output: n_layers + 2.
    return {"ndf": int(first.shape[0]), "n_layers": len(convs) - 2, "antialias": "model.2.filt" in state}


def infer_patch_sampler(state: StateDict, what: str = "F") -> dict[str, object]:
    """The MLP width (netF_nc) and the input channel count of each tap's MLP."""
    ids = sorted({int(m.group(1)) for k in state if (m := re.match(r"mlp_(\d+)\.", k))})
    if not ids:
        raise OfficialCheckpointError(f"{what}: no 'mlp_<i>.*' keys; not a PatchSampleF (mlp_sample) state dict")
    return {"nc": int(_need(state, "mlp_0.0.weight", what).shape[0]),
            "in_channels": [int(_need(state, f"mlp_{i}.0.weight", what).shape[1]) for i in range(len(ids))]}


def _strict(module: torch.nn.Module, state: StateDict, what: str) -> None:
    try:
        check_state_dict(module, state, what)
    except ModelIOError as err:
        raise OfficialCheckpointError(str(err)) from None


def convert_official(states: Mapping[str, StateDict | None], *, mode: str = "cut",
                     nce_layers: list[int] | None = None, name: str = "official") -> tuple[dict, JobConfig]:
    """Check the official state dicts against networks built from their inferred architecture and return
    ({"g", "d", "f"} state dicts, a JobConfig describing them). ``nce_layers`` defaults to the paper's taps."""
    g_state = states.get("g")
    if g_state is None:
        raise OfficialCheckpointError("G: the generator state dict is required")
    if mode == "sincut":
        return _convert_sincut(states, nce_layers=nce_layers, name=name)
    if "encoder.convs.1.0.weight" in g_state:
        raise OfficialCheckpointError("G: a StyleGAN2-style (SinCUT) generator; pass --mode sincut")
    arch = infer_generator(g_state)
    if arch["input_nc"] != 3:
        raise OfficialCheckpointError(f"G: takes {arch['input_nc']}-channel input; cutdist supports RGB generators "
                                      "only")
    g = ResnetGenerator(3, 3, ngf=arch["ngf"], n_blocks=arch["n_blocks"], antialias=arch["antialias"])
    _strict(g, g_state, "G")
    overrides: dict[str, object] = {
        "name": name, "model.mode": mode, "model.ngf": arch["ngf"], "model.n_blocks": arch["n_blocks"],
        "model.antialias": arch["antialias"],
    }

    d_state = states.get("d")
    if d_state is not None:
        d_arch = infer_discriminator(d_state)
        if d_arch["antialias"] != arch["antialias"]:
            raise OfficialCheckpointError(f"D: antialias={d_arch['antialias']} but G has antialias="
                                          f"{arch['antialias']}; cutdist uses one switch for both")
        if d_arch["n_layers"] < 1:
            raise OfficialCheckpointError(f"D: cannot infer the PatchGAN depth (keys {sorted(d_state)})")
        d = NLayerDiscriminator(3, ndf=d_arch["ndf"], n_layers=d_arch["n_layers"], antialias=d_arch["antialias"])
        _strict(d, d_state, "D")
        overrides.update({"model.ndf": d_arch["ndf"], "model.n_layers_d": d_arch["n_layers"]})

    layers = list(DEFAULT_NCE_LAYERS if nce_layers is None else nce_layers)
    bad = [i for i in layers if not 0 <= i < len(g.model)]
    if bad:
        raise OfficialCheckpointError(f"--nce-layers: layers {bad} do not exist in this generator "
                                      f"(layers 0..{len(g.model) - 1})")
    overrides["loss.nce_layers"] = layers
    return _with_f(g, states.get("f"), layers, overrides, g_state, d_state)


# ------------------------------------------------------------------------------------------------- SinCUT

def _match_width(wanted: list[tuple[int, int]], table, what: str, key: str) -> int:
    """The smallest base width (ngf / ndf) whose channel table gives ``wanted`` [(resolution, channels)]."""
    for width in range(1, 1025):
        table_w = table(width)
        if all(table_w.get(res) == c for res, c in wanted):
            return width
    raise OfficialCheckpointError(f"{what}: no base width gives the channels of {key} ({wanted}); not a SinCUT "
                                  "stylegan2 network")


def _convert_sincut(states: Mapping[str, StateDict | None], *, nce_layers: list[int] | None,
                    name: str) -> tuple[dict, JobConfig]:
    """The authors' SinCUT G (netG stylegan2), D (netD stylegan2) and F: widths, residual blocks and crop size
    inferred from the shapes (the crop from D's depth when D is there, else the preset's 64), then checked
    strictly against the networks built from them."""
    from cutdist.model.stylegan import (StyleGAN2Discriminator, StyleGAN2Generator, discriminator_channels,
                                        generator_channels)

    g_state, d_state, f_state = states.get("g"), states.get("d"), states.get("f")
    stem = _need(g_state, "encoder.convs.1.0.weight", "G")
    if stem.dim() != 4 or stem.shape[1] != 3:
        raise OfficialCheckpointError(f"G: encoder.convs.1.0.weight has shape {tuple(stem.shape)}; expected an RGB "
                                      "1x1 EqualConv2d")
    downs = sorted({int(m.group(1)) for k in g_state
                    if (m := re.fullmatch(r"encoder\.convs\.(\d+)\.skip\.1\.weight", k))})
    blocks = {int(m.group(1)) for k in g_state if (m := re.fullmatch(r"encoder\.convs\.(\d+)\.conv1\.0\.weight", k))}
    if downs != [2]:
        raise OfficialCheckpointError(f"G: {len(downs)} down-sampling blocks at encoder layers {downs}; cutdist's "
                                      "SinCUT generator has one (stylegan2_G_num_downsampling=1)")
    n_blocks = 2 * (len(blocks) - 1)
    crop = 64
    if d_state is not None:
        d_blocks = {int(m.group(1)) for k in d_state if (m := re.fullmatch(r"convs\.(\d+)\.conv1\.0\.weight", k))}
        if "final_linear.0.weight" not in d_state or not d_blocks:
            raise OfficialCheckpointError("D: not a SinCUT stylegan2 discriminator (no convs.<i>.conv1 / final_linear "
                                          "keys)")
        crop = 2 ** (len(d_blocks) + 2)
    down = _need(g_state, "encoder.convs.2.conv2.1.weight", "G")
    ngf = _match_width([(crop, int(stem.shape[0])), (crop // 2, int(down.shape[0]))], generator_channels, "G",
                       "encoder.convs.1.0.weight / encoder.convs.2.conv2.1.weight")
    g = StyleGAN2Generator(ngf=ngf, crop_size=crop, n_downsampling=1, n_blocks=n_blocks)
    _strict(g, g_state, "G")
    overrides: dict[str, object] = {"name": name, "model.mode": "sincut", "model.ngf": ngf, "model.n_blocks": n_blocks,
                                    "data.crop_size": crop}
    if d_state is not None:
        first = _need(d_state, "convs.0.0.weight", "D")
        ndf = _match_width([(crop, int(first.shape[0]))], discriminator_channels, "D", "convs.0.0.weight")
        d = StyleGAN2Discriminator(ndf=ndf, crop_size=crop)
        _strict(d, d_state, "D")
        overrides["model.ndf"] = ndf
    layers = list(SINCUT_NCE_LAYERS if nce_layers is None else nce_layers)
    n_layers = len(g.encoder.convs)
    bad = [i for i in layers if not 0 <= i < n_layers]
    if bad:
        raise OfficialCheckpointError(f"--nce-layers: layers {bad} do not exist in this encoder (layers 0..{n_layers - 1})")
    overrides["loss.nce_layers"] = layers
    return _with_f(g, f_state, layers, overrides, g_state, d_state)


def _with_f(g, f_state, layers: list[int], overrides: dict[str, object], g_state, d_state):
    """Check F (when present) against the taps ``layers`` of ``g``, then the imported parts and their job config
    (both generator families: F's MLPs take the tapped channels, whatever the generator)."""
    if f_state is not None:
        f_arch = infer_patch_sampler(f_state)
        taps = g.tap_channels(layers)
        if f_arch["in_channels"] != taps:
            raise OfficialCheckpointError(
                f"F: its {len(f_arch['in_channels'])} MLPs take {f_arch['in_channels']} channels, but taps {layers} "
                f"of this generator give {taps}; pass the taps it was trained with (--nce-layers)")
        _strict(PatchSampleF(taps, nc=f_arch["nc"]), f_state, "F")
        overrides["model.netf_nc"] = f_arch["nc"]
    try:
        cfg = config_mod.from_dict(overrides, validate_config=False)
    except config_mod.ConfigError as err:
        raise OfficialCheckpointError(f"config: {err}") from None
    parts = {"g": dict(g_state), "d": None if d_state is None else dict(d_state),
             "f": None if f_state is None else dict(f_state)}
    return parts, cfg
