"""Invokers in network namespaces of their own, as if each were on a host of its own.

With SQUALL_INVOKER_NETNS_SUBNET set (a /24, e.g. 10.231.0.0/24), the stack builds:

    host                                     netns squall-inv0        netns squall-inv1
    bridge squall0  10.231.0.1/24 --veth--   sqn0 10.231.0.10    --   sqn1 10.231.0.11   ...
    NATS, Cassandra, controller gRPC listen on 10.231.0.1 only

An invoker reaches the services through its veth, and its action containers (on the engine's own
bridge network) through the host, which routes between the two bridges. Action containers are
firewalled from the whole /24 (new connections rejected), so they reach neither the services nor
the invokers. Cutting an invoker off the network is taking its host-side veth down.

The firewall is an nftables table of its own, not a rule in iptables' filter chains: the engine
keeps its own rules there (netavark, Docker) and puts them first whenever it sets up its network
again, and its "accept what comes from the containers' bridge" then settled those packets before
our rule was ever reached (seen: actions reached the invokers' metrics ports). A table's base
chain at a priority before the filter table's sees every packet, and its reject is final,
whatever another table accepts.

Everything here is idempotent; it needs root, iproute2 and nft.
"""
from __future__ import annotations

import ipaddress
import shutil
import subprocess
from typing import Callable

BRIDGE = "squall0"


def namespace(invoker_id: int) -> str:
    return f"squall-inv{invoker_id}"


def _host_veth(invoker_id: int) -> str:
    return f"sqh{invoker_id}"


def _ns_veth(invoker_id: int) -> str:
    return f"sqn{invoker_id}"


def _ip(*args: str, netns: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    argv = ["ip", *(["-n", netns] if netns else []), *args]
    done = subprocess.run(argv, capture_output=True, text=True)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip()}")
    return done


def _exists(kind: str, name: str) -> bool:
    if kind == "netns":
        return name in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
    return _ip("link", "show", name, check=False).returncode == 0


TABLE = "squall"   # nftables: inet squall


def _nft(script: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(["nft", "-f", "-"], input=script, capture_output=True, text=True)
    if check and done.returncode != 0:
        raise RuntimeError(f"nft: {done.stderr.strip()}")
    return done


def _firewall(subnet: str, container_subnets: list[str]) -> str:
    """The table, replaced whole in one transaction: new connections from the containers'
    networks to the subnet are rejected, to the host (input) and through it (forward)."""
    ipv4 = [s for s in container_subnets if ":" not in s]   # (the subnet is IPv4: v6 cannot reach it)
    if not ipv4:
        raise RuntimeError(f"the containers' network has no IPv4 subnet to firewall: {container_subnets}")
    sources = ", ".join(ipv4)
    rule = f"ip saddr {{ {sources} }} ip daddr {subnet} ct state new reject"
    chains = "".join(f"""
  chain {hook} {{
    type filter hook {hook} priority filter - 10; policy accept;
    {rule}
  }}""" for hook in ("input", "forward"))
    return f"add table inet {TABLE}\ndelete table inet {TABLE}\ntable inet {TABLE} {{{chains}\n}}\n"


def setup(subnet: str, invokers: int, container_subnets: list[str], log: Callable[[str], None]) -> None:
    net = ipaddress.ip_network(subnet)
    prefix = net.prefixlen
    if not _exists("link", BRIDGE):
        log(f"netns: bridge {BRIDGE} {net[1]}/{prefix}")
        _ip("link", "add", BRIDGE, "type", "bridge")
    if str(net[1]) not in _ip("-o", "addr", "show", "dev", BRIDGE).stdout:
        _ip("addr", "add", f"{net[1]}/{prefix}", "dev", BRIDGE)
    _ip("link", "set", BRIDGE, "up")
    with open("/proc/sys/net/ipv4/ip_forward", "w") as f:
        f.write("1")
    for i in range(invokers):
        ns, host_end, ns_end = namespace(i), _host_veth(i), _ns_veth(i)
        if not _exists("netns", ns):
            log(f"netns: {ns} at {net[10 + i]}")
            subprocess.run(["ip", "netns", "add", ns], check=True)
        if _ip("link", "show", ns_end, netns=ns, check=False).returncode != 0:
            # No pair yet, or the host end of one whose namespace was deleted (the kernel removes
            # such a device a little later): a new pair.
            _ip("link", "delete", host_end, check=False)
            _ip("link", "add", host_end, "type", "veth", "peer", "name", ns_end, "netns", ns)
        _ip("link", "set", host_end, "master", BRIDGE)
        _ip("link", "set", host_end, "up")
        if str(net[10 + i]) not in _ip("-o", "addr", "show", "dev", ns_end, netns=ns).stdout:
            _ip("addr", "add", f"{net[10 + i]}/{prefix}", "dev", ns_end, netns=ns)
        _ip("link", "set", ns_end, "up", netns=ns)
        _ip("link", "set", "lo", "up", netns=ns)
        _ip("route", "replace", "default", "via", str(net[1]), netns=ns)
    _nft(_firewall(subnet, container_subnets))


def teardown() -> None:
    """Remove the namespaces, the bridge and the firewall table (no engine needs to answer to
    say which subnets it was for); nothing if there are none."""
    if not shutil.which("ip"):
        return
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
    for ns in listed:
        if ns.startswith("squall-inv"):
            # The pair first, at once (a namespace's devices otherwise go some time after it).
            _ip("link", "delete", _host_veth(int(ns[len("squall-inv"):])), check=False)
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True)
    if _exists("link", BRIDGE):
        _ip("link", "delete", BRIDGE, check=False)
    if shutil.which("nft"):
        _nft(f"add table inet {TABLE}\ndelete table inet {TABLE}\n", check=False)


def cut(invoker_id: int) -> None:
    """Take invoker n off the network: nothing in or out, as if its host's cable were pulled."""
    _ip("link", "set", _host_veth(invoker_id), "down")


def reconnect(invoker_id: int) -> None:
    _ip("link", "set", _host_veth(invoker_id), "up")


def wrap(argv: list[str], invoker_id: int) -> list[str]:
    """The command, run inside invoker n's network namespace, and only that: `ip netns exec`
    would also remount /sys, hiding the cgroup freezer the pool pauses containers with."""
    return ["nsenter", f"--net=/run/netns/{namespace(invoker_id)}", "--", *argv]
