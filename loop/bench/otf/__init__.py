"""On-the-fly training against the oracle alone and two baselines (``alloop bench otf``).

:mod:`~loop.bench.otf.benchmark` runs the protocol and says what it measures;
:mod:`~loop.bench.otf.variants` runs each variant; :mod:`~loop.bench.otf.trajectory` records what
the walkers went through (through their ``on_step`` hook) and the errors and RDFs measured on it.
"""

from loop.bench.otf.benchmark import (
    VARIANTS,
    acceptance,
    run_otf_benchmark,
    run_otf_seeds,
    summarize_seeds,
)
from loop.bench.otf.trajectory import (
    CHECK_EVERY,
    HELD_OUT_EVERY,
    RDF_BIN_A,
    RDF_MAX_A,
    MissCheck,
    Trajectory,
    held_out_errors,
    radial_distribution,
    rdf_difference,
)
from loop.bench.otf.variants import (
    GroundTruth,
    every_kth_interval,
    oracle_calculator,
    relocated,
    run_committee_variant,
    run_ground_truth,
)
from loop.otf import RoundReport

__all__ = [
    "CHECK_EVERY",
    "HELD_OUT_EVERY",
    "RDF_BIN_A",
    "RDF_MAX_A",
    "VARIANTS",
    "GroundTruth",
    "MissCheck",
    "RoundReport",
    "Trajectory",
    "acceptance",
    "every_kth_interval",
    "held_out_errors",
    "oracle_calculator",
    "radial_distribution",
    "rdf_difference",
    "relocated",
    "run_committee_variant",
    "run_ground_truth",
    "run_otf_benchmark",
    "run_otf_seeds",
    "summarize_seeds",
]
