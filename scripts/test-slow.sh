#!/usr/bin/env bash
# The slow tier, not in the default run (./scripts/test.sh, which CI runs and
# which takes about 30 minutes on 2 cores; it also runs `lab up --clusters 4
# --nodes 2` ten times in a row): the fault suite (`npm run chaos`, about
# 25 minutes, which also rewrites bench/results/reliability.json and
# RELIABILITY.md), and test/slow/*.test.ts (lab tests of a minute or more each: three clusters
# installed and connected by kube context while traffic flows, observe and ui by kube context,
# install/uninstall on bare clusters, a lab driven by kubectl, the MCS API's cases).
# Run it before a release and after touching lab up/down or recovery paths.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
./bin/clustermesh.js lab sweep
status=0
node --import tsx --test --test-concurrency=1 --test-reporter=spec test/slow/*.test.ts || status=$?
bash scripts/chaos.sh || status=$?
exit "$status"
