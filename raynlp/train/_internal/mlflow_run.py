"""The training run's MLflow run (`tracking.mlflow_uri`), opened and closed by the driver; rank 0 logs the
metrics into it (`callbacks.MLflowRun`).

MLflow's own client, not Ray's integration: `ray.air.integrations.mlflow` has a Tune callback (Ray Train v2 runs
no Tune callbacks) and `setup_mlflow`, which starts a run inside the training function, so that every attempt of
a restarted worker group would start another. Here one output folder is one MLflow run: its id is kept in the
folder, and a resumed run (restarted, or the command run again) logs on into it.
"""

from __future__ import annotations

import json

from raynlp._internal import storage

RUN_FILE = "mlflow_run.json"


def open_run(config, run) -> str | None:
    """The MLflow run of `run` (a `RunFolder`): created with the config as its params, or the one it had."""
    tracking = config.tracking
    if tracking.mlflow_uri is None:
        return None
    from mlflow.entities import Param
    from mlflow.tracking import MlflowClient

    client, kept = MlflowClient(tracking.mlflow_uri), run.join(RUN_FILE)
    if storage.exists(kept):
        run_id = json.loads(storage.read_text(kept))["run_id"]
        client.update_run(run_id, status="RUNNING")
        return run_id
    experiment = client.get_experiment_by_name(tracking.mlflow_experiment)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(tracking.mlflow_experiment)
    created = client.create_run(experiment_id, run_name=str(run.root).rstrip("/").rsplit("/", 1)[-1],
                                tags={"raynlp.task": config.task, "raynlp.output": str(run.root)})
    params = [Param(name, str(value)) for name, value in _flat(config.model_dump()).items()]
    client.log_batch(created.info.run_id, params=params)
    storage.write_text(kept, json.dumps({"run_id": created.info.run_id, "uri": tracking.mlflow_uri}))
    return created.info.run_id


def close_run(config, run_id: str | None, *, preset: str | None = None, failed: bool = False) -> None:
    if run_id is None:
        return
    from mlflow.tracking import MlflowClient

    client = MlflowClient(config.tracking.mlflow_uri)
    if preset is not None:
        client.set_tag(run_id, "raynlp.preset", preset)
    client.set_terminated(run_id, status="FAILED" if failed else "FINISHED")


def _flat(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
