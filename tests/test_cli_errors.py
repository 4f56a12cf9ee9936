"""User mistakes found at run time end with one line naming the file or key and the fix, exit status 2 and
no traceback (``--debug`` / ``PIRL_DEBUG=1`` print it); real bugs keep their traceback."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from pirl.cli.main import main as pirl
from pirl.data import Episode, write_dataset
from pirl.policies import make_mlp_policy
from pirl.policies.io import save_policy

ROOT = Path(__file__).resolve().parents[1]
PM = ["env.suite=point_mass", "env.tasks=[a]", "env.chunk=4", "env.max_episode_steps=16"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("files")
    torch.manual_seed(0)
    policy = save_policy(make_mlp_policy(4, 2, action_horizon=4, hidden=16, depth=1, noise_head=False),
                         d / "policy.safetensors")
    (d / "random.safetensors").write_bytes(np.random.default_rng(0).bytes(4096))
    data = policy.read_bytes()
    (d / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    save_file({"w": torch.zeros(3)}, str(d / "other.safetensors"))
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(policy), "pt") as f:  # a setting this pirl does not have, as a newer pirl would write it
        meta = f.metadata()
    meta["config"] = json.dumps({**json.loads(meta["config"]), "a_newer_setting": 1})
    save_file(load_file(str(policy)), str(d / "newer.safetensors"), metadata=meta)
    save_policy(make_mlp_policy(39, 4, action_horizon=4, hidden=16, depth=1, noise_head=False),
                d / "metaworld.safetensors")  # sizes of a MetaWorld policy: does not fit point mass
    rng = np.random.default_rng(0)
    episodes = [Episode(task="reach", data={"observation.state": rng.normal(size=(6, 4)).astype(np.float32),
                                            "action": rng.uniform(-1, 1, (6, 2)).astype(np.float32)})]
    write_dataset(d / "dataset", episodes, fps=10, tasks=["reach"], task_names=["reach-v3"])
    return d


def _one_line_error(capsys, rc: int, *names: str) -> str:
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for name in names:
        assert name in err, err
    return err


@pytest.mark.parametrize("name,words", [
    ("missing.safetensors", ["does not exist", "policy=PATH"]),
    ("random.safetensors", ["not a readable safetensors file"]),
    ("truncated.safetensors", ["not a readable safetensors file", "truncated"]),
    ("other.safetensors", ["not a pirl policy"]),
    ("newer.safetensors", ["settings this pirl does not know", "a_newer_setting", "another pirl version"]),
])
@pytest.mark.parametrize("command", ["train", "eval"])
def test_bad_policy_files_name_the_file(files, capsys, command, name, words):
    run = files / f"run-{command}-{name}"
    rc = pirl([command, "--run-dir", str(run), f"policy={files / name}", *PM])
    _one_line_error(capsys, rc, str(files / name), *words)
    assert not run.exists(), "a wrong policy file left an empty run directory behind"


@pytest.mark.parametrize("command", ["train", "eval"])
def test_a_dataset_passed_as_the_policy_is_named_a_dataset(files, capsys, command):
    rc = pirl([command, "--run-dir", str(files / f"run-ds-{command}"), f"policy={files / 'dataset'}", *PM])
    _one_line_error(capsys, rc, "is a dataset, not a policy", f"pirl sft dataset={files / 'dataset'}")


@pytest.mark.parametrize("command", ["train", "eval"])
def test_a_policy_that_does_not_fit_the_env(files, capsys, command):
    run = files / f"run-fit-{command}"
    rc = pirl([command, "--run-dir", str(run), f"policy={files / 'metaworld.safetensors'}", *PM])
    _one_line_error(capsys, rc, "metaworld.safetensors", "states of size 39, the env gives 4", "env.suite")
    assert not run.exists(), "a refused run left its directory behind"
    run.mkdir()  # a directory the user made is theirs: kept, whatever fails in it
    rc = pirl([command, "--run-dir", str(run), f"policy={files / 'metaworld.safetensors'}", *PM])
    _one_line_error(capsys, rc, "states of size 39")
    assert run.is_dir()


def _damaged(files: Path, name: str, damage) -> Path:
    root = files / name
    if not root.exists():
        shutil.copytree(files / "dataset", root)
        damage(root)
    return root


@pytest.mark.parametrize("case,words", [
    ("missing", ["dataset directory", "does not exist", "dataset=DIR"]),
    ("not_a_dataset", ["meta/info.json", "does not exist", "pirl collect --run-dir DIR"]),
    ("lost_parquet", ["data/chunk-000/file-000.parquet does not exist", "collect it again"]),
    ("stats_not_json", ["meta/stats.json is not valid JSON", "recompute_stats"]),
    ("truncated_parquet", ["file-000.parquet is not a readable parquet file", "collect it again"]),
])
def test_damaged_datasets_name_the_file(files, capsys, case, words):
    damage = {
        "missing": None,
        "not_a_dataset": lambda r: shutil.rmtree(r / "meta"),
        "lost_parquet": lambda r: (r / "data/chunk-000/file-000.parquet").unlink(),
        "stats_not_json": lambda r: (r / "meta/stats.json").write_text("{not json"),
        "truncated_parquet": lambda r: (r / "data/chunk-000/file-000.parquet").write_bytes(b"PAR1 cut short"),
    }[case]
    root = files / "nowhere" if damage is None else _damaged(files, case, damage)
    run = files / f"sft-{case}"
    rc = pirl(["sft", "--run-dir", str(run), f"dataset={root}", "steps=1", "eval_every=-1"])
    _one_line_error(capsys, rc, str(root), *words)
    assert not run.exists(), "a damaged dataset left an empty run directory behind"


def test_an_image_policy_on_a_state_dataset(files, capsys):
    run = files / "sft-vla"
    rc = pirl(["sft", "--run-dir", str(run), f"dataset={files / 'dataset'}", "policy=vla", "steps=1", "eval_every=-1"])
    _one_line_error(capsys, rc, "holds no video", "camera=NAME", "policy=mlp")
    assert not run.exists()


def test_sft_evaluates_where_the_dataset_was_collected_or_refuses_before_training(files, tmp_path, capsys):
    rng = np.random.default_rng(1)
    ep = [Episode(task="move the point to the first target",
                  data={"observation.state": rng.normal(size=(6, 4)).astype(np.float32),
                        "action": rng.uniform(-1, 1, (6, 2)).astype(np.float32)})]
    write_dataset(tmp_path / "anon", ep, fps=10, tasks=[ep[0].task], task_names=["reach_first"])
    run = tmp_path / "sft-anon"
    rc = pirl(["sft", "--run-dir", str(run), f"dataset={tmp_path / 'anon'}", "steps=3"])
    _one_line_error(capsys, rc, "'reach_first' is not a MetaWorld task", "eval_env", "eval_every=-1")
    assert not (run / "final.safetensors").exists(), "refused only after training"
    # a dataset that records its simulator (as `pirl collect` writes it) is evaluated there
    write_dataset(tmp_path / "pm", ep, fps=10, tasks=[ep[0].task], task_names=["reach_first"],
                  source_env={"suite": "point_mass", "tasks": ["reach_first"], "camera": None})
    assert pirl(["sft", "--run-dir", str(tmp_path / "sft-pm"), f"dataset={tmp_path / 'pm'}", "steps=3",
                 "batch_size=2", "action_horizon=4", "chunk=4", "eval_episodes_per_task=2", "eval_num_envs=2"]) == 0
    assert "eval/step 3: success" in capsys.readouterr().out


def test_unknown_task_in_collect_and_eval(files, capsys):
    rc = pirl(["collect", "--run-dir", str(files / "c"), "tasks=reech-v3", "episodes_per_task=1"])
    _one_line_error(capsys, rc, "'reech-v3'", "did you mean 'reach-v3'")
    rc = pirl(["eval", "--run-dir", str(files / "e"), f"policy={files / 'metaworld.safetensors'}",
               "env.tasks=[reach-v3,pussh-v3]"])
    _one_line_error(capsys, rc, "'pussh-v3'", "did you mean 'push-v3'")
    rc = pirl(["demo", "--run-dir", str(files / "d"), "tasks=[reech-v3]", "runner.kind=local"])
    _one_line_error(capsys, rc, "'reech-v3'", "did you mean 'reach-v3'")
    assert not any((files / n).exists() for n in "ced"), "a wrong task name left a run directory behind"


def test_collect_with_an_episode_limit_the_expert_cannot_meet(files, capsys):
    pytest.importorskip("metaworld")
    rc = pirl(["collect", "--run-dir", str(files / "short"), "tasks=reach-v3", "episodes_per_task=1", "num_envs=1",
               "max_episode_steps=5", "max_attempts_per_task=2"])
    _one_line_error(capsys, rc, "solved 0/2 episodes within max_episode_steps=5", "raise max_episode_steps")


def test_a_run_that_failed_at_start_can_be_rerun_and_a_real_one_is_kept(files, tmp_path, capsys):
    run = tmp_path / "sft"
    rc = pirl(["sft", "--run-dir", str(run), f"dataset={tmp_path / 'missing'}", "steps=2"])
    _one_line_error(capsys, rc, "missing")
    assert pirl(["sft", "--run-dir", str(run), f"dataset={files / 'dataset'}", "steps=2", "batch_size=2",
                 "eval_every=-1"]) == 0  # the corrected command reuses the directory
    rc = pirl(["sft", "--run-dir", str(run), f"dataset={files / 'dataset'}", "steps=2"])
    _one_line_error(capsys, rc, "already holds a run", "--resume")


def test_simulator_or_extra_not_installed(files, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "libero", None)  # `import libero` fails as if it were not installed
    rc = pirl(["eval", "--run-dir", str(files / "l"), f"policy={files / 'policy.safetensors'}", "env.suite=libero"])
    _one_line_error(capsys, rc, "the libero simulator needs the Python package 'libero'", "pip install -e '.[libero]'")
    monkeypatch.setitem(sys.modules, "ray", None)
    rc = pirl(["train", "--run-dir", str(files / "r"), f"policy={files / 'policy.safetensors'}", *PM,
               "runner.kind=ray"])
    _one_line_error(capsys, rc, "runner.kind=ray needs the Python package 'ray'", "pip install -e '.[ray]'")


def test_resume_of_an_sft_or_demo_run_says_what_to_run_instead(files, tmp_path, capsys):
    sft_run, demo_run = tmp_path / "sft", tmp_path / "demo"
    for run, text in ((sft_run, "dataset: data\nsteps: 10\n"), (demo_run, "demos_per_task: 5\n")):
        run.mkdir()
        (run / "config.yaml").write_text(text)
    _one_line_error(capsys, pirl(["train", "--resume", str(sft_run)]), "a `pirl sft` run",
                    f"pirl train policy={sft_run / 'final.safetensors'}")
    _one_line_error(capsys, pirl(["train", "--resume", str(demo_run)]), f"pirl train --resume {demo_run / 'rl'}")


def test_resume_of_a_directory_without_checkpoint(files, capsys):
    run = files / "no-ckpt"
    run.mkdir()
    (run / "config.yaml").write_text(f"policy: {files / 'policy.safetensors'}\nenv: {{suite: point_mass, tasks: [a]}}\n")
    _one_line_error(capsys, pirl(["train", "--resume", str(run)]), "no checkpoint under", "without --resume")


def _cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pirl.cli.main", *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **env})


def test_debug_shows_the_traceback_and_bugs_keep_theirs(files):
    """In a real process: the one line by default; --debug (before or after the command) or PIRL_DEBUG=1
    print the traceback above it; an exception that is not a user error is a bug and keeps its traceback."""
    args = ("eval", f"policy={files / 'random.safetensors'}", *PM)
    plain = _cli(*args)
    assert plain.returncode == 2 and "Traceback" not in plain.stderr
    assert plain.stderr.strip().splitlines() == [plain.stderr.strip()] and "random.safetensors" in plain.stderr
    for res in (_cli("--debug", *args), _cli(args[0], "--debug", *args[1:]), _cli(*args, PIRL_DEBUG="1")):
        assert res.returncode == 2 and "Traceback" in res.stderr and "SafetensorError" in res.stderr, res.stderr
        assert res.stderr.strip().splitlines()[-1] == plain.stderr.strip()


def test_a_bug_is_not_a_user_error(files, monkeypatch):
    import pirl.train.evaluate as evaluate

    def broken(*a, **k):
        raise KeyError("a bug")

    monkeypatch.setattr(evaluate, "evaluate_policy", broken)
    with pytest.raises(KeyError, match="a bug"):
        pirl(["eval", "--run-dir", str(files / "bug"), f"policy={files / 'policy.safetensors'}", *PM])


def test_resume_reads_a_run_saved_before_keys_moved(files, tmp_path, capsys):
    """A run directory written when the runner's settings were flat keys (runner: local, env_workers: 2) resumes:
    its own config is read with the keys' new places (and says so); nothing of the run is lost."""
    import yaml

    run = tmp_path / "old"
    assert pirl(["train", "--run-dir", str(run), f"policy={files / 'policy.safetensors'}", *PM, "num_groups=2",
                 "iterations=1", "checkpoint_every=1", "eval_every=1000", "eval_episodes_per_task=1",
                 "eval_num_envs=1", "videos_per_task=0"]) == 0
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    runner = cfg.pop("runner")
    cfg.update(runner=runner["kind"], env_workers=runner["env_workers"], iterations=2)
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    capsys.readouterr()
    assert pirl(["train", "--resume", str(run)]) == 0
    out = capsys.readouterr().out
    assert "runner: local -> runner.kind" in out and "env_workers -> runner.env_workers" in out
    assert (run / "summary.json").exists() and '"iterations": 2' in (run / "summary.json").read_text()
    # a user's own config with the old key still gets the error that names the new place
    rc = pirl(["train", "--run-dir", str(tmp_path / "new"), f"policy={files / 'policy.safetensors'}", *PM,
               "env_workers=2"])
    _one_line_error(capsys, rc, "env_workers was moved: use runner.env_workers")


def test_resume_extends_a_finished_run_but_changes_nothing_else(files, tmp_path, capsys):
    """`pirl train --resume RUN iterations=N` continues a finished run to N (and later resumes keep N); any other
    key is refused in one line, since it would change what the run computes."""
    import json

    import yaml

    run = tmp_path / "extend"
    assert pirl(["train", "--run-dir", str(run), f"policy={files / 'policy.safetensors'}", *PM, "num_groups=2",
                 "iterations=1", "checkpoint_every=1", "eval_every=1000", "eval_episodes_per_task=1",
                 "eval_num_envs=1", "videos_per_task=0"]) == 0
    capsys.readouterr()
    _one_line_error(capsys, pirl(["train", "--resume", str(run), "optim.lr=1"]), "optim.lr=1", "iterations")
    assert pirl(["train", "--resume", str(run), "iterations=3"]) == 0
    assert "extending the run: iterations 3" in capsys.readouterr().out
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 3 and json.loads((run / "summary.json").read_text())["iterations"] == 3
    assert yaml.safe_load((run / "config.yaml").read_text())["iterations"] == 3
    # an extension whose resume fails at start is not written into the run
    index = run / "checkpoints" / "index.json"
    good = index.read_text()
    index.write_text("{garbage")
    _one_line_error(capsys, pirl(["train", "--resume", str(run), "iterations=5"]), "index.json is damaged")
    assert yaml.safe_load((run / "config.yaml").read_text())["iterations"] == 3
    index.write_text(good)


@pytest.mark.parametrize("command,key,words", [
    ("train", "gamma=1.5", "gamma must lie in [0, 1]"),
    ("train", "max_tries=0", "max_tries >= 1"),
    ("train", "videos_per_task=-1", "videos_per_task >= 0"),
    ("train", "eval_num_envs=0", "eval_num_envs must be >= 1"),
    ("eval", "num_envs=0", "num_envs must be >= 1"),
    ("eval", "steps=0", "steps must be >= 1"),
    ("eval", "noise_level=0.8", "sampler=flow_sde"),
    ("eval", "sampler=sde", "sampler"),
])
def test_out_of_range_settings_are_refused_when_the_config_is_read(files, capsys, command, key, words):
    run = files / f"range-{command}-{key.split('=')[0]}"
    rc = pirl([command, "--run-dir", str(run), f"policy={files / 'policy.safetensors'}", *PM, key])
    _one_line_error(capsys, rc, words)
    assert not run.exists()


@pytest.mark.parametrize("key,words", [
    ("episodes_per_task=0", "episodes_per_task must be >= 1"),
    ("action_noise=-0.1", "action_noise must be >= 0"),
    ("video_crf=60", "video_crf must lie in [0, 51]"),
])
def test_out_of_range_collect_settings_are_refused_before_anything_runs(tmp_path, capsys, key, words):
    run = tmp_path / "collect"
    _one_line_error(capsys, pirl(["collect", "--run-dir", str(run), "tasks=[reach-v3]", "camera=null", key]), words)
    assert not run.exists()


def test_a_preset_without_a_policy_names_every_kind_of_policy(files, capsys):
    # the π0 presets name no checkpoint: the message must say a π0 directory or hub id works, not only `pirl sft`'s file
    run = files / "no-policy"
    rc = pirl(["train", "--run-dir", str(run), "--config", "libero_pi0"])
    _one_line_error(capsys, rc, "policy is empty", "LeRobot or openpi", "lerobot/pi0_libero")
    assert not run.exists()


@pytest.mark.parametrize("kind", ["regression", "tokenized"])
@pytest.mark.parametrize("keys,named", [
    (["sampler.method=flow_noise"], ["sampler.method=flow_noise"]),
    (["learned_prior=true"], ["learned_prior=true"]),
    (["sampler.method=flow_noise", "learned_prior=true"], ["sampler.method=flow_noise and learned_prior=true"]),
])
def test_flow_only_settings_on_a_head_policy_are_refused_by_name(files, tmp_path, capsys, kind, keys, named):
    # found running `--config metaworld_pi0_flow_noise` with a regression file: an AttributeError on noise_head
    from pirl.policies import make_regression_policy, make_tokenized_policy
    make = make_regression_policy if kind == "regression" else make_tokenized_policy
    path = save_policy(make(4, 2, action_horizon=4, hidden=16, depth=1), tmp_path / f"{kind}.safetensors")
    run = tmp_path / "run"
    rc = pirl(["train", "--run-dir", str(run), f"policy={path}", *PM, *keys])
    _one_line_error(capsys, rc, *named, f"a {kind} policy", "head")
    assert not run.exists()


# -- a run whose numbers go non-finite: the cause and the setting to change, never a traceback ------------------

DIVERGING = ["iterations=6", "num_groups=8", "eval_every=10", "eval_episodes_per_task=2", "eval_num_envs=2",
             "videos_per_task=0", "optim.lr=1000"]


def test_a_diverging_rl_run_names_the_lr_to_lower_and_keeps_its_logs(files, tmp_path, capsys):
    run = tmp_path / "diverged"
    rc = pirl(["train", "--run-dir", str(run), f"policy={files / 'policy.safetensors'}", *PM, *DIVERGING])
    err = _one_line_error(capsys, rc, "training diverged in iteration", "optim.lr=1000", "lower optim.lr",
                          str(run / "metrics.jsonl"))
    assert "iteration 1 " not in err, "the first rollout comes before any update: it cannot have diverged"
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert len(lines) >= 2, "the iterations before the divergence stay logged"


def _ray_error_line(res: subprocess.CompletedProcess, *names: str) -> str:
    """Ray writes its own INFO / WARNING lines to stderr; pirl's error is one line among them, with no traceback."""
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    ours = [line for line in res.stderr.splitlines() if line.startswith("pirl train: error:")]
    assert len(ours) == 1, res.stderr
    for name in names:
        assert name in ours[0], ours[0]
    return ours[0]


def test_a_diverging_run_with_ray_learner_ranks_names_the_lr_too(files, tmp_path):
    pytest.importorskip("ray")
    run = tmp_path / "diverged-ray"
    res = _cli("train", "--run-dir", str(run), f"policy={files / 'policy.safetensors'}", *PM, *DIVERGING,
               "runner.kind=ray", "runner.learner_processes=2", "runner.worker_cpus=0.5")
    _ray_error_line(res, "training diverged in iteration", "lower optim.lr")
    assert len((run / "metrics.jsonl").read_text().splitlines()) >= 2


@pytest.mark.parametrize("keys,words", [
    (["runner.learner_processes=2", "runner.worker_cpus=500"],
     ["1 env worker(s), 1 learner rank(s) need 1000 CPUs", "runner.worker_cpus"]),
    (["runner.rollout_workers=1", "runner.rollout_gpus=1000", "runner.worker_cpus=0.5"],
     ["1 rollout worker(s) need 1000 GPUs", "runner.rollout_gpus"]),
])
def test_ray_actors_that_a_local_ray_cannot_hold_are_refused_not_awaited(files, tmp_path, keys, words):
    # 2 env workers + 1 learner rank at 1 CPU each waited forever on a 2-core machine; these fit on no machine
    pytest.importorskip("ray")
    run = tmp_path / "too-big"
    res = _cli("train", "--run-dir", str(run), f"policy={files / 'policy.safetensors'}", *PM, "runner.kind=ray",
               "runner.env_workers=1", *keys)
    _ray_error_line(res, *words)
    assert not run.exists()


def test_a_diverging_sft_run_names_the_lr_and_saves_no_policy(files, tmp_path, capsys):
    run = tmp_path / "sft-diverged"
    rc = pirl(["sft", "--run-dir", str(run), f"dataset={files / 'dataset'}", "steps=50", "batch_size=2",
               "eval_every=-1", "lr=1e12"])
    _one_line_error(capsys, rc, "SFT diverged: the loss is", "lr=1e+12", "lower lr", "final.safetensors was not written")
    assert not (run / "final.safetensors").exists()


def test_a_policy_file_with_nan_weights_is_refused_at_load(files, tmp_path, capsys):
    torch.manual_seed(0)
    policy = make_mlp_policy(4, 2, action_horizon=4, hidden=16, depth=1, noise_head=False)
    with torch.no_grad():
        next(iter(policy.parameters())).view(-1)[0] = float("nan")
    path = save_policy(policy, tmp_path / "nan.safetensors")
    for command in ("eval", "train"):
        rc = pirl([command, "--run-dir", str(tmp_path / command), f"policy={path}", *PM])
        _one_line_error(capsys, rc, str(path), "non-finite weights", "diverged run")


# -- task ids: a task-id policy reads its own ids whatever order or subset of its tasks the env lists ------------

class _Env:
    def __init__(self, names, texts):
        self.task_names, self.instructions = names, texts


def _two_task_policy():
    torch.manual_seed(0)
    policy = make_mlp_policy(39, 4, action_horizon=4, hidden=16, depth=1, num_tasks=2, noise_head=False)
    policy.task_names, policy.task_instructions = ("reach-v3", "push-v3"), ("reach the goal", "push the puck")
    return policy


def test_env_task_ids_are_mapped_onto_the_policys_by_name():
    from pirl.train.evaluate import bind_task_ids

    policy, said = _two_task_policy(), []
    obs = {"state": np.zeros((2, 39), np.float32), "task": np.array([0, 1])}
    bind_task_ids(policy, _Env(["push-v3", "reach-v3"], ["push the puck", "reach the goal"]), "p", log=said.append)
    assert policy.prepare(obs)["task"].tolist() == [1, 0] and "push-v3 -> 1" in said[0]
    bind_task_ids(policy, _Env(["push-v3"], ["push the puck"]), "p", log=said.append)  # a subset
    assert policy.prepare({**obs, "task": np.array([0, 0])})["task"].tolist() == [1, 1]
    bind_task_ids(policy, _Env(["reach-v3", "push-v3"], ["x", "y"]), "p", log=said.append)  # the same order
    assert policy.prepare(obs)["task"].tolist() == [0, 1] and len(said) == 2
    bind_task_ids(policy, _Env(["a", "b"], ["push the puck", "reach the goal"]), "p", log=said.append)  # by instruction
    assert policy.prepare(obs)["task"].tolist() == [1, 0]
    with pytest.raises(ValueError, match=r"drawer-open-v3 is not among them"):
        bind_task_ids(policy, _Env(["reach-v3", "drawer-open-v3"], ["x", "y"]), "p", log=said.append)


def test_an_instruction_policy_on_tasks_new_to_it_runs_them_with_a_notice():
    from pirl.train.evaluate import bind_task_ids

    policy, said = make_mlp_policy(39, 4, action_horizon=4, hidden=16, depth=1, noise_head=False), []
    policy.task_names = ("reach-v3", "push-v3")  # no task ids: what it does comes from its inputs
    bind_task_ids(policy, _Env(["push-v3", "reach-v3"], ["x", "y"]), "p", log=said.append)
    assert said == []
    bind_task_ids(policy, _Env(["reach-v3", "drawer-open-v3"], ["x", "y"]), "p", log=said.append)
    assert len(said) == 1 and "drawer-open-v3 is new to it" in said[0] and "reach-v3," not in said[0].split(";")[1]
    assert policy.task_names == ("reach-v3", "push-v3")  # evaluating it does not make the task its own
    # RL trains it on the new task: it records it (with its instruction, the lists aligned) and says so once
    policy.task_instructions = ("reach the goal", "push the puck")
    env = _Env(["reach-v3", "drawer-open-v3"], ["reach the goal", "open the drawer"])
    bind_task_ids(policy, env, "p", log=said.append, adopt=True)
    assert policy.task_names == ("reach-v3", "push-v3", "drawer-open-v3") and len(said) == 2
    assert policy.task_instructions == ("reach the goal", "push the puck", "open the drawer")
    bind_task_ids(policy, env, "p", log=said.append, adopt=True)
    assert len(said) == 2


@pytest.fixture
def no_env_built(monkeypatch):
    """Fails a test that builds an env or starts Ray actors (what a refusal at start must come before)."""
    def no_env(*args, **kwargs):
        raise AssertionError("an env was built before the policy's tasks were checked")

    monkeypatch.setattr("pirl.train.rl.make_env", no_env)
    monkeypatch.setattr("pirl.distributed.runner.RayRunner", no_env)


def test_train_refuses_an_unknown_metaworld_task_before_building_any_env(tmp_path, capsys, no_env_built):
    # with runner.kind=ray the env comes up on Ray's workers ~10 s after start: the names are checked first
    path = save_policy(_two_task_policy(), tmp_path / "p.safetensors", extra={"env": {"suite": "metaworld"}})
    rc = pirl(["train", "--run-dir", str(tmp_path / "run"), f"policy={path}", "env.suite=metaworld",
               "env.tasks=[reach-v3,drawer-open-v3]", "runner.kind=ray", "runner.env_workers=2"])
    _one_line_error(capsys, rc, "drawer-open-v3 is not among them")


@pytest.mark.parametrize("tasks, message", [
    ("[PushCube-v1,StackCube-v1]", "StackCube-v1 is not among them"),  # registered, but not the policy's
    ("[PickCube-v1,PushCub-v1]", "unknown ManiSkill task 'PushCub-v1'; did you mean ['PushCube-v1'"),  # misspelt
])
def test_train_refuses_an_unknown_maniskill_task_before_building_any_env(tmp_path, capsys, no_env_built, tasks, message):
    pytest.importorskip("mani_skill")

    policy = _two_task_policy()
    policy.task_names, policy.task_instructions = ("PickCube-v1", "PushCube-v1"), None
    path = save_policy(policy, tmp_path / "p.safetensors", extra={"env": {"suite": "maniskill"}})
    rc = pirl(["train", "--run-dir", str(tmp_path / "run"), f"policy={path}", "env.suite=maniskill",
               f"env.tasks={tasks}"])
    _one_line_error(capsys, rc, message)


def test_train_refuses_an_unknown_libero_task_before_building_any_env(tmp_path, capsys, no_env_built):
    # LIBERO's task table needs no scene: a task the policy was not trained on is refused before any env, and
    # env.tasks alone keeps the recorded simulator (not MetaWorld, the default suite)
    pytest.importorskip("libero")
    from pirl.envs.libero import suite_tasks

    names = [n for n, _ in suite_tasks("libero_object")]
    policy = _two_task_policy()
    policy.task_names, policy.task_instructions = tuple(names[:2]), None
    path = save_policy(policy, tmp_path / "p.safetensors", extra={"env": {"suite": "libero", "tasks": "libero_object:0,1"}})
    rc = pirl(["train", "--run-dir", str(tmp_path / "run"), f"policy={path}", "env.tasks=libero_object:0,5"])
    notice, err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and "record: suite=libero, the tasks from env.tasks" in notice
    assert err.startswith("pirl train: error:") and f"{names[5]} is not among them" in err


def test_a_policy_file_keeps_its_task_names_through_rl_saves(tmp_path):
    from pirl.policies.io import load_policy

    path = save_policy(_two_task_policy(), tmp_path / "p.safetensors", extra={"iteration": 3})  # as `pirl train` saves
    policy, extra = load_policy(path)
    assert policy.task_names == ("reach-v3", "push-v3") and extra["iteration"] == 3
    assert policy.task_instructions == ("reach the goal", "push the puck")


def test_eval_on_a_task_the_policy_was_not_trained_on_is_refused(tmp_path, capsys):
    path = save_policy(_two_task_policy(), tmp_path / "p.safetensors")
    rc = pirl(["eval", "--run-dir", str(tmp_path / "e"), f"policy={path}", "env.suite=metaworld",
               "env.tasks=[reach-v3,drawer-open-v3]", "episodes_per_task=1", "num_envs=1"])
    _one_line_error(capsys, rc, str(path), "['reach-v3', 'push-v3']", "drawer-open-v3 is not among them", "env.tasks")


def test_all_tasks_unknown_is_refused_when_the_policy_was_trained_in_the_same_suite(tmp_path, capsys):
    # a reach / push policy on [pick-place, door-open]: the env's ids 0 / 1 would have read reach / push's
    # embeddings with a notice only; names from another scheme (a dataset from elsewhere) still keep the ids
    from pirl.train.evaluate import bind_task_ids

    said = []
    bind_task_ids(_two_task_policy(), _Env(["a", "b"], ["x", "y"]), "p", log=said.append)
    assert "task ids are used as they are" in said[0]
    with pytest.raises(ValueError, match="pick-place-v3, door-open-v3 are not among them"):
        bind_task_ids(_two_task_policy(), _Env(["pick-place-v3", "door-open-v3"], ["x", "y"]), "p", same_suite=True)
    path = save_policy(_two_task_policy(), tmp_path / "p.safetensors", extra={"env": {"suite": "metaworld"}})
    for command in ("eval", "train"):
        run = tmp_path / command
        rc = pirl([command, "--run-dir", str(run), f"policy={path}", "env.suite=metaworld",
                   "env.tasks=[pick-place-v3,door-open-v3]", "num_envs=1" if command == "eval" else "num_groups=2"])
        _one_line_error(capsys, rc, "pick-place-v3, door-open-v3 are not among them", "env.tasks")
        assert not run.exists()


@pytest.mark.parametrize("args,words", [
    (["report", "runs", "--out", "rep"], ["unknown option --out", "(out=VALUE)", "pirl report --help"]),
    (["train", "--iterations=3"], ["unknown option --iterations=3", "(iterations=VALUE)"]),
    (["train", "--env.tasks", "reach-v3"], ["unknown option --env.tasks", "(env.tasks=VALUE)"]),
    (["eval", "--bogus"], ["unrecognized argument --bogus", "pirl eval --help"]),
])
def test_a_config_key_given_as_an_option_is_named_in_its_key_value_form(capsys, args, words):
    # a stranger's first try, `pirl report RUN --out DIR`, printed the top-level usage and "pirl: error"
    rc = pirl(args)
    err = _one_line_error(capsys, rc, *words)
    assert err.startswith(f"pirl {args[0]}: error:")


def test_a_run_being_written_by_another_process_is_not_resumed_into(files, tmp_path, capsys):
    # two processes on one run raced on its checkpoint index (FileNotFoundError in the first) and config
    import fcntl

    run = tmp_path / "live"
    assert pirl(["train", "--run-dir", str(run), f"policy={files / 'policy.safetensors'}", *PM, "num_groups=2",
                 "iterations=1", "checkpoint_every=1", "eval_every=1000", "eval_episodes_per_task=1",
                 "eval_num_envs=1", "videos_per_task=0"]) == 0
    capsys.readouterr()
    config, metrics = (run / "config.yaml").read_text(), (run / "metrics.jsonl").read_text()
    with open(run / ".lock", "w") as other:  # another open file: a lock as another process would hold it
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        other.write("4242")
        other.flush()
        for args in (["--resume", str(run)], ["--resume", str(run), "iterations=3"]):
            rc = pirl(["train", *args])
            _one_line_error(capsys, rc, "another process (pid 4242) is writing this run", f"--resume {run}")
        assert (run / "config.yaml").read_text() == config and (run / "metrics.jsonl").read_text() == metrics
    assert pirl(["train", "--resume", str(run), "iterations=2"]) == 0  # once it ended, the run continues
    assert len((run / "metrics.jsonl").read_text().splitlines()) > len(metrics.splitlines())


def test_a_resume_from_an_older_checkpoint_says_which_and_what_runs_again(files, tmp_path, capsys):
    # a run killed between checkpoints resumed silently; its later records were dropped without a word
    import shutil

    run = tmp_path / "older"
    assert pirl(["train", "--run-dir", str(run), f"policy={files / 'policy.safetensors'}", *PM, "num_groups=2",
                 "iterations=2", "checkpoint_every=2", "eval_every=1000", "eval_episodes_per_task=1",
                 "eval_num_envs=1", "videos_per_task=0"]) == 0
    shutil.copytree(run / "checkpoints", tmp_path / "at-2")
    assert pirl(["train", "--resume", str(run), "iterations=4"]) == 0
    shutil.rmtree(run / "checkpoints")  # as if killed after iteration 4's records, before its checkpoint
    shutil.copytree(tmp_path / "at-2", run / "checkpoints")
    capsys.readouterr()
    assert pirl(["train", "--resume", str(run)]) == 0
    out = capsys.readouterr().out
    assert f"resuming from {run / 'checkpoints' / 'step_000000002'} (iteration 2," in out, out
    assert "the records of iterations 3-4, logged after it, are dropped (they run again" in out, out
    (run / "checkpoints" / "index.json").write_text("{garbage")
    rc = pirl(["train", "--resume", str(run), "iterations=5"])
    _one_line_error(capsys, rc, "index.json is damaged", "delete it to go on")


def test_overrides_after_an_option_are_applied_not_refused(files, tmp_path, capsys):
    # `pirl train policy=P --run-dir D iterations=3` said "unrecognized arguments: iterations=3"
    import yaml

    rc = pirl(["train", f"policy={files / 'policy.safetensors'}", "--run-dir", str(tmp_path / "r"), "iterations=3",
               "--print-config", "num_groups=5", "iterations=4"])
    assert rc == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["iterations"] == 4 and cfg["num_groups"] == 5 and cfg["policy"] == str(files / "policy.safetensors")


@pytest.mark.parametrize("command", ["train", "eval"])
@pytest.mark.parametrize("setting,words", [
    ("device=gpu", ["device='gpu' is not a torch device", "cuda:N"]),
    ("device=cuda:99", ["device=cuda:99:"]),  # no CUDA here, or not 100 GPUs: either way named, not an AssertionError
])
def test_a_device_the_machine_lacks_is_named(files, tmp_path, capsys, command, setting, words):
    run = tmp_path / "dev"
    rc = pirl([command, "--run-dir", str(run), f"policy={files / 'policy.safetensors'}", *PM, setting])
    _one_line_error(capsys, rc, *words)
    assert not run.exists()


def test_negative_threads_and_wandb_without_a_key_are_named(files, tmp_path, capsys, monkeypatch):
    rc = pirl(["train", "--run-dir", str(tmp_path / "t"), f"policy={files / 'policy.safetensors'}", *PM, "threads=-1"])
    _one_line_error(capsys, rc, "threads must be >= 0")
    wandb = pytest.importorskip("wandb")

    def no_key(**kw):
        raise wandb.errors.UsageError("No API key configured. Use `wandb login` to log in.")

    monkeypatch.setattr(wandb, "init", no_key)
    run = tmp_path / "w"
    rc = pirl(["train", "--run-dir", str(run), f"policy={files / 'policy.safetensors'}", *PM, "logger=wandb",
               "iterations=1", "videos_per_task=0"])
    _one_line_error(capsys, rc, "W&B could not start (UsageError: No API key", "wandb login", "WANDB_MODE=offline")
    assert not run.exists(), "a run that failed at start leaves no directory behind"


@pytest.mark.parametrize("setting,words", [
    ("lr=-1", ["lr > 0"]),  # was torch's ValueError traceback
    ("weight_decay=-1", ["weight_decay >= 0"]),
    ("grad_clip=0", ["grad_clip > 0"]),  # would have scaled every gradient to zero
    ("denoise_steps=0", ["denoise_steps must be >= 1"]),
    ("hidden=0", ["hidden must be >= 1"]),  # trained and saved a zero-width network
])
def test_sft_settings_that_cannot_train_are_refused_when_read(files, tmp_path, capsys, setting, words):
    run = tmp_path / "sft"
    rc = pirl(["sft", "--run-dir", str(run), f"dataset={files / 'dataset'}", "steps=2", setting])
    _one_line_error(capsys, rc, "SFTConfig:", *words)
    assert not run.exists()


@pytest.mark.parametrize("setting,words", [
    ("device=gpu", ["device='gpu' is not a torch device", "cuda:N"]),
    ("device=cuda:99", ["device=cuda:99:"]),  # refused before the dataset is decoded, not by torch mid-run
])
def test_sft_on_a_device_the_machine_lacks_is_named(files, tmp_path, capsys, setting, words):
    run = tmp_path / "sft"
    rc = pirl(["sft", "--run-dir", str(run), f"dataset={files / 'dataset'}", "steps=2", setting])
    _one_line_error(capsys, rc, *words)
    assert not run.exists()


def test_an_unknown_camera_is_named_and_leaves_no_run_behind(files, tmp_path, capsys):
    pytest.importorskip("metaworld")
    words = ("unknown camera 'bogus'", "corner2")
    run = tmp_path / "cam-collect"
    rc = pirl(["collect", "--run-dir", str(run), "tasks=reach-v3", "episodes_per_task=1", "camera=bogus"])
    _one_line_error(capsys, rc, *words)
    run = tmp_path / "cam-train"  # fails at the first evaluation, after the loggers started: still nothing to keep
    rc = pirl(["train", "--run-dir", str(run), f"policy={files / 'metaworld.safetensors'}", "env.suite=metaworld",
               "env.tasks=[reach-v3]", "env.camera=bogus", "iterations=1", "videos_per_task=0"])
    _one_line_error(capsys, rc, *words)
    assert not run.exists()


def test_a_hub_dataset_id_is_fetched_and_offline_names_the_download(files, tmp_path, capsys, monkeypatch):
    import pirl.data.reader as reader

    asked = []

    def fake_snapshot(repo_id, *, repo_type="model", allow_patterns=None):  # the hub, answered from disk
        asked.append((repo_id, repo_type))
        return files / "dataset"

    monkeypatch.setattr(reader, "snapshot", fake_snapshot)
    run = tmp_path / "sft"
    assert pirl(["sft", "--run-dir", str(run), "dataset=someorg/some_demos", "steps=2", "eval_every=-1"]) == 0
    assert asked == [("someorg/some_demos", "dataset")] and (run / "final.safetensors").is_file()
    monkeypatch.undo()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rc = pirl(["sft", "--run-dir", str(tmp_path / "off"), "dataset=someorg/not_here", "steps=2"])
    _one_line_error(capsys, rc, "could not fetch the dataset 'someorg/not_here'",
                    "huggingface-cli download --repo-type dataset someorg/not_here")


def test_eval_checkpoint_takes_a_run_directory_as_its_help_says(files, tmp_path, capsys):
    # `pirl eval --checkpoint RUN` said "RUN is a run directory: pass a policy file"; `pirl demo --checkpoint` was unused
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(files / "policy.safetensors", run / "policy_latest.safetensors")
    assert pirl(["eval", "--checkpoint", str(run), *PM, "--print-config"]) == 0
    assert f"policy: {run / 'policy_latest.safetensors'}" in capsys.readouterr().out
    shutil.copy(files / "policy.safetensors", run / "policy_best.safetensors")
    assert pirl(["eval", "--checkpoint", str(run), *PM, "--print-config"]) == 0
    assert f"policy: {run / 'policy_best.safetensors'}" in capsys.readouterr().out
    rc = pirl(["eval", "--checkpoint", str(run), f"policy={files / 'policy.safetensors'}", *PM])
    _one_line_error(capsys, rc, "--checkpoint and policy= both name the policy")
    rc = pirl(["demo", "--checkpoint", str(run)])
    _one_line_error(capsys, rc, "unrecognized argument --checkpoint")


def test_a_run_resumes_from_any_directory_and_without_its_source_policy(files, tmp_path, capsys, monkeypatch):
    # config.yaml kept `policy=p.safetensors` as typed, so a resume from elsewhere (or after the SFT file moved) failed
    from safetensors.torch import load_file

    monkeypatch.chdir(tmp_path)
    shutil.copy(files / "policy.safetensors", tmp_path / "p.safetensors")
    common = ["policy=p.safetensors", *PM, "num_groups=2", "checkpoint_every=1", "eval_every=1000",
              "eval_episodes_per_task=1", "eval_num_envs=1", "videos_per_task=0"]
    assert pirl(["train", "--run-dir", "whole", *common, "iterations=4"]) == 0
    assert pirl(["train", "--run-dir", "part", *common, "iterations=2"]) == 0
    assert "policy: " + str(tmp_path / "p.safetensors") in (tmp_path / "part" / "config.yaml").read_text()
    (tmp_path / "p.safetensors").rename(tmp_path / "moved.safetensors")
    monkeypatch.chdir(files)
    capsys.readouterr()
    assert pirl(["train", "--resume", str(tmp_path / "part"), "iterations=4"]) == 0
    assert "is gone (moved or deleted): the run's policy_latest.safetensors gives" in capsys.readouterr().out
    whole, part = (load_file(str(tmp_path / r / "policy_latest.safetensors")) for r in ("whole", "part"))
    assert whole.keys() == part.keys() and all(torch.equal(whole[k], part[k]) for k in whole)


def test_eval_scores_the_stochastic_policy_when_asked(files, tmp_path, capsys, monkeypatch):
    """sampler=flow_sde evaluates with Flow-SDE at the given noise level and says so in eval.json and the table;
    sampler=flow_noise on a policy without a noise head is refused naming it; the default stays the ODE."""
    import json

    import pirl.train.evaluate as evaluate

    used = []
    real = evaluate.evaluate_policy

    def spy(policy, env, contexts, sampler=None, **kw):
        used.append(sampler)
        return real(policy, env, contexts, sampler, **kw)

    monkeypatch.setattr(evaluate, "evaluate_policy", spy)
    for name, keys in (("ode", []), ("sde", ["sampler=flow_sde", "noise_level=0.8"])):
        assert pirl(["eval", "--run-dir", str(tmp_path / name), f"policy={files / 'policy.safetensors'}", *PM,
                     "episodes_per_task=2", "num_envs=2", *keys]) == 0
    assert [(s.method, s.noise_level) for s in used] == [("ode", 0.5), ("flow_sde", 0.8)]
    assert json.loads((tmp_path / "sde" / "eval.json").read_text())["sampler"] == "flow_sde, K=4, a=0.8"
    assert "sampler: flow_sde, K=4, a=0.8" in (tmp_path / "sde" / "eval.md").read_text()
    assert json.loads((tmp_path / "ode" / "eval.json").read_text())["sampler"] == "ode, K=4"
    capsys.readouterr()
    rc = pirl(["eval", "--run-dir", str(tmp_path / "fn"), f"policy={files / 'policy.safetensors'}", *PM,
               "sampler=flow_noise"])
    _one_line_error(capsys, rc, "noise head", "sampler=flow_sde")
    assert not (tmp_path / "fn").exists()
    rc = pirl(["eval", "--run-dir", str(tmp_path / "big"), f"policy={files / 'policy.safetensors'}", *PM,
               "sampler=flow_sde", "noise_level=1.5"])
    _one_line_error(capsys, rc, "noise_level must be < sqrt(2)")


@pytest.mark.parametrize("kind", ["regression", "tokenized"])
def test_eval_of_a_head_policy_names_its_own_sampling(tmp_path, capsys, kind):
    """A head samples its density, not a flow chain: the report says so instead of "K=4, a=0.5", and Flow-only
    settings are refused by name."""
    import json

    from pirl.policies import make_regression_policy, make_tokenized_policy
    make = make_regression_policy if kind == "regression" else make_tokenized_policy
    path = save_policy(make(4, 2, action_horizon=4, hidden=16, depth=1), tmp_path / f"{kind}.safetensors")
    for name, keys, label in (("ode", [], "greedy"), ("sde", ["sampler=flow_sde"], "sampled from its density")):
        assert pirl(["eval", "--run-dir", str(tmp_path / name), f"policy={path}", *PM, "episodes_per_task=2",
                     "num_envs=2", *keys]) == 0
        assert json.loads((tmp_path / name / "eval.json").read_text())["sampler"] == f"{kind} head, {label}"
        assert f"{kind} head, {label}" in (tmp_path / name / "eval.md").read_text()
    for keys, named in ((["sampler=flow_noise"], "sampler=flow_noise"),
                        (["sampler=flow_sde", "noise_level=0.8"], "noise_level=0.8")):
        capsys.readouterr()
        rc = pirl(["eval", "--run-dir", str(tmp_path / "bad"), f"policy={path}", *PM, *keys])
        _one_line_error(capsys, rc, named, f"a {kind} head policy", "sampler=flow_sde")
        assert not (tmp_path / "bad").exists()
