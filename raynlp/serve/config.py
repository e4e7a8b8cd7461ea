"""The serving config: what to serve, how requests are batched, how replicas scale, what a request may hold.

One YAML (`configs/serve.yaml`), overridable with `--set a.b=value`, validated before Ray starts. The same
config runs `raynlp serve` here and, exported with `raynlp serve --export`, a Serve app on any cluster.
"""

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from raynlp._internal import config_file
from raynlp._internal.cluster import ADDRESS_HELP
from raynlp._internal.config_file import Section

MODEL_NAME = re.compile(r"[A-Za-z0-9_.-]+")


class BatchingSettings(Section):
    """Dynamic batching (`raynlp.serve.batcher`): texts from concurrent requests are classified together."""

    enabled: bool = Field(True, description="off: every request is classified on its own (for comparison)")
    max_batch_size: int = Field(32, ge=1, le=1024, description="texts per model call; predict is compiled for "
                                                               "a few sizes up to it (`batch_buckets`)")
    wait_timeout_ms: float = Field(5.0, ge=0, le=10_000, description="how long a batch that is not full waits "
                                                                    "for more, from its first text's arrival")


class AutoscalingSettings(Section):
    """Serve's request-based autoscaling (`autoscaling_config`)."""

    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(2, ge=1)
    initial_replicas: int | None = Field(None, ge=0)
    target_ongoing_requests: float = Field(16, gt=0, description="requests in flight per replica that the "
                                                                 "autoscaler aims at")
    upscale_delay_s: float = Field(30, ge=0, description="how long the load must stay above the target before a "
                                                         "replica is added (Serve's default)")
    downscale_delay_s: float = Field(600, ge=0, description="how long it must stay below before one is removed "
                                                            "(Serve's default)")

    @model_validator(mode="after")
    def _ordered(self):
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) is above max_replicas ({self.max_replicas})")
        if self.initial_replicas is not None and not self.min_replicas <= self.initial_replicas <= self.max_replicas:
            raise ValueError("initial_replicas must lie between min_replicas and max_replicas")
        return self


class ReplicaSettings(Section):
    num_cpus: float = Field(1, ge=0)
    num_gpus: float = Field(0, ge=0, description="GPUs per replica (fractions share one GPU)")
    max_ongoing_requests: int = Field(64, ge=1, description="requests one replica takes at once; at least "
                                                            "batching.max_batch_size so that a batch can fill")


class LimitSettings(Section):
    """What one request may hold; more is refused with a 413, before it reaches the model."""

    max_texts: int = Field(64, ge=1, description="texts per request")
    max_body_bytes: int = Field(1_000_000, ge=64, description="request body size")


class HttpSettings(Section):
    host: str = Field("127.0.0.1", description="address Serve's HTTP proxy binds; 0.0.0.0 to accept outside calls")
    port: int = Field(8000, ge=1, le=65535)


class HealthSettings(Section):
    """Serve's health check of each replica: the model classifies a fixed probe text; a replica whose model cannot
    answer (an error, or probabilities that are not finite or do not sum to 1) is replaced."""

    period_s: float = Field(10, gt=0, description="seconds between probes of a replica")
    timeout_s: float = Field(30, gt=0, description="a probe that takes longer fails")


class AuthSettings(Section):
    """An optional bearer token: set, every route but /healthz answers 401 without `Authorization: Bearer TOKEN`."""

    token_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
                                  description="name of the environment variable that holds the token (the token "
                                              "itself never goes into a config or an exported file)")


class ServeConfig(Section):
    task: Literal["serve"] = "serve"
    preset: str | None = Field(None, description="a classifier folder (a training run's preset/, also as a storage "
                                                 "URI: s3://bucket/runs/x/preset) or keras-hub classifier preset")
    models: dict[str, str] = Field(default_factory=dict, description="several classifiers in one app, name → "
                                   "preset (instead of preset): POST /v1/models/NAME/classify; the first is also "
                                   "/v1/classify; every replica holds them all")
    name: str = Field("raynlp", pattern=r"^[A-Za-z0-9_.-]+$", description="Serve application name")
    route_prefix: str = Field("/", pattern=r"^/")
    sequence_length: int | None = Field(None, ge=8, le=4096, description="default: the length the model was "
                                                                         "trained with")
    batching: BatchingSettings = BatchingSettings()
    autoscaling: AutoscalingSettings = AutoscalingSettings()
    replica: ReplicaSettings = ReplicaSettings()
    limits: LimitSettings = LimitSettings()
    http: HttpSettings = HttpSettings()
    health: HealthSettings = HealthSettings()
    auth: AuthSettings = AuthSettings()
    access_log: bool = Field(False, description="log every request in the replica (costs CPU at high request rates)")
    address: str | None = Field(None, description=ADDRESS_HELP)

    @model_validator(mode="after")
    def _one_way_to_name_models(self):
        if (self.preset is None) == (not self.models):
            raise ValueError("give preset (one classifier) or models (name: preset, several), not both or neither")
        for name in self.models:
            if not MODEL_NAME.fullmatch(name):
                raise ValueError(f"model name {name!r}: use letters, digits, '_', '.' and '-' (it is a URL path part)")
        return self

    def presets(self) -> dict[str | None, str]:
        """What to serve, name → preset; a lone `preset` under None (it goes by its classifier's own name)."""
        return dict(self.models) if self.models else {None: self.preset}

    @model_validator(mode="after")
    def _batch_fits(self):
        if self.batching.enabled and self.replica.max_ongoing_requests < self.batching.max_batch_size:
            raise ValueError(f"replica.max_ongoing_requests ({self.replica.max_ongoing_requests}) is below "
                             f"batching.max_batch_size ({self.batching.max_batch_size}): a batch could never fill")
        return self


def load_serve_config(path: str | Path | None = None, overrides: list[str] | None = None,
                      values: dict | None = None) -> ServeConfig:
    """Read a serve YAML, apply `--set` overrides and flag `values`, validate. Nothing starts before this succeeds."""
    return config_file.load(ServeConfig, path, overrides, values)
