"""`pirl demo`'s set-up: what it runs with, and that the presets say the same as the measured demo."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from pirl.cli.main import preset_dirs
from pirl.config import load_config
from pirl.demo import DemoConfig, rl_config
from pirl.train.rl import TrainConfig

ROOT = Path(__file__).resolve().parent.parent


def train_preset(name: str) -> TrainConfig:
    return load_config(TrainConfig, name, search=preset_dirs("train"))


def test_demo_rl_uses_both_cores_and_its_setup_installs_ray():
    runner = rl_config(DemoConfig(), "p.safetensors").runner
    assert runner.kind == "ray" and runner.env_workers == 2
    extras = re.search(r"PIRL_EXTRAS:-([\w,]+)", (ROOT / "scripts" / "demo.sh").read_text())[1].split(",")
    assert {"metaworld", "ray"} <= set(extras)


def test_flow_sde_preset_is_the_demos_rl_stage():
    """The README's demo result is the preset's: the same TrainConfig but for the policy file."""
    assert train_preset("metaworld_ppo_flow_sde") == dataclasses.replace(rl_config(DemoConfig(), ""), policy="")


def test_other_metaworld_presets_as_measured():
    noise = train_preset("metaworld_ppo_flow_noise")
    assert noise.sampler.method == "flow_noise" and noise.sampler.reduce == "mean" and noise.std_range == (0.2, 0.4)
    for name, algorithm in (("metaworld_grpo", "grpo"), ("metaworld_loop", "loop")):
        cfg = train_preset(name)
        assert cfg.algorithm == algorithm and cfg.sampler.noise_level == 1.0
        assert cfg.num_groups * cfg.group_size == 48  # episodes per iteration of bench/bench_learning.py


def test_pi0_flow_noise_preset_is_the_measured_run():
    """The small-π0 Flow-Noise preset holds the settings of its measured runs (bench/results/learning_pi0-small_flow_noise.md):
    a learned x^0 prior with its own lr, σ ∈ [0.2, 0.4], lr 1e-5, 32 episodes of at most 150 actions, the camera."""
    cfg = train_preset("metaworld_pi0_flow_noise")
    assert cfg.sampler.method == "flow_noise" and cfg.std_range == (0.2, 0.4) and cfg.learned_prior
    assert (cfg.optim.lr, cfg.optim.prior_lr, cfg.optim.value_lr) == (1e-5, 3e-3, 1e-3)
    assert cfg.num_groups * cfg.group_size == 32 and cfg.task_sampling == "adaptive"
    assert (cfg.env.max_episode_steps, cfg.env.camera, cfg.env.image_size) == (150, "corner2", 64)
    assert cfg.time_limit_s == 3600 and cfg.eval_every == 8 and cfg.eval_episodes_per_task == 20


def test_demo_settings_that_cannot_run_fail_before_collection_and_sft(tmp_path, capsys):
    # `pirl demo algorithm=loop` collected and trained SFT for minutes, then failed building its RL stage
    from pirl.cli.main import main as pirl

    for setting, words in [("algorithm=loop", "set group_size >= 2"), ("sampler.method=ode", "no log-probabilities"),
                           ("eval_every=0", "eval_every must be >= 1"), ("demos_per_task=0", "demos_per_task >= 1")]:
        run = tmp_path / setting.split("=")[0]
        assert pirl(["demo", "--run-dir", str(run), setting]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("pirl demo: error: DemoConfig:") and words in err and len(err.splitlines()) == 1, err
        assert not run.exists()
