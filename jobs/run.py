"""Ray job entry point for every raynlp task; the config's own `task:` says which (or name it first).

    ray job submit --address http://HEAD:8265 --working-dir . -- python jobs/run.py --config configs/finetune.yaml
    raynlp submit --address http://HEAD:8265 --config configs/finetune.yaml        (the same, checked first)

Takes what `raynlp TASK` takes (--config FILE, --set KEY=VALUE, ...); joins the cluster it runs on (RAY_ADDRESS).
A serve job deploys the app and ends, leaving it up on the cluster.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the raynlp/ uploaded beside jobs/ comes first

from raynlp.cli import main
from raynlp.tasks import job_command

if __name__ == "__main__":
    sys.exit(main(job_command(sys.argv[1:])))
