"""Tiny π0 / π0.5: forward, backward, sampling through pirl.flow, the RL hooks, cache = no cache."""

from __future__ import annotations

import pytest
import torch

from pirl import flow
from pirl.flow import SamplerConfig
from pirl.policies.pi0 import PaligemmaTokenizer, make_pi0_policy, tiny_config

VARIANTS = ["pi0", "pi05"]


def _policy(variant, tokenizer_path=None, seed=0, **kw):
    torch.manual_seed(seed)
    cfg = tiny_config(variant, **kw)
    tok = PaligemmaTokenizer(tokenizer_path, cfg.token_len) if tokenizer_path else None
    return make_pi0_policy(cfg, tok)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("method", ["ode", "flow_sde", "flow_noise"])
def test_act_evaluate_ratio_one_and_backward(variant, method, tokenizer_path, env_obs):
    policy = _policy(variant, tokenizer_path)
    obs = policy.prepare(env_obs(policy.cfg, batch=3))
    assert obs["images"].shape == (3, 2, 3, 28, 28) and not obs["image_masks"][:, 1].any()
    cfg = SamplerConfig(method=method, steps=3, logp_steps=2)
    out = policy.act(obs, cfg, generator=torch.Generator().manual_seed(1))
    assert out.actions.shape == (3, policy.cfg.action_horizon, policy.cfg.action_dim)
    assert out.chain.xs.shape == (3, 4, policy.cfg.action_horizon, policy.cfg.max_action_dim)
    assert out.log_prob.dtype == torch.float32 and out.value.shape == (3,)
    ev = policy.evaluate(obs, out.chain)
    torch.testing.assert_close(ev.log_prob, out.log_prob, rtol=0, atol=1e-6)  # first PPO ratio is exactly 1
    if method == "ode":
        return
    (-(ev.log_prob.mean()) + ev.value.square().mean()).backward()
    expert = policy.model.expert.layers[0].self_attn.q_proj.weight
    vlm = policy.model.vlm.layers[0].self_attn.q_proj.weight
    assert expert.grad is not None and expert.grad.abs().sum() > 0
    assert vlm.grad is not None and vlm.grad.abs().sum() > 0
    if method == "flow_noise":
        assert policy.noise_head.net[-1].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("variant", VARIANTS)
def test_flow_sample_with_policy_closure(variant, model_obs):
    policy = _policy(variant)
    obs = model_obs(policy.cfg)
    with torch.no_grad():
        ctx = policy.encode(obs)
        x0 = torch.randn(2, *policy.action_shape, generator=torch.Generator().manual_seed(0))
        ode = flow.sample(policy.velocity_fn(ctx, False), x0, steps=4, method="ode")
        sde = flow.sample(policy.velocity_fn(ctx, False), x0, steps=4, method="flow_sde", noise_level=0.5,
                          sde_steps="all", generator=torch.Generator().manual_seed(2))
    assert torch.isfinite(ode.actions).all() and torch.isfinite(sde.actions).all()
    assert ode.stochastic.sum() == 0 and sde.stochastic.all()
    # both start from the same x0 and take the same ODE drift at t = 1, then part ways
    assert not torch.allclose(ode.actions, sde.actions)


class _Uncached:
    """Velocity by a full joint forward (prefix recomputed) at every step: the no-cache reference."""

    def __init__(self, policy, obs):
        self.p, self.obs = policy, obs

    def __call__(self, x, t):
        m, o = self.p.model, self.obs
        emb, pad = m.embed_prefix(o["images"], o["image_masks"], o["tokens"], o["token_mask"])
        se, cond, ar = m.embed_suffix(x, t, None if self.p.cfg.pi05 else o["state"])
        _, suffix = m.joint_forward(emb, pad, se, cond, ar)
        return m.velocity_from_hidden(suffix)[0]


@pytest.mark.parametrize("variant", VARIANTS)
def test_kv_cache_sampling_equals_uncached(variant, model_obs):
    policy = _policy(variant)
    obs = model_obs(policy.cfg)
    x0 = torch.randn(2, *policy.action_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ctx = policy.encode(obs)
        kw = dict(steps=5, method="flow_sde", noise_level=0.5, sde_steps="all")
        cached = flow.sample(policy.velocity_fn(ctx, False), x0, generator=torch.Generator().manual_seed(3), **kw)
        full = flow.sample(_Uncached(policy, obs), x0, generator=torch.Generator().manual_seed(3), **kw)
    torch.testing.assert_close(cached.xs, full.xs, rtol=0, atol=1e-5)
    torch.testing.assert_close(cached.log_probs, full.log_probs, rtol=0, atol=1e-4)


@pytest.mark.parametrize("variant", VARIANTS)
def test_masked_camera_and_token_padding_change_nothing(variant, model_obs):
    """Masked tokens are invisible and skipped by the position ids: dropping them is a no-op."""
    policy = _policy(variant)
    cfg = policy.cfg
    obs = model_obs(cfg, batch=1)
    obs["image_masks"][:] = torch.tensor([[True, False]])
    obs["token_mask"][:] = False
    obs["token_mask"][0, :5] = True
    x, t = torch.randn(1, *policy.action_shape), torch.tensor([0.6])
    with torch.no_grad():
        v_full, _ = policy.velocity(policy.encode(obs), x, t)
        small = _policy(variant, cameras=cfg.cameras[:1], max_token_len=5)
        small.load_state_dict(policy.state_dict())
        obs2 = {"images": obs["images"][:, :1], "image_masks": obs["image_masks"][:, :1],
                "tokens": obs["tokens"][:, :5], "token_mask": obs["token_mask"][:, :5], "state": obs["state"]}
        v_small, _ = small.velocity(small.encode(obs2), x, t)
    torch.testing.assert_close(v_full, v_small, rtol=0, atol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS)
def test_train_expert_only(variant, model_obs):
    policy = _policy(variant)
    policy.set_trainable("expert")
    obs = model_obs(policy.cfg)
    out = policy.act(obs, SamplerConfig(method="flow_noise", steps=2))
    ev = policy.evaluate(obs, out.chain)
    (-(ev.log_prob.mean()) + ev.value.square().mean()).backward()
    assert all(p.grad is None for p in policy.model.paligemma_with_expert.paligemma.parameters())
    assert policy.model.expert.layers[-1].mlp.down_proj.weight.grad.abs().sum() > 0
    assert policy.model.action_out_proj.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in policy.value_head.parameters())


@pytest.mark.parametrize("variant", VARIANTS)
def test_flow_matching_loss_and_gradient_checkpointing(variant, model_obs):
    policy = _policy(variant)
    policy.train()
    obs = model_obs(policy.cfg)
    actions = torch.randn(2, policy.cfg.action_horizon, policy.cfg.action_dim)

    def grads():
        policy.zero_grad()
        loss = policy.flow_matching_loss(obs, actions, generator=torch.Generator().manual_seed(0))
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in policy.model.parameters() if p.grad is not None]

    loss_a, g_a = grads()
    policy.gradient_checkpointing_enable()
    loss_b, g_b = grads()
    assert torch.isfinite(loss_a) and loss_a == loss_b and len(g_a) == len(g_b) > 0
    for a, b in zip(g_a, g_b):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("variant", VARIANTS)
def test_bf16_weights_float32_log_probs(variant, model_obs):
    policy = _policy(variant).to_bf16()
    assert policy.model.vlm.layers[0].mlp.up_proj.weight.dtype == torch.bfloat16
    assert policy.model.expert.layers[0].input_layernorm.state_dict()
    assert all(p.dtype == torch.float32 for p in policy.model.expert.norm.parameters())
    assert policy.model.action_out_proj.weight.dtype == torch.float32
    obs = model_obs(policy.cfg)
    out = policy.act(obs, SamplerConfig(method="flow_sde", steps=3), generator=torch.Generator().manual_seed(0))
    assert out.log_prob.dtype == torch.float32 and torch.isfinite(out.log_prob).all()
    ev = policy.evaluate(obs, out.chain)
    torch.testing.assert_close(ev.log_prob, out.log_prob, rtol=0, atol=1e-6)


def test_value_sources(model_obs):
    p0, p5 = _policy("pi0"), _policy("pi05")
    assert p0.value_source == "expert" and p0.value_feature_dim == p0.cfg.expert.width
    assert p5.value_source == "vlm" and p5.value_feature_dim == p5.cfg.vlm.width
    for p in (p0, p5):
        obs = model_obs(p.cfg)
        with torch.no_grad():
            f = p.value_features(p.encode(obs))
            assert f.shape == (2, p.value_feature_dim) and torch.isfinite(f).all()
            # a function of the observation only: the same obs gives the same value
            torch.testing.assert_close(p.value(obs), p.value(obs))


@pytest.mark.parametrize("variant", VARIANTS)
def test_learned_prior_without_a_critic(variant, tokenizer_path, env_obs):
    """A learned x^0 prior reads the critic's features (π0.5: the VLM's, kept for it even with no value head, as
    GRPO / LOOP run): ratio 1 on re-scoring, and its gradient reaches the prior head."""
    torch.manual_seed(0)
    cfg = tiny_config(variant)
    policy = make_pi0_policy(cfg, PaligemmaTokenizer(tokenizer_path, cfg.token_len), value_head=False)
    policy.attach_prior_head()
    with torch.no_grad():
        policy.prior_head.net[-1].weight.normal_(0, 0.1)
    obs = policy.prepare(env_obs(policy.cfg, batch=3))
    out = policy.act(obs, SamplerConfig(method="flow_sde", steps=3, logp_steps=2),
                     generator=torch.Generator().manual_seed(1))
    assert out.chain.learned_prior and out.chain.init_mean.abs().max() > 0
    ev = policy.evaluate(obs, out.chain)
    torch.testing.assert_close(ev.log_prob, out.log_prob, rtol=0, atol=1e-6)
    ev.log_prob.sum().backward()
    assert policy.prior_head.net[-1].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("variant", VARIANTS)
def test_prior_and_critic_share_one_feature_pass(variant, tokenizer_path, env_obs, monkeypatch):
    """With a learned prior and a critic both reading ``value_features`` (π0: a pass of the action expert), act and
    evaluate compute them once, and give the same prior mean and value as separate calls."""
    torch.manual_seed(0)
    cfg = tiny_config(variant)
    policy = make_pi0_policy(cfg, PaligemmaTokenizer(tokenizer_path, cfg.token_len))
    policy.attach_prior_head()
    with torch.no_grad():
        policy.prior_head.net[-1].weight.normal_(0, 0.1)
    obs = policy.prepare(env_obs(policy.cfg, batch=3))
    sampler = SamplerConfig(method="flow_sde", steps=3, logp_steps=2)
    with torch.no_grad():
        ctx = policy.encode(obs)
        mu, value = policy.prior_mean(ctx), policy.value(obs)
    calls = []
    original = type(policy).value_features
    monkeypatch.setattr(type(policy), "value_features", lambda self, c: calls.append(1) or original(self, c))
    out = policy.act(obs, sampler, generator=torch.Generator().manual_seed(1))
    assert len(calls) == 1
    torch.testing.assert_close(out.chain.init_mean, mu, rtol=0, atol=0)
    torch.testing.assert_close(out.value, value, rtol=0, atol=0)
    ev = policy.evaluate(obs, out.chain)
    assert len(calls) == 2
    torch.testing.assert_close(ev.log_prob, out.log_prob, rtol=0, atol=1e-6)
    torch.testing.assert_close(ev.value, value, rtol=0, atol=0)
    policy.evaluate(obs, out.chain, with_value=False)  # the prior alone still reads them
    assert len(calls) == 3
