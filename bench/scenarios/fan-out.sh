#!/usr/bin/env bash
# Fan-out: 1,000 dashboards each watching every sample of 200 samples/s (200,000 events/s
# delivered in all), against both systems in-process. Extra flags go to `bench compare`
# (e.g. --rate 1000 for a million events/s).
set -euo pipefail
cd "$(dirname "$0")/../.."
exec cargo run --release -q -p bench -- compare \
  --rate 200 --batch 1 --agents 20 --dashboards 1000 --duration 20 --warmup 2 --grace 10 "$@"
