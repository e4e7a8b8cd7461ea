"""Ray job entrypoint: train a user model built around a preset's backbone (guide level 4).

    ray job submit --address http://HEAD:8265 --working-dir . -- python jobs/fit.py --config configs/fit.yaml
    raynlp submit --address http://HEAD:8265 --config configs/fit.yaml        (the same, checked first)

Takes what `raynlp fit` takes (--config FILE, --set KEY=VALUE, ...); joins the cluster it runs on (RAY_ADDRESS).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the raynlp/ uploaded beside jobs/ comes first

from raynlp.cli import main

if __name__ == "__main__":
    sys.exit(main(["fit", *sys.argv[1:]]))
