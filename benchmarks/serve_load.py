"""Load test of `kiln serve` on loopback: tritonclient HTTP clients against the MiniLM artifact.

Subjects, measured in interleaved rounds (the host is noisy: compare within a round):
- `direct`: `modelkiln.load(artifact).run(feeds)` in this process, one call at a time (the
  floor a server adds its overhead to);
- `kiln serve` with dynamic batching (`--max-batch-size 8`, Triton's default delay 0: what
  queued while a run was going joins the next run) and without (`--max-batch-size 1`);
- optionally the `kserve` package's own ModelServer around the same session
  (`--kserve-python PATH`: a Python with kserve and modelkiln installed), to compare stacks.

Every server subject is driven by C threads, each with its own tritonclient HTTP client
(binary tensors, its defaults), for `--seconds` at each concurrency in `--concurrency` (1,
8, 32); each request is one sentence of `--seq` tokens (16: a short sentence, where per-run
costs dominate; 128: compute-bound). Reports p50/p99 latency, requests per second and errors
per cell. The overhead per request is the client's mean latency minus the mean time the
server's session call took for the same requests (from the server's
nv_inference_compute_infer_duration_us): everything a request costs beyond the session call,
measured at the same moments (a direct call timed in another process would fight the
server's ONNX Runtime threads, which busy-wait after each run). The direct `Session.run` p50
of each round, measured alone, is reported beside it.

    .venv/bin/python benchmarks/serve_load.py [--artifact DIR] [--seconds 10] [--rounds 2]
        [--concurrency 1,8,32] [--seq 16,128] [--kserve-python PATH]

Writes benchmarks/results/serve_load.{json,md}. Loopback only; bounded in count and time.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, default_checkpoint, git_revision, machine_info, write_json  # noqa: E402

HERE = Path(__file__).resolve().parent
LISTENING = re.compile(r"listening on http://(\S+?):(\d+) ")
KSERVE_SUBJECT = HERE / "kserve_subject.py"
MAX_REQUESTS_PER_CELL = 200_000  # bounded in count as well as in time


def export_minilm(root: Path) -> Path:
    out = root / "minilm-cpu"
    cmd = [sys.executable, "-m", "modelkiln.cli", "export", default_checkpoint(), "-o", str(out)]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return out


def feeds_for(artifact: Path, seq: int) -> dict[str, np.ndarray]:
    import modelkiln

    session = modelkiln.load(artifact)
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, 20000, size=(1, seq)).astype(np.int64)
    available = {
        "input_ids": ids,
        "attention_mask": np.ones_like(ids),
        "token_type_ids": np.zeros_like(ids),
    }
    return {name: available[name] for name in session.inputs}


class ServerProcess:
    def __init__(self, command: list[str], env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            command,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
        self.url = ""
        self.log: list[str] = []
        ready = threading.Event()

        def read() -> None:
            assert self.proc.stderr is not None
            for line in self.proc.stderr:
                self.log.append(line)
                match = LISTENING.search(line)
                if match:
                    self.url = f"{match.group(1)}:{match.group(2)}"
                    ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(120):
            self.stop()
            raise RuntimeError("server did not start:\n" + "".join(self.log[-20:]))
        self._wait_ready()

    def _wait_ready(self) -> None:
        import tritonclient.http as triton_http

        client = triton_http.InferenceServerClient(self.url)
        for _ in range(600):
            try:
                if client.is_server_ready():
                    return
            except Exception:  # noqa: BLE001 - not up yet
                pass
            time.sleep(0.1)
        raise RuntimeError(f"server at {self.url} never became ready")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def kiln_serve(artifact: Path, *args: str) -> ServerProcess:
    command = [sys.executable, "-m", "modelkiln.cli", "serve", str(artifact), "--port", "0"]
    return ServerProcess([*command, "--no-access-log", *args])


def drive(
    url: str, model: str, feeds: dict[str, np.ndarray], clients: int, seconds: float
) -> dict[str, Any]:
    """`clients` threads sending requests back to back for `seconds`."""
    import tritonclient.http as triton_http

    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    messages: list[str] = []
    start_gate = threading.Barrier(clients + 1)
    stop_at = [0.0]
    budget = MAX_REQUESTS_PER_CELL // clients

    def worker(i: int) -> None:
        client = triton_http.InferenceServerClient(url, connection_timeout=60, network_timeout=60)
        inputs = []
        for name, value in feeds.items():
            tensor = triton_http.InferInput(name, list(value.shape), "INT64")
            tensor.set_data_from_numpy(value)
            inputs.append(tensor)
        client.infer(model, inputs)  # connection up, first request out of the timing
        start_gate.wait()
        while time.perf_counter() < stop_at[0] and len(latencies[i]) < budget:
            t0 = time.perf_counter()
            try:
                client.infer(model, inputs).as_numpy("last_hidden_state")
            except Exception as exc:  # noqa: BLE001 - counted, first few kept
                errors[i] += 1
                if len(messages) < 3:
                    messages.append(str(exc)[:200])
                continue
            latencies[i].append(time.perf_counter() - t0)
        client.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    stop_at[0] = time.perf_counter() + 1e9
    start_gate.wait()
    began = time.perf_counter()
    stop_at[0] = began + seconds
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    flat = sorted(x for row in latencies for x in row)
    return {
        "requests": len(flat),
        "errors": sum(errors),
        "error_messages": messages,
        "seconds": round(elapsed, 3),
        "throughput_rps": round(len(flat) / elapsed, 2),
        "mean_ms": round(1000 * float(np.mean(flat)), 3) if flat else None,
        "p50_ms": round(1000 * float(np.percentile(flat, 50)), 3) if flat else None,
        "p99_ms": round(1000 * float(np.percentile(flat, 99)), 3) if flat else None,
    }


def direct(artifact: Path, feeds: dict[str, np.ndarray], seconds: float) -> dict[str, Any]:
    import modelkiln

    session = modelkiln.load(artifact)
    session.run(feeds)
    times = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end and len(times) < MAX_REQUESTS_PER_CELL:
        t0 = time.perf_counter()
        session.run(feeds)
        times.append(time.perf_counter() - t0)
    times.sort()
    return {
        "requests": len(times),
        "throughput_rps": round(len(times) / sum(times), 2),
        "p50_ms": round(1000 * float(np.percentile(times, 50)), 3),
        "p99_ms": round(1000 * float(np.percentile(times, 99)), 3),
    }


def metrics_text(url: str) -> dict[str, float]:
    import urllib.request

    with urllib.request.urlopen(f"http://{url}/metrics", timeout=10) as response:
        text = response.read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("nv_"):
            name = line.split("{")[0]
            values[name] = values.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--artifact", type=Path, default=None, help="MiniLM artifact (exported if absent)"
    )
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--seq", default="16,128")
    parser.add_argument("--kserve-python", default=None, help="a Python with kserve + modelkiln")
    parser.add_argument("--out", type=Path, default=RESULTS / "serve_load")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    seqs = [int(s) for s in args.seq.split(",")]

    with tempfile.TemporaryDirectory() as tmp:
        artifact = args.artifact or export_minilm(Path(tmp))
        model = artifact.resolve().name
        feeds = {seq: feeds_for(artifact, seq) for seq in seqs}
        subjects: dict[str, Any] = {
            "kiln serve, batching (max 8)": lambda: kiln_serve(artifact, "--max-batch-size", "8"),
            "kiln serve, no batching": lambda: kiln_serve(artifact, "--max-batch-size", "1"),
            "kiln serve, batching (max 32)": lambda: kiln_serve(artifact, "--max-batch-size", "32"),
        }
        if args.kserve_python:
            subjects["kserve ModelServer"] = lambda: ServerProcess(
                [args.kserve_python, str(KSERVE_SUBJECT), str(artifact), "--port", "0"]
            )
        rounds: list[dict[str, Any]] = []
        for round_index in range(args.rounds):
            record: dict[str, Any] = {
                "direct": {str(s): direct(artifact, feeds[s], args.seconds) for s in seqs},
                "servers": {},
            }
            for name, start in subjects.items():
                server = start()
                try:
                    cells = {}
                    for seq, clients in [(s, c) for s in seqs for c in levels]:
                        before = metrics_text(server.url) if "kiln" in name else {}
                        cell = drive(server.url, model, feeds[seq], clients, args.seconds)
                        if before:
                            after = metrics_text(server.url)
                            runs = (
                                after["nv_inference_exec_count"] - before["nv_inference_exec_count"]
                            )
                            rows = after["nv_inference_count"] - before["nv_inference_count"]
                            cell["mean_batch"] = round(rows / runs, 2) if runs else None
                            done = (
                                after["nv_inference_request_success"]
                                - before["nv_inference_request_success"]
                            )
                            compute = (
                                after["nv_inference_compute_infer_duration_us"]
                                - before["nv_inference_compute_infer_duration_us"]
                            )
                            # what a request spends outside the session call: HTTP, tensor
                            # coding on both sides, checks, the queue and thread hand-offs
                            cell["compute_mean_ms"] = round(compute / done / 1000, 3)
                            overhead = cell["mean_ms"] - cell["compute_mean_ms"]
                            cell["overhead_ms"] = round(overhead, 3)
                        cells[f"{seq}/{clients}"] = cell
                        print(
                            f"round {round_index + 1} {name:30s} seq={seq:<4d} c={clients:<3d}",
                            json.dumps(cell),
                            flush=True,
                        )
                    record["servers"][name] = cells
                finally:
                    server.stop()
            print(f"round {round_index + 1} direct {json.dumps(record['direct'])}", flush=True)
            rounds.append(record)

    summary = summarize(rounds, levels, seqs)
    result = {
        "benchmark": "serve_load",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "git": git_revision(),
        "settings": {
            "seconds": args.seconds,
            "rounds": args.rounds,
            "concurrency": levels,
            "seq": seqs,
            "request": "one sentence (1 x seq tokens), binary tensors; answer last_hidden_state",
        },
        "rounds": rounds,
        "summary": summary,
    }
    write_json(args.out.with_suffix(".json"), result)
    markdown = render(summary, result["settings"])
    args.out.with_suffix(".md").write_text(markdown)
    print(markdown)


def summarize(rounds: list[dict[str, Any]], levels: list[int], seqs: list[int]) -> dict[str, Any]:
    """Per subject, sequence and concurrency: medians over rounds."""
    out: dict[str, Any] = {
        "direct_p50_ms": {
            str(s): statistics.median(r["direct"][str(s)]["p50_ms"] for r in rounds) for s in seqs
        },
        "subjects": {},
        "batching_speedup": {},
    }
    for name in rounds[0]["servers"]:
        cells = {}
        for seq, clients in [(s, c) for s in seqs for c in levels]:
            key = f"{seq}/{clients}"
            per_round = [r["servers"][name][key] for r in rounds]
            cell: dict[str, Any] = {
                k: statistics.median(c[k] for c in per_round if c.get(k) is not None)
                for k in ("throughput_rps", "p50_ms", "p99_ms", "mean_batch", "overhead_ms")
                if any(c.get(k) is not None for c in per_round)
            }
            cell["errors"] = sum(c["errors"] for c in per_round)
            cell["requests"] = sum(c["requests"] for c in per_round)
            cells[key] = cell
        out["subjects"][name] = cells
    batched = out["subjects"].get("kiln serve, batching (max 8)", {})
    unbatched = out["subjects"].get("kiln serve, no batching", {})
    for seq in seqs:
        key = f"{seq}/{max(levels)}"
        if key in batched and key in unbatched:
            out["batching_speedup"][str(seq)] = round(
                batched[key]["throughput_rps"] / unbatched[key]["throughput_rps"], 2
            )
    return out


def render(summary: dict[str, Any], settings: dict[str, Any]) -> str:
    direct = ", ".join(f"{s} tokens {v:.2f} ms" for s, v in summary["direct_p50_ms"].items())
    lines = [
        f"Loopback load test, MiniLM `cpu` artifact, {settings['request']}; "
        f"{settings['rounds']} interleaved rounds of {settings['seconds']:g} s per cell "
        "(medians over rounds).",
        "",
        f"Direct `Session.run` p50: {direct}.",
        "",
        "| subject | tokens | clients | req/s | p50 ms | p99 ms | mean batch | errors "
        "| overhead per request (1 client) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, cells in summary["subjects"].items():
        for key, cell in cells.items():
            seq, clients = key.split("/")
            overhead = ""
            if clients == "1" and "overhead_ms" in cell:
                overhead = f"{cell['overhead_ms']:.2f} ms"
            batch = f"{cell['mean_batch']:.2f}" if "mean_batch" in cell else ""
            lines.append(
                f"| {name} | {seq} | {clients} | {cell['throughput_rps']:.1f} | "
                f"{cell['p50_ms']:.2f} | {cell['p99_ms']:.2f} | {batch} | {cell['errors']} | "
                f"{overhead} |"
            )
    if summary["batching_speedup"]:
        speedups = ", ".join(f"{s} tokens {v:.2f}x" for s, v in summary["batching_speedup"].items())
        lines += ["", f"Dynamic batching vs none at the most clients (throughput): {speedups}."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
