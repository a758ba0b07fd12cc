#!/usr/bin/env bash
# The test command: installs what is missing, type-checks, then runs every
# test (unit, BPF program tests, integration tests) with node's test runner.
set -euo pipefail
cd "$(dirname "$0")/.."
# --prometheus: test/metrics-lab.test.ts runs a lab with Debian's prometheus;
# --browser: chromium, for the web view's test (test/ui.test.ts).
bash scripts/setup.sh --prometheus --browser
# What a crashed earlier run left behind (its creator is gone) would trip this one.
./bin/clustermesh.js lab sweep
echo "test: type-checking"
npx tsc --noEmit -p .
# test/chaos/ is the fault suite's tier (about 12 minutes more): `npm run chaos`;
# `npm run test:slow` runs it. lab-up-repeat's ten rounds of a 4x2 lab run here.
# test/slow/ (lab tests of many minutes, e.g. three installed clusters) is in `npm run test:slow` too.
mapfile -t files < <(find src test -name '*.test.ts' -not -path 'test/chaos/*' -not -path 'test/slow/*' | sort)
echo "test: ${#files[@]} test files"
# Integration tests build namespaces and start etcd; one file at a time keeps
# a 2-core machine from timing them out.
exec node --import tsx --test --test-concurrency=1 --test-reporter=spec "${files[@]}"
