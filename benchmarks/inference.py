"""Benchmark inference: ONNX Runtime against PyTorch eager for the trained model, batch 1 and 1024.

Both run the same model on the same encoded test rows (the exported graph and the trained module
hold the same preprocessing), on the same device, one call at a time; the figure is the median
latency of a call and the rows per second it implies. Run after `make pipeline` (it reads
artifacts/model and artifacts/onnx):

    .venv/bin/python benchmarks/inference.py [--seconds 3] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def timed(fn, seconds: float) -> list[float]:
    for _ in range(20):  # warm-up: allocator, thread pools, lazy initialisation
        fn()
    samples = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(samples) < 50:
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="timing per case")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = parser.parse_args()

    import numpy as np
    import pandas as pd
    import torch

    from loopline.features import encode_features
    from loopline.paths import ProjectPaths
    from models.export import OUTPUT_NAME, load_exported
    from models.torch_predict import load_model

    paths = ProjectPaths(REPO)
    model, schema = load_model(paths.model_dir)
    device = torch.device(args.device)
    model.to(device)
    session = load_exported(paths.onnx_file, args.device)
    test = pd.read_parquet(paths.split("test"))
    enc = encode_features(pd.concat([test] * (1 + 1024 // len(test))).head(1024), schema)
    rows = []
    for batch in (1, 1024):
        numeric, categorical = enc.numeric[:batch], enc.categorical[:batch]
        t_num, t_cat = torch.from_numpy(numeric).to(device), torch.from_numpy(categorical).to(device)

        def run_torch() -> None:
            with torch.inference_mode():
                out = model(t_num, t_cat)
            out.cpu()  # the caller needs the result on the host, as the ONNX Runtime call returns it

        def run_onnx() -> None:
            session.run([OUTPUT_NAME], {"numeric": numeric, "categorical": categorical})

        a = np.asarray(model(t_num, t_cat).detach().cpu())
        b = session.run([OUTPUT_NAME], {"numeric": numeric, "categorical": categorical})[0]
        gap = float(np.max(np.abs(a - b)))
        result = {}
        for name, fn in (("pytorch eager", run_torch), ("onnx runtime", run_onnx)):
            latency = statistics.median(timed(fn, args.seconds))
            result[name] = latency
        for name, latency in result.items():
            rows.append((batch, name, latency * 1e3, batch / latency, result["pytorch eager"] / latency, gap))

    providers = ", ".join(session.get_providers())
    print(
        f"\ninference, {schema.name}, median latency of one call, {args.device} "
        f"(torch threads {torch.get_num_threads()}; onnxruntime providers: {providers})\n"
    )
    print("| batch | runtime | latency ms | rows/s | speed-up vs eager | max abs diff |")
    print("|---:|---|---:|---:|---:|---:|")
    for batch, name, ms, rps, speedup, gap in rows:
        print(f"| {batch} | {name} | {ms:.3f} | {rps:,.0f} | {speedup:.2f}x | {gap:.2g} |")


if __name__ == "__main__":
    main()
