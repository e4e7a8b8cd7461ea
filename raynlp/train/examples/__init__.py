"""Model builders that the configs in `configs/` name (`model.builder: raynlp.train.examples.MODULE:build`)."""
