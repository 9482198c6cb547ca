"""Universal potentials by name: CHGNet offline, clear errors for what is missing."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk

from surrogates.base import SurrogateError, UniversalModelUnavailable
from surrogates.universal import KNOWN_MODELS, structure_embedding, universal_calculator

pytest.importorskip("chgnet", reason="CHGNet is not installed (pip install chgnet)")


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No downloads, and an empty model cache."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    return tmp_path


def test_chgnet_loads_offline_and_gives_finite_energy_and_forces(offline: Path) -> None:
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    atoms.rattle(0.05, seed=0)
    atoms.calc = universal_calculator("chgnet")
    energy = atoms.get_potential_energy()
    forces = atoms.get_forces()
    assert np.isfinite(energy) and -5.0 < energy / len(atoms) < -2.0  # Cu: about -4 eV/atom
    assert forces.shape == (4, 3) and np.isfinite(forces).all() and np.abs(forces).max() > 0


def test_mace_mp_without_its_weights_fails_with_one_clear_error(offline: Path) -> None:
    pytest.importorskip("mace")
    with pytest.raises(
        UniversalModelUnavailable, match=r"'mace-mp': weights 'small' are not at .*HF_HUB_OFFLINE"
    ) as info:
        universal_calculator("mace-mp", model="small")
    assert str(offline / "mace") in str(info.value)
    assert info.value.__cause__ is None and info.value.__context__ is None  # no network traceback


def test_a_failed_weight_download_is_the_same_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    pytest.importorskip("mace")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    url = "http://127.0.0.1:9/mace-mp-0.model"  # the discard port: nothing listens there
    start = time.monotonic()
    with pytest.raises(
        UniversalModelUnavailable, match=rf"could not be downloaded from {url} \(.*refused"
    ) as info:
        universal_calculator("mace-mp", model=url)
    assert info.value.__suppress_context__  # the URLError's traceback is not shown
    assert time.monotonic() - start < 10
    assert not list(tmp_path.rglob("*.model*"))  # no partial file left behind


def test_unknown_and_uninstalled_models_are_named() -> None:
    with pytest.raises(
        UniversalModelUnavailable, match=r"unknown universal model 'mace'; known: \['chgnet', 'mace-mp', "
    ):
        universal_calculator("mace")
    assert issubclass(UniversalModelUnavailable, SurrogateError)
    missing = [name for name, spec in KNOWN_MODELS.items() if not _installed(spec.package)]
    for name in missing:
        with pytest.raises(
            UniversalModelUnavailable, match=rf"{name!r} needs .*: pip install {KNOWN_MODELS[name].pip}$"
        ):
            universal_calculator(name)
    with pytest.raises(
        UniversalModelUnavailable, match=r"'orb' offers no embedding; models that do: \['chgnet', 'mace-mp'\]"
    ):
        structure_embedding("orb", [bulk("Cu")])


def test_chgnet_embedding_has_one_deterministic_row_per_structure(offline: Path) -> None:
    structures = [bulk("Cu", "fcc", a=3.6), bulk("Cu", "bcc", a=2.9), bulk("Au", "fcc", a=4.1, cubic=True)]
    first = structure_embedding("chgnet", structures)
    assert first.shape == (3, 64) and np.isfinite(first).all()
    assert np.array_equal(first, structure_embedding("chgnet", structures))
    # float32 inside: a structure's row depends on its batch companions only in the last digits.
    assert np.allclose(first[:1], structure_embedding("chgnet", structures[:1]), rtol=1e-5, atol=1e-7)
    assert not np.allclose(first[0], first[1]) and not np.allclose(first[0], first[2])


def _installed(package: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(package) is not None
