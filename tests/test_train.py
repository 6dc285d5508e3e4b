"""Population self-play on the tiny economy: it learns (beats random play, matches the
scripted baseline), the specialisation weight raises specialisation, PBT copies are
exact, runs are deterministic, and a run killed with SIGKILL resumes exactly.

One :class:`Trainer` (one compiled update) serves the whole module: reward weights live
in the training state, not in the compiled code, so variants reuse it.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agents.scripted import random_actions, scripted_actions
from selfplay.config import load_run_config
from selfplay.simulate import rollout
from selfplay.train import Trainer, pbt_sources, specialisation_index
from tests.conftest import CONFIGS, ROOT, subprocess_env

# Everything that changes the computation; the subprocess resume test uses the same.
OVERRIDES = [
    "train.members=4",
    "train.rollout_steps=16",
    "train.epochs=2",
    "train.minibatches=4",
    "train.pbt.interval=5",
    "train.seed=3",
]
TRAIN_UPDATES = 200
EVAL_STEPS = 40


@pytest.fixture(scope="module")
def cfg():
    return load_run_config(CONFIGS / "tiny.yaml", OVERRIDES + [f"train.updates={TRAIN_UPDATES}"])


@pytest.fixture(scope="module")
def trainer(cfg):
    return Trainer(cfg)


def run_updates(trainer, ts, n):
    metrics = []
    for _ in range(n):
        ts, m = trainer.update(ts)
        metrics.append(jax.device_get(m))
    return ts, metrics


@pytest.fixture(scope="module")
def trained(trainer):
    ts = trainer.init(jax.random.key(3))
    ts, metrics = run_updates(trainer, ts, TRAIN_UPDATES)
    return jax.device_get(ts), metrics


def mean_utility(env, policy, keys, steps=EVAL_STEPS) -> float:
    """Mean per-agent utility over the last three quarters of ``steps`` steps, averaged over
    held-out worlds (``keys``: ``(world seed, action key)`` pairs); one compile per policy."""
    run = jax.jit(functools.partial(rollout, env, policy, steps=steps))
    reset = jax.jit(env.reset)
    out = []
    for seed, key in keys:
        _, state = reset(env.world_key(seed, evaluation=True))
        _, m = run(key, state)
        out.append(np.mean(np.asarray(m["utility"])[steps // 4 :]))
    return float(np.mean(out))


def test_training_beats_random_and_matches_scripted(trainer, trained):
    """Margins: trained >= 1.5 x random and trained >= 0.95 x scripted, averaged over two
    held-out worlds (same worlds and keys for all three)."""
    ts, metrics = trained
    env = trainer.env
    ts = jax.device_put(ts)
    keys = [(seed, jax.random.key(100 + seed)) for seed in (0, 1)]
    s = {
        "trained": mean_utility(env, trainer.policy(ts), keys),
        "random": mean_utility(env, functools.partial(random_actions, env), keys),
        "scripted": mean_utility(env, functools.partial(scripted_actions, env), keys),
    }
    assert s["trained"] >= 1.5 * s["random"], s
    assert s["trained"] >= 0.95 * s["scripted"], s
    # Training reward went up: last five updates vs first five.
    first = np.mean([m["utility"].mean() for m in metrics[:5]])
    last = np.mean([m["utility"].mean() for m in metrics[-5:]])
    assert last > first * 1.3, (first, last)


def test_metrics_shapes(trainer, trained):
    _, metrics = trained
    m = metrics[-1]
    P, J, G = 4, trainer.env.cfg.num_niches, trainer.env.cfg.num_goods
    for k in ("reward", "utility", "specialisation", "collaboration", "entropy", "policy_loss", "value_loss",
              "approx_kl", "learning_rate", "ent_coef", "clip_eps", "gamma", "gae_lambda", "fitness",
              "specialisation_index"):
        assert np.shape(m[k]) == (P,), k
        assert np.isfinite(m[k]).all(), k
    assert m["niche_shares"].shape == (P, J + 1)
    np.testing.assert_allclose(m["niche_shares"].sum(-1), 1.0, rtol=1e-5)
    assert m["market_price"].shape == m["market_volume"].shape == (G,)
    assert [int(x["update"]) for x in metrics] == list(range(1, TRAIN_UPDATES + 1))
    # PBT ran every 5 updates and only then.
    events = [int(x["update"]) for x in metrics if bool(x["pbt_event"])]
    assert events == list(range(5, TRAIN_UPDATES + 1, 5))


def test_specialisation_weight_raises_specialisation(trainer):
    """Same seeds and budget: members rewarded for specialisation end more specialised."""
    n = 25
    out = {}
    for w in (0.0, 1.0):
        ts = trainer.init(jax.random.key(5))
        weights = ts.hyper.reward_w.at[:, 1].set(w)
        ts = ts.replace(hyper=ts.hyper.replace(reward_w=weights))
        ts, metrics = run_updates(trainer, ts, n)
        out[w] = np.mean([m["specialisation_index"].mean() for m in metrics[-5:]])
    assert out[1.0] > out[0.0] + 0.05, out


def test_determinism(trainer):
    a, _ = run_updates(trainer, trainer.init(jax.random.key(11)), 3)
    b, _ = run_updates(trainer, trainer.init(jax.random.key(11)), 3)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    c, _ = run_updates(trainer, trainer.init(jax.random.key(12)), 1)
    assert not np.array_equal(np.asarray(jax.tree.leaves(a.params)[0]), np.asarray(jax.tree.leaves(c.params)[0]))


def test_pbt_copy_is_bit_identical(trainer):
    ts, _ = run_updates(trainer, trainer.init(jax.random.key(21)), 1)
    ts = jax.device_get(ts)
    src = jnp.asarray([0, 0, 2, 1], jnp.int32)  # member 1 copies 0, member 3 copies 1
    new = jax.jit(trainer._exploit_explore)(jax.device_put(ts), src, jax.random.key(0))
    new = jax.device_get(new)
    for child, parent in ((1, 0), (3, 1), (0, 0), (2, 2)):
        for x, y in zip(jax.tree.leaves(new.params), jax.tree.leaves(ts.params)):
            np.testing.assert_array_equal(x[child], y[parent])
        clip_new, adam_new = new.opt_state
        clip_old, adam_old = ts.opt_state
        for x, y in zip(jax.tree.leaves(adam_new.inner_state), jax.tree.leaves(adam_old.inner_state)):
            np.testing.assert_array_equal(x[child], y[parent])
        np.testing.assert_array_equal(new.hyper.reward_w[child], ts.hyper.reward_w[parent])
    # Copies are perturbed by one of the two factors; the optimiser uses the new rate.
    lo, hi = trainer.cfg.train.pbt.perturb
    for child, parent in ((1, 0), (3, 1)):
        ratio = new.hyper.learning_rate[child] / ts.hyper.learning_rate[parent]
        assert np.isclose(ratio, lo, rtol=1e-6) or np.isclose(ratio, hi, rtol=1e-6), ratio
    np.testing.assert_array_equal(new.opt_state[1].hyperparams["learning_rate"], new.hyper.learning_rate)
    np.testing.assert_array_equal(new.hyper.learning_rate[[0, 2]], ts.hyper.learning_rate[[0, 2]])
    assert list(new.pbt.parent) == [0, 0, 2, 1]


def test_pbt_sources():
    fitness = jnp.asarray([0.5, 0.1, 0.9, 0.3, 0.7, 0.2, 0.8, 0.4])
    src = np.asarray(pbt_sources(fitness, 0.25))
    # Bottom two (1: 0.1, 5: 0.2) copy the top two (2: 0.9, 6: 0.8): worst from best.
    assert src[1] == 2 and src[5] == 6
    assert (src[[0, 2, 3, 4, 6, 7]] == [0, 2, 3, 4, 6, 7]).all()
    assert (np.asarray(pbt_sources(fitness, 0.0)) == np.arange(8)).all()


def test_specialisation_index_closed_form():
    niche = jnp.asarray([[0, 0], [0, 1], [0, 2], [0, 3]])  # agent 0 always 0; agent 1 spreads over 4 of 4
    idx = np.asarray(specialisation_index(niche, 4))
    np.testing.assert_allclose(idx, [1.0, 0.0], atol=1e-6)
    half = np.asarray(specialisation_index(jnp.asarray([[0], [0], [1], [1]]), 4))
    np.testing.assert_allclose(half, [1 - np.log(2) / np.log(4)], atol=1e-6)


def test_league_snapshots(cfg):
    """With a league, frozen snapshots of the fittest member replace slots on schedule and
    play their share of the agents; members keep learning."""
    lcfg = load_run_config(
        CONFIGS / "tiny.yaml", OVERRIDES + ["train.members=2", "train.league.size=2", "train.league.refresh_every=2"]
    )
    tr = Trainer(lcfg)
    ts = tr.init(jax.random.key(0))
    lp0 = jax.device_get(ts.league.params)
    ts, _ = run_updates(tr, ts, 2)
    ts = jax.device_get(ts)
    assert int(ts.league.refreshes) == 1
    slot = 0
    best = int(ts.league.source[slot])
    for x, y in zip(jax.tree.leaves(ts.league.params), jax.tree.leaves(ts.params)):
        np.testing.assert_array_equal(x[slot], y[best])
    for x, y in zip(jax.tree.leaves(ts.league.params), jax.tree.leaves(lp0)):  # slot 1 untouched
        np.testing.assert_array_equal(x[1], y[1])
    assert int(ts.league.made_at[slot]) == 2


def _ckpt_steps(path):
    return sorted(int(p.name) for p in path.glob("*") if p.name.isdigit()) if path.exists() else []


@pytest.mark.slow
def test_sigkill_and_resume_matches_uninterrupted(trainer, tmp_path):
    """``agora train`` killed with SIGKILL after its checkpoint at update 4 and resumed ends
    with the same parameters, optimiser state and keys as an uninterrupted run of 8."""
    run_dir = tmp_path / "run"
    args = [sys.executable, "-m", "selfplay.cli", "train", str(CONFIGS / "tiny.yaml"), *OVERRIDES,
            "train.updates=8", "train.checkpoint_every=2", "train.keep_checkpoints=5", "--run-dir", str(run_dir),
            "--no-progress"]
    env = subprocess_env()
    proc = subprocess.Popen(args, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 400
    while time.time() < deadline and 4 not in _ckpt_steps(run_dir / "checkpoints") and proc.poll() is None:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    out = proc.communicate()[0]
    steps = _ckpt_steps(run_dir / "checkpoints")
    assert 4 in steps and 8 not in steps, (steps, out)
    resumed = subprocess.run(args, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resumed" in resumed.stdout and 8 in _ckpt_steps(run_dir / "checkpoints")

    from selfplay.run import Checkpoints

    template = trainer.init(jax.random.key(3))
    ref, _ = run_updates(trainer, template, 8)
    ckpt = Checkpoints(run_dir / "checkpoints", keep=5)
    got = ckpt.restore(trainer.init(jax.random.key(0)))
    ckpt.close()
    assert int(got.update) == 8
    for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(ref)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def read_events(path):
    """Scalars and texts of a TensorBoard event file (TFRecord framing, no tensorboard needed)."""
    import struct

    from tensorboardX.proto import event_pb2

    scalars, texts = {}, {}
    for f in sorted(path.glob("events.out.tfevents.*")):
        data = f.read_bytes()
        i = 0
        while i < len(data):
            (n,) = struct.unpack("<Q", data[i : i + 8])
            ev = event_pb2.Event.FromString(data[i + 12 : i + 12 + n])
            i += 12 + n + 4
            for v in ev.summary.value:
                if v.HasField("simple_value"):
                    scalars.setdefault(v.tag, []).append((ev.step, v.simple_value))
                elif v.HasField("tensor"):
                    texts.setdefault(v.tag, []).append(b"".join(v.tensor.string_val).decode())
    return scalars, texts


def test_train_run_writes_run_directory(cfg, tmp_path):
    """``train_run`` writes the config snapshot, metrics, lineage and TensorBoard events with
    per-member and population scalars, niche shares, prices, hyperparameters and PBT text."""
    import yaml

    from selfplay.run import train_run

    run_cfg = load_run_config(CONFIGS / "tiny.yaml", OVERRIDES + ["train.updates=5", "train.log_every=1"])
    run_dir = tmp_path / "run"
    ts = train_run(run_cfg, run_dir, progress=False)
    assert int(ts.update) == 5
    snap = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert snap["train"]["members"] == 4 and snap["economy"]["num_agents"] == 256
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["update"] for x in lines] == [1, 2, 3, 4, 5]
    lineage = [json.loads(x) for x in (run_dir / "lineage.jsonl").read_text().splitlines()]
    assert lineage and all(e["update"] == 5 and e["child"] != e["parent"] for e in lineage)  # PBT at update 5
    scalars, texts = read_events(run_dir / "tb")
    for tag in ("population/utility_mean", "member/0/reward", "member/3/learning_rate", "member/2/entropy",
                "niche_share/farmer", "niche_share/rest", "member/1/niche_share/baker", "market/price/bread",
                "market/volume/grain", "perf/agent_steps_per_s"):
        assert tag in scalars, (tag, sorted(scalars)[:20])
        assert [s for s, _ in scalars[tag]] == [1, 2, 3, 4, 5], tag
    m5 = json.loads(lines[-1])
    np.testing.assert_allclose(scalars["member/0/reward"][-1][1], m5["reward"][0], rtol=1e-6)
    text = {k.split("/")[0]: v for k, v in texts.items()}  # tensorboardX tags texts "NAME/text_summary"
    assert "config" in text and "hyperparameters" in text and "pbt" in text, sorted(texts)
    assert "<- member" in text["pbt"][0] and "num_agents: 256" in text["config"][0]
    # Resuming a finished run with more updates continues from its checkpoint.
    more = run_cfg.model_copy(update={"train": run_cfg.train.model_copy(update={"updates": 6})})
    ts = train_run(more, run_dir, progress=False)
    assert int(ts.update) == 6


@pytest.mark.slow
def test_ctrl_c_writes_a_final_checkpoint(trainer, tmp_path):
    """SIGINT (Ctrl-C) lets the update in flight finish, writes a checkpoint at that update
    and exits with 130; the checkpoint restores to a state at that update."""
    run_dir = tmp_path / "run"
    args = [sys.executable, "-m", "selfplay.cli", "train", str(CONFIGS / "tiny.yaml"), *OVERRIDES,
            "train.updates=100000", "train.checkpoint_every=100000", "train.log_every=1", "--run-dir", str(run_dir),
            "--no-progress"]
    proc = subprocess.Popen(args, env=subprocess_env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + 400
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 130, out
    steps = _ckpt_steps(run_dir / "checkpoints")
    assert len(steps) == 1 and steps[0] >= 3, (steps, out)
    assert "interrupted: checkpoint written" in out
    from selfplay.run import Checkpoints

    ckpt = Checkpoints(run_dir / "checkpoints", keep=3)
    got = ckpt.restore(trainer.init(jax.random.key(0)))
    ckpt.close()
    assert int(got.update) == steps[0]
