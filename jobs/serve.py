"""Ray job entrypoint: deploy the classifier on the cluster's Ray Serve and leave it running.

    ray job submit --address http://HEAD:8265 --working-dir . -- python jobs/serve.py --config configs/serve.yaml
    raynlp submit --address http://HEAD:8265 --config configs/serve.yaml        (the same, checked first)

Takes what `raynlp serve` takes (--config FILE, --set KEY=VALUE, ...); joins the cluster it runs on (RAY_ADDRESS).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the raynlp/ uploaded beside jobs/ comes first

from raynlp.cli import main

if __name__ == "__main__":
    sys.exit(main(["serve", *sys.argv[1:], "--detach"]))
