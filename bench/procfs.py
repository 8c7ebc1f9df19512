"""What the benchmarks read of a mesh's processes from /proc: resident memory and
CPU time. None (or 0.0) once the process is gone."""

import os
from pathlib import Path

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
