"""The ledger's tables, their schema version, and the migrations from older versions.

Tables (:mod:`loop.ledger` reads and writes them):

* ``schema`` — one row: the version of these tables (:data:`SCHEMA_VERSION`);
* ``campaigns`` — name, configuration, its hash, seed, why it stopped;
* ``runs`` — one row per process that worked on a campaign: package versions, host, pid,
  seed, config hash. Every other row points at the run that wrote it (provenance);
* ``candidates`` — the candidates a campaign has proposed, with their parameters;
* ``evaluations`` — one per (campaign, candidate, fidelity); status moves
  ``proposed → submitted → done | failed`` and never back. ``fidelity`` names the
  ``[[oracles]]`` entry that measures it; single-oracle campaigns (and every row written
  before version 5) have :data:`DEFAULT_FIDELITY`. ``cost`` is what the evaluation cost;
* ``results`` — one row per measured property: value, uncertainty, unit; the labelled
  structure of a result (its :class:`~loop.frame.Frame`: energy, forces, stress) is in
  ``evaluations.frame``, as :meth:`Frame.as_dict <loop.frame.Frame.as_dict>` gives it;
* ``cycles`` — per cycle: surrogate summary, acquisition, what was chosen and why;
* ``leases`` — who writes to a campaign now (:mod:`loop.lease`);
* ``predictions`` — per proposed evaluation and objective: the surrogate's mean, latent and
  predictive std, and the recalibration factor in force (:mod:`loop.calibration`).

Versions: 1 is the schema before the ``schema`` table (alloop up to commit 2317036); 2 adds
``schema``, ``leases`` (replacing ``flow_leases``) and ``campaigns.stop_reason`` /
``stopped_at``; 3 adds ``evaluations.frame``, moving the labelled structures out of the
metadata; 4 adds ``predictions``; 5 adds ``evaluations.fidelity`` (multi-fidelity campaigns,
:mod:`loop.fidelity`) and makes (campaign, candidate, fidelity) the unique key. :func:`prepare`
creates a new ledger or migrates an old one, in the caller's transaction, keeping every row.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    insert,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.engine import Connection

from loop.database import serialize
from loop.errors import LedgerError
from loop.frame import Frame

#: The version of the tables below; bump it with a migration in :data:`MIGRATIONS`.
SCHEMA_VERSION = 5

#: The fidelity of single-oracle campaigns' evaluations (and of every row older than version 5).
DEFAULT_FIDELITY = "default"

metadata_obj = MetaData()

campaigns = Table(
    "campaigns",
    metadata_obj,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(200), nullable=False, unique=True),
    Column("config", JSON, nullable=False),
    Column("config_hash", String(32), nullable=False),
    Column("seed", Integer, nullable=False),
    Column("versions", JSON, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("stop_reason", Text),
    Column("stopped_at", DateTime(timezone=True)),
)

runs = Table(
    "runs",
    metadata_obj,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("campaign_id", ForeignKey("campaigns.id"), nullable=False),
    Column("seed", Integer, nullable=False),
    Column("config_hash", String(32), nullable=False),
    Column("versions", JSON, nullable=False),
    Column("host", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
)

candidates = Table(
    "candidates",
    metadata_obj,
    Column("campaign_id", ForeignKey("campaigns.id"), primary_key=True),
    Column("id", String(64), primary_key=True),
    Column("params", JSON, nullable=False),
    Column("run_id", ForeignKey("runs.id"), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

evaluations = Table(
    "evaluations",
    metadata_obj,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("campaign_id", ForeignKey("campaigns.id"), nullable=False),
    Column("candidate_id", String(64), nullable=False),
    Column("cycle", Integer, nullable=False),
    Column("status", String(16), nullable=False),
    Column("external_id", String(255)),
    Column("cost", Float),
    Column("error", Text),
    Column("retryable", Boolean),
    Column("run_id", ForeignKey("runs.id"), nullable=False),
    Column("proposed_at", DateTime(timezone=True), nullable=False),
    Column("submitted_at", DateTime(timezone=True)),
    Column("finished_at", DateTime(timezone=True)),
    Column("metadata", JSON),
    Column("frame", JSON(none_as_null=True)),
    Column("fidelity", String(64), nullable=False, default=DEFAULT_FIDELITY, server_default=DEFAULT_FIDELITY),
    UniqueConstraint("campaign_id", "candidate_id", "fidelity", name="one_evaluation_per_fidelity"),
)

results = Table(
    "results",
    metadata_obj,
    Column("evaluation_id", ForeignKey("evaluations.id"), primary_key=True),
    Column("property", String(100), primary_key=True),
    Column("value", Float, nullable=False),
    Column("uncertainty", Float),
    Column("unit", String(50), nullable=False, default=""),
    Column("run_id", ForeignKey("runs.id"), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

leases = Table(
    "leases",
    metadata_obj,
    Column("campaign", String(200), primary_key=True),
    Column("holder", String(64), nullable=False),
    Column("label", String(200), nullable=False),
    Column("host", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("acquired_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
)

cycles = Table(
    "cycles",
    metadata_obj,
    Column("campaign_id", ForeignKey("campaigns.id"), primary_key=True),
    Column("cycle", Integer, primary_key=True),
    Column("status", String(16), nullable=False),
    Column("acquisition", String(50)),
    Column("surrogate", JSON),
    Column("chosen", JSON),
    Column("stop_reason", Text),
    Column("run_id", ForeignKey("runs.id"), nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True)),
)

predictions = Table(
    "predictions",
    metadata_obj,
    Column("evaluation_id", ForeignKey("evaluations.id"), primary_key=True),
    Column("property", String(100), primary_key=True),
    Column("mean", Float, nullable=False),
    Column("latent_std", Float, nullable=False),
    Column("predictive_std", Float, nullable=False),
    Column("std_scale", Float, nullable=False, default=1.0),
)


schema = Table(
    "schema",
    metadata_obj,
    Column("version", Integer, primary_key=True, autoincrement=False),
)


def _v1_to_v2(conn: Connection) -> None:
    """Add the stop reason (from the last cycle that gave one) and the ``leases`` table."""
    for name in ("stop_reason", "stopped_at"):
        _add_column(conn, campaigns.c[name])
    conn.execute(
        text(
            "UPDATE campaigns SET stop_reason = (SELECT stop_reason FROM cycles "
            "WHERE cycles.campaign_id = campaigns.id AND stop_reason IS NOT NULL "
            "ORDER BY cycle DESC LIMIT 1)"
        )
    )
    conn.execute(text("DROP TABLE IF EXISTS flow_leases"))  # leases are renewed each minute


def _v2_to_v3(conn: Connection) -> None:
    """Add ``evaluations.frame`` and move each labelled structure (``structure``, ``energy_ev``,
    ``forces_ev_per_a``, ``stress_ev_per_a3``: what the DFT runner wrote) out of the metadata
    into it. A row whose keys do not make a valid frame keeps its metadata as it was."""
    _add_column(conn, evaluations.c.frame)
    keys = ("structure", "energy_ev", "forces_ev_per_a", "stress_ev_per_a3")
    rows = conn.execute(
        select(evaluations.c.id, evaluations.c.candidate_id, evaluations.c.metadata).where(
            evaluations.c.metadata.is_not(None)
        )
    ).all()
    for row in rows:
        metadata = row.metadata
        if not isinstance(metadata, dict) or not {"structure", "forces_ev_per_a"} <= set(metadata):
            continue
        try:
            frame = Frame.from_dict({**metadata, "id": row.candidate_id})
        except (ValueError, TypeError, KeyError):
            continue
        rest = {key: value for key, value in metadata.items() if key not in keys}
        conn.execute(
            update(evaluations).where(evaluations.c.id == row.id).values(metadata=rest, frame=frame.as_dict())
        )


def _add_predictions(conn: Connection) -> None:
    """Add the ``predictions`` table (older cycles recorded no predictions: it starts empty)."""
    predictions.create(conn, checkfirst=True)


def _add_fidelity(conn: Connection) -> None:
    """Add ``evaluations.fidelity`` (every existing row: :data:`DEFAULT_FIDELITY`) and make
    (campaign, candidate, fidelity) the unique key. SQLite cannot drop a table's constraint, so
    there the table is copied into a new one, its ids kept; the rows that point at it (results,
    predictions) are set aside meanwhile and put back as they were."""
    if conn.dialect.name != "sqlite":
        _add_column(conn, evaluations.c.fidelity, f"NOT NULL DEFAULT '{DEFAULT_FIDELITY}'")
        conn.execute(text("ALTER TABLE evaluations DROP CONSTRAINT one_evaluation_per_candidate"))
        conn.execute(
            text(
                "ALTER TABLE evaluations ADD CONSTRAINT one_evaluation_per_fidelity "
                "UNIQUE (campaign_id, candidate_id, fidelity)"
            )
        )
        return
    children = ("predictions", "results")  # what points at evaluations: set aside meanwhile
    for child in children:
        conn.execute(text(f"CREATE TEMP TABLE {child}_v4 AS SELECT * FROM {child}"))
        conn.execute(text(f"DELETE FROM {child}"))
    copy = MetaData()
    for table in (campaigns, runs):
        table.to_metadata(copy)
    evaluations.to_metadata(copy, name="evaluations_v5").create(conn)
    kept = ", ".join(c.name for c in evaluations.columns if c.name != "fidelity")
    conn.execute(
        text(
            f"INSERT INTO evaluations_v5 ({kept}, fidelity) "
            f"SELECT {kept}, '{DEFAULT_FIDELITY}' FROM evaluations"
        )
    )
    conn.execute(text("DROP TABLE evaluations"))
    conn.execute(text("ALTER TABLE evaluations_v5 RENAME TO evaluations"))
    for child in reversed(children):
        conn.execute(text(f"INSERT INTO {child} SELECT * FROM {child}_v4"))
        conn.execute(text(f"DROP TABLE {child}_v4"))


def _add_column(conn: Connection, column: Column[Any], extra: str = "") -> None:
    kind = column.type.compile(dialect=conn.dialect)
    conn.execute(text(f"ALTER TABLE {column.table.name} ADD COLUMN {column.name} {kind} {extra}".rstrip()))


#: ``MIGRATIONS[n]`` takes the tables from version ``n`` to ``n + 1``.
MIGRATIONS: dict[int, Callable[[Connection], None]] = {
    1: _v1_to_v2,
    2: _v2_to_v3,
    3: _add_predictions,
    4: _add_fidelity,
}


def version(conn: Connection) -> int | None:
    """The schema version of the database (``None``: no ledger tables yet)."""
    names = set(inspect(conn).get_table_names())
    if "schema" in names:
        return int(conn.execute(select(schema.c.version)).scalar_one())
    return 1 if "campaigns" in names else None


def prepare(conn: Connection, where: str) -> None:
    """Create the tables of a new ledger, or migrate an old one to :data:`SCHEMA_VERSION`,
    in ``conn``'s transaction (a failed migration leaves the ledger as it was).

    Concurrent calls take turns (:func:`loop.database.serialize`): the second sees the tables
    the first created.

    Raises:
        LedgerError: the ledger is of a newer version than this code knows.
    """
    serialize(conn, "alloop ledger schema")
    found = version(conn)
    if found is not None and found > SCHEMA_VERSION:
        raise LedgerError(
            f"ledger {where} has schema version {found}, newer than this alloop's "
            f"({SCHEMA_VERSION}); upgrade alloop to use it"
        )
    for step in range(found or SCHEMA_VERSION, SCHEMA_VERSION):
        MIGRATIONS[step](conn)
    metadata_obj.create_all(conn)
    if found != SCHEMA_VERSION:
        conn.execute(schema.delete())
        conn.execute(insert(schema).values(version=SCHEMA_VERSION))
