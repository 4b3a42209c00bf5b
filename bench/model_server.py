"""Benchmark: answers/s of the built-in model server with batched decoding vs one answer at a time.

    .venv/bin/python bench/model_server.py               # the starter model (built when missing), ~3 min
    .venv/bin/python bench/model_server.py --model DIR --answers 96 --rounds 3 --json out.json

Two real ``tuneloop model-server`` processes serve the same model, one with
``model_server.max_batch = 1`` (the baseline: one answer at a time, as before
batching) and one with the shipped ``max_batch`` (8). For each concurrency (1, 4,
8 clients asking back to back, greedy, FAQ questions, ``max_tokens`` 256 as
evaluation asks) the bench sends ``--answers`` requests to one server, then the
same to the other, alternating which goes first each round so a neighbour's load
on a shared machine falls on both. Reported per concurrency and mode: answers/s,
completion tokens/s, p50 latency, the mean batch size the server formed (from its
``/metrics``), and the ratio batched / one at a time. Every answer is also compared
across the two servers: batching must not change a single one.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx2  # noqa: E402

from bench.adapter_pause import free_port, metric_sum  # noqa: E402

CONCURRENCIES = (1, 4, 8)
MODES = {"one at a time": 1, "batched": 8}


def questions() -> list[str]:
    rows = [json.loads(line) for line in (ROOT / "data" / "faq.jsonl").read_text(encoding="utf-8").splitlines() if line]
    return [row["messages"][0]["content"] for row in rows]


def start_server(model_dir: Path, max_batch: int, tmp: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = dict(
        os.environ,
        TUNELOOP_MODEL_SERVER__MAX_BATCH=str(max_batch),
        TUNELOOP_PATHS__DATA_DIR=str(tmp / f"var-{max_batch}"),
    )
    env.pop("TUNELOOP_CONFIG", None)
    tuneloop = str(Path(sys.executable).with_name("tuneloop"))
    log = open(tmp / f"server-{max_batch}.log", "wb")  # noqa: SIM115 - closed with the process
    process = subprocess.Popen(
        [tuneloop, "model-server", "--model", str(model_dir), "--name", "starter", "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx2.get(url + "/health", timeout=2).status_code == 200:
                return process, url
        except httpx2.TransportError:
            pass
        if time.monotonic() > deadline or process.poll() is not None:
            process.kill()
            raise RuntimeError(f"the model server did not start; see {tmp / f'server-{max_batch}.log'}")
        time.sleep(0.2)


def stop_server(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def measure(url: str, asks: list[str], concurrency: int) -> dict:
    """``concurrency`` clients ask ``asks`` between them back to back; figures and every answer."""
    todo = list(enumerate(asks))
    lock = threading.Lock()
    answers: dict[int, str] = {}
    latencies: list[float] = []
    tokens = [0]
    failures = [0]

    def client() -> None:
        with httpx2.Client(timeout=120) as http:
            while True:
                with lock:
                    if not todo:
                        return
                    index, question = todo.pop(0)
                body = {
                    "model": "starter",
                    "messages": [{"role": "user", "content": question}],
                    "temperature": 0,
                    "max_tokens": 256,
                }
                started = time.perf_counter()
                response = http.post(url + "/v1/chat/completions", json=body)
                elapsed = time.perf_counter() - started
                with lock:
                    if response.status_code != 200:
                        failures[0] += 1
                        continue
                    answer = response.json()
                    answers[index] = answer["choices"][0]["message"]["content"]
                    tokens[0] += answer["usage"]["completion_tokens"]
                    latencies.append(elapsed)

    batches = metric_sum(url, "tuneloop_model_server_batch_size_count")
    batched = metric_sum(url, "tuneloop_model_server_batch_size_sum")
    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - started
    batches = metric_sum(url, "tuneloop_model_server_batch_size_count") - batches
    batched = metric_sum(url, "tuneloop_model_server_batch_size_sum") - batched
    return {
        "seconds": seconds,
        "answers": len(answers),
        "failures": failures[0],
        "tokens": tokens[0],
        "latencies": latencies,
        "mean_batch": batched / batches if batches else 0.0,
        "texts": answers,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="model folder (default: the starter model, built when missing)")
    parser.add_argument("--answers", type=int, default=64, help="requests per measurement")
    parser.add_argument("--rounds", type=int, default=2, help="measurements per concurrency and mode")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()

    from bench import model_dir_or_starter
    from config.settings import load_settings

    settings = load_settings()
    model_dir = model_dir_or_starter(args.model, settings)
    pool = questions()
    asks = [pool[(i * 7) % len(pool)] for i in range(args.answers)]  # English and Korean, mixed lengths
    report: dict = {"model_dir": str(model_dir), "answers": args.answers, "rounds": args.rounds, "results": []}
    differing = 0
    with tempfile.TemporaryDirectory(prefix="bench-model-server-") as tmp:
        servers = {mode: start_server(model_dir, size, Path(tmp)) for mode, size in MODES.items()}
        try:
            for _, url in servers.values():
                measure(url, asks[:8], 4)  # warm up: first forward passes, allocator
            for concurrency in CONCURRENCIES:
                runs: dict[str, list[dict]] = {mode: [] for mode in MODES}
                for round_ in range(args.rounds):
                    order = list(MODES) if round_ % 2 == 0 else list(MODES)[::-1]
                    for mode in order:
                        runs[mode].append(measure(servers[mode][1], asks, concurrency))
                        last = runs[mode][-1]
                        print(f"  c={concurrency} {mode}: {last['answers'] / last['seconds']:.1f}/s", flush=True)
                baseline, batched = runs["one at a time"], runs["batched"]
                differing += sum(a["texts"] != b["texts"] for a, b in zip(baseline, batched, strict=True))
                row = {"concurrency": concurrency}
                for mode, measured in runs.items():
                    seconds = sum(m["seconds"] for m in measured)
                    row[mode] = {
                        "answers_per_s": round(sum(m["answers"] for m in measured) / seconds, 2),
                        "tokens_per_s": round(sum(m["tokens"] for m in measured) / seconds, 1),
                        "p50_ms": round(1000 * statistics.median([x for m in measured for x in m["latencies"]]), 1),
                        "mean_batch": round(statistics.mean(m["mean_batch"] for m in measured), 2),
                        "failures": sum(m["failures"] for m in measured),
                    }
                row["answers_per_s_ratio"] = round(
                    row["batched"]["answers_per_s"] / row["one at a time"]["answers_per_s"], 2
                )
                report["results"].append(row)
        finally:
            for process, _ in servers.values():
                stop_server(process)
    report["measurements_with_a_different_answer"] = differing
    print(json.dumps(report, indent=2, ensure_ascii=False))
    print("\nconcurrency | answers/s one at a time | answers/s batched | ratio | tokens/s (1 / batched) | mean batch")
    for row in report["results"]:
        one, many = row["one at a time"], row["batched"]
        print(
            f"{row['concurrency']:>11} | {one['answers_per_s']:>23} | {many['answers_per_s']:>17} | "
            f"{row['answers_per_s_ratio']:>5} | {one['tokens_per_s']} / {many['tokens_per_s']} | {many['mean_batch']}"
        )
    print(f"measurements whose answers differed between the two servers: {differing}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
