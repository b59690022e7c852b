"""What a newcomer meets first: help as a user reads it, one-line usage errors, swapped arguments, --idx
positions vs names, run-many given one checkpoint twice, the report over reruns."""

from __future__ import annotations

import csv

import numpy as np
import pandas as pd
import pytest

from cell2net_attr.data.selection import resolve_tokens
from cell2net_attr.errors import UserError

from .conftest import COVARIATES, cli


@pytest.mark.parametrize("columns", [60, 200])
def test_run_help_shows_defaults_choices_and_envvars(columns):
    text = " ".join(cli("run", "--help", columns=columns).stdout.split())  # as read, whatever the wrapping
    for shown in ["[default: 100; x>=1]", "<fast|captum>", "<eval|train>", "<auto|position|name>",
                  "riemann_trapezoid|exact>", "[default: (256 fast, 4 captum); x>=1]", "env var: SLURM_CPUS_PER_TASK",
                  "[default: (<gene>.tf_attr.h5, or <gene>.peak_attr.h5 with --target peaks)]", ".h5ad", "from SLURM_ARRAY_TASK_* in a job array"]:
        assert shown in text, shown
    assert "<bool>" not in text and " ." not in text.replace(" .h5", "").replace(" .npy", "")


def test_usage_errors_are_one_line_exit_2():
    for args in (["run", "--bogus"], ["run", "only-one.pt"], ["run", "a.pt", "b.h5mu", "--engine", "nope"],
                 ["run", "a.pt", "b.h5mu", "--n-steps", "0"]):
        r = cli(*args)
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), (args, r.stderr)


def test_debug_keeps_exit_code_2(tmp_path):
    r = cli("--debug", "run", tmp_path / "nope.pt", tmp_path / "nope.h5mu")
    assert r.returncode == 2 and "Traceback" in r.stderr and r.stderr.strip().endswith("checkpoint file not found")


def test_swapped_arguments_say_which_is_which(upstream, tmp_path):
    ck, data = upstream / "models" / "GENE0.pt", upstream / "models" / "GENE0.h5mu"
    r = cli("run", data, ck, "--covariates", COVARIATES, "-o", tmp_path / "x.h5")
    assert r.returncode == 2 and "not a PyTorch checkpoint" in r.stderr and "first" in r.stderr
    assert str(data) in r.stderr and list(tmp_path.iterdir()) == []


def test_position_out_of_range_is_a_name_not_ambiguous():
    names = pd.Index([str(i) for i in range(50, 114)])  # 64 cells named 50..113
    assert resolve_tokens(["100"], names).tolist() == [50]  # no cell 100 by position: the name
    with pytest.raises(UserError, match="both positions and obs names"):
        resolve_tokens(["60"], names)  # position 60 and name "60"
    assert resolve_tokens(["60"], names, "name").tolist() == [10]


def test_run_many_takes_a_checkpoint_given_twice_once(demo_atlas, tmp_path):
    data, cks = demo_atlas
    r = cli("run-many", cks[0].parent, cks[0], data, "--out-dir", tmp_path, "--covariates", COVARIATES,
            "--idx", "0:4", "-q")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"{c.stem}.h5" for c in cks] + ["run-report.tsv"])


def test_report_keeps_earlier_rows_over_reruns(demo_atlas, tmp_path):
    data, cks = demo_atlas
    base = ["--out-dir", tmp_path, "--covariates", COVARIATES, "--idx", "0:4", "-q"]
    assert cli("run-many", cks[0], data, *base).returncode == 0
    assert cli("run-many", cks[1], data, *base).returncode == 0
    with open(tmp_path / "run-report.tsv") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    assert [(r["gene"], r["status"]) for r in rows] == [(cks[0].stem, "done"), (cks[1].stem, "done")]
    assert all(float(r["seconds"]) > 0 for r in rows)
    np.testing.assert_equal(len(rows), 2)
