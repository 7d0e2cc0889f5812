"""The Airflow Assets that connect the stages of a line (Airflow side only)."""

from __future__ import annotations


def validated_data(line: str):
    """Announced once per batch that passed validation; training is scheduled on it."""
    from airflow.sdk import Asset

    return Asset(name=f"{line}.validated_data", uri=f"factory://{line}/validated", group="factory")
