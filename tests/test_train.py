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
from selfplay.train import Trainer, make_train, pbt_sources, specialisation_index
from tests.conftest import CONFIGS, ROOT, subprocess_env

# Everything that changes the computation; the subprocess resume test uses the same.
OVERRIDES = [
    "train.members=4",
    "train.rollout_steps=16",
    "train.epochs=2",
    "train.minibatches=4",
    "train.pbt.interval=5",
    "train.seed=3",
    "train.analysis.every=5",
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


def test_analysis_in_training(trainer, trained):
    """The on-device analysis runs every ``analysis.every`` updates (and only then) with
    consistent values: KL >= 0 with a zero diagonal, the niche head's KL at most the KL over
    all heads, JS <= ln 2 per categorical, 1 <= effective policies <= P, shares and
    histograms that add up, and a Lorenz curve from 0 to 1."""
    _, metrics = trained
    env = trainer.env
    P, J, G, M = 4, env.cfg.num_niches, env.cfg.num_goods, env.cfg.num_markets
    done = [int(m["update"]) for m in metrics if bool(m["analysis_done"])]
    assert done == list(range(5, TRAIN_UPDATES + 1, 5))
    skipped = metrics[0]["analysis"]
    assert all(not np.any(x) for x in jax.tree.leaves(skipped))
    categoricals = sum(int(np.prod(h.shape)) for h in env.action_spec)
    for m in metrics[4::40]:
        a = m["analysis"]
        kl, js = np.asarray(a["kl"]), np.asarray(a["js"])
        assert kl.shape == js.shape == a["niche_kl"].shape == (P, P)
        assert (kl >= 0).all() and (np.diag(kl) == 0).all() and (np.diag(js) == 0).all()
        np.testing.assert_allclose(js, js.T, atol=1e-6)
        assert (js <= np.log(2) * categoricals + 1e-5).all()
        assert (np.asarray(a["niche_kl"]) <= kl + 1e-5).all()
        np.testing.assert_allclose(a["mean_kl"], kl[~np.eye(P, dtype=bool)].mean(), rtol=1e-5)
        assert 1.0 - 1e-5 <= float(a["effective_policies"]) <= P + 1e-5
        assert a["market_occupancy_entropy"].shape == (M,)
        assert 0 <= float(a["occupancy_entropy"]) <= np.log(J + 1) + 1e-6
        np.testing.assert_allclose(a["specialisation_index"], m["specialisation_index"], rtol=1e-6)
        assert a["hhi"].shape == a["largest_share"].shape == a["largest_member"].shape == (J,)
        live = np.asarray(a["largest_member"]) >= 0
        assert ((a["hhi"][live] >= 1 / P - 1e-6) & (a["hhi"][live] <= 1 + 1e-6)).all()
        assert (a["largest_share"][live] ** 2 <= a["hhi"][live] + 1e-6).all()
        out = np.asarray(a["niche_output"])
        major = out >= 0.01 * out.sum()
        assert float(a["monopoly_share"]) == pytest.approx(float(np.max(np.where(major, a["largest_share"], 0.0))))
        assert major[int(a["monopoly_niche"])] and (out[~live] == 0).all()
        lz = np.asarray(a["lorenz"])
        assert abs(lz[0]) < 1e-6 and abs(lz[-1] - 1) < 1e-5 and (np.diff(lz) >= -1e-6).all()
        assert 0 <= float(a["gini"]) < 1
        n_agents = env.cfg.num_agents // trainer.num_players * P
        assert int(a["specialisation_histogram"]["counts"].sum()) == n_agents
        assert int(a["wealth_histogram"]["counts"].sum()) == env.cfg.num_agents
        np.testing.assert_allclose(a["trade_volume"], m["market_volume"], rtol=1e-6)
        assert a["prices"].shape == (M, G) and a["price_dispersion"].shape == (G,)


def test_analysis_of_identical_members_is_zero(trainer, trained):
    """A population of copies of one member: every KL and JS is 0 and there is exactly one
    effective policy."""
    from agents.networks import population_apply
    from analysis.population import population_analysis

    ts, _ = trained
    P, J = 4, trainer.env.cfg.num_niches
    params = jax.tree.map(lambda x: jnp.broadcast_to(x[:1], x.shape), ts.params)
    probe = jax.random.normal(jax.random.key(0), (64, trainer.env.obs_dim))
    st = ts.env_state
    a = jax.jit(
        lambda params, probe: population_analysis(
            lambda p, o: population_apply(trainer.net, p, o), params, probe,
            jnp.ones((P, J + 1), jnp.int32), jnp.ones((P, J + 1), jnp.int32), jnp.ones((2, J + 1), jnp.int32),
            jnp.full((P, 8), 0.5), st.goods, st.money, st.price, jnp.ones(trainer.env.cfg.num_goods), 10,
        )
    )(params, probe)
    for k in ("kl", "js", "niche_kl", "niche_profile_distance"):
        np.testing.assert_allclose(a[k], 0.0, atol=1e-6, err_msg=k)
    np.testing.assert_allclose(a["effective_policies"], 1.0, atol=1e-4)
    np.testing.assert_allclose(a["hhi"], 1 / P, rtol=1e-6)


@pytest.mark.slow
def test_make_train_vmaps_over_seeds(cfg, trainer):
    """``make_train(cfg)`` is pure: vmapped over two keys in one program, each population
    ends where its own run (one update at a time) ends, to float tolerance."""
    n = 2
    keys = jax.random.split(jax.random.key(21), 2)
    ts_v, m_v = jax.jit(jax.vmap(make_train(cfg, n)))(keys)
    for i in range(2):
        ts, metrics = run_updates(trainer, trainer.init(keys[i]), n)
        assert int(ts_v.update[i]) == n
        for x, y in zip(jax.tree.leaves(ts_v.params), jax.tree.leaves(ts.params)):
            np.testing.assert_allclose(np.asarray(x[i]), np.asarray(y), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(np.asarray(m_v["reward"][i]), np.stack([m["reward"] for m in metrics]), rtol=1e-4)


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
    """Scalars, texts, histograms and images of a run's TensorBoard logs, read back with
    tensorboard's own event reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(path), size_guidance={"scalars": 0, "tensors": 0, "histograms": 0, "images": 0})
    ea.Reload()
    tags = ea.Tags()
    scalars = {t: [(e.step, e.value) for e in ea.Scalars(t)] for t in tags["scalars"]}
    texts = {t: [b"".join(e.tensor_proto.string_val).decode() for e in ea.Tensors(t)] for t in tags["tensors"]}
    histograms = {t: ea.Histograms(t) for t in tags["histograms"]}
    images = {t: ea.Images(t) for t in tags["images"]}
    return scalars, texts, histograms, images


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
    scalars, texts, histograms, images = read_events(run_dir / "tb")
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
    # The analysis at update 5: diversity scalars, histograms, images and a text summary,
    # the same values as analysis.jsonl.
    an = [json.loads(x) for x in (run_dir / "analysis.jsonl").read_text().splitlines()]
    assert [a["update"] for a in an] == [5]
    for tag in ("diversity/mean_kl", "diversity/mean_js", "diversity/effective_policies", "niches/occupancy_entropy",
                "monopoly/largest_share/farmer", "monopoly/hhi/baker", "wealth/gini", "market/dispersion/bread"):
        assert [s for s, _ in scalars[tag]] == [5], tag
    np.testing.assert_allclose(scalars["diversity/mean_kl"][0][1], an[0]["mean_kl"], rtol=1e-6)
    np.testing.assert_allclose(scalars["wealth/gini"][0][1], an[0]["gini"], rtol=1e-6)
    h = histograms["histogram/specialisation"][0]
    assert h.step == 5 and h.histogram_value.num == sum(an[0]["specialisation_histogram"]["counts"])
    assert list(h.histogram_value.bucket) == an[0]["specialisation_histogram"]["counts"]
    assert histograms["histogram/wealth"][0].histogram_value.num == 256
    for tag in ("images/kl_heatmap", "images/niche_shares", "images/lineage"):
        img = images[tag][0]
        assert img.step == 5 and img.width > 100 and img.height > 100 and img.encoded_image_string[:4] == b"\x89PNG", tag
    assert "effective policies" in text["analysis"][0]
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
