"""``--shard K/N``, SLURM array variables, and ``merge``: shards + merge equal a single run."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from cell2net_attr.cli import app
from cell2net_attr.errors import UserError
from cell2net_attr.pipeline.shards import (
    Shard,
    parse_shard,
    resolve_shard,
    shard_from_slurm,
)

from .conftest import COVARIATES


def invoke(args, env=None):
    return CliRunner().invoke(app, args, env=env)


@pytest.mark.parametrize("n", [0, 1, 2, 7, 64, 1000])
@pytest.mark.parametrize("count", [1, 2, 3, 7])
def test_shards_partition_contiguously(n, count):
    parts = [Shard(k, count).bounds(n) for k in range(count)]
    assert parts[0][0] == 0 and parts[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
    sizes = [b - a for a, b in parts]
    assert max(sizes) - min(sizes) <= 1


SLURM = [
    ({"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_MAX": "2",
      "SLURM_ARRAY_TASK_COUNT": "3"}, Shard(0, 3)),
    ({"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_MAX": "3",
      "SLURM_ARRAY_TASK_COUNT": "3"}, Shard(2, 3)),  # --array=1-3
    ({"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_MAX": "9",
      "SLURM_ARRAY_TASK_STEP": "2", "SLURM_ARRAY_TASK_COUNT": "5"}, Shard(2, 5)),  # --array=1-9:2
    ({"SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_MIN": "4", "SLURM_ARRAY_TASK_MAX": "4"}, Shard(0, 1)),
    ({}, None),
]


@pytest.mark.parametrize("env,shard", SLURM)
def test_shard_from_slurm(env, shard):
    assert shard_from_slurm(env) == shard
    assert resolve_shard(None, env) == shard
    assert resolve_shard("1/4", env) == Shard(1, 4)  # the flag wins


@pytest.mark.parametrize("text", ["3", "4/4", "-1/2", "a/b", "1/0"])
def test_bad_shard_flag(text):
    with pytest.raises(UserError, match="shard"):
        parse_shard(text)


def _run_shards(upstream, tmp_path, count, extra=()):
    base = ["run", str(upstream / "models" / "GENE0.pt"), str(upstream / "full.h5mu"), "--covariates", COVARIATES,
            "--out", str(tmp_path / "g.h5"), "-q", *extra]
    for k in range(count):
        r = invoke(base + ["--shard", f"{k}/{count}"])
        assert r.exit_code == 0, r.output
    return [tmp_path / f"g-{k:05d}-of-{count:05d}.h5" for k in range(count)]


def test_shards_plus_merge_equal_a_single_run(upstream, tmp_path):
    shards = _run_shards(upstream, tmp_path, 3, ["--delta"])
    assert all(p.is_file() for p in shards)
    merged = tmp_path / "merged.h5"
    r = invoke(["merge", *map(str, reversed(shards)), "--out", str(merged)])
    assert r.exit_code == 0, r.output
    single = tmp_path / "single.h5"
    assert invoke(["run", str(upstream / "models" / "GENE0.pt"), str(upstream / "full.h5mu"), "--covariates",
                   COVARIATES, "--out", str(single), "-q", "--delta"]).exit_code == 0
    with h5py.File(merged) as m, h5py.File(single) as s:
        # equal up to float rounding: other batch compositions change BLAS summation order
        a, b = m["attributions"][:], s["attributions"][:]
        assert np.abs(a - b).max() <= 1e-6 * np.abs(b).max()
        assert np.abs(m["convergence_delta"][:] - s["convergence_delta"][:]).max() <= 1e-6
        assert list(m["obs_names"][:]) == list(s["obs_names"][:])
        assert m.attrs["selection_sha256"] == s.attrs["selection_sha256"]
    ref = np.load(upstream / "ref" / "GENE0.all.s100.mbi.npy")
    with h5py.File(merged) as m:
        assert np.abs(m["attributions"][:] - ref).max() <= 1e-5 * np.abs(ref).max()


def test_slurm_array_environment_names_the_shard(upstream, tmp_path):
    env = {"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_MAX": "3",
           "SLURM_ARRAY_TASK_COUNT": "3"}
    r = invoke(["run", str(upstream / "models" / "GENE0.pt"), str(upstream / "full.h5mu"), "--covariates",
                COVARIATES, "--out", str(tmp_path / "g.h5"), "-q"], env=env)
    assert r.exit_code == 0, r.output
    with h5py.File(tmp_path / "g-00001-of-00003.h5") as f:
        assert f["attributions"].shape == (21, 7) and f.attrs["row_start"] == 21


def test_merge_refuses_missing_duplicate_and_foreign_shards(upstream, tmp_path):
    shards = _run_shards(upstream, tmp_path, 3)
    out = tmp_path / "m.h5"
    r = invoke(["merge", str(shards[0]), str(shards[2]), "--out", str(out)])
    assert r.exit_code == 2 and "missing shard(s) 1/3" in r.stderr
    r = invoke(["merge", str(shards[0]), str(shards[0]), str(shards[1]), str(shards[2]), "--out", str(out)])
    assert r.exit_code == 2 and "given twice" in r.stderr
    other = tmp_path / "other"
    other.mkdir()
    foreign = _run_shards(upstream, other, 3, ["--n-steps", "20"])
    r = invoke(["merge", str(shards[0]), str(foreign[1]), str(shards[2]), "--out", str(out)])
    assert r.exit_code == 2 and "foreign shard" in r.stderr and "n_steps" in r.stderr and str(foreign[1]) in r.stderr
    r = invoke(["merge", str(shards[0]), str(tmp_path / "absent.h5"), "--out", str(out)])
    assert r.exit_code == 2 and "absent.h5" in r.stderr
    assert not out.exists()
    r = invoke(["merge", *map(str, shards), "--out", str(shards[0])])
    assert r.exit_code == 2 and "input" in r.stderr


def test_run_many_shards_genes(demo_atlas, tmp_path):
    data, checkpoints = demo_atlas
    out = tmp_path / "out"
    for k in range(2):
        r = invoke(["run-many", *map(str, checkpoints), str(data), "--out-dir", str(out), "--covariates", COVARIATES,
                    "--shard", f"{k}/2", "--idx", "0:4", "-q"])
        assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.iterdir()) == [
        "GA.h5", "GB.h5", "GC.h5", "run-report-00000-of-00002.tsv", "run-report-00001-of-00002.tsv"]


def test_slurm_array_example_script(upstream, tmp_path):
    """examples/slurm_array.sh as three array tasks (1-based) and its merge step, without a scheduler."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "examples" / "slurm_array.sh"
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               SLURM_ARRAY_TASK_MIN="1", SLURM_ARRAY_TASK_MAX="3", SLURM_ARRAY_TASK_COUNT="3")
    out = tmp_path / "GENE0.h5"
    for task in ("1", "2", "3"):
        subprocess.run(["bash", str(script), "run", str(upstream / "models" / "GENE0.pt"), str(upstream / "full.h5mu"),
                        str(out), "--covariates", COVARIATES, "-q"], env=dict(env, SLURM_ARRAY_TASK_ID=task),
                       check=True)
    merge_env = {k: v for k, v in env.items() if not k.startswith("SLURM_")}
    subprocess.run(["bash", str(script), "merge", str(out)], env=merge_env, check=True, capture_output=True)
    ref = np.load(upstream / "ref" / "GENE0.all.s100.mbi.npy")
    with h5py.File(out) as f:
        assert np.abs(f["attributions"][:] - ref).max() <= 1e-5 * np.abs(ref).max()


def test_sharded_h5ad_merged_equals_unsharded(upstream, tmp_path):
    """Every format `run` shards into, `merge` joins: .h5ad shards, merged to .h5ad and to .h5."""
    import anndata as ad

    base = ["run", str(upstream / "models" / "GENE0.pt"), str(upstream / "full.h5mu"), "--covariates", COVARIATES,
            "-q", "--delta"]
    for k in range(3):
        r = invoke(base + ["--out", str(tmp_path / "g.h5ad"), "--shard", f"{k}/3"])
        assert r.exit_code == 0, r.output
    shards = [tmp_path / f"g-{k:05d}-of-00003.h5ad" for k in range(3)]
    assert invoke(base + ["--out", str(tmp_path / "single.h5ad")]).exit_code == 0
    r = invoke(["merge", *map(str, shards), "--out", str(tmp_path / "m.h5ad")])
    assert r.exit_code == 0, r.output
    merged, single = ad.read_h5ad(tmp_path / "m.h5ad"), ad.read_h5ad(tmp_path / "single.h5ad")
    assert list(merged.obs_names) == list(single.obs_names) and list(merged.var_names) == list(single.var_names)
    assert np.abs(merged.X - single.X).max() <= 1e-6 * np.abs(single.X).max()
    assert list(merged.obs.columns) == list(single.obs.columns)  # the cells' obs came along, deltas included
    assert np.abs(merged.obs["convergence_delta"] - single.obs["convergence_delta"]).max() <= 1e-6
    assert merged.uns["cell2net_attr"]["format"] == "h5ad" and merged.uns["cell2net_attr"]["shard_count"] == 3
    r = invoke(["merge", *map(str, shards), "--out", str(tmp_path / "m.h5")])
    assert r.exit_code == 0, r.output
    with h5py.File(tmp_path / "m.h5") as f:
        assert np.abs(f["attributions"][:] - single.X).max() <= 1e-6 * np.abs(single.X).max()
        assert f.attrs["encoding-version"] == "1.0.0"


def test_npy_shards_are_refused_before_any_work(upstream, tmp_path):
    r = invoke(["run", str(upstream / "models" / "GENE0.pt"), str(upstream / "full.h5mu"), "--covariates",
                COVARIATES, "--out", str(tmp_path / "g.npy"), "--shard", "0/2"])
    assert r.exit_code == 2 and "cannot be merged" in r.stderr
    assert list(tmp_path.iterdir()) == []


def test_merge_refuses_shards_that_store_different_things(upstream, tmp_path):
    """Shards with and without deltas are refused (their deltas would be dropped or made up)."""
    with_delta = _run_shards(upstream, tmp_path / "a", 2, ["--delta"]) if (tmp_path / "a").mkdir() is None else []
    without = _run_shards(upstream, tmp_path / "b", 2) if (tmp_path / "b").mkdir() is None else []
    r = invoke(["merge", str(with_delta[0]), str(without[1]), "--out", str(tmp_path / "m.h5")])
    assert r.exit_code == 2 and "foreign shard" in r.stderr and "delta" in r.stderr
    assert not (tmp_path / "m.h5").exists()


def test_run_many_writes_h5ad(demo_atlas, tmp_path):
    import anndata as ad

    data, checkpoints = demo_atlas
    r = invoke(["run-many", str(checkpoints[1]), str(data), "--out-dir", str(tmp_path), "--format", "h5ad",
                "--covariates", COVARIATES, "-q"])
    assert r.exit_code == 0, r.output
    adata = ad.read_h5ad(tmp_path / f"{checkpoints[1].stem}.h5ad")
    assert adata.n_obs == 60 and adata.uns["cell2net_attr"]["gene"] == checkpoints[1].stem
    assert "celltype" in adata.obs.columns
