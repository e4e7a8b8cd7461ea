"""Private data-parallel training core: used by the training tasks, not a public API."""
