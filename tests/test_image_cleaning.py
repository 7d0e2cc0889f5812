"""Image batches: landing of archives, the image checks on hand-made bad files, and the
Spark job on real Fashion-MNIST images with every kind of bad file beside them."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipelines.catalog import ledger
from pipelines.catalog.layout import line_paths
from pipelines.ingest import landing
from pipelines.ingest.cleaning import images
from pipelines.ingest.sources import load_source
from pipelines.specs import load_spec


@pytest.fixture(scope="module")
def fashion():
    return load_spec("fashion")


@pytest.fixture(scope="module")
def real(fashion) -> pd.DataFrame:
    return load_source(fashion, holdout="test").iloc[:40].reset_index(drop=True)


def _png(pixels: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def _row(content: bytes | None, label: str | None = "3", name: str = "x-1.png", **flags) -> dict:
    return {
        "file": name,
        "content": content,
        "too_large": flags.get("too_large", False),
        "has_file": content is not None or flags.get("too_large", False),
        "has_row": label is not None,
        "label_raw": label,
    }


def test_a_real_image_is_clean_with_its_statistics(fashion, real):
    out = images.judge(_row(real["image"][0], label=str(real["label"][0]), name="t10k-00000.png"), fashion)
    assert out["_reasons"] == []
    assert out["image_id"] == "t10k-00000" and out["label"] == int(real["label"][0])
    assert out["image"] == real["image"][0]  # not re-encoded
    assert (out["width"], out["height"], out["channels"]) == (28, 28, 1)
    pixels = np.asarray(Image.open(io.BytesIO(real["image"][0]))) / 255.0
    assert out["brightness"] == pytest.approx(pixels.mean())
    assert out["contrast"] == pytest.approx(pixels.std())
    assert 0 < out["sharpness"] < 2


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda png: png[: len(png) // 2], "undecodable"),
        (lambda png: b"not an image at all", "undecodable"),
        (lambda png: _png(np.random.default_rng(1).integers(0, 255, (32, 32), dtype=np.uint8)), "wrong_size"),
        (lambda png: _png(np.random.default_rng(2).integers(0, 255, (28, 28, 3), dtype=np.uint8)), "wrong_channels"),
        (lambda png: _png(np.full((28, 28), 200, dtype=np.uint8)), "blank"),
    ],
    ids=["truncated", "garbage", "32x32", "rgb", "blank"],
)
def test_a_bad_image_is_quarantined_with_its_reason(fashion, real, make, reason):
    out = images.judge(_row(make(real["image"][1])), fashion)
    assert out["_reasons"] == [reason]
    assert out["image"] is not None  # the file is kept in the quarantine


def test_manifest_problems_are_named(fashion, real):
    png = real["image"][2]
    assert images.judge(_row(png, label="10"), fashion)["_reasons"] == ["label_not_a_class"]
    assert images.judge(_row(png, label="shirt"), fashion)["_reasons"] == ["label_not_a_class"]
    assert images.judge(_row(png, label=None), fashion)["_reasons"] == ["no_label_row"]
    no_file = images.judge(_row(None, label="1", name="gone.png"), fashion)
    assert no_file["_reasons"] == ["no_image_file"] and no_file["image"] is None and no_file["image_id"] == "gone"
    unlabelled = images.judge(_row(png, label=""), fashion)  # missing: keep
    assert unlabelled["_reasons"] == [] and unlabelled["label"] is None
    assert images.judge(_row(None, too_large=True), fashion)["_reasons"] == ["too_large"]


def test_wrong_size_resize_resizes_and_reencodes(fashion):
    image = fashion.cleaning.image.model_copy(update={"wrong_size": "resize"})
    spec = fashion.model_copy(update={"cleaning": fashion.cleaning.model_copy(update={"image": image})})
    big = _png(np.random.default_rng(3).integers(0, 255, (56, 56), dtype=np.uint8))
    out = images.judge(_row(big), spec)
    assert out["_reasons"] == [] and out["resized"]
    assert Image.open(io.BytesIO(out["image"])).size == (28, 28)
    assert out["sha256"] != images.judge(_row(big), fashion).get("sha256")


# -- landing -------------------------------------------------------------


def test_the_same_batch_lands_as_the_same_archive(fashion, real, home):
    first = landing.land_frame(fashion, real, "a", home)
    again = landing.land_frame(fashion, real, "a", home)
    assert again.sha256 == first.sha256 and not again.created
    with zipfile.ZipFile(first.path) as zf:
        names = zf.namelist()
        assert names[-1] == "labels.csv" and names[:-1] == sorted(names[:-1])
        assert zf.read("labels.csv").decode().splitlines()[:2] == ["image,label", f"t10k-00000.png,{real['label'][0]}"]
        assert {i.date_time for i in zf.infolist()} == {landing.ZIP_TIME}


def test_a_folder_lands_zipped(fashion, real, home, tmp_path):
    folder = tmp_path / "drop"
    (folder / "images").mkdir(parents=True)
    for i in range(3):
        (folder / "images" / f"t10k-{i:05d}.png").write_bytes(real["image"][i])
    (folder / "labels.csv").write_text("image,label\n" + "".join(f"t10k-{i:05d}.png,{real['label'][i]}\n" for i in range(3)))
    landed = landing.land_file(fashion, folder, "folder", home)
    assert landed.path.suffix == ".zip" and landing.check_image_archive(landed.path) == 3
    assert ledger.read(line_paths("fashion", home), "folder")["format"] == "images"


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


@pytest.mark.parametrize(
    ("members", "message"),
    [
        (None, "not a zip archive"),
        ({"images/a.png": b"x"}, "no labels.csv"),
        ({"images/a.png": b"x", "labels.csv": b"a.png,1\n"}, "must start with the header"),
        ({"labels.csv": b"image,label\na.png,1\na.png,2\n"}, "more than once"),
        ({"labels.csv": b"image,label\n", "other/a.png": b"x"}, "members outside images/"),
    ],
    ids=["not-zip", "no-manifest", "no-header", "listed-twice", "stray"],
)
def test_a_bad_archive_is_refused_at_landing(fashion, home, tmp_path, members, message):
    path = tmp_path / "bad.zip"
    if members is None:
        path.write_bytes(b"PK but not really")
    else:
        _zip(path, members)
    with pytest.raises(landing.LandingError, match=message):
        landing.land_file(fashion, path, "bad", home)
    assert ledger.read(line_paths("fashion", home), "bad") is None
    assert not list(line_paths("fashion", home).landing.glob("bad*"))


def test_a_table_is_refused_by_an_image_line(fashion, home, tmp_path):
    path = tmp_path / "b.csv"
    path.write_text("image_id,label\na,1\n")
    with pytest.raises(landing.LandingError, match="lands images"):
        landing.land_file(fashion, path, "b", home)


def test_replay_lands_a_holdout_batch_by_name(fashion, home):
    (landed,) = landing.replay(fashion, home, only=["test"])
    assert landed.batch_id == "test"
    with zipfile.ZipFile(landed.path) as zf:
        assert len(zf.namelist()) == 10_001 and "images/t10k-09999.png" in zf.namelist()
    with pytest.raises(landing.LandingError, match="no source batch"):
        landing.replay(fashion, home, only=["nope"])


# -- the Spark job -------------------------------------------------------


def bad_batch(real: pd.DataFrame, folder: Path, good: int) -> dict[str, bytes]:
    """A folder batch: ``good`` real images plus one of every bad kind; returns the files."""
    rng = np.random.default_rng(7)
    files = {f"{k}.png": v for k, v in zip(real["image_id"][:good], real["image"][:good], strict=True)}
    labels = {f"{k}.png": str(v) for k, v in zip(real["image_id"][:good], real["label"][:good], strict=True)}
    png = real["image"][0]
    files |= {
        "bad-truncated.png": png[: len(png) // 2],
        "bad-32.png": _png(rng.integers(0, 255, (32, 32), dtype=np.uint8)),
        "bad-rgb.png": _png(rng.integers(0, 255, (28, 28, 3), dtype=np.uint8)),
        "bad-blank.png": _png(np.zeros((28, 28), dtype=np.uint8)),
        "bad-class.png": real["image"][good],
        "bad-unlisted.png": real["image"][good + 1],
        "zz-copy.png": png,  # the same bytes as the first real image (a later id)
    }
    labels |= {n: "1" for n in files if n not in labels and n != "bad-unlisted.png"}
    labels["bad-class.png"] = "12"
    labels["bad-missing.png"] = "4"  # listed, no file
    (folder / "images").mkdir(parents=True)
    for name, data in files.items():
        (folder / "images" / name).write_bytes(data)
    (folder / "labels.csv").write_text("image,label\n" + "".join(f"{n},{v}\n" for n, v in labels.items()))
    return files


BAD_REASONS = {
    "undecodable": 1,
    "wrong_size": 1,
    "wrong_channels": 1,
    "blank": 1,
    "label_not_a_class": 1,
    "no_label_row": 1,
    "no_image_file": 1,
}


@pytest.mark.integration
def test_the_job_cleans_an_image_batch_and_counts_reconcile(fashion, real, home, tmp_path, spark):
    from pipelines.ingest.cleaning import job

    files = bad_batch(real, tmp_path / "drop", good=30)
    landing.land_file(fashion, tmp_path / "drop", "mixed", home)
    paths = line_paths("fashion", home)
    report = job.clean_one(spark, fashion, paths, "mixed")
    assert report["rows_in"] == len(files) + 1  # every file and the row without one
    assert report["quarantine_reasons"] == BAD_REASONS
    assert report["duplicates_removed"] == 1 and report["duplicates"] == {"exact": 1}
    assert report["rows_clean"] == 30
    assert report["rows_in"] == report["rows_clean"] + report["rows_quarantined"] + report["duplicates_removed"]

    clean = pd.read_parquet(paths.clean_batch("mixed"))
    assert list(clean.columns) == ["image_id", "image", "label", *images.STATISTICS]
    assert sorted(clean["image_id"]) == sorted(real["image_id"][:30])  # of two copies the first id stays
    assert clean["sha256"].is_unique and set(clean["width"]) == {28}
    assert str(clean["label"].dtype) == "int64"
    quarantine = pd.read_parquet(paths.quarantine_batch("mixed")).set_index("file")
    assert list(quarantine["_reasons"]["bad-32.png"]) == ["wrong_size"]
    assert quarantine["image"]["bad-missing.png"] is None and quarantine["label"]["bad-class.png"] == "12"
    assert not (paths.cleaned_batch("mixed") / "extracted").exists()
