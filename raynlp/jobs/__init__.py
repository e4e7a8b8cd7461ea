"""Jobs on a Ray cluster: submitting any task of `raynlp.tasks` through the Ray Job API, and following it."""
