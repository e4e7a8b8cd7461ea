"""Data at scale: corpora as Ray Datasets, fast tokenization on actor pools, vocabulary learning."""

from raynlp.data.config import MaskingSettings
from raynlp.data.corpus import read_corpus
from raynlp.data.tokenize import tokenize_dataset, write_tokenized

__all__ = ["MaskingSettings", "learn_vocabulary", "read_corpus", "save_vocabulary", "tokenize_dataset",
           "write_tokenized"]


def __getattr__(name):
    # The vocabulary learner pulls in TensorFlow: import it only when asked for.
    if name in ("learn_vocabulary", "save_vocabulary"):
        from raynlp.data import vocabulary

        return getattr(vocabulary, name)
    raise AttributeError(name)
