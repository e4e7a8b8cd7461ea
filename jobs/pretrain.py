"""Ray job entrypoint: masked-LM pretraining of a backbone, from scratch or continued (guide level 5).

    ray job submit --address http://HEAD:8265 --working-dir . -- python jobs/pretrain.py --config configs/pretrain.yaml
    raynlp submit --address http://HEAD:8265 --config configs/pretrain.yaml        (the same, checked first)

Takes what `raynlp pretrain` takes (--config FILE, --set KEY=VALUE, ...); joins the cluster it runs on (RAY_ADDRESS).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the raynlp/ uploaded beside jobs/ comes first

from raynlp.cli import main

if __name__ == "__main__":
    sys.exit(main(["pretrain", *sys.argv[1:]]))
