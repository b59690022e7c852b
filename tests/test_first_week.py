"""What a user's first week found: gene-name lists, errors that blame the right thing, one rule for output folders."""

from __future__ import annotations

import csv
import os
import shutil

import h5py
import pytest

from .conftest import COVARIATES, invoke


def _report(out_dir):
    with open(out_dir / "run-report.tsv") as fh:
        return {row["gene"]: row for row in csv.DictReader(fh, delimiter="\t")}


@pytest.fixture()
def models(demo_atlas, tmp_path):
    """The demo checkpoints copied into a models/ directory of their own, and the data."""
    data, checkpoints = demo_atlas
    d = tmp_path / "models"
    d.mkdir()
    for ck in checkpoints:
        shutil.copy(ck, d / ck.name)
    return data, d


def test_a_list_of_gene_names_is_found_in_the_models_directory(models, tmp_path):
    data, d = models
    listing = tmp_path / "lists" / "genes.txt"
    listing.parent.mkdir()
    listing.write_text("GC\nGA\n")
    out = tmp_path / "out"
    r = invoke(["run-many", d, f"@{listing}", data, "--out-dir", out, "--covariates", COVARIATES, "--n-steps", "4",
                "-q"])
    assert r.exit_code == 0, r.output
    assert list(_report(out)) == ["GC", "GA"]  # only the listed genes: the directory says where they are
    r = invoke(["run-many", f"@{listing}", data, "--out-dir", out, "--covariates", COVARIATES])
    assert r.exit_code == 2 and "gene name" in r.stderr and "directory" in r.stderr
    listing.write_text("GC\nGX\n")
    r = invoke(["run-many", d, f"@{listing}", data, "--out-dir", out, "--covariates", COVARIATES])
    assert r.exit_code == 2 and "GX" in r.stderr and str(d) in r.stderr


def test_list_paths_are_relative_to_the_list(models, tmp_path, monkeypatch):
    data, d = models
    listing = d / "some.txt"
    listing.write_text("GB.pt\n")  # beside the list, not in the working directory
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    r = invoke(["run-many", f"@{listing}", data, "--out-dir", out, "--covariates", COVARIATES, "--n-steps", "4",
                "-q"])
    assert r.exit_code == 0, r.output
    assert list(_report(out)) == ["GB"]


def test_run_many_with_swapped_arguments_names_the_swap_and_makes_nothing(models, tmp_path):
    data, d = models
    out = tmp_path / "out"
    r = invoke(["run-many", data, d, "--out-dir", out])
    assert r.exit_code == 2 and "swapped" in r.stderr and "Traceback" not in r.output
    assert not out.exists()


def test_one_rule_for_output_folders(models, tmp_path):
    """The folder that holds an output must exist, for run and run-many alike; run-many makes --out-dir."""
    data, d = models
    r = invoke(["run", d / "GA.pt", data, "--covariates", COVARIATES, "-o", tmp_path / "nodir" / "x.h5"])
    assert r.exit_code == 2 and "output directory does not exist" in r.stderr
    r = invoke(["run-many", d, data, "--covariates", COVARIATES, "--out-dir", tmp_path / "nodir" / "sub"])
    assert r.exit_code == 2 and "output directory does not exist" in r.stderr
    assert not (tmp_path / "nodir").exists()
    r = invoke(["run-many", d, data, "--covariates", COVARIATES, "--out-dir", tmp_path / "made", "-q",
                "--n-steps", "2"])
    assert r.exit_code == 0 and (tmp_path / "made" / "GA.h5").is_file()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_run_many_into_a_read_only_directory_is_one_input_error(models, tmp_path):
    data, d = models
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o555)
    try:
        r = invoke(["run-many", d, data, "--out-dir", out, "--covariates", COVARIATES])
    finally:
        out.chmod(0o755)
    assert r.exit_code == 2 and "output directory is not writable" in r.stderr
    assert r.stderr.count("error:") == 1


def test_run_many_without_the_gpu_asked_for_fails_once(models, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is here")
    data, d = models
    out = tmp_path / "out"
    r = invoke(["run-many", d, data, "--out-dir", out, "--covariates", COVARIATES, "--device", "cuda"])
    assert r.exit_code == 2 and r.stderr.count("\n") == 1 and "--device" in r.stderr and "GPU" in r.stderr
    assert not out.exists()


def test_where_matching_nothing_lists_what_the_column_holds(demo_atlas, tmp_path):
    data, checkpoints = demo_atlas
    r = invoke(["run", checkpoints[0], data, "--covariates", COVARIATES, "-o", tmp_path / "x.h5",
                "--where", "celltype == 'mono'"])
    assert r.exit_code == 2
    assert "celltype holds" in r.stderr and "'Mono'" in r.stderr and "did you mean 'Mono'" in r.stderr
    r = invoke(["run", checkpoints[0], data, "--covariates", COVARIATES, "-o", tmp_path / "x.h5",
                "--where", "cov0 > 100"])
    assert r.exit_code == 2 and "cov0 ranges from" in r.stderr


def test_names_are_variable_length_utf8_strings(demo_atlas, tmp_path):
    """Cell and TF names are stored as variable-length UTF-8 strings (h5py hands them out as bytes unless read
    with .asstr(), as the README says)."""
    data, checkpoints = demo_atlas
    out = tmp_path / "x.h5"
    assert invoke(["run", checkpoints[0], data, "--covariates", COVARIATES, "-o", out, "--n-steps", "2",
                   "-q"]).exit_code == 0
    with h5py.File(out) as f:
        for name in ("obs_names", "tf_names"):
            info = h5py.check_string_dtype(f[name].dtype)
            assert info is not None and info.encoding == "utf-8" and info.length is None
            assert all(isinstance(v, str) for v in f[name].asstr()[:])
        assert isinstance(f.attrs["gene"], str)


def test_the_per_gene_mudata_view_is_built_quietly(demo_atlas):
    """``model.mdata`` (upstream's per-gene view) without mudata's notices about its future defaults, which
    would otherwise be printed once per gene: in a fresh process, as a notebook has it (mudata's options are
    process-wide, and the test data's writer sets them)."""
    import subprocess
    import sys

    data, checkpoints = demo_atlas
    code = ("import warnings, cell2net_attr\n"
            "warnings.simplefilter('always')\n"
            f"m = cell2net_attr.load_model({str(checkpoints[0])!r}, {str(data)!r}, covariates='cov0,cov1', "
            "device='cpu')\n"
            "v = m.mdata\n"
            "print(list(v.mod['rna'].var_names), v.n_obs)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "FutureWarning" not in proc.stderr, proc.stderr
    assert proc.stdout.split("]")[0] == "['GA'"


@pytest.fixture(scope="module")
def settled(tmp_path_factory):
    """A gene whose head statistics have settled on data like upstream's tutorials (log10 depths as
    covariates), written as a per-gene .h5mu, and a second file of other cells (0.5 log10 deeper)."""
    import numpy as np

    from cell2net_attr.synthetic import trained_gene, write_trained_gene

    trained = trained_gene(3, 2, covariate_weight=10.0)
    d = tmp_path_factory.mktemp("settled")
    data, ck = write_trained_gene(d / "own", trained, "GX")
    other = trained.source.cells(np.random.default_rng(9), 600, depth_shift=0.5)
    other_data, _ = write_trained_gene(d / "other", trained, "GX", cells=other)
    return ck, data, other_data


def test_a_swapped_covariate_order_is_warned_about(settled, tmp_path):
    ck, data, _ = settled
    ok = invoke(["run", ck, data, "--covariates", "cov0,cov1", "-o", tmp_path / "a.h5", "--n-steps", "4", "-q"])
    assert ok.exit_code == 0 and "warning" not in ok.stderr
    r = invoke(["run", ck, data, "--covariates", "cov1,cov0", "-o", tmp_path / "b.h5", "--n-steps", "4", "-q"])
    assert r.exit_code == 0 and "warning: GX: covariates look swapped" in r.stderr
    assert "trained with the order cov0,cov1" in r.stderr and "evidence:" in r.stderr


def test_another_data_file_is_warned_about_whatever_cells_are_chosen(settled, tmp_path):
    """The sample is spread over the whole file: the file is judged, not the cells chosen from it."""
    ck, own, other = settled
    for idx in ([], ["--idx", "0:300"]):
        r = invoke(["run", ck, other, "--covariates", "cov0,cov1", "-o", tmp_path / f"a{len(idx)}.h5", "--n-steps",
                    "4", "-q", *idx])
        assert r.exit_code == 0 and "warning: GX: the data looks unlike" in r.stderr
    r = invoke(["run", ck, own, "--covariates", "cov0,cov1", "-o", tmp_path / "b.h5", "--n-steps", "4", "-q",
                "--idx", "0:40"])  # the first cells of the file are one cell type: not what is judged
    assert r.exit_code == 0 and "warning" not in r.stderr


def test_the_notebook_api_warns_too(settled):
    import cell2net_attr
    from cell2net_attr.errors import DataMismatchWarning

    ck, data, _ = settled
    model = cell2net_attr.load_model(ck, data, covariates=["cov1", "cov0"], device="cpu")
    try:
        with pytest.warns(DataMismatchWarning, match="swapped"):
            cell2net_attr.tf_attr(model, idx="0:8", n_steps=4)
    finally:
        model.close()


@pytest.mark.parametrize("gene", ["GENE0", "TF0"])
@pytest.mark.parametrize("layout", ["per-gene", "full"])
def test_the_fixtures_correct_order_is_never_warned_about(upstream, tmp_path, gene, layout):
    data = upstream / "models" / f"{gene}.h5mu" if layout == "per-gene" else upstream / "full.h5mu"
    r = invoke(["run", upstream / "models" / f"{gene}.pt", data, "--covariates", COVARIATES, "-o",
                tmp_path / "a.h5", "--n-steps", "4", "-q"])
    assert r.exit_code == 0 and r.stderr == ""
