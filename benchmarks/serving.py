"""Benchmark the HTTP service: Loopline's BentoML service against hand-written FastAPI endpoints.

Every server answers the same POST /predict body with the registry's production model, on 127.0.0.1,
started and measured one after another in this one run with wrk (a C load generator):

- loopline: `bentoml serve serving.service:Predictor` as shipped (request log on), then with the request
  log off (what logging costs), with adaptive batching (LOOPLINE_BATCHING: what arrives in one turn of
  the event loop; then waiting up to 2 ms), then with LOOPLINE_WORKERS=2;
- fastapi strong + onnxruntime, the reference: benchmarks/servers/strong_fastapi.py on uvicorn, an async
  endpoint validating the raw body against the same schema-derived request model in one call, the same
  RecordEncoder and ONNX session, orjson; no log, no metrics, no tracing; 1 worker, then 2;
- fastapi typical + onnxruntime: benchmarks/servers/plain_fastapi.py, a synchronous endpoint building a
  DataFrame per request (what most people write);
- fastapi typical + pytorch eager: the same over the trained PyTorch module in artifacts/model, the one
  the production model was exported from after `make pipeline`.

Single-record requests and 256-record requests (JSON; and for Loopline's service the same 256 records as
an Apache Arrow IPC stream body), `--connections` connections each, for `--seconds`.
In-process ONNX Runtime on the same 256 records gives the rows/s an HTTP server is compared with: the
graph alone on encoded arrays, and raw records encoded and run (the work a caller in the same process
does). RSS is the server's whole process tree after its load. Run after `make pipeline`:

    .venv/bin/python benchmarks/serving.py [--seconds 10] [--connections 32]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
BIN = Path(sys.executable).parent
REFERENCE = "fastapi strong + onnxruntime"

from serving.arrow import ARROW_STREAM, encode_table  # noqa: E402


@dataclass
class Load:
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int


@dataclass
class Contender:
    name: str
    command: list[str]
    env: dict[str, str]
    loads: dict[str, Load]
    rss_mib: float = 0.0
    arrow: bool = False
    """It takes Arrow IPC bodies (Loopline's service): the Arrow load runs too."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, body: bytes, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            request = urllib.request.Request(url, data=body, headers={"content-type": "application/json"})
            with urllib.request.urlopen(request, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} not answering after {timeout:.0f} s")


def wrk(url: str, body_file: Path, connections: int, seconds: float) -> Load:
    script = body_file.with_suffix(".lua")
    media = ARROW_STREAM if body_file.suffix == ".arrow" else "application/json"
    script.write_text(
        f'wrk.method = "POST"\nwrk.headers["Content-Type"] = "{media}"\n'
        f'local f = io.open("{body_file}", "rb")\nwrk.body = f:read("*a")\nf:close()\n'
    )
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout

    def latency(pct: str) -> float:
        value, unit = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M).groups()
        return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]

    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", out))
    errors += sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    return Load(float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)), latency("50"), latency("99"), errors)


def tree_rss_mib(pid: int) -> float:
    import psutil

    root = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)]) / 2**20


def measure(contender: Contender, bodies: dict[str, Path], connections: int, seconds: float) -> None:
    port = free_port()
    command = [part.replace("{port}", str(port)) for part in contender.command]
    log = tempfile.NamedTemporaryFile(prefix="loopline-bench-server-", suffix=".log", delete=False)
    process = subprocess.Popen(
        command,
        cwd=REPO,
        env={**os.environ, **contender.env},
        start_new_session=True,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/predict"
    try:
        try:
            wait_ready(url, bodies["1 record"].read_bytes(), process)
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"{contender.name}: {exc}; its output is in {log.name}") from None
        for label, body in bodies.items():
            if body.suffix == ".arrow" and not contender.arrow:
                continue
            wrk(url, body, connections, min(2.0, seconds))  # warm-up
            contender.loads[label] = wrk(url, body, connections, seconds)
        contender.rss_mib = tree_rss_mib(process.pid)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def in_process_rows_per_s(model_dir: Path, records: list[dict], seconds: float) -> dict[str, float]:
    from loopline.features import RecordEncoder
    from loopline.runtime import onnx_session, run_encoded
    from loopline.schema import load_schema

    schema = load_schema(model_dir / "schema.json")
    session, encode = onnx_session(model_dir / "model.onnx"), RecordEncoder(schema)
    encoded = encode(records)
    result = {}
    for label, call in (
        ("graph on encoded arrays", lambda: run_encoded(session, encoded)),
        ("records encoded, then the graph", lambda: run_encoded(session, encode(records))),
    ):
        for _ in range(50):
            call()
        samples, deadline = [], time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            call()
            samples.append(time.perf_counter() - start)
        result[label] = len(records) / statistics.median(samples)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="wrk duration per load")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--only", nargs="*", help="run only the contenders whose name contains one of these")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk not found: install it (Debian: apt-get install wrk)")

    import pandas as pd

    from loopline.paths import project_root
    from loopline.registry import Registry
    from loopline.schema import load_schema

    registry = Registry.for_project(project_root())
    version = registry.production()
    if not version:
        sys.exit("no production model: run `make pipeline` first")
    model_dir = registry.root / "versions" / version
    schema = load_schema(model_dir / "schema.json")
    features = [c.name for c in schema.features]
    rows = pd.read_parquet(model_dir / "test.parquet")
    records = json.loads(pd.concat([rows] * (1 + 256 // len(rows))).head(256)[features].to_json(orient="records"))

    scratch = Path(tempfile.mkdtemp(prefix="loopline-bench-"))
    bodies = {"1 record": scratch / "one.json", "256 records": scratch / "batch.json"}
    bodies["1 record"].write_text(json.dumps({"records": records[:1]}))
    bodies["256 records"].write_text(json.dumps({"records": records}))
    bodies["256 records, Arrow"] = scratch / "batch.arrow"
    bodies["256 records, Arrow"].write_bytes(encode_table(pd.DataFrame(records)))

    env = {
        "BENTOML_HOME": os.environ.get("BENTOML_HOME", str(REPO / ".state" / "bentoml")),
        "BENTOML_DO_NOT_TRACK": "true",
        "LOOPLINE_SWAP_POLL_SECONDS": "2",
    }
    bentoml = [str(BIN / "bentoml"), "serve", "serving.service:Predictor", "--host", "127.0.0.1", "--port", "{port}"]
    plain = [
        str(BIN / "uvicorn"),
        "benchmarks.servers.plain_fastapi:app",
        "--host",
        "127.0.0.1",
        "--port",
        "{port}",
        "--log-level",
        "warning",
    ]
    plain_env = {"LOOPLINE_BENCH_MODEL": str(model_dir)}
    strong = [part.replace("plain_fastapi", "strong_fastapi") for part in plain]
    contenders = [
        Contender(
            "loopline (bentoml), request log on",
            bentoml,
            {**env, "LOOPLINE_REQUEST_LOG": str(scratch / "requests")},
            {},
            arrow=True,
        ),
        Contender(
            "loopline (bentoml), request log off", bentoml, {**env, "LOOPLINE_REQUEST_LOG": "off"}, {}, arrow=True
        ),
        Contender(
            "loopline (bentoml), request log on, batching",
            bentoml,
            {**env, "LOOPLINE_REQUEST_LOG": str(scratch / "requests-b"), "LOOPLINE_BATCHING": "1"},
            {},
        ),
        Contender(
            "loopline (bentoml), request log on, batching, wait 2 ms",
            bentoml,
            {
                **env,
                "LOOPLINE_REQUEST_LOG": str(scratch / "requests-b2"),
                "LOOPLINE_BATCHING": "1",
                "LOOPLINE_BATCH_MAX_WAIT_MS": "2",
            },
            {},
        ),
        Contender(REFERENCE, strong, plain_env, {}),
        Contender("fastapi typical + onnxruntime", plain, {**plain_env, "LOOPLINE_BENCH_RUNTIME": "onnx"}, {}),
        Contender(
            "fastapi typical + pytorch eager",
            plain,
            {**plain_env, "LOOPLINE_BENCH_RUNTIME": "torch", "LOOPLINE_BENCH_MODEL": str(REPO / "artifacts" / "model")},
            {},
        ),
        Contender(
            "loopline (bentoml), request log on, 2 workers",
            bentoml,
            {**env, "LOOPLINE_REQUEST_LOG": str(scratch / "requests-2"), "LOOPLINE_WORKERS": "2"},
            {},
            arrow=True,
        ),
        Contender(f"{REFERENCE}, 2 workers", [*strong, "--workers", "2"], plain_env, {}),
    ]
    if args.only:
        contenders = [c for c in contenders if any(key in c.name for key in args.only)]
    for contender in contenders:
        print(f"measuring {contender.name} ...", file=sys.stderr, flush=True)
        measure(contender, bodies, args.connections, args.seconds)
    in_process = in_process_rows_per_s(model_dir, records, min(args.seconds, 3.0))
    shutil.rmtree(scratch, ignore_errors=True)

    reference = next((c for c in contenders if c.name == REFERENCE), None)
    print(
        f"\nserving, model {version} ({schema.name}), wrk -t1 -c{args.connections} -d{args.seconds:g}s on "
        f"127.0.0.1, {os.cpu_count()} cores\n"
    )
    print(
        "| server | records/request | req/s | rows/s | p50 ms | p99 ms | req/s vs strong | "
        "p99 vs strong | errors | RSS MiB |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for contender in contenders:
        for label, load in contender.loads.items():
            base = reference.loads.get(label.removesuffix(", Arrow")) if reference else None
            ratio = f"{load.requests_per_s / base.requests_per_s:.2f}x" if base else "-"
            p99 = f"{load.p99_ms / base.p99_ms:.2f}x" if base else "-"
            n = 1 if label == "1 record" else 256
            print(
                f"| {contender.name} | {n}{' (Arrow)' if label.endswith('Arrow') else ''} | {load.requests_per_s:,.0f} | {load.requests_per_s * n:,.0f} | "
                f"{load.p50_ms:.1f} | {load.p99_ms:.1f} | {ratio} | {p99} | {load.errors} | {contender.rss_mib:,.0f} |"
            )  # the Arrow load's ratios are against the hand-written endpoint's JSON body of the same records

    print(
        "\nin-process ONNX Runtime, 256 records per call (median call), and the servers' 256-record rows/s against it\n"
    )
    columns = [(c, label) for c in contenders for label in c.loads if label.startswith("256")]
    print("| in process | rows/s | " + " | ".join(f"{c.name}, {label}" for c, label in columns) + " |")
    print("|---|---:|" + "---:|" * len(columns))
    for name, rate in in_process.items():
        shares = [f"{c.loads[label].requests_per_s * 256 / rate:.2f}x" for c, label in columns]
        print(f"| {name} | {rate:,.0f} | " + " | ".join(shares) + " |")

    on = next((c for c in contenders if c.name == "loopline (bentoml), request log on"), None)
    off = next((c for c in contenders if c.name == "loopline (bentoml), request log off"), None)
    if on and off:
        print(
            "\nrequest log cost (throughput with the log on / off): "
            + ", ".join(
                f"{label} {on.loads[label].requests_per_s / off.loads[label].requests_per_s:.2f}x"
                for label in on.loads
                if label in off.loads
            )
        )


if __name__ == "__main__":
    main()
