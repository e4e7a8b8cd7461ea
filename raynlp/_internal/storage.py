"""Folders and small files at a local path or at a storage URI (`s3://`, `gs://`, any URI `pyarrow.fs` opens).

    >>> write_text(join("s3://bucket/run", "notes.txt"), "hello")
    >>> cached_copy("s3://bucket/run/preset")       # a local folder, downloaded once, again only when it changed

A local path goes through pathlib, as it always did. A URI goes through `pyarrow.fs`, the layer Ray Data and
Ray Train open URIs with, so that all three reach the same bucket with the same settings: credentials and, for an
S3-compatible server, `AWS_ENDPOINT_URL`, read from the environment of each process (Ray's workers inherit the
driver's on a local cluster; on a real cluster every node needs them).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from raynlp._internal.home import cache_dir
from raynlp.errors import RaynlpError

# What pyarrow raises for a URI it cannot open or use: unknown scheme, no credentials, no such bucket.
ERRORS = (OSError, ValueError, NotImplementedError)


def is_uri(path: str | Path) -> bool:
    return "://" in str(path)


def location(path: str | Path) -> str | Path:
    """A URI as a string without a trailing slash; a local path as an absolute Path (Ray's workers do not share
    the driver's working directory)."""
    return str(path).rstrip("/") if is_uri(path) else Path(path).expanduser().absolute()


def join(base: str | Path, *names: str) -> str | Path:
    if is_uri(base):
        return "/".join([str(base).rstrip("/"), *names])
    return Path(base).joinpath(*names)


def filesystem(uri: str):
    """`(pyarrow filesystem, path inside it)` for a URI."""
    import pyarrow.fs

    return pyarrow.fs.FileSystem.from_uri(str(uri))


def exists(path: str | Path) -> bool:
    if not is_uri(path):
        return Path(path).exists()
    import pyarrow.fs

    fs, inner = filesystem(path)
    return fs.get_file_info(inner).type != pyarrow.fs.FileType.NotFound


def read_text(path: str | Path) -> str:
    if not is_uri(path):
        return Path(path).read_text()
    fs, inner = filesystem(path)
    with fs.open_input_stream(inner) as f:
        return f.read().decode()


def write_text(path: str | Path, text: str) -> None:
    if not is_uri(path):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text)
        return
    fs, inner = filesystem(path)
    with fs.open_output_stream(inner) as f:
        f.write(text.encode())


def files(folder: str | Path, suffix: str = "") -> list[str]:
    """The files directly in `folder` whose names end in `suffix`, sorted, as paths or URIs ([] if no folder)."""
    if not is_uri(folder):
        return sorted(str(p) for p in Path(folder).glob(f"*{suffix}") if p.is_file())
    import pyarrow.fs

    fs, inner = filesystem(folder)
    infos = fs.get_file_info(pyarrow.fs.FileSelector(inner, allow_not_found=True))
    return sorted(str(join(folder, os.path.basename(i.path))) for i in infos if i.is_file and i.path.endswith(suffix))


def is_empty(folder: str | Path) -> bool:
    """Whether `folder` is missing or holds nothing (a file in its place is not empty)."""
    if not is_uri(folder):
        path = Path(folder)
        return not path.exists() or (path.is_dir() and not any(path.iterdir()))
    import pyarrow.fs

    fs, inner = filesystem(folder)
    return not fs.get_file_info(pyarrow.fs.FileSelector(inner, allow_not_found=True))


def check_unused(folder: str | Path) -> None:
    """Refuse a folder that holds something, for a command that writes a new data set into it."""
    if not is_empty(location(folder)):
        raise RaynlpError(f"output folder {folder} is not empty; choose a new folder or delete it")


def delete(path: str | Path) -> None:
    """Delete a folder (or a file) and everything in it; nothing happens where there is none."""
    if not is_uri(path):
        if Path(path).is_dir():
            shutil.rmtree(path)
        elif Path(path).exists():
            Path(path).unlink()
        return
    import pyarrow.fs

    fs, inner = filesystem(path)
    kind = fs.get_file_info(inner).type
    if kind == pyarrow.fs.FileType.Directory:
        fs.delete_dir(inner)
    elif kind == pyarrow.fs.FileType.File:
        fs.delete_file(inner)


def delete_contents(folder: str | Path) -> None:
    """Delete everything in `folder`, keeping the folder; nothing happens where there is none."""
    if not is_uri(folder):
        for child in Path(folder).iterdir() if Path(folder).is_dir() else []:
            delete(child)
        return
    fs, inner = filesystem(folder)
    fs.delete_dir_contents(inner, missing_dir_ok=True)


def upload(local: str | Path, uri: str) -> None:
    """Copy a local folder (or file) to `uri`, replacing what was there."""
    import pyarrow.fs

    delete(uri)
    fs, inner = filesystem(uri)
    pyarrow.fs.copy_files(str(Path(local).resolve()), inner, source_filesystem=pyarrow.fs.LocalFileSystem(),
                          destination_filesystem=fs)


def download(uri: str, local: str | Path) -> None:
    """Copy the folder at `uri` into the local folder `local` (made if missing)."""
    import pyarrow.fs

    fs, inner = filesystem(uri)
    Path(local).mkdir(parents=True, exist_ok=True)
    pyarrow.fs.copy_files(inner, str(Path(local).resolve()), source_filesystem=fs,
                          destination_filesystem=pyarrow.fs.LocalFileSystem())


def local_dir(kind: str, uri: str, *, tail: int = 2) -> Path:
    """This machine's folder for `uri` under raynlp's cache: `<RAYNLP_HOME>/<kind>/<hash of uri>/<its last names>`
    (`…/3f2a…/run/preset` for `s3://bucket/run/preset`: the run names the folder, as a local run's does)."""
    uri = str(location(uri))
    digest = hashlib.sha256(uri.encode()).hexdigest()[:16]
    names = [n for n in uri.split("://", 1)[1].split("/") if n not in ("", ".", "..")]
    return cache_dir(kind).joinpath(digest, *names[len(names) - tail:] if tail else [])


def cached_copy(uri: str) -> Path:
    """A local copy of the folder at `uri`, downloaded on first use and again whenever its files changed.

    The listing (names, sizes, modification times) is compared with the one the copy was made from: one listing
    request when nothing changed. Several processes asking at once download it once.
    """
    import filelock
    import pyarrow.fs

    fs, inner = filesystem(uri)
    infos = fs.get_file_info(pyarrow.fs.FileSelector(inner, recursive=True, allow_not_found=True))
    listing = sorted([os.path.relpath(i.path, inner), i.size, i.mtime_ns] for i in infos if i.is_file)
    if not listing:
        raise FileNotFoundError(f"no files under {uri}")
    target = local_dir("remote", uri)
    stamp = target.with_name(target.name + ".listing.json")

    def fresh() -> bool:
        return target.is_dir() and stamp.exists() and json.loads(stamp.read_text()) == listing

    if fresh():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with filelock.FileLock(str(target.with_name(target.name + ".lock"))):
        if fresh():
            return target
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
        try:
            download(uri, staging)
            shutil.rmtree(target, ignore_errors=True)
            os.replace(staging, target)
            stamp.write_text(json.dumps(listing))
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target
