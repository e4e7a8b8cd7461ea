"""Benchmarks: `raynlp bench NAME` measures raynlp against the plain keras-hub way on the same work, in one run.

Each benchmark writes `NAME.json` (figures and ratios) and, where a plot helps, `NAME.png` into its output
folder, and returns the JSON path.
"""

from pathlib import Path

from raynlp.errors import RaynlpError

BENCHMARKS = ("tokenize", "train", "pretrain", "serve", "gpu")


def run(name: str, output_dir: str = "runs/bench", rows: int | None = None, preset: str | None = None,
        smoke: bool = False, peak_tflops: float | None = None, nodes: int | None = None) -> Path:
    if nodes is not None and (name != "train" or nodes < 2):
        raise RaynlpError("--nodes is for raynlp bench train only, and counts 2 nodes or more")
    if preset is not None and name not in ("train", "serve"):
        raise RaynlpError("--preset is for raynlp bench train and serve only")
    chosen = {"preset": preset} if preset else {}
    if name == "tokenize":
        from raynlp.bench.tokenize_bench import run_tokenize_bench

        return run_tokenize_bench(Path(output_dir), rows=rows)
    if name == "train":
        from raynlp.bench.train_bench import run_train_bench, run_train_bench_across_nodes

        if nodes:
            return run_train_bench_across_nodes(Path(output_dir), rows=rows, nodes=nodes, **chosen)
        return run_train_bench(Path(output_dir), rows=rows, **chosen)
    if name == "pretrain":
        from raynlp.bench.pretrain_bench import run_pretrain_bench

        return run_pretrain_bench(Path(output_dir), documents=rows)
    if name == "serve":
        from raynlp.bench.serve_bench import run_serve_bench

        return run_serve_bench(Path(output_dir), **chosen)
    if name == "gpu":
        from raynlp.bench.gpu_bench import run_gpu_bench

        return run_gpu_bench(Path(output_dir), smoke=smoke, peak_tflops=peak_tflops)
    raise RaynlpError(f"unknown benchmark {name!r}; benchmarks: {', '.join(BENCHMARKS)}")
