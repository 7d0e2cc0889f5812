#!/usr/bin/env python3
"""Write the deployment's ``.env``: every setting of ``.env.example`` as it is there, and
a strong random value for each secret, which ``.env.example`` leaves empty and
``docker-compose.yaml`` requires (``${NAME:?...}``: Compose refuses to start without it).

    python3 deploy/make_env.py                 # writes ./.env next to docker-compose.yaml
    python3 deploy/make_env.py --output x.env  # elsewhere
    python3 deploy/make_env.py --force         # replace an existing file (new secrets!)

The file is created with mode 600 and an existing one is never replaced without
``--force``: the PostgreSQL passwords are fixed when its volume is first made, and a new
Fernet key makes the connections stored with the old one unreadable.

Passwords are URL-safe (``secrets.token_urlsafe``: letters, digits, ``-`` and ``_``), so
they go into the database and broker URLs as they are. The Fernet key is made by the
``cryptography`` package when it is installed (it is in the orchestration environment),
else by the same recipe (32 random bytes, URL-safe base64).
"""

from __future__ import annotations

import argparse
import base64
import os
import secrets
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# name -> bytes of randomness (``None``: a Fernet key)
SECRETS: dict[str, int | None] = {
    "POSTGRES_PASSWORD": 32,
    "MLFLOW_DB_PASSWORD": 32,
    "OPTUNA_DB_PASSWORD": 32,
    "REDIS_PASSWORD": 32,
    "FACTORY_ADMIN_PASSWORD": 24,
    "FACTORY_VIEWER_PASSWORD": 24,
    "AIRFLOW_JWT_SECRET": 64,
    "AIRFLOW_API_SECRET_KEY": 48,
    "AIRFLOW_FERNET_KEY": None,
    "GRAFANA_ADMIN_PASSWORD": 24,
}


def fernet_key() -> str:
    try:
        from cryptography.fernet import Fernet
    except ImportError:
        return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()
    return Fernet.generate_key().decode()


def new_value(name: str) -> str:
    size = SECRETS[name]
    return fernet_key() if size is None else secrets.token_urlsafe(size)


def render(template: str) -> str:
    """``template`` (the text of ``.env.example``) with every secret filled in."""
    out, seen = [], set()
    for line in template.splitlines():
        key = line.split("=", 1)[0].strip() if "=" in line and not line.lstrip().startswith("#") else None
        if key in SECRETS:
            line = f"{key}={new_value(key)}"
            seen.add(key)
        out.append(line)
    missing = sorted(set(SECRETS) - seen)
    if missing:
        raise SystemExit(f"make_env: the template has no line for {', '.join(missing)}")
    return "\n".join(out) + "\n"


def write_private(path: Path, text: str, *, replace: bool) -> None:
    """Write ``text`` to ``path`` with mode 600; refuse an existing file unless ``replace``."""
    if not replace:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # FileExistsError if there
        with os.fdopen(fd, "w") as fh:
            os.fchmod(fh.fileno(), 0o600)
            fh.write(text)
        return
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            os.fchmod(fh.fileno(), 0o600)
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write .env with strong random secrets for docker-compose.yaml.")
    parser.add_argument("--output", type=Path, default=ROOT / ".env", help="where to write (default: ./.env)")
    parser.add_argument("--example", type=Path, default=ROOT / ".env.example", help="the template")
    parser.add_argument("--force", action="store_true", help="replace an existing file (its secrets are lost)")
    args = parser.parse_args(argv)
    text = render(args.example.read_text())
    try:
        write_private(args.output, text, replace=args.force)
    except FileExistsError:
        sys.stderr.write(f"make_env: {args.output} exists; not replacing it "
                         "(--force replaces it, and its secrets are lost)\n")
        return 1
    sys.stdout.write(f"make_env: wrote {args.output} (mode 600) with new values for {', '.join(SECRETS)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
