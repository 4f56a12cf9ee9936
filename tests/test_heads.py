"""Regression and tokenized heads: closed-form log-probs, ratio 1, scale-head fit, plugging into the RL code paths."""

import dataclasses
import math
import subprocess
import sys

import pytest
import torch
from torch.distributions import Categorical, Laplace, Normal

from pirl.algorithms import PPOConfig, PPOUpdater, build_batch, preset
from pirl.envs.point_mass import PointMassConfig, PointMassEnv
from pirl.flow import SamplerConfig
from pirl.policies import (
    ActionSample,
    HeadSamplerConfig,
    Policy,
    RegressionPolicyConfig,
    TokenizedPolicyConfig,
    fit_scale_head,
    make_mlp_policy,
    make_regression_policy,
    make_tokenized_policy,
)
from pirl.train.pretrain import sft_fit
from pirl.train.rollout import CollectorConfig, RolloutCollector

from rl_helpers import demo_dataset

torch.set_num_threads(1)

H, D, S = 4, 2, 4


def _reg(loss="l1", **kw):
    torch.manual_seed(0)
    p = make_regression_policy(S, D, action_horizon=H, hidden=32, depth=1, loss=loss, scale_init=0.3, **kw)
    # a state-dependent scale, so the check does not pass by a constant
    torch.nn.init.normal_(p.scale_head.weight, std=0.3)
    return p


def _tok(within_bin=False, bins=16):
    torch.manual_seed(0)
    return make_tokenized_policy(S, D, action_horizon=H, hidden=32, depth=1, bins=bins, within_bin=within_bin)


def _obs(B=6, seed=1):
    return {"state": torch.randn(B, S, generator=torch.Generator().manual_seed(seed))}


# -- closed-form log-probs against torch.distributions -------------------------------------------
@pytest.mark.parametrize("loss,dist", [("l1", Laplace), ("mse", Normal)])
@pytest.mark.parametrize("widen,density", [(1.0, "behaviour"), (1.7, "behaviour"), (1.7, "nominal")])
def test_regression_log_prob_matches_torch(loss, dist, widen, density):
    p, obs = _reg(loss), _obs()
    cfg = HeadSamplerConfig(widen=widen, ratio_density=density)
    out = p.act(obs, cfg, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        mean, log_scale = p.params(p.encode(obs))
        d = dist(mean, log_scale.exp() * (widen if density == "behaviour" else 1.0))
        ref = d.log_prob(out.chain.actions).sum(dim=(1, 2))
        ev = p.evaluate(obs, out.chain)
    torch.testing.assert_close(out.log_prob, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ev.entropy, d.entropy().flatten(1).mean(1), rtol=1e-5, atol=1e-5)
    # the environment receives the unnormalised chunk
    torch.testing.assert_close(out.actions, p.unnormalize_actions(out.chain.actions))


@pytest.mark.parametrize("within_bin", [False, True])
@pytest.mark.parametrize("widen,density", [(1.0, "behaviour"), (0.5, "behaviour"), (0.5, "nominal")])
def test_tokenized_log_prob_matches_torch(within_bin, widen, density):
    p, obs = _tok(within_bin), _obs()
    cfg = HeadSamplerConfig(widen=widen, ratio_density=density)
    out = p.act(obs, cfg, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = p.params(p.encode(obs))
        d = Categorical(logits=logits / (widen if density == "behaviour" else 1.0))
        ref = d.log_prob(out.chain.tokens)
        ent = d.entropy()
        if within_bin:
            ref, ent = ref - torch.log(p.bin_width), ent + torch.log(p.bin_width)
        ev = p.evaluate(obs, out.chain)
    torch.testing.assert_close(out.log_prob, ref.sum(dim=(1, 2)), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ev.entropy, ent.flatten(1).mean(1), rtol=1e-5, atol=1e-5)
    # the action lies in its token's bin (at the centre without within_bin)
    low = p.bin_low + out.chain.tokens * p.bin_width
    assert bool(((out.chain.actions >= low - 1e-5) & (out.chain.actions <= low + p.bin_width + 1e-5)).all())
    if not within_bin:
        torch.testing.assert_close(out.chain.actions, low + 0.5 * p.bin_width)


def test_samples_follow_the_distribution():
    """Empirical moments / frequencies of many draws match the (widened) distribution."""
    obs = _obs(B=1)
    g = torch.Generator().manual_seed(0)
    for loss in ("l1", "mse"):
        p = _reg(loss)
        big = {"state": obs["state"].expand(20000, S)}
        x = p.act(big, HeadSamplerConfig(widen=1.5), generator=g).chain.actions
        with torch.no_grad():
            mean, log_scale = p.params(p.encode(obs))
        scale = 1.5 * log_scale.exp()[0]
        torch.testing.assert_close(x.mean(0), mean[0].detach(), atol=0.15 * float(scale.max()), rtol=0)
        spread = (x - mean[0]).abs().mean(0) if loss == "l1" else (x - mean[0]).std(0)  # b (Laplace) or sigma
        torch.testing.assert_close(spread, scale.detach(), rtol=0.05, atol=0)
    p = _tok(bins=8)
    big = {"state": obs["state"].expand(20000, S)}
    tokens = p.act(big, HeadSamplerConfig(widen=0.7), generator=g).chain.tokens
    freq = torch.nn.functional.one_hot(tokens, 8).float().mean(0)
    probs = torch.softmax(p.params(p.encode(obs))[0] / 0.7, -1).detach()
    torch.testing.assert_close(freq, probs, atol=0.02, rtol=0)


def test_greedy_is_the_mode():
    obs = _obs()
    p = _reg()
    out = p.act(obs, HeadSamplerConfig().deterministic())
    torch.testing.assert_close(out.chain.actions, p.params(p.encode(obs))[0].detach())
    # a flow SamplerConfig works too: 'ode' means greedy
    torch.testing.assert_close(p.act(obs, SamplerConfig(method="ode")).actions, out.actions)
    t = _tok()
    tok = t.act(obs, HeadSamplerConfig(greedy=True)).chain.tokens
    assert torch.equal(tok, t.params(t.encode(obs)).argmax(-1))



@pytest.mark.parametrize("loss", ["l1", "mse"])
@pytest.mark.parametrize("c,logp_steps", [(0.6, None), (0.9, 2)])
def test_correlated_regression_log_prob_is_the_multivariate_normal(loss, c, logp_steps):
    """With a within-chunk correlation the chunk is a Gaussian per action dimension with the head's element std
    (sqrt(2) b for a Laplace) and covariance std_i std_j (c + (1 - c) [i == j]); the per-element conditionals sum
    to its log-density and entropy, and dropping later actions leaves the exact marginal."""
    from torch.distributions import MultivariateNormal

    p, obs = _reg(loss), _obs()
    cfg = HeadSamplerConfig(widen=1.3, correlation=c, logp_steps=logp_steps)
    out = p.act(obs, cfg, generator=torch.Generator().manual_seed(0))
    T = logp_steps or H
    with torch.no_grad():
        mean, log_scale = p.params(p.encode(obs))
        std = log_scale.exp() * 1.3 * (math.sqrt(2.0) if loss == "l1" else 1.0)  # [B, H, D]
        corr = c * torch.ones(T, T) + (1 - c) * torch.eye(T)
        x = out.chain.actions[:, :T].transpose(1, 2)  # [B, D, T]
        s = std[:, :T].transpose(1, 2)
        mvn = MultivariateNormal(mean[:, :T].transpose(1, 2), covariance_matrix=s.unsqueeze(-1) * corr * s.unsqueeze(-2))
        ev = p.evaluate(obs, out.chain)
    torch.testing.assert_close(out.log_prob, mvn.log_prob(x).sum(1), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ev.entropy * T * D, mvn.entropy().sum(1), rtol=1e-4, atol=1e-4)
    assert out.chain.correlation == c


def test_correlated_samples_have_the_stated_correlation_and_std():
    p, obs = _reg("mse"), {"state": torch.zeros(20000, S)}
    out = p.act(obs, HeadSamplerConfig(correlation=0.7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        mean, log_scale = p.params(p.encode(obs))
    e = (out.chain.actions - mean) / log_scale.exp()  # standardised residuals [N, H, D]
    assert abs(float(e.std()) - 1.0) < 0.02
    r = torch.corrcoef(torch.stack([e[:, 0, 0], e[:, 3, 0], e[:, 1, 1], e[:, 2, 0]]))
    assert abs(float(r[0, 1]) - 0.7) < 0.02  # two actions of the chunk, same dimension
    assert abs(float(r[0, 2])) < 0.03 and abs(float(r[1, 3]) - 0.7) < 0.02  # across dimensions: independent
    greedy = p.act(obs, HeadSamplerConfig(correlation=0.7).deterministic())
    torch.testing.assert_close(greedy.chain.actions, mean)


def test_correlation_is_validated_and_recorded():
    with pytest.raises(ValueError, match="correlation"):
        HeadSamplerConfig(correlation=1.0)
    a = _reg().act(_obs(), HeadSamplerConfig()).chain
    b = _reg().act(_obs(), HeadSamplerConfig(correlation=0.5)).chain
    with pytest.raises(ValueError, match="correlation"):
        ActionSample.cat([a, b])


# -- ratio 1 -------------------------------------------------------------------------------------
CONFIGS = [
    HeadSamplerConfig(),
    HeadSamplerConfig(widen=2.0, ratio_density="nominal"),
    HeadSamplerConfig(widen=0.5, logp_steps=2),
    HeadSamplerConfig(log_prob_level="element", logp_steps=3),
    HeadSamplerConfig(log_prob_level="element", logp_steps=3, correlation=0.8),
]


@pytest.mark.parametrize("make", [_reg, lambda: _reg("mse"), _tok, lambda: _tok(True)], ids=["l1", "mse", "tok", "tok_bin"])
@pytest.mark.parametrize("cfg", CONFIGS, ids=["plain", "nominal", "logp_steps", "element", "correlated"])
def test_ratio_one_through_act_and_evaluate(make, cfg):
    p, obs = make(), _obs(B=32)
    parts = [p.act({"state": obs["state"][i : i + 8]}, cfg, generator=torch.Generator().manual_seed(i)) for i in range(0, 32, 8)]
    record = ActionSample.cat([o.chain for o in parts])
    old = torch.cat([o.log_prob for o in parts])
    idx = torch.randperm(32)[:20]
    with torch.no_grad():
        new = p.evaluate({"state": obs["state"][idx]}, record.index(idx)).log_prob
    assert new.shape == old[idx].shape
    assert float((torch.exp(new - old[idx]) - 1).abs().max()) < 1e-5
    if cfg.log_prob_level == "element":
        assert old.shape == (32, 3 * D)
    elif cfg.logp_steps is not None:
        # only the executed actions count
        lp = p.element_log_prob(p.params(p.encode(obs)), record)
        torch.testing.assert_close(old, lp[:, : cfg.logp_steps].sum((1, 2)).detach())


def test_record_settings_must_match_to_concatenate():
    p, obs = _reg(), _obs()
    a = p.act(obs, HeadSamplerConfig(widen=1.0)).chain
    b = p.act(obs, HeadSamplerConfig(widen=2.0)).chain
    with pytest.raises(ValueError, match="different widening"):
        ActionSample.cat([a, b])
    with pytest.raises(TypeError, match="ActionSample"):
        p.evaluate(obs, object())
    with pytest.raises(ValueError, match="token indices"):
        _tok().evaluate(obs, a)


def test_configs_validate():
    with pytest.raises(ValueError, match="widen"):
        HeadSamplerConfig(widen=0.0)
    with pytest.raises(ValueError, match="ratio_density"):
        HeadSamplerConfig(ratio_density="true")
    with pytest.raises(ValueError, match="loss"):
        RegressionPolicyConfig(4, 2, loss="huber")
    with pytest.raises(ValueError, match="scale_min"):
        RegressionPolicyConfig(4, 2, scale_init=5.0)
    with pytest.raises(ValueError, match="bins"):
        TokenizedPolicyConfig(4, 2, bins=1)
    with pytest.raises(TypeError, match="HeadSamplerConfig"):
        _reg().act(_obs(), {"greedy": True})


# -- SFT and the scale head ----------------------------------------------------------------------
@pytest.mark.parametrize("loss", ["l1", "mse"])
def test_scale_head_fit_lowers_held_out_nll(loss):
    torch.manual_seed(0)
    s, a = map(torch.from_numpy, demo_dataset(num_episodes=100, seed=0))
    hs, ha = map(torch.from_numpy, demo_dataset(num_episodes=50, seed=1))
    p = make_regression_policy(S, D, action_horizon=H, hidden=64, depth=2, loss=loss)
    sft_fit(p, s, a, steps=200)
    mean_before = p.mean_head.weight.detach().clone()
    with torch.no_grad():
        before = float(p.nll({"state": hs}, ha))
    hist = fit_scale_head(p, s, a, steps=200)
    with torch.no_grad():
        after = float(p.nll({"state": hs}, ha))
        log_scale = p.params(p.encode({"state": hs}))[1]
    assert after < before - 1.0, f"held-out NLL {before:.3f} -> {after:.3f}"
    assert hist[-1] < hist[0]
    assert torch.equal(p.mean_head.weight, mean_before), "the scale fit must not move the mean"
    assert float(log_scale.min()) >= math.log(p.cfg.scale_min) - 1e-6 and float(log_scale.max()) <= math.log(p.cfg.scale_max) + 1e-6


def test_tokenize_round_trip_and_bin_range():
    p = _tok(bins=256)
    x = torch.linspace(-2.99, 2.99, 101).view(-1, 1).expand(101, D)
    back = p.detokenize(p.tokenize(x))
    assert float((back - x).abs().max()) <= 0.5 * float(p.bin_width.max()) + 1e-6
    assert int(p.tokenize(torch.full((1, D), 9.0)).max()) == 255 and int(p.tokenize(torch.full((1, D), -9.0)).min()) == 0
    p.action_norm.set_stats(torch.tensor([0.5, 0.0]), torch.tensor([2.0, 1.0]))
    p.set_bin_range(torch.tensor([-1.0, -1.0]), torch.tensor([1.0, 1.0]))
    torch.testing.assert_close(p.unnormalize_actions(p.bin_low), torch.tensor([-1.0, -1.0]))
    torch.testing.assert_close(p.unnormalize_actions(p.bin_high), torch.tensor([1.0, 1.0]))


def test_sft_losses_decrease_for_every_policy_kind():
    s, a = map(torch.from_numpy, demo_dataset(num_episodes=60, seed=0))
    flow = make_mlp_policy(S, D, action_horizon=H, hidden=32, depth=1)
    for p in (_reg("l1"), _reg("mse"), _tok(bins=32), flow):
        assert isinstance(p, Policy)
        losses = sft_fit(p, s, a, steps=60, lr=3e-3)
        assert sum(losses[-10:]) < sum(losses[:10]), type(p).__name__
    torch.testing.assert_close(flow.action_norm.mean, a.reshape(-1, D).mean(0))


def test_heads_import_no_env_algorithm_or_trainer():
    code = "import sys, pirl.policies; print(' '.join(m for m in sys.modules if m.startswith('pirl')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(out.stdout.split())
    assert {"pirl.policies.regression", "pirl.policies.tokenized"} <= loaded
    assert not any(m.startswith(("pirl.envs", "pirl.algorithms", "pirl.train")) for m in loaded), loaded


# -- the same rollout / PPO / GRPO / LOOP code paths as the flow policies -------------------------
@pytest.mark.parametrize("make", [_reg, _tok], ids=["regression", "tokenized"])
@pytest.mark.parametrize("algo", ["ppo", "grpo", "loop"])
def test_heads_plug_into_collector_and_updater(make, algo):
    torch.manual_seed(0)
    # a large goal disk: untrained policies succeed sometimes, so the group filter keeps groups
    env_cfg = PointMassConfig(num_tasks=2, chunk=2, max_chunk_steps=4, speed=0.2, goal_radius=0.6)
    p = make_regression_policy(S, D, action_horizon=H, num_tasks=2, hidden=32, depth=1, scale_init=0.5) if make is _reg \
        else make_tokenized_policy(S, D, action_horizon=H, num_tasks=2, hidden=32, depth=1, bins=16)
    G = 1 if algo == "ppo" else 4
    ccfg = CollectorConfig(num_groups=4, group_size=G, group_filter="none" if algo == "ppo" else "nonuniform",
                           filter_on="return", max_tries=2, seed=0)
    sampler = HeadSamplerConfig(widen=1.5, logp_steps=env_cfg.chunk)
    collector = RolloutCollector(PointMassEnv(ccfg.num_envs, env_cfg), p, sampler, ccfg)
    rollout = collector.collect()
    assert rollout.buffers, "no informative group kept"
    assert rollout.metrics["rollout/groups_kept"] >= 1
    cfg = preset(algo)
    batch = build_batch(rollout.buffers, cfg.advantage)
    assert isinstance(batch.chain, ActionSample)
    before = {k: v.clone() for k, v in p.state_dict().items()}
    metrics = PPOUpdater(p, dataclasses.replace(cfg.ppo, epochs=2, minibatch_size=16)).update(batch)
    assert metrics["policy/ratio_check"] < 1e-5 and metrics["loss/optimizer_steps"] >= 1
    assert any(not torch.equal(before[k], v) for k, v in p.state_dict().items())
    ev = collector.evaluate(range(4))
    assert 0.0 <= ev["eval/success_rate"] <= 1.0


def test_element_ratio_update():
    p = _tok()
    obs = _obs(B=16)
    out = p.act(obs, HeadSamplerConfig(log_prob_level="element", logp_steps=2))
    from pirl.algorithms import RolloutBatch

    batch = RolloutBatch(obs=obs, chain=out.chain, old_log_prob=out.log_prob, old_value=None,
                         advantages=torch.randn(16), returns=torch.zeros(16),
                         task=torch.zeros(16, dtype=torch.long), group=torch.arange(16) // 4)
    cfg = PPOConfig(ratio_level="element", normalize_advantages=False, value_coef=0.0, minibatch_size=8, epochs=1)
    metrics = PPOUpdater(p, cfg).update(batch)
    assert metrics["loss/optimizer_steps"] == 2 and metrics["policy/ratio_check"] < 1e-5


def test_critic_reads_detached_features_by_default():
    """README's claim: the value loss trains the value head only, unless detach_value_features is turned off."""
    from pirl.policies import make_mlp_policy

    for detach in (True, False):
        torch.manual_seed(0)
        policy = make_mlp_policy(4, 2, action_horizon=4, hidden=16, depth=1, noise_head=False)
        assert policy.detach_value_features is True  # the default
        policy.detach_value_features = detach
        policy.attach_value_head(policy.feature_dim)
        policy.value({"state": torch.randn(8, 4)}).pow(2).mean().backward()
        encoder_grad = sum(float(p.grad.abs().sum()) for p in policy.obs_encoder.parameters() if p.grad is not None)
        assert (encoder_grad == 0) == detach
        assert all(p.grad is not None for p in policy.value_head.parameters())


# -- RL settings of the heads: scale floor, `pirl train`'s head block ----------------------------
def test_scale_floor_bounds_sampling_and_log_probs():
    """After set_scale_floor(f) every sampled and scored scale is >= f: log-probs are those of the floored Laplace
    and act / evaluate still agree (ratio 1)."""
    p = _reg()
    with torch.no_grad():
        p.scale_head.bias.fill_(math.log(0.01))  # far below the floor
    obs = _obs(B=64)
    p.set_scale_floor(0.2)
    assert p.cfg.scale_min == 0.2 and p.cfg.scale_init >= 0.2
    with torch.no_grad():
        mean, log_scale = p.params(p.encode(obs))
    assert float(log_scale.min()) >= math.log(0.2) - 1e-6
    out = p.act(obs, HeadSamplerConfig(), generator=torch.Generator().manual_seed(0))
    x = p.normalize_actions(out.actions)
    expected = Laplace(mean, log_scale.exp()).log_prob(x).sum(dim=(1, 2))
    torch.testing.assert_close(out.log_prob, expected, rtol=1e-5, atol=1e-4)
    assert float((x - mean).abs().mean()) > 0.1  # drawn at the floored scale (mean |noise| = b >= 0.2)
    torch.testing.assert_close(p.evaluate(obs, out.chain).log_prob, out.log_prob)
    with pytest.raises(ValueError, match="scale floor"):
        p.set_scale_floor(0.0)
    p.set_scale_floor(0.1)  # a fitted (not pinned) scale takes a lower floor too: head.scale_floor is what it says
    assert p.cfg.scale_min == 0.1


def test_scale_ceiling_bounds_sampling_and_log_probs():
    """After set_scale_ceiling(c) every sampled and scored scale is <= c (an NLL-fitted scale head extrapolates off
    the demonstrations), act / evaluate agree, and a ceiling below the floor is refused."""
    p = _reg()
    with torch.no_grad():
        p.scale_head.bias.fill_(math.log(1.5))  # far above the ceiling
    obs = _obs(B=64)
    p.set_scale_floor(0.1)
    p.set_scale_ceiling(0.3)
    assert p.cfg.scale_max == 0.3 and p.cfg.scale_min == 0.1 <= p.cfg.scale_init <= 0.3
    with torch.no_grad():
        mean, log_scale = p.params(p.encode(obs))
    assert float(log_scale.max()) <= math.log(0.3) + 1e-6
    out = p.act(obs, HeadSamplerConfig(), generator=torch.Generator().manual_seed(0))
    x = p.normalize_actions(out.actions)
    torch.testing.assert_close(out.log_prob, Laplace(mean, log_scale.exp()).log_prob(x).sum(dim=(1, 2)),
                               rtol=1e-5, atol=1e-4)
    assert float((x - mean).abs().mean()) < 0.35  # drawn at the capped scale (mean |noise| = b <= 0.3), not 1.5
    torch.testing.assert_close(p.evaluate(obs, out.chain).log_prob, out.log_prob)
    with pytest.raises(ValueError, match="scale ceiling"):
        p.set_scale_ceiling(0.05)


@pytest.mark.parametrize("kind", ["regression", "tokenized", "regression_flow", "tokenized_flow"])
def test_train_gives_a_head_its_ratio_level_sampler_and_lr(kind, tmp_path, capsys):
    """`pirl train` on a head policy: the sampler's log-prob level and PPO's ratio level follow head.ratio_level
    (the kind's default: element; chunk for the flow-trained heads), widening / lr / target KL come from
    the head block, and an iteration runs on them."""
    from pirl.envs.registry import EnvConfig
    from pirl.policies.io import save_policy
    from pirl.policies.options import HeadOptions
    from pirl.train import rl

    torch.manual_seed(0)
    make = {"regression": make_regression_policy, "tokenized": make_tokenized_policy,
            "regression_flow": lambda *a, **kw: make_regression_policy(*a, loss="flow", **kw),
            "tokenized_flow": lambda *a, **kw: make_tokenized_policy(*a, loss="flow", **kw)}[kind]
    path = save_policy(make(S, D, action_horizon=H, hidden=16, depth=1), tmp_path / "p.safetensors")
    level = HeadOptions.DEFAULT_RATIO_LEVEL[kind]
    assert level == ("chunk" if kind.endswith("_flow") else "element")
    base = dict(policy=str(path), env=EnvConfig(suite="point_mass", tasks=("a",), chunk=2, max_episode_steps=16),
                algorithm="loop", group_size=2, num_groups=4, iterations=1, eval_episodes_per_task=2,
                eval_num_envs=2, videos_per_task=0, logger="none")
    t = rl.Trainer(rl.TrainConfig(**base), tmp_path / "run")
    try:
        assert isinstance(t.sampler, HeadSamplerConfig) and t.sampler.log_prob_level == level
        widen = {"regression": 1.0, "tokenized": 0.5, "regression_flow": 1.5, "tokenized_flow": 1.0}[kind]
        assert t.sampler.logp_steps == 2 and t.sampler.widen == widen == HeadOptions.DEFAULT_WIDEN.get(kind, 1.0)
        said = capsys.readouterr().out
        if kind == "regression_flow":  # the std it explores at is said, not only the factor
            assert "std 0.289, drawn at std 0.433" in said and "widen 1.5" in said
        if kind == "tokenized_flow":
            assert "std 0.289" in said and "drawn at" not in said
        assert t.algo.ppo.ratio_level == level and t.updater.cfg.ratio_level == level
        assert t.updater.optimizer.param_groups[0]["lr"] == HeadOptions.DEFAULT_LR[kind]
        assert t.eval_sampler.greedy
        if kind == "regression":  # the head block's scale floor reached the policy before the first rollout
            assert t.policy.cfg.scale_min == HeadOptions().scale_floor
        if kind == "regression_flow":  # its pinned std is above the floor: it stays pinned
            from pirl.policies.regression import FLOW_STD

            assert t.policy.cfg.scale_min == t.policy.cfg.scale_max == FLOW_STD
            assert not t.policy.cfg.denoiser_inputs  # saved before folding (mid-SFT): RL folds it
        if kind == "tokenized_flow":  # folded on load too: the logits layer holds the Gaussian, no auxiliary layer
            assert not t.policy.cfg.denoiser_inputs and t.policy.flow_head is None
        frozen = kind == "tokenized_flow"  # its logits layer stays fixed by default (head.freeze_output)
        optimised = {id(q) for g in t.updater.optimizer.param_groups for q in g["params"]}
        assert all((id(q) in optimised) != frozen for q in t.policy.output_layer.parameters())
        out_before = [q.detach().clone() for q in t.policy.output_layer.parameters()]
        assert t.sampler.correlation == HeadOptions.DEFAULT_CORRELATION.get(kind, 0.0)  # 0.9 for regression_flow
        m = t.step()
        assert "policy/skipped_iteration" not in m and m["policy/ratio_check"] < 1e-4
        if frozen:
            assert all(torch.equal(a, q) for a, q in zip(out_before, t.policy.output_layer.parameters()))
        method = f"{kind.split('_')[0]} head"
        assert t._method() == {"algorithm": "loop", "method": method}  # what the summary and report name
    finally:
        t.close()
    head = HeadOptions(ratio_level="chunk", widen=0.7, lr=3e-6, target_kl=0.05, scale_floor=None,
                       freeze_output=not kind == "tokenized_flow")
    t = rl.Trainer(rl.TrainConfig(**base, head=head), tmp_path / "run2")
    try:
        optimised = {id(q) for g in t.updater.optimizer.param_groups for q in g["params"]}
        assert all((id(q) in optimised) == (kind == "tokenized_flow") for q in t.policy.output_layer.parameters())
        assert t.sampler.log_prob_level == "chunk" and t.algo.ppo.ratio_level == "chunk" and t.sampler.widen == 0.7
        assert t.algo.optim.lr == 3e-6 and t.algo.ppo.target_kl == 0.05
        assert t.updater.optimizer.param_groups[0]["lr"] == 3e-6
        if kind == "regression":  # scale_floor=None keeps the checkpoint's clip
            assert t.policy.cfg.scale_min == RegressionPolicyConfig(S, D).scale_min
    finally:
        t.close()


@pytest.mark.parametrize("kind", ["regression", "tokenized"])
def test_train_gives_a_head_its_chunk_correlation(tmp_path, kind):
    """head.correlation reaches the head's rollout sampler, and one iteration runs with it (ratio check passed)."""
    from pirl.envs.registry import EnvConfig
    from pirl.policies.io import save_policy
    from pirl.policies.options import HeadOptions
    from pirl.train import rl

    torch.manual_seed(0)
    base = dict(env=EnvConfig(suite="point_mass", tasks=("a",), chunk=2, max_episode_steps=16), algorithm="loop",
                group_size=2, num_groups=4, iterations=1, eval_episodes_per_task=2, eval_num_envs=2,
                videos_per_task=0, logger="none", head=HeadOptions(correlation=0.5))
    make = make_regression_policy if kind == "regression" else make_tokenized_policy
    path = save_policy(make(S, D, action_horizon=H, hidden=16, depth=1), tmp_path / "p.safetensors")
    t = rl.Trainer(rl.TrainConfig(policy=str(path), **base), tmp_path / "run")
    try:
        assert t.sampler.correlation == 0.5 and t.eval_sampler.greedy
        m = t.step()
        assert "policy/skipped_iteration" not in m and m["policy/ratio_check"] < 1e-4
        assert t.eval_sampler.correlation == 0.5  # greedy evaluation ignores it (the draw takes the mode)
    finally:
        t.close()


# -- the flow-trained regression head (loss=flow) ------------------------------------------------
def _flow_loss_by_hand(p, ctx, actions, out, *, seed):
    """The flow-matching loss with target a - eps, eps and t ~ Beta(1.5, 1) drawn as the flow policies draw them."""
    from pirl.policies.mlp import sincos_embedding

    g = torch.Generator().manual_seed(seed)
    a = p.normalize_actions(actions)
    B = a.shape[0]
    eps, u = torch.randn(a.shape, generator=g), torch.rand(B, generator=g)
    t = u.pow(1 / 1.5) * 0.999 + 0.001
    x_t = t.view(-1, 1, 1) * eps + (1 - t.view(-1, 1, 1)) * a
    h = torch.cat([ctx, sincos_embedding(t, p.cfg.time_dim), x_t.reshape(B, -1)], dim=-1)
    return (out(p.trunk(h)).view(a.shape) - (a - eps)).square().mean()


def test_flow_head_mean_is_the_denoisers_output_at_zero_noise_and_time_one(tmp_path):
    from pirl.policies.mlp import sincos_embedding
    from pirl.policies.regression import FLOW_STD

    p = make_regression_policy(S, D, action_horizon=H, hidden=32, depth=2, loss="flow")
    obs = _obs(B=8)
    ctx = p.encode(obs)
    with torch.no_grad():
        mean, log_scale = p.params(ctx)
        x = torch.cat([ctx, sincos_embedding(torch.ones(8), p.cfg.time_dim), torch.zeros(8, H * D)], dim=-1)
        by_hand = p.mean_head(p.trunk(x)).view(8, H, D)
    torch.testing.assert_close(mean, by_hand)
    torch.testing.assert_close(log_scale.exp(), torch.full_like(log_scale, FLOW_STD))
    # the SFT loss is flow matching with target a - eps, drawn as the flow policies draw it
    actions = torch.randn(8, H, D)
    loss = p.sft_loss(obs, actions, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(loss, _flow_loss_by_hand(p, ctx, actions, p.mean_head, seed=3))
    # after SFT the constant inputs fold into the first bias: the plain regression network, the same mean, saved
    # and loaded as such; SFT on the folded head is refused
    p.fold_denoiser()
    assert not p.cfg.denoiser_inputs and p.trunk[0].in_features == 32
    with torch.no_grad():
        torch.testing.assert_close(p.params(p.encode(obs))[0], mean, rtol=1e-5, atol=1e-5)
    from pirl.policies.io import load_policy, save_policy

    q, _ = load_policy(save_policy(p, tmp_path / "flow_head.safetensors"))
    with torch.no_grad():
        torch.testing.assert_close(q.params(q.encode(obs))[0], p.params(p.encode(obs))[0])
    assert q.cfg.loss == "flow" and q.scale_pinned
    with pytest.raises(ValueError, match="folded"):
        q.sft_loss(obs, actions)


def test_flow_head_learns_the_conditional_mean_and_keeps_its_pinned_scale():
    """SFT by flow matching makes the x = 0, t = 1 output the demonstrations' mean action; a scale floor below the
    pinned std leaves it, one above pins the scale there."""
    from pirl.policies.regression import FLOW_STD

    torch.manual_seed(0)
    p = make_regression_policy(S, D, action_horizon=H, hidden=64, depth=2, loss="flow")
    states = torch.randn(512, S)
    target = torch.stack([states[:, 0], -states[:, 1]], dim=-1).unsqueeze(1).expand(512, H, D)  # a = f(s)
    chunks = target + 0.05 * torch.randn(512, H, D)
    sft_fit(p, states, chunks, steps=600, lr=2e-3, seed=0)
    with torch.no_grad():
        mean = p.unnormalize_actions(p.params(p.encode({"state": states}))[0])
    err = (mean - target).abs().mean() / target.abs().mean()
    assert err < 0.15, f"relative error of the one-step mean {err:.3f}"
    p.set_scale_floor(0.135)
    assert p.scale_pinned and p.cfg.scale_min == FLOW_STD
    p.set_scale_floor(0.4)
    assert p.scale_pinned and p.cfg.scale_min == p.cfg.scale_max == 0.4


# -- the flow-trained tokenized head (loss=flow) -----------------------------------------------------
def test_flow_tokenized_head_folds_into_the_discretised_gaussian_of_the_denoisers_mean(tmp_path):
    """SFT trains the trunk and an auxiliary output layer as a flow denoiser (the regression head's loss=flow); the
    fold leaves the plain tokenized network whose softmax is N(mu, FLOW_STD^2) over the bins, mu the denoiser's
    output at x = 0, t = 1; it saves and loads as such, and SFT on it is refused."""
    from pirl.policies.io import load_policy, save_policy
    from pirl.policies.mlp import sincos_embedding
    from pirl.policies.regression import FLOW_STD

    torch.manual_seed(0)
    p = make_tokenized_policy(S, D, action_horizon=H, hidden=32, depth=2, bins=128, loss="flow")
    assert p.cfg.denoiser_inputs and p.trunk[0].in_features == 32 + p.cfg.time_dim + H * D
    with torch.no_grad():  # a mean within the bins' range, as SFT leaves it
        p.flow_head.weight.mul_(0.3)
    obs, actions = _obs(B=8), torch.randn(8, H, D)
    ctx = p.encode(obs)
    loss = p.sft_loss(obs, actions, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(loss, _flow_loss_by_hand(p, ctx, actions, p.flow_head, seed=3))
    with torch.no_grad():
        x0 = torch.cat([ctx, sincos_embedding(torch.ones(8), p.cfg.time_dim), torch.zeros(8, H * D)], dim=-1)
        mu = p.flow_head(p.trunk(x0)).view(8, H, D)
        unfolded = p.params(ctx)  # what SFT's own evaluations sample from
    p.fold_denoiser()
    assert not p.cfg.denoiser_inputs and p.flow_head is None and p.trunk[0].in_features == 32
    centres = p.detokenize(torch.arange(128).view(-1, 1).expand(-1, D)).T  # [D, bins]
    with torch.no_grad():
        probs = p.params(p.encode(obs)).softmax(-1)
    by_hand = torch.softmax(-(centres - mu.unsqueeze(-1)) ** 2 / (2 * FLOW_STD**2), dim=-1)
    torch.testing.assert_close(probs, by_hand, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(unfolded.softmax(-1), probs, atol=1e-5, rtol=1e-4)
    mean = (probs * centres).sum(-1)
    std = ((probs * (centres - mean.unsqueeze(-1)) ** 2).sum(-1)).sqrt()
    torch.testing.assert_close(mean, mu, atol=1e-3, rtol=0)
    torch.testing.assert_close(std, torch.full_like(std, FLOW_STD), atol=1e-3, rtol=0)
    q, _ = load_policy(save_policy(p, tmp_path / "tok.safetensors"))
    assert q.flow_head is None and q.cfg.loss == "flow"
    with torch.no_grad():
        torch.testing.assert_close(q.params(q.encode(obs)), p.params(p.encode(obs)))
    with pytest.raises(ValueError, match="folded"):
        q.sft_loss(obs, actions)
    with pytest.raises(ValueError, match="loss must be 'ce' or 'flow'"):
        make_tokenized_policy(S, D, loss="denoise")


def test_tokenized_chunk_correlation_draws_the_equicorrelated_gaussian_of_a_gaussian_softmax():
    """With correlation c, a flow-trained tokenized head (its softmax a discretised Gaussian) draws each action's
    tokens given the chunk's earlier ones: per element the std stays FLOW_STD, actions of a chunk correlate by c, and
    the log-probs are the regression head's equicorrelated Gaussian density plus log(bin width), to the bins'
    resolution; re-scoring the record reproduces them exactly, and the first action's logits are the plain ones."""
    from pirl.policies.regression import FLOW_STD, RegressionPolicy

    torch.manual_seed(0)
    h = 8
    p = make_tokenized_policy(3, D, action_horizon=h, hidden=16, depth=1, loss="flow")
    with torch.no_grad():
        p.flow_head.weight.mul_(0.3)
    p.fold_denoiser()
    B = 4000
    obs = {"state": torch.randn(1, 3).expand(B, 3)}
    out = p.act(obs, HeadSamplerConfig(correlation=0.9), generator=torch.Generator().manual_seed(1))
    x = out.chain.actions
    assert out.chain.correlation == 0.9
    torch.testing.assert_close(x.std(0), torch.full((h, D), FLOW_STD), atol=0.015, rtol=0)
    xc = x - x.mean(0)
    corr = (xc[:, 0] * xc[:, 5]).mean(0) / (xc[:, 0].std(0) * xc[:, 5].std(0))
    torch.testing.assert_close(corr, torch.full((D,), 0.9), atol=0.02, rtol=0)
    ev = p.evaluate(obs, out.chain)
    torch.testing.assert_close(ev.log_prob, out.log_prob, atol=0, rtol=0)
    params = p.params(p.encode({"state": obs["state"][:200]}))
    centres = p._centres()
    mean = (params.softmax(-1) * centres).sum(-1)
    gauss = RegressionPolicy._correlated_log_density(x[:200], mean, torch.full_like(mean, math.log(FLOW_STD)), 0.9)
    lp = p.element_log_prob(params, out.chain.index(slice(0, 200)))
    assert float((lp - gauss - torch.log(p.bin_width)).abs().mean()) < 0.08
    torch.testing.assert_close(p._conditional_logits(params, out.chain.tokens[:200], 0.9, 1.0)[:, 0], params[:, 0])
    indep = p.act(obs, HeadSamplerConfig(), generator=torch.Generator().manual_seed(1)).chain.actions
    xi = indep - indep.mean(0)
    assert float(((xi[:, 0] * xi[:, 5]).mean(0) / (xi[:, 0].std(0) * xi[:, 5].std(0))).abs().max()) < 0.06


def test_tokenized_chunk_correlation_has_the_correlated_gaussians_gradient():
    """For Gaussian-shaped logits the gradient of a correlated record's log-prob with respect to the means is the
    regression head's equicorrelated density's: each conditional's kernel is differentiated too (detached, a shift
    common to the chunk would count ~1 / (1 - c) times over in the later actions)."""
    from pirl.policies.regression import FLOW_STD, RegressionPolicy

    torch.manual_seed(0)
    h = 8
    p = make_tokenized_policy(3, D, action_horizon=h, hidden=16, depth=1)
    centres = p._centres()
    mu = (0.3 * torch.randn(5, h, D)).requires_grad_()
    logits = -(centres - mu.unsqueeze(-1)) ** 2 / (2 * FLOW_STD**2)
    with torch.no_grad():
        sample = p.draw(logits, HeadSamplerConfig(correlation=0.9), torch.Generator().manual_seed(0))
    g_tok, = torch.autograd.grad(p.element_log_prob(logits, sample).sum(), mu)
    mu_reg = mu.detach().clone().requires_grad_()
    log_std = torch.full_like(mu_reg, math.log(FLOW_STD))
    g_reg, = torch.autograd.grad(RegressionPolicy._correlated_log_density(sample.actions, mu_reg, log_std, 0.9).sum(),
                                 mu_reg)
    torch.testing.assert_close(g_tok, g_reg, atol=1e-3, rtol=1e-3)



def test_tokenized_chunk_correlation_stays_smooth_when_the_softmax_is_sharp():
    """A softmax far sharper than the kernel (RL sharpens them) keeps the correlated log-probs' gradient as bounded
    as an independent draw's (|d log p / d logit| <= 1 per element): the kernel's width is fixed, not the softmax's
    own std, whose 1 / std^2 amplified it ~13x here (and a first update's approx-KL to 3e5 on MetaWorld)."""
    torch.manual_seed(0)
    p = make_tokenized_policy(3, D, action_horizon=8, hidden=16, depth=1)
    mu = 0.3 * torch.randn(64, 8, D)
    logits = (-(p._centres() - mu.unsqueeze(-1)) ** 2 / (2 * 0.01**2)).requires_grad_()
    sample = p.draw(logits.detach(), HeadSamplerConfig(correlation=0.9), torch.Generator().manual_seed(0))
    grad, = torch.autograd.grad(p.element_log_prob(logits, sample).sum(), logits)
    assert float(grad.abs().max()) < 1.5
