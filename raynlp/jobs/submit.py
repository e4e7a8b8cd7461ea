"""Submit raynlp jobs to a Ray cluster through the Ray Job API, and follow them.

    >>> job = submit("configs/finetune.yaml", address="http://head:8265", overrides=["scaling.num_workers=8"])
    >>> follow(job)          # streams the job's logs, returns its final status

A job is `python jobs/run.py --config FILE [--set ...]` (the file names its task), run on the cluster in a copy of the working
directory (the repository: `raynlp/`, `jobs/`, `configs/`), so the cluster runs this very code. The config is
checked here against its task's schema before anything is submitted.
"""

import asyncio
import logging
import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from raynlp._internal.cluster import WORKER_ENV
from raynlp.errors import RaynlpError

logger = logging.getLogger(__name__)

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
# Never uploaded with the working directory: environments, run outputs, caches (Ray also honours .gitignore).
EXCLUDES = [".venv", "venv", "runs", ".git", "**/__pycache__", "*.egg-info", ".pytest_cache", ".ruff_cache"]


@dataclass(frozen=True)
class Job:
    address: str
    job_id: str
    task: str


def client(address: str | None = None):
    """A Ray Job Submission client for a dashboard address (http://HOST:8265), with the cluster's auth token
    when there is one (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token, as Ray itself looks)."""
    from ray.job_submission import JobSubmissionClient

    address = address or os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS")
    if not address:
        raise RaynlpError("no cluster address: give --address http://HEAD:8265 or set RAY_ADDRESS")
    try:
        return JobSubmissionClient(address, headers=_auth_headers())
    except ConnectionError as e:
        raise RaynlpError(f"cannot reach the Ray dashboard at {address}: {str(e).splitlines()[0]}") from None


def _auth_headers() -> dict:
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        return {}
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or str(Path.home() / ".ray" / "auth_token")
    if not token and os.path.isfile(path):
        token = Path(path).read_text().strip()
    return {"Authorization": f"Bearer {token}"} if token else {}


ENTRYPOINT = "jobs/run.py"


def entrypoint(config: str, overrides: list[str]) -> str:
    sets = "".join(f" --set {shlex.quote(item)}" for item in overrides)
    return f"python {ENTRYPOINT} --config {shlex.quote(config)}{sets}"


def runtime_env(working_dir: str | Path = ".", env: dict[str, str] | None = None) -> dict:
    return {"working_dir": str(working_dir), "excludes": list(EXCLUDES), "env_vars": {**WORKER_ENV, **(env or {})}}


def submit(config: str | Path, *, address: str | None = None, overrides: list[str] | None = None,
           working_dir: str | Path = ".", env: dict[str, str] | None = None, job_id: str | None = None) -> Job:
    """Check `config` here, then submit the job that runs it. Returns at once; see `follow`."""
    from raynlp.tasks import load_task_config, task_of

    overrides = list(overrides or [])
    task = task_of(config)
    load_task_config(task, config, overrides)  # a wrong config is refused before anything reaches the cluster
    root = Path(working_dir).resolve()
    try:
        relative = Path(config).resolve().relative_to(root)
    except ValueError:
        raise RaynlpError(f"config {config} lies outside the working directory {root}, which is what the cluster "
                          "gets; put it under the working directory") from None
    if not (root / ENTRYPOINT).is_file():
        raise RaynlpError(f"{root} has no {ENTRYPOINT}: run raynlp submit from the raynlp repository "
                          "(or give --working-dir)")
    jobs = client(address)
    command = entrypoint(relative.as_posix(), overrides)
    submitted = _submit_when_ready(jobs, entrypoint=command, runtime_env=runtime_env(root, env),
                                   submission_id=job_id,
                                   metadata={"raynlp_task": task, "raynlp_config": relative.as_posix()})
    logger.info("submitted %s as job %s to %s: %s", task, submitted, jobs.get_address(), command)
    return Job(address=jobs.get_address(), job_id=submitted, task=task)


def _submit_when_ready(jobs, timeout_s: float = 60, **job) -> str:
    """Submit, waiting out a head that has just started: its job agent answers a few seconds after the
    dashboard does ("No available agent to submit job")."""
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return jobs.submit_job(**job)
        except RuntimeError as e:
            if "No available agent" not in str(e) or time.monotonic() > deadline:
                raise
            logger.info("the cluster's job agent is not up yet; retrying")
            time.sleep(2)


def follow(job: Job, out=None) -> str:
    """Stream the job's logs to `out` (standard output) until it ends; its final status (SUCCEEDED, FAILED or
    STOPPED)."""
    jobs = client(job.address)
    out = out or sys.stdout

    async def tail():
        async for lines in jobs.tail_job_logs(job.job_id):
            out.write(lines)
            out.flush()

    asyncio.run(tail())
    return wait(job)


def wait(job: Job, timeout_s: float | None = None) -> str:
    import time

    jobs = client(job.address)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while (status := str(jobs.get_job_status(job.job_id).value)) not in TERMINAL:
        if deadline is not None and time.monotonic() > deadline:
            raise RaynlpError(f"job {job.job_id} still {status} after {timeout_s:.0f} s")
        time.sleep(1)
    return status
