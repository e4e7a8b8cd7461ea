"""Where raynlp keeps what it fetches: `RAYNLP_HOME`, default `~/.cache/raynlp`."""

import os
from pathlib import Path


def raynlp_home() -> Path:
    return Path(os.environ.get("RAYNLP_HOME") or Path.home() / ".cache" / "raynlp").expanduser()


def cache_dir(kind: str) -> Path:
    path = raynlp_home() / kind
    path.mkdir(parents=True, exist_ok=True)
    return path
