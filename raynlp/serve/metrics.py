"""What a serving replica counts and times, exported through Ray's metrics agent on its node.

Prometheus scrapes every node's agent (`ray.nodes()[i]["MetricsExportPort"]`, `ray start --metrics-export-port`);
Ray prefixes each name with `ray_` and Serve tags each series with its application, deployment and replica;
raynlp adds the model's name (`model`) where a model did the work:

    ray_raynlp_texts_classified_total{model}        texts classified
    ray_raynlp_requests_refused_total{status}       requests refused: 400, 401, 404 (no such model), 413
    ray_raynlp_batch_size_bucket{model,le}          texts per model call
    ray_raynlp_model_seconds_bucket{model,le}       seconds per model call
    ray_raynlp_queue_wait_seconds_bucket{model,le}  seconds a text waited for its batch's model call to start
    ray_raynlp_queued_texts{model}                  texts waiting for a model call now (a gauge)
"""

from functools import cache

BATCH_SIZES = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]
SECONDS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]


class ReplicaMetrics:
    def __init__(self):
        from ray.serve import metrics

        self.texts_classified = metrics.Counter("raynlp_texts_classified", description="texts classified",
                                                tag_keys=("model",))
        self.requests_refused = metrics.Counter(
            "raynlp_requests_refused", description="requests refused (400, 401, 404, 413), by status", tag_keys=("status",))
        self.batch_size = metrics.Histogram("raynlp_batch_size", description="texts per model call",
                                            boundaries=BATCH_SIZES, tag_keys=("model",))
        self.model_seconds = metrics.Histogram("raynlp_model_seconds", description="seconds per model call",
                                               boundaries=SECONDS, tag_keys=("model",))
        self.queue_wait_seconds = metrics.Histogram(
            "raynlp_queue_wait_seconds", description="seconds a text waited for its batch's model call to start",
            boundaries=SECONDS, tag_keys=("model",))
        self.queued_texts = metrics.Gauge("raynlp_queued_texts", description="texts waiting for a model call",
                                          tag_keys=("model",))

    def refused(self, status: int) -> None:
        self.requests_refused.inc(tags={"status": str(status)})


@cache
def replica_metrics() -> ReplicaMetrics:
    """This process's metrics, made once: the deployment and the middleware in front of it share them (Serve runs
    copies of both, taken at import, so only this module, looked up at call time, is common to them)."""
    return ReplicaMetrics()
