"""A line's automated labelling, as declared in its spec (``labelling:``).

A line with this section keeps rows that arrive without a label (its label field is
``missing: keep``): they are cleaned and validated like the rest and wait, unlabelled,
until the label DAG or a reviewer gives them a label; training never reads them before.
::

    labelling:
      target_precision: 0.98      # auto-accepted machine labels reach this precision, per class
      confidence_level: 0.95      # ... on a one-sided lower bound at this level
      min_support: 50             # held-out rows a class needs before it is ever auto-accepted
      machine_labels: downweight  # use | downweight | ignore: how training treats machine labels
      machine_weight: 0.5         # the loss weight of a machine-labelled row (downweight)
      review_batch: 500           # most rows in one exported review queue
      trigger: on_validated       # on_validated | manual
      label_errors:
        mode: report              # off | report | exclude (suspected mislabelled training rows)
        folds: 5                  # out-of-fold folds for the predicted probabilities
        max_rows: 200000          # train rows the detector looks at (a seeded sample beyond)
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
    max_rows: Annotated[int, Field(ge=100)] = 200_000


class LabellingSpec(_Strict):
    """How a line's unlabelled rows get labels and how training treats them."""

    target_precision: Annotated[float, Field(gt=0.5, lt=1)] = 0.98
    confidence_level: Annotated[float, Field(gt=0.5, lt=1)] = 0.95
    min_support: Annotated[int, Field(ge=1)] = 50
    machine_labels: Literal["use", "downweight", "ignore"] = "downweight"
    machine_weight: Annotated[float, Field(gt=0, le=1)] = 0.5
    review_batch: Annotated[int, Field(ge=1, le=100_000)] = 500
    trigger: Literal["on_validated", "manual"] = "on_validated"
    label_errors: LabelErrorsSpec = Field(default_factory=LabelErrorsSpec)
