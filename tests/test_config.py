"""Typed configs: YAML + overrides into nested dataclasses, errors that name the key, help."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import pytest
import yaml

from pirl.config import (
    ConfigError,
    describe,
    dump_config,
    dump_yaml,
    field_docs,
    list_presets,
    load_config,
    resolve_preset,
)
from pirl.flow.config import SamplerConfig


@dataclass(frozen=True)
class EnvCfg:
    """Environment."""

    tasks: tuple[str, ...] = ("reach",)
    """Task names."""
    num_envs: int = 8
    """Parallel environments."""
    image_size: Optional[tuple[int, int]] = None
    """(h, w) or None for state only."""


@dataclass(frozen=True)
class OptimCfg:
    lr: float = 3e-4
    """Learning rate."""
    betas: tuple[float, float] = (0.9, 0.999)
    """Adam betas."""

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


@dataclass(frozen=True)
class TopCfg:
    """A trainer config."""

    name: str = "run"
    """Run name."""
    algo: Literal["ppo", "grpo", "loop"] = "ppo"
    """RL algorithm."""
    seed: int = 0
    """Seed."""
    deterministic: bool = False
    """Deterministic kernels."""
    out: Path = Path("runs")
    """Where runs go."""
    env: EnvCfg = field(default_factory=EnvCfg)
    """The environment."""
    optim: OptimCfg = OptimCfg()
    """The optimiser."""
    sampler: SamplerConfig = SamplerConfig()
    """The sampler."""
    critic: Optional[OptimCfg] = None
    """Separate critic optimiser (None: shared)."""
    weights: dict[str, float] = field(default_factory=dict)
    """Per-task loss weights."""


def test_defaults_yaml_and_overrides(tmp_path):
    (tmp_path / "base.yaml").write_text("algo: grpo\nenv:\n  tasks: [reach, push]\n  num_envs: 16\n")
    (tmp_path / "child.yaml").write_text("_base_: base\nseed: 3\nenv: {num_envs: 4}\n")
    cfg = load_config(
        TopCfg,
        "child",
        ["optim.lr=1e-3", "sampler.method=ode", "env.image_size=[64, 64]", "name=123", "critic.lr=2e-4",
         "weights={reach: 2}", "out=runs/x"],
        search=[tmp_path],
    )
    assert cfg.algo == "grpo" and cfg.seed == 3
    assert cfg.env == EnvCfg(tasks=("reach", "push"), num_envs=4, image_size=(64, 64))
    assert cfg.optim.lr == 1e-3 and isinstance(cfg.optim.betas, tuple)
    assert cfg.sampler.method == "ode"
    assert cfg.name == "123"  # str field keeps the text, not YAML's int
    assert cfg.critic == OptimCfg(lr=2e-4) and cfg.weights == {"reach": 2.0} and cfg.out == Path("runs/x")
    assert load_config(TopCfg) == TopCfg()


def test_dump_round_trip(tmp_path):
    cfg = load_config(TopCfg, None, ["env.tasks=[a, b]", "critic.lr=0.5", "env.image_size=[8, 8]"])
    path = dump_config(cfg, tmp_path / "run" / "config.yaml")
    assert load_config(TopCfg, path) == cfg
    assert "tasks: [a, b]" in path.read_text()


def test_unknown_key_suggests_nearest():
    with pytest.raises(ConfigError, match=r"unknown key 'optim\.lrr' \(did you mean 'lr'\?\); valid keys under 'optim': lr, betas"):
        load_config(TopCfg, None, ["optim.lrr=1"])
    with pytest.raises(ConfigError, match=r"unknown key 'sampler\.step' \(did you mean 'steps'"):
        load_config(TopCfg, {"sampler": {"step": 3}})
    with pytest.raises(ConfigError, match=r"unknown key 'sede'.*did you mean 'seed'"):
        load_config(TopCfg, None, ["sede=1"])
    with pytest.raises(ConfigError, match=r"'seed' \(int\) has no sub-keys"):
        load_config(TopCfg, None, ["seed.x=1"])


def test_wrong_type_names_expected_type():
    with pytest.raises(ConfigError, match=r"env\.num_envs: expected int, got 'many' \(str\)"):
        load_config(TopCfg, None, ["env.num_envs=many"])
    with pytest.raises(ConfigError, match=r"deterministic: expected bool, got 1 \(int\)"):
        load_config(TopCfg, None, ["deterministic=1"])
    with pytest.raises(ConfigError, match=r"algo: expected one of 'ppo', 'grpo', 'loop', got 'gpro' \(did you mean 'grpo'"):
        load_config(TopCfg, None, ["algo=gpro"])
    with pytest.raises(ConfigError, match=r"optim\.betas: expected tuple\[float, float\].*needs exactly 2"):
        load_config(TopCfg, None, ["optim.betas=[0.9]"])
    with pytest.raises(ConfigError, match=r"env\.tasks\[1\]: expected str, got 3"):
        load_config(TopCfg, None, ["env.tasks=[a, 3]"])
    with pytest.raises(ConfigError, match=r"optim: lr must be > 0, got -1.0"):  # __post_init__, located
        load_config(TopCfg, None, ["optim.lr=-1"])
    with pytest.raises(ConfigError, match="not of the form key=value"):
        load_config(TopCfg, None, ["seed"])


def test_file_errors_name_the_file(tmp_path):
    (tmp_path / "bad.yaml").write_text("env: {num_envz: 3}\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*unknown key 'env\.num_envz'.*did you mean 'num_envs'"):
        load_config(TopCfg, tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match=r"no config file or preset 'chld' \(did you mean 'child'"):
        (tmp_path / "child.yaml").write_text("seed: 1\n")
        resolve_preset("chld", [tmp_path])
    assert list_presets([tmp_path]) == ["bad", "child"]


def test_field_docs_and_describe():
    assert field_docs(SamplerConfig)["steps"].startswith("K, denoising steps")
    text = describe(TopCfg)
    assert "  optim.lr: float = 0.0003\n      Learning rate." in text
    assert "  sampler.method: 'ode' | 'flow_sde' | 'flow_noise' = flow_sde" in text
    assert "  env.image_size: tuple[int, int] | None = null" in text
    assert "  critic: OptimCfg | None = null  — Separate critic" in text and "critic.lr" in text


def test_yaml11_numbers_and_dict_entries():
    cfg = load_config(TopCfg, {"optim": {"lr": "3e-4"}, "env": {"num_envs": "1e2"}}, ["weights.push=0.5"])
    assert cfg.optim.lr == 3e-4 and cfg.env.num_envs == 100 and cfg.weights == {"push": 0.5}
    with pytest.raises(ConfigError, match=r"weights\.push:0\.5: no value; write \{push: 0\.5\} \(YAML needs a space"):
        load_config(TopCfg, None, ["weights={push:0.5}"])  # YAML: the key 'push:0.5' with no value


def test_learner_strategy_is_validated():
    from pirl.train.rl import RunnerConfig, TrainConfig

    with pytest.raises(ConfigError, match=r"runner.learner_strategy: expected one of 'ddp', 'fsdp', got 'fdsp' "
                                          r"\(did you mean 'fsdp'"):
        load_config(TrainConfig, None, ["runner.learner_strategy=fdsp"])
    with pytest.raises(ConfigError, match=r"runner: learner_strategy='fsdp'.*needs kind='ray' and learner_processes >= 2"):
        load_config(TrainConfig, None, ["runner.learner_strategy=fsdp"])
    with pytest.raises(ValueError, match=r"learner_processes >= 2, got kind='ray', learner_processes=1"):
        TrainConfig(runner=RunnerConfig(kind="ray", learner_strategy="fsdp"))
    cfg = load_config(TrainConfig, None, ["runner.kind=ray", "runner.learner_processes=2", "runner.learner_strategy=fsdp"])
    assert cfg.runner.learner_strategy == "fsdp"


def test_runner_settings_are_a_group_and_old_flat_keys_name_the_new_ones(tmp_path):
    from pirl.train.rl import TrainConfig

    cfg = load_config(TrainConfig, None, ["runner.kind=ray", "runner.env_workers=4", "runner.address=auto"])
    assert (cfg.runner.kind, cfg.runner.env_workers, cfg.runner.address) == ("ray", 4, "auto")
    for old, new in (("env_workers=4", "runner.env_workers"), ("pipelined=true", "runner.pipelined"),
                     ("learner_processes=2", "runner.learner_processes"), ("ray_address=auto", "runner.address"),
                     ("max_learner_restarts=1", "runner.max_learner_restarts"), ("worker_cpus=0.5", "runner.worker_cpus")):
        with pytest.raises(ConfigError, match=rf"^{old.split('=')[0]} was moved: use {new}$"):
            load_config(TrainConfig, None, [old])
    with pytest.raises(ConfigError, match=r"runner is a group of keys: did you mean runner.kind=ray\?"):
        load_config(TrainConfig, None, ["runner=ray"])
    old_yaml = tmp_path / "old.yaml"  # a config file written before the move
    old_yaml.write_text("iterations: 3\nenv_workers: 4\n")
    with pytest.raises(ConfigError, match=r"old\.yaml: env_workers was moved: use runner.env_workers"):
        load_config(TrainConfig, old_yaml)
    text = dump_yaml(cfg)
    assert "\nrunner:\n  kind: ray\n  address: auto\n  env_workers: 4\n" in text
    assert load_config(TrainConfig, yaml.safe_load(text)) == cfg
