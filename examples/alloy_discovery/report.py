"""Report of an alloy-discovery campaign: the structures on the hull, and a hull plot.

python examples/alloy_discovery/report.py examples/alloy_discovery/campaign.db [--png hull.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from loop.ledger import Ledger
from loop.stability import HullPoint, campaign_hull, phase_diagram


def hull_table(points: list[HullPoint], within_mev: float = 1.0) -> str:
    """A plain-text table of the structures within ``within_mev`` meV/atom of the hull."""
    near = sorted((p for p in points if p.e_above_hull * 1000 <= within_mev), key=lambda p: p.formula)
    lines = [f"{'formula':<10} {'E_f (eV/atom)':>14} {'E_hull (meV/atom)':>18}  id"]
    lines += [
        f"{p.formula:<10} {p.formation_energy_per_atom:>14.4f} {p.e_above_hull * 1000:>18.2f}  {p.id}"
        for p in near
    ]
    return "\n".join(lines)


def hull_plot(points: list[HullPoint], path: str | Path) -> Path:
    """Write pymatgen's phase-diagram plot (binary or ternary hull) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from pymatgen.analysis.phase_diagram import PDPlotter

    diagram = phase_diagram([(p.formula, p.formation_energy_per_atom) for p in points])
    plot = PDPlotter(diagram, backend="matplotlib", show_unstable=0.02).get_plot()
    figure = plot.get_figure() if hasattr(plot, "get_figure") else plt.gcf()
    figure.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(figure)
    return Path(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ledger")
    parser.add_argument("--campaign", default=None)
    parser.add_argument("--png", default="hull.png")
    parser.add_argument("--within-mev", type=float, default=1.0)
    args = parser.parse_args()
    with Ledger(args.ledger) as ledger:
        points = campaign_hull(ledger, args.campaign)
    print(f"{len(points)} structures evaluated; within {args.within_mev:g} meV/atom of the hull:")
    print(hull_table(points, args.within_mev))
    print(f"hull plot: {hull_plot(points, args.png)}")


if __name__ == "__main__":
    main()
