#!/usr/bin/env bash
# The main job: installs what is missing, then brings up a two-cluster lab,
# tells the story of the README (global service, DNS, cross-cluster policy,
# failover, status) through the CLI and tears it down (--keep keeps it).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec ./bin/clustermesh.js demo "$@"
