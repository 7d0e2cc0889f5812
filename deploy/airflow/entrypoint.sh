#!/usr/bin/env bash
# Entrypoint of the factory's Airflow images (orchestration, CPU worker, GPU worker).
#
# Writes the simple auth manager's password file (mode 600) from the environment
# (FACTORY_ADMIN_USER/PASSWORD, FACTORY_VIEWER_USER/PASSWORD, the names
# pipelines/runtime/supervisor.py uses on one machine), then runs the command. Only the
# api-server reads the file; writing it everywhere keeps the images alike. There is
# no default password: without one the container stops here.
set -euo pipefail

passwords=${AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE:-}
if [ -n "$passwords" ]; then
  mkdir -p "$(dirname "$passwords")"
  umask 077
  python - "$passwords" <<'EOF'
import json, os, sys
missing = [n for n in ("FACTORY_ADMIN_PASSWORD", "FACTORY_VIEWER_PASSWORD") if not os.environ.get(n)]
if missing:
    sys.exit(f"entrypoint: {' and '.join(missing)} not set (no default password); "
             "write .env with python3 deploy/make_env.py")
users = {
    os.environ.get("FACTORY_ADMIN_USER", "admin"): os.environ["FACTORY_ADMIN_PASSWORD"],
    os.environ.get("FACTORY_VIEWER_USER", "viewer"): os.environ["FACTORY_VIEWER_PASSWORD"],
}
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
with os.fdopen(fd, "w") as fh:
    os.fchmod(fh.fileno(), 0o600)
    json.dump(users, fh)
EOF
  umask 022
fi

exec "$@"
