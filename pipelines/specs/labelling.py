"""A line's automated labelling, as declared in its spec (``labelling:``).

Rows that arrive without a label are kept (the label field is ``missing: keep``), the
serving model pre-labels them, labels confident enough to reach ``target_precision``
are accepted, the rest go to people for review (Label Studio)::

    labelling:
      target_precision: 0.98          # auto-accepted labels must reach it, per class
      confidence_level: 0.95          # on a one-sided lower bound of precision at this level
      min_support: 50                 # held-out rows a class's threshold needs
      machine_labels: downweight      # use | downweight | ignore (how training treats machine labels)
      machine_weight: 0.5             # the loss weight of a machine-labelled row when downweight
      review_batch: 500               # most rows in one exported review queue
      trigger: on_validated           # on_validated | manual
      label_errors:
        mode: report                  # off | report | exclude
        folds: 5
        max_rows: 200000
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LabelErrorsSpec(_Strict):
    """Confident learning over out-of-fold predicted probabilities at training time."""

    mode: Literal["off", "report", "exclude"] = "report"
    folds: Annotated[int, Field(ge=2, le=20)] = 5
    max_rows: Annotated[int, Field(ge=100)] = 200000


class LabellingSpec(_Strict):
    """``labelling:``: how the line's ``label_<line>`` DAG labels unlabelled rows."""

    target_precision: Annotated[float, Field(gt=0.5, lt=1)] = 0.98
    confidence_level: Annotated[float, Field(gt=0.5, lt=1)] = 0.95
    min_support: Annotated[int, Field(ge=1)] = 50
    machine_labels: Literal["use", "downweight", "ignore"] = "downweight"
    machine_weight: Annotated[float, Field(gt=0, le=1)] = 0.5
    review_batch: Annotated[int, Field(ge=1, le=100000)] = 500
    trigger: Literal["on_validated", "manual"] = "on_validated"
    label_errors: LabelErrorsSpec = Field(default_factory=LabelErrorsSpec)
