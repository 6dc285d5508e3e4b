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
    held-out worlds (same worlds and keys for all three). Trained with the fast path (the
    fused loss terms, native where the kernels run)."""
    from agents import native
    from agents.networks import FusedPolicy

    assert isinstance(trainer.loss_net, FusedPolicy) and trainer.loss_net.native == native.available()
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
    assert m["member_niche_shares"].shape == (P, J + 1)
    np.testing.assert_allclose(m["member_niche_shares"].sum(-1), 1.0, rtol=1e-5)
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
        np.testing.assert_allclose(a["kl_mean"], kl[~np.eye(P, dtype=bool)].mean(), rtol=1e-5)
        assert 1.0 - 1e-5 <= float(a["effective_policies"]) <= P + 1e-5
        assert a["market_occupancy_entropy"].shape == (M,)
        assert 0 <= float(a["occupancy_entropy"]) <= np.log(J + 1) + 1e-6
        np.testing.assert_allclose(a["specialisation_index"], m["specialisation_index"], rtol=1e-6)
        assert a["hhi"].shape == a["niche_largest_share"].shape == a["niche_largest_member"].shape == (J,)
        live = np.asarray(a["niche_largest_member"]) >= 0
        assert ((a["hhi"][live] >= 1 / P - 1e-6) & (a["hhi"][live] <= 1 + 1e-6)).all()
        assert (a["niche_largest_share"][live] ** 2 <= a["hhi"][live] + 1e-6).all()
        out = np.asarray(a["niche_output"])
        major = out >= 0.01 * out.sum()
        assert float(a["niche_concentration"]) == pytest.approx(
            float(np.max(np.where(major, a["niche_largest_share"], 0.0))))
        assert major[int(a["niche_concentration_niche"])] and (out[~live] == 0).all()
        assert 1 / P - 1e-6 <= float(a["largest_output_share"]) <= 1 + 1e-6 or out.sum() == 0
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
    from analysis.population import RolloutSummary, population_analysis

    ts, _ = trained
    P, J = 4, trainer.env.cfg.num_niches
    params = jax.tree.map(lambda x: jnp.broadcast_to(x[:1], x.shape), ts.params)
    probe = jax.random.normal(jax.random.key(0), (64, trainer.env.obs_dim))
    st = ts.env_state
    analyse = jax.jit(
        lambda params, probe, output: population_analysis(
            lambda p, o: population_apply(trainer.net, p, o), params, RolloutSummary(
                probe, jnp.ones((P, J + 1), jnp.int32), output, jnp.ones((2, J + 1), jnp.int32),
                jnp.full((P, 8), 0.5), st.goods, st.money, st.price, jnp.ones(trainer.env.cfg.num_goods)),
            10,
        )
    )
    a = analyse(params, probe, jnp.ones((P, J + 1), jnp.int32))
    for k in ("kl", "js", "niche_kl", "niche_profile_distance"):
        np.testing.assert_allclose(a[k], 0.0, atol=1e-6, err_msg=k)
    np.testing.assert_allclose(a["effective_policies"], 1.0, atol=1e-4)
    np.testing.assert_allclose(a["hhi"], 1 / P, rtol=1e-6)
    np.testing.assert_allclose([a["largest_output_share"], a["niche_concentration"]], 1 / P, rtol=1e-6)
    # Whole-economy dominance against per-niche concentration on a hand case: member 2 makes
    # all of niche 0 (10 units) and 1 of each other niche; the others 1 of each niche but 0.
    out = np.ones((P, J + 1), np.int32)
    out[:, 0] = 0
    out[2, 0] = 10
    a = analyse(params, probe, jnp.asarray(out))
    total = 10 + P * (J - 1)
    assert float(a["largest_output_share"]) == pytest.approx((10 + J - 1) / total, rel=1e-6)
    assert float(a["niche_concentration"]) == pytest.approx(1.0) and int(a["niche_concentration_niche"]) == 0
    assert int(a["niche_largest_member"][0]) == 2


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


def test_persistence_weight_raises_specialisation_index(trainer):
    """Same seeds and budget: members rewarded for persistence (per agent: sticking to its
    niche) end with more specialised agents."""
    n = 25
    out = {}
    for w in (0.0, 1.0):
        ts = trainer.init(jax.random.key(5))
        weights = dict(ts.reward_weights, persistence=jnp.full((trainer.num_members,), w, jnp.float32))
        ts = trainer.place(ts.replace(reward_weights=weights))
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
    # the whole run in one scan (Trainer.train: init, then the updates) ends in the same state
    d, metrics = trainer.train(jax.random.key(11), 3)
    assert np.asarray(metrics["update"]).tolist() == [1, 2, 3]
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(d.params)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)


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
        for x, y in zip(jax.tree.leaves(new.value_norm), jax.tree.leaves(ts.value_norm)):
            np.testing.assert_array_equal(x[child], y[parent])
        # Reward weights are the slot's condition: not inherited by default.
        for c in ts.reward_weights:
            np.testing.assert_array_equal(new.reward_weights[c][child], ts.reward_weights[c][child])
    # Copies are perturbed by one of the two factors; the optimiser uses the new rate.
    lo, hi = trainer.cfg.train.pbt.perturb
    for child, parent in ((1, 0), (3, 1)):
        ratio = new.hyper["learning_rate"][child] / ts.hyper["learning_rate"][parent]
        assert np.isclose(ratio, lo, rtol=1e-6) or np.isclose(ratio, hi, rtol=1e-6), ratio
        gap = (1 - new.hyper["gamma"][child]) / (1 - ts.hyper["gamma"][parent])  # discounts: complement law
        assert np.isclose(gap, lo, rtol=1e-4) or np.isclose(gap, hi, rtol=1e-4), gap
    np.testing.assert_array_equal(new.opt_state[1].hyperparams["learning_rate"], new.hyper["learning_rate"])
    for h in ts.hyper:
        np.testing.assert_array_equal(new.hyper[h][[0, 2]], ts.hyper[h][[0, 2]])
    assert list(new.pbt.parent) == [0, 0, 2, 1]
    assert list(new.pbt.founder) == [0, 0, 2, 1]


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
    assert all(e["inherited"] == ["parameters", "optimiser_state", "value_norm", "hyperparameters"] for e in lineage)
    # Every metrics line carries the reward weights by component, P floats each.
    for x in lines:
        w = json.loads(x)["reward_weights"]
        assert set(w) == {"utility", "persistence", "collaboration", "income", "social", "specialisation"}
        assert all(len(v) == 4 for v in w.values())
    scalars, texts, histograms, images = read_events(run_dir / "tb")
    for tag in ("population/utility_mean", "member/0/reward", "member/3/learning_rate", "member/2/entropy",
                "niche_share/occupancy/farmer", "niche_share/occupancy/rest", "member/1/member_niche_shares/baker",
                "market/market_price/bread", "market/market_volume/grain", "perf/agent_steps_per_s",
                "member/2/reward_weight/specialisation",
                "member/1/gamma", "member/0/vf_coef"):
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
    for tag in ("diversity/kl_mean", "diversity/js_mean", "diversity/effective_policies", "niches/occupancy_entropy",
                "niches/niche_largest_share/farmer", "niches/hhi/baker", "wealth/gini", "market/price_dispersion/bread",
                "dominance/largest_output_share", "niches/niche_concentration"):
        assert [s for s, _ in scalars[tag]] == [5], tag
    np.testing.assert_allclose(scalars["diversity/kl_mean"][0][1], an[0]["kl_mean"], rtol=1e-6)
    # Every scalar tag names one metric of the registry (or a reward component / a variant,
    # declared in their own registries): one name from the records to the dashboard.
    from analysis.metrics import REGISTRY
    from selfplay.rewards import REWARD_COMPONENTS
    from selfplay.variants import VARIANTS
    declared = set(REGISTRY) | set(REWARD_COMPONENTS) | set(VARIANTS)
    for t in scalars:
        parts = t.split("/")
        if parts[0] == "member":
            name = parts[3] if parts[2] == "reward_weight" else parts[2]
        elif parts[0] == "population":
            name = parts[-1].removesuffix("_mean")
        else:
            name = parts[1]
        assert name in declared, (t, name)
    np.testing.assert_allclose(scalars["wealth/gini"][0][1], an[0]["gini"], rtol=1e-6)
    h = histograms["histogram/specialisation_histogram"][0]
    assert h.step == 5 and h.histogram_value.num == sum(an[0]["specialisation_histogram"]["counts"])
    assert list(h.histogram_value.bucket) == an[0]["specialisation_histogram"]["counts"]
    assert histograms["histogram/wealth_histogram"][0].histogram_value.num == 256
    for tag in ("images/kl_heatmap", "images/niche_shares", "images/lineage"):
        img = images[tag][0]
        assert img.step == 5 and img.width > 100 and img.height > 100 and img.encoded_image_string[:4] == b"\x89PNG", tag
    assert "effective_policies" in text["analysis"][0] and "largest_output_share" in text["analysis"][0]
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


# ---- the trainer's wiring: fitness, PBT, league, reward weights, truncation, keys -------------
def test_fitness_pbt_and_lineage_follow_the_logged_components(trainer, trained):
    """The configured fitness (``utility``) of each update equals the logged utility
    component; the running fitness is the documented moving average; PBT events copy the
    sources ``pbt_sources`` picks from the fitness before the copy (worst from best); the
    founders follow the copies."""
    from selfplay.population import pbt_sources as sources

    _, metrics = trained
    a = trainer.cfg.train.pbt.fitness_ema
    frac = trainer.cfg.train.pbt.fraction
    prev = None
    founders = np.arange(trainer.num_members)
    events = 0
    for m in metrics:
        np.testing.assert_allclose(m["fitness_now"], m["utility"], rtol=1e-6)
        running = m["fitness_now"] if prev is None else (1 - a) * prev + a * m["fitness_now"]
        src = np.asarray(m["pbt_source"])
        if bool(m["pbt_event"]):
            np.testing.assert_array_equal(src, np.asarray(sources(jnp.asarray(running, jnp.float32), frac)))
            events += int((src != np.arange(len(src))).any())
        else:
            np.testing.assert_array_equal(src, np.arange(len(src)))
        np.testing.assert_allclose(m["fitness"], running[src], rtol=1e-5)
        founders = founders[src]
        np.testing.assert_array_equal(m["founder"], founders)
        prev = np.asarray(m["fitness"], np.float64)
    assert events >= 5  # copies did happen


def test_reward_weights_stay_with_their_slot_through_pbt(trainer):
    """Each slot keeps its own reward weights through PBT rounds (the default ``inherit``),
    while parameters are copied; metrics carry the weights by component name."""
    P = trainer.num_members
    ts = trainer.init(jax.random.key(7))
    own = np.asarray([0.0, 0.05, 0.1, 0.2], np.float32)
    ts = trainer.place(ts.replace(reward_weights=dict(ts.reward_weights, specialisation=jnp.asarray(own))))
    ts, metrics = run_updates(trainer, ts, 10)  # PBT at updates 5 and 10
    copies = sum(int((np.asarray(m["pbt_source"]) != np.arange(P)).sum()) for m in metrics)
    assert copies >= 1
    for m in metrics:
        np.testing.assert_array_equal(m["reward_weights"]["specialisation"], own)
        assert set(m["reward_weights"]) == {"utility", "persistence", "collaboration", "income", "social", "specialisation"}
    np.testing.assert_array_equal(jax.device_get(ts.reward_weights["specialisation"]), own)


def test_reward_weight_ranges_are_drawn_per_slot_and_inherited_on_request():
    """``[0.2, 0.2]`` gives 0.2 in every slot; ``[0, 0.2]`` draws one weight per slot in the
    range; with ``inherit`` listing ``reward_weights`` a copy takes its source's, without it
    the slot keeps its own; hyperparameters follow ``hyperparameters`` the same way."""
    from selfplay import population as pop
    from selfplay.config import load_run_config as load

    P = 4
    for rng_, check in (([0.2, 0.2], lambda w: np.allclose(w, 0.2)),
                        ([0.0, 0.2], lambda w: (w >= 0).all() and (w <= 0.2).all() and len(set(w.tolist())) == P)):
        c = load(CONFIGS / "tiny.yaml", OVERRIDES + [f"train.variants.rewards.specialisation={rng_}"])
        *_, weights = Trainer(c)._init_learners(jax.random.key(0))  # traced, not compiled
        w = np.asarray(weights["specialisation"])
        assert check(w), (rng_, w)
        np.testing.assert_array_equal(weights["utility"], 1.0)
    params = {"w": jnp.arange(P, dtype=jnp.float32)[:, None] * jnp.ones((P, 3))}
    hyper = {"learning_rate": jnp.asarray([1e-3, 2e-3, 3e-3, 4e-3]), "gamma": jnp.asarray([0.9, 0.91, 0.92, 0.93])}
    weights = {"specialisation": jnp.asarray([0.0, 0.1, 0.2, 0.3])}
    src = jnp.asarray([0, 0, 2, 2], jnp.int32)
    state = pop.init_pbt(P)
    for inherit in ((), ("hyperparameters",), ("reward_weights",), ("hyperparameters", "reward_weights")):
        (p2, o2, h2, w2), pbt = pop.exploit_explore(pop.Slots(params, params, hyper, weights), state, src,
                                                    jax.random.key(1), jnp.int32(5), pop.CopyRule(inherit, (0.8, 1.25)))
        np.testing.assert_array_equal(p2["w"][:, 0], [0, 0, 2, 2])
        want_w = np.asarray(weights["specialisation"])[np.asarray(src)] if "reward_weights" in inherit else weights["specialisation"]
        np.testing.assert_array_equal(w2["specialisation"], want_w)
        base = np.asarray(hyper["learning_rate"])[np.asarray(src)] if "hyperparameters" in inherit else np.asarray(hyper["learning_rate"])
        ratio = np.asarray(h2["learning_rate"]) / base
        assert np.allclose(ratio[[0, 2]], 1.0) and all(np.isclose(r, 0.8) or np.isclose(r, 1.25) for r in ratio[[1, 3]])
        assert list(pbt.parent) == [0, 0, 2, 2] and list(pbt.copied_at) == [-1, 5, -1, 5]


def test_registered_fitness_on_hand_cases():
    """``utility``, ``niche_shared`` and ``market_welfare`` rank a hand-made population as
    their definitions say; ``market_welfare`` does not penalise a member whose agents pay
    into the public project when its market's welfare rises."""
    from selfplay.population import FITNESS, FitnessInputs

    # Member 0 builds (its own utility is low) in market 0, whose welfare is the highest;
    # member 1 free-rides in market 1; members 2 and 3 share both markets.
    util = jnp.asarray([0.30, 0.50, 0.40, 0.45])
    niche_counts = jnp.asarray([[0, 0, 9, 1], [9, 1, 0, 0], [8, 2, 0, 0], [1, 9, 0, 0]])  # J = 3 niches + rest
    market_utility = jnp.asarray([0.6, 0.4])
    presence = jnp.asarray([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [0.25, 0.75]])
    x = FitnessInputs({"utility": util, "collaboration": jnp.asarray([1.0, 0.0, 0.0, 0.0])}, niche_counts,
                      market_utility, presence)
    np.testing.assert_allclose(FITNESS["utility"](x), util)
    # Dominant niches: 2, 0, 0, 1 -> members 1 and 2 share niche 0.
    np.testing.assert_allclose(FITNESS["niche_shared"](x), [0.30, 0.25, 0.20, 0.45], rtol=1e-6)
    np.testing.assert_allclose(FITNESS["market_welfare"](x), [0.6, 0.4, 0.5, 0.45], rtol=1e-6)
    assert int(jnp.argmin(FITNESS["utility"](x))) == 0 and int(jnp.argmax(FITNESS["market_welfare"](x))) == 0
    # Equal fitness (every member everywhere): PBT copies nobody.
    from selfplay.population import pbt_sources as sources

    np.testing.assert_array_equal(sources(jnp.full((4,), 0.5), 0.5), np.arange(4))


def test_league_refreshes_round_robin_from_the_fittest(cfg):
    """Slots refresh round robin with the fittest member at each refresh (``league.source``),
    and the snapshot equals that member's parameters then."""
    lcfg = load_run_config(
        CONFIGS / "tiny.yaml", OVERRIDES + ["train.members=2", "train.league.size=2", "train.league.refresh_every=2"]
    )
    tr = Trainer(lcfg)
    ts = tr.init(jax.random.key(0))
    fits, snaps = {}, {}
    for _ in range(6):
        ts, m = tr.update(ts)
        m = jax.device_get(m)
        u = int(m["update"])
        fits[u] = np.asarray(m["fitness"])
        snaps[u] = jax.device_get(ts.params)
    ts = jax.device_get(ts)
    assert int(ts.league.refreshes) == 3
    np.testing.assert_array_equal(ts.league.made_at, [6, 4])  # slot 0 at 2 then 6, slot 1 at 4
    for slot, u in ((0, 6), (1, 4)):
        best = int(np.argmax(fits[u]))
        assert int(ts.league.source[slot]) == best
        for x, y in zip(jax.tree.leaves(ts.league.params), jax.tree.leaves(snaps[u])):
            np.testing.assert_array_equal(x[slot], y[best])


def test_truncation_bootstrap_and_advantages(trainer):
    """With ``episode_length`` (50) not dividing ``rollout_steps`` (16), a world ends inside
    the rollout: at that step the bootstrap equals the members' value of the pre-reset
    observation (replayed here with the same keys and actions), elsewhere it is 0; the
    trainer's advantages equal a NumPy GAE reference with bootstrapping at truncation."""
    from agents.networks import from_members, population_apply, to_members
    from selfplay.train import step_keys, update_keys

    env, P, PL = trainer.env, trainer.num_members, trainer.num_players
    ts = trainer.init(jax.random.key(4))
    ts, _ = run_updates(trainer, ts, 1)
    ts = jax.device_get(ts)
    ts = ts.replace(env_state=ts.env_state.replace(step=jnp.int32(env.cfg.episode_length - 3)))
    ts = trainer.place(ts)
    keys = update_keys(jax.random.wrap_key_data(ts.key), ts.update)
    _, _, _, traj, _, last_value, _ = jax.jit(trainer._rollout)(ts, keys["rollout"])
    done = np.asarray(traj.done[:, 0, 0])
    assert done.tolist() == [False, False, True] + [False] * 13
    # Replay steps 0..2 with the same keys and actions: the pre-reset observation at step 2.
    state = ts.env_state
    for t in range(3):
        acts = from_members({k: v[t] for k, v in traj.actions.items()})
        _, k_env = step_keys(keys["rollout"], t)
        obs, state, *_ = env.step(k_env, state, acts)
    mu, sd = trainer._value_scale(ts)
    _, v = population_apply(trainer.net, ts.params, to_members(obs, PL)[:P])
    np.testing.assert_allclose(traj.bootstrap[2], np.asarray(v * sd + mu), rtol=1e-5, atol=1e-5)
    assert not np.any(np.asarray(traj.bootstrap)[np.arange(16) != 2])
    # Advantages against NumPy GAE (float64), member by member.
    reward, _ = trainer.rewards(ts, traj)
    adv, ret = jax.device_get(trainer.advantages(ts, reward, traj, last_value))
    r, val, bs = (np.asarray(x, np.float64) for x in (reward, traj.value, traj.bootstrap))
    for p in range(P):
        g, lam = float(ts.hyper["gamma"][p]), float(ts.hyper["gae_lambda"][p])
        a = np.zeros(r.shape[2])
        want = np.zeros((16, r.shape[2]))
        for t in reversed(range(16)):
            nxt = bs[t, p] if done[t] else (val[t + 1, p] if t < 15 else np.asarray(last_value[p], np.float64))
            delta = r[t, p] + g * nxt - val[t, p]
            a = delta + (0.0 if done[t] else g * lam * a)
            want[t] = a
        np.testing.assert_allclose(adv[p], want, rtol=2e-4, atol=2e-4)
        np.testing.assert_allclose(ret[p], want + val[:, p], rtol=2e-4, atol=2e-4)


def test_random_streams_are_distinct(trainer):
    """Every key derived in init and in updates (learners, variants, reward weights, run;
    per update the rollout's per-step action and environment keys, the environment's own
    splits, per-member PPO keys and their epoch splits, PBT per variant, analysis) and the
    world keys of the first episodes are distinct."""
    from economy.streams import derive
    from selfplay.train import init_keys, step_keys, update_keys

    t = trainer.cfg.train
    seen: dict[tuple, str] = {}

    def add(key, name):
        data = tuple(np.asarray(jax.random.key_data(key)).ravel().tolist())
        assert data not in seen, f"{name} repeats {seen[data]}"
        seen[data] = name

    for seed in (0, 1):
        root = jax.random.key(seed)
        add(root, f"root{seed}")
        ik = init_keys(root)
        for k, v in ik.items():
            add(v, f"{seed}/init/{k}")
        for name in trainer.variant_names:
            add(derive(ik["variants"], name), f"{seed}/variants/{name}")
        for c in trainer.components:
            add(derive(ik["reward_weights"], c), f"{seed}/reward_weights/{c}")
        run = ik["run"]
        for u in range(3):
            uk = update_keys(run, u)
            for k, v in uk.items():
                add(v, f"{seed}/{u}/{k}")
            for s in range(t.rollout_steps):
                k_act, k_env = step_keys(uk["rollout"], s)
                add(k_act, f"{seed}/{u}/act{s}")
                add(k_env, f"{seed}/{u}/env{s}")
                for i, k in enumerate(jax.random.split(k_env, 4)):  # Economy.step's own split
                    add(k, f"{seed}/{u}/env{s}/{i}")
            for p in range(trainer.num_members):
                kp = derive(uk["ppo"], p)
                add(kp, f"{seed}/{u}/ppo{p}")
                for e, k in enumerate(jax.random.split(kp, t.epochs)):  # ppo_update's epochs
                    add(k, f"{seed}/{u}/ppo{p}/epoch{e}")
            for name in trainer.variant_names:
                add(derive(uk["pbt"], name), f"{seed}/{u}/pbt/{name}")
    for episode in range(4):
        wk = trainer.world_key(jnp.int32(episode))
        add(wk, f"world{episode}")
        for i, k in enumerate(jax.random.split(wk, 7)):  # the world generator's own split
            add(k, f"world{episode}/{i}")


def test_readme_extension_examples():
    """The README's two examples (a reward component, a hyperparameter), executed as
    written: each becomes a config key, the reward is the weighted sum of the logged
    components, and the optimiser runs with each member's own ``b1`` through PBT."""
    import re

    from selfplay import rewards, variants

    text = (ROOT / "docs" / "selfplay.md").read_text()
    blocks = re.findall(r"<!-- tested: tests/test_train.py::test_readme_extension_examples -->\n```python\n(.*?)```", text, re.S)
    assert len(blocks) == 2
    try:
        for b in blocks:
            exec(compile(b, "README.md", "exec"), {})
        c = load_run_config(CONFIGS / "tiny.yaml", OVERRIDES + [
            "train.variants.rewards.thrift=[0, 0.1]", "train.variants.b1=[0.8, 0.95]",
            "train.pbt.interval=2", "train.pbt.fraction=0.5",
        ])
        tr = Trainer(c)
        assert tr.components == ("utility", "persistence", "collaboration", "income", "social", "thrift", "specialisation")
        ts, metrics = run_updates(tr, tr.init(jax.random.key(1)), 4)
        for m in metrics:
            w = m["reward_weights"]
            assert (w["thrift"] >= 0).all() and (w["thrift"] <= 0.1).all() and len(set(w["thrift"].tolist())) == 4
            want = sum(np.asarray(w[k], np.float64) * m[k] for k in tr.components)
            np.testing.assert_allclose(m["reward"], want, rtol=1e-4, atol=1e-7)
            assert (m["thrift"] > 0).all()
        assert any((m["pbt_source"] != np.arange(4)).any() for m in metrics)
        b1 = np.asarray(jax.device_get(ts.hyper["b1"]))
        np.testing.assert_array_equal(jax.device_get(ts.opt_state[1].hyperparams["b1"]), b1)
        assert ((b1 > 0.7) & (b1 < 1.0)).all() and len(set(b1.tolist())) > 1
    finally:
        rewards.unregister_component("thrift")
        variants.unregister_variant("b1")


def test_lineage_cap_keeps_pbt_from_a_monoculture():
    """``max_lineage_share``: a copy that would give one founder more than the cap's slots
    is skipped; without the cap the same fitness copies as before."""
    from selfplay.population import pbt_sources as sources

    fitness = jnp.asarray([0.9, 0.1, 0.5, 0.2, 0.8, 0.3])  # best 0, 4; worst 1, 3
    founder = jnp.asarray([0, 0, 2, 3, 4, 5])  # founder 0 already holds two slots (0 and 1)
    np.testing.assert_array_equal(sources(fitness, 0.34), [0, 0, 2, 4, 4, 5])
    np.testing.assert_array_equal(sources(fitness, 0.34, founder, 1.0), [0, 0, 2, 4, 4, 5])
    # Cap 2 of 6 slots: slot 1 (founder 0) copying member 0 keeps founder 0 at 2: allowed;
    # slot 3 copying member 4 gives founder 4 two slots: allowed.
    np.testing.assert_array_equal(sources(fitness, 0.34, founder, 0.34), [0, 0, 2, 4, 4, 5])
    founder2 = jnp.asarray([0, 1, 0, 3, 4, 5])  # founder 0 holds slots 0 and 2
    # Slot 1 (founder 1) copying member 0 would give founder 0 three slots: skipped.
    np.testing.assert_array_equal(sources(fitness, 0.34, founder2, 0.34), [0, 1, 2, 4, 4, 5])
    np.testing.assert_array_equal(sources(fitness, 0.34, founder2, 0.5), [0, 0, 2, 4, 4, 5])


def test_member_level_specialisation_makes_members_differ():
    """With the member-level specialisation component on (weight 1) the members end with
    distinct niche profiles: I(member; niche) over the last five updates is at least 1 bit
    above the same run with it off, seed by seed (same seeds and worlds; the lineage cap
    of one slot per founder keeps PBT from cloning a member over the others). Measured on
    the development machine: off 0.09-0.30 bits, on 1.95-1.97 bits (log2 4 = 2 at most)."""
    from selfplay.evaluate import _mi_bits

    c = load_run_config(CONFIGS / "tiny.yaml", OVERRIDES + ["train.pbt.max_lineage_share=0.25"])
    tr = Trainer(c)
    for seed in (5, 6):
        mi = {}
        for w in (0.0, 1.0):
            ts = tr.init(jax.random.key(seed))
            weights = dict(ts.reward_weights, specialisation=jnp.full((4,), w, jnp.float32))
            ts, metrics = run_updates(tr, tr.place(ts.replace(reward_weights=weights)), 25)
            mi[w] = np.mean([_mi_bits(np.asarray(m["member_niche_shares"])[:, :-1]) for m in metrics[-5:]])
            assert (np.asarray(metrics[-1]["founder"]) == np.arange(4)).all()  # no lineage took a second slot
        assert mi[1.0] >= mi[0.0] + 1.0, (seed, mi)


def test_imitation_warm_start_follows_the_teacher_then_hands_over_to_ppo():
    """``train.imitation.updates=K``: the first K updates roll out the scripted baseline and
    fit the members to it (their negative log-likelihood of its actions falls well below
    the uniform policy's, a closed form of the action spec); no PBT round runs then even
    where the interval falls; the league's snapshots are the imitators when PPO starts;
    PPO's first rollout, played by the members themselves, works the teacher's niche mix
    (total variation from it under half the uniform policy's); and the running fitness
    starts afresh with the first PPO update."""
    K, U = 8, 12
    c = load_run_config(CONFIGS / "tiny.yaml", OVERRIDES + [
        "train.members=2", "train.league.size=2", "train.pbt.interval=2", f"train.updates={U}",
        f"train.imitation.updates={K}",
    ])
    tr = Trainer(c)
    ts, metrics = run_updates(tr, tr.init(jax.random.key(0)), K)
    host = jax.device_get(ts)
    for leaf_l, leaf_p in zip(jax.tree.leaves(host.league.params), jax.tree.leaves(host.params)):
        np.testing.assert_array_equal(leaf_l, leaf_p[np.arange(2) % 2])
    ts, more = run_updates(tr, ts, U - K)
    metrics += more
    assert [bool(m["imitation"]) for m in metrics] == [True] * K + [False] * (U - K)
    assert not any(bool(m["pbt_event"]) for m in metrics[:K]) and bool(metrics[K + 1]["pbt_event"])  # update K + 2
    uniform_nll = sum(float(np.prod(h.shape, dtype=int)) * np.log(h.choices) for h in tr.env.action_spec)
    first = np.asarray(metrics[0]["policy_loss"])
    last = np.asarray(metrics[K - 1]["policy_loss"])
    assert (np.abs(first - uniform_nll) < 0.15 * uniform_nll).all(), (first, uniform_nll)  # starts near uniform
    assert (last < 0.75 * uniform_nll).all(), (last, uniform_nll)
    teacher = np.mean([np.asarray(m["occupancy"]) for m in metrics[:K]], 0)
    tv = lambda a, b: 0.5 * np.abs(a - b).sum()  # noqa: E731
    uniform = np.full_like(teacher, 1.0 / teacher.size)
    assert tv(np.asarray(metrics[K]["occupancy"]), teacher) < 0.5 * tv(uniform, teacher)
    np.testing.assert_array_equal(metrics[K]["fitness"], metrics[K]["fitness_now"])


def test_analysis_at_an_episode_boundary_reads_the_world_before_the_reset(trainer):
    """An update whose rollout's last step ends the episode (the world is then reset) is
    analysed on the world that step left, not on the fresh one: its Gini, wealth and
    prices equal those of the same rollout started one step earlier in the episode (the
    same steps, no reset), and those are agora eval's measures (analysis.niches.gini of
    analysis.population.wealth) of that state."""
    from analysis.niches import gini
    from analysis.population import wealth

    T, E = trainer.cfg.train.rollout_steps, trainer.cfg.economy.episode_length
    ts0 = trainer.init(jax.random.key(4))
    ts0 = ts0.replace(update=jnp.asarray(4, ts0.update.dtype))  # update 5: an analysis update (every 5)

    def at(step):
        ts = ts0.replace(env_state=ts0.env_state.replace(step=jnp.asarray(step, jnp.int32)))
        ts = jax.tree.map(lambda x: x.copy(), ts)  # the update donates its input: ts0 stays intact
        return jax.device_get(trainer.update(trainer.place(ts)))

    ts_end, m_end = at(E - T)  # the last step truncates: the world is reset after it
    ts_in, m_in = at(E - T - 1)  # the same steps, one step short of the boundary
    assert int(ts_end.env_state.step) == 0 and int(ts_in.env_state.step) == E - 1  # one reset, one not
    a_end, a_in = m_end["analysis"], m_in["analysis"]
    assert bool(m_end["analysis_done"]) and bool(m_in["analysis_done"])
    s = ts_in.env_state
    want = float(gini(wealth(s.goods, s.money, s.price)))
    assert float(a_end["gini"]) == pytest.approx(want, rel=1e-6) and float(a_in["gini"]) == pytest.approx(want, rel=1e-6)
    np.testing.assert_array_equal(a_end["prices"], np.asarray(s.price, np.float32))
    fresh = ts_end.env_state  # the new world: base prices, its own wealth
    assert float(gini(wealth(fresh.goods, fresh.money, fresh.price))) != pytest.approx(want, rel=1e-3)


def test_update_seeds_matches_sequential_trainers(cfg, trainer, tmp_path):
    """``agora study --vmap-seeds``: two seeds trained as one vmapped program agree with the
    same seeds trained one at a time (each as a trainer with ``train.seed = s`` starts: its
    key and its worlds): the economy's integer state, niche counts and PBT bookkeeping
    exactly, the float parameters to float32 tolerance (the batched matmuls sum in another
    order). Then the run-directory loop (selfplay/vmapped.py) writes every run's checkpoints,
    logs and its mode, and a vmapped run's checkpoint matches the stacked state."""
    from analysis.files import read_jsonl
    from economy import ConfigError
    from selfplay.checkpoint import Checkpoints
    from selfplay.vmapped import MARK, train_seeds

    seeds, n = [3, 8], 2
    ts_v = trainer.init_seeds(seeds)
    for _ in range(n):
        ts_v, m_v = trainer.update_seeds(ts_v)
    ts_v, m_v = jax.device_get((ts_v, m_v))
    for i, s in enumerate(seeds):
        # what Trainer(cfg with train.seed = s).init(key(s)) computes, without a second trainer
        ts = trainer._init(np.asarray(jax.random.key_data(jax.random.key(s))), np.uint32(s))
        ts, metrics = run_updates(trainer, ts, n)
        ts, mine = jax.device_get(ts), trainer.seed_state(ts_v, i)
        assert int(mine.update) == int(ts.update) == n
        for a, b in zip(jax.tree.leaves(mine.env_state), jax.tree.leaves(ts.env_state)):
            if np.issubdtype(np.asarray(b).dtype, np.integer):
                np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        for a, b in zip(jax.tree.leaves(mine.params), jax.tree.leaves(ts.params)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
        # the niche counts (their ratios to the same integer totals) and the PBT bookkeeping exactly
        for key in ("member_niche_shares", "occupancy", "pbt_source", "founder"):
            np.testing.assert_array_equal(m_v[key][i], metrics[-1][key])
        np.testing.assert_allclose(m_v["utility"][i], metrics[-1]["utility"], rtol=1e-4, atol=1e-6)
    # the seeds differ (a vmapped axis that repeated one seed would pass the loop above only by chance)
    assert not np.array_equal(ts_v.env_state.goods[0], ts_v.env_state.goods[1])
    # every lax.cond of the update (episode reset, PBT, league, analysis) stays a cond under vmap: its
    # condition is unbatched, so one branch runs, not both selected
    abstract = jax.eval_shape(trainer.init_state, jax.random.key(0))
    one = str(jax.make_jaxpr(trainer._update)(abstract)).count(" cond[")
    axes = trainer._seed_axes(abstract)
    both = str(jax.make_jaxpr(jax.vmap(trainer._update, in_axes=(axes,), out_axes=(axes, 0)))(
        jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype), ts_v))).count(" cond[")
    assert one >= 3 and both == one

    run_cfgs = [cfg.model_copy(update={"train": cfg.train.model_copy(update={"seed": s, "updates": n})})
                for s in seeds]
    dirs = [tmp_path / f"seed_{s}" for s in seeds]
    seen = []
    assert train_seeds(run_cfgs, dirs, on_update=lambda u, ms: seen.append((u, len(ms))), log=lambda *_: None) == "vmapped"
    assert seen == [(1, 2), (2, 2)]
    for i, d in enumerate(dirs):
        assert json.loads((d / MARK).read_text())["seeds"] == seeds
        logged = [r["update"] for r in read_jsonl(d / "metrics.jsonl")[0]]
        assert logged == [u for u in range(1, n + 1) if u % cfg.train.log_every == 0 or u == n]
        ck = Checkpoints(d / "checkpoints", 3)
        assert ck.latest() == n
        got = ck.restore(trainer.seed_state(trainer.init_seeds(seeds), i))
        ck.close()
        for a, b in zip(jax.tree.leaves(got.params), jax.tree.leaves(trainer.seed_state(ts_v, i).params)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # a group differing in more than the seed is refused
    with pytest.raises(ConfigError, match="differ only in train.seed"):
        train_seeds([run_cfgs[0], cfg], [tmp_path / "a", tmp_path / "b"])


def test_the_update_runs_without_the_native_kernels(cfg, trainer, monkeypatch):
    """Where the native CPU kernels cannot run (an accelerator, no compiler), the trainer
    says so once and its whole update (acting and the fused loss's XLA twin) is plain XLA:
    no custom call of the native library in its program, and it trains (finite losses,
    parameters moved). On this CPU the same trainer with the kernels has them."""
    from agents import native
    from economy import native as economy_native

    abstract = jax.eval_shape(trainer.init_state, jax.random.key(0))
    with_native = str(jax.make_jaxpr(trainer._update)(abstract))
    if native.available():
        assert "agora_" in with_native  # the check below would otherwise pass vacuously
    monkeypatch.setattr(native, "_load", lambda: "switched off for this test")
    monkeypatch.setattr(economy_native, "_load", lambda: "switched off for this test")  # the market kernel
    economy_native._warn_once.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="switched off for this test"):
            plain = Trainer(cfg)
            program = str(jax.make_jaxpr(plain._update)(abstract))
        assert "agora_" not in program and "custom_call" not in program
        ts0 = plain.init(jax.random.key(4))
        before = jax.device_get(ts0.params)
        ts, m = plain.update(ts0)
        m = jax.device_get(m)
        assert np.all(np.isfinite(m["loss"])) and np.all(np.isfinite(m["approx_kl"]))
        moved = [np.max(np.abs(np.asarray(a) - np.asarray(b))) for a, b in
                 zip(jax.tree.leaves(jax.device_get(ts.params)), jax.tree.leaves(before))]
        assert max(moved) > 0
    finally:
        economy_native._warn_once.cache_clear()
