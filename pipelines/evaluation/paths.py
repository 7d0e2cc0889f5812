"""Where the evaluation gate keeps things, from configuration (the single place to change).

| variable                 | embedded default                                  |
|--------------------------|---------------------------------------------------|
| ``FACTORY_SERVING_STORE`` | ``<home>/serving`` (TF Serving layout ``<store>/<line>/<version>/``) |
| ``FACTORY_MLMD_URI``     | SQLite ``<home>/tfx/<line>/metadata.db``; at scale ``mysql://user:pw@host:3306/db`` or ``postgresql://user:pw@host:5432/db`` (one store for all lines: each line is its own TFX pipeline) |
| ``FACTORY_TFX_ROOT``     | ``<home>/tfx`` (pipeline roots ``<root>/<line>/root``: evaluations, blessings) |

Light: importable in both environments; :func:`mlmd_connection_config` imports
ML Metadata's protos inside, so only the ML environment calls it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from pipelines.config import factory_home

EVALUATION_DIR = "evaluation"  # <run>/evaluation/: examples, result.json, report.html
RESULT = "result.json"
REPORT = "report.html"


def tfx_root(line: str, home: Path | None = None) -> Path:
    base = os.environ.get("FACTORY_TFX_ROOT")
    return (Path(base) if base else (home or factory_home()) / "tfx") / line


def pipeline_root(line: str, home: Path | None = None) -> Path:
    return tfx_root(line, home) / "root"


def sqlite_metadata_path(line: str, home: Path | None = None) -> Path:
    return tfx_root(line, home) / "metadata.db"


def pipeline_name(line: str) -> str:
    return f"factory_eval_{line}"


def serving_store(home: Path | None = None) -> Path:
    """The root TF Serving reads (``--model_base_path=<store>/<line>``)."""
    store = os.environ.get("FACTORY_SERVING_STORE")
    return Path(store) if store else (home or factory_home()) / "serving"


def serving_base(line: str, home: Path | None = None) -> Path:
    return serving_store(home) / line


def registered_model_name(line: str) -> str:
    return f"factory.{line}"


def mlmd_uri(line: str, home: Path | None = None) -> str:
    """The ML Metadata store as a URI: ``FACTORY_MLMD_URI`` or the line's SQLite file."""
    return os.environ.get("FACTORY_MLMD_URI") or f"sqlite:///{sqlite_metadata_path(line, home)}"


def mlmd_connection_config(line: str, home: Path | None = None) -> Any:
    """The ``ml_metadata`` ConnectionConfig for a line (ML environment only)."""
    from ml_metadata.proto import metadata_store_pb2

    uri = mlmd_uri(line, home)
    parsed = urlparse(uri)
    config = metadata_store_pb2.ConnectionConfig()
    if parsed.scheme == "sqlite":
        path = Path(uri.removeprefix("sqlite:///"))
        path.parent.mkdir(parents=True, exist_ok=True)
        config.sqlite.filename_uri = str(path)
        config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READWRITE_OPENCREATE
    elif parsed.scheme == "mysql":
        config.mysql.host = parsed.hostname or "localhost"
        config.mysql.port = parsed.port or 3306
        config.mysql.database = parsed.path.lstrip("/")
        config.mysql.user = unquote(parsed.username or "")
        config.mysql.password = unquote(parsed.password or "")
    elif parsed.scheme in ("postgres", "postgresql"):
        config.postgresql.host = parsed.hostname or "localhost"
        config.postgresql.port = str(parsed.port or 5432)
        config.postgresql.dbname = parsed.path.lstrip("/")
        config.postgresql.user = unquote(parsed.username or "")
        config.postgresql.password = unquote(parsed.password or "")
    else:
        raise ValueError(f"FACTORY_MLMD_URI: unsupported scheme {parsed.scheme!r} (sqlite, mysql, postgresql)")
    return config
