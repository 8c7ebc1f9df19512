"""What tracing costs (issue 18): `notifymesh bench` (publish, and one subscriber
receiving: the sender's delivery path too) on a fresh local mesh per run, with
tracing off (--trace-sample-ratio 0), at 1 % and at 100 %, alternating in ROUNDS
rounds (the order rotates each round). Every mesh exports to a span sink this
script runs (an OTLP/gRPC receiver that counts), so "off" shows it exports
nothing. One JSON line per run: publish rate, CPU seconds per 10,000 messages of
each kind of process (from /proc: survives a loaded machine better than rates),
spans received, the load average.

    PYTHONPATH=. .venv/bin/python bench/tracing_ab.py [--rounds 3] [--messages 20000]
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.fresh_mesh import header, progress
from bench.otlp_receiver import SpanReceiver
from bench.procfs import cpu_s
from deploy.local import LocalMesh, free_frontend_port, free_port, tracing_args

MODES = (("off", 0.0), ("1%", 0.01), ("100%", 1.0))
START_TRIES = 3


def _kind(name: str) -> str:
    return name.rsplit("-", 1)[0]


def started_mesh(ratio: float, sink: SpanReceiver) -> tuple[LocalMesh, str]:
    """A fresh mesh on free ports; started again on new ones (up to START_TRIES) when
    a port chosen free was taken meanwhile (other processes on a shared machine)."""
    attempt = 0
    while True:
        attempt += 1
        tmp = tempfile.mkdtemp(prefix="tracing-bench-")
        mesh = LocalMesh(Path(tmp), frontend_port=free_frontend_port(), etcd_ports=[(free_port(), free_port())],
                         provider_ports=(free_port(), free_port(), free_port()), local_providers=False,
                         tracing=tracing_args(ratio, f"127.0.0.1:{sink.port}"))
        try:
            mesh.start(lambda text: None)
            return mesh, tmp
        except (RuntimeError, TimeoutError) as e:
            mesh.stop()
            if attempt == START_TRIES:
                raise
            progress("tracing", f"mesh did not start ({e}); again on other ports")
            shutil.rmtree(tmp, ignore_errors=True)


def one_run(mode: str, ratio: float, round_: int, messages: int, sink: SpanReceiver) -> dict:
    line = header("tracing", mode=mode, ratio=ratio, round=round_, messages=messages)
    try:
        mesh, tmp = started_mesh(ratio, sink)
    except (RuntimeError, TimeoutError) as e:
        return line | {"error": repr(e)}
    try:
        pids = {name: p.popen.pid for name, p in mesh.processes.items()
                if p.popen is not None and _kind(name) in ("frontend", "storage", "sender")}
        spans_before, cpu_before = sink.count, {name: cpu_s(pid) for name, pid in pids.items()}
        load = os.getloadavg()[0]
        out = subprocess.run([sys.executable, "-m", "notifymesh.cli", "bench", "--messages", str(messages),
                              "--subscribers", "1", "--addr", mesh.frontend_addr],
                             capture_output=True, text=True, timeout=900)
        result = json.loads(out.stdout.strip().splitlines()[-1])
        cpu: dict[str, float] = {}
        for name, pid in pids.items():
            cpu[_kind(name)] = cpu.get(_kind(name), 0.0) + cpu_s(pid) - cpu_before[name]
        mesh.stop()  # the services export what they queued as they stop
        line |= {"publish_msgs_per_s": result.get("publish_msgs_per_s"),
                 "delivered_msgs_per_s": result.get("delivered_msgs_per_s"),
                 "cpu_s_per_10k": {kind: round(s * 10_000 / messages, 2) for kind, s in sorted(cpu.items())},
                 "cpu_s_per_10k_total": round(sum(cpu.values()) * 10_000 / messages, 2),
                 "spans_exported": sink.count - spans_before,
                 "loadavg_1m_before": round(load, 2), "loadavg_1m_after": round(os.getloadavg()[0], 2)}
        if "error" in result:
            line["error"] = result["error"]
    except Exception as e:
        line["error"] = repr(e)
    finally:
        mesh.stop()
        if "error" in line:
            progress("tracing", f"data dir kept: {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return line


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--messages", type=int, default=20_000)
    args = p.parse_args()
    sink = SpanReceiver()
    failed = False
    try:
        for round_ in range(1, args.rounds + 1):
            shift = (round_ - 1) % len(MODES)
            for mode, ratio in MODES[shift:] + MODES[:shift]:
                line = one_run(mode, ratio, round_, args.messages, sink)
                progress("tracing", f"round {round_} {mode}: {line.get('publish_msgs_per_s')} msg/s, "
                                    f"{line.get('cpu_s_per_10k_total')} CPU s / 10k, {line.get('spans_exported')} spans")
                print(json.dumps(line), flush=True)
                failed = failed or "error" in line
    finally:
        sink.stop()
    raise SystemExit(2 if failed else 0)


if __name__ == "__main__":
    main()
