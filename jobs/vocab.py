"""Ray job entrypoint: learn a WordPiece vocabulary from a corpus.

    ray job submit --address http://HEAD:8265 --working-dir . -- python jobs/vocab.py --config configs/vocab.yaml
    raynlp submit --address http://HEAD:8265 --config configs/vocab.yaml        (the same, checked first)

Takes what `raynlp vocab` takes (--config FILE, --set KEY=VALUE, ...); joins the cluster it runs on (RAY_ADDRESS).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the raynlp/ uploaded beside jobs/ comes first

from raynlp.cli import main

if __name__ == "__main__":
    sys.exit(main(["vocab", *sys.argv[1:]]))
