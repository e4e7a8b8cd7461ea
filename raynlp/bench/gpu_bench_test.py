"""`raynlp bench gpu`, the device check, on a machine without a GPU: refused without one, and every step run at
toy size (`--smoke`), so that a GPU's scarce minutes are not lost to a bug in the check itself."""

import json
import subprocess
import sys

import pytest

from raynlp.bench.gpu_bench import MASKED_LM, STEPS, run_gpu_bench

pytestmark = pytest.mark.slow  # a benchmark


def test_without_a_gpu_the_check_is_refused_and_its_options_belong_to_it():
    done = subprocess.run([sys.executable, "-m", "raynlp.cli", "bench", "gpu"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        "raynlp: error: raynlp bench gpu needs a GPU that JAX sees (it sees only the CPU here; install the gpu extra: "
        "pip install 'raynlp[gpu]'); --smoke runs every step at toy size on this machine")
    done = subprocess.run([sys.executable, "-m", "raynlp.cli", "bench", "train", "--smoke"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == "raynlp: error: --smoke is for raynlp bench gpu only"


def test_every_step_runs_at_toy_size(ray_cluster, serve_port, tmp_path):
    report = json.loads(run_gpu_bench(tmp_path, smoke=True, peak_tflops=1.0).read_text())
    steps = report["steps"]
    assert list(steps) == list(STEPS) and not [s for s in steps.values() if "error" in s], steps
    assert report["gpu"] is None and steps["devices"]["tensorflow_visible_gpus"] == []
    assert steps["finetune"]["examples_per_second"] > 0 and steps["finetune"]["precision"] == "bfloat16"
    # The model's FLOPs a step, counted here from the sizes: 6 a parameter a token outside the embeddings (2 layers
    # of attention 4·d² + 4·d and feed-forward 2·d·i + i + d, 2 layer norms each, the embeddings' layer norm),
    # attention's 12·layers·d·length a token, the head's transform and vocabulary projection at the masked slots.
    s, lm = MASKED_LM["smoke"], steps["masked_lm_steps"]
    d, i, v, n, length, slots = (s[k] for k in ("hidden_dim", "intermediate_dim", "vocabulary_size", "num_layers",
                                                "sequence_length", "max_selections"))
    body = n * (4 * d * d + 4 * d + 2 * d * i + i + d + 2 * 2 * d) + 2 * d + (d * d + d)  # + the pooler
    assert lm["parameters_outside_embeddings"] == body
    tokens = s["batch_size"] * length
    flops = 6 * body * tokens + 12 * n * d * length * tokens + 6 * (d * d + d * v) * s["batch_size"] * slots
    assert lm["model_tflops_per_step"] == round(flops / 1e12, 3)
    assert lm["model_flops_utilization"] == pytest.approx(lm["achieved_tflops"] / 1.0, abs=0.01)  # peak given: 1
    assert lm["real_tokens_per_second"] == pytest.approx(s["batch_size"] * (length - 2) / lm["seconds_per_step"],
                                                         rel=0.01)
    assert steps["serve"]["bare_model"]["texts_per_second_by_batch_size"]["1"] > 0
    assert (tmp_path / "gpu.png").stat().st_size > 0
