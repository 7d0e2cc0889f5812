"""The Airflow Assets that connect the stages of a line (Airflow side only)."""

from __future__ import annotations


def landed_data(line: str):
    """Changes when a batch of the line lands: its watcher
    (:class:`pipelines.ingest.watch.LandedBatchesTrigger`, run by the triggerer) fires
    an event per newly landed batch, and the ingest DAG is scheduled on it."""
    from airflow.sdk import Asset, AssetWatcher

    from pipelines.ingest.watch import LandedBatchesTrigger

    return Asset(
        name=f"{line}.landed_data",
        uri=f"factory://{line}/landed",
        group="factory",
        watchers=[AssetWatcher(name=f"{line}_landing_zone", trigger=LandedBatchesTrigger(line=line))],
    )


def validated_data(line: str):
    """Announced once per ingest run whose batches passed validation; training and the
    drift monitor are scheduled on it."""
    from airflow.sdk import Asset

    return Asset(name=f"{line}.validated_data", uri=f"factory://{line}/validated", group="factory")


def drift_asset(line: str):
    """Announced when a drift episode calls for a retrain; the event's extra says what
    drifted and by how much. Training is scheduled on it."""
    from airflow.sdk import Asset

    return Asset(name=f"{line}.drift", uri=f"factory://{line}/drift", group="factory")


def live_labels(line: str):
    """Announced when labels were attached to the line's logged predictions; the drift
    monitor is scheduled on it (a window with enough labels gets its live ROC AUC)."""
    from airflow.sdk import Asset

    return Asset(name=f"{line}.live_labels", uri=f"factory://{line}/live_labels", group="factory")


def tuned_params(line: str):
    """Announced when a tuning study wrote the line's tuned settings (the best trial of
    the study); the next training uses them."""
    from airflow.sdk import Asset

    return Asset(name=f"{line}.tuned_params", uri=f"factory://{line}/tuned_params", group="factory")
