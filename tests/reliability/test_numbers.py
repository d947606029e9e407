"""One validation layer for numbers: the CLI, YAML configs, the Python API and the server refuse NaN,
infinities and out-of-range values with a message naming the value and the valid range."""

import math

import pytest

from temoe.cli.main import main
from temoe.controller import ControllerConfig
from temoe.train.config import TrainConfig, load_config
from temoe.validation import ETA, PORT, SEED, TOP_P, Range


def test_range_describes_and_checks():
    assert TOP_P.describe() == "a finite number in (0, 1]"
    assert PORT.describe() == "an integer in [1, 65535]"
    assert ETA.describe() == "a finite number >= 0"
    for bad in (math.nan, math.inf, -math.inf, -1, True, "0.1"):
        assert not ETA.contains(bad)
    assert Range(1, integer=True).contains(3) and not Range(1, integer=True).contains(2.5)
    assert SEED.check("seed", 2**63 - 1) == 2**63 - 1
    with pytest.raises(ValueError, match=r"seed=-1: must be an integer in \[0, 9223372036854775807\]"):
        SEED.check("seed", -1)


GEN, SERVE = ["generate", "--model", "tiny", "--prompt", "x"], ["serve", "--model", "tiny"]


@pytest.mark.parametrize("argv, message", [
    (["train", "--eta", "inf"], "argument --eta: 'inf' is not a finite number >= 0"),
    (["train", "--eta", "nan"], "argument --eta: 'nan' is not a finite number >= 0"),
    (["train", "--eta", "-1"], "argument --eta: '-1' is not a finite number >= 0"),
    ([*GEN, "--temperature", "-1"], "argument --temperature: '-1'"),
    ([*GEN, "--temperature", "nan"], "argument --temperature: 'nan'"),
    ([*GEN, "--max-new-tokens", "-1"], "is not an integer >= 1"),
    ([*GEN, "--top-p", "0"], "'0' is not a finite number in (0, 1]"),
    ([*SERVE, "--port", "99999"], "argument --port: '99999' is not an integer in [1, 65535]"),
    ([*SERVE, "--max-active", "0"], "argument --max-active: '0' is not an integer >= 1"),
    ([*SERVE, "--max-queue", "0"], "argument --max-queue: '0' is not an integer >= 1"),
    (["switch-rate", "tiny", "--k-hat", "4", "--top-p", "1.5"], "'1.5' is not a finite number in (0, 1]"),
    (["eval", "--task", "math", "--k-hat", "4", "--json", "x", "--limit", "0"], "argument --limit: '0'"),
])
def test_cli_refuses_bad_numbers_before_any_work(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("key, value, message", [
    ("controller.eta", "inf", "config key controller.eta=inf: must be a finite number >= 0"),
    ("controller.eta", "nan", "config key controller.eta=nan: must be a finite number >= 0"),
    ("controller.eta", "-0.5", "config key controller.eta=-0.5: must be a finite number >= 0"),
    ("lr_policy", "-1e-4", "config key lr_policy=-0.0001: must be a finite number >= 0"),
    ("gamma", "nan", "config key gamma=nan: must be a finite number"),
])
def test_configs_and_the_python_api_refuse_the_same_values(tmp_path, key, value, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(None, [f"{key}={value}"])  # key=value override
    yaml_file = tmp_path / "c.yaml"
    section, _, name = key.rpartition(".")
    yaml_value = value if value not in ("inf", "nan") else "." + value
    yaml_file.write_text(f"{section}:\n  {name}: {yaml_value}\n" if section else f"{key}: {yaml_value}\n")
    with pytest.raises(ValueError, match=f"config key {key}="):
        load_config(yaml_file)  # YAML file
    with pytest.raises(ValueError, match=f"config key {key}="):  # Python API
        if section:
            TrainConfig(controller=ControllerConfig(k_hat=16, **{name: float(value)})).validate()
        else:
            TrainConfig(**{key: float(value)}).validate()


def test_nested_config_sections_are_checked_too():
    from dataclasses import dataclass, field

    from temoe.validation import check_fields

    @dataclass
    class Inner:
        eta: float = 0.02

    @dataclass
    class Outer:
        controller: Inner = field(default_factory=Inner)
        gamma: float = 0.9

    check_fields(Outer(), {"eta": ETA})
    with pytest.raises(ValueError, match="config key controller.eta=-1.0: must be a finite number >= 0"):
        check_fields(Outer(Inner(-1.0)), {"eta": ETA})
    with pytest.raises(ValueError, match="config key gamma=inf: must be a finite number"):
        check_fields(Outer(gamma=math.inf), {"eta": ETA})


def test_a_bad_yaml_config_names_the_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("eta: 0.02\nsteps: [1\n")
    with pytest.raises(ValueError, match=rf"config {path}:\d+: not valid YAML"):
        load_config(path)
    path.write_text("- just\n- a list\n")
    with pytest.raises(ValueError, match="expected a mapping"):
        load_config(path)


def test_key_value_overrides_may_come_after_flags(tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr("temoe.train.trainer.train", lambda config, **kw: seen.update(config=config, **kw)
                        or type("R", (), {"metrics": []})())
    argv = ["train", "--config", "tiny", "controller.eta=0.03", "--steps", "2",
            "controller.k_hat=4", "--out", str(tmp_path / "o")]
    assert main(argv) == 0
    config = seen["config"]
    assert (config.controller.eta, config.steps, config.controller.k_hat) == (0.03, 2, 4)
    assert seen["config"].out_dir == str(tmp_path / "o")  # a flag after key=value is read too
