"""A fresh local mesh for one benchmark run (bench/notify.py, bench/inbox.py): every
port free and ephemeral, the run's JSON line printed once the mesh is stopped, and
the data dir kept (its logs) when asked or when the run failed."""

import asyncio
import datetime
import json
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Awaitable, Callable

from deploy.local import LocalMesh, PortInUse, free_frontend_port, free_port

START_ATTEMPTS = 3


def progress(bench: str, text: str) -> None:
    print(f"{bench} bench: {text}", file=sys.stderr, flush=True)


def header(bench: str, **fields) -> dict:
    """The line's first fields: what ran, when, on what machine."""
    uname = platform.uname()
    return {"system": "notifymesh", "bench": bench, **fields,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": {"cores": os.cpu_count(), "system": f"{uname.system} {uname.release}"}}


def started_mesh(path: Path, progress: Callable[[str], None], **kwargs) -> LocalMesh:
    """A mesh started in path (a new dir) on free ports; kwargs as LocalMesh takes
    them. A free port can be taken by another process before the mesh binds it
    (PortInUse): the mesh then starts again, afresh, on other ports."""
    for attempt in range(1, START_ATTEMPTS + 1):
        mesh = LocalMesh(path, **{"frontend_port": free_frontend_port(), "etcd_ports": [(free_port(), free_port())],
                                  **kwargs})
        try:
            mesh.start(progress)
            return mesh
        except PortInUse as e:
            mesh.stop()
            if attempt == START_ATTEMPTS:
                raise
            progress(f"{e}; starting again on other ports")
            shutil.rmtree(path, ignore_errors=True)
        except BaseException:
            mesh.stop()
            raise


def run_on_fresh_mesh(line: dict, run: Callable[[LocalMesh], Awaitable[dict]], keep: bool, senders: int = 1) -> int:
    """Starts the mesh, adds run(mesh)'s fields to line, stops the mesh, prints the
    line; exit status 2 when the run failed (line["error"])."""
    bench = line["bench"]
    tmp = tempfile.mkdtemp(prefix=f"{bench}-bench-")
    mesh = None
    try:
        mesh = started_mesh(Path(tmp), lambda text: progress(bench, text), senders=senders,
                            provider_ports=(free_port(), free_port(), free_port()))
        progress(bench, "pids (for a profiler): " + ", ".join(
            f"{name} {p.popen.pid}" for name, p in mesh.processes.items() if p.popen is not None))
        line |= asyncio.run(run(mesh))
    except Exception as e:
        line["error"] = repr(e)
    finally:
        if mesh is not None:
            mesh.stop()
    if keep or "error" in line:
        progress(bench, f"data dir kept: {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(line), flush=True)
    return 0 if "error" not in line else 2
