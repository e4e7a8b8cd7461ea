"""`make demo`: the data half of the KerasNLP journey on a local Ray cluster, on real text.

1. fetch the pretrained `minilm_l6_en_uncased` preset and the `rotten_tomatoes` / `movie_reviews` data sets;
2. tokenize Rotten Tomatoes with the preset's vocabulary on a pool of Ray Data actors into Parquet shards;
3. tokenize the full movie reviews with masked-LM masking (the input of domain pretraining);
4. learn a WordPiece vocabulary from the reviews (the guide's level 6), counting words on Ray Data.

Training, evaluation and serving join this demo as they land (see the open issues).
"""

import json
import logging
import shutil
import time
from pathlib import Path

logger = logging.getLogger(__name__)


def run_demo(output_dir: str = "runs/demo", address: str | None = None) -> dict:
    from raynlp import datasets, presets
    from raynlp._internal.cluster import ensure_ray
    from raynlp.data import (
        MaskingConfig,
        learn_vocabulary,
        save_vocabulary,
        tokenize_dataset,
        write_tokenized,
    )

    out = Path(output_dir)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    steps = {}

    def step(name, fn):
        logger.info("demo step: %s", name)
        start = time.perf_counter()
        result = fn()
        steps[name] = {"seconds": round(time.perf_counter() - start, 1), **(result or {})}
        logger.info("demo step done: %s %s", name, steps[name])

    step("fetch", lambda: {"preset": presets.fetch("minilm_l6_en_uncased").as_posix(),
                           "datasets": [datasets.fetch(n).as_posix() for n in ("rotten_tomatoes", "movie_reviews")]})
    ensure_ray(address)
    for split in ("train", "test"):
        step(f"tokenize rotten_tomatoes/{split}", lambda split=split: write_tokenized(
            tokenize_dataset(datasets.load("rotten_tomatoes")[split], "minilm_l6_en_uncased", sequence_length=64),
            str(out / "tokenized" / f"rotten_tomatoes-{split}"), preset="minilm_l6_en_uncased", sequence_length=64))
    masking = MaskingConfig()
    step("tokenize movie_reviews for masked-LM", lambda: write_tokenized(
        tokenize_dataset(datasets.load("movie_reviews")["train"], "minilm_l6_en_uncased", sequence_length=256,
                         masking=masking),
        str(out / "tokenized" / "movie_reviews-mlm"), preset="minilm_l6_en_uncased", sequence_length=256,
        masking=masking))

    def vocab():
        vocabulary = learn_vocabulary(datasets.load("movie_reviews")["train"], 8000)
        return {"tokens": len(vocabulary), "file": save_vocabulary(vocabulary, out / "vocab.txt").as_posix()}

    step("learn vocabulary from movie_reviews", vocab)
    (out / "summary.json").write_text(json.dumps(steps, indent=2))
    print(f"\nDemo finished; results in {out.resolve()}:")
    for name, info in steps.items():
        print(f"  {name:40s} {info['seconds']:6.1f} s")
    return steps
