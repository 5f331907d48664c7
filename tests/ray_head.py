"""A real Ray head for tests: `ray start --head --block` on 127.0.0.1, auth disabled, its own ports and temp dir.

Stopped by its pid (and its process group), never by a broad `ray stop` that would hit other clusters.
"""
from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

RAY = str(Path(sys.executable).parent / "ray")


def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def worker_port_block(span: tuple[int, int], *, avoid: list[int], size: int = 200) -> int:
    """First port of a random block of `size` worker ports in `span` holding none of `avoid` (Ray refuses overlaps)."""
    starts = [start for start in range(span[0], span[1] - size + 1, size)
              if not any(start <= port < start + size for port in avoid)]
    return random.choice(starts)


@dataclass
class Head:
    address: str       # host:port of the GCS, for RAY_ADDRESS / ray.init
    dashboard: str     # http://host:port, for the jobs API
    proc: subprocess.Popen
    log: Path


def stop_process(proc: subprocess.Popen, *, grace_s: float, group: bool = False) -> None:
    """SIGTERM, ``grace_s`` seconds to exit, then SIGKILL; with ``group`` the whole process group it leads (started
    with ``start_new_session=True``) is SIGKILLed afterwards, whatever of it is still running."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)
    if group:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@contextlib.contextmanager
def ray_head(prefix: str, *, num_cpus: int = 2, worker_ports: tuple[int, int] = (20000, 60000),
             system_env: dict[str, str] | None = None) -> Iterator[Head]:
    """``system_env``: Ray system settings for the head (``RAY_<name>`` environment variables of ``ray start``)."""
    temp_dir = tempfile.mkdtemp(prefix=prefix, dir="/tmp")   # short: Ray's socket paths live under it
    components = free_ports(9)
    gcs, node_mgr, obj_mgr, client, dash, agent_listen, agent_grpc, runtime_env, metrics = components
    worker_min = worker_port_block(worker_ports, avoid=components)
    log = Path(temp_dir) / "ray_start.log"
    cmd = [RAY, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}",
           f"--node-manager-port={node_mgr}", f"--object-manager-port={obj_mgr}",
           f"--ray-client-server-port={client}", f"--min-worker-port={worker_min}",
           f"--max-worker-port={worker_min + 199}", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
           f"--dashboard-port={dash}", f"--dashboard-agent-listen-port={agent_listen}",
           f"--dashboard-agent-grpc-port={agent_grpc}", f"--runtime-env-agent-port={runtime_env}",
           f"--metrics-export-port={metrics}", f"--num-cpus={num_cpus}", "--num-gpus=0", f"--temp-dir={temp_dir}",
           "--disable-usage-stats"]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", **(system_env or {})}
    env.pop("RAY_ADDRESS", None)
    with log.open("w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    head = Head(f"127.0.0.1:{gcs}", f"http://127.0.0.1:{dash}", proc, log)
    try:
        deadline = time.time() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"ray start exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{head.dashboard}/api/version", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                pytest.fail(f"the Ray head did not come up in 120 s:\n{log.read_text()[-3000:]}")
            time.sleep(1)
        yield head
    finally:
        # `ray start --block` stops what it started on SIGTERM, but takes ~30 s on this machine (measured): give it
        # 2 s, then the process group (everything of this session) is SIGKILLed, as it always ended up being.
        stop_process(proc, grace_s=2, group=True)
        shutil.rmtree(temp_dir, ignore_errors=True)


@dataclass
class WorkerNode:
    proc: subprocess.Popen
    log: Path
    temp_dir: str

    def kill(self) -> None:
        """The node is lost: every process of it SIGKILLed at once (raylet, workers, agents)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)


@contextlib.contextmanager
def ray_worker_node(head_address: str, *, num_cpus: int = 1, worker_ports: tuple[int, int] = (20000, 60000)
                    ) -> Iterator[WorkerNode]:
    """One more Ray node on this machine (`ray start --address --block`, its own ports), joined to the head at
    ``head_address``; ``kill()`` loses it the way a machine goes down. Stopped by its pid at the end."""
    temp_dir = tempfile.mkdtemp(prefix="cdn", dir="/tmp")
    components = free_ports(7)
    node_mgr, obj_mgr, agent_listen, agent_grpc, runtime_env, metrics, _ = components
    worker_min = worker_port_block(worker_ports, avoid=components)
    log = Path(temp_dir) / "ray_start.log"
    cmd = [RAY, "start", f"--address={head_address}", "--block", "--node-ip-address=127.0.0.1",
           f"--node-manager-port={node_mgr}", f"--object-manager-port={obj_mgr}",
           f"--min-worker-port={worker_min}", f"--max-worker-port={worker_min + 199}",
           f"--dashboard-agent-listen-port={agent_listen}", f"--dashboard-agent-grpc-port={agent_grpc}",
           f"--runtime-env-agent-port={runtime_env}", f"--metrics-export-port={metrics}",
           f"--num-cpus={num_cpus}", "--num-gpus=0", "--disable-usage-stats"]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    with log.open("w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    node = WorkerNode(proc, log, temp_dir)
    try:
        deadline = time.time() + 120
        while "Ray runtime started" not in log.read_text():
            if proc.poll() is not None:
                pytest.fail(f"ray start --address exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            if time.time() > deadline:
                pytest.fail(f"the Ray node did not come up in 120 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield node
    finally:
        stop_process(proc, grace_s=2, group=True)   # as the head's
        shutil.rmtree(temp_dir, ignore_errors=True)
