"""JAX's compilation cache lands in raynlp's home, and JAX's own switch turns it off (each case in a fresh process:
JAX reads its cache settings once)."""

import os
import subprocess
import sys

import pytest

SCRIPT = """
import jax, jax.numpy as jnp
from raynlp._internal.compilation_cache import use_compilation_cache
use_compilation_cache()
jax.jit(lambda x: jnp.tanh(x) * 3 + 1)(jnp.ones(7)).block_until_ready()
"""


@pytest.mark.parametrize("enabled", [True, False])
def test_compiled_programs_are_kept_in_raynlp_home_unless_jax_is_told_not_to(tmp_path, enabled):
    env = {**os.environ, "RAYNLP_HOME": str(tmp_path), "KERAS_BACKEND": "jax"}
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    if not enabled:
        env["JAX_ENABLE_COMPILATION_CACHE"] = "false"
    subprocess.run([sys.executable, "-c", SCRIPT], env=env, check=True, capture_output=True)
    kept = list((tmp_path / "jax").glob("*")) if (tmp_path / "jax").exists() else []
    assert bool(kept) == enabled, kept
