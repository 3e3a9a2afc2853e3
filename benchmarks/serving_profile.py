"""Where a small request's time goes: Loopline's service and the strong endpoint, sampled by py-spy.

Loopline's BentoML service and the strong hand-written endpoint (benchmarks/servers/strong_fastapi.py)
under the same load: single records by default; `--records N` sends N records a request, and with
`--arrow` Loopline's service gets them as an Arrow IPC stream (the strong endpoint, which takes JSON
only, the same rows as JSON).

Each server runs on 127.0.0.1 with 1 worker; wrk sends single-record requests on `--connections`
connections for `--seconds` while py-spy samples the serving process (`--rate` per second, busy samples
only). Every sample is charged to the innermost frame's package, grouped into components (the HTTP server,
routing and middleware, tracing, metrics, validation, Loopline's own code, ONNX Runtime, the event loop),
and turned into CPU microseconds per request: samples / rate / requests answered while sampling.

    .venv/bin/pip install py-spy==0.4.3     # a sampling profiler; not part of the pinned environment
    .venv/bin/python benchmarks/serving_profile.py [--seconds 10] [--connections 32] [--records 256 --arrow]
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _serving_benchmark():
    """benchmarks/serving.py (its name is the service package's, so it is loaded by path)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("serving_benchmark", REPO / "benchmarks" / "serving.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


_bench = _serving_benchmark()
BIN, REFERENCE, free_port, wait_ready, wrk = (
    _bench.BIN,
    _bench.REFERENCE,
    _bench.free_port,
    _bench.wait_ready,
    _bench.wrk,
)

COMPONENTS = [  # (component, patterns on a frame's file path), first match wins
    ("ONNX Runtime (the model)", ("onnxruntime/",)),
    ("request log", ("serving/request_log.py",)),
    ("Loopline's request path", ("serving/", "loopline/")),
    ("validation (pydantic)", ("pydantic/", "pydantic_core/")),
    ("tracing (OpenTelemetry)", ("opentelemetry/", "trace/__init__.py", "trace/span.py", "context/__init__.py")),
    ("metrics (Prometheus)", ("prometheus_client/", "server/http/instruments.py", "bentoml/metrics")),
    ("BentoML's server code", ("bentoml/", "_bentoml_impl/", "_bentoml_sdk/")),
    ("routing and middleware (Starlette, FastAPI)", ("starlette/", "fastapi/")),
    ("HTTP server (uvicorn, httptools, h11)", ("uvicorn/", "httptools/", "h11/")),
    ("JSON (orjson, json)", ("orjson", "json/")),
    ("event loop and sockets (asyncio)", ("asyncio/", "selectors.py", "socket.py", "uvloop/", "anyio/")),
    ("logging", ("logging/",)),
]
FRAME = re.compile(r"\((?P<file>[^:()]+):\d+\)$")


def component(stack: str) -> tuple[str, str]:
    """The component of a sample and the frame that put it there: its innermost frame with a known
    file, else 'other'."""
    for frame in reversed(stack.split(";")):
        match = FRAME.search(frame)
        path = match["file"] if match else frame
        for name, patterns in COMPONENTS:
            if any(p in path for p in patterns):
                return name, frame
    return "other (interpreter, threads, C code)", stack.split(";")[-1]


def serving_process(root_pid: int, name: str) -> int:
    """The process that answers requests: BentoML's service worker, or uvicorn itself."""
    import psutil

    root = psutil.Process(root_pid)
    for child in root.children(recursive=True):
        if name == "loopline" and "_bentoml_impl.worker.service" in " ".join(child.cmdline()):
            return child.pid
    return root_pid


def profile(name: str, command: list[str], env: dict[str, str], body: Path, args: argparse.Namespace) -> dict:
    port = free_port()
    command = [part.replace("{port}", str(port)) for part in command]
    log = tempfile.NamedTemporaryFile(prefix="loopline-profile-", suffix=".log", delete=False)
    process = subprocess.Popen(command, cwd=REPO, env={**os.environ, **env}, start_new_session=True,
                               stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    url = f"http://127.0.0.1:{port}/predict"
    try:
        wait_ready(url, body.with_suffix(".json").read_bytes(), process)  # JSON: the same rows
        wrk(url, body, args.connections, 2.0)  # warm-up
        pid = serving_process(process.pid, name)
        raw = Path(tempfile.mkdtemp(prefix="loopline-profile-")) / "stacks.txt"
        spy = subprocess.Popen([args.py_spy, "record", "--pid", str(pid), "--rate", str(args.rate), "--format", "raw",
                                "--output", str(raw), "--duration", str(int(args.seconds)), "--nonblocking"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
        load = {}
        runner = threading.Thread(target=lambda: load.setdefault("l", wrk(url, body, args.connections, args.seconds)))
        runner.start()
        runner.join()
        _, err = spy.communicate(timeout=60)
        if spy.returncode != 0 or not raw.exists():
            raise RuntimeError(f"py-spy failed: {err[-2000:]}")
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=30)
    samples: collections.Counter[str] = collections.Counter()
    frames: collections.Counter[tuple[str, str]] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack:
            part, frame = component(stack)
            samples[part] += int(count)
            frames[(part, frame)] += int(count)
    shutil.rmtree(raw.parent, ignore_errors=True)
    requests = load["l"].requests_per_s * args.seconds
    per_request = 1e6 / args.rate / requests
    top = [(part, frame, n * per_request) for (part, frame), n in frames.most_common(args.top)]
    return {"load": load["l"], "us_per_request": {c: n * per_request for c, n in samples.items()}, "top": top}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rate", type=int, default=500, help="py-spy samples per second")
    parser.add_argument("--py-spy", default=shutil.which("py-spy") or str(BIN / "py-spy"))
    parser.add_argument("--top", type=int, default=0, help="also list the N frames that cost most, per server")
    parser.add_argument("--records", type=int, default=1, help="records per request")
    parser.add_argument("--arrow", action="store_true", help="Loopline's service gets an Arrow IPC stream body")
    args = parser.parse_args()
    if not Path(args.py_spy).exists():
        sys.exit("py-spy not found: .venv/bin/pip install py-spy==0.4.3")

    import json

    import pandas as pd

    from loopline.paths import project_root
    from loopline.registry import Registry
    from loopline.schema import load_schema

    registry = Registry.for_project(project_root())
    version = registry.production() or sys.exit("no production model: run `make pipeline` first")
    model_dir = registry.root / "versions" / version
    schema = load_schema(model_dir / "schema.json")
    rows = pd.read_parquet(model_dir / "test.parquet")[[c.name for c in schema.features]]
    rows = pd.concat([rows] * (1 + args.records // len(rows)), ignore_index=True).head(args.records)
    scratch = Path(tempfile.mkdtemp(prefix="loopline-profile-"))
    body = scratch / "body.json"
    body.write_text(json.dumps({"records": json.loads(rows.to_json(orient="records"))}))
    bodies = {"loopline": body, REFERENCE: body}
    if args.arrow:
        from serving.arrow import encode_table

        bodies["loopline"] = scratch / "body.arrow"
        bodies["loopline"].write_bytes(encode_table(rows))
    env = {"BENTOML_HOME": os.environ.get("BENTOML_HOME", str(REPO / ".state" / "bentoml")),
           "BENTOML_DO_NOT_TRACK": "true", "LOOPLINE_REQUEST_LOG": str(scratch / "requests")}  # fmt: skip
    servers = {
        "loopline": ([str(BIN / "bentoml"), "serve", "serving.service:Predictor", "--host", "127.0.0.1", "--port",
                      "{port}"], env),
        REFERENCE: ([str(BIN / "uvicorn"), "benchmarks.servers.strong_fastapi:app", "--host", "127.0.0.1", "--port",
                     "{port}", "--log-level", "warning"], {"LOOPLINE_BENCH_MODEL": str(model_dir)}),
    }  # fmt: skip
    results = {}
    for name, (command, server_env) in servers.items():
        print(f"profiling {name} ...", file=sys.stderr, flush=True)
        results[name] = profile(name, command, server_env, bodies[name], args)
    shutil.rmtree(scratch, ignore_errors=True)

    what = "single-record request" if args.records == 1 else f"request of {args.records} records"
    if args.arrow:
        what += " (Loopline's service: Arrow)"
    print(f"\nCPU microseconds per {what}, by component (py-spy, {args.rate}/s, busy samples), "
          f"wrk -c{args.connections} -d{args.seconds:g}s, 1 worker, {os.cpu_count()} cores\n")  # fmt: skip
    names = list(results)
    print("| component | " + " | ".join(names) + " |")
    print("|---|" + "---:|" * len(names))
    parts = sorted({c for r in results.values() for c in r["us_per_request"]},
                   key=lambda c: -results["loopline"]["us_per_request"].get(c, 0))  # fmt: skip
    for part in parts:
        print(f"| {part} | " + " | ".join(f"{results[n]['us_per_request'].get(part, 0):.0f}" for n in names) + " |")
    print(
        "| **total (CPU)** | "
        + " | ".join(f"**{sum(results[n]['us_per_request'].values()):.0f}**" for n in names)
        + " |"
    )
    print(
        "| req/s under the profiler | " + " | ".join(f"{results[n]['load'].requests_per_s:,.0f}" for n in names) + " |"
    )
    for name in names if args.top else ():
        print(f"\n{name}: the {args.top} frames that cost most (µs per request)\n")
        for part, frame, us in results[name]["top"]:
            print(f"- {us:.0f} µs, {part}: {frame}")


if __name__ == "__main__":
    main()
