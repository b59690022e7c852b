"""Command-line behaviour, flag by flag (stdout and stderr checked apart)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

import cell2net_attr
from cell2net_attr.cli import app

from .conftest import COVARIATES, assert_ig_close


@pytest.fixture()
def gene0(upstream):
    return [str(upstream / "models" / "GENE0.pt"), str(upstream / "full.h5mu"), "--covariates", COVARIATES]


def invoke(args, **kw):
    return CliRunner().invoke(app, args, **kw)


def test_version():
    r = invoke(["--version"])
    assert r.exit_code == 0 and r.stdout.strip() == f"cell2net-attr {cell2net_attr.__version__}"


def test_python_m_and_console_script(upstream, tmp_path):
    r = subprocess.run([sys.executable, "-m", "cell2net_attr", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and cell2net_attr.__version__ in r.stdout
    exe = os.path.join(os.path.dirname(sys.executable), "cell2net-attr")
    r = subprocess.run([exe, "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "run" in r.stdout and "inspect" in r.stdout


def test_default_output_name_in_working_directory(gene0, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = invoke(["run", *gene0, "--idx", "0:3"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "GENE0.tf_attr.h5").is_file()
    assert r.stdout == ""
    assert "GENE0: 3 cells x 7 TFs" in r.stderr  # the one-line summary
    assert "3/3 cells" in r.stderr  # plain progress line (stderr is not a terminal here)
    assert not list(tmp_path.glob(".*partial"))


def test_gene_flag_names_output(gene0, upstream, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = invoke(["run", *gene0, "--gene", "TF0", "--idx", "0"])
    assert r.exit_code == 2 and "peaks" in r.stderr  # TF0 has 6 peaks, the GENE0 checkpoint 4
    assert not (tmp_path / "TF0.tf_attr.h5").exists()


def test_quiet_prints_nothing(gene0, tmp_path):
    r = invoke(["run", *gene0, "--idx", "0", "-o", str(tmp_path / "a.npy"), "--quiet"])
    assert r.exit_code == 0 and r.stdout == "" and r.stderr == ""


def test_overwrite(gene0, tmp_path):
    out = tmp_path / "a.npy"
    out.write_bytes(b"precious")
    r = invoke(["run", *gene0, "--idx", "0", "-o", str(out), "-q"])
    assert r.exit_code == 2 and "--overwrite" in r.stderr and out.read_bytes() == b"precious"
    r = invoke(["run", *gene0, "--idx", "0", "-o", str(out), "-q", "--overwrite"])
    assert r.exit_code == 0 and np.load(out).shape == (1, 7)


@pytest.mark.parametrize("method", ["gausslegendre", "riemann_left", "riemann_right", "riemann_middle",
                                    "riemann_trapezoid", "exact"])
def test_methods_agree_with_captum_engine(gene0, tmp_path, method):
    """Each quadrature equals captum's with the same nodes; the closed form (exact, fast engine only) is the
    limit captum's trapezoid rule converges to (1,000 steps: within 0.5% of the largest attribution)."""
    def run(engine: str, how: str, steps: int, cells: str = "0:6"):
        out = tmp_path / f"{engine}-{how}.npy"
        r = invoke(["run", *gene0, "--idx", cells, "--method", how, "--n-steps", str(steps), "--engine", engine,
                    "-o", str(out), "-q"])
        assert r.exit_code == 0, r.output
        return np.load(out)

    if method == "exact":
        r = invoke(["run", *gene0, "--idx", "0:2", "--method", method, "--engine", "captum",
                    "-o", str(tmp_path / "x.npy"), "-q"])
        assert r.exit_code == 2 and "--method" in r.stderr
        fast, ref = run("fast", "exact", 1, "0:2"), run("captum", "riemann_trapezoid", 1000, "0:2")
        assert np.abs(fast - ref).max() <= 5e-3 * np.abs(ref).max()
    else:
        assert_ig_close(run("fast", method, 16), run("captum", method, 16), method, 16)


def test_unknown_method_engine_mode(gene0, tmp_path):
    for flag, value in (("--method", "simpson"), ("--engine", "turbo"), ("--module-mode", "test")):
        r = invoke(["run", *gene0, flag, value, "-o", str(tmp_path / "a.npy")])
        assert r.exit_code == 2 and flag in r.stderr and "Traceback" not in r.output


def test_train_mode_is_seeded_and_leaves_weights_alone(gene0, tmp_path):
    import torch

    from cell2net_attr.model.checkpoint import load_checkpoint

    r = invoke(["run", *gene0, "--idx", "0:3", "--module-mode", "train", "-o", str(tmp_path / "x.npy")])
    assert r.exit_code == 2 and "--engine captum" in r.stderr
    outs = []
    for i in range(2):
        out = tmp_path / f"t{i}.npy"
        r = invoke(["run", *gene0, "--idx", "0:3", "--module-mode", "train", "--engine", "captum", "--seed", "7",
                    "--n-steps", "8", "-o", str(out)])
        assert r.exit_code == 0, r.output
        assert "stochastic" in r.stderr
        outs.append(np.load(out))
    assert np.array_equal(outs[0], outs[1])
    eval_out = tmp_path / "e.npy"
    invoke(["run", *gene0, "--idx", "0:3", "--n-steps", "8", "-o", str(eval_out), "-q"])
    assert not np.allclose(outs[0], np.load(eval_out))  # dropout/batch statistics did change the result

    from cell2net_attr import load_model, tf_attr

    model = load_model(gene0[0], gene0[1], covariates=COVARIATES, device="cpu")
    before = {k: v.clone() for k, v in model.module.state_dict().items()}
    tf_attr(model, idx=[0, 1, 2], n_steps=8, engine="captum", module_mode="train", seed=1)
    after = model.module.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not model.module.training
    ck = load_checkpoint(gene0[0])
    assert all(torch.equal(ck.state_dict[k], before[k]) for k in before)


@pytest.mark.parametrize("workers,batch", [(0, 1), (2, 5), (1, 1000)])
def test_batching_and_workers_do_not_change_results(gene0, tmp_path, workers, batch, upstream):
    out = tmp_path / "a.npy"
    r = invoke(["run", *gene0, "--num-workers", str(workers), "--batch-size", str(batch), "-o", str(out), "-q"])
    assert r.exit_code == 0, r.output
    ref = np.load(upstream / "ref" / "GENE0.all.s100.mbi.npy")
    assert np.abs(np.load(out) - ref).max() <= 1e-5 * np.abs(ref).max()


def test_device_flags(gene0, tmp_path):
    r = invoke(["run", *gene0, "--idx", "0", "--device", "cpu", "-o", str(tmp_path / "a.h5"), "-q"])
    assert r.exit_code == 0
    with h5py.File(tmp_path / "a.h5") as f:
        assert f.attrs["device"] == "cpu"
    import torch

    if not torch.cuda.is_available():
        r = invoke(["run", *gene0, "--device", "cuda", "-o", str(tmp_path / "b.h5")])
        assert r.exit_code == 2 and "--device" in r.stderr and "no CUDA" in r.stderr
    r = invoke(["run", *gene0, "--device", "tpu", "-o", str(tmp_path / "b.h5")])
    assert r.exit_code == 2 and "unknown device" in r.stderr
    assert not (tmp_path / "b.h5").exists()


def test_modality_flags(gene0, tmp_path):
    r = invoke(["run", *gene0, "--rna-mod", "gex", "-o", str(tmp_path / "a.npy")])
    assert r.exit_code == 2 and "'gex'" in r.stderr


def test_covariates_required_and_listed(upstream, tmp_path):
    r = invoke(["run", str(upstream / "models" / "GENE0.pt"), str(upstream / "full.h5mu"), "-o", str(tmp_path / "a.npy")])
    assert r.exit_code == 2
    assert "cov0, cov1" in r.stderr and "celltype" not in r.stderr  # numeric candidates only, never a guess
    r = invoke(["run", str(upstream / "models" / "GENE0.pt"), str(upstream / "full.h5mu"), "--covariates", "cov0",
                "-o", str(tmp_path / "a.npy")])
    assert r.exit_code == 2 and "expects 2" in r.stderr
    r = invoke(["run", str(upstream / "models" / "GENE0.pt"), str(upstream / "full.h5mu"),
                "--covariates", "cov0,celltype", "-o", str(tmp_path / "a.npy")])
    assert r.exit_code == 2 and "not numeric" in r.stderr


def test_delta_needs_hdf5(gene0, tmp_path):
    r = invoke(["run", *gene0, "--delta", "-o", str(tmp_path / "a.npy")])
    assert r.exit_code == 2 and "HDF5" in r.stderr


def test_idx_from_stdin(gene0, tmp_path, upstream):
    out = tmp_path / "a.npy"
    r = invoke(["run", *gene0, "--idx", "@-", "-o", str(out), "-q"], input="cell_00009_C\ncell_00002_G\ncell_00030_G\n")
    assert r.exit_code == 0, r.output
    ref = np.load(upstream / "ref" / "GENE0.names.s100.mbi.npy")
    assert np.abs(np.load(out) - ref).max() <= 1e-5 * np.abs(ref).max()


def test_inspect(upstream):
    ck = str(upstream / "models" / "TF0.pt")
    r = invoke(["inspect", ck])
    assert r.exit_code == 0 and "kernel_size: 5" in r.stdout and "n_peaks: 6" in r.stdout
    r = invoke(["inspect", ck, str(upstream / "full.h5mu"), "--covariates", COVARIATES, "--json"])
    report = json.loads(r.stdout)
    assert r.exit_code == 0 and report["match"] is True and report["cells"] == 64
    assert report["tfs"] == ["TF0", "TF1", "TF5", "TF6", "TF9"] and report["covariate_candidates"] == ["cov0", "cov1"]
    r = invoke(["inspect", ck, str(upstream / "models" / "GENE0.h5mu"), "--covariates", COVARIATES, "--json"])
    report = json.loads(r.stdout)
    assert r.exit_code == 2 and report["match"] is False and "TF0" in report["problem"]


def test_threads_flag_and_slurm_default(gene0, tmp_path, monkeypatch):
    import torch

    before = torch.get_num_threads()
    try:
        r = invoke(["run", *gene0, "--idx", "0", "--threads", "1", "-o", str(tmp_path / "a.npy"), "-q"])
        assert r.exit_code == 0 and torch.get_num_threads() == 1
        monkeypatch.setenv("SLURM_CPUS_PER_TASK", "2")
        r = invoke(["run", *gene0, "--idx", "0", "-o", str(tmp_path / "b.npy"), "-q"])
        assert r.exit_code == 0 and torch.get_num_threads() == 2
        r = invoke(["run", *gene0, "--threads", "0", "-o", str(tmp_path / "c.npy")])
        assert r.exit_code == 2 and "--threads" in r.stderr
    finally:
        torch.set_num_threads(before)


def test_internal_error_exit_1_and_debug_traceback(gene0, tmp_path, monkeypatch):
    import cell2net_attr.pipeline.run as runner

    def boom(*a, **k):
        raise ZeroDivisionError("synthetic failure")

    monkeypatch.setattr(runner, "compute", boom)
    r = invoke(["run", *gene0, "--idx", "0", "-o", str(tmp_path / "a.npy")])
    assert r.exit_code == 1 and "internal error" in r.stderr and "Traceback" not in r.stderr
    assert not list(tmp_path.iterdir())
    r = invoke(["--debug", "run", *gene0, "--idx", "0", "-o", str(tmp_path / "a.npy")])
    assert r.exit_code == 1 and isinstance(r.exception, ZeroDivisionError)

