"""CPU seconds of a local mesh's processes (every descendant of a `notifymesh up`),
by name: the --node-id of a service, else the program (etcd). bench/ab snapshots
them around each workload and reports CPU per 10,000 published messages. Compare
runs of similar throughput, or at a fixed --rate: at full speed a busier machine
makes smaller batches, which cost more per message.

    python bench/mesh_cpu.py snap PID > before.json
    bench ... | python bench/mesh_cpu.py annotate before.json after.json
        # each bench JSON line gets "cpu_ms_per_10k": {"frontend": ..., "mesh": ...}
"""

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from procfs import cpu_s  # noqa: E402


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError):
                continue
            tree.setdefault(ppid, []).append(int(entry))
    return tree


def _name(pid: int) -> str:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return str(pid)
    if "--node-id" in argv:
        return argv[argv.index("--node-id") + 1]
    return Path(argv[0]).name


def snap(root: int) -> dict[str, float]:
    tree, found, todo = _children(), {}, list(_children().get(root, []))
    while todo:
        pid = todo.pop()
        todo.extend(tree.get(pid, []))
        name = _name(pid)
        found[name] = found.get(name, 0.0) + cpu_s(pid)
    return found


def per_10k(before: dict[str, float], after: dict[str, float], messages: int) -> dict[str, float]:
    """CPU ms of each process (and of them all: "mesh") per 10,000 messages."""
    per = 10_000 / max(1, messages)
    ms = {name: round((after[name] - before.get(name, 0.0)) * 1000 * per, 1) for name in sorted(after)}
    ms["mesh"] = round(sum(ms.values()), 1)
    return ms


def main() -> None:
    if sys.argv[1] == "snap":
        print(json.dumps(snap(int(sys.argv[2]))))
        return
    before, after = (json.loads(Path(p).read_text()) for p in sys.argv[2:4])
    for line in sys.stdin:
        run = json.loads(line)
        if run.get("published"):
            run["cpu_ms_per_10k"] = per_10k(before, after, run["published"])
        print(json.dumps(run), flush=True)


if __name__ == "__main__":
    main()
