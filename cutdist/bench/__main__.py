"""``python -m cutdist.bench SUBCOMMAND ...``: each subcommand lives in its own module of this package."""
from __future__ import annotations

import importlib
import sys

SUBCOMMANDS = {
    "data": "cutdist.bench.data",             # unpaired shard stream vs torchvision ImageFolder, images/s
    "train-step": "cutdist.bench.train_step",  # one full CUT step (D, then G+F), images/s, TFLOP/s
    "fid": "cutdist.bench.fid",                # Inception feature extraction, images/s
    "decode": "cutdist.bench.gpu_decode",      # JPEG decode + augment on the GPU (nvJPEG) vs one CPU core, images/s
    "curves": "cutdist.bench.curves",          # loss curves of fast-path variants vs fp32, within seed-to-seed noise?
    "scaling": "cutdist.bench.scaling",        # quality vs global batch under lr rules none/sqrt/linear, same images seen
    "grads": "cutdist.bench.grads",            # one step with a fast-path switch vs the plain step: same gradients?
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m cutdist.bench {%s} [options]   (each prints one JSON line)" % ",".join(SUBCOMMANDS))
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"cutdist.bench: unknown benchmark {name!r}; choose from {', '.join(SUBCOMMANDS)}", file=sys.stderr)
        return 2
    return int(importlib.import_module(SUBCOMMANDS[name]).main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
