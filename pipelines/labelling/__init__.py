"""Automated labelling: machine labels, human review, and label errors found at training.

Every clean batch of a line with ``labelling:`` carries three provenance columns after
the spec's fields, in this order.
"""

LABEL_SOURCE = "label_source"  # "given", "machine", "human"; null when the row has no label
LABEL_MODEL = "label_model"  # the model version (machine) or the reviewer (human)
LABEL_CONFIDENCE = "label_confidence"  # the model's confidence (machine)
PROVENANCE_COLUMNS = (LABEL_SOURCE, LABEL_MODEL, LABEL_CONFIDENCE)
