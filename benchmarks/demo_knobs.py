"""Which knobs make the demo keep shapes and backgrounds? A cheap single-process proxy for `make demo`.

    python benchmarks/demo_knobs.py NAME STEPS DECAY_FRACTION '{"optim.lr": 4e-4}' [--renderer 1|2] [--out DIR]

Trains the demo's CUT (jobs/demo.yaml's model and loss: ngf/ndf 8, 4 blocks, 2-layer PatchGAN, strided convs,
the CUT preset lambda_X 1 with identity PatchNCE, taps 0-12, 64 patches, lr 2e-4) on 400 synthetic training
images per domain (``--renderer``: the synthetic renderer version, default the current one), batch 2 (= the
demo's 2 workers x batch 1), resize 72 -> random crop 64 + flip, one thread; the lr is constant for the first
(1 - DECAY_FRACTION) of STEPS, then decays linearly to 0. The JSON argument overrides config keys (plus ``bs``
for the batch); the previous demo was '{"model.ngf": 16, "model.ndf": 16, "model.n_blocks": 6,
"model.n_layers_d": 3, "model.antialias": true, "loss.nce_layers": [0, 4, 8, 12, 16], "loss.lambda_x": 10,
"optim.lr": 8e-4}'. Every STEPS/4 steps it prints the paired error of G on the 64 test images vs their ground
truth (``cutdist.eval.paired.translation_quality``, as the demo prints) and the wall time; at the end it writes
``NAME.json`` (that history) and ``NAME.pt`` (G's weights) to --out. Not the demo itself: no Ray, no DDP, no
shards, so its numbers differ from the demo's at the same settings (compare trials with each other).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from cutdist import config
from cutdist.data.synth import RENDERER_VERSION, synth_image, synth_test_pair
from cutdist.data.transforms import to_tensor
from cutdist.eval.paired import translation_quality
from cutdist.model.cut import LocalUpdater, cut_step, make_optimizers
from cutdist.model.networks import build_nets

DEMO = {"model.mode": "cut", "model.ngf": 8, "model.ndf": 8, "model.n_blocks": 4, "model.n_layers_d": 2,
        "model.antialias": False, "model.netf_nc": 64, "loss.lambda_x": 1, "loss.nce_layers": [0, 4, 8, 12],
        "loss.num_patches": 64, "optim.lr": 2e-4, "data.root": "unused"}
TRAIN_IMAGES, TEST_IMAGES, SIZE, LOAD = 400, 64, 64, 72



def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("name")
    p.add_argument("steps", type=int)
    p.add_argument("decay_fraction", type=float)
    p.add_argument("overrides", nargs="?", default="{}")
    p.add_argument("--renderer", type=int, default=RENDERER_VERSION, help="synthetic renderer version (1 or 2)")
    p.add_argument("--out", default=".")
    args = p.parse_args()
    torch.set_num_threads(1)
    raw = {**DEMO, **json.loads(args.overrides)}
    bs = int(raw.pop("bs", 2))
    cfg = config.from_dict(raw)

    def domain(d: str) -> torch.Tensor:
        x = torch.stack([to_tensor(synth_image(0, "train", d, i, SIZE, args.renderer)) for i in range(TRAIN_IMAGES)])
        return F.interpolate(x, size=LOAD, mode="bilinear", align_corners=False)

    train_a, train_b = domain("A"), domain("B")
    pairs = [synth_test_pair(0, i, SIZE, args.renderer) for i in range(TEST_IMAGES)]
    test_a = torch.stack([to_tensor(a) for a, _ in pairs])
    gt01 = (torch.stack([to_tensor(g) for _, g in pairs]) + 1) / 2

    torch.manual_seed(0)
    nets = build_nets(cfg)
    opts = make_optimizers(nets, cfg.optim)
    updater = LocalUpdater(opts)
    patches, flips, draws = (torch.Generator().manual_seed(s) for s in (1, 2, 4))

    def crops(x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        out = []
        for i in indices.tolist():
            y, z = torch.randint(0, LOAD - SIZE + 1, (2,), generator=draws).tolist()
            im = x[i, :, y:y + SIZE, z:z + SIZE]
            out.append(im.flip(-1) if torch.rand((), generator=draws) < 0.5 else im)
        return torch.stack(out)

    @torch.no_grad()
    def quality() -> dict[str, float]:
        nets.g.eval()
        fake = torch.cat([nets.g(test_a[i:i + 32]) for i in range(0, TEST_IMAGES, 32)])
        nets.g.train()
        return translation_quality((fake.clamp(-1, 1) + 1) / 2, gt01)

    constant = int(args.steps * (1 - args.decay_fraction))
    t0, history = time.time(), []
    for step in range(args.steps):
        lr = cfg.optim.lr * (1.0 if step < constant else 1 - (step - constant) / max(1, args.steps - constant))
        for opt in opts.values():
            for group in opt.param_groups:
                group["lr"] = lr
        ia = torch.randint(0, TRAIN_IMAGES, (bs,), generator=draws)
        ib = torch.randint(0, TRAIN_IMAGES, (bs,), generator=draws)
        cut_step(nets, updater, crops(train_a, ia), crops(train_b, ib), cfg.loss, generator=patches, flip_generator=flips)
        if (step + 1) % max(1, args.steps // 4) == 0:
            row = {**quality(), "step": step + 1, "wall_s": round(time.time() - t0)}
            history.append(row)
            print(json.dumps({"name": args.name, **row}), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(nets.g.state_dict(), out / f"{args.name}.pt")
    (out / f"{args.name}.json").write_text(json.dumps({"name": args.name, "overrides": json.loads(args.overrides),
                                                       "renderer": args.renderer,
                                                       "steps": args.steps, "history": history}, indent=1))


if __name__ == "__main__":
    main()
