"""JAX's persistent compilation cache, kept in raynlp's home on each node.

A process that builds or runs a model that a process on the same node compiled before loads the compiled programs
instead of compiling them again: the worker group Ray Train restarts after a failure, a resumed run, every
evaluation actor and Serve replica of the same classifier. JAX's own settings win: `JAX_COMPILATION_CACHE_DIR`
puts the cache elsewhere, `JAX_ENABLE_COMPILATION_CACHE=false` turns it off.
"""

from raynlp._internal.home import cache_dir


def use_compilation_cache() -> None:
    """Point JAX's persistent compilation cache at `<raynlp home>/jax` in this process, unless it has a folder
    already (JAX_ENABLE_COMPILATION_CACHE=false still turns it off); a no-op on another Keras backend. Call it
    before the first model is built."""
    import keras

    if keras.backend.backend() != "jax":
        return
    import jax

    if jax.config.jax_compilation_cache_dir:  # the user's own (JAX_COMPILATION_CACHE_DIR)
        return
    jax.config.update("jax_compilation_cache_dir", str(cache_dir("jax")))
    # Keras compiles one small program per weight initializer when it builds a model; JAX's default keeps only
    # programs that took a second or more to compile, which would leave those out.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
