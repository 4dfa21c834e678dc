"""Shared storage on S3 and the portable run-cache, against a local S3 server (moto's server mode,
on 127.0.0.1, started and stopped here; dummy credentials from environment variables only).

One micro-DAG run (tests/micro_dag.py) serves both checks:
- `make release` (scripts/release.py) pushes the outs to the S3 remote; a fresh clone's `dvc pull`
  gets them and `dvc status` is clean;
- scripts/push_run_cache.py pushes the run-cache with the objects of its `cache: false` outs; a
  fresh clone of the commit before the rest of the DAG ran (pretrain is in git, as the project
  ships it) runs `dvc repro --pull`, which pulls the run-cache and restores every other stage,
  training stages included, without running one; its dvc.lock then equals the one of the
  machine that ran.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.conftest import DVC, ROOT
from tests.micro_dag import copy, git

pytestmark = pytest.mark.slow

BUCKET = "bioreasoner-test"
# Dummy credentials: boto reads them from the environment, DVC's config never holds them.
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "dummy-key-id-7f3a",
    "AWS_SECRET_ACCESS_KEY": "dummy-secret-7f3a",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",  # never probe the instance-metadata endpoint
}
TRAINING = {"sft", "dpo@v2_0", "dpo@v2_1", "grpo", "cls_sleep"}


@pytest.fixture(scope="module")
def s3(tmp_path_factory) -> Iterator[str]:
    """moto's S3 server on 127.0.0.1 (a free port) with an empty bucket; yields the endpoint URL."""
    import boto3  # dvc-s3's dependency
    from moto import server as server_mod  # the dev extra: moto[server]

    empty = tmp_path_factory.mktemp("aws") / "config"
    empty.write_text("")  # no profile or key file of the machine running the tests is read
    with pytest.MonkeyPatch.context() as mp:
        for key, value in {**AWS_ENV, "AWS_CONFIG_FILE": str(empty), "AWS_SHARED_CREDENTIALS_FILE": str(empty)}.items():
            mp.setenv(key, value)
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per S3 request otherwise
        server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        url = f"http://{host}:{port}"
        try:
            boto3.client("s3", endpoint_url=url).create_bucket(Bucket=BUCKET)
            yield url
        finally:
            server.stop()


def bucket_objects(url: str, prefix: str = "") -> dict[str, int]:
    import boto3

    pages = boto3.client("s3", endpoint_url=url).get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return {o["Key"]: o["Size"] for page in pages for o in page.get("Contents", [])}


def sh(cwd: Path, *cmd: str, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"{' '.join(cmd)}:\n{res.stdout[-4000:]}\n{res.stderr[-4000:]}"
    return res


def lock_outs(repo: Path) -> dict[str, dict[str, str]]:
    """Stage -> out path -> md5, from dvc.lock."""
    stages = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    return {name: {o["path"]: o["md5"] for o in st.get("outs", [])} for name, st in stages.items()}


@pytest.fixture(scope="module")
def origin(micro_dag, s3, tmp_path_factory) -> Path:
    """The machine that ran the DAG: an S3 remote in .dvc/config (URL only), then
    `make release VERSION=v3.0`'s script and scripts/push_run_cache.py."""
    built, _ = micro_dag
    start = time.monotonic()
    repo = copy(built, tmp_path_factory.mktemp("origin") / "proj")
    sh(repo, DVC, "remote", "add", "-d", "storage", f"s3://{BUCKET}/dvc")
    sh(repo, DVC, "remote", "modify", "storage", "endpointurl", s3)
    git(repo, "commit", "-qam", "DVC remote on S3")
    released = sh(repo, sys.executable, str(ROOT / "scripts" / "release.py"), "v3.0")
    assert "pushing to the DVC remote" in released.stderr
    assert "7f3a" not in released.stderr + released.stdout  # no credential is ever printed
    pushed = sh(repo, sys.executable, str(ROOT / "scripts" / "push_run_cache.py"))
    assert "run entries" in pushed.stderr and "7f3a" not in pushed.stderr + pushed.stdout
    print(f"\norigin: copy, release push and run-cache push in {time.monotonic() - start:.1f} s")  # -s shows it
    return repo


def test_release_push_then_clone_pull_status_clean(origin, s3, tmp_path):
    pushed = bucket_objects(s3, "dvc/files/md5/")
    assert pushed, "the release pushed nothing"
    print(f"\npushed: {len(pushed)} objects, {sum(pushed.values())} bytes")  # -s shows it
    config = (origin / ".dvc" / "config").read_text()
    assert "7f3a" not in config and "access_key" not in config  # URL and endpoint only

    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(origin), str(clone))
    assert not (clone / "models" / "merged" / "v3_0").exists()
    sh(clone, DVC, "pull")
    assert "Data and pipelines are up to date" in sh(clone, DVC, "status").stdout
    for out in ("models/merged/v3_0/model.safetensors", "data/eval/v3_0.jsonl", "models/adapters/grpo"):
        assert (clone / out).exists(), out


def test_fresh_clone_restores_every_stage_from_the_run_cache(origin, s3, tmp_path):
    assert bucket_objects(s3, "dvc/runs/"), "no run entry was pushed"
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(origin), str(clone))
    git(clone, "checkout", "-q", git(clone, "log", "-1", "--format=%H", "--grep=^pretrain$"))  # before the rest ran
    git(clone, "checkout", "main", "--", ".dvc/config")  # ... with the remote
    ran_elsewhere = set(lock_outs(origin)) - set(lock_outs(clone))
    assert ran_elsewhere >= TRAINING

    start = time.monotonic()
    out = sh(clone, DVC, "repro", "--pull").stdout  # pulls the run-cache, then each stage's outs
    print(f"\nrestored {len(ran_elsewhere)} stages from the run-cache in {time.monotonic() - start:.1f} s")
    assert "Running stage" not in out, out[-3000:]
    for stage in ran_elsewhere:
        assert f"Stage '{stage}' is cached - skipping run" in out, stage
    assert not (clone / "checkpoints").exists()  # no training stage started
    assert lock_outs(clone) == lock_outs(origin)  # the very outputs the other machine made
    assert (clone / "dvclive" / "sft" / "plots").is_dir() and (clone / "metrics" / "lineage.json").is_file()
    assert "Data and pipelines are up to date" in sh(clone, DVC, "status").stdout


def test_push_run_cache_without_a_remote_is_one_clear_line(tmp_path):
    git(tmp_path, "init", "-q")
    sh(tmp_path, DVC, "init", "-q")
    res = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "push_run_cache.py")], cwd=tmp_path, capture_output=True, text=True
    )
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 1 and len(lines) == 1, res.stderr
    assert lines[0].startswith("push_run_cache: error:") and "remote" in lines[0].lower()
