"""A real S3 API server for tests: moto's stand-alone server on 127.0.0.1, with signature checking on.

``s3_server(prefix)`` starts ``python -m moto.server`` on a free port, makes an IAM user with full access and
its access key (moto checks request signatures once ``INITIAL_NO_AUTH_ACTION_COUNT`` unauthenticated calls are
spent, so a wrong secret is denied as it would be on AWS), and yields an ``S3`` whose ``env`` is the standard
AWS environment a user would set (``AWS_ENDPOINT_URL``, keys, region). cutdist's code reaches it exactly as it
reaches AWS: pyarrow's ``FileSystem.from_uri`` reading that environment. Stopped by its pid.
The module-scoped ``s3`` fixture (tests/conftest.py) starts one per test module with that environment set.
"""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ray_head import free_ports, stop_process

REGION = "us-east-1"
SETUP_CALLS = 3   # create_user, put_user_policy, create_access_key: free; everything after is signed


@dataclass
class S3:
    endpoint: str
    key: str
    secret: str
    proc: subprocess.Popen
    env: dict[str, str] = field(default_factory=dict)

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name=REGION, aws_access_key_id=self.key,
                            aws_secret_access_key=self.secret)

    def bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return f"s3://{name}"

    def upload_dir(self, local: Path, uri: str) -> None:
        """A local directory's files under ``s3://bucket/prefix`` (what `aws s3 cp --recursive` does)."""
        bucket, _, prefix = uri.removeprefix("s3://").partition("/")
        client = self.client()
        for path in sorted(Path(local).rglob("*")):
            if path.is_file():
                client.upload_file(str(path), bucket, f"{prefix.rstrip('/')}/{path.relative_to(local).as_posix()}")

    def synth_shards(self, bucket: str, prefix: str, local: Path, *, count: int, test_count: int = 4,
                     size: int = 32) -> str:
        """A synthetic dataset (``cutdist.data.synth``) written to ``local`` and uploaded to a new bucket;
        returns ``s3://bucket/prefix``."""
        from cutdist.data.synth import write_synth_dataset

        write_synth_dataset(local, size=size, count=count, test_count=test_count, seed=0)
        uri = f"{self.bucket(bucket)}/{prefix.strip('/')}"
        self.upload_dir(local, uri)
        return uri

    def keys(self, uri: str) -> list[str]:
        bucket, _, prefix = uri.removeprefix("s3://").partition("/")
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return sorted(item["Key"][len(prefix):].lstrip("/") for page in pages for item in page.get("Contents", []))

    def read(self, uri: str) -> bytes:
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        return self.client().get_object(Bucket=bucket, Key=key)["Body"].read()


@contextlib.contextmanager
def s3_server() -> Iterator[S3]:
    (port,) = free_ports(1)
    log = Path(tempfile.mkdtemp(prefix="cdmoto")) / "moto.log"
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": str(SETUP_CALLS)}
    with log.open("w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"moto.server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2):
                    break
            except OSError:
                if time.time() > deadline:
                    pytest.fail(f"moto.server did not come up in 60 s:\n{log.read_text()[-3000:]}")
                time.sleep(0.3)
        import boto3

        iam = boto3.client("iam", endpoint_url=endpoint, region_name=REGION, aws_access_key_id="setup",
                           aws_secret_access_key="setup")
        iam.create_user(UserName="cutdist")
        iam.put_user_policy(UserName="cutdist", PolicyName="all", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
        key = iam.create_access_key(UserName="cutdist")["AccessKey"]
        server = S3(endpoint, key["AccessKeyId"], key["SecretAccessKey"], proc)
        server.env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": server.key,
                      "AWS_SECRET_ACCESS_KEY": server.secret, "AWS_DEFAULT_REGION": REGION,
                      "AWS_EC2_METADATA_DISABLED": "true"}
        yield server
    finally:
        stop_process(proc, grace_s=10)


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """``os.environ`` with ``values`` set (a module-scoped monkeypatch: Ray nodes started inside inherit it)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
