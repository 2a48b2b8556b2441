"""bench/slowlog.py at a tiny size, so that the script cannot rot (its figures are not checked
here: they depend on the machine)."""

from __future__ import annotations

import json
import logging
import shutil

import pytest

from bench import slowlog
from tests.redis_server import unavailable

pytestmark = pytest.mark.redis


def test_slowlog_bench_runs_every_phase(capsys: pytest.CaptureFixture[str]) -> None:
    if shutil.which("redis-server") is None:
        unavailable("redis-server is not on PATH")
    args = ["--pending", "300", "--dead", "20", "--serve", "50", "--scheduled", "150"]
    args += ["--slower-than-us", "0"]
    level = logging.getLogger("strego.server").level
    result = slowlog.main([*args, "--json"])
    assert json.loads(capsys.readouterr().out) == result
    phases = result["phases"]
    assert list(phases) == ["list", "serve", "promote", "requeue", "purge"]
    listed = phases["list"]["detail"]
    assert (listed["pending"], listed["dead"], listed["active"]) == (300, 20, 0)
    assert phases["requeue"]["detail"] == "20 requeued"
    assert phases["promote"]["detail"] == "150 scheduled tasks promoted in 2 calls"
    # 300 + 150 promoted + 20 requeued - the served ones (50 and those in flight at the stop)
    purged = int(phases["purge"]["detail"].removesuffix(" purged"))
    assert 0 < purged <= 420
    scripts = {row["call"] for row in phases["list"]["calls"]}
    assert {"list_pending", "list_sorted", "list_active"} <= scripts
    assert {"fetch", "ack"} <= {row["call"] for row in phases["serve"]["calls"]}
    assert result["slowest"]["ms"] > 0
    assert logging.getLogger("strego.server").level == level  # left as it was
