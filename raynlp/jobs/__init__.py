"""Jobs on a Ray cluster: every task by its config, and submitting them through the Ray Job API."""
