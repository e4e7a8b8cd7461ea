"""The house's layering, read from the source: every import of a raynlp package (at the top of a module or inside a
function) goes to a lower layer, so data → train → serve reads in order and nothing runs back up."""

import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
# Lowest first. Within a layer nothing imports its neighbour, except in the top one: the entry points (the CLI
# runs the demo and the jobs, both run tasks).
LAYERS = [
    {"errors"},
    {"_internal"},
    {"presets", "datasets"},
    {"data"},
    {"train", "inference"},
    {"serve"},
    {"tasks", "jobs", "workflows", "demo", "bench", "cli"},
]
_IMPORT = re.compile(r"^\s*(?:from raynlp\.(\w+)|import raynlp\.(\w+)|from raynlp import ([\w, ]+))", re.M)


def imports() -> dict[str, set[str]]:
    """raynlp package (or top-level module) → the raynlp packages its code imports, tests left out."""
    found: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        if path.name.endswith("_test.py"):
            continue
        source = path.relative_to(PACKAGE).with_suffix("").parts[0]
        for match in _IMPORT.finditer(path.read_text()):
            names = match.group(3).split(",") if match.group(3) else [match.group(1) or match.group(2)]
            found.setdefault(source, set()).update(n.strip().split()[0] for n in names if n.strip())
    return {source: targets - {source} for source, targets in found.items()}


def layer_of(name: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if name in layer)


def test_every_package_has_a_layer():
    assert set(imports()) | {t for targets in imports().values() for t in targets} <= set().union(*LAYERS)


def test_no_import_runs_up_or_sideways():
    top = len(LAYERS) - 1
    wrong = sorted((source, target) for source, targets in imports().items() for target in targets
                   if layer_of(target) > layer_of(source) or (layer_of(target) == layer_of(source) != top))
    assert not wrong, f"imports against the layering: {wrong}"


def test_the_trainer_leaves_local_versus_uri_to_the_run_folder():
    assert "is_uri" not in (PACKAGE / "train" / "trainer.py").read_text()
