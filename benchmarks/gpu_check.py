"""The GPU check: Loopline's CUDA paths measured on the machine at hand, in one command.

    .venv/bin/python benchmarks/gpu_check.py pack .state/gpu-pack     # here: data, a model, small wheels
    python3 benchmarks/gpu_check.py --pack .state/gpu-pack [--out gpu.json]   # on the GPU machine

What it measures, for the bike and ACS data:
- training throughput of Loopline's trainer and of the bare PyTorch loop (benchmarks/train_throughput.py's
  two contenders, each in its own process) on CUDA in fp32, bf16 and fp16, against both on the CPU;
- bit-level determinism: the same seeded run twice (deterministic algorithms on), on the CPU and on CUDA
  in fp32 and bf16: identical weights, or the largest difference where CUDA gives none;
- DDP over NCCL when two GPUs exist (`torchrun --standalone --nproc_per_node 2`, the trainer's own DDP
  path): the largest parameter gap between the ranks after training;
- serving through ONNX Runtime's CUDA provider where it is installed: latency at batch 1 and 1024 and the
  largest difference from the CPU provider on the same rows.
Without CUDA it runs the CPU rows and says so.

The GPU machine may reach no package registry and have only torch, onnx, onnxruntime, pandas, pyarrow,
scikit-learn and yaml. `pack` (run where the project's environment is) writes what else the check needs,
well under 64 MiB: the prepared bike and ACS splits with their params and schemas (the data packages are
large), a bike model exported to ONNX, and the wheels of the small pure-Python pieces of the
environment (pydantic and its core for several Python versions, ruamel.yaml, tqdm). The check unpacks
those wheels into the pack (no pip, no index) when its Python lacks them.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

SOURCES = ("bike", "acs")
PRECISIONS = ("fp32", "bf16", "fp16")
CARRIED = (
    "pydantic",
    "pydantic-core",
    "annotated-types",
    "typing-inspection",
    "typing_extensions",
    "ruamel.yaml",
    "tqdm",
)
"""The project's environment beyond what a bare GPU machine has, as pinned in requirements.lock."""
IMPORT_NAMES = {
    "pydantic-core": "pydantic_core",
    "annotated-types": "annotated_types",
    "typing-inspection": "typing_inspection",
}
PYTHONS = ("3.10", "3.11", "3.12", "3.13")
"""pydantic-core is compiled: its wheel is carried for each of these."""


# ------------------------------------------------------------------------------------------ pack
def pinned(name: str) -> str:
    for line in (REPO / "requirements.lock").read_text().splitlines():
        left = line.split("==")[0].strip().lower().replace("_", "-")
        if left == name.lower().replace("_", "-"):
            return line.strip()
    raise SystemExit(f"{name} is not pinned in requirements.lock")


def pack(out: Path, epochs: int, sources: list[str], wheels: bool = True) -> None:
    """Prepared data of the sources, a bike model in ONNX, and the carried wheels, under `out`."""
    from train_throughput import prepared_project

    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(REPO), LOOPLINE_ROOT="")
    for source in sources:
        scratch = prepared_project(source, None)
        target = out / "projects" / source
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        for name in ("params.yaml", "schemas", "data/prepared"):
            src = scratch / name
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(src, target / name) if src.is_dir() else shutil.copy2(src, target / name)
        if source == "bike":  # a short training and the export, as the stages run them
            _set_epochs(scratch, epochs)
            for module in ("models.train", "models.export"):
                env["LOOPLINE_ROOT"] = str(scratch)
                subprocess.run([sys.executable, "-m", module], cwd=scratch, env=env, check=True,
                               stdout=subprocess.DEVNULL)  # fmt: skip
            shutil.copytree(scratch / "artifacts/onnx", target / "onnx")
        shutil.rmtree(scratch, ignore_errors=True)
    folder = out / "wheels"
    shutil.rmtree(folder, ignore_errors=True)
    pip = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:", "-d", str(folder)]
    for name in CARRIED if wheels else ():
        if name == "pydantic-core":
            for version in PYTHONS:
                subprocess.run([*pip, "--python-version", version, "--platform", "manylinux2014_x86_64",
                                pinned(name)], check=True)  # fmt: skip
        else:
            subprocess.run([*pip, pinned(name)], check=True)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"packed {out}: {size / 2**20:.1f} MiB (the limit beside the project is 64 MiB)")


def _set_epochs(project: Path, epochs: int) -> None:
    import yaml

    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train"]["epochs"] = epochs
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:
        return False


def use_pack_wheels(pack_dir: Path) -> None:
    """Unpack the carried wheels into the pack when this Python lacks them; children see them too."""
    if all(_importable(IMPORT_NAMES.get(n, n).split(".")[0]) for n in CARRIED):
        return
    site = pack_dir / f"site-{platform.python_version()}"
    if not site.exists():
        tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
        wheels = [w for w in sorted((pack_dir / "wheels").glob("*.whl")) if "-cp" not in w.name or f"-{tag}-" in w.name]
        for wheel in wheels:  # a wheel is a zip of what goes into site-packages: no pip needed
            with zipfile.ZipFile(wheel) as archive:
                archive.extractall(site)
    sys.path.insert(0, str(site))
    os.environ["PYTHONPATH"] = os.pathsep.join([str(site), str(REPO), os.environ.get("PYTHONPATH", "")])


# ----------------------------------------------------------------------------------- the workers
def determinism_worker(project: Path, device_name: str, precision: str, epochs: int) -> dict[str, Any]:
    """One seeded run with deterministic algorithms: the weights' hash, and the weights kept for a diff."""
    import torch

    from loopline.config import load_params
    from loopline.paths import ProjectPaths
    from models.train import build_model, load_prepared
    from models.trainer import seed_everything, train_model

    paths = ProjectPaths(project)
    params = load_params(paths.params)
    recipe = params.train.model_copy(
        update={"epochs": epochs, "patience": epochs + 1, "precision": precision, "deterministic": True}
    )
    seed_everything(params.seed, True)
    data = load_prepared(paths)
    model = build_model(data, params)
    lr = recipe.lr if isinstance(recipe.lr, float) else 3e-4
    train_model(model, data.batch("train"), data.batch("val"), recipe, seed=params.seed, lr=lr,
                device=torch.device(device_name))  # fmt: skip
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    digest = hashlib.sha256(b"".join(v.numpy().tobytes() for v in state.values())).hexdigest()
    kept = Path(tempfile.mkdtemp(prefix="loopline-gpu-check-")) / "weights.pt"
    torch.save(state, kept)
    return {"sha256": digest, "weights": str(kept)}


def ddp_worker(project: Path, epochs: int) -> dict[str, Any]:
    """A rank of `torchrun --nproc_per_node 2`: the trainer's DDP path over NCCL, then the rank gap."""
    from loopline.config import load_params
    from loopline.paths import ProjectPaths
    from models.train import fit, init_distributed, load_prepared, max_parameter_gap_across_ranks

    rank, world = init_distributed()
    params = load_params(ProjectPaths(project).params)
    params = params.model_copy(update={"train": params.train.model_copy(update={"epochs": epochs, "lr": 3e-3})})
    start = time.perf_counter()
    fitted = fit(load_prepared(ProjectPaths(project)), params, run_checks=False, find_lr=False, rank=rank,
                 world=world, refit=())  # fmt: skip
    seconds = time.perf_counter() - start
    gap = max_parameter_gap_across_ranks(fitted.model)
    import torch.distributed as dist

    backend = dist.get_backend()
    dist.destroy_process_group()
    return {"rank": rank, "world": world, "backend": backend, "max_parameter_gap": gap, "seconds": seconds}


def run_json(command: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    proc = subprocess.run(command, capture_output=True, text=True, env=env or dict(os.environ))
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:4])}... failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------- the checks
def throughput(project: Path, devices: list[str], epochs: int) -> list[dict[str, Any]]:
    from train_throughput import run_worker

    rows = []
    for device in devices:
        for precision in PRECISIONS if device == "cuda" else ("fp32",):
            for contender in ("bare", "loopline"):
                result = run_worker(contender, project, epochs, device, [precision])
                rows.append({**result, "device": device})
    cpu = {r["contender"]: r["samples_per_s"] for r in rows if r["device"] == "cpu"}
    for r in rows:
        bare = next(b["samples_per_s"] for b in rows if b["contender"] == "bare" and
                    (b["device"], b["precision"]) == (r["device"], r["precision"]))  # fmt: skip
        r["vs_bare"] = r["samples_per_s"] / bare
        r["vs_cpu"] = r["samples_per_s"] / cpu[r["contender"]] if r["contender"] in cpu else None
    return rows


def determinism(project: Path, devices: list[str], epochs: int) -> list[dict[str, Any]]:
    import torch

    rows = []
    cases = [("cpu", "fp32")] + ([("cuda", "fp32"), ("cuda", "bf16")] if "cuda" in devices else [])
    for device, precision in cases:
        runs = [
            run_json(
                [
                    sys.executable,
                    __file__,
                    "--worker",
                    "determinism",
                    "--project",
                    str(project),
                    "--device",
                    device,
                    "--precision",
                    precision,
                    "--epochs",
                    str(epochs),
                ]
            )  # fmt: skip
            for _ in range(2)
        ]
        identical = runs[0]["sha256"] == runs[1]["sha256"]
        gap = 0.0
        if not identical:
            a, b = (torch.load(r["weights"], weights_only=True) for r in runs)
            gap = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
        for r in runs:
            shutil.rmtree(Path(r["weights"]).parent, ignore_errors=True)
        rows.append({"device": device, "precision": precision, "bit_identical": identical, "max_abs_diff": gap})
    return rows


def ddp_nccl(project: Path, epochs: int) -> dict[str, Any]:
    import torch

    if torch.cuda.device_count() < 2:
        return {"ran": False, "reason": f"{torch.cuda.device_count()} GPU(s): DDP over NCCL needs two"}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "--master_port", str(port), __file__, "--worker", "ddp", "--project", str(project), "--epochs",
               str(epochs)]  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"ran": False, "reason": f"torchrun failed: {proc.stderr[-2000:]}"}
    ranks = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith('{"rank"')]
    return {"ran": True, "ranks": ranks, "max_parameter_gap": max(r["max_parameter_gap"] for r in ranks)}


def onnx_cuda(project: Path, seconds: float) -> dict[str, Any]:
    import numpy as np
    import onnxruntime as ort
    import pandas as pd
    import torch
    from inference import timed  # benchmarks/inference.py

    from loopline.features import encode_features
    from loopline.schema import load_schema

    if not torch.cuda.is_available():
        return {"ran": False, "reason": "no CUDA device"}
    providers = ort.get_available_providers()
    if "CUDAExecutionProvider" not in providers:
        return {"ran": False, "reason": f"ONNX Runtime's CUDA provider is not installed (providers: {providers})"}
    model = project / "onnx" / "model.onnx"
    schema = load_schema(project / "data/prepared/schema.json")
    test = pd.read_parquet(project / "data/prepared/test.parquet")
    enc = encode_features(pd.concat([test] * (1 + 1024 // len(test))).head(1024), schema)
    sessions = {
        "cuda": ort.InferenceSession(str(model), providers=["CUDAExecutionProvider", "CPUExecutionProvider"]),
        "cpu": ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]),
    }
    rows = []
    for batch in (1, 1024):
        feed = {"numeric": enc.numeric[:batch], "categorical": enc.categorical[:batch]}
        outputs = {name: s.run(None, feed)[0] for name, s in sessions.items()}
        latency = {
            name: float(np.median(timed(lambda s=s: s.run(None, feed), seconds))) for name, s in sessions.items()
        }
        rows.append({
            "batch": batch,
            "cuda_ms": latency["cuda"] * 1e3,
            "cpu_ms": latency["cpu"] * 1e3,
            "max_abs_diff": float(np.max(np.abs(outputs["cuda"] - outputs["cpu"]))),
        })  # fmt: skip
    return {"ran": True, "providers": sessions["cuda"].get_providers(), "rows": rows}


# ------------------------------------------------------------------------------------------- main
def device_facts() -> dict[str, Any]:
    import onnxruntime as ort
    import torch

    facts: dict[str, Any] = {
        "host": socket.gethostname(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "onnxruntime": ort.__version__,
        "cpu_cores": os.cpu_count(),
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
    }
    if facts["gpus"]:
        facts["bf16_supported"] = torch.cuda.is_bf16_supported()
    return facts


def report(result: dict[str, Any]) -> str:
    facts = result["device"]
    lines = [f"GPU check on {', '.join(facts['gpus']) or 'no GPU (CPU only)'}; torch {facts['torch']} (CUDA "
             f"{facts['cuda']}), onnxruntime {facts['onnxruntime']}, Python {facts['python']}, "
             f"{facts['cpu_cores']} CPU cores", ""]  # fmt: skip
    for source, rows in result["throughput"].items():
        lines += [f"training throughput, {source}, {result['epochs']} epochs", "",
                  "| device | precision | contender | samples/s | vs bare | vs CPU |", "|---|---|---|---:|---:|---:|"]  # fmt: skip
        for r in rows:
            vs_cpu = f"{r['vs_cpu']:.1f}x" if r["vs_cpu"] else "-"
            lines.append(f"| {r['device']} | {r['precision']} | {r['contender']} | {r['samples_per_s']:,.0f} | "
                         f"{r['vs_bare']:.2f}x | {vs_cpu} |")  # fmt: skip
        lines.append("")
    lines += ["determinism (the same seeded run twice)", "", "| device | precision | bit-identical | max abs diff |",
              "|---|---|---|---:|"]  # fmt: skip
    lines += [f"| {r['device']} | {r['precision']} | {'yes' if r['bit_identical'] else 'no'} | {r['max_abs_diff']:.3g} |"
              for r in result["determinism"]]  # fmt: skip
    ddp = result["ddp_nccl"]
    lines += [
        "",
        "DDP over NCCL: " + (f"ran, largest rank gap {ddp['max_parameter_gap']}" if ddp["ran"] else ddp["reason"]),
    ]
    onnx = result["onnx_cuda"]
    lines += ["", "ONNX Runtime CUDA provider: " + ("ran" if onnx["ran"] else onnx["reason"])]
    if onnx["ran"]:
        lines += ["", "| batch | CUDA ms | CPU ms | max abs diff |", "|---:|---:|---:|---:|"]
        lines += [
            f"| {r['batch']} | {r['cuda_ms']:.3f} | {r['cpu_ms']:.3f} | {r['max_abs_diff']:.2g} |" for r in onnx["rows"]
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", nargs="?", choices=("check", "pack"), default="check")
    parser.add_argument("directory", nargs="?", type=Path, help="pack: where to write the pack")
    parser.add_argument("--pack", type=Path, default=REPO / ".state" / "gpu-pack")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--sources", nargs="+", default=list(SOURCES), choices=SOURCES)
    parser.add_argument("--seconds", type=float, default=2.0, help="timing per ONNX Runtime case")
    parser.add_argument("--out", type=Path, help="also write the figures as JSON here")
    parser.add_argument("--no-wheels", action="store_true", help="pack: leave the wheels out (this Python has them)")
    parser.add_argument("--worker", choices=("determinism", "ddp"), help=argparse.SUPPRESS)
    parser.add_argument("--project", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.action == "pack":
        pack(args.directory or args.pack, args.epochs, args.sources, wheels=not args.no_wheels)
        return
    use_pack_wheels(args.pack)
    if args.worker == "determinism":
        print(json.dumps(determinism_worker(args.project, args.device, args.precision, args.epochs)))
        return
    if args.worker == "ddp":
        print(json.dumps(ddp_worker(args.project, args.epochs)))
        return

    import torch

    if not (args.pack / "projects").is_dir():
        raise SystemExit(f"{args.pack}: no pack here; run `benchmarks/gpu_check.py pack {args.pack}` where the "
                         "project's environment is, and bring the folder along")  # fmt: skip
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    projects = {source: args.pack / "projects" / source for source in args.sources}
    result = {
        "device": device_facts(),
        "epochs": args.epochs,
        "throughput": {source: throughput(project, devices, args.epochs) for source, project in projects.items()},
        "determinism": determinism(args.pack / "projects/bike", devices, args.epochs),
        "ddp_nccl": ddp_nccl(args.pack / "projects/bike", args.epochs),
        "onnx_cuda": onnx_cuda(args.pack / "projects/bike", args.seconds),
    }
    if "cuda" not in devices:
        print("no CUDA device here: CPU rows only; the GPU path was not exercised")
    print(report(result))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
