"""Coresets against the full data and against a uniform sample of the same size, for a search on ACS.

The same N trial settings (drawn at random from params.yaml's `tune.space`, seeded) are trained in
turn on each arm's data with the tuner's trial recipe (tuning.search: --epochs per trial, early
stopping, no refit, no pruning): the whole training split (the reference search), a sensitivity coreset
(tuning.coreset) of 2%, 5% and 10% of the training rows, and a stratified uniform sample of each size;
a sampled arm validates on a sample of the validation split of the same share, its loss weighted.
Using the same settings in every arm means the arms differ only in their data, so that:

- search time: the N trials' training time in each arm, and its ratio to the full search's;
- rank correlation: Spearman's rho between an arm's validation losses and the full search's, over the
  same N settings (how well the cheap search ranks the candidates);
- the winner: each arm's best trial, trained again on the whole training split as `train` would
  (--final-epochs, early stopping on the whole validation split) and scored on the whole test split.

    .venv/bin/python benchmarks/coreset.py [--trials 12] [--epochs 4] [--sizes 0.02 0.05 0.10]

Targets (the claim made for coresets): at least 5x faster search, a winner within 0.5% of the full
search's test metric, and better than the uniform sample of equal size.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))


def trial_settings(params, trials: int, seed: int) -> list[dict]:
    """`trials` points of the search space, drawn at random (the same for every arm)."""
    import optuna

    from tuning.search import suggest

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    settings = []
    for _ in range(trials):
        trial = study.ask()
        settings.append(suggest(trial, params.tune.space))
        study.tell(trial, 0.0)
    return settings


def run_arm(data, params, settings: list[dict]) -> tuple[list[float], list[float]]:
    """Each setting's best validation loss on this arm's data, and its training seconds."""
    from models.train import fit
    from tuning.search import trial_params

    losses, seconds = [], []
    for number, chosen in enumerate(settings):
        trial = trial_params(params, params.tune, chosen, number)
        started = time.perf_counter()
        fitted = fit(data, trial, run_checks=False, find_lr=False, refit=())
        seconds.append(time.perf_counter() - started)
        losses.append(float(fitted.result.best_val_loss))
    return losses, seconds


def test_metrics(data, params, chosen: dict, epochs: int) -> dict[str, float]:
    """The setting trained on the whole training split (early stopping on the whole validation split),
    scored on the whole test split."""
    from loopline.config import with_overrides
    from loopline.features import encode_target
    from loopline.metrics import task_metrics
    from models.torch_predict import predict
    from models.train import fit

    final = with_overrides(params, {**chosen, "train.epochs": epochs}, "winner")
    fitted = fit(data, final, run_checks=False, find_lr=False, refit=())
    test = data.frames["test"]
    return task_metrics(
        data.schema.task.value, encode_target(test, data.schema), predict(fitted.model.eval(), test, data.schema)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="acs")
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=4, help="per trial")
    parser.add_argument("--final-epochs", type=int, default=12, help="the winners' training on full data")
    parser.add_argument("--sizes", type=float, nargs="+", default=[0.02, 0.05, 0.10])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from scipy.stats import spearmanr
    from train_throughput import prepared_project

    from loopline.config import CoresetParams, load_params, with_overrides
    from loopline.paths import ProjectPaths
    from models.train import load_prepared
    from tuning.coreset import coreset_splits
    from tuning.search import quiet_training_logs

    logging.basicConfig(level=logging.WARNING)
    quiet_training_logs()
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    clock = time.perf_counter()
    paths = ProjectPaths(prepared_project(args.source, None))
    params = with_overrides(load_params(paths.params), {"seed": args.seed, "tune.epochs": args.epochs}, "benchmark")
    data = load_prepared(paths)
    settings = trial_settings(params, args.trials, args.seed)
    arms = {"full data": data}
    build_seconds = {}
    for size in args.sizes:
        for method in ("sensitivity", "uniform"):
            started = time.perf_counter()
            arms[f"{method} {size:.0%}"] = coreset_splits(data, params, CoresetParams(size=size, method=method))
            build_seconds[f"{method} {size:.0%}"] = time.perf_counter() - started
    results = {}
    for name, arm in arms.items():
        losses, seconds = run_arm(arm, params, settings)
        results[name] = {"losses": losses, "seconds": seconds}
        print(f"{name}: {len(arm.frames['train']):,} training rows, {sum(seconds):.1f} s", flush=True)
    finals: dict[int, dict[str, float]] = {}
    for name, r in results.items():
        winner = int(np.argmin(r["losses"]))
        if winner not in finals:
            finals[winner] = test_metrics(data, params, settings[winner], args.final_epochs)
        r["winner"] = winner
    metric = "accuracy" if data.schema.task.value != "regression" else "mae"
    second = "log_loss" if metric == "accuracy" else "rmse"
    full = results["full data"]
    reference = finals[full["winner"]][metric]
    train_rows = len(data.frames["train"])
    print(
        f"\n{args.source}: {train_rows:,} training rows, {len(data.frames['val']):,} validation, "
        f"{len(data.frames['test']):,} test; {args.trials} random settings of tune.space, {args.epochs} epochs "
        f"per trial; winners trained for up to {args.final_epochs} epochs on the whole training split; "
        f"{time.perf_counter() - clock:.0f} s in all\n"
    )
    print(
        f"| arm | training rows | build s | s per trial | search s | speed-up | Spearman rho vs full | winner | "
        f"winner's test {metric} | vs full search's winner | winner's test {second} |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        rows = len(arms[name].frames["train"])
        search = sum(r["seconds"])
        rho = spearmanr(r["losses"], full["losses"]).statistic if name != "full data" else 1.0
        won = finals[r["winner"]]
        change = won[metric] - reference
        print(
            f"| {name} | {rows:,} | {build_seconds.get(name, 0.0):.2f} | {search / len(r['seconds']):.2f} | "
            f"{search:.1f} | {sum(full['seconds']) / search:.1f}x | {rho:.2f} | #{r['winner']} | "
            f"{won[metric]:.4f} | {change:+.4f} ({change / reference:+.2%}) | {won[second]:.4f} |"
        )


if __name__ == "__main__":
    main()
