"""One campaign, one writer: a lease on the campaign, kept in the campaign's own ledger.

Two writers of one campaign at once (``alloop run`` twice, a CLI run during a scheduled flow
run, two flow runs) must not both recover, propose and dispatch: the second would re-choose
candidates the first has in flight, mark its in-flight evaluations as failed, and spend the
budget twice. :class:`CampaignLease` is a row per campaign in the ledger's ``leases`` table,
taken in one write transaction and renewed by a background thread while held. A holder that
dies frees it when its lease runs out, at once if it ran on this host (its process is gone),
so a crashed run never blocks the campaign for long.

Taking the lease is one write transaction that serializes on the campaign
(:func:`loop.database.serialize`: SQLite's write lock, a PostgreSQL advisory lock, so two
writers never both insert the first row) and reads the lease row ``FOR UPDATE`` (a renewal and
a takeover of one row take turns on PostgreSQL). A connection lost to a database server is
retried (:meth:`Ledger.retrying`).

The lease lives in the ledger, not in a workflow server, because the ledger is what it
protects: every process writing to that ledger takes it, with or without Prefect::

    with CampaignLease(ledger, "my-campaign", "alloop run"):
        ...  # write
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from sqlalchemy import delete, insert, select, update

from loop.database import serialize
from loop.errors import AlloopError
from loop.ledger import Ledger
from loop.schema import leases

log = logging.getLogger("alloop")


class CampaignBusy(AlloopError, RuntimeError):
    """Another writer holds the campaign's lease and did not release it in time."""


@dataclass(frozen=True)
class Holder:
    """Who holds a campaign's lease: a label (``alloop run``, ``flow run <name> (<id>)``),
    where it runs, since when (seconds since the epoch) and when its lease ends."""

    label: str
    host: str
    pid: int
    since: float
    expires_in_s: float

    def __str__(self) -> str:
        since = datetime.fromtimestamp(self.since, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        return f"{self.label} (pid {self.pid} on {self.host}, since {since})"


def default_label() -> str:
    """What this process is, for the other writers' messages: ``alloop run``, ``pytest``..."""
    words = [Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"]
    if len(sys.argv) > 1 and not sys.argv[1].startswith("-"):
        words.append(sys.argv[1])
    return " ".join(words)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


class CampaignLease:
    """A lease on one campaign of a ledger; a context manager.

    Args:
        ledger: The campaign's ledger (its database holds the lease).
        campaign: The campaign's name.
        label: Who is asking, for the other writers' messages (default: this program's name).
        wait_s: How long to wait for a busy lease before giving up.
        lease_s: The lease's length; it is renewed every third of it while held.
        poll_s: How often a waiting writer looks again.
        logger: Where the waiting and taking-over lines go (a Prefect run logger, say).

    Raises:
        ValueError: a duration is out of range.
        CampaignBusy: on entry, when another live writer still holds the lease after ``wait_s``.
    """

    def __init__(
        self,
        ledger: Ledger,
        campaign: str,
        label: str | None = None,
        wait_s: float = 0.0,
        lease_s: float = 60.0,
        poll_s: float = 1.0,
        logger: logging.Logger | logging.LoggerAdapter[Any] = log,
    ) -> None:
        if lease_s <= 0 or wait_s < 0 or poll_s <= 0:
            raise ValueError(
                f"lease_s and poll_s must be > 0 and wait_s >= 0; got {lease_s}, {poll_s}, {wait_s}"
            )
        self.ledger, self.campaign = ledger, campaign
        self.label = label if label is not None else default_label()
        self.wait_s, self.lease_s, self.poll_s = wait_s, lease_s, poll_s
        self.log = logger
        self.holder = uuid.uuid4().hex
        self.host, self.pid = socket.gethostname(), os.getpid()
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    # --- one attempt ------------------------------------------------------------------------

    def try_acquire(self) -> Holder | None:
        """Take the lease if it is free, expired or held by a dead process of this host.

        Returns:
            ``None`` when the lease is now ours, else who holds it.
        """
        return self.ledger.retrying(self._try_acquire)

    def _try_acquire(self) -> Holder | None:
        now = time.time()
        mine = {
            "holder": self.holder,
            "label": self.label[:200],
            "host": self.host,
            "pid": self.pid,
            "acquired_at": now,
            "expires_at": now + self.lease_s,
        }
        with self.ledger.transaction() as conn:
            serialize(conn, f"alloop lease {self.campaign}")
            row = conn.execute(
                select(leases).where(leases.c.campaign == self.campaign).with_for_update()
            ).first()
            if row is None:
                conn.execute(insert(leases).values(campaign=self.campaign, **mine))
                return None
            if row.holder == self.holder:
                return None
            stale = row.expires_at < now or (row.host == self.host and not _alive(row.pid))
            if not stale:
                return Holder(row.label, row.host, row.pid, row.acquired_at, row.expires_at - now)
            self.log.warning(
                "campaign %s: taking over the lease of %s (pid %d on %s), which %s",
                self.campaign,
                row.label,
                row.pid,
                row.host,
                "has exited" if row.expires_at >= now else "let its lease run out",
            )
            conn.execute(update(leases).where(leases.c.campaign == self.campaign).values(**mine))
            return None

    # --- the context manager ----------------------------------------------------------------

    def acquire(self) -> None:
        """Take the lease, waiting up to ``wait_s``; then keep it renewed until :meth:`release`.

        Raises:
            CampaignBusy: another live writer still holds it after ``wait_s``; the message is
                one line naming the holder (label, pid, host, since when).
        """
        deadline = time.monotonic() + self.wait_s
        holder = self.try_acquire()
        if holder is not None and self.wait_s > 0:
            self.log.warning(
                "campaign %s is being advanced by %s; waiting up to %g s for it",
                self.campaign,
                holder,
                self.wait_s,
            )
        while holder is not None:
            if time.monotonic() >= deadline:
                waited = (
                    f"gave up after waiting {self.wait_s:g} s"
                    if self.wait_s > 0
                    else "did not wait ([execution] lock_wait_s = 0)"
                )
                raise CampaignBusy(
                    f"campaign {self.campaign!r} is being advanced by {holder}; "
                    f"this writer ({self.label}) {waited}"
                )
            time.sleep(min(self.poll_s, max(deadline - time.monotonic(), 0.01)))
            holder = self.try_acquire()
        self._stop.clear()
        self._renewer = threading.Thread(target=self._renew, name=f"lease-{self.campaign}", daemon=True)
        self._renewer.start()

    def release(self) -> None:
        """Give the lease back (if it is still ours). Idempotent."""
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
            self._renewer = None
        self.ledger.retrying(self._delete)

    def _delete(self) -> None:
        with self.ledger.transaction() as conn:
            conn.execute(
                delete(leases).where(leases.c.campaign == self.campaign, leases.c.holder == self.holder)
            )

    def _renew(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            try:
                with self.ledger.transaction() as conn:
                    renewed = conn.execute(
                        update(leases)
                        .where(leases.c.campaign == self.campaign, leases.c.holder == self.holder)
                        .values(expires_at=time.time() + self.lease_s)
                    ).rowcount
            except Exception as exc:  # a transient database error: try again next time
                self.log.warning("campaign %s: could not renew the lease: %s", self.campaign, exc)
                continue
            if renewed != 1:
                self.log.error("campaign %s: the lease was taken over by another writer", self.campaign)
                return

    def __enter__(self) -> CampaignLease:
        self.acquire()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
