"""Automated labelling: rows that arrive without a label get one from the serving model
(auto-accepted above a per-class confidence threshold) or from a reviewer (Label Studio),
and re-enter the line as label batches; training finds likely mislabelled rows.

Every clean batch of a line with ``labelling:`` carries three provenance columns after
the spec's fields, in this order:

``label_source``
    ``given`` (came with the data), ``machine`` or ``human``; null when the row has no label.
``label_model``
    the model version of a machine label, the reviewer of a human one; else null.
``label_confidence``
    the model's confidence in a machine label; else null.

The thresholds, the labelling stage, the Label Studio exchange and the label-error
detector are modules of this package.
"""

from __future__ import annotations

LABEL_SOURCE = "label_source"
LABEL_MODEL = "label_model"
LABEL_CONFIDENCE = "label_confidence"
PROVENANCE_COLUMNS = (LABEL_SOURCE, LABEL_MODEL, LABEL_CONFIDENCE)
# the values of label_source
GIVEN, MACHINE, HUMAN = "given", "machine", "human"
SOURCES = (GIVEN, MACHINE, HUMAN)
