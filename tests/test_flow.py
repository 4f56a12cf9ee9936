"""The samplers against docs/MATH.md: marginals, ratio-1 identity, gradients, edge cases, errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from pirl import flow
from pirl.flow import NoiseHead, SamplerConfig

torch.set_num_threads(1)

M, S = 0.7, 0.5  # target a ~ N(M, S^2 I)


def gaussian_velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Exact velocity for data N(M, S^2 I) (MATH.md's marginal check)."""
    t = t.view(-1, *([1] * (x.dim() - 1)))
    var = t**2 + (1 - t) ** 2 * S**2
    return (t - (1 - t) * S**2) / var * (x - (1 - t) * M) - M


def final_moments(method: str, steps: int, n: int = 40_000, **kw) -> tuple[float, float]:
    g = torch.Generator().manual_seed(1234)
    chain = flow.sample(gaussian_velocity, torch.randn(n, 3, generator=g), steps=steps, method=method, generator=g, **kw)
    a = chain.actions
    return a.mean().item(), a.var().item()


MARGINAL_CASES = [("ode", {})] + [
    ("flow_sde", {"noise_level": a, "sde_steps": mode}) for a in (0.3, 0.5, 0.8) for mode in ("one", "all")
]


@pytest.mark.parametrize("method,kw", MARGINAL_CASES, ids=lambda c: str(c))
def test_marginals_reach_target_and_error_shrinks_with_K(method, kw):
    errs = []
    for steps in (4, 16, 128):
        mean, var = final_moments(method, steps, **kw)
        errs.append(abs(mean - M) + abs(var - S**2))
    mean, var = final_moments(method, 128, **kw)
    # sampling error of the variance over 120k scalars is ~1e-3; discretisation at K=128 is ~4e-3
    assert abs(mean - M) < 0.01, (method, kw, mean)
    assert abs(var - S**2) < 0.015, (method, kw, var)
    assert errs[2] < errs[0], f"error did not shrink with K: {errs}"
    assert errs[2] < 0.5 * errs[0] or errs[0] < 0.02


class MLPVelocity(nn.Module):
    """A small conditional velocity network over [B, H, D] chunks, with features for a noise head."""

    def __init__(self, shape=(4, 3), hidden=64, dtype=torch.float32):
        super().__init__()
        self.shape = shape
        n = math.prod(shape)
        self.body = nn.Sequential(nn.Linear(n + 1, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU()).to(dtype)
        self.out = nn.Linear(hidden, n).to(dtype)
        self.noise = NoiseHead(hidden, shape)
        self.dtype = dtype

    def features(self, x, t):
        h = torch.cat([x.flatten(1), t.view(-1, 1)], dim=1).to(self.dtype)
        return self.body(h)

    def forward(self, x, t):
        return self.out(self.features(x, t)).view(x.shape)

    def with_std(self, x, t):
        f = self.features(x, t)
        return self.out(f).view(x.shape), self.noise(f, t)


METHOD_CASES = [
    ("ode", {}),
    ("flow_sde", {"noise_level": 0.5, "sde_steps": "one"}),
    ("flow_sde", {"noise_level": 0.5, "sde_steps": "all"}),
    ("flow_noise", {}),
    ("flow_noise", {"noise_steps": "one"}),
]


def _velocity_for(model: MLPVelocity, method: str):
    return model.with_std if method == "flow_noise" else model


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("batch", [1, 256])
@pytest.mark.parametrize("method,kw", METHOD_CASES, ids=lambda c: str(c))
@pytest.mark.parametrize("reduce", ["sum", "mean"])
def test_ratio_one_identity(method, kw, batch, dtype, reduce):
    torch.manual_seed(0)
    model = MLPVelocity(dtype=dtype)
    g = torch.Generator().manual_seed(7)
    vel = _velocity_for(model, method)
    with torch.no_grad():
        chain = flow.sample(vel, torch.randn(batch, 4, 3, generator=g), steps=5, method=method, generator=g,
                            reduce=reduce, **kw)
        again = flow.log_prob(vel, chain)
    assert chain.log_prob.dtype == torch.float32 and chain.log_probs.dtype == torch.float32
    assert torch.isfinite(chain.log_prob).all()
    ratio = torch.exp(again - chain.log_prob)
    assert (ratio - 1).abs().max().item() <= 1e-6
    if method == "ode":
        assert (chain.log_prob == 0).all()


def test_hybrid_structure_and_single_velocity_call():
    model = MLPVelocity()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        chain = flow.sample(model, torch.randn(64, 4, 3, generator=g), steps=6, method="flow_sde", noise_level=0.5,
                            generator=g)
    assert chain.xs.shape == (64, 7, 4, 3) and chain.means.shape == (64, 6, 4, 3)
    assert (chain.stochastic.sum(1) == 1).all()
    assert len(set(chain.stochastic.float().argmax(1).tolist())) > 1, "the SDE step index should vary per sample"
    assert ((chain.stds > 0).flatten(2).all(2) == chain.stochastic).all()
    assert torch.equal(chain.actions, chain.xs[:, -1])
    calls = []

    def counting(x, t):
        calls.append(x.shape[0])
        return model(x, t)

    flow.log_prob(counting, chain)
    assert calls == [64], "hybrid re-evaluation must be one batched velocity call"


@pytest.mark.parametrize("method,kw", METHOD_CASES[1:], ids=lambda c: str(c))
def test_batch_elements_are_independent(method, kw):
    model = MLPVelocity()
    vel = _velocity_for(model, method)
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        chain = flow.sample(vel, torch.randn(16, 4, 3, generator=g), steps=4, method=method, generator=g, **kw)
        base = flow.log_prob(vel, chain)
        xs = chain.xs.clone()
        xs[5] += 0.3 * torch.randn_like(xs[5])
        changed = flow.log_prob(vel, flow.Chain(**{**chain.__dict__, "xs": xs}))
    others = torch.arange(16) != 5
    assert torch.equal(changed[others], base[others])
    assert changed[5] != base[5]


@pytest.mark.parametrize("method,kw", METHOD_CASES[1:], ids=lambda c: str(c))
def test_gradients_reach_velocity_and_noise_network(method, kw):
    model = MLPVelocity()
    vel = _velocity_for(model, method)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        chain = flow.sample(vel, torch.randn(32, 4, 3, generator=g), steps=4, method=method, generator=g, **kw)
    flow.log_prob(vel, chain).sum().backward()
    assert model.out.weight.grad is not None and model.out.weight.grad.abs().sum() > 0
    if method == "flow_noise":
        assert model.noise.net[-1].weight.grad.abs().sum() > 0


def test_noise_std_callable_alternative_matches_tuple_return():
    model = MLPVelocity()
    g1, g2 = torch.Generator().manual_seed(2), torch.Generator().manual_seed(2)
    x = torch.randn(8, 4, 3)
    a = flow.sample(model.with_std, x, steps=3, method="flow_noise", generator=g1)
    b = flow.sample(model, x, steps=3, method="flow_noise", generator=g2,
                    noise_std=lambda x, t: model.with_std(x, t)[1])
    assert torch.equal(a.log_prob, b.log_prob)
    assert torch.equal(flow.log_prob(model, b, noise_std=lambda x, t: model.with_std(x, t)[1]), b.log_prob)


@pytest.mark.parametrize("steps", [1, 2, 10])
def test_finite_at_t_one_and_for_one_step(steps):
    model = MLPVelocity()
    for method, kw in METHOD_CASES:
        chain = flow.sample(_velocity_for(model, method), torch.randn(32, 4, 3), steps=steps, method=method, **kw)
        for tensor in (chain.xs, chain.means, chain.stds, chain.log_probs, chain.log_prob):
            assert torch.isfinite(tensor).all(), (method, steps)
    sigma1 = flow.sde_sigma(torch.tensor([1.0]), steps, 0.5)
    assert torch.allclose(sigma1, torch.tensor([0.5 * math.sqrt(steps)]))


def test_sde_mean_matches_reference_form():
    """MATH.md: mu = x0_hat (1 - (t - d)) + x1_hat (t - d - sigma^2 d / (2t))."""
    K, a = 5, 0.5
    x, v = torch.randn(4, 3), torch.randn(4, 3)
    for k in range(1, K):  # t < 1 (the t = 1 step replaces the denominator)
        t, d = 1 - k / K, 1 / K
        tt = torch.full((4,), t)
        mean, std = flow.sampler._transition(x, v, tt, d, "flow_sde", a, K, None)
        sig2 = a**2 * t / (1 - t)
        x0, x1 = x - t * v, x + (1 - t) * v
        ref = x0 * (1 - (t - d)) + x1 * (t - d - sig2 * d / (2 * t))
        assert torch.allclose(mean, ref, atol=1e-6)
        assert torch.allclose(std, torch.full_like(std, math.sqrt(sig2 * d)), atol=1e-6)


def test_log_prob_matches_torch_distributions():
    x, m, s = torch.randn(10), torch.randn(10), torch.rand(10) + 0.1
    ref = torch.distributions.Normal(m, s).log_prob(x)
    assert torch.allclose(flow.gaussian_log_prob(x, m, s), ref, atol=1e-6)
    assert torch.allclose(flow.gaussian_entropy(s), torch.distributions.Normal(m, s).entropy(), atol=1e-6)


def test_mask_restricts_log_prob_to_executed_actions():
    model = MLPVelocity()
    mask = torch.zeros(4, 3, dtype=torch.bool)
    mask[:2] = True
    g = torch.Generator().manual_seed(9)
    x = torch.randn(8, 4, 3, generator=g)
    full = flow.sample(model, x, steps=3, method="flow_sde", noise_level=0.5, sde_steps="all",
                       generator=torch.Generator().manual_seed(1))
    part = flow.sample(model, x, steps=3, method="flow_sde", noise_level=0.5, sde_steps="all",
                       generator=torch.Generator().manual_seed(1), mask=mask)
    assert torch.equal(full.xs, part.xs)
    per_elem = flow.gaussian_log_prob(full.xs[:, 1:], full.means, full.stds)
    assert torch.allclose(part.log_probs, (per_elem * mask).flatten(2).sum(2), atol=1e-5)
    assert torch.equal(flow.log_prob(model, part), part.log_prob)


AGGREGATION_CASES = [
    ("flow_noise", {}),
    ("flow_sde", {"noise_level": 0.5, "sde_steps": "all"}),
    ("flow_sde", {"noise_level": 0.5, "sde_steps": "one"}),
    ("flow_noise", {"noise_steps": "one"}),
]


@pytest.mark.parametrize("method,kw", AGGREGATION_CASES, ids=lambda c: str(c))
@pytest.mark.parametrize("reduce", ["sum", "mean"])
def test_chain_log_prob_equals_a_sum_built_by_hand(method, kw, reduce):
    """Chain log-likelihood from torch.distributions over the stored transitions: the counted elements of every
    stochastic transition, plus N(x^0; 0, I) for Flow-Noise; the mean divides by that number of terms."""
    model = MLPVelocity()
    mask = torch.zeros(4, 3, dtype=torch.bool)
    mask[:2, :2] = True  # executed actions and unpadded dims
    g = torch.Generator().manual_seed(4)
    vel = _velocity_for(model, method)
    with torch.no_grad():
        chain = flow.sample(vel, torch.randn(16, 4, 3, generator=g), steps=4, method=method, generator=g,
                            reduce=reduce, mask=mask, **kw)
    terms = []
    for k in range(4):
        std = torch.where(chain.stochastic[:, k, None, None], chain.stds[:, k], torch.ones(()))
        lp = torch.distributions.Normal(chain.means[:, k], std).log_prob(chain.xs[:, k + 1])
        terms.append(torch.where(chain.stochastic[:, k], (lp * mask).sum((1, 2)), torch.zeros(())))
    if method == "flow_noise":
        terms.append((torch.distributions.Normal(0.0, 1.0).log_prob(chain.xs[:, 0]) * mask).sum((1, 2)))
    by_hand = torch.stack(terms, 1).sum(1)
    if reduce == "mean":
        by_hand = by_hand / (chain.stochastic.sum(1) + (method == "flow_noise"))
    one = "one" in (kw.get("sde_steps"), kw.get("noise_steps"))
    assert chain.stochastic.sum(1).tolist() == [1 if one else 4] * 16
    torch.testing.assert_close(chain.log_prob, by_hand, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(flow.log_prob(vel, chain), by_hand, rtol=1e-5, atol=1e-4)


def test_flow_noise_entropy_counts_only_the_executed_elements():
    """The entropy bonus averages 1/2 log(2 pi e sigma^2) over the elements whose log-probs count: executed
    actions and the env's action dims; sigma on the others never acts and must not change it."""
    from pirl.policies import make_mlp_policy

    torch.manual_seed(0)
    policy = make_mlp_policy(6, 3, action_horizon=4, hidden=32)
    head = policy.noise_head.net[-1]
    with torch.no_grad():
        head.bias.copy_(torch.linspace(-1, 1, head.bias.numel()))  # a different sigma on every element
    mask = torch.zeros(4, 3, dtype=torch.bool)
    mask[:2, :2] = True  # 2 of 4 actions executed, the third dim padding
    policy.logp_mask = lambda cfg, device: mask
    obs = {"state": torch.randn(8, 6)}
    out = policy.act(obs, SamplerConfig(method="flow_noise"), generator=torch.Generator().manual_seed(0))
    ent = policy.evaluate(obs, out.chain).entropy
    by_hand = flow.gaussian_entropy(out.chain.stds)[:, :, mask].flatten(1).mean(1)
    torch.testing.assert_close(ent, by_hand)
    with torch.no_grad():
        head.bias.view(4, 3)[~mask] += 3.0  # sigma of the elements that do not count
    torch.testing.assert_close(policy.evaluate(obs, out.chain).entropy, ent)


def test_flow_noise_with_one_noisy_step():
    """noise_steps='one': one random transition per sample draws the learned noise, the others are exact Euler
    steps with std 0; re-scoring is one batched velocity call; the entropy averages over the noisy transition."""
    from pirl.policies import make_mlp_policy

    model = MLPVelocity()
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        chain = flow.sample(model.with_std, torch.randn(64, 4, 3, generator=g), steps=4, method="flow_noise",
                            noise_steps="one", generator=g)
    assert (chain.stochastic.sum(1) == 1).all() and len(set(chain.stochastic.float().argmax(1).tolist())) > 1
    grid = flow.time_grid(4)
    for k in range(4):
        quiet = ~chain.stochastic[:, k]
        x = chain.xs[quiet, k]
        euler = x - 0.25 * model(x, grid[k].expand(x.shape[0]))
        torch.testing.assert_close(chain.xs[quiet, k + 1], euler)
        assert (chain.stds[quiet, k] == 0).all() and (chain.stds[~quiet, k] > 0).all()
    calls = []

    def counting(x, t):
        calls.append(x.shape[0])
        return model.with_std(x, t)

    assert torch.equal(flow.log_prob(counting, chain), chain.log_prob) and calls == [64]

    torch.manual_seed(0)
    policy = make_mlp_policy(6, 3, action_horizon=4, hidden=32)
    head = policy.noise_head.net[-1]
    with torch.no_grad():
        head.weight.normal_()  # sigma depends on t, so the noisy step's sigma differs from the others'
    obs = {"state": torch.randn(8, 6)}
    out = policy.act(obs, SamplerConfig(method="flow_noise", noise_steps="one"),
                     generator=torch.Generator().manual_seed(0))
    ent = policy.evaluate(obs, out.chain).entropy
    noisy = out.chain.stds[out.chain.stochastic]  # [B, H, D]: the noisy transition of each sample
    torch.testing.assert_close(ent, flow.gaussian_entropy(noisy).flatten(1).mean(1))
    with pytest.raises(ValueError, match="noise_steps"):
        SamplerConfig(method="flow_noise", noise_steps="two")


@pytest.mark.parametrize("kind", ["mlp", "vla"])
def test_noise_head_gradients_stay_out_of_the_velocity_network(kind):
    from pirl.policies import make_mlp_policy, make_vla_policy

    torch.manual_seed(0)
    if kind == "mlp":
        policy, obs = make_mlp_policy(6, 3, action_horizon=4, hidden=32), {"state": torch.randn(8, 6)}
    else:
        policy = make_vla_policy(6, 3, action_horizon=4, image_size=16, width=32, layers=1)
        obs = policy.prepare({"image": torch.randint(0, 255, (8, 16, 16, 3), dtype=torch.uint8),
                              "state": torch.randn(8, 6), "instruction": ["push the block"] * 8})
    with torch.no_grad():
        policy.noise_head.net[-1].weight.normal_(0, 0.1)  # a trained head (a fresh one's zero layer passes nothing back)
    out = policy.act(obs, SamplerConfig(method="flow_noise"), generator=torch.Generator().manual_seed(0))
    policy.evaluate(obs, out.chain).entropy.sum().backward()  # depends on sigma only
    noise = {id(p) for p in policy.noise_head.parameters()}
    moved = [n for n, p in policy.named_parameters() if id(p) not in noise and p.grad is not None and p.grad.any()]
    assert not moved, f"sigma's gradient reached {moved[:3]}"
    assert policy.noise_head.net[-1].weight.grad.abs().sum() > 0


def test_noise_head_bounds():
    head = NoiseHead(8, (4, 3), std_min=0.08, std_max=0.16)
    with torch.no_grad():
        head.net[-1].weight.normal_(0, 100.0)
    std = head(torch.randn(1000, 8) * 10, torch.rand(1000))
    assert std.shape == (1000, 4, 3)
    assert std.min() >= 0.08 - 1e-6 and std.max() <= 0.16 + 1e-6
    with pytest.raises(ValueError, match="std_min"):
        NoiseHead(8, (2,), std_min=0.2, std_max=0.1)
    x, t = torch.randn(50, 8), torch.rand(50)
    before = head(x, t)
    head.set_range(0.2, 0.4)  # the squashed output keeps its place: std scales by 2.5 everywhere
    assert head.std_range == pytest.approx((0.2, 0.4))
    torch.testing.assert_close(head(x, t), before * 2.5, rtol=1e-5, atol=0)
    with pytest.raises(ValueError, match="std_min"):
        head.set_range(0.3, 0.3)


def test_chain_index_and_cat():
    model = MLPVelocity()
    c = flow.sample(model, torch.randn(6, 4, 3), steps=3, method="flow_sde", noise_level=0.5)
    both = flow.Chain.cat([c, c])
    assert both.xs.shape[0] == 12 and torch.equal(both.index(torch.tensor([7])).xs, c.index(torch.tensor([1])).xs)
    assert torch.equal(flow.log_prob(model, both.index(slice(6, 12))), c.log_prob)


BAD = [
    (dict(method="sde"), "unknown method"),
    (dict(method="ode", steps=0), "steps must be"),
    (dict(method="flow_sde"), "needs noise_level"),
    (dict(method="flow_sde", noise_level=0.0), "noise_level must be"),
    (dict(method="flow_sde", noise_level=-1.0), "noise_level must be"),
    (dict(method="flow_sde", noise_level=1.5), "noise_level must be < sqrt\\(2\\)"),
    (dict(method="flow_sde", noise_level=0.5, sde_steps="some"), "sde_steps"),
    (dict(method="flow_noise"), "needs a std"),
    (dict(method="ode", reduce="max"), "reduce"),
]


@pytest.mark.parametrize("kw,match", BAD, ids=[m for _, m in BAD])
def test_bad_configuration_raises(kw, match):
    kw = {"steps": 3, **kw}
    with pytest.raises(ValueError, match=match):
        flow.sample(gaussian_velocity, torch.randn(2, 3), **kw)


def test_bad_velocity_outputs_raise():
    x = torch.randn(2, 4, 3)
    with pytest.raises(ValueError, match="shape"):
        flow.sample(lambda x, t: x[:, :2], x, steps=2)
    with pytest.raises(ValueError, match="non-finite"):
        flow.sample(lambda x, t: x * float("nan"), x, steps=2)
    with pytest.raises(ValueError, match="std must be > 0"):
        flow.sample(lambda x, t: (x, torch.zeros_like(x)), x, steps=2, method="flow_noise")
    with pytest.raises(ValueError, match="std must be > 0"):
        flow.sample(lambda x, t: (x, -torch.ones(1)), x, steps=2, method="flow_noise")
    with pytest.raises(ValueError, match="does not broadcast"):
        flow.sample(lambda x, t: (x, torch.ones(5)), x, steps=2, method="flow_noise")
    with pytest.raises(ValueError, match="x_init"):
        flow.sample(gaussian_velocity, torch.randn(0, 3), steps=2)


def test_sampler_config_validates_and_deterministic_copy():
    with pytest.raises(ValueError, match="unknown method"):
        SamplerConfig(method="flow")
    with pytest.raises(ValueError, match="noise_level"):
        SamplerConfig(noise_level=0.0)
    with pytest.raises(ValueError, match="noise_level must be < sqrt"):
        SamplerConfig(noise_level=math.sqrt(2))
    assert SamplerConfig(noise_level=1.4).noise_level == 1.4
    cfg = SamplerConfig(method="flow_noise", steps=7)
    assert cfg.deterministic().method == "ode" and cfg.deterministic().steps == 7


def test_policy_act_evaluate_ratio_one_all_methods():
    from pirl.policies import make_mlp_policy

    torch.manual_seed(0)
    policy = make_mlp_policy(6, 2, action_horizon=3, hidden=32)
    obs = {"state": torch.randn(16, 6)}
    for cfg in (SamplerConfig(), SamplerConfig(sde_steps="all"), SamplerConfig(method="flow_noise"),
                SamplerConfig(logp_steps=2)):
        out = policy.act(obs, cfg, generator=torch.Generator().manual_seed(0))
        ev = policy.evaluate(obs, out.chain)
        assert out.actions.shape == (16, 3, 2) and out.value.shape == (16,)
        assert torch.equal(ev.log_prob, out.log_prob)
        assert (ev.entropy is not None) == (cfg.method == "flow_noise")


@pytest.mark.parametrize("method,kw", METHOD_CASES[1:], ids=lambda c: str(c))
@pytest.mark.parametrize("per_row", [False, True])
def test_noise_only_where_log_probs_count(method, kw, per_row):
    """noise_where='counted': elements outside the mask take the Euler step (no draw), counted ones are drawn as
    before, and re-scoring gives back the chain's log-probs."""
    torch.manual_seed(0)
    model = MLPVelocity()
    vel = _velocity_for(model, method)
    mask = torch.zeros(4, 3, dtype=torch.bool)
    mask[:2, :2] = True  # two executed actions, two real dims
    if per_row:
        mask = mask.expand(6, 4, 3).clone()
        mask[0] = False
        mask[0, 0, 0] = True
    x0 = torch.randn(6, 4, 3, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        chain = flow.sample(vel, x0, steps=4, method=method, generator=torch.Generator().manual_seed(2), mask=mask,
                            noise_where="counted", **kw)
        again = flow.log_prob(vel, chain)
        full = flow.sample(vel, x0, steps=4, method=method, generator=torch.Generator().manual_seed(2), mask=mask, **kw)
    m = mask if per_row else mask.expand(6, 4, 3)
    for k in range(4):
        x, x_next = chain.xs[:, k], chain.xs[:, k + 1]
        euler = x - 0.25 * (model(x, flow.time_grid(4)[k].expand(6)))
        torch.testing.assert_close(x_next[~m], euler[~m])  # no noise where nothing is counted
    stochastic_moved = (chain.xs[:, 1:] - chain.xs[:, :-1]).abs()[chain.stochastic]
    assert stochastic_moved.numel() and bool((full.xs[:, -1] != chain.xs[:, -1])[~m].any())  # 'all' draws there
    torch.testing.assert_close(again, chain.log_prob, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="noise_where"):
        SamplerConfig(noise_where="padding")


def test_learned_prior_counts_x0_rescores_exactly_and_trains_only_its_head():
    """A learned x^0 prior: a fresh head changes no action; its log N(x^0; mu, I) joins the chain's likelihood for
    every method (a sum built by hand); re-scoring gives ratio 1 bitwise; its gradient moves mu and nothing else."""
    from pirl.policies import make_mlp_policy

    torch.manual_seed(0)
    policy = make_mlp_policy(6, 2, action_horizon=3, hidden=32)
    obs = {"state": torch.randn(16, 6)}
    cfgs = (SamplerConfig(), SamplerConfig(method="flow_noise"), SamplerConfig(logp_steps=2),
            SamplerConfig(method="ode"))
    plain = [policy.act(obs, c, generator=torch.Generator().manual_seed(0)) for c in cfgs]
    policy.attach_prior_head(bound=0.5)
    fresh = [policy.act(obs, c, generator=torch.Generator().manual_seed(0)) for c in cfgs]
    for a, b in zip(plain, fresh):
        assert torch.equal(a.actions, b.actions) and b.chain.learned_prior
    with torch.no_grad():
        policy.prior_head.net[-1].weight.normal_(0, 1.0)  # a trained prior: mu != 0, |mu| <= bound
    for cfg in cfgs:
        out = policy.act(obs, cfg, generator=torch.Generator().manual_seed(0))
        chain = out.chain
        mu = policy.prior_mean(policy.encode(obs))
        assert 0 < mu.abs().max() <= 0.5
        torch.testing.assert_close(chain.init_mean, mu)
        # x^0 = mu + the same standard normal draw as without a prior
        torch.testing.assert_close(chain.xs[:, 0] - mu, plain[cfgs.index(cfg)].chain.xs[:, 0])
        m = torch.ones(3, 2) if chain.mask is None else chain.mask.float()
        z = chain.xs[:, 0] - mu
        init = ((-0.5 * z * z - 0.5 * math.log(2 * math.pi)) * m).flatten(1).sum(1)
        by_hand = (chain.log_probs * chain.stochastic).sum(1) + init
        torch.testing.assert_close(out.log_prob, by_hand, atol=1e-4, rtol=1e-5)
        ev = policy.evaluate(obs, chain)
        assert torch.equal(ev.log_prob, out.log_prob)
        # re-scored at another batch size and order: round-off only, within the ratio check's own scale
        perm = torch.randperm(16)[:5]
        part = policy.evaluate({"state": obs["state"][perm]}, chain.index(perm))
        assert (part.log_prob - out.log_prob[perm]).abs().max() <= 10 * part.roundoff.max()
    policy.zero_grad()
    out = policy.act(obs, SamplerConfig(method="ode"), generator=torch.Generator().manual_seed(1))
    policy.evaluate(obs, out.chain).log_prob.sum().backward()  # an ODE chain's only term is the prior's
    prior = {id(p) for p in policy.prior_head.parameters()}
    moved = [n for n, p in policy.named_parameters() if id(p) not in prior and p.grad is not None and p.grad.any()]
    assert not moved and policy.prior_head.net[-1].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="bound"):
        policy.attach_prior_head(bound=0.0)
    policy.prior_head = None
    with pytest.raises(ValueError, match="prior head"):
        policy.evaluate(obs, out.chain)


def test_learned_prior_chain_index_cat_and_mean_reduce():
    from pirl.policies import make_mlp_policy

    torch.manual_seed(0)
    policy = make_mlp_policy(6, 2, action_horizon=3, hidden=32)
    policy.attach_prior_head()
    obs = {"state": torch.randn(8, 6)}
    a = policy.act(obs, SamplerConfig(reduce="mean"), generator=torch.Generator().manual_seed(0)).chain
    b = policy.act(obs, SamplerConfig(reduce="mean"), generator=torch.Generator().manual_seed(1)).chain
    both = flow.Chain.cat([a.index(slice(0, 3)), b])
    assert both.init_mean.shape == (11, 3, 2) and torch.equal(both.init_mean[3:], b.init_mean)
    # hybrid Flow-SDE: one stochastic transition plus the prior's term, averaged over the two
    assert torch.equal(flow.num_terms(a.stochastic, a.method, a.learned_prior), torch.full((8,), 2.0))
    torch.testing.assert_close(a.log_prob * 2, a.log_probs.sum(1) + a.init_log_prob)
    plain = make_mlp_policy(6, 2, action_horizon=3, hidden=32)
    c = plain.act(obs, SamplerConfig(reduce="mean"), generator=torch.Generator().manual_seed(0)).chain
    with pytest.raises(ValueError, match="priors"):
        flow.Chain.cat([a, c])
