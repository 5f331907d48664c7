"""Standalone reproduction (torch only) of a wrong CPU gradient: ``nn.InstanceNorm2d``'s input gradient is wrong when
the batch is 1 and the incoming gradient has channels_last strides. Batch >= 2 is exact. CUDA is checked too
where a GPU is visible (not yet run on one).

    python benchmarks/instance_norm_channels_last_bug.py        # prints one line per case, exits 1 if any is wrong

Seen with torch 2.14.1 (CPU): ~140 % relative error for every C, H, W tried. Likely mechanism (from reading ATen, not
confirmed in the kernel): ``instance_norm`` views
the input as (1, N*C, H, W) and calls ``batch_norm``; at N = 1 the incoming gradient's view keeps its channels_last
strides while the saved input is contiguous, and the CPU batch-norm backward mixes the two layouts up. At N >= 2 the
reshape cannot be a view, so the gradient is copied to contiguous first and the result is right.
"""
import sys

import torch


def relative_error(batch: int, channels: int, side: int, device: str) -> float:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, channels, side, side, generator=gen).to(device).requires_grad_()
    y = torch.nn.InstanceNorm2d(channels)(x)
    g = torch.randn(y.shape, generator=gen).to(device)
    want, = torch.autograd.grad(y, x, g, retain_graph=True)
    got, = torch.autograd.grad(y, x, g.contiguous(memory_format=torch.channels_last))
    return ((got - want).abs().max() / want.abs().max()).item()


def main() -> int:
    print(f"torch {torch.__version__}")
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    wrong = 0
    for device in devices:
        for batch, channels, side in ((1, 64, 16), (1, 3, 8), (1, 256, 64), (2, 64, 16)):
            err = relative_error(batch, channels, side, device)
            bad = err > 1e-4
            wrong += bad
            print(f"{device} InstanceNorm2d input grad, x {(batch, channels, side, side)}, incoming grad channels_last: "
                  f"max relative error {err:.3g}{'  <-- WRONG' if bad else ''}")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
