"""SFT on a handful of demos: the loss falls, checkpoints round-trip, the policies run in the env."""

import numpy as np
import pytest
import torch

import pirl.envs  # noqa: F401  (sets MUJOCO_GL before metaworld imports mujoco)

pytest.importorskip("metaworld")

from pirl.data.collect import CollectConfig, collect  # noqa: E402
from pirl.data.reader import ChunkDataset, load_dataset  # noqa: E402
from pirl.envs.base import Context  # noqa: E402
from pirl.envs.metaworld import make_metaworld  # noqa: E402
from pirl.flow import SamplerConfig  # noqa: E402
from pirl.policies.vla import make_vla_policy, tokenize  # noqa: E402
from pirl.policies.io import load_policy, save_policy  # noqa: E402
from pirl.train.sft import SFTConfig, sft  # noqa: E402

torch.set_num_threads(1)  # the CI machine has 2 cores


@pytest.fixture(scope="module")
def demos(tmp_path_factory):
    root = tmp_path_factory.mktemp("sft") / "demos"
    collect(CollectConfig(tasks=("reach-v3", "button-press-topdown-v3"), episodes_per_task=3, camera="corner2", image_size=32, num_envs=2), root)
    return root


def test_mlp_sft_reduces_loss_and_runs_in_env(demos, tmp_path):
    cfg = SFTConfig(dataset=str(demos), steps=300, batch_size=64, log_every=50, eval_episodes_per_task=1,
                    eval_num_envs=2, eval_max_episode_steps=24, out_dir=str(tmp_path / "ckpt"))  # fmt: skip
    res = sft(cfg, log=None)
    first, last = res.losses[0][1], res.losses[-1][1]
    assert last < 0.7 * first, f"flow-matching loss did not fall: {res.losses}"
    assert res.evals and set(res.evals[-1]["per_task"]) == {"reach-v3", "button-press-topdown-v3"}
    policy, extra = load_policy(res.checkpoint)
    assert extra["task_names"] == ["reach-v3", "button-press-topdown-v3"]
    for key, value in res.policy.state_dict().items():  # weights and normaliser stats travel together
        torch.testing.assert_close(policy.state_dict()[key], value)
    assert policy.action_norm.std.abs().sum() > 0 and not torch.allclose(policy.state_norm.mean, torch.zeros(39))
    assert policy.cfg.state_clip is None and policy.state_norm.clip is None  # SFT's default: unbounded
    with make_metaworld(tasks=tuple(extra["task_names"]), num_envs=2, chunk=4) as env:
        obs = env.reset([Context(0, 1_000_000), Context(1, 1_000_000)])
        out = policy.act(policy.prepare(obs), SamplerConfig(method="flow_sde", steps=4))
        res_step = env.step(out.actions.numpy())
        assert res_step.info["episode_length"].tolist() == [4, 4]


@pytest.mark.parametrize("kind, loss", [("regression", "l1"), ("regression", "mse"), ("regression", "flow"),
                                        ("tokenized", "ce"), ("tokenized", "flow")])
def test_head_policies_train_with_the_same_trainer(demos, tmp_path, kind, loss):
    losses = {"regression_loss": loss} if kind == "regression" else {"tokenized_loss": loss}
    cfg = SFTConfig(dataset=str(demos), policy=kind, **losses, state_clip=5.0, steps=150, batch_size=64, log_every=50, eval_episodes_per_task=1,
                    eval_num_envs=2, eval_max_episode_steps=8, hidden=64, depth=1, scale_fit_steps=50,
                    out_dir=str(tmp_path / kind))  # fmt: skip
    res = sft(cfg, log=None)
    assert res.losses[-1][1] < res.losses[0][1], res.losses
    assert set(res.evals[-1]["per_task"]) == {"reach-v3", "button-press-topdown-v3"}
    policy, _ = load_policy(res.checkpoint)
    assert type(policy) is type(res.policy) and policy.state_norm.clip == 5.0
    for key, value in res.policy.state_dict().items():
        torch.testing.assert_close(policy.state_dict()[key], value)
    if kind == "regression" and loss != "flow":  # the scale head was fitted after SFT, not left at its initial constant
        assert policy.scale_head.weight.abs().sum() > 0
        assert policy.cfg.family == {"l1": "laplace", "mse": "gaussian"}[loss]
    if kind == "regression" and loss == "flow":  # a Gaussian of pinned std: every state's scale is FLOW_STD, and the file says so
        from pirl.policies.regression import FLOW_STD

        assert policy.cfg.loss == "flow" and policy.cfg.family == "gaussian" and policy.scale_pinned
        assert not policy.cfg.denoiser_inputs and policy.trunk[0].in_features == cfg.hidden  # folded after SFT
        obs, _, _ = ChunkDataset(load_dataset(demos, load_videos=False), 4).batch(np.arange(16))
        _, log_scale = policy.params(policy.encode(policy.prepare(obs)))
        torch.testing.assert_close(log_scale.exp(), torch.full_like(log_scale, FLOW_STD))
    if kind == "tokenized" and loss == "flow":  # saved folded: the plain tokenized network
        assert policy.cfg.loss == "flow" and not policy.cfg.denoiser_inputs and policy.flow_head is None
        assert policy.trunk[0].in_features == cfg.hidden


def test_regression_loss_is_checked_when_the_config_is_read():
    with pytest.raises(ValueError, match="regression_loss must be"):
        SFTConfig(policy="regression", regression_loss="huber")
    with pytest.raises(ValueError, match="regression head's SFT loss"):
        SFTConfig(policy="mlp", regression_loss="mse")
    with pytest.raises(ValueError, match="tokenized_loss must be"):
        SFTConfig(policy="tokenized", tokenized_loss="denoise")
    with pytest.raises(ValueError, match="tokenized head's SFT loss"):
        SFTConfig(policy="regression", tokenized_loss="flow")


def test_vla_prepare_encode_once_and_sft(demos):
    tokens, mask = tokenize(np.array(["Pick up the puck", "press the button down"], dtype=object), 1024, 8)
    assert tokens.shape == (2, 8) and mask.sum(1).tolist() == [4, 4] and tokens[0, 0] != 0
    assert tokenize(["pick"], 1024, 8)[0][0, 0] == tokens[0, 0]  # case-insensitive, stable ids

    res = sft(SFTConfig(dataset=str(demos), policy="vla", steps=40, batch_size=16, log_every=10, eval_every=-1, vla_width=64), log=None)
    assert res.losses[-1][1] < res.losses[0][1]
    policy = res.policy
    with make_metaworld(tasks=("reach-v3", "button-press-topdown-v3"), num_envs=2, camera="corner2", image_size=32) as env:
        obs = env.reset([Context(0, 3), Context(1, 3)])
        o = policy.prepare(obs)
        ctx = policy.encode(o)  # the prefix once; every denoising step reuses it
        v1, feats = policy.velocity(ctx, torch.zeros(2, 4, 4), torch.full((2,), 0.5))
        v2, _ = policy.velocity(ctx, torch.zeros(2, 4, 4), torch.full((2,), 0.5))
        torch.testing.assert_close(v1, v2)
        assert feats.shape == (2, policy.feature_dim) and policy.value_features(ctx).shape == (2, policy.feature_dim)
        out = policy.act(o, SamplerConfig(method="flow_noise", steps=3))
        assert out.actions.shape == (2, 4, 4) and out.value.shape == (2,)
        torch.testing.assert_close(policy.evaluate(o, out.chain).log_prob, out.log_prob)
        env.step(out.actions.numpy())


def test_vla_checkpoint_round_trip_and_bad_input(tmp_path):
    policy = make_vla_policy(39, 4, image_size=32, patch=4, width=32, layers=1)
    path = save_policy(policy, tmp_path / "vla.safetensors")
    loaded, _ = load_policy(path)
    obs = {"image": np.zeros((1, 32, 32, 3), np.uint8), "state": np.zeros((1, 39), np.float32), "instruction": np.array(["reach"], dtype=object)}
    torch.manual_seed(0)
    a = policy.act(policy.prepare(obs), SamplerConfig(method="ode")).actions
    torch.manual_seed(0)
    torch.testing.assert_close(loaded.act(loaded.prepare(obs), SamplerConfig(method="ode")).actions, a)
    with pytest.raises(ValueError, match=r"expected \[B, 32, 32, 3\]"):
        policy.encode(policy.prepare({**obs, "image": np.zeros((1, 64, 64, 3), np.uint8)}))
    with pytest.raises(ValueError, match="instruction"):
        policy.prepare({"image": obs["image"], "state": obs["state"]})
    with pytest.raises(ValueError, match="policy must be"):
        SFTConfig(dataset="x", policy="transformer")


def test_episodes_per_task_and_a_horizon_beyond_the_dataset_are_said(demos):
    said = []
    cfg = SFTConfig(dataset=str(demos), steps=2, batch_size=8, hidden=16, depth=1, eval_every=-1, episodes_per_task=2)
    sft(cfg, log=said.append)  # 3 episodes of each task: 2 are there
    assert not any("fewer" in line for line in said), said
    sft(SFTConfig(**{**cfg.__dict__, "episodes_per_task": 5}), log=said.append)
    assert "episodes_per_task=5: the dataset has fewer for reach-v3 (3), button-press-topdown-v3 (3); SFT trains on " \
           "those it has" in said, said
    assert not any("longer than every episode" in line for line in said)
    sft(SFTConfig(**{**cfg.__dict__, "action_horizon": 1000}), log=said.append)
    assert any(line.startswith("action_horizon=1000 is longer than every episode (the longest has ") for line in said)


def test_final_checkpoint_survives_a_failing_final_evaluation(demos, tmp_path, monkeypatch):
    import pirl.train.sft as sft_module

    def broken(*args, **kwargs):
        raise RuntimeError("simulator died")

    monkeypatch.setattr(sft_module, "evaluate_policy", broken)
    cfg = SFTConfig(dataset=str(demos), steps=20, batch_size=16, hidden=32, depth=1, eval_episodes_per_task=1,
                    eval_num_envs=2, eval_max_episode_steps=8, out_dir=str(tmp_path / "ckpt"))
    with pytest.raises(RuntimeError, match="simulator died"):
        sft(cfg, log=None)
    policy, extra = load_policy(tmp_path / "ckpt" / "final.safetensors")  # the 20 steps of training are kept
    assert extra["step"] == 20


def test_ctrl_c_keeps_the_weights_trained_so_far(demos, tmp_path, monkeypatch):
    from pirl.policies.base import FlowPolicy

    loss, calls = FlowPolicy.sft_loss, []

    def interrupted_at_step_6(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 6:
            raise KeyboardInterrupt
        return loss(self, *args, **kwargs)

    monkeypatch.setattr(FlowPolicy, "sft_loss", interrupted_at_step_6)
    cfg = SFTConfig(dataset=str(demos), steps=20, batch_size=16, hidden=32, depth=1, eval_every=-1,
                    out_dir=str(tmp_path / "ckpt"))
    with pytest.raises(KeyboardInterrupt):
        sft(cfg, log=None)
    _, extra = load_policy(tmp_path / "ckpt" / "step_5.safetensors")  # 5 steps completed; the 6th was cut short
    assert extra["step"] == 5 and not (tmp_path / "ckpt" / "final.safetensors").exists()


def test_state_clip_bounds_the_normalised_state_and_old_files_load_unclipped(tmp_path):
    """Rollouts leave the demos' range; the clip bounds what the network sees, not the actions. A file written
    before the clip existed (no state_clip in its config) loads with none, so its behaviour is unchanged."""
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    from pirl.policies.base import Normalizer
    from pirl.policies.mlp import make_mlp_policy

    norm = Normalizer(3, clip=5.0)
    norm.set_stats(torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.1, 1.0, 1.0]))
    torch.testing.assert_close(norm(torch.tensor([[4.0, -9.0, 2.0]])), torch.tensor([[5.0, -5.0, 2.0]]), atol=1e-4, rtol=0)
    torch.testing.assert_close(norm.inverse(torch.tensor([[30.0, 0.0, 0.0]])), torch.tensor([[4.0, 0.0, 0.0]]), atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="clip must be > 0"):
        Normalizer(3, clip=0.0)
    with pytest.raises(ValueError, match="state_clip must be > 0"):
        SFTConfig(dataset="x", state_clip=-1.0)

    torch.manual_seed(0)
    clipped = make_mlp_policy(3, 2, hidden=16, depth=1, state_clip=5.0)
    clipped.state_norm.set_stats(torch.zeros(3), torch.ones(3) * 0.01)
    path = save_policy(clipped, tmp_path / "p.safetensors")
    with safe_open(str(path), "pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    cfg = json.loads(meta["config"])
    del cfg["state_clip"]
    save_file(tensors, str(tmp_path / "old.safetensors"), metadata={**meta, "config": json.dumps(cfg)})
    new, _ = load_policy(path)
    old, _ = load_policy(tmp_path / "old.safetensors")
    assert new.state_norm.clip == 5.0 and old.cfg.state_clip is None and old.state_norm.clip is None
    far = {"state": torch.tensor([[1.0, -1.0, 0.5]])}  # 100 stds away
    near = {"state": torch.tensor([[0.01, -0.02, 0.03]])}
    x = torch.randn(1, 4, 2)
    t = torch.ones(1)
    v_new, _ = new.velocity(new.encode(far), x, t)
    v_old, _ = old.velocity(old.encode(far), x, t)
    assert not torch.allclose(v_new, v_old)
    torch.testing.assert_close(new.velocity(new.encode(near), x, t)[0], old.velocity(old.encode(near), x, t)[0])
