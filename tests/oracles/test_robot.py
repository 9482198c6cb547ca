"""The robot oracle against the reference lab over real HTTP on 127.0.0.1: safety, retries,
idempotency, re-attachment, cancellation, and whole campaigns under injected faults."""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from loop.campaign import Campaign
from loop.candidate import Candidate
from loop.config import load_config, parse_config
from loop.errors import ConfigError
from loop.ledger import Ledger
from oracles.errors import EvaluationFailed, EvaluationTimeout, OracleSetupError
from oracles.lab import Faults, Lab, LabServer, LabStore
from oracles.robot import (
    RobotOracle,
    SafetyViolation,
    idempotency_key,
    oracle_from_config,
    resolve_token,
)
from oracles.simulated import read_journal

TOKEN = "robot-test-token-3c9e1f27d8"
REPO = Path(__file__).resolve().parents[2]

CAMPAIGN = """
[campaign]
name = "{name}"
seed = 3
ledger = "ledger.db"

[[space.parameters]]
name = "x1"
type = "continuous"
lower = -5.0
upper = 10.0

[[space.parameters]]
name = "x2"
type = "continuous"
lower = 0.0
upper = 15.0

[[objectives]]
name = "y"
direction = "minimize"

[acquisition]
type = "random"
batch_size = {batch_size}
initial_designs = {batch_size}

[oracle]
type = "robot"
url = "{url}"
program = "branin"
poll_interval_s = 0.05
max_poll_interval_s = 0.2
request_timeout_s = 1.0
max_backoff_s = 0.3
events = {events}

[stopping]
max_experiments = {max_experiments}
"""


def _write_campaign(
    tmp_path: Path,
    url: str,
    name: str = "robot",
    batch_size: int = 4,
    max_experiments: int = 30,
    events: bool = True,
) -> Path:
    path = tmp_path / "campaign.toml"
    path.write_text(
        textwrap.dedent(
            CAMPAIGN.format(
                name=name,
                url=url,
                batch_size=batch_size,
                max_experiments=max_experiments,
                events=str(events).lower(),
            )
        )
    )
    return path


def _server(tmp_path: Path, **kwargs: Any) -> LabServer:
    kwargs.setdefault("instruments", 4)
    kwargs.setdefault("latency_s", 0.05)
    kwargs.setdefault("journal", tmp_path / "journal.jsonl")
    return LabServer(Lab(LabStore(tmp_path / "lab.db"), **kwargs), TOKEN)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LabServer]:
    with _server(tmp_path) as running:
        yield running


def _oracle(url: str, **kwargs: Any) -> RobotOracle:
    options: dict[str, Any] = dict(
        poll_interval_s=0.02,
        max_poll_interval_s=0.1,
        request_timeout_s=1.0,
        max_backoff_s=0.2,
        max_attempts=3,
    )
    options.update(kwargs)
    return RobotOracle(url, TOKEN, options.pop("campaign", "unit"), {"y": ""}, **options)


def _candidates(n: int, offset: int = 0) -> list[Candidate]:
    return [Candidate({"x1": -5.0 + 0.5 * (i + offset), "x2": 0.25 * (i + offset)}) for i in range(n)]


# --- configuration and token ----------------------------------------------------------------


def _config(url: str = "http://127.0.0.1:9", **oracle: Any) -> Any:
    return parse_config(
        {
            "campaign": {"name": "cfg"},
            "space": {
                "parameters": [
                    {"name": "x1", "type": "continuous", "lower": -5, "upper": 10},
                    {"name": "x2", "type": "continuous", "lower": 0, "upper": 15},
                ]
            },
            "objectives": [{"name": "y", "direction": "minimize"}],
            "oracle": {"type": "robot", "url": url, **oracle},
            "stopping": {"max_experiments": 5},
        }
    )


def test_the_idempotency_key_depends_only_on_campaign_and_candidate() -> None:
    assert idempotency_key("a", "0123") == idempotency_key("a", "0123")
    assert (
        len({idempotency_key("a", "0123"), idempotency_key("b", "0123"), idempotency_key("a", "0124")}) == 3
    )


def test_tokens_never_come_from_the_config_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALLOOP_LAB_TOKEN", TOKEN)
    config = _config(token="in-the-file-123456")
    with pytest.raises(ConfigError, match=r"oracle.token: secrets never go in the campaign file"):
        oracle_from_config(config.oracle.options, config)


def test_the_token_comes_from_the_named_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ALLOOP_LAB_TOKEN", raising=False)
    monkeypatch.setenv("MY_LAB_TOKEN", TOKEN)
    config = _config(token_env="MY_LAB_TOKEN", safety={"x1": {"min": 0, "max": 5}})
    oracle = oracle_from_config(config.oracle.options, config)
    assert oracle.campaign == "cfg" and oracle.implemented_properties == ("y",)
    assert TOKEN not in repr(oracle) and TOKEN not in str(vars(oracle).get("url"))
    config = _config()
    with pytest.raises(OracleSetupError, match="ALLOOP_LAB_TOKEN") as caught:
        oracle_from_config(config.oracle.options, config)
    assert TOKEN not in str(caught.value)


@dataclass(frozen=True)
class _Objective:
    name: str
    unit: str


@dataclass(frozen=True)
class _Context:
    """A build context that is not a campaign configuration: the builder needs no more."""

    campaign: Any
    objectives: tuple[_Objective, ...]

    def resolve(self, path: str | Path) -> Path:
        return Path("/nowhere") / path


def test_the_builder_reads_only_the_small_build_context(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALLOOP_LAB_TOKEN", TOKEN)
    context = _Context(_Objective("ctx-campaign", ""), (_Objective("y", "eV"), _Objective("z", "nm")))
    oracle = oracle_from_config({"url": "http://127.0.0.1:9", "properties": {"w": "K"}}, context)
    assert oracle.campaign == "ctx-campaign"
    assert oracle.units == {"y": "eV", "z": "nm", "w": "K"}


def test_the_token_can_come_from_a_prefect_secret_block(monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.blocks import system

    class FakeSecret:
        @classmethod
        def load(cls, name: str) -> Any:
            assert name == "lab-token"
            return type("Loaded", (), {"get": lambda self: TOKEN})()

    monkeypatch.setattr(system, "Secret", FakeSecret)
    assert resolve_token(token_secret_block="lab-token") == TOKEN


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"url": "ftp://lab"}, "oracle.url"),
        ({"url": "http://user:pw@lab:1"}, "credentials do not go in the URL"),
        ({"poll_interval_s": 0}, "oracle.poll_interval_s"),
        ({"safety": {"x1": {"min": 3, "max": 1}}}, "oracle.safety.x1"),
        ({"safety": {"x1": {"lowest": 3}}}, "oracle.safety.x1.lowest: unknown key"),
        ({"colour": "red"}, "oracle.colour: unknown key"),
    ],
)
def test_bad_options_name_the_key(
    monkeypatch: pytest.MonkeyPatch, options: dict[str, Any], message: str
) -> None:
    monkeypatch.setenv("ALLOOP_LAB_TOKEN", TOKEN)
    config = _config(
        **{k: v for k, v in options.items() if k != "url"},
        **({"url": options["url"]} if "url" in options else {}),
    )
    with pytest.raises(ConfigError, match=message):
        oracle_from_config(config.oracle.options, config)


# --- one batch ------------------------------------------------------------------------------


def test_a_batch_resolves_one_future_per_candidate_with_the_run_id(server: LabServer) -> None:
    with _oracle(server.url) as oracle:
        batch = _candidates(6)
        futures = oracle.submit(batch)
        runs = {r.candidate_id: r for r in server.lab.store.runs()}
        for candidate, future in zip(batch, futures, strict=True):
            assert oracle.handle(future) == runs[candidate.id].id
            result = future.result(timeout=20)
            assert result.candidate_id == candidate.id
            assert result.measurements["y"].uncertainty == pytest.approx(0.1)
            assert result.metadata["run_id"] == runs[candidate.id].id
            assert result.metadata["raw_data"].endswith(f"/v1/runs/{runs[candidate.id].id}/raw")
            assert result.metadata["provenance"]["instrument"].startswith("instrument-")
        assert oracle.evaluate(_candidates(1, offset=20)[0]).measurements["y"].value > 0
        assert oracle.capacity == 4


def test_out_of_envelope_candidates_never_reach_the_lab(server: LabServer) -> None:
    inside, beyond_lab, beyond_envelope = (
        Candidate({"x1": 1.0, "x2": 2.0}),
        Candidate({"x1": 12.0, "x2": 2.0}),
        Candidate({"x1": 1.0, "x2": 9.0}),
    )
    with _oracle(server.url, safety={"x2": {"max": 8.0}}) as oracle:
        futures = oracle.submit([beyond_lab, inside, beyond_envelope])
        with pytest.raises(SafetyViolation, match=r"x1 = 12 is above lab program 'branin''s maximum 10"):
            futures[0].result()
        with pytest.raises(
            SafetyViolation, match=r"x2 = 9 is above the safety envelope's maximum 8"
        ) as caught:
            futures[2].result()
        assert caught.value.retryable is False
        assert futures[1].result(timeout=20).candidate_id == inside.id
        assert oracle.stats["posts"] == 1
    assert [r.candidate_id for r in server.lab.store.runs()] == [inside.id]


def test_failures_say_whether_they_are_retryable(tmp_path: Path) -> None:
    with _server(tmp_path, faults=Faults(failure_probability=1.0)) as server, _oracle(server.url) as oracle:
        with pytest.raises(EvaluationFailed, match="simulated experiment failure") as caught:
            oracle.submit(_candidates(1))[0].result(timeout=20)
        assert caught.value.retryable is True
    with (
        _server(tmp_path / "b", faults=Faults(fatal_probability=1.0)) as server,
        _oracle(server.url) as oracle,
    ):
        with pytest.raises(EvaluationFailed, match="sample destroyed") as caught:
            oracle.submit(_candidates(1))[0].result(timeout=20)
        assert caught.value.retryable is False


def test_an_unreachable_lab_is_a_setup_error_and_nothing_is_submitted(tmp_path: Path) -> None:
    with _server(tmp_path) as server:
        url = server.url
    with (
        _oracle(url, max_attempts=2) as oracle,
        pytest.raises(OracleSetupError, match="cannot reach the lab"),
    ):
        oracle.submit(_candidates(2))


def test_a_wrong_token_is_a_setup_error(server: LabServer) -> None:
    oracle = RobotOracle(server.url, "not-the-token-000", "unit", {"y": ""})
    with oracle, pytest.raises(OracleSetupError, match="refused the token"):
        oracle.submit(_candidates(1))
    assert server.lab.store.runs() == []


def test_a_property_the_program_does_not_measure_is_a_setup_error(server: LabServer) -> None:
    with (
        RobotOracle(server.url, TOKEN, "unit", {"y": "", "purity": "%"}) as oracle,
        pytest.raises(OracleSetupError, match=r"does not measure \['purity'\]"),
    ):
        oracle.submit(_candidates(1))


def test_retries_through_dropped_responses_5xx_and_slow_answers_never_duplicate(tmp_path: Path) -> None:
    faults = Faults(drop_probability=0.25, error_probability=0.25, slow_probability=0.1, slow_s=1.5)
    with (
        _server(tmp_path, faults=faults) as server,
        _oracle(server.url, events=False, request_timeout_s=0.5, max_attempts=20) as oracle,
    ):
        batch = _candidates(12)
        results = [f.result(timeout=60) for f in oracle.submit(batch)]
        assert [r.candidate_id for r in results] == [c.id for c in batch]
        runs = server.lab.store.runs()
        assert Counter(r.idempotency_key for r in runs).most_common(1)[0][1] == 1
        assert len(runs) == 12 and oracle.stats["retries"] > 0
        assert sum(r.requests for r in runs) > 12  # some POSTs were replayed after a lost answer
        assert sum(server.lab.fault_counts.values()) > 0
    started = Counter(
        e["candidate"] for e in read_journal(tmp_path / "journal.jsonl") if e["event"] == "started"
    )
    assert set(started.values()) == {1}


def test_reattach_follows_the_same_run_by_id_or_by_idempotency_key(tmp_path: Path) -> None:
    with _server(tmp_path, instruments=1, latency_s=0.3) as server:
        batch = _candidates(3)
        first = _oracle(server.url, campaign="re")
        run_ids = [first.handle(f) for f in first.submit(batch)]
        first.close(cancel_runs=False)  # the process "dies": nothing is cancelled
        with _oracle(server.url, campaign="re") as second:
            by_id = second.reattach(batch[0], run_ids[0])
            by_key = second.reattach(batch[1], None)
            assert by_id.result(timeout=20).metadata["run_id"] == run_ids[0]
            assert by_key.result(timeout=20).metadata["run_id"] == run_ids[1]
            assert second.stats["replays"] == 1
            assert second.reattach(batch[2], run_ids[2]).result(timeout=20).candidate_id == batch[2].id
            with pytest.raises(EvaluationFailed, match="has no run") as caught:
                second.reattach(batch[2], "run-unknown").result(timeout=20)
            assert caught.value.retryable is True
        assert len(server.lab.store.runs()) == 3


def test_closing_the_oracle_cancels_runs_in_flight(tmp_path: Path) -> None:
    with _server(tmp_path, instruments=1, latency_s=1.0) as server:
        oracle = _oracle(server.url)
        futures = oracle.submit(_candidates(3))
        # All three on the lab (one running, two queued) before closing: a loaded machine may
        # take longer than a fixed pause to post them.
        deadline = time.monotonic() + 20
        while len(server.lab.store.runs()) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        oracle.close()
        assert all(f.done() for f in futures)
        deadline = time.monotonic() + 5  # the running one stops within an instrument tick
        while server.lab.store.counts()["cancelled"] < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.lab.store.counts()["cancelled"] == 3


def test_closing_while_submissions_are_unanswered_still_cancels_their_runs(tmp_path: Path) -> None:
    # The lab creates each run at once but answers the POST a second later; the oracle is
    # closed before any answer, so it does not know a single run id yet.
    faults = Faults(slow_probability=1.0, slow_s=1.0)
    with _server(tmp_path, instruments=1, latency_s=5.0, faults=faults) as server:
        oracle = _oracle(server.url, events=False, ack_wait_s=0.01, request_timeout_s=5.0)
        oracle.submit(_candidates(3))
        deadline = time.monotonic() + 20
        while len(server.lab.store.runs()) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        oracle.close()
        assert [r.cancel_requested for r in server.lab.store.runs()] == [True] * 3


def test_a_run_past_its_timeout_is_cancelled(tmp_path: Path) -> None:
    with (
        _server(tmp_path, instruments=1, latency_s=5.0) as server,
        _oracle(server.url, timeout_s=0.5) as oracle,
    ):
        with pytest.raises(EvaluationTimeout, match="did not finish within timeout_s"):
            oracle.submit(_candidates(1))[0].result(timeout=20)
        assert server.lab.store.runs()[0].cancel_requested


def test_an_estopped_lab_stops_the_campaign(server: LabServer) -> None:
    with _oracle(server.url) as oracle:
        assert oracle.estop("test")["engaged"] is True
        with pytest.raises(OracleSetupError, match="e-stopped"):
            oracle.submit(_candidates(1))[0].result(timeout=20)


# --- campaigns ------------------------------------------------------------------------------


def _ledger_rows(ledger_path: Path, campaign: str) -> list[sqlite3.Row]:
    with sqlite3.connect(ledger_path) as conn:
        conn.row_factory = sqlite3.Row
        return conn.execute(
            "SELECT e.* FROM evaluations e JOIN campaigns c ON c.id = e.campaign_id WHERE c.name = ?",
            (campaign,),
        ).fetchall()


def _check_accounting(server: LabServer, ledger_path: Path, campaign: str, tmp_path: Path) -> dict[str, int]:
    """Every evaluation settled; one server run per key; ledger and lab agree run by run."""
    rows = _ledger_rows(ledger_path, campaign)
    runs = server.lab.store.runs(campaign)
    by_key = Counter(r.idempotency_key for r in runs)
    assert set(by_key.values()) == {1}, "a key named two runs"
    assert Counter(r.candidate_id for r in runs).most_common(1)[0][1] == 1, "a candidate ran twice"
    started = Counter(
        e["candidate"] for e in read_journal(tmp_path / "journal.jsonl") if e["event"] == "started"
    )
    assert set(started.values()) == {1}, "an experiment was started twice"
    assert {r["status"] for r in rows} <= {"done", "failed"}, "an evaluation was left in flight"
    run_of = {r.candidate_id: r for r in runs}
    assert set(run_of) == {r["candidate_id"] for r in rows}, "a submitted run is not in the ledger (or back)"
    for row in rows:
        run = run_of[row["candidate_id"]]
        assert run.idempotency_key == idempotency_key(campaign, row["candidate_id"])
        assert (row["status"] == "done") == (run.status == "succeeded"), (dict(row), run)
        if row["external_id"] is not None:
            assert row["external_id"] == run.id
    done = sum(r["status"] == "done" for r in rows)
    assert done == sum(r.status == "succeeded" for r in runs)
    return {"evaluations": len(rows), "done": done, "runs": len(runs)}


@pytest.mark.slow
def test_a_30_experiment_campaign_under_20_percent_faults_accounts_for_every_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("ALLOOP_LAB_TOKEN", TOKEN)
    faults = Faults(failure_probability=0.2, drop_probability=0.1, error_probability=0.1, seed=5)
    with _server(tmp_path, faults=faults) as server:
        campaign = Campaign(load_config(_write_campaign(tmp_path, server.url, name="faulty")))
        try:
            report = campaign.run()
            stats = dict(campaign.oracle.stats)  # type: ignore[attr-defined]
        finally:
            campaign.close()
        summary = _check_accounting(server, tmp_path / "ledger.db", "faulty", tmp_path)
        assert summary["evaluations"] == summary["runs"] == report.experiments == 30
        assert 0 < summary["done"] < 30  # some runs failed, as injected
        assert stats["retries"] > 0 and sum(server.lab.fault_counts.values()) > 0
        failed = [r for r in _ledger_rows(tmp_path / "ledger.db", "faulty") if r["status"] == "failed"]
        assert all(r["retryable"] for r in failed) and all(
            "simulated experiment failure" in r["error"] for r in failed
        )
    assert TOKEN not in caplog.text
    for path in tmp_path.glob("*.db*"):
        assert TOKEN.encode() not in path.read_bytes(), path


@pytest.mark.slow
def test_a_killed_campaign_restarts_and_reattaches_to_runs_in_flight(tmp_path: Path) -> None:
    faults = Faults(failure_probability=0.1, drop_probability=0.05, error_probability=0.05, seed=11)
    with _server(tmp_path, instruments=2, latency_s=0.25, faults=faults) as server:
        config = _write_campaign(tmp_path, server.url, name="killed", events=False, max_experiments=20)
        env = {**os.environ, "ALLOOP_LAB_TOKEN": TOKEN}
        command = [sys.executable, "-m", "loop.cli", "run", str(config), "-q"]
        ledger_path = tmp_path / "ledger.db"
        first = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        in_flight: list[sqlite3.Row] = []
        deadline = time.monotonic() + 90
        try:
            while time.monotonic() < deadline and first.poll() is None:
                try:
                    rows = _ledger_rows(ledger_path, "killed") if ledger_path.exists() else []
                except sqlite3.OperationalError:  # the ledger is being created
                    rows = []
                in_flight = [r for r in rows if r["status"] == "submitted" and r["external_id"]]
                if sum(r["status"] == "done" for r in rows) >= 6 and in_flight:
                    first.send_signal(signal.SIGKILL)
                    break
                time.sleep(0.02)
        finally:
            first.wait(timeout=30)
        assert first.returncode == -signal.SIGKILL, first.stdout.read().decode() if first.stdout else ""
        assert in_flight, "the campaign was never caught with runs in flight"
        posts_before = {r.id: r.requests for r in server.lab.store.runs("killed")}

        second = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        assert second.returncode == 0, second.stdout + second.stderr
        assert TOKEN not in second.stdout + second.stderr

        summary = _check_accounting(server, ledger_path, "killed", tmp_path)
        assert summary["evaluations"] == summary["runs"] == 20
        rows = {r["candidate_id"]: r for r in _ledger_rows(ledger_path, "killed")}
        runs_after = {r.id: r for r in server.lab.store.runs("killed")}
        for row in in_flight:  # re-attached by run id: settled, same run, not posted again
            assert rows[row["candidate_id"]]["status"] in ("done", "failed")
            assert rows[row["candidate_id"]]["external_id"] == row["external_id"]
            run = runs_after[row["external_id"]]
            assert run.candidate_id == row["candidate_id"]
            assert run.requests == posts_before[run.id]
        with Ledger(ledger_path) as ledger:
            assert len(ledger.campaign_names()) == 1
    assert TOKEN.encode() not in ledger_path.read_bytes()


def test_the_throughput_benchmark_reports_utilisation(tmp_path: Path) -> None:
    from loop.bench.throughput import run_throughput

    result = run_throughput(instruments=2, latency_s=0.1, cycles=3, acquisition="none", workdir=tmp_path)
    assert result["cycles"] == 3 and result["experiments"] == 6
    assert result["ideal_cycles_per_minute"] == 600
    assert 0.2 < result["utilisation"] <= 1.0
    assert result["median_lab_span_s"] >= 0.1
