"""Inference with trained classifiers: in one process, and over a Ray Dataset with an actor pool."""

from raynlp.inference.batch import evaluate, predict_dataset
from raynlp.inference.classifier import TextClassifier

__all__ = ["TextClassifier", "evaluate", "predict_dataset"]
