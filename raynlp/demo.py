"""`make demo`: the six levels of the KerasNLP guide, end to end, on a local Ray cluster and real text.

1. domain pretraining: masked-LM continued from `minilm_l6_en_uncased` on the movie_reviews text;
2. fine-tuning that backbone, and the plain `minilm_l6_en_uncased`, on rotten_tomatoes (2 workers);
3. the cached-preprocessing variant: tokenize once to Parquet, then fine-tune from the shards;
4. a custom model on the frozen backbone (two new TransformerEncoder layers);
5. a WordPiece vocabulary learned from the corpus and a small transformer trained from scratch;
6. batch evaluation of every classifier on the test split, then the best one served on Ray Serve and asked a few
   real questions over HTTP.

It writes `report.md` and `report.html` in its folder: per workflow the accuracy (from the batch evaluation), the
training examples/s, the wall time, parameters (all and trainable), the loss curves and where each preset lies.
Every number comes from this run. `size="tiny"` runs the same pipeline at a small budget at which every
classifier still beats chance (the test of it).
"""

import html
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from raynlp._internal.storage import is_uri
from raynlp.errors import RaynlpError

logger = logging.getLogger(__name__)

BACKBONE = "minilm_l6_en_uncased"
FROZEN_BUILDER = "raynlp.train.examples.frozen_backbone:build"


@dataclass(frozen=True)
class DemoSize:
    backbone: str
    pretrain_rows: int
    # Reviews level 5 validates on: each is packed into several windows, and these are about as many windows as
    # level 5 trains on (pretrain_steps × a batch of 8).
    pretrain_test_rows: int
    train_rows: int
    test_rows: int | None  # None: the whole test split
    epochs: int
    sequence_length: int
    pretrain_sequence_length: int
    # Packed into full windows, the reviews fill more steps than level 5's budget: it takes this many an epoch.
    pretrain_steps: int
    workers: int
    # Level 6 trains a small transformer from nothing: it needs more passes over more rows than a fine-tune.
    scratch_rows: int | None  # None: the whole training split
    scratch_epochs: int
    vocabulary_size: int


SIZES = {
    # What `make demo` runs (README gives its time on 2 CPU cores).
    "full": DemoSize(backbone=BACKBONE, pretrain_rows=400, pretrain_test_rows=25, train_rows=1600, test_rows=None,
                     epochs=1, sequence_length=64, pretrain_sequence_length=128, pretrain_steps=25, workers=2,
                     scratch_rows=1600, scratch_epochs=3, vocabulary_size=8000),
    # The same pipeline at a small budget at which every classifier still beats chance (the test of the demo):
    # one worker (2-worker training is tested on its own, tests/train_test.py), short sentences, 640 fine-tuning
    # rows; the transformer from scratch is small enough to take the whole split five times.
    "tiny": DemoSize(backbone=BACKBONE, pretrain_rows=64, pretrain_test_rows=2, train_rows=640, test_rows=256,
                     epochs=1, sequence_length=32, pretrain_sequence_length=32, pretrain_steps=8, workers=1,
                     scratch_rows=None, scratch_epochs=5, vocabulary_size=3000),
}

REQUESTS = ["a gem of a film , funny and moving from start to finish .",
            "two hours of my life i will never get back .",
            "the plot is thin , but the actors make it worth a look ."]


def run_demo(output_dir: str = "runs/demo", address: str | None = None, size: str = "full") -> Path:
    """Run every workflow into `output_dir` (emptied first) and return the path of `report.md`."""
    from raynlp import workflows as wf
    from raynlp._internal.cluster import ensure_ray

    if is_uri(output_dir):
        # The report links its figures by relative path and opens them with the run's files: a local folder.
        raise RaynlpError(f"the demo writes its report into a local folder, not {output_dir}; "
                          "train with `raynlp finetune ... --set run.output=URI` to keep a run in object storage")
    s = SIZES[size]
    out = Path(output_dir)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    ensure_ray(address)
    rows: list[dict] = []
    common = {"epochs": s.epochs, "workers": s.workers, "sequence_length": s.sequence_length, "max_train_rows": s.train_rows,
              "max_test_rows": s.test_rows, "dataset": "rotten_tomatoes"}

    def timed(title: str, fn):
        logger.info("demo: %s ...", title)
        start = time.perf_counter()
        result = fn()
        seconds = time.perf_counter() - start
        logger.info("demo: %s done in %.0f s", title, seconds)
        return result, seconds

    # 1. Domain pretraining on the full movie reviews (their text only).
    pretrained, seconds = timed("Level 5: domain pretraining (masked LM) on movie_reviews", lambda: wf.pretrain(
        s.backbone, dataset="movie_reviews", output=str(out / "pretrain"), epochs=s.epochs, workers=s.workers,
        sequence_length=s.pretrain_sequence_length, max_train_rows=s.pretrain_rows, max_test_rows=s.pretrain_test_rows,
        batch_size=8, steps_per_epoch=s.pretrain_steps))
    rows.append(_row("pretrain", "Level 5: domain pretraining (masked LM on movie_reviews)", pretrained, seconds,
                     classifier=False))

    # 2. Fine-tuning: the domain-pretrained backbone, and the plain one, on the same split.
    for name, title, preset in [
            ("finetune_domain", "Level 2 after 5: fine-tune the domain-pretrained backbone", str(pretrained.preset)),
            ("finetune", "Level 2: fine-tune the plain backbone", s.backbone)]:
        result, seconds = timed(title, lambda preset=preset, name=name: wf.finetune(
            preset, output=str(out / name), learning_rate=1e-4, **common))
        rows.append(_row(name, title, result, seconds))

    # 3. Cached preprocessing: tokenize once (Ray Data → Parquet), then train from the shards.
    def cached():
        for split in ("train", "test"):
            wf.tokenize(s.backbone, str(out / "tokenized" / split), dataset="rotten_tomatoes", split=split,
                        sequence_length=s.sequence_length)
        return wf.finetune(s.backbone, output=str(out / "finetune_cached"), learning_rate=1e-4,
                           **{**common, "dataset": None, "train": str(out / "tokenized" / "train"),
                              "test": str(out / "tokenized" / "test")})

    result, seconds = timed("Level 3: fine-tune from cached tokens", cached)
    rows.append(_row("finetune_cached", "Level 3: fine-tune from tokens cached in Parquet", result, seconds))

    # 4. A custom model on the frozen backbone.
    result, seconds = timed("Level 4: custom model on the frozen backbone", lambda: wf.fit(
        FROZEN_BUILDER, s.backbone, output=str(out / "fit_frozen_backbone"), learning_rate=1e-3,
        overrides=["model.num_heads=4", "model.intermediate_dim=256"], **common))
    rows.append(_row("fit_frozen_backbone", "Level 4: two TransformerEncoders on the frozen backbone", result,
                     seconds))

    # 5. A vocabulary learned from the corpus, and a small transformer from scratch.
    result, seconds = timed("Level 6: vocabulary + transformer from scratch", lambda: wf.scratch(
        output=str(out / "scratch"), learning_rate=1e-3, batch_size=32,
        overrides=[f"model.vocabulary_size={s.vocabulary_size}"],
        **{**common, "epochs": s.scratch_epochs, "max_train_rows": s.scratch_rows}))
    rows.append(_row("scratch", "Level 6: learned WordPiece vocabulary + transformer from scratch", result,
                     seconds))

    # 6. Batch evaluation of every classifier on the test split, then serve the best.
    for row in rows:
        if row["classifier"]:
            report, seconds = timed(f"evaluate {row['preset']}", lambda row=row: wf.evaluate(
                row["preset"], dataset="rotten_tomatoes", max_rows=s.test_rows))
            row.update(accuracy=report["accuracy"], test_rows=report["rows"], eval_seconds=round(seconds, 1))
    best = max((r for r in rows if r["classifier"]), key=lambda r: r["accuracy"])
    answers = _serve_and_ask(best["preset"])
    return _write_report(out, size, rows, best, answers)


def _row(key: str, workflow: str, result, seconds: float, classifier: bool = True) -> dict:
    from raynlp.presets.model_card import read_model_card

    card = read_model_card(result.preset)
    steady = result.metrics[1:] or result.metrics
    return {
        "key": key, "workflow": workflow, "classifier": classifier, "preset": str(result.preset),
        "curves": str(result.output / "curves.png"), "wall_seconds": round(seconds, 1),
        "examples_per_second": round(sum(m["examples_per_second"] for m in steady) / len(steady), 1),
        "parameters": card.extra.get("parameters"), "trainable_parameters": card.extra.get("trainable_parameters"),
        "final": result.final,
    }


def _serve_and_ask(preset: str) -> list[dict]:
    """Serve `preset` on Ray Serve (the Serve instance the cluster runs, else one of its own), send a few real
    requests over HTTP, stop serving."""
    from ray import serve

    from raynlp import workflows as wf
    from raynlp.serve import Client
    from raynlp.serve.deploy import serve_instance

    app = "raynlp-demo"
    with serve_instance() as (_, port):
        url = wf.serve(preset, port=port, name=app, route_prefix=f"/{app}", overrides=["autoscaling.max_replicas=1"])
        try:
            predictions = Client(url).classify(REQUESTS)
            logger.info("demo: served %s at %s", preset, url)
            return [{"text": t, "label": p.label_name, "probability": round(max(p.probabilities), 3)}
                    for t, p in zip(REQUESTS, predictions)]
        finally:
            serve.delete(app)


def _write_report(out: Path, size: str, rows: list[dict], best: dict, answers: list[dict]) -> Path:
    figures = out / "figures"
    figures.mkdir(exist_ok=True)
    for i, row in enumerate(rows):
        shutil.copy(row["curves"], figures / f"{i + 1}_curves.png")
        row["figure"] = f"figures/{i + 1}_curves.png"
    (out / "report.json").write_text(json.dumps({"size": size, "workflows": rows, "best": best["preset"],
                                                 "served_answers": answers}, indent=2))

    by_key = {r["key"]: r for r in rows}
    domain, plain = by_key.get("finetune_domain"), by_key.get("finetune")
    lines = [f"# raynlp demo report ({size})", "",
             "Every number below was measured in this run, on this machine, on a local Ray cluster.", "",
             "| workflow | test accuracy | examples/s (training) | wall time | parameters | trainable | preset |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        accuracy = f"{r['accuracy']:.3f}" if r["classifier"] else f"masked acc. {r['final'].get('val_accuracy', 0):.3f}"
        lines.append(f"| {r['workflow']} | {accuracy} | {r['examples_per_second']} | {r['wall_seconds']:.0f} s | "
                     f"{r['parameters']:,} | {r['trainable_parameters']:,} | `{r['preset']}` |")
    lines += ["", f"Test accuracy is from `raynlp evaluate` (batch inference on Ray Data) on {best['test_rows']} "
                  "rotten_tomatoes test sentences; the pretraining row gives its masked-token accuracy on held-out "
                  "reviews instead."]
    if domain and plain:
        gain = domain["accuracy"] - plain["accuracy"]
        lines += ["", f"**Domain pretraining then fine-tuning** reached {domain['accuracy']:.3f}, against "
                      f"{plain['accuracy']:.3f} for fine-tuning alone on the same split ({gain:+.3f})."]
    lines += ["", f"## Served: `{best['workflow']}`", "",
              f"The most accurate classifier (`{best['preset']}`) was served with `raynlp serve` and asked:", "",
              "| text | label | probability |", "|---|---|---|"]
    lines += [f"| {a['text']} | {a['label']} | {a['probability']} |" for a in answers]
    lines += ["", "## Loss curves", ""]
    lines += [f"### {r['workflow']}\n\n![{r['workflow']}]({r['figure']})\n" for r in rows]
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n")
    (out / "report.html").write_text(_html(lines))
    print(f"\nDemo finished. Report: {report.resolve()} (and report.html)")
    for r in rows:
        shown = f"{r['accuracy']:.3f}" if r["classifier"] else "—"
        print(f"  {r['workflow'][:58]:58s} accuracy {shown:>6s}  {r['wall_seconds']:5.0f} s")
    return report


def _html(markdown_lines: list[str]) -> str:
    """The report's markdown as a small standalone HTML page (tables, headings, figures, paragraphs)."""
    body, table = [], []

    def flush_table():
        if table:
            head, *rest = table
            cells = lambda row, tag: "".join(f"<{tag}>{_inline(c)}</{tag}>" for c in row)  # noqa: E731
            body.append("<table><tr>" + cells(head, "th") + "</tr>"
                        + "".join("<tr>" + cells(r, "td") + "</tr>" for r in rest) + "</table>")
            table.clear()

    for line in "\n".join(markdown_lines).splitlines():
        if line.startswith("|"):
            if not set(line) <= set("|-"):
                table.append([c.strip() for c in line.strip("|").split("|")])
            continue
        flush_table()
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{_inline(line[level:].strip())}</h{level}>")
        elif line.startswith("!["):
            alt, src = line[2:].split("](", 1)
            body.append(f'<img alt="{html.escape(alt)}" src="{html.escape(src.rstrip(")"))}" width="640">')
        elif line.strip():
            body.append(f"<p>{_inline(line)}</p>")
    flush_table()
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:4px 8px}code{background:#f4f4f4}")
    return f"<!doctype html><meta charset='utf-8'><title>raynlp demo</title><style>{style}</style>\n" + "\n".join(body)


def _inline(text: str) -> str:
    import re

    text = html.escape(text)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", text)
