"""Running `strego worker tests.obs_worker:server` as a subprocess for the observability tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def worker(
    loop: str,
    *,
    redis_url: str | None = None,
    spans: Path | None = None,
    port: int | None = None,
    extra: Sequence[str] = (),
) -> Iterator[subprocess.Popen[str]]:
    """The worker subprocess (`extra`: more options), stopped with SIGTERM (its graceful
    shutdown) on leaving."""
    env = dict(os.environ)
    env.pop("OBS_REDIS", None)
    env.pop("OBS_SPANS", None)
    if redis_url is not None:
        env["OBS_REDIS"] = redis_url
    if spans is not None:
        env["OBS_SPANS"] = str(spans)
    args = [sys.executable, "-m", "strego.cli", "worker", "tests.obs_worker:server"]
    args += ["--log-level", "WARNING"]
    if port is not None:
        args += ["--metrics-port", str(port), "--metrics-host", "127.0.0.1"]
    if loop == "trio":
        args.append("--trio")
    args += extra
    proc = subprocess.Popen(
        args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
