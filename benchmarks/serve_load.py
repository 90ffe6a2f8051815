"""Load check of `electra serve` on loopback against a peer server: concurrent one-text requests, throughput,
latency, errors and memory.

Serves the ELECTRA-Small-shaped 2-label classifier of `latency.py` (random weights, synthetic vocabulary) on
127.0.0.1 at a free port, once per variant, one after the other:
  ours  `python -m electra.cli serve`, which micro-batches concurrent requests (see `electra.serving`);
  peer  what a `transformers` user deploys without this package: the model exported by `export_hf`, a
        `transformers.pipeline("text-classification")` behind a FastAPI app with the same /health and /predict,
        under uvicorn. FastAPI runs the synchronous handler in its thread pool; a lock lets one request at a
        time into the pipeline, which served more requests here (39 against 30 a second) than threads running
        it side by side on the same cores.
For each: wait for GET /health, send three rounds of concurrent warm-up requests, then run --clients concurrent
clients (asyncio + httpx, one connection each), each POSTing /predict {"texts": [one short text]} in a loop, for
--seconds or until --max-requests have been sent, whichever comes first.

Counts a request as an error unless it is answered 200 with one prediction of a known label. Samples the
server's resident memory (VmRSS) once a second and reports it when the load starts, at the middle and at
the end. It rises in the first seconds, while the server meets batch sizes it has not run before (each new
shape gets its own kernel caches; under bf16 autocast, about 150 MB more than in fp32 for sizes 1 to 32 here),
then it should stay flat: compare middle and end. The server is stopped whatever happens. Clients and server share the
machine's cores, so on a small machine the clients' own CPU time lowers what the server can do.
Prints a table, then one JSON line.
Usage: python benchmarks/serve_load.py [--clients 32] [--seconds 30] [--max-requests 200000] [--threads N]
       [--max-batch-size 64] [--batch-wait-ms 2] [--variants ours,peer]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ is not a package
from latency import LABELS, TEXT, build_model

WARMUP_ROUNDS = 3
STARTUP_TIMEOUT_S = 180.0


@dataclass
class Load:
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    error_examples: list[str] = field(default_factory=list)
    rss_mb: list[tuple[float, float]] = field(default_factory=list)  # (seconds since the load started, MB)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS in /proc/{pid}/status")


def run_peer_server(folder: Path, port: int) -> None:
    """The peer's server (see the module's docstring), answering as `electra serve` does."""
    import threading

    import transformers
    import uvicorn
    from fastapi import FastAPI

    pipe = transformers.pipeline("text-classification", model=str(folder), tokenizer=str(folder), device="cpu")
    one_at_a_time = threading.Lock()
    app = FastAPI()

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    @app.post("/predict")
    def predict(body: dict) -> dict:
        with one_at_a_time:
            answers = pipe(body["texts"])
        return {"predictions": [{"label": answer["label"], "probability": answer["score"]} for answer in answers]}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def start_server(variant: str, root: Path, port: int, args: argparse.Namespace, log: Path) -> subprocess.Popen:
    if variant == "ours":
        command = [sys.executable, "-m", "electra.cli", "serve", "--model-dir", str(root / "model")]
        command += ["--port", str(port), "--host", "127.0.0.1", "--max-batch-size", str(args.max_batch_size)]
        command += ["--batch-wait-ms", str(args.batch_wait_ms)]
    else:
        command = [sys.executable, __file__, "--run-peer-server", str(root / "hf"), "--port", str(port)]
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)  # neither server has a thread flag; torch reads this
    with open(log, "wb") as handle:
        return subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env)


def wait_healthy(server: subprocess.Popen, base: str, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit(f"the server exited with {server.returncode} before it was ready:\n{log.read_text()[-4000:]}")
        try:
            if httpx.get(f"{base}/health", timeout=2.0).status_code == 200:
                return
        except httpx.TransportError:
            pass  # not listening yet
        time.sleep(0.2)
    sys.exit(f"the server was not ready within {STARTUP_TIMEOUT_S:.0f} s:\n{log.read_text()[-4000:]}")


def stop_server(server: subprocess.Popen) -> None:
    if server.poll() is None:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=15)


def check(response: httpx.Response) -> str | None:
    """Why the answer is wrong, or None."""
    if response.status_code != 200:
        return f"HTTP {response.status_code}: {response.text[:200]}"
    predictions = response.json().get("predictions")
    if not isinstance(predictions, list) or len(predictions) != 1 or predictions[0].get("label") not in LABELS:
        return f"unexpected answer: {response.text[:200]}"
    return None


async def run_load(base: str, pid: int, args: argparse.Namespace) -> tuple[Load, float]:
    load = Load()
    body = {"texts": [TEXT]}
    limits = httpx.Limits(max_connections=args.clients, max_keepalive_connections=args.clients)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60.0) as client:
        # Concurrent warm-up, so the batch shapes of the load have been allocated once before memory is read.
        for _ in range(WARMUP_ROUNDS):
            answers = await asyncio.gather(*(client.post("/predict", json=body) for _ in range(args.clients)))
            if problem := next((found for found in map(check, answers) if found), None):
                sys.exit(f"warm-up request failed: {problem}")
        started = time.perf_counter()
        deadline = started + args.seconds
        budget = [args.max_requests]  # shared by the clients; asyncio runs one at a time, so no lock

        async def one_client() -> None:
            while time.perf_counter() < deadline and budget[0] > 0:
                budget[0] -= 1
                sent = time.perf_counter()
                try:
                    problem = check(await client.post("/predict", json=body))
                except httpx.HTTPError as error:
                    problem = f"{type(error).__name__}: {error}"
                load.latencies.append(time.perf_counter() - sent)
                if problem:
                    load.errors += 1
                    if len(load.error_examples) < 5:
                        load.error_examples.append(problem)

        async def sample_memory() -> None:
            while True:
                load.rss_mb.append((time.perf_counter() - started, rss_mb(pid)))
                await asyncio.sleep(1.0)

        sampler = asyncio.create_task(sample_memory())
        await asyncio.gather(*(one_client() for _ in range(args.clients)))
        elapsed = time.perf_counter() - started
        sampler.cancel()
        load.rss_mb.append((elapsed, rss_mb(pid)))
    return load, elapsed


def figures_of(load: Load, elapsed: float, rss_ready: float) -> dict:
    ms = np.asarray(load.latencies) * 1000
    return {
        "requests": len(ms),
        "requests_per_s": len(ms) / elapsed,
        "p50_ms": float(np.percentile(ms, 50)),
        "p90_ms": float(np.percentile(ms, 90)),
        "p99_ms": float(np.percentile(ms, 99)),
        "max_ms": float(ms.max()),
        "errors": load.errors,
        "rss_mb_ready": rss_ready,
        "rss_mb_start": load.rss_mb[0][1],
        "rss_mb_middle": min(load.rss_mb, key=lambda sample: abs(sample[0] - elapsed / 2))[1],
        "rss_mb_end": load.rss_mb[-1][1],
        "rss_mb_max": max(sample[1] for sample in load.rss_mb),
    }


def report(args: argparse.Namespace, results: dict[str, tuple[dict, list[str], float]]) -> None:
    """`results`: each variant's figures, error examples and seconds of load."""
    print(
        f"servers on loopback, one after the other: {args.clients} clients x one {len(TEXT)}-character text per "
        f"request, {args.seconds:g} s each; threads {args.threads or 'default'}; ours: max batch "
        f"{args.max_batch_size}, batch wait {args.batch_wait_ms} ms; RSS 'ready' is before the first request"
    )
    print(f"{'figure':<15} | " + " | ".join(f"{variant:>10}" for variant in results))
    for name in next(iter(results.values()))[0]:
        cells = [results[variant][0][name] for variant in results]
        print(f"{name:<15} | " + " | ".join(f"{c:10,.1f}" if isinstance(c, float) else f"{c:10,d}" for c in cells))
    for variant, (_, examples, _) in results.items():
        for example in examples:
            print(f"{variant} error: {example}")
    headline: dict[str, float | int] = {"clients": args.clients}
    for variant, (figures, _, _) in results.items():
        prefix = "" if variant == "ours" else f"{variant}_"
        for name in ("requests_per_s", "p50_ms", "p99_ms", "errors", "requests", "rss_mb_max"):
            headline[prefix + name] = round(figures[name], 2) if isinstance(figures[name], float) else figures[name]
        if variant == "ours":
            headline |= {name: round(figures[name], 1) for name in ("rss_mb_start", "rss_mb_middle", "rss_mb_end")}
    if {"ours", "peer"} <= results.keys():
        headline["ratio"] = round(results["ours"][0]["requests_per_s"] / results["peer"][0]["requests_per_s"], 2)
    print(json.dumps(headline))


def measure(variant: str, root: Path, args: argparse.Namespace) -> tuple[dict, list[str], float]:
    """Serve the model with `variant`, load it, stop it: its figures, error examples and seconds of load."""
    port, log = free_port(), root / f"{variant}-server.log"
    base = f"http://127.0.0.1:{port}"
    server = start_server(variant, root, port, args, log)
    try:
        wait_healthy(server, base, log)
        rss_ready = rss_mb(server.pid)
        load, elapsed = asyncio.run(run_load(base, server.pid, args))
        if server.poll() is not None:
            sys.exit(f"the {variant} server died during the load:\n{log.read_text()[-4000:]}")
    finally:
        stop_server(server)
    return figures_of(load, elapsed, rss_ready), load.error_examples, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--max-requests", type=int, default=200_000, help="stop after this many requests in all")
    parser.add_argument("--threads", type=int, default=None, help="the servers' torch threads (default: their own)")
    parser.add_argument("--max-batch-size", type=int, default=64, help="passed to electra serve")
    parser.add_argument("--batch-wait-ms", type=float, default=2.0, help="passed to electra serve")
    parser.add_argument("--variants", default="ours,peer", help="comma-separated, of: ours, peer")
    parser.add_argument("--run-peer-server", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_peer_server:
        run_peer_server(args.run_peer_server, args.port)
        return
    variants = args.variants.split(",")
    if unknown := set(variants) - {"ours", "peer"}:
        sys.exit(f"unknown variant(s) {sorted(unknown)}: choose from ours, peer")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folder = build_model(root)
        if "peer" in variants:
            from electra.export import export_hf

            export_hf(folder, root / "hf")
        results = {variant: measure(variant, root, args) for variant in variants}
    report(args, results)
    if failed := {variant: figures["errors"] for variant, (figures, _, _) in results.items() if figures["errors"]}:
        sys.exit(f"request(s) failed: {failed}")


if __name__ == "__main__":
    main()
