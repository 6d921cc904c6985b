#!/usr/bin/env bash
# Bursts: 5,000 samples/s, with a 1 s burst at 50,000 samples/s every 5 s, for 30 s, against
# both systems in-process. The throughput chart of the report shows the bursts; the latency
# curves show how each system absorbs them. Extra flags go to `bench compare`.
set -euo pipefail
cd "$(dirname "$0")/../.."
exec cargo run --release -q -p bench -- compare \
  --rate 5000 --burst-rate 50000 --burst-period 5 --burst-length 1 \
  --batch 10 --agents 100 --duration 30 --warmup 2 "$@"
