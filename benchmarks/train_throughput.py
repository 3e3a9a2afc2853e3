"""Benchmark training throughput: Loopline's trainer against a bare PyTorch loop and PyTorch Lightning.

All three run the same algorithm: the same TabularNet on the same prepared split, batch size and batch
order, AdamW with the params.yaml schedule and gradient clipping, and a validation pass each epoch.
What differs is the machinery around it. Each contender runs in its own process, so its peak memory (max RSS; on CUDA
also the allocator's peak) is its own. Throughput is training rows processed per second of the fit
call, data already in memory.

- bare:      the shortest loop that does that: forward, loss, backward, clip, step, schedule, and
             a validation loss per epoch. No checkpoints, no early stopping, no logging.
- loopline:  `models.trainer.train_model` as the train stage runs it: the above plus early-stopping
             bookkeeping (best weights kept), atomic checkpoints every `checkpoint_every_steps` and at
             each epoch, per-epoch log lines.
- lightning: a LightningModule over the same network and the same algorithm; Lightning's logger,
             checkpointing and progress bar off. Skipped when Lightning is not installed
             (`make bench-deps` installs the pinned version).

    .venv/bin/python benchmarks/train_throughput.py [--source bike|acs] [--epochs 3] [--repeat 3]
        [--device cpu|cuda] [--precision fp32 bf16 fp16]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
CONTENDERS = ("bare", "loopline", "lightning")


# ---------------------------------------------------------------------------------------- the data
def prepared_project(source: str, keep: Path | None) -> Path:
    """A scratch project with the prepared splits of a bundled dataset (or an existing one, --project)."""
    if keep is not None:
        return keep
    from prepare import scratch_project  # benchmarks/prepare.py: params.yaml and schemas for the source

    root = scratch_project(source)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    for module in ("dataprep.ingest", "dataprep.prepare"):
        subprocess.run([sys.executable, "-m", module], cwd=root, env=env, check=True, stdout=subprocess.DEVNULL)
    return root


# ------------------------------------------------------------------------------------ the workers
def worker(contender: str, project: Path, epochs: int, device_name: str, precision: str) -> dict:
    import torch

    from loopline.config import load_params
    from loopline.paths import ProjectPaths
    from models.train import build_model, load_prepared
    from models.trainer import autocast, epoch_batches, evaluate_loss, make_scheduler, seed_everything, train_model

    paths = ProjectPaths(project)
    params = load_params(paths.params)
    recipe = params.train.model_copy(update={"epochs": epochs, "patience": epochs + 1, "precision": precision})
    seed_everything(params.seed, recipe.deterministic)
    device = torch.device(device_name)
    data = load_prepared(paths)
    train, val = data.batch("train"), data.batch("val")
    model = build_model(data, params)
    lr = recipe.lr if isinstance(recipe.lr, float) else 3e-4
    rows = len(train) * epochs
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    if contender == "bare":
        sync()
        start = time.perf_counter()
        model.to(device)
        train_d, val_d = train.to(device), val.to(device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=recipe.weight_decay)
        steps = len(epoch_batches(len(train_d), recipe.batch_size, params.seed, 0)) * epochs
        scheduler = make_scheduler(optimizer, recipe, lr, steps)
        scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        model.train()
        for epoch in range(epochs):
            for index in epoch_batches(len(train_d), recipe.batch_size, params.seed, epoch):
                batch = train_d.take(index.to(device))
                with autocast(device, precision):
                    logits = model.logits(batch.numeric, batch.categorical)
                loss = model.loss(logits, batch.target)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if recipe.grad_clip_norm is not None:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip_norm)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
            evaluate_loss(model, val_d, device, precision)
        sync()
        seconds = time.perf_counter() - start
    elif contender == "loopline":
        checkpoint = Path(tempfile.mkdtemp(prefix="loopline-bench-ckpt-")) / "train.pt"
        start = time.perf_counter()
        train_model(model, train, val, recipe, seed=params.seed, lr=lr, device=device, checkpoint=checkpoint)
        sync()
        seconds = time.perf_counter() - start
        shutil.rmtree(checkpoint.parent, ignore_errors=True)
    else:
        seconds = _lightning_fit(model, train, val, recipe, params.seed, lr, device, precision, epochs)

    out = {
        "contender": contender,
        "samples_per_s": rows / seconds,
        "seconds": seconds,
        "device": str(device),
        "precision": precision,
    }
    if device.type == "cuda":
        out["cuda_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
        out["gpu"] = torch.cuda.get_device_name(device)
    return out


def _lightning_fit(model, train, val, recipe, seed: int, lr: float, device, precision: str, epochs: int) -> float:
    import lightning as L
    import torch
    from torch.utils.data import DataLoader, Sampler

    from models.trainer import epoch_batches, make_scheduler

    class EpochBatches(Sampler):
        """The same per-epoch batch order as the other contenders; yields index tensors."""

        def __init__(self, n: int, shuffle: bool) -> None:
            self.n, self.shuffle, self.epoch = n, shuffle, 0

        def __iter__(self):
            if not self.shuffle:
                yield from torch.arange(self.n).split(8192)
                return
            yield from epoch_batches(self.n, recipe.batch_size, seed, self.epoch)
            self.epoch += 1

        def __len__(self) -> int:
            return -(-self.n // (recipe.batch_size if self.shuffle else 8192))

    class Indices(torch.utils.data.Dataset):
        def __init__(self, n: int) -> None:
            self.n = n

        def __len__(self) -> int:
            return self.n

        def __getitem__(self, index):
            return index

    class Module(L.LightningModule):
        """Data lives on the device, as in the other loops; the loaders hand out row indices."""

        def __init__(self) -> None:
            super().__init__()
            self.net = model

        def on_fit_start(self) -> None:
            self.train_data, self.val_data = train.to(self.device), val.to(self.device)

        def training_step(self, index, _):
            batch = self.train_data.take(index)
            return self.net.loss(self.net.logits(batch.numeric, batch.categorical), batch.target)

        def validation_step(self, index, _):
            batch = self.val_data.take(index)
            self.log("val_loss", self.net.loss(self.net.logits(batch.numeric, batch.categorical), batch.target))

        def configure_optimizers(self):
            optimizer = torch.optim.AdamW(self.parameters(), lr=lr, weight_decay=recipe.weight_decay)
            steps = len(EpochBatches(len(train), True)) * epochs
            return {
                "optimizer": optimizer,
                "lr_scheduler": {"scheduler": make_scheduler(optimizer, recipe, lr, steps), "interval": "step"},
            }

    loaders = [
        DataLoader(Indices(len(d)), sampler=EpochBatches(len(d), shuffle), batch_size=None)
        for d, shuffle in ((train, True), (val, False))
    ]
    lightning_precision = {"fp32": "32-true", "bf16": "bf16-mixed", "fp16": "16-mixed"}[precision]
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=1,
        precision=lightning_precision,
        gradient_clip_val=recipe.grad_clip_norm,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        deterministic=recipe.deterministic,
    )
    start = time.perf_counter()
    trainer.fit(Module(), *loaders)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def run_worker(contender: str, project: Path, epochs: int, device: str, precision: str) -> dict | None:
    """One contender in a fresh process: its result and its peak RSS."""
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        contender,
        "--project",
        str(project),
        "--epochs",
        str(epochs),
        "--device",
        device,
        "--precision",
        precision[0],
    ]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"),
    )
    _, status, usage = os.wait4(proc.pid, 0)
    stdout, stderr = proc.stdout.read(), proc.stderr.read()  # type: ignore[union-attr]
    if os.waitstatus_to_exitcode(status) != 0:
        if contender == "lightning" and "No module named 'lightning'" in stderr:
            return None
        raise SystemExit(f"{contender} failed:\n{stderr[-3000:]}")
    result = json.loads(stdout.strip().splitlines()[-1])
    result["peak_rss_mib"] = usage.ru_maxrss / 1024
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="bike", choices=("bike", "acs"))
    parser.add_argument("--project", type=Path, help="a project whose data/prepared already exists")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", nargs="+", default=["fp32"], choices=("fp32", "bf16", "fp16"))
    parser.add_argument("--worker", choices=CONTENDERS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.project, args.epochs, args.device, args.precision[0])))
        return

    project = prepared_project(args.source, args.project)
    rows = []
    for precision in args.precision:
        results: dict[str, list[dict]] = {}
        for _ in range(args.repeat):  # interleaved, so drift in machine load hits every contender alike
            for contender in CONTENDERS:
                result = run_worker(contender, project, args.epochs, args.device, [precision])
                if result is not None:
                    results.setdefault(contender, []).append(result)
        bare = statistics.median(r["samples_per_s"] for r in results["bare"])
        loopline = statistics.median(r["samples_per_s"] for r in results["loopline"])
        for contender, runs in results.items():
            speed = statistics.median(r["samples_per_s"] for r in runs)
            rows.append(
                {
                    "precision": precision,
                    "contender": contender,
                    "samples_per_s": speed,
                    "vs_bare": speed / bare,
                    "loopline_vs_this": loopline / speed,
                    "peak_rss_mib": max(r["peak_rss_mib"] for r in runs),
                    "cuda_peak_mib": max(r.get("cuda_peak_mib", 0.0) for r in runs),
                    "gpu": runs[0].get("gpu", ""),
                }
            )
    device = rows[0]["gpu"] or f"CPU, {os.cpu_count()} cores"
    print(
        f"\ntraining throughput, {args.source}, {args.epochs} epochs, batch "
        f"{_batch_size(project)}, median of {args.repeat}, on {device}\n"
    )
    print("| precision | contender | samples/s | vs bare | loopline / this | peak RSS MiB | CUDA peak MiB |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        cuda = f"{r['cuda_peak_mib']:.0f}" if r["cuda_peak_mib"] else "-"
        print(
            f"| {r['precision']} | {r['contender']} | {r['samples_per_s']:,.0f} | {r['vs_bare']:.2f}x | "
            f"{r['loopline_vs_this']:.2f}x | {r['peak_rss_mib']:.0f} | {cuda} |"
        )
    if "lightning" not in {r["contender"] for r in rows}:
        print("\nPyTorch Lightning is not installed: `make bench-deps` installs the pinned version.")
    if args.project is None:
        shutil.rmtree(project, ignore_errors=True)


def _batch_size(project: Path) -> int:
    from loopline.config import load_params

    return load_params(project / "params.yaml").train.batch_size


if __name__ == "__main__":
    main()
