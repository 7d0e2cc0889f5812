"""The ML Metadata connection of a line's evaluation gate (ML environment only: it imports
ML Metadata's protos). Where the store is comes from :func:`pipelines.catalog.layout.mlmd_uri`.

ML Metadata holds the lineage of the gate only (Examples, the candidate Model, the
baseline it was judged against, the ModelEvaluation and ModelBlessing, the PushedModel):
that is what TFX's Resolver and Pusher need to act on. The other stages keep their
records in the factory's catalog (:mod:`pipelines.catalog`), which both environments
read without ML Metadata's native library; see there for why.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from pipelines.catalog.layout import mlmd_uri


def connection_config(line: str, home: Path | None = None) -> Any:
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
