#!/usr/bin/env bash
# Runs benchmarks: `npm run bench -- <name> [options]` (names: the folders of bench/ with a run.ts), or all of them.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
names=()
if [ $# -gt 0 ] && [ -f "bench/$1/run.ts" ]; then names=("$1"); shift; else
  for d in bench/*/run.ts; do names+=("$(basename "$(dirname "$d")")"); done
fi
for n in "${names[@]}"; do
  echo "== bench/$n"
  node --import tsx "bench/$n/run.ts" "$@"
done
