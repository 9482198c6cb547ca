"""The lab contract that the robot oracle and the reference lab share: statuses, error codes,
routes, wire models, and that neither side pays for torch or pandas to speak it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from oracles.lab.contract import (
    ALLOWED_FROM,
    STATUSES,
    TERMINAL,
    ErrorCode,
    RunResult,
    RunView,
    error_body,
    error_code,
    run_path,
)
from oracles.lab.store import LabStore

REPO = Path(__file__).resolve().parents[3]


def test_status_only_moves_forward_and_every_final_status_is_reachable() -> None:
    order = {status: k for k, status in enumerate(STATUSES)}
    for target, sources in ALLOWED_FROM.items():
        assert all(order[source] < order[target] for source in sources), target
        assert not TERMINAL & set(sources), f"{target} may not follow a final status"
    assert set(ALLOWED_FROM) >= TERMINAL and STATUSES[0] not in ALLOWED_FROM


def test_error_codes_round_trip_through_the_error_body() -> None:
    body = json.loads(json.dumps(error_body("the lab is e-stopped", ErrorCode.ESTOPPED)))
    assert body == {"detail": {"message": "the lab is e-stopped", "code": "estopped"}}
    assert error_code(body) == ErrorCode.ESTOPPED
    # validation errors (a list), plain-text details and non-objects carry no code
    assert error_code({"detail": [{"loc": ["body"], "msg": "bad"}]}) is None
    assert error_code({"detail": "the lab is e-stopped"}) is None
    assert error_code(["estopped"]) is None


def test_run_routes() -> None:
    assert run_path("run-1") == "/v1/runs/run-1"
    assert run_path("run-1", "result") == "/v1/runs/run-1/result"


def test_a_stored_run_is_viewed_with_the_contract_model() -> None:
    store = LabStore(":memory:")
    run, created = store.create_run("key-1", "camp", "cand-1", "branin", {"x1": 1.0, "x2": 2.0})
    view = RunView.model_validate(run, from_attributes=True)
    assert created and view.id == run.id and view.status == "queued" and view.retryable is None
    assert set(view.model_dump()) <= set(vars(run))


def test_a_result_defaults_what_a_lab_may_leave_out_and_refuses_what_it_must_send() -> None:
    result = RunResult.model_validate({"candidate_id": "c", "values": {"y": {"value": "1.5"}}})
    assert result.cost == 1.0 and result.values["y"].value == 1.5 and result.values["y"].uncertainty is None
    with pytest.raises(ValueError, match="value"):
        RunResult.model_validate({"candidate_id": "c", "values": {"y": {"uncertainty": 0.1}}})


def test_both_sides_of_the_contract_import_without_torch_or_pandas() -> None:
    code = (
        "import sys, json\n"
        "import oracles.robot\n"
        "client = sorted(m for m in ('fastapi', 'uvicorn') if m in sys.modules)\n"
        "import oracles.lab.server\n"
        "print(json.dumps({'client': client,"
        " 'heavy': sorted(m for m in ('torch', 'pandas') if m in sys.modules)}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120, check=True
    )
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"client": [], "heavy": []}
