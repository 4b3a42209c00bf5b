"""Benchmark: how long base-model answers wait while the model server loads adapters (docs/benchmarks.md).

    .venv/bin/python bench/adapter_pause.py              # the starter model (built when missing), ~2 min
    .venv/bin/python bench/adapter_pause.py --model DIR --rounds 10 --json out.json

For each ``model_server.adapter_check`` (``scratch`` and ``in_place``) a real
``tuneloop model-server`` process serves the model while one client asks the base
model for short greedy answers back to back. After a baseline period, the bench
loads and unloads a good LoRA adapter (r = 8 on every linear layer, as training
makes it) ``--rounds`` times, then asks it to load a corrupt copy (weights file cut
in half) as many times. Reported per phase: the base answers' latency (p50, max)
next to the baseline's, taken in the same run, and from the server's ``/metrics``
how long its worker was busy with adapter work (the pause answers wait for) and
how long scratch checks took (which answers do not wait for). Then, in this
process, the time to reload the model from disk (what a failed switch costs).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
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

QUESTION = "How long does standard delivery take?"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_adapters(model_dir: Path, out: Path) -> tuple[Path, Path]:
    """A LoRA for ``model_dir`` (untrained: its checks cost the same) and a corrupt copy of it."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    good, corrupt = out / "good", out / "corrupt"
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(model_dir), LoraConfig(r=8, target_modules="all-linear")
    )
    model.save_pretrained(good)
    shutil.copytree(good, corrupt)
    weights = corrupt / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return good, corrupt


class Asker(threading.Thread):
    """Asks the base model back to back; ``marks`` splits the latencies into phases."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.url, self.samples, self.stop = url, [], threading.Event()
        self.failures = 0

    def run(self) -> None:
        body = {"model": "starter", "messages": [{"role": "user", "content": QUESTION}], "temperature": 0}
        body["max_tokens"] = 16
        with httpx2.Client(timeout=60) as client:
            while not self.stop.is_set():
                started = time.perf_counter()
                ok = client.post(self.url + "/v1/chat/completions", json=body).status_code == 200
                self.failures += not ok
                self.samples.append((started, time.perf_counter()))

    def between(self, start: float, end: float) -> list[float]:
        """Latencies of the answers in flight at some point of the window."""
        return [(b - a) * 1000 for a, b in self.samples if a < end and b > start]


def metric_sum(url: str, name: str, **labels) -> float:
    wanted = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else "")
    for line in httpx2.get(url + "/metrics", timeout=10).text.splitlines():
        if line.startswith(wanted + " "):
            return float(line.split()[-1])
    return 0.0


def summary(latencies: list[float]) -> dict:
    if not latencies:
        return {"answers": 0}
    ordered = sorted(latencies)
    return {
        "answers": len(ordered),
        "p50_ms": round(statistics.median(ordered), 1),
        "p90_ms": round(ordered[int(0.9 * (len(ordered) - 1))], 1),
        "max_ms": round(ordered[-1], 1),
    }


def run_mode(mode: str, model_dir: Path, good: Path, corrupt: Path, rounds: int, tmp: Path) -> dict:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ, TUNELOOP_MODEL_SERVER__ADAPTER_CHECK=mode, TUNELOOP_PATHS__DATA_DIR=str(tmp / mode))
    tuneloop = str(Path(sys.executable).with_name("tuneloop"))
    log = open(tmp / f"{mode}.log", "wb")
    process = subprocess.Popen(
        [tuneloop, "model-server", "--model", str(model_dir), "--name", "starter", "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx2.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx2.TransportError:
                pass
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"the model server did not start; see {tmp / f'{mode}.log'}")
            time.sleep(0.2)
        asker = Asker(url)
        asker.start()
        time.sleep(5)
        phases = {"baseline": (time.perf_counter() - 4.5, time.perf_counter())}
        started = time.perf_counter()
        for _ in range(rounds):
            r = httpx2.post(url + "/v1/load_lora_adapter", json={"lora_name": "a", "lora_path": str(good)}, timeout=120)
            assert r.status_code == 200, r.text
            httpx2.post(url + "/v1/unload_lora_adapter", json={"lora_name": "a"}, timeout=120)
        phases["good loads"] = (started, time.perf_counter())
        started = time.perf_counter()
        for _ in range(rounds):
            r = httpx2.post(
                url + "/v1/load_lora_adapter", json={"lora_name": "b", "lora_path": str(corrupt)}, timeout=120
            )
            assert r.status_code == 400, r.text
        phases["refused loads"] = (started, time.perf_counter())
        time.sleep(0.5)
        asker.stop.set()
        asker.join(60)
        pause = {
            reason: {
                "count": int(metric_sum(url, "tuneloop_model_server_pause_seconds_count", reason=reason)),
                "mean_ms": round(
                    1000
                    * metric_sum(url, "tuneloop_model_server_pause_seconds_sum", reason=reason)
                    / max(1, metric_sum(url, "tuneloop_model_server_pause_seconds_count", reason=reason)),
                    1,
                ),
            }
            for reason in ("adapter_load", "adapter_unload")
        }
        checks = metric_sum(url, "tuneloop_model_server_adapter_check_seconds_count")
        check_ms = 1000 * metric_sum(url, "tuneloop_model_server_adapter_check_seconds_sum") / max(1, checks)
        return {
            "mode": mode,
            "failed_answers": asker.failures,
            "phases": {name: summary(asker.between(*window)) for name, window in phases.items()},
            "worker_pause": pause,
            "scratch_check_mean_ms": round(check_ms, 1) if checks else None,
        }
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def reload_seconds(model_dir: Path, good: Path, repeats: int = 3) -> float:
    """Mean time to reload the model from disk with one adapter re-attached (a failed switch's cost)."""
    from server.model_server.engine import Engine

    engine = Engine(device="cpu", torch_threads=1)
    engine.load_base("starter", model_dir)
    engine.load("a", good)
    worker = engine.base
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        worker.call(lambda: worker._reload("benchmark"))
        times.append(time.perf_counter() - started)
    return statistics.mean(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="model folder (default: the starter model, built when missing)")
    parser.add_argument("--rounds", type=int, default=10, help="good and refused loads per mode")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()

    from bench import model_dir_or_starter
    from config.settings import load_settings

    settings = load_settings()
    model_dir = model_dir_or_starter(args.model, settings)
    with tempfile.TemporaryDirectory(prefix="bench-adapter-") as tmp:
        good, corrupt = make_adapters(model_dir, Path(tmp))
        report = {"model_dir": str(model_dir), "rounds": args.rounds, "modes": []}
        for mode in ("scratch", "in_place"):
            report["modes"].append(run_mode(mode, model_dir, good, corrupt, args.rounds, Path(tmp)))
        report["reload_s"] = round(reload_seconds(model_dir, good), 3)
    print(json.dumps(report, indent=2))
    for mode in report["modes"]:
        base = mode["phases"]["baseline"]
        print(f"\n{mode['mode']}: {mode['failed_answers']} failed answers")
        for name, phase in mode["phases"].items():
            ratio = phase.get("p50_ms", 0) / base["p50_ms"] if base.get("p50_ms") else float("nan")
            print(f"  {name:14} {phase}  (p50 = {ratio:.2f}x the baseline's)")
        print(
            f"  worker busy with adapter work: {mode['worker_pause']}; scratch check {mode['scratch_check_mean_ms']} ms"
        )
    print(f"\nreload from disk with one adapter: {report['reload_s']} s")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
