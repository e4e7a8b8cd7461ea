"""`raynlp bench tokenize` on a few rows: every way runs, agrees with keras-hub, and the ratios add up."""

import json

import pytest

import raynlp.bench
from raynlp.cli import main
from raynlp.errors import RaynlpError

pytestmark = pytest.mark.slow  # a benchmark

WAYS = ["keras_hub_preprocessor_1_process", "raynlp_1_process", "raynlp_ray_data_1_actor", "raynlp_ray_data_2_actors"]
ROWS = 2000  # Ray Data packs it in several blocks, one after the other: a start-up and a steady state


@pytest.fixture(scope="module")
def bench_report(ray_cluster, tmp_path_factory):
    output = tmp_path_factory.mktemp("bench")
    path = raynlp.bench.run("tokenize", output_dir=output, rows=ROWS)
    assert path == output / "tokenize.json"
    return output, json.loads(path.read_text())


def test_every_way_is_measured(bench_report):
    _, report = bench_report
    assert report["benchmark"] == "tokenize"
    assert report["rows"] == ROWS
    assert report["tokens"] > ROWS  # real tokens, at least [CLS] and [SEP] per row
    assert list(report["results"]) == WAYS
    assert list(report["speedup_vs_keras_hub"]) == WAYS
    for way, figures in report["results"].items():
        assert figures["seconds"] > 0, way
        assert figures["rows_per_s"] > 0, way
        assert figures["tokens_per_s"] > 0, way
        # Both rates come from the same seconds.
        assert figures["tokens_per_s"] / figures["rows_per_s"] == pytest.approx(report["tokens"] / ROWS, rel=1e-2)


def test_raynlp_ids_equal_keras_hub(bench_report):
    _, report = bench_report
    for way in WAYS[1:]:
        assert report["results"][way]["same_ids_as_keras_hub"] == 1.0, way
    for way in WAYS[2:]:
        assert report["results"][way]["same_ids_as_raynlp_1_process"] == 1.0, way


def test_the_one_process_keeps_what_the_ray_data_ways_keep(bench_report):
    """The one process is the Ray Data ways' work without Ray: the actors' packer, its output kept in the stored
    column types (narrow ids, no single-segment ids), as their consumer keeps it."""
    _, report = bench_report
    kept = report["results"]["raynlp_1_process"]["kept_columns"]
    assert kept == {"padding_mask": "bool", "token_ids": "int16"}
    for way in WAYS[2:]:
        assert report["results"][way]["kept_columns"] == kept, way


def test_ray_data_ways_report_start_up_apart_from_the_steady_state(bench_report):
    _, report = bench_report
    one = report["results"]["raynlp_1_process"]
    # Timed on both sides of the Ray Data ways, the same ids both times; its rate is over the mean of the two.
    assert one["rows_per_s"] == pytest.approx(ROWS / (sum(one["seconds_before_and_after"]) / 2), rel=1e-4)
    assert one["same_ids_after"] == 1.0
    one_process = one["tokens_per_s"]
    for actors, way in enumerate(WAYS[2:], start=1):
        figures = report["results"][way]
        assert 0 < figures["startup_s"] < figures["seconds"], way
        assert figures["steady_tokens_per_s"] > 0, way
        assert figures["efficiency"] == pytest.approx(figures["tokens_per_s"] / (actors * one_process), abs=1e-3)
        assert figures["steady_efficiency"] == pytest.approx(
            figures["steady_tokens_per_s"] / (actors * one_process), abs=1e-3)


def test_speedups_follow_from_rows_per_second(bench_report):
    _, report = bench_report
    base = report["results"]["keras_hub_preprocessor_1_process"]["rows_per_s"]
    assert report["speedup_vs_keras_hub"]["keras_hub_preprocessor_1_process"] == 1.0
    for way in WAYS:
        expected = report["results"][way]["rows_per_s"] / base
        assert report["speedup_vs_keras_hub"][way] == pytest.approx(expected, abs=0.006), way


def test_plot_is_written(bench_report):
    output, _ = bench_report
    png = output / "tokenize.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unknown_benchmark_is_refused(capsys):
    # argparse's `choices` refuses it before anything runs: exit status 2, its error on the last line.
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "nosuch"])
    assert exit_info.value.code == 2
    last_line = capsys.readouterr().err.strip().splitlines()[-1]
    assert last_line.startswith("raynlp bench: error: ")
    assert "'nosuch'" in last_line and "tokenize" in last_line
    # The Python API names the benchmarks it has.
    with pytest.raises(RaynlpError, match="unknown benchmark 'nosuch'; benchmarks: tokenize"):
        raynlp.bench.run("nosuch")
