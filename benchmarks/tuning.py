"""Benchmark the search: TPE against random sampling at the same budget, and an ensemble's gain and cost.

For each dataset and seed, both samplers run N trials of params.yaml's search space with the same
trial recipe (tuning.search.Objective: same data, epochs, early stopping; pruning off so both spend the
whole budget) in one process. Reported: the best validation loss after N/2 and N trials and the best
trial's validation metric, as mean and spread over the seeds, and in how many seeds TPE beat random.

Then the ensemble: the seed-0 TPE study's best trial alone against the average of its top k, both
trained once more from their settings, on the whole test split (the task's primary metric and the loss
metric) and exported to ONNX: latency of one ONNX Runtime call for 1 and for 256 records.

    .venv/bin/python benchmarks/tuning.py [--trials 16] [--seeds 3] [--epochs 8] [--top-k 3]
        [--datasets bike acs] [--max-train-rows 30000]

ACS's 194k training rows are subsampled (seeded, --max-train-rows) to keep the run within minutes on
two cores; validation and test splits are whole.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))


def median_seconds(fn) -> float:
    from inference import timed  # benchmarks/inference.py: warm-up, then samples for 2 s

    return statistics.median(timed(fn, 2.0))


def load_data(project: Path, max_train_rows: int | None, seed: int):
    from loopline.paths import ProjectPaths
    from models.train import load_prepared

    data = load_prepared(ProjectPaths(project))
    if max_train_rows and len(data.frames["train"]) > max_train_rows:
        from dataprep.stats import fit_preprocessing_stats

        data.frames["train"] = data.frames["train"].sample(max_train_rows, random_state=seed).reset_index(drop=True)
        data.stats = fit_preprocessing_stats(data.frames["train"], data.schema, data.stats.get("missing_fills", {}))
    return data


def search(project: Path, data, sampler: str, seed: int, trials: int, epochs: int):
    import optuna

    from loopline.config import load_params, with_overrides
    from loopline.paths import ProjectPaths
    from tuning.search import Objective, make_pruner, make_sampler

    paths = ProjectPaths(project)
    params = with_overrides(
        load_params(paths.params),
        {"seed": seed, "tune.sampler": sampler, "tune.pruner": "none", "tune.epochs": epochs},
        "benchmark",
    )
    study = optuna.create_study(
        direction="minimize", sampler=make_sampler(params.tune, seed), pruner=make_pruner(params.tune)
    )
    study.optimize(Objective(paths, params, data, f"bench-{sampler}-{seed}"), n_trials=trials)
    return study, params


def best_after(study, n: int) -> float:
    values = [t.value for t in study.trials[:n] if t.value is not None]
    return min(values)


def ensemble_figures(data, params, study, top_k: int, workdir: Path) -> dict:
    import numpy as np

    from loopline import runtime
    from loopline.config import with_overrides
    from loopline.features import encode_features, encode_target
    from loopline.metrics import primary_metric, task_metrics
    from models.export import export_onnx, load_exported
    from models.network import EnsembleNet
    from models.torch_predict import predict
    from models.train import fit

    done = sorted((t for t in study.trials if t.value is not None), key=lambda t: t.value)[:top_k]
    members = [
        fit(
            data,
            with_overrides(params, t.user_attrs["overrides"], "benchmark"),
            run_checks=False,
            find_lr=False,
            refit=(),
        ).model
        for t in done
    ]
    ensemble = EnsembleNet([m.spec for m in members])
    for target, m in zip(ensemble.members, members):
        target.load_state_dict(m.state_dict())
    ensemble.eval()
    test = data.frames["test"]
    y = encode_target(test, data.schema)
    task = data.schema.task.value
    metric = primary_metric(task)
    second = "rmse" if task == "regression" else "log_loss"
    enc = encode_features(test.head(256), data.schema)
    one = {"numeric": enc.numeric[:1], "categorical": enc.categorical[:1]}
    batch = {"numeric": enc.numeric, "categorical": enc.categorical}
    out = {}
    for name, model in (("best trial", members[0]), (f"top-{top_k} ensemble", ensemble)):
        scores = task_metrics(task, y, predict(model, test, data.schema))
        path = workdir / f"{name.replace(' ', '-')}.onnx"
        n_num, n_cat = len(data.schema.numeric_features), len(data.schema.categorical_features)
        export_onnx(model, path, n_num, n_cat)
        session = load_exported(path)
        check = runtime.predict_frame(session, test.head(256), data.schema)
        assert np.allclose(check, predict(model, test.head(256), data.schema), rtol=1e-4, atol=1e-4)
        out[name] = {
            metric: scores[metric],
            second: scores[second],
            "ms_1": median_seconds(lambda: session.run(None, one)) * 1e3,
            "ms_256": median_seconds(lambda: session.run(None, batch)) * 1e3,
            "onnx_kib": path.stat().st_size / 1024,
        }
    out["metric"], out["second"], out["trials"] = metric, second, [t.number for t in done]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--datasets", nargs="+", default=["bike", "acs"])
    parser.add_argument("--max-train-rows", type=int, default=30000)
    args = parser.parse_args()

    import optuna
    from train_throughput import prepared_project

    from tuning.search import quiet_training_logs

    logging.basicConfig(level=logging.WARNING)
    quiet_training_logs()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    half = args.trials // 2
    print(
        f"TPE vs random: {args.trials} trials each, {args.epochs} epochs per trial, no pruning, "
        f"{args.seeds} seeds; best validation loss (lower is better), mean ± std over seeds\n"
    )
    print(
        f"| dataset | sampler | best after {half} | best after {args.trials} | best trial's val metric | "
        f"TPE better (seeds) | minutes |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    ensembles = {}
    for source in args.datasets:
        project = prepared_project(source, None)
        results: dict[str, list] = {"tpe": [], "random": []}
        minutes = {"tpe": 0.0, "random": 0.0}
        first_tpe = None
        for seed in range(args.seeds):
            data = load_data(project, args.max_train_rows, seed)
            for sampler in ("tpe", "random"):
                start = time.perf_counter()
                study, params = search(project, data, sampler, seed, args.trials, args.epochs)
                minutes[sampler] += (time.perf_counter() - start) / 60
                best = study.best_trial
                from loopline.metrics import primary_metric

                metric = primary_metric(data.schema.task.value)
                results[sampler].append(
                    (best_after(study, half), best_after(study, args.trials), best.user_attrs["val_metrics"][metric])
                )
                if sampler == "tpe" and seed == 0:
                    first_tpe = (data, params, study)
                print(f"  {source} seed {seed} {sampler}: best {results[sampler][-1][1]:.5f}", file=sys.stderr)
        wins = sum(t[1] < r[1] for t, r in zip(results["tpe"], results["random"]))
        for sampler in ("tpe", "random"):
            cols = list(zip(*results[sampler]))
            fmt = [f"{statistics.mean(c):.4f} ± {statistics.stdev(c) if len(c) > 1 else 0:.4f}" for c in cols]
            print(
                f"| {source} | {sampler} | {fmt[0]} | {fmt[1]} | {metric} {fmt[2]} | "
                f"{f'{wins} of {args.seeds}' if sampler == 'tpe' else ''} | {minutes[sampler]:.1f} |"
            )
        with tempfile.TemporaryDirectory() as tmp:
            ensembles[source] = ensemble_figures(*first_tpe, args.top_k, Path(tmp))

    print(
        f"\nEnsemble of the top {args.top_k} trials (seed-0 TPE study) against its best trial alone: whole test "
        "split; ONNX Runtime in process (the session serving creates), median latency of one call\n"
    )
    print("| dataset | model | test metric | second metric | ms / 1 record | ms / 256 records | ONNX KiB |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for source, fig in ensembles.items():
        for name in ("best trial", f"top-{args.top_k} ensemble"):
            f = fig[name]
            print(
                f"| {source} | {name} | {fig['metric']} {f[fig['metric']]:.4f} | {fig['second']} "
                f"{f[fig['second']]:.4f} | {f['ms_1']:.3f} | {f['ms_256']:.3f} | {f['onnx_kib']:.0f} |"
            )
        single, ens = fig["best trial"], fig[f"top-{args.top_k} ensemble"]
        print(
            f"| {source} | ensemble / single | {ens[fig['metric']] / single[fig['metric']]:.3f}x | "
            f"{ens[fig['second']] / single[fig['second']]:.3f}x | {ens['ms_1'] / single['ms_1']:.2f}x | "
            f"{ens['ms_256'] / single['ms_256']:.2f}x | |"
        )


if __name__ == "__main__":
    main()
