#!/usr/bin/env bash
# Many agents: 10,000 agents, each with its own connection, sending one sample a second
# (10,000 samples/s in all), against both systems.
#
# 10,000 agents in-process would need 20,000 sockets in one process (both ends), more than
# the usual open-file limit, so here the systems run as processes of their own and the bench
# reaches them by URL; each process then needs a little over 10,000 files. The script raises
# its limit to 12,000 when it can (`ulimit -n`); if it cannot, it says so.
#
# The reference relay runs only in-process, where 10,000 agents need those 20,000 sockets: it
# is left out here (--no-relay).
#
# System 1 needs Redis: REDIS_URL, or a redis-server this script starts on a free port.
# Extra flags go to `bench compare`.
set -euo pipefail
cd "$(dirname "$0")/../.."

ulimit -n 12000 2>/dev/null || true
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt 10300 ]; then
  echo "error: 10,000 agents need about 10,300 open files per process and the limit is $(ulimit -n);" >&2
  echo "raise it (ulimit -n 12000, as root or via /etc/security/limits.conf) and run again" >&2
  exit 1
fi

cargo build --release -q -p bench -p aggregator -p ingest
bin="${CARGO_TARGET_DIR:-target}/release"  # where cargo put them (CARGO_TARGET_DIR is honoured)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

if [ -z "${REDIS_URL:-}" ]; then
  command -v redis-server >/dev/null || { echo "error: install the Debian package redis-server, or set REDIS_URL" >&2; exit 1; }
  rport=$(free_port)
  redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly no >/dev/null &
  pids+=($!)
  export REDIS_URL="redis://127.0.0.1:$rport"
  for _ in $(seq 50); do redis-cli -p "$rport" ping >/dev/null 2>&1 && break; sleep 0.1; done
fi

p1=$(free_port); p2=$(free_port)
RUST_LOG=warn "$bin"/ingest --listen "127.0.0.1:$p1" --prefix "bench-many-$$" >/dev/null &
pids+=($!)
RUST_LOG=warn "$bin"/aggregator --listen "127.0.0.1:$p2" >/dev/null &
pids+=($!)
for p in "$p1" "$p2"; do
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$p/healthz" >/dev/null && break; sleep 0.1; done
done

"$bin"/bench compare \
  --system1 "http://127.0.0.1:$p1" --system2 "ws://127.0.0.1:$p2" \
  --agents 10000 --rate 10000 --batch 1 --duration 20 --warmup 5 --grace 5 --no-relay "$@"
