#!/usr/bin/env bash
# The main job: installs what is missing, then brings up a two-cluster mesh,
# sends traffic across it, prints what happened and tears it down.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec ./bin/clustermesh.js demo "$@"
