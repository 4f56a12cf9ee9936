"""End to end through the CLI: collect -> sft -> train -> eval -> report; resume exactness; faults; config errors."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from pirl.cli.main import main as pirl
from pirl.config import load_config
from pirl.policies import make_mlp_policy
from pirl.policies.io import save_policy
from pirl.train.rl import TrainConfig

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
# only the MetaWorld tests need it: the trainer's own claims (Ctrl-C, time limit, resume) run on point mass
needs_metaworld = pytest.mark.skipif(importlib.util.find_spec("metaworld") is None, reason="metaworld not installed")


@needs_metaworld
def test_cli_pipeline_collect_sft_train_eval_report(tmp_path, capsys):
    data, sft_dir, rl, ev = tmp_path / "data", tmp_path / "sft", tmp_path / "rl", tmp_path / "eval"
    assert pirl(["collect", "--run-dir", str(data), "tasks=reach-v3", "episodes_per_task=2", "camera=null",
                 "num_envs=1", "max_episode_steps=120"]) == 0
    assert (data / "meta" / "info.json").is_file()
    assert pirl(["sft", "--run-dir", str(sft_dir), f"dataset={data}", "steps=30", "eval_every=-1",
                 "action_horizon=8", "chunk=4"]) == 0
    policy = sft_dir / "final.safetensors"
    assert policy.is_file()
    assert pirl(["train", "--run-dir", str(rl), f"policy={policy}", "env.tasks=reach-v3", "env.chunk=4",
                 "env.max_episode_steps=60", "iterations=2", "num_groups=2", "eval_every=1", "checkpoint_every=1",
                 "eval_episodes_per_task=2", "eval_num_envs=2", "videos_per_task=1"]) == 0
    summary = json.loads((rl / "summary.json").read_text())
    assert summary["iterations"] == 2 and summary["env_steps"] > 0
    assert set(summary["success_before"]) == set(summary["success_after"]) == {"reach-v3"}
    assert summary["eval_protocol"] == "held_out (2 episodes per task)"
    assert summary["algorithm"] == "ppo" and summary["method"] == "flow_sde"
    for name in ("config.yaml", "metrics.jsonl", "policy_latest.safetensors"):
        assert (rl / name).is_file(), name
    # the same held-out episode before and after RL
    assert [p.name.split("_")[:2] for p in sorted((rl / "videos").glob("*.mp4"))] == [["after0", "reach-v3"],
                                                                                      ["before0", "reach-v3"]]
    assert list((rl / "tb").iterdir())
    records = [json.loads(line) for line in (rl / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 1, 2]
    assert {"loss/policy", "policy/approx_kl", "policy/clip_fraction", "rollout/success_rate"} <= set(records[1])
    capsys.readouterr()
    # no env.* given: the env comes from the policy file's record (the RL run's env, itself the dataset's tasks)
    assert pirl(["eval", "--run-dir", str(ev), f"policy={rl / 'policy_latest.safetensors'}", "episodes_per_task=2",
                 "num_envs=2"]) == 0
    assert "env from the policy file's record: suite=metaworld, tasks=reach-v3 (set env.suite / env.tasks or --config" in capsys.readouterr().err
    out = json.loads((ev / "eval.json").read_text())
    assert 0.0 <= out["success"] <= 1.0 and out["protocol"] == "held_out" and set(out["per_task"]) == {"reach-v3"}
    assert pirl(["report", str(rl), f"out={tmp_path / 'report'}"]) == 0
    assert list((tmp_path / "report").glob("*.png"))


@pytest.fixture(scope="module")
def few_shot_policy(tmp_path_factory) -> Path:
    """The demo's few-shot setting, smaller: 2 demos per task on reach-v3 + push-v3, 200 SFT steps (H = 8, chunk 4)."""
    root = tmp_path_factory.mktemp("few_shot")
    assert pirl(["collect", "--run-dir", str(root / "data"), "tasks=[reach-v3,push-v3]", "episodes_per_task=2",
                 "camera=null", "num_envs=2"]) == 0
    assert pirl(["sft", "--run-dir", str(root / "sft"), f"dataset={root / 'data'}", "steps=200", "eval_every=-1",
                 "action_horizon=8", "chunk=4"]) == 0
    return root / "sft" / "final.safetensors"


@pytest.mark.parametrize("sampler", [("sampler.method=flow_sde", "sampler.noise_level=1.0"),
                                     ("sampler.method=flow_noise",)], ids=["flow_sde", "flow_noise"])
def test_short_runs_from_a_weak_sft_policy_pass_the_ratio_check(few_shot_policy, sampler, tmp_path):
    """Such runs died in the first iteration on the ratio-1 check: rolling out one env at a time infers at batch 1,
    whose float32 sums differ from minibatch re-scoring by ~2e-5, above the old fixed 1e-5 bound."""
    for seed in range(3):
        run = tmp_path / f"seed{seed}"
        assert pirl(["train", "--run-dir", str(run), f"policy={few_shot_policy}", "env.tasks=[reach-v3,push-v3]",
                     "env.chunk=4", "env.max_episode_steps=100", "num_groups=1", "iterations=1",
                     "eval_episodes_per_task=1", "eval_num_envs=2", "videos_per_task=0", f"seed={seed}",
                     *sampler]) == 0
        update = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][1]
        assert 0 <= update["policy/ratio_check"] <= update["policy/ratio_check_tol"] < 1e-2


def test_a_policy_file_records_the_env_it_was_trained_in(few_shot_policy, tmp_path, capsys):
    """`pirl sft` writes the dataset's simulator and task order into the policy file; `pirl train / eval` build
    that env when the command line chooses none, and leave it alone when it does."""
    from argparse import Namespace

    from pirl.cli.main import env_of_policy_file

    def env_for(*overrides):
        return env_of_policy_file(Namespace(overrides=list(overrides)))

    assert env_for(f"policy={few_shot_policy}") == {"suite": "metaworld", "tasks": ["reach-v3", "push-v3"]}
    # `pirl eval --checkpoint FILE` is policy=FILE, record included
    assert pirl(["eval", "--checkpoint", str(few_shot_policy), "--print-config"]) == 0
    assert "tasks: [reach-v3, push-v3]" in capsys.readouterr().out
    # other tasks keep the recorded simulator (and what the policy reads), not the default suite
    assert env_for(f"policy={few_shot_policy}", "env.tasks=[reach-v3]") == {"suite": "metaworld"}
    assert env_for(f"policy={few_shot_policy}", "env.suite=point_mass") is None
    # a setting that does not choose the simulator (an assets folder, the chunk) applies on top of the record
    assert env_for(f"policy={few_shot_policy}", "env.chunk=4")["tasks"] == ["reach-v3", "push-v3"]
    assert env_for(f"policy={tmp_path / 'missing.safetensors'}") is None  # the loader reports a missing file
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    assert env_for(f"policy={bad}") is None
    cfg = load_config(TrainConfig, {"env": env_for(f"policy={few_shot_policy}")}, [f"policy={few_shot_policy}"])
    assert cfg.env.tasks == ("reach-v3", "push-v3") and cfg.env.camera is None
    cfg = load_config(TrainConfig, {"env": env_for(f"policy={few_shot_policy}", "env.chunk=2")},
                      [f"policy={few_shot_policy}", "env.chunk=2"])
    assert cfg.env.tasks == ("reach-v3", "push-v3") and cfg.env.chunk == 2


def test_config_errors_name_the_key(capsys):
    assert pirl(["train", "iteratons=3"]) == 2
    err = capsys.readouterr().err
    assert "iteratons" in err and "iterations" in err
    assert pirl(["train", "num_groups=many"]) == 2
    assert "num_groups" in capsys.readouterr().err
    assert pirl(["train", "algorithm=ppo2"]) == 2
    assert "ppo" in capsys.readouterr().err
    assert pirl(["train", "eval_protocol=libero_official"]) == 2  # the default env is MetaWorld
    assert "needs env.suite='libero'" in capsys.readouterr().err
    assert pirl(["train", "sampler.noise_level=1.5"]) == 2  # a >= sqrt(2) flips x's sign in the first SDE step
    assert "noise_level" in capsys.readouterr().err


# -- resume exactness, on the point-mass env so that it is quick ----------------------------------

def _point_mass_policy(path: Path) -> Path:
    torch.manual_seed(0)
    policy = make_mlp_policy(4, 2, action_horizon=4, hidden=32, depth=2, noise_head=False)
    save_policy(policy, path)
    return path


def _train_cmd(run: Path, policy: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "pirl.cli.main", "train", "--run-dir", str(run), f"policy={policy}",
            "env.suite=point_mass", "env.tasks=[a]", "env.chunk=4", "env.max_episode_steps=32", "iterations=6",
            "num_groups=8", "eval_every=3", "checkpoint_every=2", "eval_episodes_per_task=4", "eval_num_envs=4",
            "videos_per_task=0", "optim.lr=1e-3", *extra]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def _metrics(run: Path) -> list[dict]:
    out = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        out.append({k: v for k, v in rec.items() if not k.startswith("perf/") and k != "wall_time"})
    return out


def _wait_for_step(run: Path, step: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        path = run / "metrics.jsonl"
        if path.exists() and any(json.loads(l)["step"] >= step for l in path.read_text().splitlines() if l.strip()):
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise TimeoutError(f"step {step} never logged")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["sigkill", "sigint"])
def test_interrupted_and_resumed_run_equals_uninterrupted(tmp_path, sig):
    policy = _point_mass_policy(tmp_path / "policy.safetensors")
    ref, run = tmp_path / "ref", tmp_path / "run"
    # two tasks with adaptive task sampling: its running per-task success must resume too
    extra = ("env.tasks=[a,b]", "task_sampling=adaptive")
    subprocess.run(_train_cmd(ref, policy, *extra), check=True, env=_env(), capture_output=True, timeout=300)
    proc = subprocess.Popen(_train_cmd(run, policy, *extra), env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    _wait_for_step(run, 3, proc)  # past the checkpoint at 2: step 3's work must be redone on resume
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode in (-signal.SIGKILL, 130), proc.returncode
    if sig == signal.SIGINT:  # Ctrl-C: the real trainer checkpoints the iteration it stopped at, then exits
        from pirl.train.checkpoint import CheckpointManager

        stopped = max(json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines())
        latest = CheckpointManager(run / "checkpoints").latest
        assert latest is not None and latest.name == f"step_{stopped:09d}" and stopped >= 3, (latest, stopped)
        assert b"checkpoint saved" in out
    resumed = subprocess.run([sys.executable, "-m", "pirl.cli.main", "train", "--resume", str(run)],
                             env=_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = load_file(str(ref / "policy_latest.safetensors")), load_file(str(run / "policy_latest.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _metrics(ref) == _metrics(run)


def test_time_limit_ends_the_run_like_its_last_iteration(tmp_path, capsys):
    policy = _point_mass_policy(tmp_path / "policy.safetensors")
    run = tmp_path / "run"
    assert pirl(_train_cmd(run, policy, "iterations=50", "time_limit_s=0.01")[3:]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["iterations"] == 1
    evals = [r for r in _metrics(run) if "eval/success" in r]
    assert [r["step"] for r in evals] == [0, 1]  # before RL and at the stopping iteration
    assert (run / "policy_latest.safetensors").exists()
    # the time limit ends with a checkpoint, resumable like any other
    from pirl.train.checkpoint import CheckpointManager

    assert CheckpointManager(run / "checkpoints").latest.name == f"step_{1:09d}"
    # perf/cpu_s (this process's and its env subprocesses' CPU seconds) is logged every iteration
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(r["perf/cpu_s"] > 0 for r in records if r["step"] > 0)
    assert pirl(_train_cmd(tmp_path / "bad", policy, "time_limit_s=0")[3:]) != 0
    assert "time_limit_s" in capsys.readouterr().err


def test_corrupt_checkpoint_is_refused_with_the_file_named(tmp_path):
    policy = _point_mass_policy(tmp_path / "policy.safetensors")
    run = tmp_path / "run"
    subprocess.run(_train_cmd(run, policy, "iterations=2"), check=True, env=_env(), capture_output=True, timeout=300)
    weights = sorted((run / "checkpoints").rglob("*.safetensors"))[0]
    weights.write_bytes(weights.read_bytes()[:100])
    res = subprocess.run([sys.executable, "-m", "pirl.cli.main", "train", "--resume", str(run)], env=_env(),
                         capture_output=True, text=True, timeout=120)
    assert res.returncode != 0
    assert weights.name in res.stderr and ("size" in res.stderr or "truncated" in res.stderr or "sha" in res.stderr)


def test_env_crash_is_survived_and_counted(tmp_path, monkeypatch):
    """A simulator that raises mid-rollout is rebuilt; the run goes on and counts the crash."""
    import pirl.train.rl as rl
    from pirl.envs.registry import EnvConfig
    from pirl.envs.registry import make_env as real_make_env

    policy = _point_mass_policy(tmp_path / "policy.safetensors")
    calls = {"n": 0}

    def flaky_make_env(cfg, num_envs, **kw):
        env = real_make_env(cfg, num_envs, **kw)
        calls["n"] += 1
        if calls["n"] == 1:  # the first training env dies on its 3rd step
            real_step, count = env.step, {"n": 0}

            def step(actions):
                count["n"] += 1
                if count["n"] == 3:
                    raise RuntimeError("simulated simulator crash")
                return real_step(actions)

            env.step = step
        return env

    monkeypatch.setattr(rl, "make_env", flaky_make_env)
    cfg = rl.TrainConfig(policy=str(policy), env=EnvConfig(suite="point_mass", tasks=("a",), max_episode_steps=32),
                         iterations=2, num_groups=4, eval_every=2, checkpoint_every=2, eval_episodes_per_task=2,
                         eval_num_envs=2, videos_per_task=0)
    assert rl.train(cfg, tmp_path / "run") == 0
    records = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["rollout/env_crashes_total"] == 1
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["env_crashes"] == 1


def test_eval_vector_chooses_how_evaluation_steps(tmp_path, monkeypatch):
    """eval_vector=async evaluates in subprocesses while rollouts keep env.vector (Ray's workers idle meanwhile);
    the subprocesses end after each evaluation (before and after RL: two of them), a sync env is kept."""
    import pirl.train.rl as rl
    from pirl.envs.registry import EnvConfig
    from pirl.envs.registry import make_env as real_make_env

    made: list[str] = []
    monkeypatch.setattr(rl, "make_env", lambda cfg, n, **kw: made.append(cfg.vector) or real_make_env(cfg, n, **kw))
    policy = str(_point_mass_policy(tmp_path / "policy.safetensors"))
    for eval_vector, expected in ((None, ["sync", "sync"]), ("async", ["sync", "async", "async"])):
        made.clear()
        cfg = rl.TrainConfig(policy=policy, env=EnvConfig(suite="point_mass", tasks=("a",), max_episode_steps=16),
                             iterations=1, num_groups=2, eval_every=1, eval_episodes_per_task=2, eval_num_envs=2,
                             videos_per_task=0, eval_vector=eval_vector)
        assert rl.train(cfg, tmp_path / f"run_{eval_vector}") == 0
        assert made == expected  # rollout env first, evaluation env second


def test_trainer_evaluates_on_held_out_seeds_only(tmp_path, monkeypatch):
    """The rollout env sees training seeds only; the evaluation env exactly the fixed held-out ones."""
    import pirl.train.rl as rl
    from pirl.envs.base import EVAL_SEED_START
    from pirl.envs.registry import EnvConfig
    from pirl.envs.registry import make_env as real_make_env

    seeds: list[set[int]] = []  # per env made: the reset seeds it saw

    def recording_make_env(cfg, num_envs, **kw):
        env, used = real_make_env(cfg, num_envs, **kw), set()
        seeds.append(used)
        reset = env.reset
        env.reset = lambda contexts: used.update(c.seed for c in contexts) or reset(contexts)
        return env

    monkeypatch.setattr(rl, "make_env", recording_make_env)
    cfg = rl.TrainConfig(policy=str(_point_mass_policy(tmp_path / "policy.safetensors")),
                         env=EnvConfig(suite="point_mass", tasks=("a",), max_episode_steps=32), iterations=2,
                         num_groups=4, eval_every=1, eval_episodes_per_task=3, eval_num_envs=2, videos_per_task=0)
    assert rl.train(cfg, tmp_path / "run") == 0
    train_seeds, eval_seeds = seeds  # the rollout env is made first, the evaluation env at the first evaluation
    assert train_seeds and max(train_seeds) < EVAL_SEED_START
    assert eval_seeds == {EVAL_SEED_START + i for i in range(3)}


def test_sub_env_crash_drops_only_that_episode_and_recollects_it():
    """info['crashed'] (MuJoCo instability in one sub-env) drops that episode from the batch; a fresh context
    replaces it, so the batch keeps its size; when every try crashes, collection stops at max_tries."""
    from pirl.envs.point_mass import PointMassConfig, PointMassEnv
    from pirl.flow import SamplerConfig
    from pirl.train.rollout import CollectorConfig, RolloutCollector

    env = PointMassEnv(4, PointMassConfig(max_chunk_steps=4))
    real_step, real_reset, resets = env.step, env.reset, []

    def reset(contexts):
        resets.append(1)
        return real_reset(contexts)

    def step(actions):
        res = real_step(actions)
        if always:
            res.info["crashed"] = np.ones(4, bool)
        elif len(resets) == 1:
            res.info["crashed"] = np.array([False, True, False, False])
        return res

    env.step, env.reset, always = step, reset, False
    torch.manual_seed(0)
    policy = make_mlp_policy(4, 2, action_horizon=4, hidden=32, depth=2, noise_head=False)
    collector = RolloutCollector(env, policy, SamplerConfig(), CollectorConfig(num_groups=4))
    rollout = collector.collect()
    m = rollout.metrics
    assert m["rollout/crashed_episodes"] == 1 and m["rollout/tries"] == 2 and m["rollout/groups_kept"] == 4
    first, second = rollout.buffers
    assert not bool(first.valid[:, 1].any()) and bool(first.valid[:, 0].any())
    assert first.valid[0].tolist() == [True, False, True, True]
    assert second.valid[0].tolist() == [True, False, False, False]  # one replacement; the surplus is trimmed

    always = True
    rollout = collector.collect()
    m = rollout.metrics
    assert m["rollout/crashed_episodes"] == 16 and m["rollout/tries"] == 4 and m["rollout/groups_kept"] == 0
    assert rollout.buffers == []


@needs_metaworld
def test_eval_video_has_the_configured_resolution(tmp_path):
    """Videos are rendered at env.render_size, whatever the size of the policy's own camera images."""
    import imageio.v2 as imageio

    torch.manual_seed(0)
    policy = save_policy(make_mlp_policy(39, 4, action_horizon=4, hidden=16, depth=1, noise_head=False),
                         tmp_path / "mw.safetensors")
    ev = tmp_path / "eval"
    assert pirl(["eval", "--run-dir", str(ev), f"policy={policy}", "env.tasks=reach-v3", "env.chunk=4",
                 "env.max_episode_steps=8", "env.image_size=32", "env.render_size=240", "episodes_per_task=1",
                 "num_envs=1", "videos_per_task=1"]) == 0
    (video,) = (ev / "videos").glob("*.mp4")
    reader = imageio.get_reader(video)
    assert reader.get_data(0).shape == (240, 240, 3)
    reader.close()


@pytest.mark.parametrize("preset", sorted(p.stem for p in (ROOT / "configs" / "train").glob("*.yaml")))
def test_train_presets_load(preset, capsys):
    assert pirl(["train", "--config", preset, "--print-config"]) == 0
    assert "algorithm:" in capsys.readouterr().out


def test_std_range_reaches_a_checkpoints_noise_head(tmp_path):
    """A checkpoint saved with a Flow-Noise head: std_range=None keeps its range, a given std_range re-ranges it
    (before, a head in the checkpoint made std_range a silent no-op), and std_range without flow_noise is refused."""
    from pirl.algorithms import preset
    from pirl.flow import SamplerConfig
    from pirl.policies.io import load_policy, save_policy
    from pirl.train.rl import TrainConfig, prepare_policy

    save_policy(make_mlp_policy(4, 2, action_horizon=4, hidden=16, depth=1, std_range=(0.05, 0.1)),
                tmp_path / "p.safetensors")
    noise = SamplerConfig(method="flow_noise", steps=4)
    for std_range, expected in ((None, (0.05, 0.1)), ((0.2, 0.4), (0.2, 0.4))):
        policy, _ = load_policy(tmp_path / "p.safetensors")
        cfg = TrainConfig(policy=str(tmp_path / "p.safetensors"), sampler=noise, std_range=std_range)
        assert prepare_policy(policy, cfg, preset("ppo")).noise_head.std_range == pytest.approx(expected)
    with pytest.raises(ValueError, match="std_range bounds Flow-Noise's learned std"):
        TrainConfig(std_range=(0.2, 0.4))
    with pytest.raises(ValueError, match="0 < std_min < std_max"):
        TrainConfig(sampler=noise, std_range=(0.4, 0.2))


def test_learned_prior_trains_saves_and_evaluates_through_the_cli(tmp_path, capsys):
    """`pirl train learned_prior=true`: the prior head is attached, trained (mu leaves 0), saved with its bound, loaded
    back by `pirl eval`; on a head policy it is refused in one line."""
    from pirl.policies.io import load_policy

    policy = _point_mass_policy(tmp_path / "policy.safetensors")
    run = tmp_path / "run"
    assert pirl(_train_cmd(run, policy, "iterations=2", "learned_prior=true", "prior_bound=0.7",
                           "sampler.method=flow_noise")[3:]) == 0
    state = load_file(str(run / "policy_latest.safetensors"))
    assert state["prior_head.net.2.weight"].abs().sum() > 0  # zero at attachment: RL moved it
    trained, _ = load_policy(run / "policy_latest.safetensors")
    assert trained.prior_head is not None and trained.prior_head.bound == 0.7
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("policy/ratio_check" in r for r in records)
    assert records[-1]["policy/prior_mean_abs"] > 0  # the second iteration samples from the moved prior
    assert records[-1]["perf/lr_prior"] == 3e-3 and records[-1]["perf/lr_policy"] == 1e-3  # its own lr group
    capsys.readouterr()
    assert pirl(["eval", "--run-dir", str(tmp_path / "ev"), f"policy={run / 'policy_latest.safetensors'}",
                 "episodes_per_task=2", "num_envs=2"]) == 0
    with pytest.raises(ValueError, match="prior_bound"):
        TrainConfig(prior_bound=0.0)


@needs_metaworld
def test_a_state_policy_with_a_camera_is_told_the_images_go_unread(tmp_path, capsys):
    """env.camera with a state-only policy runs (the images are simply unread), and says how to skip rendering them."""
    torch.manual_seed(0)
    policy = save_policy(make_mlp_policy(39, 4, action_horizon=4, hidden=16, depth=1, noise_head=False),
                         tmp_path / "mw.safetensors")
    cmd = ["train", "--run-dir", str(tmp_path / "run"), f"policy={policy}", "env.tasks=reach-v3", "env.chunk=4",
           "env.max_episode_steps=8", "iterations=1", "num_groups=2", "eval_episodes_per_task=1", "eval_num_envs=1",
           "videos_per_task=0", "runner.kind=local"]
    assert pirl(cmd + ["env.camera=corner2", "env.image_size=16"]) == 0
    assert "env.camera=corner2: this mlp policy reads the state only" in capsys.readouterr().out
    assert pirl([*cmd[:2], str(tmp_path / "run2"), *cmd[3:]]) == 0
    assert "reads the state only" not in capsys.readouterr().out


def test_pirl_eval_with_the_trainers_seed_and_episodes_gives_the_trainers_figure(tmp_path):
    """`pirl eval` of the trained policy with the run's seed, held-out episodes and num_envs scores each task as the
    trainer's final evaluation did: both run torch on one thread (`threads`), so no float differs between them."""
    policy = _point_mass_policy(tmp_path / "policy.safetensors")
    run = tmp_path / "run"
    env = {k: v for k, v in _env().items() if k != "OMP_NUM_THREADS"}  # the thread count is the commands' own
    envs = ["env.tasks=[a,b]", "env.max_episode_steps=64"]
    res = subprocess.run(_train_cmd(run, policy, *envs, "iterations=3", "seed=3", "eval_episodes_per_task=8"),
                         env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    after = json.loads((run / "summary.json").read_text())["success_after"]
    assert 0 < sum(after.values()) < len(after), f"a figure that says something about the episodes: {after}"
    res = subprocess.run([sys.executable, "-m", "pirl.cli.main", "eval", "--run-dir", str(tmp_path / "eval"),
                          f"policy={run / 'policy_latest.safetensors'}", "env.suite=point_mass", *envs, "env.chunk=4",
                          "episodes_per_task=8", "num_envs=4", "seed=3"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads((tmp_path / "eval" / "eval.json").read_text())["per_task"] == after


def test_pirl_eval_threads_sets_torchs_thread_count(tmp_path, monkeypatch):
    policy = _point_mass_policy(tmp_path / "policy.safetensors")
    seen = []
    monkeypatch.setattr(torch, "set_num_threads", seen.append)
    keys = [f"policy={policy}", "env.suite=point_mass", "env.tasks=[a]", "env.chunk=4", "env.max_episode_steps=8",
            "episodes_per_task=2", "num_envs=2"]
    assert pirl(["eval", "--run-dir", str(tmp_path / "a"), *keys]) == 0
    assert pirl(["eval", "--run-dir", str(tmp_path / "b"), *keys, "threads=2"]) == 0
    assert pirl(["eval", "--run-dir", str(tmp_path / "c"), *keys, "threads=0"]) == 0
    assert seen == [1, 2]
