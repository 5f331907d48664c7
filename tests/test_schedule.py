"""cutdist.schedule: epochs, steps, the lr policy, what is due after each step, and the one seed mixer."""
from __future__ import annotations

import math

import numpy as np
import pytest

from cutdist import config
from cutdist.schedule import CheckpointTimer, Position, Schedule, lr_factor, mix_seed, per_rank_batch, steps_per_epoch


def test_steps_per_epoch():
    assert steps_per_epoch(16, 2, 2) == 4
    assert steps_per_epoch(17, 2, 2) == 5
    assert steps_per_epoch(1, 4, 8) == 1
    with pytest.raises(ValueError, match="steps_per_epoch"):
        steps_per_epoch(0, 1, 1)


def test_lr_factor_matches_the_reference_linear_policy():
    def reference(e, n_epochs, n_epochs_decay, epoch_count=1):
        # models/networks.py get_scheduler('linear'): LambdaLR index e = 0 in the first epoch
        return 1.0 - max(0, e + epoch_count - n_epochs) / float(n_epochs_decay + 1)

    for epochs, decay in ((200, 200), (150, 50), (3, 0), (0, 5)):
        for e in range(epochs + decay):
            assert lr_factor(e, epochs, decay) == pytest.approx(reference(e, epochs, decay))
    assert lr_factor(199, 200, 200) == 1.0 and lr_factor(200, 200, 200) == pytest.approx(200 / 201)
    assert lr_factor(399, 200, 200) == pytest.approx(1 / 201)
    assert lr_factor(500, 200, 200) == 0.0


def test_mix_seed_is_the_seeds_the_loop_and_stream_drew_before_it_was_shared():
    # The two mixers it replaced (train/loop.py step_seed, data/stream.py derive_seed): a run's draws are unchanged.
    def step_seed(seed, rank, step, stream):
        return int(np.random.SeedSequence([seed, rank, step, stream]).generate_state(2, np.uint64)[0] >> np.uint64(1))

    def derive_seed(*parts):
        return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(2, np.uint64)[0] >> 1)

    for parts in ((0, 0, 0, 0), (1234, 3, 99999, 1), (2**32 - 1, 7, 5, 0)):
        assert mix_seed(*parts) == step_seed(*parts) == derive_seed(*parts)
    assert mix_seed(0, 1, 2, 3, ord("A"), 2) == derive_seed(0, 1, 2, 3, ord("A"), 2)
    assert 0 <= mix_seed(5, 1) < 2**63 and mix_seed(5, 1) != mix_seed(5, 2)


def test_a_seed_outside_32_bits_is_refused(tmp_path):
    with pytest.raises(config.ConfigError, match=r"^train\.seed"):
        config.from_dict({"data.root": str(tmp_path), "train.seed": -1})
    with pytest.raises(config.ConfigError, match=r"^train\.seed"):
        config.from_dict({"data.root": str(tmp_path), "train.seed": 2**32})


def test_per_rank_batch_is_split_for_sincut_only(tmp_path):
    """SinCUT's data.batch_size is the global batch split over the ranks (the summary's images_seen counts with it);
    CUT's is per rank."""
    cut = config.from_dict({"data.root": str(tmp_path), "data.batch_size": 4})
    sincut = config.from_dict({"data.root": str(tmp_path), "model.mode": "sincut", "data.batch_size": 16})
    assert [per_rank_batch(cut, w) for w in (1, 2)] == [4, 4]
    assert [per_rank_batch(sincut, w) for w in (1, 2, 4)] == [16, 8, 4]
    assert Schedule.of(sincut, 100, 2).images_per_step == 16 and Schedule.of(cut, 100, 2).images_per_step == 8


def schedule(tmp_path, epoch_size=8, world_size=1, **values):
    cfg = config.from_dict({"data.root": str(tmp_path), "data.batch_size": 2, "optim.epochs": 2,
                            "optim.epochs_decay": 2, "optim.lr": 0.1, "data.load_size": 36, "data.crop_size": 32,
                            **values})
    return Schedule.of(cfg, epoch_size, world_size)


def walk(sched: Schedule, pos: Position | None = None, timer: CheckpointTimer | None = None, on_step=None):
    """Every step's (position after it, what is due) until the schedule says finished; ``on_step(due)`` after
    each (the loop's part: the clock moves, the timer restarts with a checkpoint)."""
    pos = pos or Position()
    out = []
    while not sched.finished(pos):
        if sched.epoch_done(pos):
            pos.epoch, pos.images_in_epoch = pos.epoch + 1, 0
            continue
        batches = math.ceil((sched.epoch_size - pos.images_in_epoch) / sched.images_per_step)   # as the stream
        for i in range(batches):
            epoch_end = i == batches - 1
            sched.advance(pos, epoch_end)
            due = sched.due(pos, epoch_end, timer)
            out.append((pos.step, pos.epoch, due))
            if on_step is not None:
                on_step(due)
            if due.finished:
                return out
    return out


def test_steps_epochs_lr_and_load_size(tmp_path):
    s = schedule(tmp_path)                       # 8 samples / (2 x 1) = 4 steps per epoch, 4 epochs
    assert (s.steps_per_epoch, s.images_per_step, s.total_epochs, s.total_steps) == (4, 2, 4, 16)
    assert [s.lr(e) for e in range(4)] == pytest.approx([0.1, 0.1, 0.1 * 2 / 3, 0.1 / 3])
    assert [s.epoch_load_size(e) for e in range(4)] == [36, 36, 32, 32]   # no jitter while decaying
    assert schedule(tmp_path, **{"optim.max_steps": 5}).total_steps == 5
    constant = schedule(tmp_path, **{"optim.epochs": 0, "optim.epochs_decay": 0, "optim.max_steps": 7})
    assert constant.total_steps == 7 and constant.lr(3) == 0.1 and constant.epoch_load_size(3) == 36
    assert schedule(tmp_path, world_size=2).steps_per_epoch == 2
    scaled = schedule(tmp_path, world_size=2, **{"optim.lr_scaling": "linear"})   # global batch 4
    assert scaled.base_lr == pytest.approx(0.4) and scaled.lr(3) == pytest.approx(0.4 / 3)
    steps = walk(s)
    assert [step for step, _, _ in steps] == list(range(1, 17)) and steps[-1][2].finished


def test_cadence(tmp_path):
    s = schedule(tmp_path, **{"eval.enabled": True, "eval.every": 2, "checkpoint.every_steps": 3,
                              "logging.every_steps": 5, "logging.sample_every_steps": 7})
    steps = walk(s)
    due = {step: d for step, _, d in steps}
    assert [k for k, d in due.items() if d.eval] == [8, 16]                 # every 2 epochs (4 steps) + the end
    assert [k for k, d in due.items() if d.checkpoint] == [3, 6, 8, 9, 12, 15, 16]
    assert [k for k, d in due.items() if d.log] == [3, 5, 6, 8, 9, 10, 12, 15, 16]
    assert [k for k, d in due.items() if d.samples] == [7, 14, 16]
    assert [k for k, d in due.items() if d.finished] == [16]
    end_only = schedule(tmp_path, **{"eval.enabled": True, "eval.every": 0})
    assert [step for step, _, d in walk(end_only) if d.eval] == [16]
    off = schedule(tmp_path, **{"eval.enabled": False, "eval.every": 1})
    assert not any(d.eval for _, _, d in walk(off))


def test_a_position_resumed_on_another_world_size(tmp_path):
    # 6 of epoch 1's 8 samples seen by 1 worker of batch 2 (3 steps); 2 workers (4 a step) take 1 more step
    two = schedule(tmp_path, world_size=2)
    pos = Position(step=7, epoch=1, images_in_epoch=6)
    assert not two.epoch_done(pos) and two.epoch_progress(pos) == pytest.approx(1.75)
    steps = walk(two, pos)
    assert steps[0][:2] == (8, 2) and steps[-1][0] == 8 + 2 * 2 and steps[-1][2].finished
    assert two.epoch_done(Position(step=9, epoch=1, images_in_epoch=8))


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_checkpoint_by_wall_time_on_log_steps(tmp_path):
    # 16 steps of 20 s each; a checkpoint every 1.5 minutes of training, asked on log steps (every 2 steps)
    s = schedule(tmp_path, **{"checkpoint.every_steps": 0, "checkpoint.every_minutes": 1.5,
                              "logging.every_steps": 2, "eval.enabled": False})
    clock = FakeClock()
    asked: list[int] = []
    timer = CheckpointTimer(1.5, clock=clock, agree=lambda flag: asked.append(clock.now) or flag)

    def on_step(due):
        if due.checkpoint:
            timer.restart()
        clock.now += 20.0

    steps = walk(s, timer=timer, on_step=on_step)
    due = {step: d for step, _, d in steps}
    # at step k the clock has moved 20 s x (k - 1): 90 s passed at log step 6 (100 s), and again at log step 12
    # (120 s after the restart at step 6), then the end
    assert [k for k, d in due.items() if d.checkpoint] == [6, 12, 16]
    assert all(due[k].log for k in (6, 12, 16))
    assert len(asked) == 7   # log steps 2..14; the last step checkpoints anyway

    # both cadences: either triggers; the timer restarts with the step checkpoints too
    both = schedule(tmp_path, **{"checkpoint.every_steps": 7, "checkpoint.every_minutes": 1.5,
                                 "logging.every_steps": 2, "eval.enabled": False})
    clock.now = 0.0
    timer = CheckpointTimer(1.5, clock=clock)
    due = {step: d for step, _, d in walk(both, timer=timer, on_step=on_step)}
    assert [k for k, d in due.items() if d.checkpoint] == [6, 7, 12, 14, 16]   # time: 6, 12; steps: 7, 14

    # off (0 minutes): never asked, never due by time
    off = CheckpointTimer(0.0, clock=clock, agree=lambda flag: pytest.fail("asked while off"))
    due = {step: d for step, _, d in walk(s, timer=off)}
    assert [k for k, d in due.items() if d.checkpoint] == [16]
    # one rank's yes is everyone's: the agreement decides, not this rank's clock
    clock.now = 0.0
    late = CheckpointTimer(1.0, clock=clock, agree=lambda flag: True)
    assert late.up() and not CheckpointTimer(1.0, clock=clock).up()


AGREE_SCRIPT = """
import sys, torch.distributed as dist
from cutdist import config
from cutdist.schedule import CheckpointTimer, Schedule, Position
from cutdist.train.context import WorkerContext
rank, store = int(sys.argv[1]), sys.argv[2]
ctx = WorkerContext()
ctx.rank, ctx.world_size = rank, 2
dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
cfg = config.from_dict({"data.root": "unused", "data.batch_size": 1, "optim.max_steps": 12,
                        "checkpoint.every_steps": 0, "checkpoint.every_minutes": 1.0, "logging.every_steps": 2})
sched = Schedule.of(cfg, 100, 2)
now = [0.0]
timer = CheckpointTimer(1.0, clock=lambda: now[0], agree=ctx.any_rank)   # as the loop builds it
pos, taken = Position(), []
while not sched.finished(pos):
    sched.advance(pos, False)
    due = sched.due(pos, False, timer)
    if due.checkpoint:
        taken.append(pos.step)
        timer.restart()
    now[0] += 20.0 if rank == 1 else 5.0   # rank 1's clock runs 4x faster than rank 0's
print(taken)
dist.destroy_process_group()
"""


def test_ranks_agree_on_the_checkpoint_by_time(tmp_path):
    # two gloo ranks whose clocks disagree take their checkpoints at the same steps: rank 1's (60 s by step 4)
    import subprocess
    import sys
    store = tmp_path / "store"
    procs = [subprocess.Popen([sys.executable, "-c", AGREE_SCRIPT, str(r), str(store)], stdout=subprocess.PIPE,
                              text=True) for r in (0, 1)]
    outs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert outs[0] == outs[1] == "[4, 8, 12]"
