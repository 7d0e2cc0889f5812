"""A line's hyperparameter search, as declared in its spec (``tuning:``).

The search space names the settings a trial may change and their ranges, one named
space or several (the tuning DAG's ``space`` param picks one)::

    tuning:
      trials: 24                # trials per study (the DAG's default)
      parallel: 2               # trials at once, at most (the DAG's ``parallel`` may lower it)
      workers: 1                # Horovod workers per trial
      epochs: 12                # a trial's epoch budget (early stopping still applies)
      timeout_minutes: 60       # the study's time budget
      sampler: tpe              # tpe (Bayesian optimisation) | random
      pruner: median            # median | hyperband | none
      startup_trials: 6         # random trials before TPE models the space; trials before pruning
      prune_warmup_epochs: 2    # epochs a trial trains before it may be pruned
      warm_start: 3             # the previous study's best trials, tried first
      use_tuned: true           # the next training uses the best trial's settings
      spaces:
        default:
          learning_rate: {low: 0.0001, high: 0.003, log: true}
          hidden_units: {choices: [[64, 32], [128, 64]]}
          dropout: {low: 0.0, high: 0.6}

A dimension is a range (``low``, ``high``, optional ``log`` or ``step``) or a list of
``choices``. Which names may be tuned, and whether a name takes a range, is the table
:data:`TUNABLE`; every bound and every choice is checked at spec load by building the
training settings it would give, so a space that could produce a setting the training
refuses fails when the spec is read, not in the middle of a study.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# name -> (where it lives in ``training:``, the model kinds it applies to, its kind of range)
#   "float": a float range or choices; "int": an integer range or choices; "choice": choices only
TUNABLE: dict[str, tuple[str, tuple[str, ...], str]] = {
    "learning_rate": ("learning_rate", ("tabular_dnn", "cnn"), "float"),
    "batch_size": ("batch_size", ("tabular_dnn", "cnn"), "int"),
    "learning_rate_decay": ("learning_rate_decay", ("tabular_dnn", "cnn"), "choice"),
    "hidden_units": ("model.hidden_units", ("tabular_dnn",), "choice"),
    "dropout": ("model.dropout", ("tabular_dnn", "cnn"), "float"),
    "embedding_dim": ("model.embedding_dim", ("tabular_dnn",), "int"),
    "one_hot_max": ("model.one_hot_max", ("tabular_dnn",), "int"),
    "class_weight": ("model.class_weight", ("tabular_dnn",), "choice"),
    "conv_filters": ("model.conv_filters", ("cnn",), "choice"),
    "dense_units": ("model.dense_units", ("cnn",), "int"),
    "horizontal_flip": ("model.augmentation.horizontal_flip", ("cnn",), "choice"),
    "translate": ("model.augmentation.translate", ("cnn",), "float"),
    "rotate_degrees": ("model.augmentation.rotate_degrees", ("cnn",), "float"),
    "zoom": ("model.augmentation.zoom", ("cnn",), "float"),
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Dimension(_Strict):
    """One searched setting: a range (``low``..``high``, on a log scale or in ``step``s) or
    a list of ``choices``."""

    low: float | None = None
    high: float | None = None
    log: bool = False
    step: Annotated[float, Field(gt=0)] | None = None
    choices: Annotated[list[Any], Field(min_length=1)] | None = None

    @model_validator(mode="after")
    def _one_form(self) -> Dimension:
        ranged = self.low is not None or self.high is not None
        if self.choices is not None:
            if ranged or self.log or self.step is not None:
                raise ValueError("give either choices or a range (low, high), not both")
            return self
        if self.low is None or self.high is None:
            raise ValueError("a dimension needs low and high, or choices")
        if not self.low < self.high:
            raise ValueError(f"low must be < high (got low={self.low}, high={self.high})")
        if self.log and self.low <= 0:
            raise ValueError("a log range needs low > 0")
        if self.log and self.step is not None:
            raise ValueError("a range takes log or step, not both")
        return self

    @property
    def is_range(self) -> bool:
        return self.choices is None

    def values_to_check(self, kind: str) -> list[Any]:
        """The values whose settings must be valid: both bounds, or every choice."""
        if self.choices is not None:
            return list(self.choices)
        if kind == "int":
            return [int(self.low), int(self.high)]
        return [self.low, self.high]


SamplerName = Literal["tpe", "random"]
PrunerName = Literal["median", "hyperband", "none"]


class TuningSpec(_Strict):
    """``tuning:``: how the line's ``tune_<line>`` DAG searches (see the module's text)."""

    schedule: str | None = None
    trials: Annotated[int, Field(ge=1, le=1000)] = 20
    parallel: Annotated[int, Field(ge=1, le=32)] = 2
    workers: Annotated[int, Field(ge=1, le=64)] = 1
    epochs: Annotated[int, Field(ge=1, le=1000)] = 10
    timeout_minutes: Annotated[int, Field(ge=1, le=10080)] = 60
    sampler: SamplerName = "tpe"
    pruner: PrunerName = "median"
    startup_trials: Annotated[int, Field(ge=0, le=1000)] = 5
    # Epochs every trial trains before the pruner may stop it: early validation values
    # of a slowly learning model say little about where it ends.
    prune_warmup_epochs: Annotated[int, Field(ge=0, le=1000)] = 2
    warm_start: Annotated[int, Field(ge=0, le=100)] = 3
    use_tuned: bool = True
    spaces: Annotated[dict[str, dict[str, Dimension]], Field(min_length=1)]

    @model_validator(mode="after")
    def _names(self) -> TuningSpec:
        if self.prune_warmup_epochs >= self.epochs and self.pruner != "none":
            raise ValueError(f"prune_warmup_epochs ({self.prune_warmup_epochs}) must be below epochs "
                             f"({self.epochs}): no trial could be pruned")
        for space, dims in self.spaces.items():
            if not dims:
                raise ValueError(f"spaces.{space}: names no setting to search")
            for name, dim in dims.items():
                if name not in TUNABLE:
                    raise ValueError(f"spaces.{space}.{name}: not a tunable setting (those are {sorted(TUNABLE)})")
                kind = TUNABLE[name][2]
                if kind == "choice" and dim.is_range:
                    raise ValueError(f"spaces.{space}.{name}: takes choices, not a range")
                if kind == "int" and dim.is_range and (
                    dim.low != int(dim.low) or dim.high != int(dim.high)
                    or (dim.step is not None and dim.step != int(dim.step))
                ):
                    raise ValueError(f"spaces.{space}.{name}: an integer range needs whole numbers")
        return self


def set_setting(training: dict[str, Any], name: str, value: Any) -> None:
    """Put one tuned ``value`` into a ``training:`` mapping (as ``TrainingSpec.model_dump()``
    gives it), where :data:`TUNABLE` says the setting lives."""
    *parents, leaf = TUNABLE[name][0].split(".")
    node = training
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value


def get_setting(training: dict[str, Any], name: str) -> Any:
    """The value of a tunable setting in a ``training:`` mapping."""
    node: Any = training
    for key in TUNABLE[name][0].split("."):
        node = node[key]
    return node
