"""``python -m cutdist.convert --official-dir DIR --out CKPT [--mode cut|fastcut|sincut]``: import the authors'
released CUT/FastCUT weights, or their single-image SinCUT weights with ``--mode sincut``
(``latest_net_G.pth``, plus ``latest_net_D.pth`` / ``latest_net_F.pth`` when present) into a cutdist checkpoint
directory that ``python -m cutdist.translate`` (and training's resume) reads.

Exit status: 0 done; 2 usage error, unreadable file, or state dicts that do not match the reference networks
(one line on stderr listing the missing / unknown keys).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cutdist.model.io import MODEL_FILE, ModelIOError, save_model
from cutdist.model.official import DEFAULT_NCE_LAYERS, OfficialCheckpointError, convert_official, read_official
from cutdist.paths import output_dir_problem


def _layers(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cutdist.convert", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--official-dir", required=True, help="folder holding <epoch>_net_G.pth (and _D, _F)")
    p.add_argument("--out", required=True, help="cutdist checkpoint directory to write (model.pt inside)")
    p.add_argument("--epoch", default="latest", help="file prefix of the official files (default: latest)")
    p.add_argument("--mode", choices=["cut", "fastcut", "sincut"], default="cut",
                   help="preset recorded in the checkpoint's config (default: cut); sincut: the authors' single-image "
                        "model (netG/netD stylegan2)")
    p.add_argument("--nce-layers", type=_layers, default=None,
                   help=f"PatchNCE taps F was trained with (default: {','.join(map(str, DEFAULT_NCE_LAYERS))}; "
                        "sincut: 0,2,4)")
    p.add_argument("--name", default=None, help="job name stored in the config (default: the official folder name)")
    p.add_argument("--force", action="store_true", help="overwrite an existing checkpoint in --out")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out).expanduser()
    if (out / MODEL_FILE).exists() and not args.force:
        print(f"error: --out: {out / MODEL_FILE} exists (pass --force to overwrite)", file=sys.stderr)
        return 2
    problem = output_dir_problem(out, "--out")   # before reading anything
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    source_dir = Path(args.official_dir).expanduser()
    try:
        states = read_official(source_dir, args.epoch)
        parts, cfg = convert_official(states, mode=args.mode, nce_layers=args.nce_layers,
                                      name=args.name or source_dir.resolve().name or "official")
        path = save_model(out, parts, cfg, step=0, epoch=0, source=f"official:{source_dir.resolve()}")
    except (OfficialCheckpointError, ModelIOError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:   # e.g. the disk filled up while writing
        print(f"error: --out: cannot write {out / MODEL_FILE} ({err.strerror or err})", file=sys.stderr)
        return 2
    m = cfg.model
    if m.mode == "sincut":
        print(f"wrote {path}: SinCUT G ngf={m.ngf} n_blocks={m.n_blocks} crop={cfg.data.crop_size}; "
              f"D {'ndf=%d' % m.ndf if parts['d'] is not None else 'absent'}; "
              f"F {'nc=%d taps=%s' % (m.netf_nc, cfg.loss.nce_layers) if parts['f'] is not None else 'absent'}")
        return 0
    print(f"wrote {path}: G ngf={m.ngf} n_blocks={m.n_blocks} antialias={m.antialias}; "
          f"D {'ndf=%d n_layers=%d' % (m.ndf, m.n_layers_d) if parts['d'] is not None else 'absent'}; "
          f"F {'nc=%d taps=%s' % (m.netf_nc, cfg.loss.nce_layers) if parts['f'] is not None else 'absent'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
