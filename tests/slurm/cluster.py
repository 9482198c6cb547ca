"""A real single-node Slurm for the tests: munged, slurmctld and slurmd on 127.0.0.1.

Everything lives under one folder (state, spool, logs, the munge key and socket). The daemons
detach and write pid files there, so any process (the last pytest-xdist worker out) can stop
them; Slurm's commands find the cluster by ``SLURM_CONF``.
Needs Debian's ``slurm-wlm`` and ``munge`` and root (slurmd runs jobs as their user).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

TEMPLATE = Path(__file__).with_name("slurm.conf")
DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "sinfo", "squeue", "scancel")


class SlurmUnavailable(RuntimeError):
    """Slurm cannot start here; the message says why (a test's skip reason)."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def missing_reason() -> str | None:
    """Why Slurm cannot run on this machine at all (no binaries, not root), else ``None``."""
    missing = [d for d in DAEMONS if shutil.which(d) is None and not Path("/usr/sbin", d).exists()]
    if missing:
        return f"Slurm not installed (missing {missing}): apt-get install slurm-wlm munge"
    if os.geteuid() != 0:
        return "a local Slurm needs root (slurmd starts jobs as their user)"
    return None


class LocalSlurm:
    """One munged, slurmctld and slurmd with their state under ``root``.

    Args:
        root: An empty folder of this cluster's own (mode 0700: munge checks it).
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.conf = root / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        """The environment that points Slurm's commands (and dask-jobqueue) at this cluster."""
        return {"SLURM_CONF": str(self.conf)}

    def start(self, timeout_s: float = 60.0) -> None:
        """Start the three daemons (each daemonizes, with a pid file) and wait until the node
        is idle.

        Raises:
            SlurmUnavailable: a daemon did not come up (the message has the logs' tails).
        """
        host = socket.gethostname().split(".")[0]
        for sub in ("ctld", "slurmd", "munge"):
            (self.root / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
        munge = self.root / "munge"
        key = munge / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        socket_path = munge / "munge.socket"
        self.conf.write_text(
            TEMPLATE.read_text().format(
                host=host,
                ctld_port=_free_port(),
                slurmd_port=_free_port(),
                munge_socket=socket_path,
                state=self.root,
            )
        )
        self._run(
            "munged",
            "--force",
            f"--key-file={key}",
            f"--socket={socket_path}",
            f"--pid-file={munge / 'munged.pid'}",
            f"--seed-file={munge / 'munged.seed'}",
            f"--log-file={munge / 'munged.log'}",
        )
        self._run("slurmctld", "-i", "-f", str(self.conf))
        self._run("slurmd", "-f", str(self.conf), "-N", host)
        deadline = time.monotonic() + timeout_s
        while not self._node_idle():
            if time.monotonic() > deadline:
                self.stop()
                raise SlurmUnavailable(
                    f"the node did not become idle within {timeout_s:g} s; {self._tails()}"
                )
            time.sleep(0.5)

    def command(self, *args: str, check: bool = True) -> str:
        """Run one of Slurm's commands against this cluster; its standard output."""
        done = subprocess.run(
            args, env={**os.environ, **self.env}, capture_output=True, text=True, timeout=30, check=False
        )
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
        return done.stdout

    def jobs(self) -> list[tuple[str, str]]:
        """``(job id, state)`` of every job Slurm still knows (pending, running, ending)."""
        out = self.command("squeue", "--noheader", "--format=%i %T", check=False)
        return [(line.split()[0], line.split()[1]) for line in out.splitlines() if len(line.split()) > 1]

    def stop(self) -> None:
        """Cancel every job, stop the daemons (newest first) by their pid files, then kill
        what is left of the jobs."""
        if _alive(self._pid("slurmctld.pid")):
            self.command("scancel", "--user", str(os.geteuid()), check=False)
            deadline = time.monotonic() + 20
            while self.jobs() and time.monotonic() < deadline:
                time.sleep(0.5)
        for name in ("slurmd.pid", "slurmctld.pid", "munge/munged.pid"):
            pid = self._pid(name)
            if pid is None or not _alive(pid):
                continue
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 15
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.2)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        for pid in self._strays():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def _strays(self) -> list[int]:
        """Processes of this cluster's jobs still alive once it stopped: a job process whose
        parent was killed (a test's SIGKILL) is reparented and ``proctrack/linuxproc`` loses it."""
        marker = f"SLURM_CONF={self.conf}".encode()
        strays = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                variables = (entry / "environ").read_bytes().split(b"\0")
            except OSError:  # gone meanwhile, or not ours to read
                continue
            if marker in variables and any(v.startswith(b"SLURM_JOB_ID=") for v in variables):
                strays.append(int(entry.name))
        return strays

    def _pid(self, name: str) -> int | None:
        try:
            return int((self.root / name).read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def _run(self, *args: str) -> None:
        with (self.root / f"{args[0]}.out").open("ab") as log:
            done = subprocess.run(
                args,
                env={**os.environ, **self.env},
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=30,
                check=False,
            )
        if done.returncode != 0:
            self.stop()
            raise SlurmUnavailable(f"{args[0]} exited with {done.returncode}; {self._tails()}")

    def _node_idle(self) -> bool:
        return "idle" in self.command("sinfo", "--noheader", "--format=%T", check=False).split()

    def _tails(self) -> str:
        tails = []
        for path in sorted(self.root.glob("*.out")) + sorted(self.root.glob("**/*.log")):
            lines = path.read_text(errors="replace").strip().splitlines()[-3:]
            if lines:
                tails.append(f"{path.name}: " + " | ".join(lines))
        return "; ".join(tails)


def _alive(pid: int | None) -> bool:
    """Whether a process runs (a zombie, not yet reaped by its parent, does not)."""
    if pid is None:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def main(argv: list[str]) -> None:
    """``python -m tests.slurm.cluster start|stop FOLDER``: the tests' cluster by hand (for
    ``alloop bench scaleout``); ``start`` prints the ``SLURM_CONF`` to export."""
    if len(argv) != 2 or argv[0] not in ("start", "stop"):
        raise SystemExit("usage: python -m tests.slurm.cluster start|stop FOLDER")
    cluster = LocalSlurm(Path(argv[1]).resolve())
    if argv[0] == "stop":
        cluster.stop()
        return
    reason = missing_reason()
    if reason is not None:
        raise SystemExit(reason)
    cluster.root.mkdir(mode=0o700, parents=True, exist_ok=True)
    cluster.start()
    print(f"export SLURM_CONF={cluster.conf}")


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
