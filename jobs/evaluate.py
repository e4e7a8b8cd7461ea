"""Ray job entrypoint: evaluate a classifier on labelled text with a Ray Data actor pool.

    ray job submit --address http://HEAD:8265 --working-dir . -- python jobs/evaluate.py --config configs/evaluate.yaml
    raynlp submit --address http://HEAD:8265 --config configs/evaluate.yaml        (the same, checked first)

Takes what `raynlp evaluate` takes (--config FILE, --set KEY=VALUE, ...); joins the cluster it runs on (RAY_ADDRESS).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the raynlp/ uploaded beside jobs/ comes first

from raynlp.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
