"""Automated labelling: unlabelled rows, machine and human labels, label errors.

A clean batch of a line with ``labelling:`` carries three provenance columns after the
spec's fields, in this order:

- ``label_source``: ``given`` (came with the data), ``machine`` or ``human``; null when
  the row has no label;
- ``label_model``: the model version (machine) or the reviewer (human), else null;
- ``label_confidence``: the model's confidence (machine), else null.
"""

from __future__ import annotations

LABEL_SOURCE = "label_source"
LABEL_MODEL = "label_model"
LABEL_CONFIDENCE = "label_confidence"
PROVENANCE_COLUMNS = (LABEL_SOURCE, LABEL_MODEL, LABEL_CONFIDENCE)
SOURCES = ("given", "machine", "human")
