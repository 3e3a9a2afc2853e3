"""The train stage as users run it: reproducible, resumable after SIGKILL, distributed, tracked."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import Project, free_port

SHORT_RUN = {
    "epochs": 4,
    "batch_size": 256,
    "checkpoint_every_steps": 10,
    "checks": {"skip": ["input_independent_baseline"]},
}


@pytest.fixture
def prepared(project: Project) -> Project:
    project.dvc("repro", "prepare")
    project.set_params(train=SHORT_RUN)
    return project


def train(project: Project, *extra: str) -> None:
    project.run(sys.executable, "-m", "models.train", *extra)


def weights(project: Project) -> dict[str, torch.Tensor]:
    return torch.load(project.path("artifacts/model/model.pt"), weights_only=True)


def training_record(project: Project) -> dict:
    return json.loads(project.path("artifacts/model/training.json").read_text())


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name} differs"


def test_same_data_params_and_seed_give_bit_identical_weights_and_metrics(prepared: Project) -> None:
    train(prepared)
    first_weights, first_metrics = weights(prepared), prepared.path("reports/train/metrics.json").read_text()
    train(prepared)
    assert_same_weights(weights(prepared), first_weights)
    assert prepared.path("reports/train/metrics.json").read_text() == first_metrics


def test_a_run_killed_with_sigkill_resumes_to_the_weights_of_an_uninterrupted_run(prepared: Project) -> None:
    train(prepared)
    uninterrupted = weights(prepared)
    checkpoint = prepared.path(".state/checkpoints/train.pt")
    checkpoint.unlink()

    proc = subprocess.Popen(
        [sys.executable, "-m", "models.train"],
        cwd=prepared.root,
        env=prepared.env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    saved = torch.load(checkpoint, weights_only=True)
    assert not saved["finished"] and saved["steps"] < 4 * 48

    uninterrupted_lr_range = prepared.path("reports/train/lr_range.json").read_text()
    resumed = prepared.run(sys.executable, "-m", "models.train")
    record = training_record(prepared)
    assert record["resumed_from"] is not None and record["resumed_from"]["step"] == saved["steps"]
    assert_same_weights(weights(prepared), uninterrupted)
    # The recipe checks and the LR range test had completed before the kill: they are not run again,
    # and their recorded results go with the model.
    assert "recipe checks and LR range test completed before the interruption; not run again" in resumed.output
    assert prepared.path("reports/train/lr_range.json").read_text() == uninterrupted_lr_range
    assert {c["name"] for c in record["checks"]} >= {"loss_at_init", "overfit_one_batch", "gradients"}
    assert not prepared.path(".state/checkpoints/train.preamble.json").exists()
    # The experiment log covers the whole run, the epochs before the kill included.
    logged = prepared.path("dvclive/plots/metrics/val/loss.tsv").read_text().strip().splitlines()[1:]
    assert len(logged) == len(record["history"]) == SHORT_RUN["epochs"]


def test_checkpoints_load_with_weights_only(prepared: Project) -> None:
    train(prepared)
    state = torch.load(prepared.path(".state/checkpoints/train.pt"), weights_only=True)
    assert {"model", "optimizer", "scheduler", "scaler", "rng", "epoch", "batch_in_epoch"} <= state.keys()


def test_two_torchrun_processes_end_with_identical_weights_on_one_node_or_two(prepared: Project) -> None:
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    prepared.run(torchrun, "--standalone", "--nproc_per_node", "2", "-m", "models.train")
    record = training_record(prepared)
    assert record["processes"] == 2
    assert record["max_parameter_gap_across_ranks"] == 0.0
    one_node = weights(prepared)

    # Two nodes of one process each, as on two machines: the README's command, both launchers here.
    shutil.rmtree(prepared.path(".state/checkpoints"))  # no checkpoint to resume from: a run from scratch
    prepared.path("artifacts/model/model.pt").unlink()
    port = free_port()
    # One thread per process, as torchrun sets it for the two processes of one node: CPU kernels sum in
    # an order that depends on the thread count.
    env = {**prepared.env(), "OMP_NUM_THREADS": "1"}
    launchers = [
        subprocess.Popen(
            [torchrun, "--nnodes", "2", "--node-rank", str(rank), "--nproc-per-node", "1", "--rdzv-backend", "c10d",
             "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "loopline-test", "-m", "models.train"],
            cwd=prepared.root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for rank in (0, 1)
    ]  # fmt: skip
    for launcher in launchers:
        output, _ = launcher.communicate(timeout=600)
        assert launcher.returncode == 0, output
    record = training_record(prepared)
    assert record["processes"] == 2 and record["max_parameter_gap_across_ranks"] == 0.0
    assert_same_weights(weights(prepared), one_node)


def test_dvc_repro_trains_a_model_that_beats_the_baselines(project: Project) -> None:
    project.dvc("repro")
    checks = json.loads(project.path("reports/train/checks.json").read_text())
    assert [c["passed"] for c in checks] == [True] * 4
    metrics = json.loads(project.path("reports/train/metrics.json").read_text())
    baselines = json.loads(project.path("reports/baselines/metrics.json").read_text())
    for split in ("val", "test"):
        for name in ("mae", "rmse"):
            assert metrics[split][name] < 0.8 * baselines["linear"][split][name]
            assert metrics[split][name] < 0.6 * baselines["mean"][split][name]
    assert project.path("reports/train/lr_range.png").stat().st_size > 0
    assert json.loads(project.path("dvclive/metrics.json").read_text())["step"] >= 1
    assert "up to date" in project.dvc("repro").output


def test_a_failed_recipe_check_stops_the_stage_and_keeps_the_last_model(project: Project) -> None:
    project.set_params(train={"epochs": 2})
    project.dvc("repro", "train")
    before = project.fingerprint("artifacts/model", "dvclive", "reports/train")
    # An output layer that cannot move: the one-batch overfit check must stop the run.
    project.set_params(train={"epochs": 2, "checks": {"overfit_steps": 10, "overfit_target": 0.001}})
    failed = project.dvc("repro", "train", check=False)
    assert failed.returncode != 0
    assert "recipe check(s) failed; the model was not trained" in failed.output
    assert "overfit_one_batch" in failed.output
    assert project.fingerprint("artifacts/model", "dvclive", "reports/train") == before
    failed_report = json.loads(project.path(".state/train/failed-checks.json").read_text())
    assert [c["name"] for c in failed_report if not c["passed"]] == ["overfit_one_batch"]


def test_experiments_compare_with_dvc_and_their_plots_render_offline(project: Project) -> None:
    project.set_params(train={"epochs": 2, "checks": {"skip": ["input_independent_baseline"]}})
    project.dvc("repro")
    project.commit("a first trained model")
    project.dvc("exp", "run", "-S", "train.lr=0.001", "-n", "faster")

    table = project.dvc("exp", "show", "--csv", "--no-pager").stdout
    header, *rows = [line.split(",") for line in table.strip().splitlines()]
    faster = dict(zip(header, next(row for row in rows if row[0] == "faster")))
    assert faster["params.yaml:train.lr"] == "0.001"
    assert float(faster["val.mae"]) > 0
    assert "faster" in project.dvc("metrics", "diff", "HEAD", "faster").output

    project.dvc("plots", "diff", "HEAD", "faster", "-o", "plots")
    page = project.path("plots/index.html").read_text()
    # Every script is inlined: nothing is fetched when the page is opened.
    assert "cdn.jsdelivr.net" not in page and not re.search(r"<script[^>]*\bsrc=", page)
    assert "vegaEmbed(" in page and "dvclive/plots/metrics/val/loss.tsv" in page
    assert "reports/train/lr_range.png" in page
