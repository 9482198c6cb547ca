"""On-the-fly training: molecular dynamics on an MLIP committee that calls the oracle when unsure.

Walkers (each an ASE MD run with its own temperature ramp, thermostat and seed) move on the
committee's mean forces; when the committee's uncertainty says so, a walker pauses on a frame,
the oracle labels it, and the committee retrains. The package, one concept a module:

* :mod:`~loop.otf.settings` — the walkers' and the loop's settings, and the TOML file.
* :mod:`~loop.otf.calibration` — the threshold, calibrated online to a target miss rate.
* :mod:`~loop.otf.policy` — when to label, audit and stop calling (pure logic).
* :mod:`~loop.otf.walker` — an MD walker on any ASE calculator, with guards and an ``on_step`` hook.
* :mod:`~loop.otf.labelling` — sending paused frames to the oracle and recording them.
* :mod:`~loop.otf.reports` — what labels, rounds and runs report.
* :mod:`~loop.otf.run` — the rounds, checkpoints and final fit; :mod:`~loop.otf.build` builds a
  run from its configuration.
"""

from loop.otf.build import build_otf_run
from loop.otf.calibration import Calibration
from loop.otf.policy import CallPolicy
from loop.otf.reports import Label, OTFReport, RoundReport
from loop.otf.run import OTFRun
from loop.otf.settings import (
    CommitteeSection,
    OTFConfig,
    OTFSettings,
    RunSection,
    StructureSection,
    WalkerSpec,
    load_otf_config,
    parse_otf_config,
)
from loop.otf.walker import Pause, Walker

__all__ = [
    "Calibration",
    "CallPolicy",
    "CommitteeSection",
    "Label",
    "OTFConfig",
    "OTFReport",
    "OTFRun",
    "OTFSettings",
    "Pause",
    "RoundReport",
    "RunSection",
    "StructureSection",
    "Walker",
    "WalkerSpec",
    "build_otf_run",
    "load_otf_config",
    "parse_otf_config",
]
