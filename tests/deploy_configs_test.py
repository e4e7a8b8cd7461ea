"""Every cluster config and manifest in cluster/ is parsed and checked: what it runs exists and is valid, the
resources it asks for agree with each other, and the RayService serves exactly what `raynlp serve --export` writes."""

import re
import shlex
from pathlib import Path

import pytest
import ray
import yaml

from raynlp.cli import main
from raynlp.tasks import load_task_config, task_of
from raynlp.train._internal.layout import Node, check_layout

CLUSTER = Path("cluster")
KUBERAY = CLUSTER / "kuberay"
GPU_INSTANCE_FAMILIES = ("g4dn", "g5", "g6", "g6e", "p3", "p4d", "p4de", "p5")
PYTHON = "py311"


def documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def manifests() -> dict[str, dict]:
    """Kubernetes objects by kind (one of each kind here)."""
    found = {}
    for path in sorted(KUBERAY.glob("*.yaml")):
        for doc in documents(path):
            assert {"apiVersion", "kind", "metadata", "spec"} <= set(doc), path
            found[doc["kind"]] = doc
    return found


def containers(pod_template: dict) -> list[dict]:
    return pod_template["spec"]["containers"]


def gpus_of(group: dict) -> int:
    """GPUs one pod of a Ray group gets, checked to agree in Kubernetes and Ray terms."""
    limits = [int(c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0)) for c in containers(group["template"])]
    requested = sum(limits)
    in_ray = int(group.get("rayStartParams", {}).get("num-gpus", requested))
    assert in_ray == requested, f"{group.get('groupName', 'head')}: Ray num-gpus {in_ray} vs Kubernetes {requested}"
    return requested


def ray_commands(entrypoint: str) -> list[list[str]]:
    """The `python jobs/run.py ...` commands of an entrypoint (inside `bash -c "..."` and `&&` chains)."""
    words = shlex.split(entrypoint)
    if words[:2] == ["bash", "-c"]:
        words = shlex.split(words[2])
    commands, current = [], []
    for word in [*words, "&&"]:
        if word == "&&":
            if current and current[0] == "python":
                commands.append(current[1:])
            current = []
        else:
            current.append(word)
    return commands


def parse_job(args: list[str]) -> tuple[str, str, list[str]]:
    script, rest = args[0], args[1:]
    config = rest[rest.index("--config") + 1]
    sets = [rest[i + 1] for i, word in enumerate(rest) if word == "--set"]
    return script, config, sets


def test_dockerfile_matches_the_installed_ray_and_python():
    base = re.search(r"^FROM (\S+)", (CLUSTER / "Dockerfile").read_text(), re.M).group(1)
    assert base == f"rayproject/ray:{ray.__version__}-{PYTHON}-gpu"
    assert '".[gpu]"' in (CLUSTER / "Dockerfile").read_text()


def test_launcher_config_is_valid_and_its_gpu_workers_ask_for_gpus():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((CLUSTER / "aws-gpu.yaml").read_text())
    validate_config(prepare_config(config))  # Ray's own schema for `ray up`, after its defaults
    assert config["docker"]["image"] == f"rayproject/ray:{ray.__version__}-{PYTHON}-gpu"
    gpu_types = {name: t for name, t in config["available_node_types"].items() if t["resources"].get("GPU")}
    assert gpu_types, "no GPU node type"
    for name, node in gpu_types.items():
        family = node["node_config"]["InstanceType"].split(".")[0]
        assert family in GPU_INSTANCE_FAMILIES, f"{name} asks Ray for GPUs on a {family} instance"
        assert node["max_workers"] <= config["max_workers"] and node["min_workers"] <= node["max_workers"]
    assert config["head_node_type"] in config["available_node_types"]
    assert any("[gpu]" in command for command in config["setup_commands"])


def test_raycluster_groups_agree_on_gpus_and_share_storage():
    cluster = manifests()["RayCluster"]
    assert cluster["spec"]["rayVersion"] == ray.__version__
    (gpu_group,) = cluster["spec"]["workerGroupSpecs"]
    assert gpus_of(gpu_group) == 1 and gpus_of(cluster["spec"]["headGroupSpec"]) == 0
    claim = manifests()["PersistentVolumeClaim"]["metadata"]["name"]
    for group in [cluster["spec"]["headGroupSpec"], gpu_group]:
        volumes = group["template"]["spec"]["volumes"]
        assert any(v.get("persistentVolumeClaim", {}).get("claimName") == claim for v in volumes)


def test_rayjob_runs_valid_configs_that_fit_the_cluster_it_targets():
    found = manifests()
    job, cluster = found["RayJob"], found["RayCluster"]
    assert job["spec"]["clusterSelector"]["ray.io/cluster"] == cluster["metadata"]["name"]
    (gpu_group,) = cluster["spec"]["workerGroupSpecs"]
    gpus_available = gpu_group["maxReplicas"] * gpus_of(gpu_group)
    commands = ray_commands(job["spec"]["entrypoint"])
    assert [c[0] for c in commands] == ["jobs/run.py", "jobs/run.py"]
    outputs = {}
    for args in commands:
        script, config_path, sets = parse_job(args)
        assert Path(script).is_file() and Path(config_path).is_file()
        config = load_task_config(task_of(config_path), config_path, sets)
        assert config.scaling.use_gpu and config.scaling.num_workers <= gpus_available
        assert config.run.output.startswith("/mnt/raynlp/")  # on the shared volume
        # What raynlp checks on joining the cluster (a head and GPU workers; the autoscaler adds them).
        check_layout(config, [Node(0), *[Node(8, gpus_of(gpu_group))] * gpu_group["maxReplicas"]], can_grow=True)
        outputs[config.task] = config
    # Fine-tuning starts from what pretraining exported.
    assert outputs["finetune"].preset == f"{outputs['pretrain'].run.output}/preset"


def test_rayservice_embeds_exactly_what_raynlp_serve_export_writes(tmp_path):
    from ray.serve.schema import ServeDeploySchema

    service = manifests()["RayService"]
    embedded = yaml.safe_load(service["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(embedded)
    command = shlex.split(service["metadata"]["annotations"]["raynlp.io/serve-export"])
    assert command[:2] == ["raynlp", "serve"]
    target = tmp_path / "serve_config.yaml"
    args = command[1:]
    args[args.index("--export") + 1] = str(target)
    assert main(args) == 0
    assert yaml.safe_load(target.read_text()) == embedded

    # The replicas it asks for fit the pods it runs on, and the preset is the one the RayJob writes.
    app_args = embedded["applications"][0]["args"]
    (gpu_group,) = service["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    assert app_args["replica"]["num_gpus"] <= gpus_of(gpu_group)
    assert app_args["autoscaling"]["max_replicas"] <= gpu_group["maxReplicas"] * gpus_of(gpu_group)
    assert app_args["preset"] == "/mnt/raynlp/finetune/preset"
    assert embedded["http_options"]["host"] == "0.0.0.0"  # reachable through the Kubernetes service


@pytest.mark.parametrize("kind", ["RayCluster", "RayService"])
def test_every_pod_runs_the_raynlp_image_with_the_jax_backend(kind):
    spec = manifests()[kind]["spec"]
    spec = spec.get("rayClusterConfig", spec)
    for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
        for container in containers(group["template"]):
            assert container["image"].endswith("/raynlp:0.1.0-gpu")
            assert {"name": "KERAS_BACKEND", "value": "jax"} in container["env"]
