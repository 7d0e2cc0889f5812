"""The ``drift:`` section of a product-line spec: thresholds, test level, retrain policy.

Light on purpose (pydantic only, no numpy): :mod:`pipelines.specs` can import
:class:`DriftSpec` to validate the section at spec load, which happens at DAG parse
time. Every field has a default, so ``drift: {}`` (or no section) is a working
configuration; see :mod:`pipelines.monitoring.detection` for what the numbers mean.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

SCORE_FEATURE = "__score__"
# the label's positive rate (or, multiclass, its class mix), named like a feature when it
# drifts (a prior shift)
LABEL_FEATURE = "__label__"
# a multiclass model's predicted class, a categorical feature: prediction drift of an
# image line (in place of the binary score)
CLASS_FEATURE = "__class__"
# the thresholds of ``prediction:`` apply to these
PREDICTION_FEATURES = (SCORE_FEATURE, CLASS_FEATURE)
EFFECT_METRICS = ("psi", "jsd", "linf")
# per-image statistics the cleaner writes for an image line (numeric features)
IMAGE_STATISTICS = ("brightness", "contrast", "sharpness")
# an image model's embedding, projected on the reference's principal components:
# embedding_pc1, embedding_pc2, ...
EMBEDDING_PREFIX = "embedding_pc"

Threshold = Annotated[float, Field(gt=0)] | None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Thresholds(_Strict):
    """Effect-size thresholds; ``null`` switches a metric off as an alarm criterion (it is
    still computed and reported). A feature's effect is "large" when ANY enabled metric
    reaches its threshold."""

    psi: Threshold = 0.2
    jsd: Threshold = 0.1  # Jensen-Shannon divergence, base 2 (in [0, 1])
    linf: Threshold = 0.2  # largest change of one bucket's share (categorical features)


class FeatureDrift(_Strict):
    """Per-feature override of the line's thresholds; ``ignore`` stops monitoring it."""

    psi: Threshold = None
    jsd: Threshold = None
    linf: Threshold = None
    ignore: bool = False


class RetrainPolicy(_Strict):
    """When a drift episode may start a retrain (see :mod:`pipelines.monitoring.episodes`)."""

    enabled: bool = True
    # at least this long between two retrains of the line started by drift
    cooldown_hours: Annotated[float, Field(ge=0)] = 24.0
    # a retrain claimed or running this long without an outcome is treated as failed
    stale_after_hours: Annotated[float, Field(gt=0)] = 12.0
    # an open episode with no retrain in flight closes after this many clean batches in a row
    close_after_clean_batches: Annotated[int, Field(ge=1)] = 3
    # retrains one episode may start (a not-blessed or failed one may be retried after the cooldown)
    max_attempts: Annotated[int, Field(ge=1)] = 3


class PerformanceSpec(_Strict):
    """Labelled batches: ROC AUC (binary) or accuracy (multiclass) on the batch against
    the reference's. ``max_auc_drop``
    (absolute) makes a drop an alarm of its own when a one-sided test also finds it
    beyond noise at ``alpha`` per test (the AUC rule counts as one test of the
    family); ``null``: reported only.

    ``max_label_rate_change``: an absolute change of the positive-class share (0.05: five
    points) that, when also beyond noise at ``alpha``, is drift of its own. A prior shift
    (more defaults, fewer people employed) can leave every feature and the score
    distribution where they were, so nothing else would see it; ``null``: reported only.
    ``min_labelled_rows`` guards the AUC rule only (an AUC on few rows of a rare class is
    noise); the label-rate test needs five expected rows of the rarer class.

    Multiclass (an image line): ``max_accuracy_drop`` is the accuracy rule, tested like
    the AUC rule (one-sided, at the family's per-test level, ``min_labelled_rows``); the
    label's class mix replaces the positive rate: ``max_label_rate_change`` is then the
    largest change of one class's share, tested by a chi-square test at ``alpha``."""

    max_auc_drop: Annotated[float, Field(gt=0, lt=1)] | None = None
    max_accuracy_drop: Annotated[float, Field(gt=0, lt=1)] | None = None
    max_label_rate_change: Annotated[float, Field(gt=0, lt=1)] | None = 0.05
    min_labelled_rows: Annotated[int, Field(ge=2)] = 100


class EmbeddingSpec(_Strict):
    """How an image model's embedding is monitored: the reference embeddings' first
    ``components`` principal components (the projection is kept in the profile); each
    component is a numeric feature ``embedding_pc<i>``, scored like any other."""

    components: Annotated[int, Field(ge=1, le=64)] = 8


class DriftSpec(_Strict):
    """A line's drift monitoring settings (``drift:`` in ``include/lines/<line>.yaml``)."""

    enabled: bool = True
    # family-wise significance level; each test runs at alpha / (number of tests)
    alpha: Annotated[float, Field(gt=0, lt=1)] = 0.01
    # quantile bins of a numeric feature's reference distribution (fewer after de-duplication)
    bins: Annotated[int, Field(ge=2, le=100)] = 10
    # reference values kept in the profile for the KS test
    sample_size: Annotated[int, Field(ge=100, le=100_000)] = 5000
    # most frequent categories kept by name; the rest share the __other__ bucket
    max_categories: Annotated[int, Field(ge=1, le=10_000)] = 200
    # PSI smoothing: empty buckets count as this share
    epsilon: Annotated[float, Field(gt=0, lt=0.01)] = 1e-4
    thresholds: Thresholds = Field(default_factory=Thresholds)
    # the model's score distribution (prediction drift); same metrics as a numeric feature
    prediction: FeatureDrift = Field(default_factory=FeatureDrift)
    features: dict[str, FeatureDrift] = Field(default_factory=dict)
    performance: PerformanceSpec = Field(default_factory=PerformanceSpec)
    # image lines: the embedding's summary
    embedding: EmbeddingSpec = Field(default_factory=EmbeddingSpec)
    retrain: RetrainPolicy = Field(default_factory=RetrainPolicy)

    @model_validator(mode="after")
    def _no_score_override(self) -> DriftSpec:
        for name in PREDICTION_FEATURES:
            if name in self.features:
                raise ValueError(f"features: set the prediction's thresholds under 'prediction', not {name!r}")
        return self

    def monitored_features(self, modality: str, schema_features: list[str]) -> list[str]:
        """The names ``features:`` may set for a line of ``modality``: its schema's model
        features (tabular) or what stands for an image (image)."""
        return MONITORED_FEATURES[modality](self, schema_features)

    def thresholds_for(self, feature: str) -> dict[str, float | None]:
        """Effective thresholds of one feature: the feature's (or the prediction's) override,
        else the line's."""
        override = self.prediction if feature in PREDICTION_FEATURES else self.features.get(feature)
        out = {}
        for metric in EFFECT_METRICS:
            value = getattr(override, metric) if override is not None else None
            out[metric] = value if value is not None else getattr(self.thresholds, metric)
        return out

    def ignored(self, feature: str) -> bool:
        override = self.prediction if feature in PREDICTION_FEATURES else self.features.get(feature)
        return bool(override and override.ignore)


def embedding_features(components: int) -> list[str]:
    """``embedding_pc1`` .. ``embedding_pc<components>``."""
    return [f"{EMBEDDING_PREFIX}{i}" for i in range(1, components + 1)]


# What drift monitors per modality (besides the prediction and the label), by name: a
# tabular line its model features; an image line the cleaner's per-image statistics and
# the embedding's principal components (the image itself is no feature to bucket).
MONITORED_FEATURES = {
    "tabular": lambda cfg, schema_features: list(schema_features),
    "image": lambda cfg, schema_features: [*IMAGE_STATISTICS, *embedding_features(cfg.embedding.components)],
}


def drift_spec(section: DriftSpec | dict[str, Any] | None) -> DriftSpec:
    """A :class:`DriftSpec` from a spec's ``drift:`` mapping (or one already parsed).

    Raises ``ValueError`` naming the field, e.g. ``drift.alpha: Input should be less than 1``.
    """
    if isinstance(section, DriftSpec):
        return section
    try:
        return DriftSpec.model_validate(section or {})
    except ValidationError as err:
        problems = "; ".join(
            "drift." + ".".join(str(p) for p in e["loc"]) + ": " + e["msg"] for e in err.errors()
        )
        raise ValueError(problems) from None
