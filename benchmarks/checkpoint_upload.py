"""Does a checkpoint upload stall training? cutdist's report path (``cutdist.train.context.RayContext.report``)
before and after issue 15, against an S3 server behind a slow link: "before" uploads synchronously and sends
every logging interval's report to Ray; "after" uploads with ``CheckpointUploadMode.ASYNC`` and sends Ray only
the reports that carry a checkpoint.

    python benchmarks/checkpoint_upload.py [--mb 64] [--mbps 16] [--latency-ms 20] [--steps 30] [--step-s 0.2]
        [--every 10] [--log-every 5]

Starts moto's S3 server on 127.0.0.1 (``pip install 'moto[server]'``), a TCP proxy in front of it that delays
every chunk by ``--latency-ms`` and caps the upload rate at ``--mbps`` MB/s, and a local Ray with one worker that
runs ``--steps`` fake training steps of ``--step-s`` seconds (a sleep: the GPU computing), reports every
``--log-every`` steps and writes a ``--mb`` MB checkpoint every ``--every`` steps. Both run side by side in one
invocation. Prints one JSON line each: seconds the loop spent inside ``report`` calls that carried a checkpoint,
inside the others, the wall time of the loop, and the ideal (steps x step_s).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_proxy(target_port: int, mbps: float, latency_s: float) -> int:
    """A TCP proxy in a daemon thread: every chunk delayed by ``latency_s``, client->server capped at ``mbps``."""
    port = free_port()

    async def pipe(reader, writer, limit: bool):
        try:
            while data := await reader.read(1 << 16):
                await asyncio.sleep(latency_s + (len(data) / (mbps * 1e6) if limit else 0.0))
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def handle(client_reader, client_writer):
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1", target_port)
        await asyncio.gather(pipe(client_reader, server_writer, True), pipe(server_reader, client_writer, False))

    ready = threading.Event()

    def run():
        loop = asyncio.new_event_loop()
        loop.run_until_complete(asyncio.start_server(handle, "127.0.0.1", port))
        ready.set()
        loop.run_forever()

    threading.Thread(target=run, daemon=True).start()
    ready.wait()
    return port


def train_fn(config: dict) -> None:
    from cutdist.train import context as ctx_mod

    before = config["mode"] == "before"
    # before: the report path as it was, synchronous upload (checkpoint.upload=sync), every logging interval
    # reported to Ray
    ctx = ctx_mod.RayContext(upload="sync" if before else "async")
    in_ckpt, in_plain = [], []
    t0 = time.perf_counter()
    for step in range(1, config["steps"] + 1):
        time.sleep(config["step_s"])
        ckpt = None
        if step % config["every"] == 0:
            ckpt = tempfile.mkdtemp(prefix="bench_ckpt_")
            with open(os.path.join(ckpt, "model.pt"), "wb") as fh:
                fh.write(os.urandom(config["mb"] << 20))
        if ckpt or step % config["log_every"] == 0:
            t = time.perf_counter()
            handed_over = ctx.report({"step": step}, ckpt and __import__("pathlib").Path(ckpt), step,
                                     checkpointed=before or bool(ckpt))
            (in_ckpt if ckpt else in_plain).append(time.perf_counter() - t)
            if ckpt and not handed_over:
                __import__("shutil").rmtree(ckpt, ignore_errors=True)
    wall = time.perf_counter() - t0
    if ctx.rank == 0:
        with open(config["out"], "w") as fh:
            json.dump({"report_with_checkpoint_s": in_ckpt, "report_plain_s": in_plain, "loop_wall_s": wall}, fh)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=64)
    parser.add_argument("--mbps", type=float, default=16.0)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--step-s", type=float, default=0.2)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--log-every", type=int, default=5)
    args = parser.parse_args()

    moto_port = free_port()
    moto = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(moto_port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{moto_port}/moto-api/", timeout=1)
                break
            except OSError:
                time.sleep(0.2)
        proxy_port = start_proxy(moto_port, args.mbps, args.latency_ms / 1000)
        os.environ.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{proxy_port}", AWS_ACCESS_KEY_ID="bench",
                          AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
                          AWS_EC2_METADATA_DISABLED="true")
        import boto3
        boto3.client("s3", endpoint_url=f"http://127.0.0.1:{moto_port}").create_bucket(Bucket="bench")

        import ray
        from ray.train import RunConfig, ScalingConfig
        from ray.train.torch import TorchTrainer

        ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": REPO}})
        for mode in ("before", "after"):
            out = tempfile.mktemp(suffix=".json")
            config = {"mode": mode, "steps": args.steps, "step_s": args.step_s, "every": args.every,
                      "log_every": args.log_every, "mb": args.mb, "out": out}
            TorchTrainer(train_fn, train_loop_config=config, scaling_config=ScalingConfig(num_workers=1),
                         run_config=RunConfig(name=f"upload-{mode}-{int(time.time())}",
                                              storage_path="s3://bench/runs")).fit()
            with open(out) as fh:
                got = json.load(fh)
            print(json.dumps({
                "mode": mode, "upload": "sync" if mode == "before" else "async",
                "ray_reports": "every report" if mode == "before" else "checkpoints only", "checkpoint_mb": args.mb, "link_mb_per_s": args.mbps, "latency_ms": args.latency_ms,
                "steps": args.steps, "step_s": args.step_s, "checkpoint_every": args.every,
                "report_every": args.log_every,
                "in_report_with_checkpoint_s": round(sum(got["report_with_checkpoint_s"]), 3),
                "in_report_plain_s": round(sum(got["report_plain_s"]), 3),
                "loop_wall_s": round(got["loop_wall_s"], 3), "ideal_s": round(args.steps * args.step_s, 3),
            }), flush=True)
        ray.shutdown()
    finally:
        moto.terminate()
        moto.wait(timeout=10)


if __name__ == "__main__":
    main()
