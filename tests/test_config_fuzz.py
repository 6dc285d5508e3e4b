"""Config fuzzing: hypothesis mutates every shipped preset (wrong types, out-of-range and
huge numbers, NaN, empty strings, unknown keys, removed keys, lists where mappings belong
and mappings where lists belong) and feeds it through the loader and the CLI. Every case
either loads, or stops with a ConfigError naming a dotted key (exit 2 at the command line,
nothing written): never another exception, never a run that starts."""

from __future__ import annotations

import contextlib
import copy
import io
import os
import re
from pathlib import Path

import numpy as np
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from economy import ConfigError, Economy, load_yaml
from selfplay import cli
from selfplay.config import run_config_from_dict
from tests.conftest import CONFIGS

PRESETS = sorted(p for p in CONFIGS.rglob("*.yaml") if "studies" not in p.parts)


def _resolved(path: Path) -> dict:
    data = load_yaml(path)
    return {"economy": data} if "economy" not in data and "goods" in data else data


BASE = {p.relative_to(CONFIGS).as_posix(): _resolved(p) for p in PRESETS}


def _paths(node, prefix=()):
    """Every path (tuple of keys / list indices) into ``node``, containers included."""
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, prefix + (i,))
    return out


def _draw_place(draw, data):
    """A drawn path into ``data`` and the container holding its last key (``None, None`` if empty)."""
    paths = _paths(data)
    if not paths:
        return None, None
    path = draw(st.sampled_from(paths))
    parent = data
    for k in path[:-1]:
        parent = parent[k]
    return path, parent


BAD_VALUES = [
    "abc", "", "{x}", "a=b", ".", "no_such_key=1", True, None, [1, 2], {"x": 1}, -1, 0, -(10**9), 10**30, 2**31, 1e308, -1e308, float("nan"),
    float("inf"), 0.5, -0.5, [], {}, [[1]], "1e3",
]


@st.composite
def mutations(draw):
    name = draw(st.sampled_from(sorted(BASE)))
    data = yaml.safe_load(yaml.safe_dump(BASE[name]))  # a deep copy
    done = []
    for _ in range(draw(st.integers(1, 3))):
        path, parent = _draw_place(draw, data)
        if path is None:
            break
        key = path[-1]
        old = parent[key]
        kind = draw(st.sampled_from(["value", "remove", "unknown", "swap"]))
        if kind == "remove":
            del parent[key]
        elif kind == "unknown" and isinstance(old, dict):
            old[draw(st.sampled_from(["bogus", "num_agent", "Members", "0"]))] = copy.deepcopy(draw(st.sampled_from(BAD_VALUES)))
        elif kind == "swap" and isinstance(old, dict):
            parent[key] = list(old.values())  # a list where a mapping belongs
        elif kind == "swap" and isinstance(old, list):
            parent[key] = {str(i): v for i, v in enumerate(old)}  # a mapping where a list belongs
        else:
            parent[key] = copy.deepcopy(draw(st.sampled_from(BAD_VALUES)))
        done.append(".".join(map(str, path)))
    return name, data, done


def _names_a_key(message: str, data: dict) -> bool:
    """The message names a dotted key: a section, or a dotted path below one."""
    sections = "|".join(["economy", "simulate", "train", "mesh", *map(re.escape, data)])
    return re.search(rf"(^|[\s'\"(])({sections})(\.[\w\[\]-]+)*\b", message) is not None


@settings(max_examples=int(os.environ.get("AGORA_FUZZ_EXAMPLES", 400)), deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow],
          database=None)
@given(case=mutations())
def test_mutated_presets_load_or_name_the_bad_key(case, tmp_path_factory):
    name, data, mutated = case
    try:
        cfg = run_config_from_dict(data)
    except ConfigError as e:
        msg = str(e)
        assert _names_a_key(msg, data), (name, mutated, msg)
        # The CLI: exit 2, the message on stderr, nothing written (not even the run directory).
        d = tmp_path_factory.mktemp("fuzz")
        path = d / "config.yaml"
        path.write_text(yaml.safe_dump(data, allow_unicode=True))
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            rc = cli.main(["train", str(path), "--run-dir", str(d / "run"), "--no-progress"])
        assert rc == 2, (name, mutated, err.getvalue())
        assert "Traceback" not in err.getvalue() and err.getvalue().strip(), (name, mutated, err.getvalue())
        assert not (d / "run").exists()
        return
    # A config that loads is usable: its economy builds (the shapes a run would compile).
    env = Economy(cfg.economy)
    for field, x in vars(env.params).items():
        assert np.isfinite(np.asarray(x, np.float64)).all(), (name, mutated, field)


STUDIES = sorted((CONFIGS / "studies").rglob("*.yaml"))


@st.composite
def study_mutations(draw):
    path = draw(st.sampled_from(STUDIES))
    data = load_yaml(path)
    data["config"] = str((path.parent / data["config"]).resolve())  # the mutated copy lives elsewhere
    done = []
    for _ in range(draw(st.integers(1, 3))):
        p, parent = _draw_place(draw, data)
        if p is None:
            break
        if draw(st.booleans()):
            del parent[p[-1]]
        else:
            parent[p[-1]] = copy.deepcopy(draw(st.sampled_from(BAD_VALUES)))
        done.append(".".join(map(str, p)))
    return path.name, data, done


@settings(max_examples=int(os.environ.get("AGORA_FUZZ_EXAMPLES", 400)) // 4, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow], database=None)
@given(case=study_mutations())
def test_mutated_study_files_load_or_name_the_problem(case, tmp_path_factory):
    """The same for study files (``agora study``): loaded, or exit 2 with a message naming
    the file and key, having written nothing."""
    from selfplay.study import load_study

    name, data, mutated = case
    d = tmp_path_factory.mktemp("study_fuzz")
    path = d / name
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    try:
        load_study(path, d / "study")
    except ConfigError as e:
        assert str(path) in str(e) or _names_a_key(str(e), data), (name, mutated, str(e))
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            rc = cli.main(["study", str(path), "--study-dir", str(d / "study"), "--no-progress"])
        assert rc == 2 and "Traceback" not in err.getvalue(), (name, mutated, err.getvalue())
        assert not (d / "study").exists()
