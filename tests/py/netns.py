"""Hosts for process tests: one network namespace per "host", all on one bridge that lives
in a namespace of its own (so nothing is added to the machine's own namespace: no address,
no link), addresses 10.214.0.X/24 inside the namespaces only, and /etc/netns/<ns>/hosts as
each host's name service (`ip netns exec` bind-mounts it over /etc/hosts, so a name such as
sluice-worker.sluice.svc.cluster.local can resolve to several hosts, as a headless Service
does). test_tp_serve.py has its own smaller two-node helper (veth pairs, no names).

    net = Net.make("dp", ["r", "w0", "w1"])      # None when namespaces cannot be made
    net.hosts("r", {"sluice-worker.sluice.svc": ["w0", "w1"]})
    subprocess.Popen(net.prefix("w0") + [BIN, "worker", ...])
    net.take_away("w0")                          # link down, every process in it killed
    net.drop()
"""
import os
import shutil
import signal
import subprocess
import time

SUBNET = "10.214.0"


def sh(*cmd):
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True)


class Net:
    def __init__(self, tag, names):
        self.tag = tag
        self.ns = {h: f"sl{tag}{h}" for h in names}
        self.addr = {h: f"{SUBNET}.{10 + i}" for i, h in enumerate(names)}
        self.switch = f"sl{tag}sw"
        self.veth = {h: (f"v{tag}{i}h", f"v{tag}{i}s") for i, h in enumerate(names)}

    @classmethod
    def make(cls, tag, names):
        """The namespaces, or None with the reason printed (no `ip`, not permitted)."""
        if not shutil.which("ip"):
            print("network namespaces unavailable: no `ip` command")
            return None
        net = cls(tag, names)
        r = sh("ip", "netns", "add", net.switch)
        if r.returncode:
            print(f"network namespaces unavailable: {r.stderr.strip()}")
            return None
        steps = [("ip", "-n", net.switch, "link", "add", "br0", "type", "bridge"),
                 ("ip", "-n", net.switch, "link", "set", "br0", "up")]
        for h in names:
            ns, (vh, vs) = net.ns[h], net.veth[h]
            steps += [("ip", "netns", "add", ns),
                      ("ip", "link", "add", vh, "type", "veth", "peer", "name", vs),
                      ("ip", "link", "set", vh, "netns", ns),
                      ("ip", "link", "set", vs, "netns", net.switch),
                      ("ip", "-n", net.switch, "link", "set", vs, "master", "br0"),
                      ("ip", "-n", net.switch, "link", "set", vs, "up"),
                      ("ip", "-n", ns, "addr", "add", f"{net.addr[h]}/24", "dev", vh),
                      ("ip", "-n", ns, "link", "set", vh, "up"),
                      ("ip", "-n", ns, "link", "set", "lo", "up")]
        for s in steps:
            r = sh(*s)
            if r.returncode:
                net.drop()
                print(f"network namespaces unavailable: {' '.join(s)}: {r.stderr.strip()}")
                return None
        return net

    def prefix(self, h):
        return ["ip", "netns", "exec", self.ns[h]]

    def hosts(self, h, names):
        """/etc/hosts of host h: {name: [host, ...]} (every address of a name is listed)."""
        d = f"/etc/netns/{self.ns[h]}"
        os.makedirs(d, exist_ok=True)
        lines = ["127.0.0.1 localhost"]
        for name, hs in names.items():
            lines += [f"{self.addr[x]} {name}" for x in hs]
        with open(f"{d}/hosts", "w") as f:
            f.write("\n".join(lines) + "\n")

    def pids(self, h):
        r = sh("ip", "netns", "pids", self.ns[h])
        return [int(p) for p in r.stdout.split()]

    def take_away(self, h):
        """The host vanishes: its link goes down first (nothing it sends arrives, not even a
        FIN), then every process in its namespace is SIGKILLed."""
        sh("ip", "-n", self.ns[h], "link", "set", self.veth[h][0], "down")
        for p in self.pids(h):
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def drop(self):
        for h, ns in self.ns.items():
            for p in self.pids(h):
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            sh("ip", "netns", "del", ns)
            shutil.rmtree(f"/etc/netns/{ns}", ignore_errors=True)
        sh("ip", "netns", "del", self.switch)
        time.sleep(0.1)
