"""Coresets against the full data and against uniform samples of the same size, for a search on ACS.

The same N trial settings (drawn at random from params.yaml's `tune.space`, seeded) are trained in
turn on each arm's data with the tuner's trial recipe (tuning.search: --epochs per trial, early
stopping, no refit, no pruning): the whole training split (the reference search); a sensitivity
coreset (tuning.coreset, `method: sensitivity`) of 2%, 5% and 10% of the training rows; a stratified
uniform sample of each size (`method: uniform`: the same strata, uniform within them); and a plain
uniform random sample (no strata). A sampled arm validates on a sample of the validation split of the
same share, its loss weighted; each sample is drawn --draws times (different seeds). Using the same
settings in every arm means the arms differ only in their data, so that:

- search time: the N trials' training time in each arm (mean over draws), and its ratio to the full
  search's;
- rank correlation: Spearman's rho between an arm's validation losses and the full search's, over the
  same N settings (how well the cheap search ranks the candidates), mean and spread over the draws;
- the winner: each draw's best trial, trained again on the whole training split as `train` would
  (--final-epochs, early stopping on the whole validation split) and scored on the whole test split;
  the worst draw's against the full search's winner;
- the validation loss estimate error: per trial, how far the sample's weighted validation loss of the
  trained network is from its loss on the whole validation split (what a coreset promises).

    .venv/bin/python benchmarks/coreset.py [--trials 24] [--epochs 3] [--draws 3] [--sizes 0.02 0.05 0.10]

Targets (the claim made for coresets): at least 5x faster search, a winner within 0.5% of the full
search's test metric, and better than the uniform sample of equal size.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

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


def run_arm(data, params, settings: list[dict], full_val) -> dict[str, list[float]]:
    """Each setting's best validation loss on this arm's data, its training seconds, and how far that
    loss (a weighted estimate on a sampled arm) is from the same network's loss on the whole
    validation split."""
    from models.train import fit
    from models.trainer import evaluate_loss
    from tuning.search import trial_params

    out: dict[str, list[float]] = {"losses": [], "seconds": [], "estimate_error": []}
    for number, chosen in enumerate(settings):
        trial = trial_params(params, params.tune, chosen, number)
        started = time.perf_counter()
        fitted = fit(data, trial, run_checks=False, find_lr=False, refit=())
        out["seconds"].append(time.perf_counter() - started)
        out["losses"].append(float(fitted.result.best_val_loss))
        model = fitted.model.eval()
        arm_loss = evaluate_loss(model, data.batch("val"), torch.device("cpu"), "fp32")
        whole = evaluate_loss(model, full_val, torch.device("cpu"), "fp32")
        out["estimate_error"].append(abs(arm_loss - whole) / whole)
    return out


def random_sample(data, size: float, seed: int):
    """A plain uniform random sample of the training and validation rows (no strata), each row
    weighing n / m: the baseline the coreset is measured against."""
    from models.train import PreparedSplits

    rng = np.random.default_rng(seed)
    frames, weights = dict(data.frames), {"test": np.ones(len(data.frames["test"]), dtype=np.float32)}
    for name in ("train", "val"):
        n = len(data.frames[name])
        m = int(round(size * n))
        rows = np.sort(rng.choice(n, size=m, replace=False))
        frames[name] = data.frames[name].iloc[rows].reset_index(drop=True)
        weights[name] = np.full(m, n / m, dtype=np.float32)
    return PreparedSplits(data.schema, data.stats, frames, weights, weigh_validation=True)


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
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--epochs", type=int, default=3, help="per trial")
    parser.add_argument("--final-epochs", type=int, default=8, help="the winners' training on full data")
    parser.add_argument("--sizes", type=float, nargs="+", default=[0.02, 0.05, 0.10])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--draws", type=int, default=3, help="coresets and uniform samples drawn per size")
    parser.add_argument("--json", type=Path, help="also write every trial's figures here")
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
    full_val = data.batch("val")
    results = {"full data": [run_arm(data, params, settings, full_val)]}
    rows = {"full data": len(data.frames["train"])}
    print(
        f"full data: {rows['full data']:,} training rows, {sum(results['full data'][0]['seconds']):.1f} s", flush=True
    )
    for size in args.sizes:
        for method in ("sensitivity", "uniform", "random"):
            name = f"{method} {size:.0%}"
            results[name] = []
            for draw in range(args.draws):
                seed = args.seed + 1000 * (draw + 1)
                if method == "random":
                    arm = random_sample(data, size, seed)
                else:
                    drawn = with_overrides(params, {"seed": seed}, "draw")
                    arm = coreset_splits(data, drawn, CoresetParams(size=size, method=method))
                rows[name] = len(arm.frames["train"])
                results[name].append(run_arm(arm, params, settings, full_val))
            print(f"{name}: {rows[name]:,} training rows, {args.draws} draws", flush=True)
    finals: dict[int, dict[str, float]] = {}
    for runs in results.values():
        for r in runs:
            r["winner"] = int(np.argmin(r["losses"]))
            if r["winner"] not in finals:
                finals[r["winner"]] = test_metrics(data, params, settings[r["winner"]], args.final_epochs)
    metric = "accuracy" if data.schema.task.value != "regression" else "mae"
    full = results["full data"][0]
    reference = finals[full["winner"]][metric]
    sign = 1 if metric == "accuracy" else -1
    print(
        f"\n{args.source}: {rows['full data']:,} training rows, {len(data.frames['val']):,} validation, "
        f"{len(data.frames['test']):,} test; {args.trials} random settings of tune.space, {args.epochs} epochs "
        f"per trial, {args.draws} draws of each sample; winners trained for up to {args.final_epochs} epochs "
        f"on the whole training split; {time.perf_counter() - clock:.0f} s in all\n"
    )
    print(
        f"| arm | training rows | s per trial | search s | speed-up | Spearman rho vs full | same winner as full | "
        f"winner's test {metric}, worst draw | vs full search's winner | val loss estimate error | "
        f"winners (test {metric}) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    if args.json:
        args.json.write_text(json.dumps({"settings": settings, "results": results, "finals": finals}, indent=1))
    full_search = sum(full["seconds"])
    for name, runs in results.items():
        search = float(np.mean([sum(r["seconds"]) for r in runs]))
        rhos = [spearmanr(r["losses"], full["losses"]).statistic for r in runs]
        worst = min((finals[r["winner"]][metric] for r in runs), key=lambda v: sign * v)
        change = worst - reference
        same = sum(r["winner"] == full["winner"] for r in runs)
        error = float(np.mean([e for r in runs for e in r["estimate_error"]]))
        winners = ", ".join(f"#{r['winner']} {finals[r['winner']][metric]:.4f}" for r in runs)
        print(
            f"| {name} | {rows[name]:,} | {search / args.trials:.2f} | {search:.1f} | {full_search / search:.1f}x | "
            f"{np.mean(rhos):.2f} ± {np.std(rhos):.2f} | {same} of {len(runs)} | {worst:.4f} | "
            f"{change:+.4f} ({change / reference:+.2%}) | {error:.2%} | {winners} |"
        )


if __name__ == "__main__":
    main()
