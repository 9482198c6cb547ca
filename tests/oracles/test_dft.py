"""The DFT runner with real calculators: EMT always, GPAW when it is installed."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
from pymatgen.core import Lattice, Structure

from loop.campaign import Campaign
from loop.candidate import Candidate
from loop.config import parse_config
from loop.errors import ConfigError
from loop.structure_codec import structure_to_params
from oracles.base import Result
from oracles.calculators import CalculatorSpec
from oracles.dft import DFTRunner, oracle_from_config
from oracles.dft_job import JobSettings, execute
from oracles.errors import EvaluationFailed, EvaluationTimeout, InvalidResult, OracleSetupError
from oracles.job_process import killed_from_outside


class SlowEMT(EMT):
    """EMT that takes far longer than any wall-time limit of these tests."""

    def calculate(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        time.sleep(60)
        super().calculate(*args, **kwargs)


class GoldAllergicEMT(EMT):
    """EMT that raises on any structure with gold in it."""

    def calculate(self, atoms=None, *args, **kwargs):  # type: ignore[no-untyped-def]
        if "Au" in atoms.get_chemical_symbols():
            raise ValueError("this calculator cannot handle gold")
        super().calculate(atoms, *args, **kwargs)


class NaNEMT(EMT):
    """EMT whose energy comes out NaN."""

    def calculate(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        super().calculate(*args, **kwargs)
        self.results["energy"] = float("nan")


class NaNStressEMT(EMT):
    """EMT whose stress comes out NaN (energy and forces are fine)."""

    def calculate(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        super().calculate(*args, **kwargs)
        if "stress" in self.results:
            self.results["stress"] = np.full(6, np.nan)


def here(cls: type) -> str:
    return f"{cls.__module__}:{cls.__name__}"


def l10_cuau() -> Candidate:
    structure = Structure(Lattice.tetragonal(2.75, 3.8), ["Cu", "Au"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    return Candidate(structure_to_params(structure, "L1_0"))


def runner(tmp_path: Path, **settings: object) -> DFTRunner:
    calculator = settings.pop("calculator", CalculatorSpec())
    wall = settings.pop("wall_time_s", 60.0)
    retryable = settings.pop("retryable", ("scf_not_converged", "timeout"))
    return DFTRunner(
        JobSettings(calculator=calculator, **settings),  # type: ignore[arg-type]
        tmp_path / "runs",
        wall_time_s=wall,  # type: ignore[arg-type]
        retryable=retryable,  # type: ignore[arg-type]
    )


def test_relaxation_with_cell_returns_energy_forces_stress_structure_and_trajectory(tmp_path: Path) -> None:
    oracle = runner(tmp_path, mode="relax", relax_cell=True, fmax_ev_per_a=0.01)
    candidate = l10_cuau()
    result = oracle.evaluate(candidate)

    assert result.candidate_id == candidate.id
    assert set(result.measurements) == {"energy_per_atom", "formation_energy_per_atom"}
    assert result.measurements["formation_energy_per_atom"].unit == "eV/atom"
    meta, frame = result.metadata, result.frame
    assert frame is not None and frame.id == candidate.id
    assert frame.forces.shape == (2, 3) and np.abs(frame.forces).max() < 0.01
    assert frame.stress is not None and frame.stress.shape == (6,) and np.abs(frame.stress).max() < 0.01
    assert not frame.forces.flags.writeable and not frame.stress.flags.writeable
    assert not {"structure", "energy_ev", "forces_ev_per_a", "stress_ev_per_a3"} & set(meta)
    assert not np.allclose(frame.cell, np.array(meta["initial_structure"]["cell"]))  # the cell moved
    folder = Path(meta["workdir"])
    assert folder.parent == tmp_path / "runs" and folder.name == candidate.id
    assert {"job.json", "result.json", "relax.traj"} <= {p.name for p in folder.iterdir()}
    assert meta["n_steps"] > 0
    # Formation energy is against the elements computed with the same settings, cached once.
    refs = json.loads(next((tmp_path / "runs").glob("references-*.json")).read_text())
    expected = (frame.energy - refs["Cu"] - refs["Au"]) / 2
    assert result.measurements["formation_energy_per_atom"].value == pytest.approx(expected)
    # The typed result travels as JSON (to and from workers) and comes back equal.
    assert Result.from_dict(json.loads(json.dumps(result.as_dict(), allow_nan=False))) == result


def test_single_point_leaves_the_structure_alone(tmp_path: Path) -> None:
    oracle = runner(tmp_path, mode="single_point")
    result = oracle.evaluate(l10_cuau())
    assert result.metadata["n_steps"] == 0
    assert result.frame is not None
    assert result.frame.positions.tolist() == result.metadata["initial_structure"]["positions"]


def test_runners_of_two_fidelities_share_a_workdir_each_with_its_own_references(tmp_path: Path) -> None:
    """A single-point runner and a relaxing one (two fidelities of one campaign) evaluate at once
    in one folder: no job folder is claimed twice, and each gets the references of its own mode."""
    from concurrent.futures import ThreadPoolExecutor

    single, relaxed = runner(tmp_path, mode="single_point"), runner(tmp_path, mode="relax")
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda oracle: oracle.evaluate(l10_cuau()), [single, relaxed] * 2))

    assert len({r.metadata["workdir"] for r in results}) == 4
    caches = {p.name for p in (tmp_path / "runs").glob("references-*.json")}
    assert caches == {f"references-{oracle.settings.key}.json" for oracle in (single, relaxed)}
    unrelaxed = {}
    for element in ("Cu", "Au"):
        atoms = bulk(element)
        atoms.calc = EMT()
        unrelaxed[element] = atoms.get_potential_energy() / len(atoms)
    assert single.references(["Au", "Cu"]) == pytest.approx(unrelaxed)
    relaxed_refs = relaxed.references(["Au", "Cu"])
    # ASE's lattice constants are not EMT's: relaxing the elements lowers their energy.
    assert all(relaxed_refs[el] < unrelaxed[el] - 1e-4 for el in unrelaxed)
    # A fresh runner with the same settings reads the cache instead of computing again.
    jobs = sorted((tmp_path / "runs").glob("reference-*"))
    again = runner(tmp_path, mode="single_point")
    assert again.references(["Au", "Cu"]) == single.references(["Au", "Cu"])
    assert sorted((tmp_path / "runs").glob("reference-*")) == jobs
    assert not list((tmp_path / "runs").glob("*.tmp"))


def test_pure_element_has_zero_formation_energy(tmp_path: Path) -> None:
    oracle = runner(tmp_path, mode="relax", relax_cell=True, fmax_ev_per_a=0.005)
    structure = Structure.from_ase_atoms(bulk("Cu", "fcc", a=3.7))
    result = oracle.evaluate(Candidate(structure_to_params(structure)))
    assert result.measurements["formation_energy_per_atom"].value == pytest.approx(0.0, abs=1e-4)


def test_job_past_its_wall_time_is_killed_and_reported(tmp_path: Path) -> None:
    oracle = runner(tmp_path, calculator=CalculatorSpec(here(SlowEMT)), wall_time_s=1.5)
    oracle._references = {"Cu": 0.0, "Au": 0.0}  # the slow calculator would time out on them too
    start = time.perf_counter()
    with pytest.raises(
        EvaluationTimeout, match=r"exceeded its wall-time limit of 1.5 s and was killed"
    ) as info:
        oracle.evaluate(l10_cuau())
    assert time.perf_counter() - start < 15
    assert info.value.retryable
    folder = tmp_path / "runs" / l10_cuau().id
    assert (folder / "job.json").is_file() and not (folder / "result.json").exists()


def _job_pid(folder: Path, within_s: float = 60.0) -> int:
    """The pid of the job process working in ``folder`` (it chdirs there), once it runs."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        for proc in Path("/proc").iterdir():
            try:
                if proc.name.isdigit() and (proc / "cwd").resolve() == folder.resolve():
                    return int(proc.name)
            except OSError:
                continue
        time.sleep(0.1)
    raise AssertionError(f"no job process in {folder}")


def _evaluate_in_background(
    oracle: DFTRunner, candidate: Candidate
) -> tuple[threading.Thread, list[BaseException]]:
    """A thread evaluating ``candidate``, and the list its error will be in."""
    errors: list[BaseException] = []

    def evaluate() -> None:
        try:
            oracle.evaluate(candidate)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=evaluate)
    thread.start()
    return thread, errors


@pytest.mark.skipif(not Path("/proc/self/cwd").exists(), reason="finds the job process through /proc")
def test_a_job_killed_from_outside_is_interrupted_and_may_run_again(tmp_path: Path) -> None:
    # A batch system's SIGTERM at a worker's walltime reaches the job too: the candidate is
    # not at fault, so the failure is retryable (a crash of the calculation is not).
    oracle = runner(tmp_path, calculator=CalculatorSpec(here(SlowEMT)), wall_time_s=60)
    oracle._references = {"Cu": 0.0, "Au": 0.0}
    thread, errors = _evaluate_in_background(oracle, l10_cuau())
    os.kill(_job_pid(tmp_path / "runs" / l10_cuau().id), signal.SIGTERM)
    thread.join(30)
    assert len(errors) == 1 and isinstance(errors[0], EvaluationFailed)
    assert errors[0].retryable
    expected = r"interrupted: job \w+ was killed by SIGTERM after [\d.]+ s without writing a result"
    assert re.match(expected, str(errors[0]))
    assert killed_from_outside(-int(signal.SIGSEGV), "forkserver") is None
    assert killed_from_outside(1, "forkserver") is None
    assert killed_from_outside(255, "spawn") is None
    assert killed_from_outside(255, "forkserver") == "lost its forkserver process (killed from outside)"


def test_a_job_process_imports_neither_torch_nor_pandas() -> None:
    # Each job is a fresh process (spawned, or forked from a server that preloaded the job's
    # imports): torch and pandas would add ~2 s to every spawned job and ~300 MB to each.
    script = "import sys, oracles.dft_job; print(sorted({'torch', 'pandas'} & set(sys.modules)))"
    repo = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", script], cwd=repo, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_overlapping_atoms_are_rejected_before_any_calculation(tmp_path: Path) -> None:
    structure = Structure(Lattice.cubic(4.0), ["Cu", "Cu"], [[0, 0, 0], [0.05, 0, 0]])
    candidate = Candidate(structure_to_params(structure))
    oracle = runner(tmp_path)
    with pytest.raises(
        EvaluationFailed, match=r"overlapping atoms 0 \(Cu\) and 1 \(Cu\) are 0.200 Å apart"
    ) as info:
        oracle.evaluate(candidate)
    assert not info.value.retryable
    assert not (tmp_path / "runs").exists()  # not even the references were computed


def test_calculator_that_raises_is_reported_with_its_traceback(tmp_path: Path) -> None:
    oracle = runner(tmp_path, calculator=CalculatorSpec(here(GoldAllergicEMT)))
    with pytest.raises(EvaluationFailed) as info:
        oracle.evaluate(l10_cuau())
    message = str(info.value)
    assert "calculator_error: ValueError: this calculator cannot handle gold" in message
    assert "Traceback" in message and "calculate" in message
    assert not info.value.retryable


def test_unconverged_relaxation_is_retryable_as_configured(tmp_path: Path) -> None:
    structure = Structure(
        Lattice.cubic(3.7),
        ["Cu", "Au", "Cu", "Cu"],
        [[0, 0, 0], [0.5, 0.5, 0.08], [0.5, 0, 0.5], [0, 0.5, 0.5]],
    )
    candidate = Candidate(structure_to_params(structure))
    for retryable in [("relaxation_not_converged",), ()]:
        oracle = runner(tmp_path / str(len(retryable)), steps=1, fmax_ev_per_a=1e-4, retryable=retryable)
        with pytest.raises(EvaluationFailed, match=r"relaxation_not_converged") as info:
            oracle.evaluate(candidate)
        assert info.value.retryable is bool(retryable)


def test_non_finite_energy_is_an_exploded_geometry() -> None:
    outcome = execute(bulk("Cu"), JobSettings(CalculatorSpec(here(NaNEMT)), mode="single_point"))
    assert outcome["status"] == "exploded"
    assert "not finite" in outcome["message"]


def test_non_finite_stress_is_an_invalid_result(tmp_path: Path) -> None:
    oracle = runner(tmp_path, calculator=CalculatorSpec(here(NaNStressEMT)), mode="single_point")
    with pytest.raises(InvalidResult, match=r"a label \(energy, forces or stress\) is not finite") as info:
        oracle.evaluate(l10_cuau())
    assert info.value.retryable is False


def test_missing_code_and_bad_parameters_are_setup_errors(tmp_path: Path) -> None:
    with pytest.raises(OracleSetupError, match=r"cannot import module 'no_such_dft_code'"):
        runner(tmp_path, calculator=CalculatorSpec("no_such_dft_code:Calculator"))
    with pytest.raises(OracleSetupError, match=r"has no 'Nope'"):
        runner(tmp_path, calculator=CalculatorSpec("ase.calculators.emt:Nope"))
    oracle = runner(tmp_path, calculator=CalculatorSpec("emt", {"no_such_option": 1}))
    with pytest.raises(OracleSetupError, match=r"'emt' rejects its keyword arguments \['no_such_option'\]"):
        oracle.evaluate(l10_cuau())
    with pytest.raises(ConfigError, match=r"oracle.optimizer: ASE has no optimizer 'Newton'"):
        oracle_from_config({"optimizer": "Newton"}, None)
    with pytest.raises(ConfigError, match=r"oracle.fmaxx: unknown key"):
        oracle_from_config({"fmaxx": 0.1}, None)
    with pytest.raises(ConfigError, match=r"oracle.retryable"):
        oracle_from_config({"retryable": ["bad luck"]}, None)


def campaign_config(tmp_path: Path, calculator: str, **oracle: object) -> dict[str, object]:
    return {
        "campaign": {"name": "faults", "seed": 1, "ledger": str(tmp_path / "ledger.db")},
        "space": {"generator": {"type": "structures", "elements": ["Cu", "Au"], "max_atoms": 2}},
        "objectives": [{"name": "formation_energy_per_atom", "direction": "minimize", "unit": "eV/atom"}],
        "acquisition": {"type": "random", "initial_designs": 4},
        "oracle": {
            "type": "dft",
            "calculator": calculator,
            "workdir": "runs",
            "mode": "single_point",
            **oracle,
        },
        "stopping": {"max_experiments": 4},
    }


def test_campaign_records_calculator_failures_and_goes_on(tmp_path: Path) -> None:
    """A calculator that raises on structures with gold: those are failed with the traceback
    in the ledger, the Cu-Pd ones are done; nothing is lost."""
    data = campaign_config(tmp_path, here(GoldAllergicEMT))
    data["space"] = {"generator": {"type": "structures", "elements": ["Cu", "Pd", "Au"], "max_atoms": 2}}
    data["acquisition"] = {"type": "random", "initial_designs": 6}
    data["stopping"] = {"max_experiments": 6}
    campaign = Campaign(parse_config(data, base_dir=tmp_path))
    assert isinstance(campaign.oracle, DFTRunner) and len(campaign.pool or []) == 6
    report = campaign.run()
    evaluations = campaign.ledger.evaluations(campaign.id)
    assert report.experiments == 6 and len(evaluations) == 6
    failed = [e for e in evaluations if e.status == "failed"]
    done = [e for e in evaluations if e.status == "done"]
    assert sorted(e.params["formula"] for e in done) == ["CuPd", "CuPd"]
    assert len(failed) == 4 and all("Au" in e.params["formula"] for e in failed)
    assert all("cannot handle gold" in (e.error or "") and "Traceback" in (e.error or "") for e in failed)
    assert (tmp_path / "runs" / "faults").is_dir()
    campaign.close()


GPAW = importlib.util.find_spec("gpaw") is not None


@pytest.mark.slow
@pytest.mark.skipif(not GPAW, reason="GPAW is not installed (pip install gpaw gpaw-data; see .ci/run)")
def test_gpaw_relaxes_fcc_aluminium_to_the_experimental_lattice_constant(tmp_path: Path) -> None:
    spec = CalculatorSpec("gpaw", {}, kpoint_density=2.5, ecut_ev=250.0)
    oracle = runner(
        tmp_path, calculator=spec, mode="relax", relax_cell=True, fmax_ev_per_a=0.01, wall_time_s=500
    )
    structure = Structure.from_ase_atoms(bulk("Al", "fcc", a=4.2))
    result = oracle.evaluate(Candidate(structure_to_params(structure)))
    assert result.frame is not None
    volume = abs(np.linalg.det(result.frame.cell))
    a = (4 * volume) ** (1 / 3)
    assert a == pytest.approx(4.05, rel=0.02)
    assert result.measurements["formation_energy_per_atom"].value == pytest.approx(0.0, abs=2e-3)


@pytest.mark.slow
@pytest.mark.skipif(not GPAW, reason="GPAW is not installed (pip install gpaw gpaw-data; see .ci/run)")
def test_gpaw_scf_failure_is_recorded_as_failed(tmp_path: Path) -> None:
    options = {"calculator_options": {"maxiter": 2}, "kpoint_density": 1.5, "ecut_ev": 200.0}
    data = campaign_config(tmp_path, "gpaw", **options)
    data["space"] = {
        "generator": {"type": "structures", "elements": ["Al", "Cu"], "max_atoms": 1, "min_species": 1}
    }
    data["stopping"] = {"max_experiments": 1}
    data["acquisition"] = {"type": "random", "initial_designs": 1}
    campaign = Campaign(parse_config(data, base_dir=tmp_path))
    campaign.run()
    (evaluation,) = campaign.ledger.evaluations(campaign.id)
    assert evaluation.status == "failed"
    assert "scf_not_converged" in (evaluation.error or "") and evaluation.retryable
    campaign.close()
