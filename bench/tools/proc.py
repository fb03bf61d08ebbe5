#!/usr/bin/env python3
"""Process and port helpers for bench/run.sh.

    proc.py cpu PID...        user+sys clock ticks summed over /proc/PID/task/*/stat
    proc.py snap CPU_A CPU_B PID...
                              "TICKS BUSY_A BUSY_B WALL": the processes' ticks as `cpu`,
                              the busy ticks (all but idle and iowait) of cores A and B
                              from /proc/stat (to see whether a core was saturated or
                              shared with something else during a measurement), and a
                              monotonic clock in seconds
                              (TICKS is "-" when no PID is given)
    proc.py snapreq UP_PORT CPU_A CPU_B PID...
                              "TICKS BUSY_A BUSY_B WALL REQUESTS ACCEPTS": `snap` and then
                              the requests the upstream nginx has served and the connections
                              it has accepted so far (its stub_status at
                              127.0.0.1:UP_PORT/bench-status; this query included in both)
    proc.py rss PID...        VmRSS summed over the processes, in KiB
    proc.py tree PID          PID and all its descendants, one per line
    proc.py ports N           N distinct TCP ports free on 127.0.0.1 right now (below the
                              ephemeral port range when possible)
    proc.py wait-port PORT [SECONDS]
                              exit 0 as soon as 127.0.0.1:PORT accepts a connection,
                              1 after SECONDS (default 10)
    proc.py listening PORT... print those of the ports something listens on (from
                              /proc/net/tcp{,6}); exit 1 if any
    proc.py wait-conns PORT N [SECONDS]
                              exit 0 as soon as N established TCP connections have local
                              port PORT (a proxy's accepted clients), 1 after SECONDS
                              (default 60); prints the last count
"""
import os
import random
import socket
import sys
import time


def task_ticks(pid):
    total = 0
    try:
        tids = os.listdir("/proc/%d/task" % pid)
    except FileNotFoundError:
        return 0
    for tid in tids:
        try:
            with open("/proc/%d/task/%s/stat" % (pid, tid)) as f:
                stat = f.read()
        except (FileNotFoundError, ProcessLookupError):
            continue
        # The command name is in parentheses and may contain spaces: split after it.
        fields = stat[stat.rindex(")") + 2 :].split()
        # fields[0] is field 3 (state); utime is field 14, stime field 15.
        total += int(fields[11]) + int(fields[12])
    return total


def rss_kib(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except FileNotFoundError:
        pass
    return 0


def core_busy(cpu):
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu%d " % cpu):
                v = [int(x) for x in line.split()[1:]]
                # user nice system idle iowait irq softirq steal guest guest_nice;
                # guest time is already included in user.
                return sum(v[:8]) - v[3] - v[4]
    return 0


def children_map():
    kids = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % name) as f:
                stat = f.read()
        except (FileNotFoundError, ProcessLookupError):
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        kids.setdefault(ppid, []).append(int(name))
    return kids


def tree(pid):
    kids = children_map()
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def free_ports(n):
    """N ports free on 127.0.0.1, below the ephemeral range when there is room, so that no
    outgoing connection (ours or anyone's) can take one as its source port while a proxy
    is being restarted on it."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 0
    ports = []
    if low > 11000:
        candidates = random.sample(range(10000, low), min(2000, low - 10000))
        for port in candidates:
            s = socket.socket()
            try:
                s.bind(("127.0.0.1", port))  # no SO_REUSEADDR: fails on TIME_WAIT too
                ports.append(port)
            except OSError:
                pass
            finally:
                s.close()
            if len(ports) == n:
                return ports
    socks = []
    try:
        while len(ports) < n:
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
            socks.append(s)
            if port not in ports:
                ports.append(port)
    finally:
        for s in socks:
            s.close()
    return ports


def wait_port(port, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


def listening(ports):
    found = set()
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    if parts[3] == "0A":  # TCP_LISTEN
                        found.add(int(parts[1].rsplit(":", 1)[1], 16))
        except FileNotFoundError:
            pass
    return [p for p in ports if p in found]


def upstream_counts(port):
    """The "requests" and "accepts" figures of nginx's stub_status page."""
    import http.client
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("GET", "/bench-status")
    text = c.getresponse().read().decode()
    c.close()
    # Active connections: N / server accepts handled requests / A H R / Reading ...
    accepts, _, requests = text.splitlines()[2].split()[:3]
    return int(requests), int(accepts)


def established(port):
    """Established IPv4/IPv6 TCP sockets whose local port is PORT: with `ss` (a netlink dump
    filtered in the kernel) when there is one, else from /proc/net/tcp{,6}, which is slower
    and, read while thousands of sockets come and go, may count some twice."""
    import shutil
    import subprocess
    if shutil.which("ss"):
        out = subprocess.run(["ss", "-Htn", "state", "established", "( sport = :%d )" % port],
                             capture_output=True, text=True)
        if out.returncode == 0:
            return sum(1 for line in out.stdout.splitlines() if line.strip())
    suffix = ":%04X" % port
    n = 0
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                next(f)
                for line in f:
                    parts = line.split(None, 4)
                    if parts[3] == "01" and parts[1].endswith(suffix):
                        n += 1
        except FileNotFoundError:
            pass
    return n


def main(argv):
    if len(argv) < 2:
        sys.exit(__doc__)
    cmd, args = argv[1], argv[2:]
    if cmd == "cpu":
        print(sum(task_ticks(int(p)) for p in args))
    elif cmd == "snap":
        a, b = int(args[0]), int(args[1])
        ticks = sum(task_ticks(int(p)) for p in args[2:]) if args[2:] else "-"
        print(ticks, core_busy(a), core_busy(b), "%.6f" % time.monotonic())
    elif cmd == "snapreq":
        a, b = int(args[1]), int(args[2])
        ticks = sum(task_ticks(int(p)) for p in args[3:]) if args[3:] else "-"
        print(ticks, core_busy(a), core_busy(b), "%.6f" % time.monotonic(), *upstream_counts(int(args[0])))
    elif cmd == "wait-conns":
        port, want = int(args[0]), int(args[1])
        deadline = time.monotonic() + (float(args[2]) if len(args) > 2 else 60.0)
        while True:
            n = established(port)
            if n >= want or time.monotonic() > deadline:
                break
            time.sleep(0.25)
        print(n)
        sys.exit(0 if n >= want else 1)
    elif cmd == "rss":
        print(sum(rss_kib(int(p)) for p in args))
    elif cmd == "tree":
        print("\n".join(str(p) for p in tree(int(args[0]))))
    elif cmd == "ports":
        print(" ".join(str(p) for p in free_ports(int(args[0]))))
    elif cmd == "wait-port":
        sys.exit(0 if wait_port(int(args[0]), float(args[1]) if len(args) > 1 else 10.0) else 1)
    elif cmd == "listening":
        busy = listening([int(p) for p in args])
        if busy:
            print(" ".join(str(p) for p in busy))
            sys.exit(1)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
