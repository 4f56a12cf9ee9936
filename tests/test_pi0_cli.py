"""π0 / π0.5 through the whole product: collect (images) -> sft policy=pi0 -> train (Flow-SDE, Flow-Noise) -> eval ->
resume; LeRobot / openpi directories as policy=DIR; the LeRobot export; the LIBERO recipe's transforms; refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("transformers")
pytest.importorskip("metaworld")

import pirl.train.rl as rl  # noqa: E402
from pirl.cli.main import main as pirl  # noqa: E402
from pirl.flow import SamplerConfig  # noqa: E402
from pirl.policies.io import PolicyLoadError, load_policy, save_policy  # noqa: E402
from pirl.policies.options import Pi0Options  # noqa: E402
from pirl.policies.pi0 import Pi0Policy  # noqa: E402
from pirl.policies.pi0.checkpoint import save_lerobot, save_openpi  # noqa: E402
from pirl.policies.pi0.configuration import DEFAULT_CAMERAS, new_config  # noqa: E402

ENV = ["env.tasks=reach-v3", "env.camera=corner2", "env.image_size=32", "env.chunk=4", "env.max_episode_steps=40"]
TRAIN = ["num_groups=2", "eval_every=2", "checkpoint_every=1", "eval_episodes_per_task=2", "eval_num_envs=2",
         "videos_per_task=0"]


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def sft_policies(tmp_path_factory) -> dict[str, Path]:
    """A camera dataset of reach-v3 and one tiny π0 and π0.5 trained on it through the CLI."""
    root = tmp_path_factory.mktemp("pi0")
    data = root / "data"
    assert pirl(["collect", "--run-dir", str(data), "tasks=reach-v3", "episodes_per_task=2", "num_envs=1",
                 "max_episode_steps=60", "camera=corner2", "image_size=32"]) == 0
    out = {}
    for variant in ("pi0", "pi05"):
        assert pirl(["sft", "--run-dir", str(root / variant), f"dataset={data}", f"policy={variant}", "pi0.size=tiny",
                     "steps=20", "batch_size=16", "eval_every=-1", "action_horizon=4", "chunk=4"]) == 0
        out[variant] = root / variant / "final.safetensors"
    return out


def _obs(state_dim: int = 39, batch: int = 2, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {"image": rng.integers(0, 256, (batch, 32, 32, 3), dtype=np.uint8),
            "state": rng.normal(size=(batch, state_dim)).astype(np.float32),
            "instruction": np.array(["reach the goal", "push the puck"][:batch], dtype=object)}


def _actions(policy, obs: dict, method: str = "ode") -> torch.Tensor:
    return policy.act(policy.prepare(obs), SamplerConfig(method=method, steps=3),
                      generator=torch.Generator().manual_seed(0)).actions


@pytest.mark.parametrize("method", ["flow_sde", "flow_noise"])
def test_sft_train_eval_and_lerobot_export(sft_policies, tmp_path, method, capsys):
    run = tmp_path / "rl"
    assert pirl(["train", "--run-dir", str(run), f"policy={sft_policies['pi0']}", *ENV, *TRAIN, "iterations=2",
                 f"sampler.method={method}"]) == 0
    out = capsys.readouterr().out
    assert "pirl pi0 policy file" in out and "π0 memory" in out  # the detected format and the memory estimate
    summary = json.loads((run / "summary.json").read_text())
    assert summary["iterations"] == 2 and summary["method"] == method
    # the export after RL is a LeRobot directory that loads back to the same actions
    export = run / "policy_latest_lerobot"
    assert {"config.json", "model.safetensors", "policy_preprocessor.json", "policy_postprocessor.json"} <= {
        p.name for p in export.iterdir()}
    ours, _ = load_policy(run / "policy_latest.safetensors")
    theirs, _ = load_policy(export)
    assert torch.equal(_actions(ours, _obs()), _actions(theirs, _obs()))
    for source in (run / "policy_latest.safetensors", export):
        ev = tmp_path / f"eval-{source.name}"
        assert pirl(["eval", "--run-dir", str(ev), f"policy={source}", *ENV, "episodes_per_task=2", "num_envs=2"]) == 0
    a, b = (json.loads((tmp_path / f"eval-{s}" / "eval.json").read_text()) for s in
            ("policy_latest.safetensors", "policy_latest_lerobot"))
    assert a["per_task"] == b["per_task"]


def test_resume_ends_bitwise_equal_to_an_uninterrupted_run(sft_policies, tmp_path, monkeypatch):
    args = [f"policy={sft_policies['pi0']}", *ENV, *TRAIN, "iterations=3", "sampler.method=flow_noise"]
    ref, run = tmp_path / "ref", tmp_path / "run"
    assert pirl(["train", "--run-dir", str(ref), *args]) == 0

    stop = {"now": False}

    class StopAfterTwo:  # what Ctrl-C does, at a known iteration
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        @property
        def requested(self):
            return stop["now"]

    real_step = rl.Trainer.step

    def step(self):
        metrics = real_step(self)
        stop["now"] = self.iteration >= 2
        return metrics

    monkeypatch.setattr(rl, "GracefulStop", StopAfterTwo)
    monkeypatch.setattr(rl.Trainer, "step", step)
    assert pirl(["train", "--run-dir", str(run), *args]) == 130
    monkeypatch.undo()
    assert pirl(["train", "--resume", str(run)]) == 0
    a, b = load_file(str(ref / "policy_latest.safetensors")), load_file(str(run / "policy_latest.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    def metrics(path):
        rows = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if not k.startswith("perf/") and k != "wall_time"} for r in rows]

    assert metrics(ref) == metrics(run)


def test_pi05_through_the_chain(sft_policies, tmp_path):
    run = tmp_path / "rl"
    assert pirl(["train", "--run-dir", str(run), f"policy={sft_policies['pi05']}", *ENV, *TRAIN, "iterations=1"]) == 0
    policy, _ = load_policy(run / "policy_latest_lerobot")
    assert policy.cfg.variant == "pi05" and policy.cfg.state_in_prompt
    assert pirl(["eval", "--run-dir", str(tmp_path / "ev"), f"policy={run / 'policy_latest_lerobot'}", *ENV,
                 "episodes_per_task=1", "num_envs=1"]) == 0


@pytest.mark.parametrize("variant", ["pi0", "pi05"])
def test_lerobot_and_openpi_directories_load_through_policy_dir(tmp_path, variant):
    torch.manual_seed(0)
    cfg = new_config(variant, "tiny", state_dim=39, action_dim=4, action_horizon=4, cameras=DEFAULT_CAMERAS,
                     camera_keys=("image", "", ""))
    reference = Pi0Policy(cfg)
    for norm in (reference.state_norm, reference.action_norm):
        norm.set_stats({"mean": torch.randn(norm.dim), "std": torch.rand(norm.dim) + 0.5,
                        "q01": -1 - torch.rand(norm.dim), "q99": 1 + torch.rand(norm.dim)})
    save_lerobot(reference, tmp_path / "lerobot")
    save_openpi(reference, tmp_path / "openpi")
    want = _actions(reference, _obs())
    lerobot, _ = load_policy(tmp_path / "lerobot")
    opts = Pi0Options(variant=variant, size="tiny", action_horizon=4, tokenizer="hash",
                      cameras={"base_0_rgb": "image", "left_wrist_0_rgb": ""})
    openpi, _ = load_policy(str(tmp_path / "openpi"), pi0=opts)
    assert torch.equal(_actions(lerobot, _obs()), want) and torch.equal(_actions(openpi, _obs()), want)
    # and through the command line, which prints the detected format
    for name, extra in (("lerobot", []), ("openpi", [f"pi0.variant={variant}", "pi0.size=tiny", "pi0.action_horizon=4",
                                                    "pi0.tokenizer=hash", "pi0.cameras={left_wrist_0_rgb: ''}"])):
        assert pirl(["eval", "--run-dir", str(tmp_path / f"ev-{name}"), f"policy={tmp_path / name}", *ENV, *extra,
                     "episodes_per_task=1", "num_envs=1"]) == 0


def test_delta_actions_and_camera_mapping_by_hand():
    torch.manual_seed(0)
    cfg = new_config("pi0", "tiny", state_dim=8, action_dim=7, action_horizon=4, cameras=DEFAULT_CAMERAS,
                     camera_keys=("image", "wrist_image", ""), delta_action_dims=6)
    policy = Pi0Policy(cfg)
    rng = np.random.default_rng(0)
    obs = {"image": rng.integers(0, 256, (2, 28, 28, 3), dtype=np.uint8),
           "wrist_image": rng.integers(0, 256, (2, 28, 28, 3), dtype=np.uint8),
           "state": np.arange(16, dtype=np.float32).reshape(2, 8), "instruction": np.array(["a", "b"], dtype=object)}
    prepared = policy.prepare(obs)
    # base <- image, left wrist <- wrist_image, right wrist: a masked black image; pixels to [-1, 1]
    torch.testing.assert_close(prepared["images"][0, 0, :, 3, 5], torch.tensor(obs["image"][0, 3, 5] / 255 * 2 - 1,
                                                                               dtype=torch.float32))
    torch.testing.assert_close(prepared["images"][1, 1, :, 0, 0],
                               torch.tensor(obs["wrist_image"][1, 0, 0] / 255 * 2 - 1, dtype=torch.float32))
    assert prepared["image_masks"].tolist() == [[True, True]] * 2  # the padding camera is left out of the prefix
    policy.skip_padding_cameras = False
    fed = policy.prepare(obs)  # or fed as a masked black image
    assert fed["image_masks"].tolist() == [[True, True, False]] * 2 and (fed["images"][:, 2] == -1).all()
    policy.skip_padding_cameras = True
    # delta -> absolute: dims 0-5 get state[:6] added after unnormalising, the gripper (dim 6) stays absolute
    deltas = torch.full((2, 4, 7), 0.5)
    absolute = policy.absolute_actions(deltas, prepared)
    want = deltas.clone()
    want[0, :, :6] += torch.tensor([0.0, 1, 2, 3, 4, 5])
    want[1, :, :6] += torch.tensor([8.0, 9, 10, 11, 12, 13])
    torch.testing.assert_close(absolute, want)
    torch.testing.assert_close(policy.delta_actions(absolute, prepared), deltas)
    # act returns absolute actions: the ODE's output plus the state
    out = policy.act(prepared, SamplerConfig(method="ode", steps=2), generator=torch.Generator().manual_seed(0))
    raw = policy.unnormalize_actions(out.chain.actions)
    torch.testing.assert_close(out.actions[..., :6] - raw[..., :6], torch.tensor(obs["state"][:, None, :6]).expand(2, 4, 6))
    torch.testing.assert_close(out.actions[..., 6], raw[..., 6])


def test_missing_camera_and_missing_tokenizer_are_refused(tmp_path):
    torch.manual_seed(0)
    cfg = new_config("pi0", "tiny", state_dim=39, action_dim=4, action_horizon=4, cameras=DEFAULT_CAMERAS)
    save_openpi(Pi0Policy(cfg), tmp_path / "openpi")
    opts = Pi0Options(variant="pi0", size="tiny", action_horizon=4)
    with pytest.raises(PolicyLoadError, match="tokenizer"):
        load_policy(str(tmp_path / "openpi"), pi0=opts)
    # openpi's LIBERO mapping wants a wrist camera; MetaWorld has none
    policy, _ = load_policy(str(tmp_path / "openpi"), pi0=Pi0Options(variant="pi0", size="tiny", action_horizon=4,
                                                                       tokenizer="hash"))
    with pytest.raises(ValueError, match="left_wrist_0_rgb.*wrist_image"):
        policy.prepare(_obs())
    with pytest.raises(ValueError, match="does not have"):
        Pi0Options(cameras={"head_cam": "image"}).config_overrides(cfg.cameras, ())


def test_a_horizon_longer_than_the_trained_one_is_named(tmp_path, capsys):
    """A pirl π0 file read with a longer pi0.action_horizon loads (the weights fit any horizon), with a line saying
    which actions were never trained; its own or a shorter horizon says nothing."""
    torch.manual_seed(0)
    cfg = new_config("pi0", "tiny", state_dim=39, action_dim=4, action_horizon=4, cameras=DEFAULT_CAMERAS,
                     tokenizer="hash")
    save_policy(Pi0Policy(cfg), tmp_path / "p.safetensors")
    for horizon, said in ((4, False), (2, False), (8, True)):
        capsys.readouterr()
        policy, _ = load_policy(str(tmp_path / "p.safetensors"), pi0=Pi0Options(action_horizon=horizon))
        assert policy.action_horizon == horizon
        out = capsys.readouterr().out
        assert ("actions 5..8 of each chunk are untrained" in out) == said, out


@pytest.mark.parametrize("setting,words", [
    ("pi0.cameras={nocam: image}", ["pi0.cameras names ['nocam']", "its cameras"]),  # were tracebacks
    ("pi0.tokenizer=/nonexistent.model", ["no tokenizer at '/nonexistent.model'", "set pi0.tokenizer"]),
    ("pi0.delta_action_dims=99", ["the pi0 settings do not fit", "delta_action_dims=99"]),
])
def test_pi0_settings_a_checkpoint_cannot_take_are_one_line(sft_policies, tmp_path, capsys, setting, words):
    run = tmp_path / "eval"
    assert pirl(["eval", "--run-dir", str(run), f"policy={sft_policies['pi0']}", setting]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("pirl eval: error:") and all(w in err for w in words), err
    assert not run.exists()


@pytest.mark.parametrize("fmt,damage,words", [
    ("lerobot", "truncate model.safetensors", "damaged checkpoint (SafetensorError"),
    ("lerobot", "remove policy_preprocessor_step_2_normalizer_processor.safetensors", "No such file"),
    ("lerobot", "remove policy_preprocessor.json", "no normalisation statistics for 'observation.state'"),
    ("openpi", "truncate model.safetensors", "damaged checkpoint (SafetensorError"),
])
def test_damaged_checkpoint_directories_are_refused_in_one_line(tmp_path, capsys, fmt, damage, words):
    torch.manual_seed(0)
    cfg = new_config("pi0", "tiny", state_dim=39, action_dim=4, action_horizon=4, cameras=DEFAULT_CAMERAS,
                     camera_keys=("image", "", ""))
    d = tmp_path / fmt
    (save_lerobot if fmt == "lerobot" else save_openpi)(Pi0Policy(cfg), d)
    verb, name = damage.split(" ", 1)
    if verb == "truncate":
        (d / name).write_bytes((d / name).read_bytes()[:1000])
    else:
        (d / name).unlink()
    extra = [] if fmt == "lerobot" else ["pi0.variant=pi0", "pi0.size=tiny", "pi0.action_horizon=4", "pi0.tokenizer=hash"]
    run = tmp_path / "ev"
    assert pirl(["eval", "--run-dir", str(run), f"policy={d}", *ENV, *extra, "episodes_per_task=1", "num_envs=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err and str(d) in err, err
    assert not run.exists()


def _bf16_rollout(method: str, rows: int = 12):
    """A tiny π0 with bf16 weights that acted on one observation at a time (batch-1 inference in bf16)."""
    from pirl.algorithms import RolloutBatch
    from pirl.flow import Chain

    torch.manual_seed(0)
    cfg = new_config("pi0", "tiny", state_dim=39, action_dim=4, action_horizon=4, cameras=("base_0_rgb",),
                     camera_keys=("image",), tokenizer="hash")
    policy = Pi0Policy(cfg)
    policy.attach_value_head(policy.value_feature_dim)
    policy.attach_noise_head(policy.feature_dim, 0.2, 0.4)
    policy.to_bf16()
    policy.eval()
    obs = policy.prepare(_obs(batch=2) | {"image": np.random.default_rng(1).integers(0, 256, (rows, 32, 32, 3), dtype=np.uint8),
                                          "state": np.random.default_rng(2).normal(size=(rows, 39)).astype(np.float32),
                                          "instruction": np.array(["reach the goal"] * rows, dtype=object)})
    sampler = SamplerConfig(method=method, steps=4, noise_level=0.5, logp_steps=2)
    g = torch.Generator().manual_seed(0)
    outs = [policy.act({k: v[i : i + 1] for k, v in obs.items()}, sampler, generator=g) for i in range(rows)]
    zeros = torch.zeros(rows)
    return policy, RolloutBatch(obs, Chain.cat([o.chain for o in outs]), torch.cat([o.log_prob for o in outs]),
                                torch.cat([o.value for o in outs]), zeros, zeros, zeros.long(), zeros.long())


@pytest.mark.parametrize("method", ["flow_sde", "flow_noise"])
def test_bf16_ratio_check_tolerates_rescoring_and_catches_a_shifted_grid(method, monkeypatch):
    """bf16 weights (the GPU recipe): batch-1 rollouts re-scored in other batch sizes and orders pass the ratio-1
    check (on an H200 the old float32 bound failed at |dlogp| = 0.012); a shifted time grid still fails it."""
    from pirl.algorithms import PPOConfig, PPOUpdater
    from pirl.algorithms.ppo import RatioCheckError
    from pirl.flow import sampler as flow_sampler

    policy, batch = _bf16_rollout(method)
    assert policy.velocity_eps() == torch.finfo(torch.bfloat16).eps
    updater = PPOUpdater(policy, PPOConfig())
    g = torch.Generator().manual_seed(0)
    for size in (1, 5, len(batch)):
        perm = torch.randperm(len(batch), generator=g)
        for s in range(0, len(batch), size):
            metrics = updater.check_ratio(batch.index(perm[s : s + size]))
            assert metrics["policy/ratio_check"] <= metrics["policy/ratio_check_tol"]
    grid = flow_sampler.time_grid
    monkeypatch.setattr(flow_sampler, "time_grid", lambda steps, device=None: torch.cat([grid(steps, device)[1:],
                                                                                           grid(steps, device)[-1:]]))
    with pytest.raises(RatioCheckError):
        updater.check_ratio(batch)


def test_memory_estimate_and_refusal(monkeypatch):
    """The estimate counts what trains (expert-only < everything; checkpointing shrinks activations), and a run
    that cannot fit the GPU's free memory is refused naming the settings that shrink it."""
    from types import SimpleNamespace

    from pirl.algorithms import PPOConfig
    from pirl.policies.pi0.memory import GPUMemoryError, check_fits, estimate

    torch.manual_seed(0)
    policy = Pi0Policy(new_config("pi0", "tiny", state_dim=8, action_dim=7, action_horizon=10, cameras=DEFAULT_CAMERAS))
    n = sum(p.numel() for p in policy.parameters())
    policy.set_trainable("all")
    full = estimate(policy, micro_batch=8, rollout_batch=16)
    assert full.weights == 4 * n and full.gradients == 4 * n and full.optimizer == 8 * n
    assert full.activations_checkpointed < full.activations
    policy.set_trainable("expert")
    expert = estimate(policy, micro_batch=8, rollout_batch=16)
    assert expert.gradients < full.gradients / 2 and expert.activations < full.activations
    cfg = SimpleNamespace(ppo=PPOConfig(minibatch_size=8), num_groups=16, group_size=1, device="cuda",
                          pi0=Pi0Options(train_scope="expert"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (1024, 80 * 2**30))
    with pytest.raises(GPUMemoryError, match="gradient_checkpointing=true.*micro_batch_size"):
        check_fits(policy, cfg, log=None)


def test_velocity_passes_per_chain_follow_the_sampler():
    """Re-scoring a chain costs one velocity pass where one transition is stochastic, K where all are."""
    from pirl.policies.pi0.memory import velocity_passes

    assert velocity_passes(SamplerConfig(method="flow_sde", steps=5)) == 1
    assert velocity_passes(SamplerConfig(method="flow_sde", steps=5, sde_steps="all")) == 5
    assert velocity_passes(SamplerConfig(method="flow_noise", steps=5)) == 5
    assert velocity_passes(SamplerConfig(method="flow_noise", steps=5, noise_steps="one")) == 1


def test_a_hub_id_offline_names_the_files_to_place(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PolicyLoadError, match="Offline.*config.json, model.safetensors"):
        load_policy("lerobot/pi0_libero_missing_here")


def test_a_lerobot_config_json_wins_over_a_preset(tmp_path, capsys):
    """PI0.md: a LeRobot copy's config.json may differ from openpi's recipe; what it states is kept (and said)."""
    torch.manual_seed(0)
    cfg = new_config("pi05", "tiny", state_dim=8, action_dim=7, action_horizon=4, cameras=DEFAULT_CAMERAS,
                     tokenizer="hash")
    save_lerobot(Pi0Policy(cfg), tmp_path / "lerobot")
    policy, _ = load_policy(tmp_path / "lerobot", pi0=Pi0Options(action_horizon=10, state_in_prompt=False))
    assert policy.cfg.action_horizon == 4 and not policy.cfg.state_in_prompt  # config.json says nothing of the state
    assert "chunk_size=4 kept over the configured action_horizon=10" in capsys.readouterr().out


def _saved_bytes(policy, obs, chain) -> int:
    """Bytes the autograd graph keeps for the backward pass of one evaluate (unique storages), then backward."""
    seen: dict[int, int] = {}

    def pack(t):
        if t.device.type == "cpu" and t.untyped_storage().nbytes():
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = policy.evaluate(obs, chain, with_value=False)
    out.log_prob.sum().backward()
    params = {p.untyped_storage().data_ptr() for p in policy.parameters()}
    return sum(n for ptr, n in seen.items() if ptr not in params)


@pytest.mark.parametrize("scope", ["expert", "all"])
def test_gradient_checkpointing_holds_in_eval_mode(scope):
    """RL re-scores with the policy in eval mode (no dropout); checkpointing must still drop the layers' activations
    (a train-mode gate turned it off: 76 GB on an H200 where 26 GB were estimated), and the estimate must cover
    what the graph really keeps."""
    from pirl.policies.pi0.memory import estimate

    torch.manual_seed(0)
    cfg = new_config("pi0", "small", state_dim=39, action_dim=4, action_horizon=8, cameras=DEFAULT_CAMERAS,
                     camera_keys=("image", "image", ""), tokenizer="hash")
    policy = Pi0Policy(cfg).eval()
    policy.set_trainable(scope)
    obs = _obs(batch=2)
    obs["image"] = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    obs = policy.prepare(obs)
    chain = policy.act(obs, SamplerConfig(method="flow_sde", steps=3, noise_level=0.5),
                       generator=torch.Generator().manual_seed(0)).chain
    plain = _saved_bytes(policy, obs, chain)
    grads_plain = [None if p.grad is None else p.grad.clone() for p in policy.parameters()]
    policy.gradient_checkpointing_enable()
    policy.zero_grad()
    kept = _saved_bytes(policy, obs, chain)
    assert not policy.training
    assert kept < plain / 2, (kept, plain)
    grads = [p.grad for p in policy.parameters()]
    assert any(g is not None for g in grads)
    assert all((a is None and b is None) or torch.allclose(a, b, atol=1e-5, rtol=1e-4)
               for a, b in zip(grads, grads_plain))  # the same gradients
    est = estimate(policy, micro_batch=2, rollout_batch=2)  # hybrid Flow-SDE: one velocity pass
    # the estimate covers what the graph keeps, with and without checkpointing, and is not wildly above it
    assert kept <= est.activations_checkpointed and plain <= est.activations, (kept, plain, est)
    assert est.activations <= 3 * plain and est.activations_checkpointed <= 3 * kept, (kept, plain, est)


@pytest.mark.parametrize("variant", ["pi0", "pi05"])
def test_padding_cameras_left_out_of_the_prefix_change_nothing(variant):
    """LIBERO's padding camera ('' in camera_keys) is left out of the prefix instead of fed as a masked black
    image: the same actions, log-probs and values (its tokens were excluded from attention and positions)."""
    torch.manual_seed(0)
    cfg = new_config(variant, "tiny", state_dim=39, action_dim=4, action_horizon=4, cameras=DEFAULT_CAMERAS,
                     camera_keys=("image", "", "image"), tokenizer="hash")
    policy = Pi0Policy(cfg).eval()
    policy.attach_value_head(policy.value_feature_dim)
    assert policy.fed_cameras == ("base_0_rgb", "right_wrist_0_rgb")
    obs = _obs()
    sampler = SamplerConfig(method="flow_sde", steps=3, noise_level=0.5)
    fast = policy.act(policy.prepare(obs), sampler, generator=torch.Generator().manual_seed(0))
    assert policy.prepare(obs)["images"].shape[1] == 2
    policy.skip_padding_cameras = False
    full_obs = policy.prepare(obs)
    assert full_obs["images"].shape[1] == 3 and not full_obs["image_masks"][:, 1].any()
    full = policy.act(full_obs, sampler, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(fast.actions, full.actions, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast.log_prob, full.log_prob, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(fast.value, full.value, atol=1e-5, rtol=1e-5)
