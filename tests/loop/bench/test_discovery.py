"""The discovery benchmark on a tiny pool: its numbers mean what they say."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loop.bench.discovery import DiscoveryProtocol, decision_seconds, load_truth, run_benchmark
from loop.bench.discovery_truth import read_truth
from loop.structures import StructureSpaceOptions

TINY = StructureSpaceOptions(elements=["Cu", "Au", "Pd"], lattice=["fcc"], max_atoms=5)


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    workdir = tmp_path_factory.mktemp("discovery")
    protocol = DiscoveryProtocol(
        TINY, seeds=(0,), budget=60, batch_size=10, initial=10, variants=("random", "gp_pair_thompson")
    )
    return run_benchmark(protocol, workdir, decision_sizes=(500,)), workdir


def test_pool_and_truth_are_cached_and_consistent(result: tuple[dict, Path]) -> None:
    out, workdir = result
    assert out["pool_size"] + out["failed_relaxations"] == 288
    (truth_file,) = workdir.glob("truth-*.jsonl")
    assert len(read_truth(truth_file)) == 288
    assert 0 < out["targets"] <= out["pool_size"]
    assert out["prevalence"] == pytest.approx(out["targets"] / out["pool_size"])
    # A second load relaxes nothing: the truth file is not appended to.
    size = truth_file.stat().st_size
    load_truth(DiscoveryProtocol(TINY), workdir)
    assert truth_file.stat().st_size == size


def test_runs_mean_what_they_say(result: tuple[dict, Path]) -> None:
    out, _ = result
    assert {r["variant"] for r in out["runs"]} == {"random", "gp_pair_thompson"}
    for run in out["runs"]:
        rounds = run["rounds"]
        assert run["evaluations"] == 60 == sum(r["evaluated"] for r in rounds)
        assert run["hits"] <= out["targets"]
        recalls = [r["recall"] for r in rounds]
        assert recalls == sorted(recalls) and 0 <= recalls[-1] <= 1
        assert recalls[-1] == pytest.approx(run["hits"] / out["targets"])
        for r in rounds:
            assert r["hit_rate"] == pytest.approx(r["hits"] / r["evaluated"])
            assert r["daf"] == pytest.approx(r["hit_rate"] / out["prevalence"])
        if run["evaluations_to_95"] is not None:
            assert run["evaluations_to_95"] <= (run["evaluations_to_100"] or 60)
        assert len(run["decision_s"]) == len(rounds) - 1  # the initial round is random, no decision
    assert out["summary"]["random_expected"]["evaluations_to_100"] <= out["pool_size"] + 1
    (timing,) = out["decision_timing"]
    assert timing["candidates"] == 500 and timing["seconds_per_decision"] > 0
    json.dumps(out)  # the --json output


def test_decisions_of_any_gp_variant_are_timed(result: tuple[dict, Path]) -> None:
    _, workdir = result
    protocol = DiscoveryProtocol(TINY, batch_size=10)
    truth = load_truth(protocol, workdir)
    (timing,) = decision_seconds(truth, [400], 40, 10, variant="gp_pair_hull_membership", protocol=protocol)
    assert timing["variant"] == "gp_pair_hull_membership" and timing["candidates"] == 400
    assert timing["seconds_per_decision"] > 0 and timing["peak_rss_mb"] > 0
    with pytest.raises(ValueError, match="decision timing is of the GP variants, not 'random'"):
        decision_seconds(truth, [400], 40, 10, variant="random")


def test_the_command_runs_the_seeds_it_is_given(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from loop.cli import app

    args = ["bench", "discovery", "--elements", "Cu,Au", "--max-atoms", "3", "--no-prototypes", "--json"]
    args += ["--seeds", "2", "--first-seed", "5", "--budget", "8", "--batch-size", "4"]
    args += ["--variants", "random"]
    result = CliRunner().invoke(app, [*args, "--decision-sizes", "", "--workdir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout[result.stdout.index("{") :])
    assert out["protocol"]["seeds"] == [5, 6] and [r["seed"] for r in out["runs"]] == [5, 6]
