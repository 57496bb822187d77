"""Steering probe (v2w_core.eval.steering): probes from the action space, the recorded shift per action, and
a gain that tells a model that turns like the game from one that ignores its keys or turns the wrong way;
end to end through rollout_chunks + compute_metrics on a real tiny world model."""

from __future__ import annotations

import numpy as np
import pytest

from tests.eval.eval_helpers import eval_config, make_model, save_model, write_dataset
from v2w_core.eval.evaluate import compute_metrics, evaluate
from v2w_core.eval.metrics import to_unit
from v2w_core.eval.rollouts import load_chunks, rollout_chunks
from v2w_core.eval.steering import (
    SteeringConfig,
    held_actions,
    probe_actions,
    recorded_shifts,
    steering_response,
)
from v2w_core.models.actions import ActionSpec

#: pixels per frame the scene pans under each button of a (LEFT, RIGHT, FORWARD) multi-hot space
PAN = {(0, 0, 0): 0, (1, 0, 0): 6, (0, 1, 0): -6, (0, 0, 1): 0}


def _scene(size: int = 48, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    s = np.cumsum(np.cumsum(rng.normal(size=(size, size)), 0), 1)
    return ((s - s.min()) / (s.max() - s.min()) * 255).astype(np.uint8)


def _episode(seed: int, length: int = 24) -> tuple[np.ndarray, np.ndarray]:
    """Frames (T, H, W, 3) of a view that pans as its actions say, and the (T−1, 3) multi-hot actions."""
    rng = np.random.default_rng(seed)
    keys = list(PAN)
    actions = np.array([keys[i] for i in rng.integers(0, len(keys), length - 1)], dtype=np.float32)
    scene, x, frames = _scene(seed=seed), 0, []
    for t in range(length):
        frames.append(np.repeat(np.roll(scene, x, axis=1)[..., None], 3, -1))
        if t < length - 1:
            x += PAN[tuple(int(v) for v in actions[t])]
    return np.stack(frames), actions


def test_default_and_named_probes() -> None:
    multi = probe_actions(ActionSpec(type="multi_hot", dim=3), SteeringConfig())
    assert list(multi) == ["none", "button0", "button1", "button2"]
    np.testing.assert_array_equal(multi["button1"], [0, 1, 0])
    assert list(probe_actions(ActionSpec(type="discrete", dim=4), SteeringConfig())) == [
        "action0", "action1", "action2", "action3"]  # fmt: skip
    assert probe_actions(ActionSpec(type="continuous", dim=2), SteeringConfig()) == {}
    named = probe_actions(ActionSpec(type="continuous", dim=2), SteeringConfig(actions={"left": [-1, 0]}))
    np.testing.assert_array_equal(named["left"], [-1.0, 0.0])
    assert int(probe_actions(ActionSpec(type="discrete", dim=4), SteeringConfig(actions={"fire": 3}))["fire"]) == 3


@pytest.mark.parametrize(
    ("space", "actions", "match"),
    [
        (("multi_hot", 3), {"left": [1, 0]}, "steering.actions.left: .* give a list of 3 numbers"),
        (("discrete", 4), {"fire": 4}, r"steering.actions.fire: .* give an id in \[0, 4\)"),
        (("discrete", 4), {"a b": 1}, "probe name 'a b': use letters"),
    ],
)
def test_a_probe_that_does_not_fit_the_action_space_is_named(space, actions, match) -> None:
    with pytest.raises(ValueError, match=match):
        probe_actions(ActionSpec(type=space[0], dim=space[1]), SteeringConfig(actions=actions))


def test_held_actions_keep_the_context_and_hold_the_probe() -> None:
    recorded = np.arange(7 * 2, dtype=np.float32).reshape(7, 2)  # K + N − 1 = 4 + 4 − 1
    held = held_actions(recorded, 4, np.array([9.0, 8.0], dtype=np.float32), 2)
    assert held.shape == (4 + 2 - 1, 2)
    np.testing.assert_array_equal(held[:3], recorded[:3])  # a_0 … a_{K−2}: the context's own
    np.testing.assert_array_equal(held[3:], [[9, 8], [9, 8]])  # a_{K−1}, a_K: the probe, held


def test_recorded_shifts_per_action() -> None:
    episodes = [_episode(s) for s in range(3)]
    probes = probe_actions(ActionSpec(type="multi_hot", dim=3), SteeringConfig())
    shifts = recorded_shifts([f for f, _ in episodes], [a for _, a in episodes], probes)
    assert set(shifts) == set(probes)
    for name, expected in zip(probes, PAN.values(), strict=True):
        assert len(shifts[name]) > 0 and np.all(shifts[name] == expected), name


def _probe_rollouts(gain: float, seed: int = 0) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(last context frames (B, C, H, W), per probe (B, 2, C, H, W)) of a model that pans ``gain`` × the
    data's pan while a probe is held."""
    scenes = [_scene(seed=seed + b) for b in range(2)]
    ctx = np.stack([np.repeat(s[None], 3, 0) for s in scenes]).astype(np.float32) / 255
    steered = {}
    for name, key in zip(["none", "button0", "button1", "button2"], PAN, strict=True):
        step = round(gain * PAN[key])
        steered[name] = np.stack(
            [np.stack([np.repeat(np.roll(s, step * (j + 1), axis=1)[None], 3, 0) for j in range(2)]) for s in scenes]
        ).astype(np.float32) / 255
    return ctx, steered


@pytest.mark.parametrize(("gain", "expected"), [(1.0, 1.0), (0.0, 0.0), (-1.0, -1.0), (0.5, 0.5)])
def test_gain_scores_steering_like_the_data(gain: float, expected: float) -> None:
    episodes = [_episode(s) for s in range(3)]
    probes = probe_actions(ActionSpec(type="multi_hot", dim=3), SteeringConfig())
    truth = recorded_shifts([f for f, _ in episodes], [a for _, a in episodes], probes)
    ctx, steered = _probe_rollouts(gain)
    out, why = steering_response(ctx, steered, truth)
    assert why is None
    assert out["steer_dx_gain"] == pytest.approx(expected)
    assert out["steer_dx_truth_button0"] == 6 and out["steer_dx_truth_button1"] == -6
    assert out["steer_dx_button0"] == pytest.approx(6 * gain)


def test_no_gain_without_recorded_probes_or_spread() -> None:
    ctx, steered = _probe_rollouts(1.0)
    out, why = steering_response(ctx, steered, {"button0": np.array([6.0] * 5)})
    assert "steer_dx_gain" not in out and "fewer than two probes" in why
    assert out["steer_dx_button0"] == 6 and out["steer_dx_truth_button0"] == 6
    out, why = steering_response(ctx, steered, {"none": np.zeros(5), "button2": np.zeros(5)})
    assert "steer_dx_gain" not in out and "move the view alike" in why


def test_probe_rollouts_through_the_eval(tmp_path) -> None:
    """A real tiny model: one probe rollout per probe and chunk, same seed (an action-blind model gives the
    same frames under every probe), and steer_* keys in the report."""
    config = eval_config(steering={"horizon": 2, "actions": {"left": [-1, 0], "right": [1, 0]}},
                         metric_weights={"lpips": None, "fid": None, "fvd": None})
    chunks = load_chunks(write_dataset(str(tmp_path / "data"), n=2, length=8), config)
    steering_model = make_model(seed=0, action_strength=0.5)
    results = rollout_chunks(steering_model, chunks, config)
    for r in results:
        assert set(r.steered) == {"left", "right"} and r.steered["left"].shape == (2, 3, 32, 32)
        assert not np.allclose(r.steered["left"], r.steered["right"])  # the actions act
    report = compute_metrics(chunks, results, config)
    assert {"steer_dx_left", "steer_dx_right"} <= set(report.metrics)
    assert "steer_dx_gain" in report.unavailable  # continuous random actions never equal a probe

    blind = rollout_chunks(make_model(seed=0, action_strength=0.0), chunks[:1], config)[0]
    np.testing.assert_array_equal(blind.steered["left"], blind.steered["right"])  # same seed, no action effect
    assert to_unit(blind.steered["left"]).shape == (2, 3, 32, 32)

    off = rollout_chunks(steering_model, chunks[:1], eval_config(steering={"enabled": False}))[0]
    assert off.steered == {} and off.probes == {}


def test_evaluate_names_a_probe_that_does_not_fit_before_rolling_out(tmp_path) -> None:
    model_uri = save_model(tmp_path / "model")  # continuous, 2 values
    bad = eval_config(steering={"actions": {"left": [1, 0, 0]}})
    with pytest.raises(ValueError, match=r"^steering.actions.left: \[1, 0, 0\] .* give a list of 2 numbers$"):
        evaluate(model_uri, str(tmp_path / "no-data" / "manifest.parquet"), bad)  # fails before reading data
