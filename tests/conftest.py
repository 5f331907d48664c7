"""Shared test set-up: Ray without auth tokens, quiet telemetry, small thread counts on a 2-core box."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny convolutions: one thread is faster, and far faster on a shared 2-core machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def s3():
    """A real S3 API server for the module that asks for it (tests/s3_server.py), with the standard AWS
    environment set for this process and every process it starts (Ray nodes, drivers) while the module runs."""
    from s3_server import environment, s3_server

    with s3_server() as server, environment(server.env):
        yield server
