#!/usr/bin/env bash
# Entrypoint of the factory's Airflow images (orchestration, CPU worker, GPU worker).
#
# Writes the simple auth manager's password file from the environment
# (FACTORY_ADMIN_USER/PASSWORD, FACTORY_VIEWER_USER/PASSWORD, the names
# pipelines/runtime/supervisor.py uses on one machine), then runs the command. Only the
# api-server reads the file; writing it everywhere keeps the images alike.
set -euo pipefail

passwords=${AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE:-}
if [ -n "$passwords" ]; then
  mkdir -p "$(dirname "$passwords")"
  umask 077
  python - "$passwords" <<'EOF'
import json, os, sys
users = {
    os.environ.get("FACTORY_ADMIN_USER", "admin"): os.environ.get("FACTORY_ADMIN_PASSWORD", "admin"),
    os.environ.get("FACTORY_VIEWER_USER", "viewer"): os.environ.get("FACTORY_VIEWER_PASSWORD", "viewer"),
}
with open(sys.argv[1], "w") as fh:
    json.dump(users, fh)
EOF
  umask 022
fi

exec "$@"
