"""Ray job entrypoint: fine-tune a preset's backbone as a text classifier (guide levels 2 and 3).

    ray job submit --address http://HEAD:8265 --working-dir . -- python jobs/finetune.py --config configs/finetune.yaml
    raynlp submit --address http://HEAD:8265 --config configs/finetune.yaml        (the same, checked first)

Takes what `raynlp finetune` takes (--config FILE, --set KEY=VALUE, ...); joins the cluster it runs on (RAY_ADDRESS).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the raynlp/ uploaded beside jobs/ comes first

from raynlp.cli import main

if __name__ == "__main__":
    sys.exit(main(["finetune", *sys.argv[1:]]))
