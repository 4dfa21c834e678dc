"""Shared fixtures. Tests never touch the network; servers they need bind 127.0.0.1."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DVC = str(Path(sys.executable).with_name("dvc"))  # the environment's dvc, whatever PATH says
# Stages run as `python stages/...` under dvc: that must be this environment's python.
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in the suite may download
os.environ.setdefault("DVC_NO_ANALYTICS", "1")


def copy_project(dst: Path) -> Path:
    """Copy the project's tracked sources (no outputs, no .venv) into `dst`."""
    for name in ("dvc.yaml", "params.yaml", "stages", "src", "configs", "data/sources", ".dvcignore"):
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dst / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.exists():
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / name)
    return dst


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A throwaway copy of the project to run stages or dvc in."""
    return copy_project(tmp_path / "proj")


def run_stage(project: Path, script: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run `python stages/<script>` inside `project` the way `dvc repro` does."""
    return subprocess.run(
        [sys.executable, f"stages/{script}", *args], cwd=project, capture_output=True, text=True, timeout=600
    )


@contextlib.contextmanager
def loopback(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """Serve `handler` on 127.0.0.1 (a free port) in a thread; yield its base URL."""
    httpd = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def send(handler: BaseHTTPRequestHandler, status: int, headers: dict[str, str], body: bytes) -> None:
    """Write one complete HTTP reply from a handler."""
    handler.send_response(status)
    for k, v in headers.items():
        handler.send_header(k, v)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> tuple[Path, list]:
    """(folder of a tiny saved model, the six hand-made qa tasks its tokenizer was trained on)."""
    from tests.tiny import build_tiny, make_task

    tasks = [make_task(i) for i in range(6)]
    return build_tiny(tmp_path_factory.mktemp("tiny"), tasks), tasks


@pytest.fixture(scope="session")
def micro_dag(tmp_path_factory) -> tuple[Path, str]:
    """(a temp repo where the whole DAG ran on micro params, the `dvc repro` output): see
    tests/micro_dag.py. Tests copy it (`micro_dag.copy`) before changing anything."""
    from tests.micro_dag import build

    return build(tmp_path_factory.mktemp("micro_dag") / "proj")
