"""benchmarks/gpu_check.py: the GPU check runs where Python has only what a bare GPU machine has (torch,
onnx, onnxruntime, pandas, pyarrow, scikit-learn, yaml and what they need) plus the wheels its pack
carries (a virtual environment of links to just those). Here without CUDA it runs its CPU rows; the
test marked `gpu` runs where CUDA is."""

from __future__ import annotations

import importlib.metadata
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

CHECK = REPO / "benchmarks" / "gpu_check.py"
BARE = ("torch", "onnx", "onnxruntime", "onnxruntime-gpu", "pandas", "pyarrow", "scikit-learn", "PyYAML",
        "matplotlib", "pytest")  # fmt: skip


def distributions_with_dependencies(names: tuple[str, ...]) -> set[str]:
    """The installed distributions `names` need, themselves included (extras left out)."""
    seen, todo = {}, list(names)
    while todo:
        try:
            dist = importlib.metadata.distribution(todo.pop())
        except importlib.metadata.PackageNotFoundError:
            continue
        key = dist.metadata["Name"].lower().replace("_", "-")
        if key in seen:
            continue
        seen[key] = dist
        todo += [re.split(r"[ ;<>=!~\[(]", r, maxsplit=1)[0] for r in dist.requires or [] if "extra ==" not in r]
    return set(seen)


def bare_python(where: Path, also: tuple[str, ...] = ()) -> Path:
    """A virtual environment holding only the bare GPU machine's packages and their dependencies (and
    `also`), linked from this one: its python, and every process the check starts with it, can import
    nothing else."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True)
    [site] = where.glob("lib/python*/site-packages")
    wanted = distributions_with_dependencies(BARE + also)
    for dist in importlib.metadata.distributions():
        if dist.metadata["Name"].lower().replace("_", "-") not in wanted:
            continue
        tops = {Path(f.parts[0]) for f in dist.files or [] if f.parts[0] not in ("..", "bin")}
        for top in tops:
            source = Path(dist.locate_file(top))
            if source.exists() and not (site / top).exists():
                (site / top).symlink_to(source)
    return where / "bin" / "python"


@pytest.fixture(scope="module")
def pack(tmp_path_factory) -> Path:
    """A pack of the bike data and a bike model; the wheels are left out (this Python has them)."""
    out = tmp_path_factory.mktemp("gpu-pack")
    subprocess.run([sys.executable, str(CHECK), "pack", str(out), "--sources", "bike", "--epochs", "1", "--no-wheels"],
                   check=True, capture_output=True, text=True)  # fmt: skip
    return out


def run_check(pack: Path, tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    """The check under a Python with the bare machine's packages and, as the pack's wheels would give
    them, the carried ones (this pack leaves the wheels out)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from gpu_check import CARRIED

    python = bare_python(tmp_path / "bare", also=CARRIED)
    out = tmp_path / "gpu.json"
    proc = subprocess.run(
        [str(python), str(CHECK), "--pack", str(pack), "--sources", "bike", "--epochs", "1", "--seconds", "0.2",
         "--out", str(out), *args],
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc, json.loads(out.read_text())


def test_the_gpu_check_needs_only_a_bare_gpu_machines_packages_and_its_pack(pack: Path, tmp_path: Path) -> None:
    proc, result = run_check(pack, tmp_path)
    import torch

    devices = {"cpu", "cuda"} if torch.cuda.is_available() else {"cpu"}
    rows = result["throughput"]["bike"]
    assert {(r["device"], r["contender"]) for r in rows} == {(d, c) for d in devices for c in ("bare", "loopline")}
    assert all(r["samples_per_s"] > 0 for r in rows)
    [cpu] = [r for r in result["determinism"] if r["device"] == "cpu"]
    assert cpu["bit_identical"] and cpu["max_abs_diff"] == 0.0  # the same seeded run twice, on the CPU
    if "cuda" not in devices:
        assert "no CUDA device here" in proc.stdout
        assert result["onnx_cuda"] == {"ran": False, "reason": "no CUDA device"}
        assert not result["ddp_nccl"]["ran"]


@pytest.mark.gpu
@pytest.mark.skipif("not __import__('torch').cuda.is_available()", reason="needs a CUDA device")
def test_on_cuda_training_runs_in_every_precision_and_fp32_repeats_bit_for_bit(pack: Path, tmp_path: Path) -> None:
    _, result = run_check(pack, tmp_path)
    cuda = [r for r in result["throughput"]["bike"] if r["device"] == "cuda"]
    assert {r["precision"] for r in cuda} == {"fp32", "bf16", "fp16"}
    [fp32] = [r for r in result["determinism"] if (r["device"], r["precision"]) == ("cuda", "fp32")]
    assert fp32["bit_identical"], fp32
    if result["onnx_cuda"]["ran"]:
        assert all(r["max_abs_diff"] < 1e-3 for r in result["onnx_cuda"]["rows"])
    if result["ddp_nccl"]["ran"]:
        assert result["ddp_nccl"]["max_parameter_gap"] == 0.0
