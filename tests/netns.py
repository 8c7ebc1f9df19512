"""A network of test hosts on one machine: each host a network namespace of its
own, linked to one bridge (in a namespace of its own too), so that the links
between hosts can be cut, healed and made lossy while the processes on them run.

    with Lab() as lab:
        lab.host("storage-1")             # a namespace with an address on the bridge
        lab.run("storage-1", argv)        # argv as run inside that namespace
        lab.cut("storage-1", "storage-2") # both directions
        lab.heal()                        # every link as it was

Links are filtered where frames cross the bridge (nftables, bridge family), so a
host's own stack is untouched: a cut drops its IP packets, as a firewall between
them would; a host never learns of it but by silence. The test process itself
is a host too (LAB_SELF), with an address on the bridge, so it reaches every
other host and can be cut off like one.

Needs root, iproute2 and nftables (.ci/run installs them). It fails loudly when
it cannot build the network: these tests never skip.
"""

import fcntl
import itertools
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

LAB_SELF = "test"  # the host name of the test process's own (root) namespace
_LOCK = Path("/tmp/notifymesh-netns.lock")  # subnets are chosen under it: xdist workers build labs at once
_SUBNET_BASE = "10.250"  # 10.250.N.0/24, N free on this machine; only ever inside namespaces this lab made
SERVICE_PORT, PROXY_PORT = 6000, 7000  # of a host whose service sits behind a delay proxy
_DELAY_PROXY = Path(__file__).with_name("delay_proxy.py")


class LabError(RuntimeError):
    pass


def _sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise LabError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


@dataclass
class Host:
    name: str
    namespace: str | None  # None: the test process's own namespace
    ip: str
    port: str  # its port on the bridge


class Lab:
    def __init__(self):
        for tool in ("ip", "nft"):
            if not shutil.which(tool):
                raise LabError(f"{tool} not found: install iproute2 and nftables (see .ci/run)")
        if os.geteuid() != 0:
            raise LabError("network namespaces need root")
        self.tag = os.urandom(2).hex()
        self.bridge_ns = f"nm{self.tag}br"
        self.hosts: dict[str, Host] = {}
        self._next_ip = itertools.count(1)
        self._cuts: set[tuple[str, str]] = set()
        self._losses: dict[tuple[str, str], int] = {}
        self._subnet = ""
        self._proxies: dict[str, subprocess.Popen] = {}
        self._delay_dir = Path(tempfile.mkdtemp(prefix="nmlab-"))

    # -- building -------------------------------------------------------------------

    def __enter__(self) -> "Lab":
        try:
            self.start()
        except BaseException:
            self.close()  # what was made before the failure
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> None:
        with open(_LOCK, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            used = _sh("ip", "-4", "route", "show").stdout
            free = next((n for n in range(256) if f"{_SUBNET_BASE}.{n}.0/24" not in used), None)
            if free is None:
                raise LabError(f"no free {_SUBNET_BASE}.N.0/24 subnet")
            self._subnet = f"{_SUBNET_BASE}.{free}"
            _sh("ip", "netns", "add", self.bridge_ns)
            self._in(self.bridge_ns, "ip", "link", "add", "br0", "type", "bridge")
            self._in(self.bridge_ns, "ip", "link", "set", "br0", "up")
            self._in(self.bridge_ns, "nft", "add table bridge lab")
            self._in(self.bridge_ns, "nft", "add chain bridge lab forward { type filter hook forward priority 0; }")
            self.host(LAB_SELF)  # claims the subnet on this machine's routes before the lock is let go

    def host(self, name: str) -> Host:
        """The host named name, made on first use."""
        if name in self.hosts:
            return self.hosts[name]
        index = next(self._next_ip)
        if index > 250:
            raise LabError("at most 250 hosts in a lab")
        namespace = None if name == LAB_SELF else f"nm{self.tag}h{index}"
        outer, port = f"nm{self.tag}v{index}", f"p{index}"  # outer: the host's end, renamed eth0 in its namespace
        ip = f"{self._subnet}.{index}"
        _sh("ip", "link", "add", outer, "type", "veth", "peer", "name", f"nm{self.tag}p{index}")
        _sh("ip", "link", "set", f"nm{self.tag}p{index}", "netns", self.bridge_ns)
        self._in(self.bridge_ns, "ip", "link", "set", f"nm{self.tag}p{index}", "name", port)
        self._in(self.bridge_ns, "ip", "link", "set", port, "master", "br0", "up")
        if namespace is None:
            _sh("ip", "addr", "add", f"{ip}/24", "dev", outer)
            _sh("ip", "link", "set", outer, "up")
        else:
            _sh("ip", "netns", "add", namespace)
            _sh("ip", "link", "set", outer, "netns", namespace)
            self._in(namespace, "ip", "link", "set", outer, "name", "eth0")
            self._in(namespace, "ip", "addr", "add", f"{ip}/24", "dev", "eth0")
            self._in(namespace, "ip", "link", "set", "eth0", "up")
            self._in(namespace, "ip", "link", "set", "lo", "up")
        self.hosts[name] = host = Host(name, namespace, ip, port)
        return host

    # A Lab is a deploy.local.Network: LocalMesh(network=lab) puts each process
    # on the host named after it.

    def address(self, name: str) -> str:
        """The address of host name (made on first use)."""
        return self.host(name).ip

    def listen(self, name: str) -> tuple[str, str | None]:
        """A service on host name listens on any port, or behind its delay proxy."""
        ip = self.host(name).ip
        if name in self._proxies:
            return f"{ip}:{SERVICE_PORT}", f"{ip}:{PROXY_PORT}"
        return f"{ip}:0", None

    def proxy(self, name: str) -> None:
        """Puts a delay proxy in front of the service of host name, which then
        advertises the proxy's address: every connection to it can be delayed
        (delay()). Call before the mesh is made."""
        ip, delay_file = self.host(name).ip, self._delay_dir / name
        delay_file.write_text("0")
        proxy = subprocess.Popen(self.wrap(name, [sys.executable, str(_DELAY_PROXY), ip, str(PROXY_PORT), ip,
                                                  str(SERVICE_PORT), str(delay_file)]),
                                 stdout=subprocess.PIPE, text=True)
        self._proxies[name] = proxy
        if proxy.stdout.readline().strip() != "ready":
            raise LabError(f"the delay proxy of {name} did not start")

    def delay(self, name: str, ms: float) -> None:
        """Every connection to the service of host name (behind its proxy) delayed by
        ms each way, from within 50 ms on."""
        if name not in self._proxies:
            raise LabError(f"{name} has no delay proxy: Lab.proxy({name!r}) before the mesh is made")
        temporary = self._delay_dir / f".{name}"
        temporary.write_text(str(ms))
        temporary.replace(self._delay_dir / name)

    def wrap(self, name: str, argv: list[str]) -> list[str]:
        """argv run on host name (made on first use)."""
        namespace = self.host(name).namespace
        return argv if namespace is None else ["ip", "netns", "exec", namespace, *argv]

    def close(self) -> None:
        """Removes every namespace and link the lab made (processes on them should be
        stopped first). Safe to call twice."""
        for proxy in self._proxies.values():
            proxy.kill()
            proxy.wait()
        self._proxies.clear()
        shutil.rmtree(self._delay_dir, ignore_errors=True)
        for host in self.hosts.values():
            if host.namespace:
                _sh("ip", "netns", "del", host.namespace, check=False)
            else:
                _sh("ip", "link", "del", f"nm{self.tag}v{host.port[1:]}", check=False)
        self.hosts.clear()
        _sh("ip", "netns", "del", self.bridge_ns, check=False)

    # -- faults -----------------------------------------------------------------------

    def cut(self, a: str, b: str) -> None:
        """No frame between hosts a and b, either way, until healed."""
        self._cuts.add(tuple(sorted((a, b))))
        self._apply()

    def isolate(self, name: str, from_hosts: list[str] | None = None) -> None:
        """Cuts name off from from_hosts (by default every other host)."""
        for other in from_hosts if from_hosts is not None else [h for h in self.hosts if h != name]:
            self._cuts.add(tuple(sorted((name, other))))
        self._apply()

    def lose(self, a: str, b: str, percent: int) -> None:
        """Drops percent of the frames between a and b, each way, at random."""
        if not 0 <= percent <= 100:
            raise ValueError("percent: 0 to 100")
        self._losses[tuple(sorted((a, b)))] = percent
        self._apply()

    def heal(self, a: str | None = None, b: str | None = None) -> None:
        """Restores the link between a and b, or every link."""
        if a is None:
            self._cuts.clear()
            self._losses.clear()
            for name in self._proxies:
                self.delay(name, 0)
        else:
            pair = tuple(sorted((a, b)))
            self._cuts.discard(pair)
            self._losses.pop(pair, None)
        self._apply()

    def _apply(self) -> None:
        """The chain's rules, replaced at once (one nft transaction)."""
        # ARP always passes: a cut drops IP, as a firewall would, so neither side's
        # neighbour entry turns FAILED (which would then refuse connections for a
        # while after the heal, and make every heal slower than the real thing).
        rules = ["flush chain bridge lab forward", "add rule bridge lab forward ether type arp accept"]
        for pair in sorted(self._cuts):
            for x, y in (pair, pair[::-1]):
                rules.append(f"add rule bridge lab forward iifname {self.hosts[x].port} "
                             f"oifname {self.hosts[y].port} drop")
        for pair, percent in sorted(self._losses.items()):
            for x, y in (pair, pair[::-1]):
                sample = "" if percent == 100 else f"numgen random mod 100 < {percent} "
                rules.append(f"add rule bridge lab forward iifname {self.hosts[x].port} "
                             f"oifname {self.hosts[y].port} {sample}drop")
        result = subprocess.run(["ip", "netns", "exec", self.bridge_ns, "nft", "-f", "-"], input="\n".join(rules),
                                capture_output=True, text=True)
        if result.returncode != 0:
            raise LabError(f"nft failed: {result.stderr.strip()}")

    @staticmethod
    def _in(namespace: str, *argv: str) -> None:
        _sh("ip", "netns", "exec", namespace, *argv)
