"""Advantage estimators against hand-computed values; group filters; bad input."""

import math

import pytest
import torch

from pirl.algorithms import (
    AdvantageConfig,
    filter_groups_by_success,
    filter_uniform_groups,
    gae,
    grpo_advantages,
    rloo_advantages,
)

F, T_ = False, True


def _t(rows, dtype=torch.float32):
    return torch.tensor(rows, dtype=dtype)


def test_gae_termination_vs_truncation_hand_computed():
    g, lam = 0.9, 0.5
    # env 0: 3 steps, terminated at t=2. env 1: 2 steps, truncated at t=1 (bootstrap 10), then invalid.
    rewards = _t([[1.0, 0.0], [0.0, 2.0], [5.0, 0.0]])
    values = _t([[1.0, 3.0], [2.0, 4.0], [3.0, 0.0]])
    term = _t([[F, F], [F, F], [T_, F]], torch.bool)
    trunc = _t([[F, F], [F, T_], [F, F]], torch.bool)
    boot = _t([[0.0, 0.0], [0.0, 10.0], [0.0, 0.0]])
    valid = _t([[T_, T_], [T_, T_], [T_, F]], torch.bool)
    adv, ret = gae(rewards, values, term, trunc, boot, valid, gamma=g, lam=lam)

    # env 0 (termination: next value 0 at t=2)
    d2 = 5.0 + 0.0 - 3.0
    d1 = 0.0 + g * 3.0 - 2.0
    d0 = 1.0 + g * 2.0 - 1.0
    a2 = d2
    a1 = d1 + g * lam * a2
    a0 = d0 + g * lam * a1
    # env 1 (truncation: next value = bootstrap 10 at t=1)
    e1 = 2.0 + g * 10.0 - 4.0
    e0 = 0.0 + g * 4.0 - 3.0
    b1 = e1
    b0 = e0 + g * lam * b1
    expected = _t([[a0, b0], [a1, b1], [a2, 0.0]])
    torch.testing.assert_close(adv, expected)
    torch.testing.assert_close(ret, torch.where(valid, expected + values, torch.zeros(())))


def test_gae_truncation_differs_from_termination():
    args = dict(rewards=_t([[0.0]]), values=_t([[1.0]]), bootstrap_values=_t([[2.0]]), valid=_t([[T_]], torch.bool))
    a_term, _ = gae(terminated=_t([[T_]], torch.bool), truncated=_t([[F]], torch.bool), gamma=0.5, lam=1.0, **args)
    a_trunc, _ = gae(terminated=_t([[F]], torch.bool), truncated=_t([[T_]], torch.bool), gamma=0.5, lam=1.0, **args)
    assert a_term.item() == pytest.approx(-1.0)  # 0 + 0 - 1
    assert a_trunc.item() == pytest.approx(0.0)  # 0 + 0.5 * 2 - 1


def test_gae_window_end_bootstraps():
    # a running episode at the last row bootstraps from bootstrap_values
    adv, _ = gae(_t([[1.0]]), _t([[0.0]]), _t([[F]], torch.bool), _t([[F]], torch.bool), _t([[4.0]]),
                 _t([[T_]], torch.bool), gamma=0.5, lam=0.9)
    assert adv.item() == pytest.approx(1.0 + 0.5 * 4.0)


def test_gae_does_not_cross_episode_end():
    # lambda = 1, gamma = 1: advantage = return-to-go within the episode only
    rewards = _t([[1.0], [1.0], [7.0]])
    zeros = torch.zeros(3, 1)
    term = _t([[F], [T_], [F]], torch.bool)
    valid = _t([[T_], [T_], [F]], torch.bool)
    adv, _ = gae(rewards, zeros, term, torch.zeros(3, 1, dtype=torch.bool), zeros, valid, 1.0, 1.0)
    torch.testing.assert_close(adv, _t([[2.0], [1.0], [0.0]]))


def test_gae_bad_input():
    ok = dict(rewards=torch.zeros(2, 3), values=torch.zeros(2, 3), terminated=torch.ones(2, 3, dtype=torch.bool),
              truncated=torch.zeros(2, 3, dtype=torch.bool), bootstrap_values=torch.zeros(2, 3),
              valid=torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="shape mismatch"):
        gae(**{**ok, "values": torch.zeros(2, 4)})
    with pytest.raises(ValueError, match="empty"):
        gae(**{k: v[:0] for k, v in ok.items()})
    nan = ok["rewards"].clone()
    nan[1, 2] = math.nan
    with pytest.raises(ValueError, match="non-finite"):
        gae(**{**ok, "rewards": nan})
    # NaN on an invalid step is ignored
    gae(**{**ok, "rewards": nan, "valid": torch.tensor([[True] * 3, [True, True, False]])})
    with pytest.raises(ValueError, match="did not terminate or truncate"):
        gae(**{**ok, "terminated": torch.zeros(2, 3, dtype=torch.bool), "valid": torch.tensor([[True] * 3, [False] * 3])})


def test_grpo_hand_computed():
    R = _t([1.0, 0.0, 0.0, 1.0, 3.0, 3.0])
    groups = torch.tensor([0, 0, 0, 0, 1, 1])
    adv = grpo_advantages(R, groups, eps=0.0 + 1e-6)
    # group 0: mean 0.5, population std 0.5 -> +-1; group 1: all equal -> 0
    torch.testing.assert_close(adv, _t([1.0, -1.0, -1.0, 1.0, 0.0, 0.0]), atol=1e-5, rtol=0)


def test_grpo_broadcast_to_valid_steps():
    R = _t([2.0, 0.0])
    valid = torch.tensor([[True, True], [True, False], [False, False]])
    adv = grpo_advantages(R, torch.tensor([5, 5]), valid=valid)
    torch.testing.assert_close(adv, _t([[1.0, -1.0], [1.0, 0.0], [0.0, 0.0]]), atol=1e-5, rtol=0)


def test_rloo_hand_computed():
    R = _t([1.0, 0.0, 0.0, 1.0, 2.0, 5.0])
    groups = torch.tensor([7, 7, 7, 7, 3, 3])
    adv = rloo_advantages(R, groups)
    # group 7: R_k - (sum - R_k) / 3 with sum 2; group 3: 2 - 5, 5 - 2
    expected = _t([1 - 1 / 3, -2 / 3, -2 / 3, 1 - 1 / 3, -3.0, 3.0])
    torch.testing.assert_close(adv, expected)
    # no std normalisation: scaling returns scales advantages
    torch.testing.assert_close(rloo_advantages(10 * R, groups), 10 * expected)


@pytest.mark.parametrize("fn", [grpo_advantages, rloo_advantages])
def test_single_element_group_raises(fn):
    with pytest.raises(ValueError, match="at least 2 rollouts per group"):
        fn(_t([1.0, 0.0, 1.0]), torch.tensor([0, 0, 1]))


@pytest.mark.parametrize("fn", [grpo_advantages, rloo_advantages])
def test_group_advantages_bad_input(fn):
    with pytest.raises(ValueError, match="empty"):
        fn(torch.zeros(0), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match="non-finite"):
        fn(_t([1.0, math.nan]), torch.tensor([0, 0]))
    with pytest.raises(ValueError, match="groups must be"):
        fn(_t([1.0, 0.0]), torch.tensor([0, 0, 0]))


def test_uniform_group_filter_drops_equal_and_single_groups():
    success = _t([1, 1, 0, 1, 0, 0, 1])
    groups = torch.tensor([0, 0, 1, 1, 2, 2, 3])  # group 3 has one member
    keep, dropped = filter_uniform_groups(success, groups)
    assert keep.tolist() == [F, F, T_, T_, F, F, F]
    assert dropped == 3
    # after filtering, the group estimators accept the rest
    rloo_advantages(success[keep], groups[keep])


def test_success_range_filter():
    success = _t([1, 1, 1, 1, 1, 0, 0, 0, 1, 0, 0, 0])
    groups = torch.arange(3).repeat_interleave(4)  # means 1.0, 0.25, 0.25
    keep, dropped = filter_groups_by_success(success, groups, 0.1, 0.9)
    assert dropped == 1 and keep.tolist() == [F] * 4 + [T_] * 8
    keep, dropped = filter_groups_by_success(success, groups, 0.3, 1.0)
    assert dropped == 2 and keep.tolist() == [T_] * 4 + [F] * 8
    with pytest.raises(ValueError):
        filter_groups_by_success(success, groups, 0.9, 0.1)


def test_advantage_config_validates():
    with pytest.raises(ValueError, match="estimator"):
        AdvantageConfig(estimator="gea")
    with pytest.raises(ValueError, match="gamma"):
        AdvantageConfig(gamma=1.5)
    assert AdvantageConfig().gamma == 0.99 and AdvantageConfig().lam == 0.95
