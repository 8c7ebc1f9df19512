"""What the benchmarks read of a mesh's processes from /proc: resident memory and
CPU time. None (or 0.0) once the process is gone."""

import os
import threading
from pathlib import Path
from typing import Protocol

CLK_TCK = os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float | None:
    """VmRSS of the process, in MiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def cpu_s(pid: int) -> float:
    """utime + stime of the process, in seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


class Process(Protocol):
    popen: object  # a subprocess.Popen, or None once stopped


class Processes(Protocol):
    """A mesh's processes by name (deploy.local.LocalMesh)."""
    processes: dict[str, Process]


class RssSampler(threading.Thread):
    """The largest RSS of each mesh process whose name starts with one of prefixes
    (("",): every one), sampled every every_s."""

    def __init__(self, mesh: Processes, prefixes: tuple[str, ...], every_s: float = 1.0):
        super().__init__(daemon=True)
        self.mesh, self.prefixes, self.every_s, self.peak = mesh, prefixes, every_s, {}
        self.stopping = threading.Event()

    def now(self) -> dict[str, float]:
        return {name: round(rss, 1) for name, process in self.mesh.processes.items()
                if name.startswith(self.prefixes) and process.popen is not None
                and (rss := rss_mib(process.popen.pid)) is not None}

    def run(self) -> None:
        while not self.stopping.wait(self.every_s):
            for name, rss in self.now().items():
                self.peak[name] = max(self.peak.get(name, 0.0), rss)
