"""Cleaned image batches from the real Fashion-MNIST files, for the training tests and benchmark.

The rows are what the image cleaner publishes for a batch (its clean Parquet, in the contract's
columns and order) and the ledger records it as validated: the IDX files of the installed
``dataset-fashion-mnist`` package, each image encoded as an 8-bit grayscale PNG with Pillow and
decoded back to compute the quality columns. Ids and slices are the source's: ``train-00000``..
``train-59999`` (index in the IDX file) and ``t10k-00000``..``t10k-09999``.
"""

from __future__ import annotations

import gzip
import hashlib
import io
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

DATASET = Path("/usr/share/datasets/fashion-mnist")
SPLITS = {"train": "train", "t10k": "t10k"}
CLEAN_COLUMNS = ["image_id", "image", "label", "sha256", "width", "height", "channels",
                 "brightness", "contrast", "sharpness"]


def available() -> bool:
    return all((DATASET / f"{s}-{kind}-ubyte.gz").exists() for s in SPLITS for kind in ("images-idx3", "labels-idx1"))


def _idx(path: Path) -> np.ndarray:
    """An IDX file (magic: two zero bytes, the type code 0x08 = uint8, the rank; then the
    big-endian int32 dimensions and the data)."""
    raw = gzip.decompress(path.read_bytes())
    if raw[:2] != b"\0\0" or raw[2] != 0x08:
        raise ValueError(f"{path}: not an IDX file of unsigned bytes")
    rank = raw[3]
    dims = np.frombuffer(raw, ">i4", count=rank, offset=4)
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * rank).reshape(tuple(int(d) for d in dims))


@lru_cache(maxsize=2)
def idx_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [n, 28, 28], labels uint8 [n]) of ``train`` or ``t10k``."""
    return (_idx(DATASET / f"{split}-images-idx3-ubyte.gz"), _idx(DATASET / f"{split}-labels-idx1-ubyte.gz"))


def _png(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def clean_rows(split: str, start: int, stop: int, unlabelled_every: int = 0) -> pd.DataFrame:
    """Rows ``start``..``stop - 1`` of a split as clean rows; with ``unlabelled_every`` = k,
    every k-th row has no label (not yet labelled)."""
    from PIL import Image

    images, labels = idx_split(split)
    rows = []
    for i in range(start, stop):
        encoded = _png(images[i])
        pixels = np.asarray(Image.open(io.BytesIO(encoded)), dtype=np.float64) / 255.0
        lap = (pixels[:-2, 1:-1] + pixels[2:, 1:-1] + pixels[1:-1, :-2] + pixels[1:-1, 2:]
               - 4 * pixels[1:-1, 1:-1])
        label = None if unlabelled_every and i % unlabelled_every == 0 else int(labels[i])
        rows.append((f"{split}-{i:05d}", encoded, label, hashlib.sha256(encoded).hexdigest(),
                     pixels.shape[1], pixels.shape[0], 1, float(pixels.mean()), float(pixels.std()),
                     float(lap.var())))
    frame = pd.DataFrame(rows, columns=CLEAN_COLUMNS)
    frame["label"] = frame["label"].astype("Int64")
    return frame.astype({"width": "int32", "height": "int32", "channels": "int32"})


def write_clean_batch(home: Path, line: str, batch_id: str, frame: pd.DataFrame) -> Path:
    """A batch as the ingest stage leaves it: clean Parquet (contract types) and a validated record."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipelines.catalog import ledger
    from pipelines.catalog.layout import line_paths

    schema = pa.schema([("image_id", pa.string()), ("image", pa.binary()), ("label", pa.int64()),
                        ("sha256", pa.string()), ("width", pa.int32()), ("height", pa.int32()),
                        ("channels", pa.int32()), ("brightness", pa.float64()), ("contrast", pa.float64()),
                        ("sharpness", pa.float64())])
    paths = line_paths(line, home)
    out = paths.clean_batch(batch_id)
    out.mkdir(parents=True)
    table = pa.Table.from_pandas(frame[CLEAN_COLUMNS], schema=schema, preserve_index=False)
    pq.write_table(table.replace_schema_metadata(None), out / "part-00000.parquet")
    ledger.update(paths, batch_id, "validated", status=ledger.VALIDATED, landed_at=ledger.now(),
                  cleaning={"clean_path": str(out), "rows_clean": len(frame)})
    return out
