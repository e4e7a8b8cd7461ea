"""Ray job entrypoint: classify a corpus into Parquet with a Ray Data actor pool.

    ray job submit --address http://HEAD:8265 --working-dir . -- python jobs/predict.py --config configs/predict.yaml
    raynlp submit --address http://HEAD:8265 --config configs/predict.yaml        (the same, checked first)

Takes what `raynlp predict` takes (--config FILE, --set KEY=VALUE, ...); joins the cluster it runs on (RAY_ADDRESS).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the raynlp/ uploaded beside jobs/ comes first

from raynlp.cli import main

if __name__ == "__main__":
    sys.exit(main(["predict", *sys.argv[1:]]))
