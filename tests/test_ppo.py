"""PPO loss by hand, the update loop's safety checks, and bad input."""

import copy
import dataclasses
import math

import numpy as np
import pytest
import torch
from torch import nn

from pirl.algorithms import (
    AdvantageConfig,
    OptimizerConfig,
    PPOConfig,
    PPOUpdater,
    RatioCheckError,
    build_batch,
    make_optimizer,
    ppo_loss,
    preset,
)
from pirl.algorithms.advantages import normalize
from pirl.errors import NonFiniteError
from pirl.envs.point_mass import PointMassConfig, PointMassEnv
from pirl.flow import SamplerConfig
from pirl.policies.mlp import make_mlp_policy
from pirl.train.rollout import CollectorConfig, RolloutCollector

torch.set_num_threads(1)


def test_ppo_loss_asymmetric_clip_hand_computed():
    cfg = PPOConfig(clip_low=0.1, clip_high=0.3)
    ratio = torch.tensor([1.5, 1.5, 0.5, 0.5, 1.0])
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0, 2.0])
    old = torch.zeros(5)
    loss, diag = ppo_loss(ratio.log(), old, adv, cfg)
    # per sample: -min(rA, clip(r)A) with clip to [0.9, 1.3]
    expected = [-1.3, 1.5, -0.5, 0.9, -2.0]
    assert loss.item() == pytest.approx(sum(expected) / 5, rel=1e-6)
    assert diag["policy/clip_fraction"].item() == pytest.approx(4 / 5)
    assert diag["policy/ratio_max"].item() == pytest.approx(1.5)


def test_ppo_loss_dual_clip():
    ratio, adv = torch.tensor([10.0]), torch.tensor([-1.0])
    plain, _ = ppo_loss(ratio.log(), torch.zeros(1), adv, PPOConfig())
    dual, _ = ppo_loss(ratio.log(), torch.zeros(1), adv, PPOConfig(dual_clip=3.0))
    assert plain.item() == pytest.approx(10.0) and dual.item() == pytest.approx(3.0)


def test_ppo_loss_element_level():
    cfg = PPOConfig(ratio_level="element")
    lp = torch.log(torch.tensor([[1.5, 1.0], [0.5, 1.0]]))
    loss, _ = ppo_loss(lp, torch.zeros(2, 2), torch.tensor([1.0, 1.0]), cfg)
    assert loss.item() == pytest.approx(-(1.2 + 1.0 + 0.5 + 1.0) / 4)
    with pytest.raises(ValueError, match="ratio_level 'chunk'"):
        ppo_loss(lp, torch.zeros(2, 2), torch.ones(2), PPOConfig())


@pytest.mark.parametrize("chain_clip", [True, False])
def test_averaged_log_probs_clip_and_report_on_the_chain(chain_clip):
    """A log-prob averaged over n terms: KL, clip fraction and ratios are the chain's (n x the log-ratio); with
    chain_clip the surrogate clips exactly where the chain's ratio leaves [1 - eps, 1 + eps]."""
    n = torch.tensor([5.0, 5.0, 5.0, 2.0])
    chain_lr = torch.tensor([0.1, 0.3, -0.3, 0.25])
    adv = torch.ones(4)
    cfg = PPOConfig(chain_clip=chain_clip)
    loss, diag = ppo_loss(chain_lr / n, torch.zeros(4), adv, cfg, log_prob_terms=n)
    summed_loss, summed = ppo_loss(chain_lr, torch.zeros(4), adv, cfg)
    chain_ratio = chain_lr.exp()
    assert diag["policy/approx_kl"].item() == pytest.approx((chain_ratio - 1 - chain_lr).mean().item(), rel=1e-5)
    assert diag["policy/approx_kl"].item() == pytest.approx(summed["policy/approx_kl"].item(), rel=1e-5)
    assert diag["policy/clip_fraction"].item() == summed["policy/clip_fraction"].item() == pytest.approx(3 / 4)
    assert diag["policy/ratio_max"].item() == pytest.approx(chain_ratio.max().item())
    # per sample -min(r, clip(r)) with A = 1 and r = the averaged ratio exp(chain_lr / n)
    r = (chain_lr / n).exp()
    if chain_clip:  # clipped at (1 + eps)^(1/n): the chain's bound
        expected = -torch.minimum(r, chain_ratio.clamp(0.8, 1.2) ** (1 / n))
    else:  # the averaged ratio never reaches 1.2: nothing is clipped, the chain runs past its trust region
        expected = -torch.minimum(r, r.clamp(0.8, 1.2))
    assert loss.item() == pytest.approx(expected.mean().item(), rel=1e-6)
    assert summed_loss.item() == pytest.approx(-torch.minimum(chain_ratio, chain_ratio.clamp(0.8, 1.2)).mean().item())


def test_chain_kl_of_an_averaging_flow_noise_policy_is_that_of_the_summed_log_ratio():
    policy, batch, cfg = _setup("flow_noise", reduce="mean")
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.02 * torch.randn_like(p))  # a policy some steps away from the rollout's
    _, diag = PPOUpdater(policy, cfg).loss(batch)
    summed = dataclasses.replace(batch.chain, reduce="sum")
    with torch.no_grad():
        log_ratio = policy.evaluate(batch.obs, summed).log_prob - summed.log_prob
    assert diag["policy/approx_kl"].item() == pytest.approx((log_ratio.exp() - 1 - log_ratio).mean().item(), rel=1e-4)
    outside = (log_ratio.exp() < 0.8) | (log_ratio.exp() > 1.2)
    assert diag["policy/clip_fraction"].item() == pytest.approx(outside.float().mean().item())
    assert 0 < diag["policy/clip_fraction"].item() < 1


def test_ppo_value_entropy_kl_terms():
    v, ret, old_v = torch.tensor([3.0]), torch.tensor([0.0]), torch.tensor([0.0])
    zero = torch.zeros(1)
    cfg = PPOConfig(value_coef=1.0)
    loss, d = ppo_loss(zero, zero, zero, cfg, value=v, returns=ret)
    assert d["loss/value"].item() == pytest.approx(4.5)  # 0.5 * 3^2
    _, d = ppo_loss(zero, zero, zero, dataclasses.replace(cfg, value_loss="huber"), value=v, returns=ret)
    assert d["loss/value"].item() == pytest.approx(2.5)  # |3| - 0.5
    # clipping takes the worse of clipped and unclipped: clipped value 0.5 is closer, so unclipped wins
    _, d = ppo_loss(zero, zero, zero, dataclasses.replace(cfg, value_clip=0.5), value=v, old_value=old_v, returns=ret)
    assert d["loss/value"].item() == pytest.approx(4.5)
    _, d = ppo_loss(zero, zero, zero, dataclasses.replace(cfg, value_clip=0.5), value=torch.tensor([-1.0]),
                    old_value=torch.tensor([-3.0]), returns=ret)
    assert d["loss/value"].item() == pytest.approx(0.5 * 2.5**2)  # clipped to -2.5
    loss, d = ppo_loss(zero, zero, zero, PPOConfig(entropy_coef=0.1), entropy=torch.tensor([2.0]))
    assert loss.item() == pytest.approx(-0.2)
    lr = torch.tensor([0.5])
    loss, d = ppo_loss(lr, zero, zero, PPOConfig(kl_coef=1.0))
    assert d["loss/kl"].item() == pytest.approx(math.exp(0.5) - 1 - 0.5)
    assert loss.item() == pytest.approx(d["loss/kl"].item())


def test_ppo_config_validates():
    with pytest.raises(ValueError, match="clip_low"):
        PPOConfig(clip_low=-0.1)
    with pytest.raises(ValueError, match="dual_clip"):
        PPOConfig(dual_clip=0.5)
    with pytest.raises(ValueError, match="did you mean 'grpo'"):
        preset("grpoo")


def test_value_head_has_own_learning_rate():
    policy = make_mlp_policy(4, 2, hidden=16, depth=1)
    opt = make_optimizer(policy, OptimizerConfig(lr=1e-4, value_lr=5e-3))
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs == {"policy": 1e-4, "value": 5e-3}
    value_ids = {id(p) for p in policy.value_head.parameters()}
    assert {id(p) for p in opt.param_groups[1]["params"]} == value_ids


# -- the update loop on a real (tiny) rollout ------------------------------------------------
def _setup(method="flow_sde", estimator="gae", group_size=1, seed=0, reduce="sum", **ppo):
    torch.manual_seed(seed)
    policy = make_mlp_policy(4, 2, action_horizon=4, hidden=32, depth=2)
    env = PointMassEnv(8, PointMassConfig(max_chunk_steps=3))
    sampler = SamplerConfig(method=method, reduce=reduce)
    collector = RolloutCollector(env, policy, sampler, CollectorConfig(num_groups=8 // group_size, group_size=group_size, seed=seed))
    batch = build_batch(collector.collect().buffers, AdvantageConfig(estimator))
    cfg = PPOConfig(epochs=2, minibatch_size=8, **ppo)
    return policy, batch, cfg


@pytest.mark.parametrize("method", ["flow_sde", "flow_noise"])
def test_update_runs_and_reports_metrics(method):
    policy, batch, cfg = _setup(method)
    before = copy.deepcopy(policy.state_dict())
    metrics = PPOUpdater(policy, cfg).update(batch)
    for key in ["loss/policy", "loss/value", "loss/entropy", "policy/approx_kl", "policy/clip_fraction",
                "policy/ratio_mean", "policy/ratio_max", "policy/explained_variance", "loss/grad_norm",
                "policy/adv_mean", "policy/adv_std", "rollout/groups_dropped", "loss/skipped_steps"]:
        assert key in metrics, key
    assert 0 <= metrics["policy/ratio_check"] <= metrics["policy/ratio_check_tol"] < 1e-2
    assert metrics["loss/skipped_steps"] == 0 and metrics["loss/optimizer_steps"] > 0
    changed = any(not torch.equal(before[k], v) for k, v in policy.state_dict().items())
    assert changed
    # the update moves probability towards positive advantages: the surrogate's first-order gain is positive
    with torch.no_grad():
        gain = normalize(batch.advantages) * (policy.evaluate(batch.obs, batch.chain).log_prob - batch.old_log_prob)
    assert gain.mean() > 0, f"{method}: the update moved log-probs against the advantages ({gain.mean():.3g})"


def test_ratio_check_fires_on_corrupted_batch():
    policy, batch, cfg = _setup()
    bad = batch.replace(old_log_prob=batch.old_log_prob + 0.01)
    before = copy.deepcopy(policy.state_dict())
    with pytest.raises(RatioCheckError, match="time grid mismatch.*dropout.*changed inputs"):
        PPOUpdater(policy, cfg).update(bad)
    assert all(torch.equal(before[k], v) for k, v in policy.state_dict().items())
    # changed inputs: observations perturbed after the rollout
    obs = dict(batch.obs, state=batch.obs["state"] + 0.1)
    with pytest.raises(RatioCheckError):
        PPOUpdater(policy, cfg).update(batch.replace(obs=obs))


def _rollout_batch(method: str, reduce: str = "sum", rows: int = 96, seed: int = 0):
    """A MetaWorld-shaped MLP (39-dim state, 2 tasks, hidden 256, H = 8 actions of 4 dims, 4 executed) that acted
    on one observation at a time: batch-1 inference sums in another order than minibatch re-scoring."""
    from pirl.algorithms import RolloutBatch
    from pirl.flow import Chain

    torch.manual_seed(seed)
    policy = make_mlp_policy(39, 4, action_horizon=8, num_tasks=2, hidden=256, depth=3)
    with torch.no_grad():
        policy.out.weight.mul_(30.0)  # a trained policy's velocities, not a fresh head's near-zero ones
    sampler = SamplerConfig(method=method, noise_level=1.0, reduce=reduce, logp_steps=4)
    g = torch.Generator().manual_seed(seed)
    obs = {"state": torch.randn(rows, 39, generator=g), "task": torch.randint(0, 2, (rows,), generator=g)}
    outs = [policy.act({k: v[i : i + 1] for k, v in obs.items()}, sampler, generator=g) for i in range(rows)]
    zeros = torch.zeros(rows)
    return policy, RolloutBatch(obs, Chain.cat([o.chain for o in outs]), torch.cat([o.log_prob for o in outs]),
                                torch.cat([o.value for o in outs]), zeros, zeros, zeros.long(), zeros.long())


RATIO_CASES = [("flow_sde", "sum"), ("flow_noise", "sum"), ("flow_noise", "mean")]


@pytest.mark.parametrize("method,reduce", RATIO_CASES)
def test_ratio_check_tolerates_rescoring_at_other_batch_sizes_and_orders(method, reduce):
    policy, batch = _rollout_batch(method, reduce)
    updater = PPOUpdater(policy, PPOConfig())
    g = torch.Generator().manual_seed(0)
    seen = []
    for size in (1, 3, 16, len(batch)):
        perm = torch.randperm(len(batch), generator=g)
        for s in range(0, len(batch), size):
            metrics = updater.check_ratio(batch.index(perm[s : s + size]))
            assert metrics["policy/ratio_check"] <= metrics["policy/ratio_check_tol"]
            seen.append(metrics["policy/ratio_check"])
    # the velocity network's round-off, emulated: every output moved by up to 16 ulp changes the log-probs by more
    # than the old fixed 1e-5 bound, and stays within the round-off tolerance
    velocity = policy.velocity

    def rounded(ctx, x, t):
        v, features = velocity(ctx, x, t)
        return v * (1 + 16 * torch.finfo(torch.float32).eps * torch.sin(1e4 * v)), features

    policy.velocity = rounded
    metrics = updater.check_ratio(batch)
    print(f"{method}/{reduce}: re-scoring |dlogp| <= {max(seen):.2g}, emulated round-off {metrics}")
    assert metrics["policy/ratio_check"] > 1e-5


@pytest.mark.parametrize("method,reduce", RATIO_CASES)
def test_ratio_check_re_scores_in_micro_batches(method, reduce):
    """The check evaluates ppo.micro_batch_size samples at a time (a whole minibatch at once held ~7 GB of
    activations for full-size π0), and reads the same deviation and tolerance as one pass over the batch."""
    policy, batch = _rollout_batch(method, reduce, rows=20)
    sizes = []
    evaluate = policy.evaluate

    def spy(obs, chain, **kw):
        sizes.append(len(chain.xs))
        return evaluate(obs, chain, **kw)

    whole = PPOUpdater(policy, PPOConfig()).check_ratio(batch)
    policy.evaluate = spy
    micro = PPOUpdater(policy, PPOConfig(micro_batch_size=8)).check_ratio(batch)
    assert sizes == [8, 8, 4]
    assert micro["policy/ratio_check_tol"] == pytest.approx(whole["policy/ratio_check_tol"], rel=1e-5)
    assert micro["policy/ratio_check"] <= micro["policy/ratio_check_tol"]
    with pytest.raises(RatioCheckError):  # a corrupted row in the last micro-batch is still caught
        PPOUpdater(policy, PPOConfig(micro_batch_size=8)).check_ratio(
            batch.replace(old_log_prob=batch.old_log_prob + torch.arange(20).eq(19).float()))


@pytest.mark.parametrize("method,reduce", RATIO_CASES)
@pytest.mark.parametrize("shift", ["tenth_step", "one_step"])
def test_ratio_check_catches_a_shifted_time_grid(method, reduce, shift, monkeypatch):
    from pirl.flow import sampler as flow_sampler

    policy, batch = _rollout_batch(method, reduce, rows=16)
    grid = flow_sampler.time_grid

    def shifted(steps, device=None):
        t = grid(steps, device)
        return t - 0.1 / steps if shift == "tenth_step" else torch.cat([t[1:], t[-1:]])

    monkeypatch.setattr(flow_sampler, "time_grid", shifted)
    with pytest.raises(RatioCheckError, match="time grid mismatch"):
        PPOUpdater(policy, PPOConfig()).check_ratio(batch)


def test_ratio_check_catches_dropout():
    policy, batch, cfg = _setup()
    policy.obs_encoder.insert(1, nn.Dropout(0.5))  # stochastic in train mode
    policy.eval()
    batch2 = build_batch(
        RolloutCollector(PointMassEnv(8, PointMassConfig(max_chunk_steps=3)), policy, SamplerConfig(),
                         CollectorConfig(num_groups=8)).collect().buffers, AdvantageConfig())
    policy.train()
    with pytest.raises(RatioCheckError):
        PPOUpdater(policy, cfg).update(batch2)


class _NaNAfter(nn.Module):
    """Wraps a policy; evaluate returns NaN log-probs after the ratio check (the first call)."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls = inner, 0

    def evaluate(self, obs, chain):
        out = self.inner.evaluate(obs, chain)
        self.calls += 1
        if self.calls > 1:
            out.log_prob = out.log_prob * math.nan
        return out


def test_nonfinite_loss_skips_step_and_keeps_weights():
    policy, batch, cfg = _setup()
    wrapped = _NaNAfter(policy)
    before = copy.deepcopy(policy.state_dict())
    updater = PPOUpdater(wrapped, cfg)
    metrics = updater.update(batch)
    n_minibatches = cfg.epochs * math.ceil(len(batch) / cfg.minibatch_size)
    assert metrics["loss/skipped_steps"] == n_minibatches and metrics["loss/optimizer_steps"] == 0
    assert updater.skipped_total == n_minibatches
    assert all(torch.equal(before[k], v) for k, v in policy.state_dict().items())
    assert all(len(s) == 0 for s in updater.optimizer.state.values())  # Adam never stepped


def test_an_update_that_leaves_non_finite_weights_says_so():
    """A finite but huge step can overflow the weights; the next rollout would fail far from the cause."""
    policy, batch, cfg = _setup()
    updater = PPOUpdater(policy, dataclasses.replace(cfg, epochs=1, minibatch_size=len(batch)), OptimizerConfig(lr=1e-3))
    step = updater.optimizer.step

    def overflowing_step(*args, **kwargs):
        step(*args, **kwargs)
        with torch.no_grad():
            updater.params[0].view(-1)[0] = math.inf

    updater.optimizer.step = overflowing_step
    names = {id(p): n for n, p in policy.named_parameters()}
    with pytest.raises(NonFiniteError, match=f"non-finite weights.*first in {names[id(updater.params[0])]}"):
        updater.update(batch)


def test_gradient_accumulation_matches_full_minibatch():
    policy, batch, _ = _setup()
    cfg = PPOConfig(epochs=1, minibatch_size=len(batch), max_grad_norm=None)
    twin = copy.deepcopy(policy)
    PPOUpdater(policy, cfg).update(batch)
    PPOUpdater(twin, dataclasses.replace(cfg, micro_batch_size=max(1, len(batch) // 3))).update(batch)
    for (k, a), b in zip(policy.state_dict().items(), twin.state_dict().values()):
        torch.testing.assert_close(a, b, atol=2e-6, rtol=1e-4, msg=k)


class _ChainKL(nn.Module):
    """Wraps a Flow-Noise policy whose chains average their K + 1 terms; records the chain's KL (k3 of the summed
    log-ratio, rebuilt here from the averaged one) at every re-scoring."""

    def __init__(self, inner, terms: int):
        super().__init__()
        self.inner, self.terms, self.kls = inner, terms, []

    def evaluate(self, obs, chain):
        out = self.inner.evaluate(obs, chain)
        log_ratio = (out.log_prob.detach() - chain.log_prob) * self.terms
        self.kls.append(float((log_ratio.exp() - 1 - log_ratio).mean()))
        return out


def test_target_kl_stops_at_the_first_step_whose_chain_kl_exceeds_it():
    policy, batch, _ = _setup("flow_noise", reduce="mean")
    cfg = PPOConfig(epochs=12, minibatch_size=len(batch), value_coef=0.0)  # every step sees the whole batch
    free = _ChainKL(copy.deepcopy(policy), terms=4 + 1)
    metrics = PPOUpdater(free, cfg, OptimizerConfig(lr=1e-3)).update(batch)
    kls = free.kls[1:]  # the first re-scoring is the ratio check; then one per step, before that step
    assert metrics["policy/early_stopped"] == 0.0 and len(kls) == 12
    assert metrics["policy/approx_kl"] == pytest.approx(sum(kls) / 12, rel=1e-4)
    target = (kls[5] + kls[6]) / 2  # a step in the middle: stopping at once or never both fail
    assert kls[6] / 25 < target < kls[6], "the averaged log-ratio's KL (~1/25 of the chain's) would not stop here"
    expected_steps = next(i for i, kl in enumerate(kls) if kl > target) + 1  # the step is taken, then the loop stops
    capped = _ChainKL(copy.deepcopy(policy), terms=5)
    metrics = PPOUpdater(capped, dataclasses.replace(cfg, target_kl=target), OptimizerConfig(lr=1e-3)).update(batch)
    assert metrics["policy/early_stopped"] == 1.0 and metrics["loss/optimizer_steps"] == expected_steps
    np.testing.assert_allclose(capped.kls[1:], kls[:expected_steps], rtol=1e-5)


def test_update_bad_input():
    policy, batch, cfg = _setup()
    updater = PPOUpdater(policy, cfg)
    with pytest.raises(ValueError, match="empty batch"):
        updater.update(batch.index(torch.zeros(0, dtype=torch.long)))
    with pytest.raises(ValueError, match="rows"):
        updater.update(batch.replace(returns=batch.returns[:-1]))
    nan_adv = batch.advantages.clone()
    nan_adv[0] = math.nan
    with pytest.raises(ValueError, match="NaN"):
        updater.update(batch.replace(advantages=nan_adv))


def test_grpo_batch_with_single_rollout_groups_raises():
    with pytest.raises(ValueError, match="at least 2 rollouts per group"):
        _setup(estimator="grpo", group_size=1)


def test_gae_without_critic_raises():
    policy = make_mlp_policy(4, 2, hidden=16, depth=1, value_head=False)
    env = PointMassEnv(4, PointMassConfig(max_chunk_steps=2))
    rollout = RolloutCollector(env, policy, SamplerConfig(), CollectorConfig(num_groups=4)).collect()
    with pytest.raises(ValueError, match="GAE needs values"):
        build_batch(rollout.buffers, AdvantageConfig("gae"))


# -- a non-flow policy with its own record type and per-element log-probs ----------------------
@dataclasses.dataclass
class _Record:
    actions: torch.Tensor  # [B, M]

    def index(self, idx):
        return _Record(self.actions[idx])

    def to(self, device):
        return _Record(self.actions.to(device))

    @staticmethod
    def cat(records):
        return _Record(torch.cat([r.actions for r in records]))


class _GaussianPolicy(nn.Module):
    def __init__(self):
        super().__init__()
        self.mu = nn.Linear(4, 3)
        self.log_std = nn.Parameter(torch.zeros(3))

    def dist(self, obs):
        return torch.distributions.Normal(self.mu(obs["state"]), self.log_std.exp())

    def evaluate(self, obs, record):
        from pirl.policies.base import EvalOutput

        d = self.dist(obs)
        return EvalOutput(d.log_prob(record.actions), None, d.entropy().mean(-1))


def test_opaque_record_and_element_ratio():
    from pirl.algorithms import RolloutBuffer

    torch.manual_seed(0)
    policy = _GaussianPolicy()
    buf = RolloutBuffer(num_steps=3, num_envs=4)
    buf.set_ids(torch.zeros(4), torch.tensor([0, 0, 1, 1]), torch.tensor([0, 0, 1, 1]))
    valid = torch.ones(4, dtype=torch.bool)
    for t in range(3):
        obs = {"state": torch.randn(4, 4)}
        with torch.no_grad():
            a = policy.dist(obs).sample()
            lp = policy.dist(obs).log_prob(a)  # [N, M]
        last = torch.full((4,), t == 2)
        reward = (a.sum(-1) > 0).float() * last
        buf.add(obs, _Record(a), lp, None, reward, last, torch.zeros(4, dtype=torch.bool), valid)
    batch = build_batch([buf], AdvantageConfig("rloo"))
    assert batch.old_log_prob.shape == (12, 3)
    before = copy.deepcopy(policy.state_dict())
    cfg = PPOConfig(ratio_level="element", normalize_advantages=False, value_coef=0.0, entropy_coef=0.01,
                    minibatch_size=4, epochs=2)
    metrics = PPOUpdater(policy, cfg).update(batch)
    assert metrics["policy/ratio_check"] <= 1e-5 and metrics["loss/optimizer_steps"] == 6
    assert any(not torch.equal(before[k], v) for k, v in policy.state_dict().items())
    with pytest.raises(ValueError, match="needs old log-probs \\[B, M\\]"):
        PPOUpdater(policy, PPOConfig(ratio_level="element")).update(
            batch.replace(old_log_prob=batch.old_log_prob[:, 0]))
    with pytest.raises(ValueError, match="differ in shape"):
        PPOUpdater(policy, PPOConfig(ratio_level="element")).update(
            batch.replace(old_log_prob=batch.old_log_prob[:, :2]))
