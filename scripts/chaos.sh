#!/usr/bin/env bash
# The fault suite (issue 17): `npm run chaos`. Runs every family
# (test/chaos/*.test.ts: agents, apiserver, etcd, kube, network) on its own
# 3 x 2 mesh with steady traffic, collects each scenario's result, and writes
# bench/results/reliability.json and RELIABILITY.md from them. Each scenario
# fails on a broken long-lived connection or a wrong map entry. Not part of the
# default test run (./scripts/test.sh): the tier takes about 25 minutes;
# CHAOS_LONG=1 adds the 2-minute partition (about 4 minutes more).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
results="$(mktemp /tmp/cm-chaos-XXXXXX.jsonl)"
trap 'rm -f "$results"' EXIT
status=0
CHAOS_RESULTS="$results" node --import tsx --test --test-concurrency=1 --test-reporter=spec test/chaos/*.test.ts || status=$?
node --import tsx scripts/reliability.ts "$results"
exit "$status"
