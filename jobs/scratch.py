"""Ray job entrypoint: learn a vocabulary and train a small transformer from scratch (guide level 6).

    ray job submit --address http://HEAD:8265 --working-dir . -- python jobs/scratch.py --config configs/scratch.yaml
    raynlp submit --address http://HEAD:8265 --config configs/scratch.yaml        (the same, checked first)

Takes what `raynlp scratch` takes (--config FILE, --set KEY=VALUE, ...); joins the cluster it runs on (RAY_ADDRESS).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the raynlp/ uploaded beside jobs/ comes first

from raynlp.cli import main

if __name__ == "__main__":
    sys.exit(main(["scratch", *sys.argv[1:]]))
