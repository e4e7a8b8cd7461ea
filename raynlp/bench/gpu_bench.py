"""raynlp's three workloads on one GPU, in one JSON, within a few minutes: the device check.

    scripts/gpu_check.sh                  # on a machine with an NVIDIA GPU: installs raynlp[gpu], then this
    raynlp bench gpu --output runs/bench  # gpu.json
    raynlp bench gpu --smoke              # every step at toy size on any device (what the test suite runs)

1. `devices`: what JAX sees, and that TensorFlow (there for keras-hub's tokenizers) sees no GPU once raynlp has
   hidden them (`keep_tensorflow_off_gpus`).
2. `finetune`: MiniLM fine-tuned on Rotten Tomatoes by `raynlp.train.train` on one GPU worker, in bfloat16:
   examples per second over the epochs after the first.
3. `masked_lm_steps`: a BERT-base-sized masked LM (12 layers, hidden 768) in this process, in bfloat16, on full
   windows of random ids: real tokens per second and model FLOPs utilisation, the model's own training FLOPs
   (6 a parameter a token outside the embeddings, 12 × layers × hidden × sequence length a token for attention,
   and the vocabulary projection at the masked slots) over the GPU's dense bfloat16 peak.
4. `serve`: `raynlp bench serve` with its two replicas (batched, unbatched) sharing the GPU, half each: batched
   against unbatched at concurrency 32.

Each step's failure is written into the JSON in its place and the next step runs: a device's minutes are scarce.
Several processes share the one GPU (this one, the training worker, the Serve replicas), so none takes most of
its memory when it starts.
"""

from __future__ import annotations

import json
import logging
import os
import time
import traceback
from pathlib import Path

import numpy as np

from raynlp.bench._report import machine, write_report
from raynlp.errors import RaynlpError

logger = logging.getLogger(__name__)

# Dense bfloat16 tensor-core peaks (TFLOP/s), by what JAX's `device_kind` says.
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0}

# (full, smoke) sizes of each step.
FINETUNE = {"full": {"preset": "minilm_l6_en_uncased", "rows": 3200, "sequence_length": 128, "batch_size": 64,
                     "epochs": 2},
            "smoke": {"preset": "bert_tiny_en_uncased_scratch", "rows": 64, "sequence_length": 32, "batch_size": 16,
                      "epochs": 2}}
MASKED_LM = {"full": {"num_layers": 12, "hidden_dim": 768, "num_heads": 12, "intermediate_dim": 3072,
                      "vocabulary_size": 30522, "sequence_length": 128, "batch_size": 128, "max_selections": 20,
                      "warm_up_steps": 5, "steps": 60},
             "smoke": {"num_layers": 2, "hidden_dim": 32, "num_heads": 2, "intermediate_dim": 64,
                       "vocabulary_size": 1000, "sequence_length": 32, "batch_size": 4, "max_selections": 5,
                       "warm_up_steps": 1, "steps": 2}}
SERVE = {"full": {"preset": "minilm_l6_en_uncased", "levels": (1, 32), "seconds": 10.0},
         "smoke": {"preset": "bert_tiny_en_uncased_scratch", "levels": (1,), "seconds": 1.0}}
STEPS = ("devices", "finetune", "masked_lm_steps", "serve")


def run_gpu_bench(output_dir: Path, smoke: bool = False, peak_tflops: float | None = None) -> Path:
    """Run every step (at toy size with `smoke`, on whatever device there is) and write `gpu.json`."""
    # Before JAX starts in this process: it shares the GPU with the training worker and the Serve replica.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    from raynlp._internal.cluster import keep_tensorflow_off_gpus

    keep_tensorflow_off_gpus()
    size = "smoke" if smoke else "full"
    gpu = _gpu_name()
    if gpu is None and not smoke:
        raise RaynlpError("raynlp bench gpu needs a GPU that JAX sees (it sees only the CPU here; install the gpu "
                          "extra: pip install 'raynlp[gpu]'); --smoke runs every step at toy size on this machine")
    output_dir.mkdir(parents=True, exist_ok=True)
    report = {"benchmark": "gpu", "size": size, "gpu": gpu, "machine": machine(), "steps": {}}
    runs = {"devices": lambda: _devices(),
            "finetune": lambda: _finetune(output_dir, FINETUNE[size], use_gpu=gpu is not None),
            "masked_lm_steps": lambda: _masked_lm_steps(MASKED_LM[size], gpu, peak_tflops),
            "serve": lambda: _serve(output_dir, SERVE[size], num_gpus=1 if gpu else 0)}
    for step in STEPS:
        start = time.perf_counter()
        logger.info("gpu bench: %s", step)
        try:
            report["steps"][step] = runs[step]()
        except Exception as error:  # the next step still runs: a device's minutes are scarce
            logger.exception("gpu bench: %s failed", step)
            report["steps"][step] = {"error": f"{type(error).__name__}: {error}",
                                     "traceback": traceback.format_exc()[-3000:]}
        report["steps"][step]["seconds"] = round(time.perf_counter() - start, 1)
        (output_dir / "gpu.json").write_text(json.dumps(report, indent=2))  # what stands so far, should it die
    return write_report(output_dir, "gpu", report, _plot)


def _gpu_name() -> str | None:
    import jax

    gpus = [d for d in jax.devices() if d.platform == "gpu"]
    return gpus[0].device_kind if gpus else None


def _devices() -> dict:
    import jax
    import keras
    import tensorflow as tf

    return {"jax_devices": [f"{d.platform}:{d.device_kind}" for d in jax.devices()],
            "keras_devices": keras.distribution.list_devices(),
            "tensorflow_visible_gpus": [d.name for d in tf.config.get_visible_devices("GPU")],
            "tensorflow_physical_gpus": [d.name for d in tf.config.list_physical_devices("GPU")]}


def _finetune(output_dir: Path, size: dict, use_gpu: bool) -> dict:
    from raynlp.train import load_config, train

    out = (output_dir / "gpu_finetune").resolve()
    config = load_config(Path(__file__).resolve().parents[2] / "configs" / "finetune.yaml", [
        f"preset={size['preset']}", f"data.max_train_rows={size['rows']}", "data.max_test_rows=256",
        f"data.sequence_length={size['sequence_length']}", f"train.batch_size={size['batch_size']}",
        f"train.epochs={size['epochs']}", "train.precision=bfloat16", "scaling.num_workers=1",
        f"scaling.use_gpu={str(use_gpu).lower()}", f"run.output={out}", "run.max_failures=0"])
    result = train(config)
    steady = result.metrics[1:] or result.metrics
    return {"preset": size["preset"], "rows": size["rows"], "sequence_length": size["sequence_length"],
            "batch_size": size["batch_size"], "precision": "bfloat16",
            "examples_per_second": round(float(np.mean([m["examples_per_second"] for m in steady])), 1),
            "val_accuracy": result.final.get("val_accuracy"), "preset_dir": str(result.preset)}


def _masked_lm_steps(size: dict, gpu: str | None, peak_tflops: float | None) -> dict:
    """Training steps of a BERT masked LM on full windows, timed after a warm-up."""
    import keras
    import keras_hub

    from raynlp.data.masked_lm import mask_tokens

    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        keras.utils.set_random_seed(0)
        dims = {k: size[k] for k in ("num_layers", "hidden_dim", "num_heads", "intermediate_dim", "vocabulary_size")}
        backbone = keras_hub.models.BertBackbone(**dims, max_sequence_length=512)
        model = keras_hub.models.BertMaskedLM(backbone, preprocessor=None)
        model.compile(optimizer=keras.optimizers.AdamW(1e-4), weighted_metrics=[],
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True,
                                                                      reduction="mean_with_sample_weight"))
        batch, length, slots = size["batch_size"], size["sequence_length"], size["max_selections"]
        rng = np.random.default_rng(0)
        ids = rng.integers(5, size["vocabulary_size"], (batch, length), dtype=np.int32)
        ids[:, 0], ids[:, -1] = 2, 3  # [CLS] ... [SEP]
        masked = mask_tokens(ids, vocabulary_size=size["vocabulary_size"], mask_token_id=4,
                             unselectable_token_ids=[2, 3], max_selections=slots, rng=rng)
        x = {"token_ids": masked["token_ids"], "segment_ids": np.zeros_like(ids), "padding_mask": np.ones_like(ids),
             "mask_positions": masked["mask_positions"]}
        y, w = masked["mask_ids"], masked["mask_weights"]
        for _ in range(size["warm_up_steps"]):
            model.train_on_batch(x, y, sample_weight=w)
        start = time.perf_counter()
        for _ in range(size["steps"]):
            loss = model.train_on_batch(x, y, sample_weight=w)
        float(np.asarray(loss))  # the last step has finished
        seconds = (time.perf_counter() - start) / size["steps"]
    finally:
        keras.mixed_precision.set_global_policy("float32")
    body = sum(int(np.prod(v.shape)) for v in backbone.weights) - sum(
        int(np.prod(v.shape)) for layer in (backbone.token_embedding, backbone.position_embedding,
                                            backbone.segment_embedding) for v in layer.weights)
    d, layers, vocabulary = size["hidden_dim"], size["num_layers"], size["vocabulary_size"]
    flops = (6 * body * batch * length + 12 * layers * d * length * batch * length
             + 6 * (d * d + d * vocabulary) * batch * slots)
    peak = peak_tflops or _peak_tflops(gpu)
    achieved = flops / seconds / 1e12
    return {**size, "parameters_outside_embeddings": body, "seconds_per_step": round(seconds, 6),
            "real_tokens_per_second": round(batch * (length - 2) / seconds, 1),
            "model_tflops_per_step": round(flops / 1e12, 3), "achieved_tflops": round(achieved, 2),
            "peak_bf16_tflops": peak, "model_flops_utilization": round(achieved / peak, 4) if peak else None}


def _peak_tflops(gpu: str | None) -> float | None:
    if gpu is None:
        return None
    for name, peak in PEAK_BF16_TFLOPS.items():  # the more specific names first
        if name in gpu:
            return peak
    return None


def _serve(output_dir: Path, size: dict, num_gpus: float) -> dict:
    from raynlp.bench.serve_bench import run_serve_bench

    path = run_serve_bench(output_dir / "gpu_serve", preset=size["preset"], levels=size["levels"],
                           seconds=size["seconds"], num_gpus=num_gpus)
    report = json.loads(path.read_text())
    return {"preset": size["preset"], "replica_gpus": report["replica_gpus"], "levels": list(size["levels"]),
            **{k: v for k, v in report.items() if k.startswith(("batched", "serve_overhead", "bare_model"))},
            "report": str(path)}


def _plot(report: dict, path: Path) -> None:
    """The headline figure of each step that ran, as a labelled bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = report["steps"]
    figures = {"fine-tune, examples/s": steps["finetune"].get("examples_per_second"),
               "masked LM, 1000 real tokens/s": (steps["masked_lm_steps"].get("real_tokens_per_second") or 0) / 1000,
               "masked LM, model FLOPs utilisation %": 100 * (steps["masked_lm_steps"].get("model_flops_utilization")
                                                             or 0),
               "serve, batched / unbatched at the top level": next(
                   (v for k, v in steps["serve"].items() if k.startswith("batched_vs_unbatched")), 0)}
    fig, ax = plt.subplots(figsize=(8, 3))
    bars = ax.barh(list(figures), [v or 0 for v in figures.values()], color="#1f77b4")
    for bar, value in zip(bars, figures.values()):
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {value or 0:.3g}", va="center")
    ax.invert_yaxis()
    ax.set_xscale("symlog")
    ax.set_title(f"raynlp bench gpu ({report['size']}) on {report['gpu'] or 'CPU'}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
