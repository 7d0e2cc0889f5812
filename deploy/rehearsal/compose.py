"""docker-compose.yaml as Compose reads it: the .env file, variable interpolation
(``${VAR:-default}``, ``${VAR:?error}``, ...) and the loaded services."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPOSE = REPO_ROOT / "docker-compose.yaml"

VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<named>[A-Za-z_][A-Za-z0-9_]*))"
)


def interpolate(value, env: dict[str, str]):
    """Compose's variable interpolation (${VAR}, ${VAR:-default}, ${VAR-default},
    ${VAR:?err}, ${VAR?err}, ${VAR:+alt}, ${VAR+alt}, $VAR, $$) on every string value."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def repl(m: re.Match) -> str:
        if m.group("escaped"):
            return "$"
        name = m.group("braced") or m.group("named")
        op, arg = m.group("op"), m.group("arg") or ""
        is_set = name in env
        val = env.get(name, "")
        if op == ":-":
            return val if val else arg
        if op == "-":
            return val if is_set else arg
        if op in (":?", "?"):
            if (op == ":?" and not val) or (op == "?" and not is_set):
                raise ValueError(f"required variable {name} is missing: {arg}")
            return val
        if op == ":+":
            return arg if val else ""
        if op == "+":
            return arg if is_set else ""
        return val

    return VARIABLE.sub(repl, value)


def variables(value) -> set[str]:
    """The variables Compose would interpolate in a loaded (not yet interpolated) file."""
    if isinstance(value, dict):
        return set().union(*(variables(v) for v in value.values())) if value else set()
    if isinstance(value, list):
        return set().union(*(variables(v) for v in value)) if value else set()
    if not isinstance(value, str):
        return set()
    return {m.group("braced") or m.group("named") for m in VARIABLE.finditer(value) if not m.group("escaped")}


def read_env_file(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            env[key.strip()] = value.strip()
    return env


def load_compose(env: dict[str, str] | None = None) -> dict:
    return interpolate(yaml.safe_load(COMPOSE.read_text()), env or {})
