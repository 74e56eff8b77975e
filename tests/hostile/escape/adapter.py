"""Probes the sandbox and fails setup with one `key=value` token per probe, so the harness records what it saw."""

import os
import socket
import subprocess

from _hostile import Honest, serve


def write(path):
    try:
        with open(path, "w") as f:
            f.write("escaped")
        return "written"
    except OSError as e:
        return type(e).__name__


def read(path):
    try:
        with open(path, "rb") as f:
            f.read(1)
        return "read"
    except OSError as e:
        return type(e).__name__


def run_from_tmp():
    with open("/tmp/x.sh", "w") as f:
        f.write("#!/bin/sh\necho ran\n")
    os.chmod("/tmp/x.sh", 0o755)
    try:
        return subprocess.run(["/tmp/x.sh"], capture_output=True, text=True).stdout.strip() or "nothing"
    except OSError as e:
        return type(e).__name__


def connect(path):
    try:
        socket.socket(socket.AF_UNIX).connect(path)
        return "connected"
    except OSError as e:
        return type(e).__name__


def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return line.split()[1]


def probes():
    found = {"uid": os.getuid(), "cap_eff": status("CapEff"), "no_new_privs": status("NoNewPrivs")}
    for name, path in (
        ("root", "/escaped"),
        ("etc", "/etc/escaped"),
        ("method", "/method/escaped"),
        ("tmp", "/tmp/ok"),
    ):
        found[f"write_{name}"] = write(path)
    weights = os.environ.get("BENCH_WEIGHTS", "unset")
    found["weights_env"], found["read_weights"], found["write_weights"] = weights, read(weights), write(weights)
    contract = os.environ.get("BENCH_CONTRACT_SOCKET", "unset")
    found["contract_env"], found["write_contract_dir"] = contract, write(os.path.dirname(contract) + "/escaped")
    found["connect_again"] = connect(contract)  # the harness accepts one connection, the SDK's, and no other
    found["exec_tmp"] = run_from_tmp()
    found["shadow"] = read("/etc/shadow")
    for name, path in (
        ("work", "/work"),
        ("docker_sock", "/var/run/docker.sock"),
        ("host_docker", "/var/lib/docker"),
        ("host_root", "/root/.bash_history"),
    ):
        found[name] = "present" if os.path.exists(path) else "absent"
    binds = [
        line.split()[4]
        for line in open("/proc/self/mountinfo")
        if line.split()[4]
        not in (
            "/",
            "/proc",
            "/dev",
            "/dev/pts",
            "/sys",
            "/sys/fs/cgroup",
            "/dev/mqueue",
            "/dev/shm",
            "/tmp",
            "/etc/resolv.conf",
            "/etc/hostname",
            "/etc/hosts",
        )
        and not line.split()[4].startswith(("/proc/", "/sys/", "/dev/"))
    ]
    found["extra_mounts"] = ",".join(binds) or "none"
    return found


class Escape(Honest):
    def setup(self, seed, task):
        raise RuntimeError("probe: " + " ".join(f"{k}={v}" for k, v in probes().items()))


if __name__ == "__main__":
    serve(Escape())
