"""The base helpers every stage uses: atomic writes (galnet.io) and the config loader (galnet.config_io)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from galnet.config_io import build_config, load_config, merge_overrides, read_config
from galnet.errors import ConfigError
from galnet.fit import FitOptions
from galnet.io import atomic_savez, atomic_write, atomic_write_bytes, atomic_write_text, temporary_path
from galnet.simulate import SimulationConfig
from galnet.train import TrainConfig


# ============================================================================ atomic writes
def test_atomic_writes_leave_the_file_whole(tmp_path):
    p = tmp_path / "a.txt"
    atomic_write_text(p, "one\n")
    assert p.read_text() == "one\n"
    assert temporary_path(p).parent == tmp_path and temporary_path(p).name.endswith(".tmp")

    def fail(tmp):
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(p, fail)
    assert p.read_text() == "one\n" and sorted(x.name for x in tmp_path.iterdir()) == ["a.txt"]
    atomic_write_bytes(tmp_path / "b.bin", b"\x00\x01")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    atomic_write_text(tmp_path / "c.csv", "a,b\r\n", newline="")
    assert (tmp_path / "c.csv").read_bytes() == b"a,b\r\n"
    atomic_savez(tmp_path / "d.npz", {"x": np.arange(3)})
    with np.load(tmp_path / "d.npz") as z:
        assert z["x"].tolist() == [0, 1, 2]
    assert not list(tmp_path.glob("*.tmp"))


# ============================================================================ config loader
def test_config_loader_reads_toml_and_json_with_overrides(tmp_path):
    (tmp_path / "fit.toml").write_text('[fit]\nstart = "moments"\nmax_iter = 30\nn_grid = [1.0, 4.0]\n')
    opts = load_config(tmp_path / "fit.toml", FitOptions, section="fit", overrides={"fit_sky": True})
    assert (opts.start, opts.max_iter, list(opts.n_grid), opts.fit_sky) == ("moments", 30, [1.0, 4.0], True)
    (tmp_path / "train.json").write_text(json.dumps({"data": "d", "model_config": {"hidden": 64}}))
    cfg = TrainConfig.from_file(tmp_path / "train.json", {"model_config": {"dropout": 0.1}, "epochs": 2})
    assert cfg.model_config == {"hidden": 64, "dropout": 0.1} and cfg.epochs == 2
    fixed = {"kind": "fixed", "value": 22.0}
    sim = build_config(SimulationConfig, {"noise": {"enabled": False}, "priors": {"mag": fixed}})
    assert not sim.noise.enabled and sim.priors.mag.value == 22.0 and sim.priors.n.kind == "loguniform"
    merged = merge_overrides({"a": {"b": 1, "c": 2}, "d": 3}, {"a": {"b": 5}, "d": [1]})
    assert merged == {"a": {"b": 5, "c": 2}, "d": [1]}


@pytest.mark.parametrize("name,text,match", [
    ("unknown.toml", "max_iter = 3\nmaxiter = 4\n", "unknown.toml: unknown key(s) maxiter"),
    ("type.json", '{"max_iter": "ten"}', "type.json: max_iter: expected int"),
    ("syntax.toml", "max_iter = = 3\n", "syntax.toml: cannot parse the fit options"),
    ("empty.json", "{}", "empty.json: the fit options is empty"),
    ("list.json", "[1, 2]", "list.json: the fit options is empty (or not a table of keys)"),
])
def test_config_loader_refuses_bad_files_in_one_line(tmp_path, name, text, match):
    (tmp_path / name).write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / name, FitOptions, what="fit options")
    assert match in str(err.value) and "\n" not in str(err.value)


def test_config_loader_names_missing_files_and_nested_keys(tmp_path):
    with pytest.raises(ConfigError, match="nope.toml: preset file not found"):
        read_config(tmp_path / "nope.toml", what="preset")
    with pytest.raises(ConfigError, match="is not a file"):
        read_config(tmp_path)
    with pytest.raises(ConfigError, match=r"^noise: unknown key\(s\) sky_sigmaa; known: enabled"):
        build_config(SimulationConfig, {"noise": {"sky_sigmaa": 1.0}})
    with pytest.raises(ConfigError, match="priors.mag: expected a table, got float"):
        build_config(SimulationConfig, {"priors": {"mag": 22.0}})
