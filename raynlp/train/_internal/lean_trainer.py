"""Ray Train's `JaxTrainer` without the helper actors a run has no use for.

Ray Train starts, beside its controller and the workers, helpers of its own for every run, each a process that
imports Ray Train when it starts. A raynlp run leaves out those with nothing to do:

- the dataset manager (Ray Data's split for each worker), when no split streams through Ray Data: a split kept in
  memory is read by the workers themselves (`feeding.ParquetShard`);
- the placement-group cleaner, which frees the run's reserved resources should the controller die while the
  cluster lives on, and the preemption watcher, which stops the run in good order when a node is drained, on a
  cluster this process started (`started_here`): one node, which ends with the process and which nobody drains.

On a cluster the run joins (`ray start`, KubeRay, `run.address`) both are kept. A notebook's own `ray.init()`
cluster counts as started there: should its controller die mid-run, the run's placement group stays reserved
until the kernel ends, which is when that cluster ends.
"""

import contextlib
import os

from ray.train.v2._internal.callbacks.datasets import DatasetsCallback
from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback
from ray.train.v2._internal.constants import ENABLE_PREEMPTION_WATCHER_ENV_VAR
from ray.train.v2.jax import JaxTrainer

from raynlp._internal.cluster import started_here


class LeanJaxTrainer(JaxTrainer):
    def _create_default_callbacks(self):
        own_cluster = started_here()
        return [callback for callback in super()._create_default_callbacks()
                if not (isinstance(callback, DatasetsCallback) and not self.datasets)
                and not (isinstance(callback, PlacementGroupCleanerCallback) and own_cluster)]

    def fit(self):
        # The controller reads the switch from its environment, which Ray Train copies from this process's.
        with _environment(ENABLE_PREEMPTION_WATCHER_ENV_VAR, "0") if started_here() else contextlib.nullcontext():
            return super().fit()


@contextlib.contextmanager
def _environment(name: str, value: str):
    """`name=value` in this process's environment for the block, unless the user set `name` (theirs wins)."""
    if name in os.environ:
        yield
        return
    os.environ[name] = value
    try:
        yield
    finally:
        os.environ.pop(name, None)
