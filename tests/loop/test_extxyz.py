"""extxyz export of a campaign's labelled structures: a round trip through ase.io.read."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from ase.io import read
from sqlalchemy import select
from typer.testing import CliRunner

from loop.campaign import Campaign
from loop.cli import app
from loop.config import parse_config
from loop.errors import LedgerError
from loop.extxyz import write_extxyz
from loop.ledger import Ledger, evaluations


def test_extxyz_round_trip(tmp_path: Path) -> None:
    data = {
        "campaign": {"name": "export", "seed": 0, "ledger": str(tmp_path / "ledger.db")},
        "space": {"generator": {"type": "structures", "elements": ["Cu", "Pd"], "max_atoms": 3}},
        "objectives": [{"name": "formation_energy_per_atom", "direction": "minimize", "unit": "eV/atom"}],
        "acquisition": {"type": "random", "initial_designs": 4},
        "oracle": {"type": "dft", "workdir": "runs", "relax_cell": True, "fmax": 0.1},
        "stopping": {"max_experiments": 4},
    }
    campaign = Campaign(parse_config(data, base_dir=tmp_path))
    campaign.run()
    campaign.close()

    path = tmp_path / "labelled.extxyz"
    with Ledger(tmp_path / "ledger.db") as ledger:
        assert write_extxyz(ledger, "export", path) == 4
        with ledger.engine.connect() as conn:
            rows = {r.candidate_id: r for r in conn.execute(select(evaluations))}
        frames = read(str(path), index=":")
        assert len(frames) == 4
        for atoms in frames:
            row = rows[atoms.info["candidate_id"]]
            meta = row.frame  # the labelled structure, typed; nothing of it is left in the metadata
            assert not {"structure", "energy_ev", "forces_ev_per_a"} & set(row.metadata)
            assert atoms.info["formula"] == row.metadata["formula"]
            assert atoms.get_potential_energy() == pytest.approx(meta["energy_ev"], abs=1e-10)
            assert np.allclose(atoms.get_forces(), meta["forces_ev_per_a"], atol=1e-8)  # 8 decimals
            assert np.allclose(atoms.get_stress(), meta["stress_ev_per_a3"], atol=1e-10)
            assert np.allclose(atoms.positions, meta["structure"]["positions"], atol=1e-8)
            assert np.allclose(atoms.cell.array, meta["structure"]["cell"], atol=1e-8)
            assert "formation_energy_per_atom" in atoms.info

        cli_path = tmp_path / "cli.extxyz"
        result = CliRunner().invoke(
            app, ["export", str(tmp_path / "ledger.db"), "--format", "extxyz", "-o", str(cli_path)]
        )
        assert result.exit_code == 0, result.output
        assert "wrote 4 labelled structures" in result.output
        assert [a.info["candidate_id"] for a in read(str(cli_path), index=":")] == [
            a.info["candidate_id"] for a in frames
        ]

        ledger_empty = Ledger(tmp_path / "empty.db")
        ledger_empty.open_campaign("nothing", {}, "0", 0)
        with pytest.raises(LedgerError, match="no done evaluation with a structure"):
            write_extxyz(ledger_empty, "nothing", tmp_path / "none.extxyz")
        ledger_empty.close()
