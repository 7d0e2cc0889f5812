"""Files the view serves, each confined to its folder:

- Great Expectations Data Docs: only files under the Data Docs root
  (:func:`pipelines.catalog.layout.data_docs_root`). A request
  path is refused (None) when it is absolute, has a ``..``, a hidden part, a backslash or a
  NUL, or when the file it resolves to (symbolic links followed) is not a regular file under
  the root. A directory serves its ``index.html``.
- The evaluation gate's report of a training run
  (:func:`~pipelines.catalog.layout.evaluation_report_path`) and the drift monitor's HTML
  report of a batch (:func:`~pipelines.catalog.layout.drift_report_paths`), by name: names
  are checked against a strict pattern, must be the names the layout gives, and the
  resolved file must stay in its folder.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

from pipelines.catalog import layout

SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.=-]{0,239}")  # fullmatch: a whole name (run folders: up to 214)

# Data Docs pages reference CDNs (Bootstrap, jQuery, Font Awesome); the policy keeps the
# browser from fetching anything outside this server, so pages render unstyled offline.
DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; connect-src 'self'; frame-ancestors 'self'; base-uri 'self'"
)


def resolve(rel: str, home: Path | None = None) -> Path | None:
    """The file a Data Docs request path names, or None when it is not one to serve."""
    rel = rel or "index.html"
    if "\x00" in rel or "\\" in rel:
        return None
    pure = PurePosixPath(rel)
    if pure.is_absolute() or any(part in ("..", ".") or part.startswith(".") for part in pure.parts):
        return None
    root = layout.data_docs_root(home)
    try:
        root_resolved = root.resolve(strict=True)
        target = (root / pure).resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    if not target.is_relative_to(root_resolved):
        return None
    if target.is_dir():
        target = target / "index.html"
        if not target.is_file():
            return None
    return target if target.is_file() else None


def suite_lines(include: Path | None = None) -> dict[str, str]:
    """Expectation suite name -> product line (from each spec's suite file)."""
    out: dict[str, str] = {}
    try:
        from pipelines.config import include_dir
        from pipelines.ingest.validation import load_suite_dict
        from pipelines.specs import load_specs

        base = include or include_dir()
        for spec in load_specs():
            try:
                out[load_suite_dict(base / spec.expectations)["name"]] = spec.name
            except (OSError, ValueError):
                continue
    except Exception:  # noqa: BLE001 - unknown suites are then treated as shared pages
        pass
    return out


def line_of(rel: str, suites: dict[str, str]) -> str | None:
    """The line a Data Docs page belongs to (``validations/<suite>/...`` or
    ``expectations/<suite>.html``), or None for shared pages (index, static files)."""
    parts = PurePosixPath(rel).parts
    # <site>/validations/<suite>/..., <site>/expectations/<suite>.html
    for i, part in enumerate(parts[:-1]):
        if part in ("validations", "expectations"):
            nxt = parts[i + 1]
            suite = nxt[: -len(".html")] if nxt.endswith(".html") else nxt
            return suites.get(suite)
    return None


def _inside(target: Path, base: Path) -> Path | None:
    try:
        resolved = target.resolve(strict=True)
        if resolved.is_relative_to(base.resolve(strict=True)) and resolved.is_file():
            return resolved
    except (OSError, RuntimeError):
        pass
    return None


def report_file(line: str, kind: str, name: str, home: Path) -> Path | None:
    """An evaluation report (``kind="evaluation"``, ``name``: the run folder) or a drift
    report (``kind="drift"``, ``name``: ``<batch>.html``), or None."""
    if not SAFE_NAME.fullmatch(line or "") or not SAFE_NAME.fullmatch(name or ""):
        return None
    if kind == "evaluation" and layout.is_run_folder_name(name):
        return _inside(layout.evaluation_report_path(layout.run_dir_named(line, name, home)), layout.training_root(line, home))
    if kind == "drift" and name.endswith(".html"):
        _, html = layout.drift_report_paths(line, name.removesuffix(".html"), home)
        return _inside(html, layout.drift_reports_dir(line, home)) if html.name == name else None
    return None
