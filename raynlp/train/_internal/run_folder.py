"""A training run's folder: a local path or a storage URI, and everything that differs between the two.

    >>> run = RunFolder.open(config)           # new, or this very run again (it resumes); another run's is refused
    >>> run.claim(config)                      # the folder is this run's from now on
    >>> with run.given_back_if_refused(): ...  # a new run refused for its data takes back what it wrote
    >>> run.staged("metrics.json")             # where the driver makes a file: the folder, or a local staging folder
    >>> run.publish("metrics.json")            # ... uploaded to the URI (nothing to do for a local folder)

Ray Data writes the tokenized shards and Ray Train its checkpoints straight into the folder or URI
(`run.join(...)`, `run.storage_path`); what the driver makes itself (the preset taken out of the last checkpoint,
metrics, curves, a learned tokenizer) is made in `run.staged(...)` and published. For a URI the staging folder is
fresh under raynlp's cache and removed by `close()`, once everything is uploaded.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from pathlib import Path

import yaml

from raynlp._internal import storage
from raynlp.errors import RaynlpError, raynlp_error_behind

logger = logging.getLogger(__name__)

RUN_FILE = "raynlp_run.json"


class RunFolder:
    def __init__(self, output: str | Path):
        self.root: Path | str = storage.location(output)
        self.remote = storage.is_uri(self.root)
        self.local: Path = storage.local_dir("staging", self.root, tail=0) if self.remote else self.root
        self.new = False  # set by `open`: no run held the folder when it was opened
        self.existed = True  # set by `open`: the folder was there (empty, where new)

    @classmethod
    def open(cls, config) -> RunFolder:
        """The run's folder, new or holding this very run (then it resumes), writing nothing yet: another run's
        folder is refused."""
        run = cls(config.run.output)
        run_file, comparable = run.join(RUN_FILE), _comparable(config)
        try:
            empty = storage.is_empty(run.root)
            previous = None if empty or not storage.exists(run_file) else json.loads(storage.read_text(run_file))
            run.new, run.existed = previous is None, storage.exists(run.root)
        except storage.ERRORS as e:
            raise run._unusable(e) from e
        if previous is not None:
            if previous != comparable:
                raise RaynlpError(
                    f"output folder {run.root} holds another run (task {previous.get('task')}, preset "
                    f"{previous.get('preset')}); choose a new run.output or delete the folder")
            logger.info("output folder %s holds this run: resuming from its latest checkpoint", run.root)
        elif not empty:
            raise RaynlpError(f"output folder {run.root} is not empty and holds no raynlp run; choose a new run.output")
        return run

    def claim(self, config) -> RunFolder:
        """Mark the folder as this run's (what `open` compares a later run with) and record its config."""
        try:
            storage.write_text(self.join(RUN_FILE), json.dumps(_comparable(config), indent=2))
            storage.write_text(self.join("config.yaml"), yaml.safe_dump(config.model_dump(), sort_keys=False))
        except storage.ERRORS as e:
            raise self._unusable(e) from e
        if self.remote:  # a fresh staging folder for what the driver makes
            shutil.rmtree(self.local, ignore_errors=True)
            self.local.mkdir(parents=True)
        return self

    @contextlib.contextmanager
    def given_back_if_refused(self):
        """Around what a new run does before it trains: refused for its input (a RaynlpError, also from a Ray
        task), the run takes back all it wrote (the folder too, where the run made it), so that the fixed config
        finds the folder free, not "another run". Two runs writing into one folder at once are not supported."""
        try:
            yield
        except Exception as error:
            if self.new and raynlp_error_behind(error) is not None:
                try:
                    if self.existed:
                        storage.delete_contents(self.root)
                    else:
                        storage.delete(self.root)
                except storage.ERRORS as e:  # the refusal is what the caller must see
                    logger.warning("could not give back output folder %s: %s", self.root, e)
                self.close()
            raise

    def join(self, *names: str) -> Path | str:
        """A path (or URI) inside the run's folder."""
        return storage.join(self.root, *names)

    @property
    def storage_path(self) -> str:
        """The folder as Ray Train's `RunConfig(storage_path=...)` takes it: a URI, or an absolute path."""
        return str(self.root) if self.remote else str(Path(self.root).resolve())

    def staged(self, *names: str) -> Path:
        """Where the driver makes a file or folder of the run (`publish` puts it in place)."""
        return self.local.joinpath(*names)

    def publish(self, *names: str) -> None:
        """Put what the driver made at `staged(name)` into the run's folder."""
        if self.remote:
            for name in names:
                storage.upload(self.staged(name), self.join(name))

    def fetch(self, name: str) -> Path | None:
        """`staged(name)` holding what the run's folder holds under `name` (a resumed run's), or None."""
        if self.remote and storage.exists(self.join(name)):
            storage.download(self.join(name), self.staged(name))
        return self.staged(name) if self.staged(name).exists() else None

    def for_workers(self, name: str) -> str:
        """Where the Ray workers on every node find a published file or folder: its URI, or its absolute path
        (on a multi-node cluster a local folder must lie on storage every node mounts)."""
        return str(self.join(name)) if self.remote else os.path.abspath(self.staged(name))

    def location(self, path: str) -> str:
        """A path inside the run's filesystem, as Ray Train gives checkpoints, as a path or a URI."""
        if not self.remote:
            return path
        _, root = storage.filesystem(self.root)
        return str(self.join(*Path(os.path.relpath(path, root)).parts))

    def close(self) -> None:
        """Remove the staging folder of a URI's run (its files are published)."""
        if self.remote:
            shutil.rmtree(self.local, ignore_errors=True)

    def _unusable(self, error: Exception) -> RaynlpError:
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        return RaynlpError(f"run.output {self.root} cannot be used: {reason}")


def _comparable(config) -> dict:
    """What makes two configs the same run: all but where it runs, how long it runs for, and how it is kept and
    watched (checkpoints, the export, tracking)."""
    tree = config.model_dump()
    for section in ("run", "tracking"):
        tree.pop(section, None)
    for field in ("epochs", "early_stopping_patience", "checkpoint_every_steps", "checkpoint_every_minutes",
                  "log_every_steps", "export", "monitor", "monitor_mode"):
        tree["train"].pop(field, None)
    return tree
