#!/usr/bin/env bash
# Steady load: 20,000 samples/s in messages of 10 from 100 agents, 30 s measured, against
# both systems in-process. Extra flags go to `bench compare` (e.g. --rate 50000).
set -euo pipefail
cd "$(dirname "$0")/../.."
exec cargo run --release -q -p bench -- compare \
  --rate 20000 --batch 10 --agents 100 --duration 30 --warmup 3 "$@"
