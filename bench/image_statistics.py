"""Statistics of a line's real images, as the cleaner computes them: the figures the
image suite's ranges come from (docs/images.md).

    python bench/image_statistics.py fashion

Per source batch: mean brightness and contrast, each class's share; over all images:
the 0.1% and 99.9% quantiles of brightness and contrast.
"""

from __future__ import annotations

import io
import json
import sys

import numpy as np
from PIL import Image

from pipelines.ingest.cleaning.images import statistics
from pipelines.ingest.landing import source_batches
from pipelines.ingest.sources import load_source
from pipelines.specs import load_spec


def main(line: str) -> dict:
    spec = load_spec(line)
    frame = load_source(spec)
    stats = np.array([statistics(np.asarray(Image.open(io.BytesIO(b)))) for b in frame["image"]])
    frame = frame.assign(brightness=stats[:, 0], contrast=stats[:, 1])
    out: dict = {"images": len(frame), "batches": {}}
    for batch_id, part in source_batches(spec, frame).items():
        out["batches"][batch_id] = {
            "brightness_mean": round(float(part["brightness"].mean()), 4),
            "contrast_mean": round(float(part["contrast"].mean()), 4),
            "class_share": {str(k): round(float(v), 4) for k, v in part["label"].value_counts(normalize=True).sort_index().items()},
        }
    for col in ("brightness", "contrast"):
        q = np.quantile(frame[col], [0.0, 0.001, 0.999, 1.0])
        out[col] = {"min": round(float(q[0]), 4), "q0.001": round(float(q[1]), 4), "q0.999": round(float(q[2]), 4), "max": round(float(q[3]), 4)}
    return out


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1] if len(sys.argv) > 1 else "fashion"), indent=1))  # noqa: T201
