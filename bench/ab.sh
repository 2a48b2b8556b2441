#!/usr/bin/env bash
# Compare the hot path of an older revision with the working tree, interleaved on one throwaway
# Redis (runs alternate, so a machine that drifts drifts for both):
#     bash bench/ab.sh REV [N] [PAIRS]
# Each line is one bench/bench_strego.py run (N no-op tasks, concurrency 32, the anyio transport,
# asyncio then trio): tasks/s, bytes per task, and Redis's and the client's CPU per task, which
# tell what a change costs even on a busy machine.
set -euo pipefail
REV="$1"; N="${2:-30000}"; PAIRS="${3:-3}"
HERE="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PYTHON:-$HERE/.venv/bin/python}"
PORT=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
WORK=$(mktemp -d)
redis-server --port "$PORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$WORK" \
    --daemonize yes --logfile "$WORK/redis.log" >/dev/null
git -C "$HERE" worktree add -q "$WORK/old" "$REV"
cleanup() {
    redis-cli -p "$PORT" shutdown nosave >/dev/null 2>&1 || true
    git -C "$HERE" worktree remove --force "$WORK/old" || true
}
trap cleanup EXIT
sleep 0.5
for _ in $(seq "$PAIRS"); do
    for side in old new; do
        dir="$WORK/old"; [ "$side" = new ] && dir="$HERE"
        for loop in asyncio trio; do
            redis-cli -p "$PORT" flushall >/dev/null
            flag=""; [ "$loop" = trio ] && flag="--trio"
            (cd "$dir" && "$PY" bench/bench_strego.py "$N" 32 "redis://127.0.0.1:$PORT/0" \
                --transport anyio $flag 2>/dev/null | tail -1) |
            "$PY" -c '
import json, sys
d = json.loads(sys.stdin.read())
n, side, loop = d["n"], sys.argv[1], sys.argv[2]
enq, proc, size = n / d["enqueue_s"], n / d["process_s"], d["bytes_per_task"]
r_enq, r_proc = d["enqueue_redis_cpu_s"] / n * 1e6, d["process_redis_cpu_s"] / n * 1e6
client = d["process_cpu_s"] / n * 1e6
print(f"{side:3} {loop:7} enqueue {enq:7.0f}/s  process {proc:7.0f}/s  {size:5.1f} B/task"
      f"  Redis CPU {r_enq:5.1f} + {r_proc:5.1f} us/task  client CPU {client:5.1f} us/task")
' "$side" "$loop"
        done
    done
done
