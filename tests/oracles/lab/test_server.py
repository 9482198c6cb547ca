"""The reference lab over real HTTP on 127.0.0.1: auth, idempotency, bounds, limits, faults, restart."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from oracles.lab import Faults, Lab, LabServer, LabStore

TOKEN = "lab-test-token-6f1c0d9a4b"
REPO = Path(__file__).resolve().parents[3]


def _lab(tmp_path: Path, **kwargs: Any) -> Lab:
    kwargs.setdefault("instruments", 2)
    kwargs.setdefault("latency_s", 0.05)
    return Lab(LabStore(tmp_path / "lab.db"), **kwargs)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LabServer]:
    with LabServer(_lab(tmp_path), TOKEN) as running:
        yield running


def _client(server: LabServer, token: str | None = TOKEN) -> httpx.Client:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    return httpx.Client(base_url=server.url, headers=headers, timeout=10)


def _post(client: httpx.Client, key: str, **body: Any) -> httpx.Response:
    payload = {"campaign": "c", "candidate_id": "cand-1", "parameters": {"x1": 1.0, "x2": 2.0}} | body
    return client.post("/v1/runs", json=payload, headers={"Idempotency-Key": key})


def _wait(client: httpx.Client, run_id: str, timeout: float = 10.0) -> list[str]:
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.get(f"/v1/runs/{run_id}").json()["status"]
        if not seen or seen[-1] != status:
            seen.append(status)
        if status in ("succeeded", "failed", "cancelled"):
            return seen
        time.sleep(0.01)
    raise AssertionError(f"run {run_id} did not finish: {seen}")


def test_health_is_open_and_everything_else_needs_the_token(server: LabServer) -> None:
    with _client(server, token=None) as anonymous:
        assert anonymous.get("/v1/health").json()["status"] == "ok"
        for method, path in [
            ("GET", "/v1/capabilities"),
            ("GET", "/v1/runs/x"),
            ("POST", "/v1/estop"),
            ("GET", "/v1/openapi.json"),
            ("GET", "/v1/runs"),
            ("GET", "/nowhere"),
        ]:
            response = anonymous.request(method, path)
            assert response.status_code == 401, path
            assert response.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    "header",
    [None, "Bearer wrong-token-123456", f"Basic {TOKEN}", f"bearer{TOKEN}", f"Bearer {TOKEN}x", "Bearer x"],
)
def test_missing_or_wrong_token_is_401_and_nothing_is_queued(server: LabServer, header: str | None) -> None:
    headers = {"Idempotency-Key": "k1"} | ({} if header is None else {"Authorization": header})
    response = httpx.post(
        f"{server.url}/v1/runs",
        headers=headers,
        json={"campaign": "c", "candidate_id": "a", "parameters": {"x1": 0, "x2": 0}},
    )
    assert response.status_code == 401
    assert TOKEN not in response.text
    # even a body that would fail validation gets 401 first: no handler ran
    assert httpx.post(f"{server.url}/v1/runs", content=b"{not json", headers=headers).status_code == 401
    assert server.lab.store.runs() == []


def test_capabilities_publish_json_schema_with_safe_bounds_and_openapi(server: LabServer) -> None:
    with _client(server) as client:
        capabilities = client.get("/v1/capabilities").json()
        programs = {p["name"]: p for p in capabilities["programs"]}
        schema = programs["branin"]["parameters"]
        assert schema["properties"]["x1"] == {
            "maximum": 10.0,
            "minimum": -5.0,
            "title": "X1",
            "type": "number",
        }
        assert schema["additionalProperties"] is False and schema["required"] == ["x1", "x2"]
        film = programs["thin_film"]["parameters"]
        assert film["properties"]["atmosphere"]["enum"] == ["air", "N2", "Ar"]
        assert film["properties"]["anneal_min"]["type"] == "integer"
        assert film["x-constraints"][0]["sense"] == "=="
        assert capabilities["instruments"] == 2 and capabilities["events"] is True
        openapi = client.get("/v1/openapi.json").json()
        assert {
            "/v1/runs",
            "/v1/runs/{run_id}",
            "/v1/runs/{run_id}/result",
            "/v1/runs/{run_id}/cancel",
            "/v1/capabilities",
            "/v1/health",
            "/v1/estop",
        } <= set(openapi["paths"])
        assert "HTTPBearer" in openapi["components"]["securitySchemes"]
        parameters = openapi["paths"]["/v1/runs"]["post"]["parameters"]
        assert any(p["name"] == "Idempotency-Key" for p in parameters)


def test_a_replayed_key_returns_the_same_run_never_a_second_one(server: LabServer) -> None:
    with _client(server) as client:
        first = _post(client, "key-1")
        assert first.status_code == 201
        replay = _post(client, "key-1", parameters={"x1": 1, "x2": 2.0})  # same values, other spelling
        assert replay.status_code == 200 and replay.headers["idempotent-replayed"] == "true"
        assert replay.json()["id"] == first.json()["id"]
        conflict = _post(client, "key-1", parameters={"x1": 3.0, "x2": 2.0})
        assert conflict.status_code == 409 and conflict.json()["detail"]["code"] == "idempotency_conflict"
        assert (
            client.post(
                "/v1/runs", json={"campaign": "c", "candidate_id": "a", "parameters": {"x1": 0, "x2": 0}}
            ).status_code
            == 400
        )
        runs = server.lab.store.runs()
        assert len(runs) == 1 and runs[0].requests == 2


@pytest.mark.parametrize(
    ("program", "parameters"),
    [
        ("branin", {"x1": 10.5, "x2": 2.0}),
        ("branin", {"x1": 1.0}),
        ("branin", {"x1": 1.0, "x2": 2.0, "power_w": 900}),
        ("branin", {"x1": "hot", "x2": 2.0}),
        (
            "thin_film",
            {"x_cu": 0.5, "x_ag": 0.4, "x_au": 0.4, "anneal_c": 400, "anneal_min": 30, "atmosphere": "Ar"},
        ),  # composition sums to 1.3
        (
            "thin_film",
            {"x_cu": 0.5, "x_ag": 0.4, "x_au": 0.1, "anneal_c": 700, "anneal_min": 30, "atmosphere": "Ar"},
        ),
        (
            "thin_film",
            {"x_cu": 0.5, "x_ag": 0.4, "x_au": 0.1, "anneal_c": 400, "anneal_min": 30.5, "atmosphere": "Ar"},
        ),
        (
            "thin_film",
            {"x_cu": 0.5, "x_ag": 0.4, "x_au": 0.1, "anneal_c": 400, "anneal_min": 30, "atmosphere": "H2"},
        ),
        ("nonexistent", {"x1": 1.0, "x2": 2.0}),
    ],
)
def test_out_of_bounds_parameters_are_422_and_not_queued(
    server: LabServer, program: str, parameters: dict[str, Any]
) -> None:
    with _client(server) as client:
        response = _post(client, "k", program=program, parameters=parameters)
        assert response.status_code == 422, response.text
        assert response.json()["detail"][0]["loc"][0] == "body"
    assert server.lab.store.runs() == []


def test_non_finite_numbers_are_422(server: LabServer) -> None:
    with _client(server) as client:
        body = b'{"campaign": "c", "candidate_id": "a", "parameters": {"x1": NaN, "x2": Infinity}}'
        response = client.post(
            "/v1/runs", content=body, headers={"Idempotency-Key": "k", "Content-Type": "application/json"}
        )
        assert response.status_code == 422
    assert server.lab.store.runs() == []


def test_malformed_json_and_oversized_bodies_are_4xx_and_the_server_keeps_serving(server: LabServer) -> None:
    with _client(server) as client:
        headers = {"Idempotency-Key": "k", "Content-Type": "application/json"}
        for body in [b"{not json", b"[1, 2]", b'"a string"', b"", b"\xff\xfe\x00"]:
            assert client.post("/v1/runs", content=body, headers=headers).status_code in (400, 422)
        huge = b'{"campaign": "' + b"x" * 200_000 + b'"}'
        assert client.post("/v1/runs", content=huge, headers=headers).status_code == 413

        def chunks() -> Iterator[bytes]:  # no Content-Length: the limit is counted as it streams
            for _ in range(100):
                yield b" " * 4096

        assert client.post("/v1/runs", content=chunks(), headers=headers).status_code == 413
        with socket.create_connection((server.host, server.port), timeout=5) as raw:  # not even HTTP
            raw.sendall(
                f"POST /v1/runs HTTP/1.1\r\nHost: lab\r\nAuthorization: Bearer {TOKEN}\r\n"
                "Content-Length: lots\r\n\r\n{}".encode()
            )
            assert raw.recv(100).startswith(b"HTTP/1.1 4")
        assert client.get("/v1/capabilities").status_code == 200
        assert _post(client, "after-abuse").status_code == 201


def test_status_only_moves_forward_and_the_result_carries_units_uncertainty_and_provenance(
    server: LabServer,
) -> None:
    with _client(server) as client:
        run = _post(client, "k-result").json()
        assert run["status"] == "queued"
        assert client.get(f"/v1/runs/{run['id']}/result").status_code in (409, 200)
        seen = _wait(client, run["id"])
        order = ["queued", "running", "succeeded"]
        assert [order.index(s) for s in seen] == sorted(order.index(s) for s in seen)
        result = client.get(f"/v1/runs/{run['id']}/result").json()
        assert result["candidate_id"] == "cand-1"
        assert set(result["values"]["y"]) == {"value", "uncertainty", "unit"}
        assert result["values"]["y"]["uncertainty"] == pytest.approx(0.1)
        assert result["provenance"]["instrument"].startswith("instrument-")
        raw = client.get(result["raw_data"])
        assert raw.status_code == 200 and raw.json()["parameters"] == {"x1": 1.0, "x2": 2.0}
        assert client.get("/v1/runs/nope").status_code == 404
        listing = client.get("/v1/runs", params={"campaign": "c"}).json()
        assert [r["id"] for r in listing] == [run["id"]]


def test_event_stream_reports_each_status_until_final(server: LabServer) -> None:
    with _client(server) as client:
        run = _post(client, "k-events").json()
        statuses = []
        with client.stream("GET", f"/v1/runs/{run['id']}/events") as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            for line in stream.iter_lines():
                if line.startswith("data:"):
                    statuses.append(httpx.Response(200, content=line[5:]).json()["status"])
        assert statuses[-1] == "succeeded"
        assert statuses == sorted(set(statuses), key=["queued", "running", "succeeded"].index)


def test_cancel_is_idempotent_for_queued_running_and_finished_runs(tmp_path: Path) -> None:
    with LabServer(_lab(tmp_path, instruments=1, latency_s=1.0), TOKEN) as server, _client(server) as client:
        running = _post(client, "k-a", candidate_id="a").json()
        queued = _post(client, "k-b", candidate_id="b").json()
        deadline = time.monotonic() + 5
        while client.get(f"/v1/runs/{running['id']}").json()["status"] != "running":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        for _ in range(2):
            assert client.post(f"/v1/runs/{queued['id']}/cancel").json()["status"] == "cancelled"
        assert client.post(f"/v1/runs/{running['id']}/cancel").json()["cancel_requested"] is True
        assert _wait(client, running["id"])[-1] == "cancelled"
        final = client.get(f"/v1/runs/{running['id']}").json()
        assert final["retryable"] is True
        assert client.post(f"/v1/runs/{running['id']}/cancel").json()["status"] == "cancelled"
        assert client.post("/v1/runs/none/cancel").status_code == 404


def test_estop_cancels_everything_and_refuses_new_runs_until_released(tmp_path: Path) -> None:
    with LabServer(_lab(tmp_path, instruments=1, latency_s=1.0), TOKEN) as server, _client(server) as client:
        runs = [_post(client, f"k{i}", candidate_id=f"c{i}").json() for i in range(3)]
        time.sleep(0.1)
        assert client.post("/v1/estop", json={"reason": "smoke"}).json() == {"engaged": True, "cancelled": 3}
        assert httpx.get(f"{server.url}/v1/health").json()["status"] == "estopped"
        for run in runs:
            assert client.get(f"/v1/runs/{run['id']}").json()["status"] == "cancelled"
        refused = _post(client, "k-new", candidate_id="new")
        assert refused.status_code == 409 and refused.json()["detail"]["code"] == "estopped"
        assert _post(client, "k0", candidate_id="c0").json()["id"] == runs[0]["id"]  # a replay is fine
        assert client.post("/v1/estop/release").json() == {"engaged": False}
        assert _post(client, "k-new", candidate_id="new").status_code == 201


def test_the_lab_survives_its_restart_without_losing_queued_runs(tmp_path: Path) -> None:
    store_path = tmp_path / "lab.db"
    lab = Lab(LabStore(store_path), instruments=1, latency_s=0.3)
    with LabServer(lab, TOKEN) as server, _client(server) as client:
        ids = [_post(client, f"k{i}", candidate_id=f"c{i}").json()["id"] for i in range(4)]
        time.sleep(0.1)
    # the graceful stop let the run on the instrument finish; the others are still queued
    counts = LabStore(store_path).counts()
    assert counts["queued"] >= 2 and counts["running"] == 0
    # a lab that died with a run on an instrument: that run fails (retryable) at the next start
    crashed = LabStore(store_path)
    interrupted = crashed.claim_next("instrument-0")
    assert interrupted is not None
    crashed.close()
    lab = Lab(LabStore(store_path), instruments=2, latency_s=0.05)
    with LabServer(lab, TOKEN) as server, _client(server) as client:
        finals = {run_id: _wait(client, run_id)[-1] for run_id in ids}
        assert finals[interrupted.id] == "failed"
        assert client.get(f"/v1/runs/{interrupted.id}").json()["retryable"] is True
        assert sum(s == "succeeded" for s in finals.values()) == 3


def test_injected_drops_and_5xx_still_do_the_work_once(tmp_path: Path) -> None:
    lab = _lab(tmp_path, faults=Faults(drop_probability=1.0))
    with LabServer(lab, TOKEN) as server, _client(server) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            _post(client, "k-drop")
        with pytest.raises(httpx.RemoteProtocolError):
            _post(client, "k-drop")
        runs = lab.store.runs()
        assert len(runs) == 1 and runs[0].requests == 2  # handled twice, one run
    lab = Lab(LabStore(tmp_path / "lab2.db"), latency_s=0.01, faults=Faults(error_probability=1.0))
    with LabServer(lab, TOKEN) as server, _client(server) as client:
        codes = {_post(client, f"k{i}", candidate_id=f"c{i}").status_code for i in range(12)}
        assert codes == {500, 503}
        assert 0 < len(lab.store.runs()) < 12  # 500s came after the work, 503s before it
        assert client.get("/v1/capabilities").status_code == 200  # faults hit /v1/runs only


def test_slow_responses_arrive_late(tmp_path: Path) -> None:
    lab = _lab(tmp_path, faults=Faults(slow_probability=1.0, slow_s=0.4))
    with LabServer(lab, TOKEN) as server, _client(server) as client:
        started = time.monotonic()
        assert _post(client, "k").status_code == 201
        assert time.monotonic() - started >= 0.4


def test_the_token_never_appears_in_logs_or_the_lab_database(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    lab = _lab(tmp_path, faults=Faults(drop_probability=0.3, error_probability=0.3))
    with LabServer(lab, TOKEN) as server, _client(server) as client:
        for i in range(10):
            with contextlib.suppress(httpx.HTTPError):
                _post(client, f"k{i}", candidate_id=f"c{i}")
        httpx.get(f"{server.url}/v1/capabilities", headers={"Authorization": "Bearer nope-nope-nope"})
        client.post("/v1/estop")
    lab.store.close()
    assert caplog.records and TOKEN not in caplog.text
    for path in tmp_path.glob("lab.db*"):
        assert TOKEN.encode() not in path.read_bytes()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_lab_serve_command(tmp_path: Path) -> None:
    port = _free_port()
    env = {**os.environ, "ALLOOP_LAB_TOKEN": TOKEN}
    log_file = tmp_path / "serve.log"
    with log_file.open("w") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "oracles.lab.cli",
                "serve",
                "--port",
                str(port),
                "--db",
                str(tmp_path / "l.db"),
                "--instruments",
                "2",
                "--latency",
                "0.05",
                "--log-level",
                "debug",
            ],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 30
            while True:
                try:
                    if httpx.get(f"{url}/v1/health").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline and process.poll() is None, log_file.read_text()
                time.sleep(0.1)
            headers = {"Authorization": f"Bearer {TOKEN}", "Idempotency-Key": "cli"}
            body = {"campaign": "c", "candidate_id": "a", "parameters": {"x1": 1, "x2": 1}}
            assert httpx.post(f"{url}/v1/runs", json=body, headers=headers).status_code == 201
            assert httpx.get(f"{url}/v1/runs", headers={"Authorization": "Bearer wrong"}).status_code == 401
        finally:
            process.send_signal(signal.SIGINT)
            process.wait(timeout=20)
    text = log_file.read_text()
    assert "POST /v1/runs" in text or "queued" in text
    assert TOKEN not in text
    assert len(LabStore(tmp_path / "l.db").runs()) == 1
