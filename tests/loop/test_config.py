"""Tests of loop.config: loading and validating campaign TOML files."""

from __future__ import annotations

from pathlib import Path

import pytest

from loop.config import CampaignConfig, DatasetOracle, EmulatorOracle, load_config, parse_config
from loop.errors import ConfigError
from loop.space import Categorical, Continuous, Integer

MINIMAL = """
[campaign]
name = "mini"
seed = 3

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

[oracle]
type = "emulator"
function = "branin"
noise_sd = 0.1

[stopping]
max_experiments = 10
"""

POOL = """
[campaign]
name = "pooled"
ledger = "runs/ledger.db"

[space.pool]
path = "data/table.csv"
inputs = ["a", "b"]

[[objectives]]
name = "y"

[oracle]
type = "dataset"
path = "data/table.csv"
mode = "replicate"

[stopping]
max_cost = 5.5
"""


def write(folder: Path, text: str, name: str = "campaign.toml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


@pytest.fixture
def pool_dir(tmp_path: Path) -> Path:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "table.csv").write_text("a,b,y\n1,0.5,2.0\n1,0.5,2.2\n2,0.7,3.0\n")
    write(tmp_path, POOL)
    return tmp_path


def test_minimal_config_loads_with_defaults(tmp_path):
    config = load_config(write(tmp_path, MINIMAL))
    assert isinstance(config, CampaignConfig)
    assert config.campaign.name == "mini" and config.campaign.seed == 3
    assert isinstance(config.oracle, EmulatorOracle)
    assert config.oracle.noise_sd == 0.1 and config.oracle.capacity == 1
    assert config.objectives[0].direction == "minimize" and config.objectives[0].weight == 1.0
    assert config.acquisition.type == "qlognei" and config.acquisition.batch_size == 1
    assert config.surrogate.kernel == "matern52" and config.surrogate.noise == "inferred"
    assert config.stopping.max_experiments == 10 and config.stopping.max_cost is None
    space = config.space.build()
    assert space.names == ["x1", "x2"]
    assert space["x1"] == Continuous("x1", -5.0, 10.0)
    assert config.base_dir == tmp_path.resolve()


def test_a_log_scale_objective_changes_the_campaign_hash_and_its_absence_does_not(tmp_path):
    plain = load_config(write(tmp_path, MINIMAL))
    assert "log_scale" not in plain.identity()["objectives"][0]  # campaigns from before it keep their hash
    logged = load_config(
        write(tmp_path, MINIMAL.replace('direction = "minimize"', "log_scale = true"), "l.toml")
    )
    assert logged.objectives[0].log_scale and logged.identity()["objectives"][0]["log_scale"] is True
    assert (
        logged.hash
        != load_config(write(tmp_path, MINIMAL.replace('direction = "minimize"', ""), "p.toml")).hash
    )


@pytest.mark.parametrize(
    ("surrogate", "reason"),
    [('noise = "observed"', "surrogate.noise"), ('calibration = "scale"', "a recalibrated acquisition")],
)
def test_log_scale_is_refused_where_its_model_does_not_take_logarithms(tmp_path, surrogate, reason):
    text = MINIMAL.replace('direction = "minimize"', "log_scale = true") + f"[surrogate]\n{surrogate}\n"
    with pytest.raises(ConfigError, match=rf"objectives.log_scale \(y\): not offered here: {reason}"):
        load_config(write(tmp_path, text))
    stopping_only = text + 'calibration_applies_to = "stopping"\n'
    if "calibration" in surrogate:  # the stopping rules' recalibration reads predict(), log-normal moments
        assert load_config(write(tmp_path, stopping_only, "s.toml")).objectives[0].log_scale


def test_example_campaign_loads():
    path = Path(__file__).resolve().parents[2] / "examples" / "simulated_lab" / "campaign.toml"
    config = load_config(path)
    space = config.space.build()
    assert space["anneal_min"] == Integer("anneal_min", 5, 60, unit="min")
    assert space["atmosphere"] == Categorical("atmosphere", ("air", "N2", "Ar"))
    assert len(space.constraints) == 1 and space.constraints[0].sense == "=="
    assert config.oracle.properties == {"roughness_nm": "nm"}
    assert config.acquisition.batch_size == 2


def test_pool_and_dataset_paths_resolve_against_the_config_folder(pool_dir, monkeypatch):
    monkeypatch.chdir("/")
    config = load_config(pool_dir / "campaign.toml")
    assert isinstance(config.oracle, DatasetOracle)
    assert config.resolve(config.space.pool.path) == pool_dir.resolve() / "data" / "table.csv"
    assert config.resolve(config.oracle.path) == pool_dir.resolve() / "data" / "table.csv"
    assert config.ledger_location == str(pool_dir.resolve() / "runs" / "ledger.db")
    assert config.resolve("/abs/elsewhere.csv") == Path("/abs/elsewhere.csv")


def test_ledger_url_is_kept_as_is(tmp_path):
    config = load_config(write(tmp_path, MINIMAL), {"campaign.ledger": "postgresql://u@h/db"})
    assert config.ledger_location == "postgresql://u@h/db"


# --- errors name the key ------------------------------------------------------------------------


def assert_config_error(tmp_path: Path, text: str, *words: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    message = str(info.value)
    for word in words:
        assert word in message, message
    return message


def test_unknown_top_level_key(tmp_path):
    assert_config_error(tmp_path, MINIMAL + "\n[extras]\nfoo = 1\n", "extras: unknown key")


def test_unknown_nested_key_names_the_path(tmp_path):
    assert_config_error(tmp_path, MINIMAL + "\n[acquisition]\nbetta = 1\n", "acquisition.betta: unknown key")


def test_unknown_oracle_key_names_the_path(tmp_path):
    text = MINIMAL.replace("noise_sd = 0.1", "noise_sd = 0.1\nnoise = 0.2")
    assert_config_error(tmp_path, text, "oracle.noise: unknown key")


def test_unknown_parameter_key_names_its_position(tmp_path):
    text = MINIMAL.replace("upper = 15.0", "upper = 15.0\nuper = 16.0")
    assert_config_error(tmp_path, text, "space.parameters.1.uper: unknown key")


def test_wrong_type_names_the_key(tmp_path):
    text = MINIMAL + '\n[acquisition]\nbatch_size = "two"\n'
    assert_config_error(tmp_path, text, "acquisition.batch_size", "integer")
    assert_config_error(tmp_path, MINIMAL.replace('name = "mini"', "name = 5"), "campaign.name", "string")


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ("[acquisition]\nbatch_size = 0", "acquisition.batch_size"),
        ("[acquisition]\nbeta = -1", "acquisition.beta"),
        ("[surrogate]\nkernel = 'periodic'", "surrogate.kernel"),
    ],
)
def test_out_of_range_sections(tmp_path, line, key):
    assert_config_error(tmp_path, MINIMAL + "\n" + line + "\n", key)


@pytest.mark.parametrize(
    ("old", "new", "key"),
    [
        ("noise_sd = 0.1", "noise_sd = -1", "oracle.noise_sd"),
        ("noise_sd = 0.1", "failure_probability = 2", "oracle.failure_probability"),
        ("noise_sd = 0.1", "capacity = 0", "oracle.capacity"),
        ("noise_sd = 0.1", "latency_s = -0.5", "oracle.latency_s"),
        ("max_experiments = 10", "max_experiments = 0", "stopping.max_experiments"),
        ('direction = "minimize"', 'direction = "down"', "objectives.0.direction"),
    ],
)
def test_out_of_range_values_name_the_key(tmp_path, old, new, key):
    assert_config_error(tmp_path, MINIMAL.replace(old, new), key)


def test_missing_budget(tmp_path):
    text = MINIMAL.replace("max_experiments = 10", "patience = 3")
    assert_config_error(tmp_path, text, "stopping", "max_experiments", "max_cost")


def test_missing_required_section(tmp_path):
    text = MINIMAL.replace("[stopping]\nmax_experiments = 10\n", "")
    assert_config_error(tmp_path, text, "stopping", "Field required")


def test_both_pool_and_parameters(pool_dir):
    text = (pool_dir / "campaign.toml").read_text() + (
        '\n[[space.parameters]]\nname = "z"\ntype = "continuous"\nlower = 0\nupper = 1\n'
    )
    assert_config_error(pool_dir, text, "space", "exactly one of 'pool', 'parameters'")


def test_bad_parameter_bounds(tmp_path):
    text = MINIMAL.replace("lower = 0.0\nupper = 15.0", "lower = 20.0\nupper = 15.0")
    assert_config_error(tmp_path, text, "space.parameters.1", "lower 20.0 > upper 15.0")


def test_categorical_without_choices(tmp_path):
    text = MINIMAL + '\n[[space.parameters]]\nname = "gas"\ntype = "categorical"\n'
    assert_config_error(tmp_path, text, "space.parameters.2", "'gas' needs 'choices'")


def test_duplicate_objectives(tmp_path):
    text = MINIMAL + '\n[[objectives]]\nname = "y"\n'
    assert_config_error(tmp_path, text, "objectives", "distinct")


def test_missing_data_file_names_key_and_path(pool_dir):
    (pool_dir / "data" / "table.csv").unlink()
    message = assert_config_error(pool_dir, (pool_dir / "campaign.toml").read_text(), "space.pool.path")
    assert str(pool_dir.resolve() / "data" / "table.csv") in message
    assert "does not exist" in message


def test_missing_dataset_oracle_file(pool_dir):
    text = (
        (pool_dir / "campaign.toml")
        .read_text()
        .replace('path = "data/table.csv"\nmode', 'path = "data/other.csv"\nmode')
    )
    assert_config_error(pool_dir, text, "oracle.path", "other.csv", "does not exist")


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match=r"nothing\.toml.*does not exist"):
        load_config(tmp_path / "nothing.toml")


def test_not_toml(tmp_path):
    path = write(tmp_path, "[campaign\nname = = 3\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path)
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path)


def test_unknown_oracle_type_lists_the_known_ones(tmp_path):
    text = MINIMAL.replace('type = "emulator"', 'type = "telepathy"')
    assert_config_error(
        tmp_path, text, "oracle", "'telepathy'", "'dataset'", "'emulator'", "'robot'", "'dft'"
    )


def test_config_error_is_a_value_error(tmp_path):
    with pytest.raises(ValueError):
        load_config(write(tmp_path, MINIMAL.replace("noise_sd = 0.1", "noise_sd = -1")))


def test_parse_config_from_a_dict_names_the_source():
    with pytest.raises(ConfigError, match=r"^my-source: campaign: Field required"):
        parse_config({}, source="my-source")


# --- identity and hash ----------------------------------------------------------------------------


def test_identity_ignores_stopping_and_ledger_location(tmp_path):
    path = write(tmp_path, MINIMAL)
    base = load_config(path)
    other = load_config(
        path,
        {"stopping.max_experiments": 99, "stopping.patience": 4, "campaign.ledger": "/tmp/elsewhere.db"},
    )
    assert other.stopping.max_experiments == 99 and other.campaign.ledger == "/tmp/elsewhere.db"
    assert other.identity() == base.identity()
    assert other.hash == base.hash
    identity = base.identity()
    assert "stopping" not in identity and "ledger" not in identity["campaign"]
    assert "base_dir" not in identity
    assert len(base.hash) == 16


def test_hash_is_the_same_from_another_folder(tmp_path):
    (tmp_path / "b").mkdir()
    assert load_config(write(tmp_path, MINIMAL)).hash == load_config(write(tmp_path / "b", MINIMAL)).hash


@pytest.mark.parametrize(
    "overrides",
    [
        {"campaign.seed": 4},
        {"campaign.name": "other"},
        {"acquisition.type": "ucb"},
        {"oracle.noise_sd": 0.2},
    ],
)
def test_hash_changes_with_what_defines_the_campaign(tmp_path, overrides):
    path = write(tmp_path, MINIMAL)
    assert load_config(path, overrides).hash != load_config(path).hash


def test_hash_changes_when_the_space_changes(tmp_path):
    base = load_config(write(tmp_path, MINIMAL))
    wider = load_config(write(tmp_path, MINIMAL.replace("upper = 15.0", "upper = 16.0"), "b.toml"))
    assert wider.hash != base.hash
    assert wider.identity()["space"] != base.identity()["space"]


def test_overrides_set_nested_keys_before_validation(tmp_path):
    path = write(tmp_path, MINIMAL)
    config = load_config(path, {"acquisition.batch_size": 3, "oracle.latency_s": 0.5})
    assert config.acquisition.batch_size == 3
    assert config.oracle.latency_s == 0.5
    with pytest.raises(ConfigError, match=r"acquisition\.batch_size"):
        load_config(path, {"acquisition.batch_size": 0})
    assert load_config(path).acquisition.batch_size == 1  # the file itself is unchanged


def test_config_is_frozen(tmp_path):
    config = load_config(write(tmp_path, MINIMAL))
    with pytest.raises(ValueError):
        config.campaign.seed = 5  # type: ignore[misc]


def test_negative_seed_is_refused_at_load(tmp_path):
    assert_config_error(tmp_path, MINIMAL.replace("seed = 3", "seed = -1"), "campaign.seed")


def test_duplicate_parameter_names_are_refused_at_load(tmp_path):
    text = MINIMAL.replace('name = "x2"', 'name = "x1"')
    assert_config_error(tmp_path, text, "space.parameters", "x1")
