#!/usr/bin/env bash
# The main job: set everything up (idempotent), then run every product line end
# to end on the embedded default and print a summary. Extra arguments go to
# `factory run` (e.g. a line name).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$ROOT/scripts/setup.sh" all
exec "$ROOT/.venv/airflow/bin/factory" run "$@"
