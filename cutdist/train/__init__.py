"""Distributed CUT training on Ray Train: ``python -m cutdist.train`` and the pieces behind it.

- ``cutdist.train.preflight``: ``preflight(cfg)``, every check before a cluster starts (both drivers call it),
  and the one place local paths are made absolute
- ``cutdist.train.launcher``: ``build_trainer(cfg, splits, ...) -> TorchTrainer`` (the one place a trainer is
  built; ``cutdist.tune`` reuses it), run directories, per-worker resources
- ``cutdist.train.loop``: ``train_loop_per_worker`` (what every Ray worker runs), ``run_training`` (the loop),
  ``run_local`` (the same loop in one plain process, no Ray)
- ``cutdist.train.checkpoint``: the only code that writes, reads, resolves, validates and prunes checkpoints
- ``cutdist.train.strategy``: ``ddp`` and ``deepspeed`` behind one interface (wrapping, Updater, lr,
  consolidated optimizer state)
- ``cutdist.train.context``: rank/device/report/restored checkpoint, from Ray or for a plain process
- ``cutdist.train.logger``: rank 0's console lines, TensorBoard, ``metrics.jsonl``, sample grids
- ``cutdist.train.demo``: the demo's before-vs-after paired translation quality
"""
