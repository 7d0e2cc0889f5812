"""The factory's HTML templates: one Jinja2 set-up for the view and the reports.

Autoescape is on (values from records are text, never markup) and an undefined name is
an error, not an empty string. Each package keeps its templates in a ``templates/``
folder beside its modules.
"""

from __future__ import annotations

from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined


def environment(module_file: str) -> Environment:
    """The environment of the ``templates/`` folder beside ``module_file`` (pass ``__file__``)."""
    return Environment(
        loader=FileSystemLoader(Path(module_file).with_name("templates")),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
