"""Can the demo's generator reproduce its own input? An L1 auto-encoder of the demo's G, per synthetic renderer.

    python benchmarks/demo_autoencoder.py --renderer 1|2 [--steps 1200] [--lr 1e-3] [--model demo|previous]

Trains G alone (no GAN, no PatchNCE) to copy training images of domain A (batch 2, Adam betas 0.5/0.999, one
thread) and prints, every steps/4, the low-frequency L1 between G(test A) and test A itself
(``cutdist.eval.paired.translation_quality``'s ``lowfreq_l1`` with the input as the target: 0 = a perfect copy).
The paper's ResNet generator instance-normalises after its first convolution, which removes each image's mean
colour and contrast; renderer 1 draws every background's colours at random, so no G of this architecture can
copy them, while renderer 2's sky-over-ground palette can be learned (README, "What the demo ends with").
``--model previous``: the previous demo's G (ngf 16, 6 blocks, blur-pool sampling).
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from cutdist import config
from cutdist.data.synth import synth_image, synth_test_pair
from cutdist.data.transforms import to_tensor
from cutdist.eval.paired import translation_quality
from cutdist.model.networks import build_nets

MODELS = {
    "demo": {"model.ngf": 8, "model.ndf": 8, "model.n_blocks": 4, "model.n_layers_d": 2, "model.antialias": False,
             "loss.nce_layers": [0, 4, 8, 12]},
    "previous": {"model.ngf": 16, "model.ndf": 16, "model.n_blocks": 6, "loss.nce_layers": [0, 4, 8, 12, 16]},
}



def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--renderer", type=int, required=True, choices=[1, 2])
    p.add_argument("--steps", type=int, default=1200)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--model", default="previous", choices=sorted(MODELS))
    args = p.parse_args()
    torch.set_num_threads(1)
    cfg = config.from_dict({"model.mode": "cut", "model.netf_nc": 64, "data.root": "unused", **MODELS[args.model]})
    train = torch.stack([to_tensor(synth_image(0, "train", "A", i, 64, args.renderer)) for i in range(400)])
    test = torch.stack([to_tensor(a) for a, _ in (synth_test_pair(0, i, 64, args.renderer) for i in range(64))])
    torch.manual_seed(0)
    g = build_nets(cfg).g
    opt = torch.optim.Adam(g.parameters(), lr=args.lr, betas=(0.5, 0.999))
    draws = torch.Generator().manual_seed(0)
    t0 = time.time()
    for step in range(args.steps):
        x = train[torch.randint(0, len(train), (2,), generator=draws)]
        loss = (g(x) - x).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if (step + 1) % max(1, args.steps // 4) == 0:
            g.eval()
            with torch.no_grad():
                copy = g(test).clamp(-1, 1)
            g.train()
            error = translation_quality((copy + 1) / 2, (test + 1) / 2)["lowfreq_l1"]
            print(json.dumps({"renderer": args.renderer, "model": args.model, "step": step + 1,
                              "lowfreq_l1_vs_input": round(error, 4), "wall_s": round(time.time() - t0)}), flush=True)


if __name__ == "__main__":
    main()
