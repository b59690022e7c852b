"""Bad input, case by case: every user-side failure is one short message naming the file or flag,
exit code 2, no traceback (unless --debug), no output file left behind, and inputs never change."""

from __future__ import annotations

import errno
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cell2net_attr.cli import app

from .conftest import COVARIATES, default_sigint, sha256_tree

MAX_LINES = 3  # "a few lines at most", a final progress line included
MAX_CHARS = 600


@pytest.fixture(autouse=True, scope="module")
def _upstream_fixtures_never_change(upstream):
    before = sha256_tree(upstream)
    yield
    assert sha256_tree(upstream) == before, "a shared fixture file changed"


# --------------------------------------------------------------------------------------------- helpers


def invoke(args, **kw):
    return CliRunner().invoke(app, [str(a) for a in args], **kw)


def leftovers(directory: Path) -> list[str]:
    """Every file under ``directory`` (hidden temporaries included)."""
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


def assert_clean_user_error(result, mention: str | list[str], out_dir: Path | None = None) -> str:
    """Exit 2, one short ``error:`` line naming the file/flag, no traceback, nothing written."""
    err = result.stderr
    assert result.exit_code == 2, f"exit {result.exit_code}, stderr:\n{err}\nexception: {result.exception!r}"
    assert "Traceback" not in err and "Traceback" not in result.stdout, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert 1 <= len(lines) <= MAX_LINES, err
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    assert len(errors[0]) <= MAX_CHARS, errors[0]
    for m in [mention] if isinstance(mention, str) else mention:
        assert m in errors[0], f"{m!r} not named in: {errors[0]}"
    if out_dir is not None:
        assert leftovers(out_dir) == [], f"left behind: {leftovers(out_dir)}"
    return errors[0]


@pytest.fixture()
def case(tmp_path, upstream, monkeypatch):
    """Private copies of the fixture inputs, an empty output directory, and a scratch cwd."""
    inp = tmp_path / "in"
    inp.mkdir()
    for src in ("models/GENE0.pt", "models/GENE0.h5mu", "full.h5mu", "models/TF0.pt"):
        shutil.copyfile(upstream / src, inp / Path(src).name)
        os.chmod(inp / Path(src).name, 0o644)
    out = tmp_path / "out"
    out.mkdir()
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    ns = SimpleNamespace(
        inp=inp, out=out, cwd=cwd, ck=inp / "GENE0.pt", data=inp / "GENE0.h5mu", full=inp / "full.h5mu",
        tf0=inp / "TF0.pt", target=out / "GENE0.h5",
    )
    yield ns
    # nothing is ever written beside the inputs or into the working directory
    assert sorted(p.name for p in inp.iterdir()) == sorted(p.name for p in inp.iterdir() if not p.name.startswith("."))
    assert leftovers(cwd) == []


def run_case(case, *args, ck=None, data=None, out=None, cov=True, mention=None, **kw) -> str:
    """Run ``run CK DATA ... -o OUT`` on the case's inputs and check the whole failure contract."""
    before = sha256_tree(case.inp)
    argv = ["run", ck or case.ck, data or case.data, "-o", out or case.target, *args]
    if cov:
        argv += ["--covariates", COVARIATES]
    result = invoke(argv, **kw)
    assert sha256_tree(case.inp) == before, "an input changed"
    return assert_clean_user_error(result, mention, case.out)


def checkpoint_dict(upstream: Path) -> dict:
    return torch.load(upstream / "models" / "GENE0.pt", map_location="cpu", weights_only=True)


def h5_edit(path: Path, fn) -> Path:
    with h5py.File(path, "r+") as f:
        fn(f)
    return path


def replace_strings(f: h5py.File, key: str, values) -> None:
    attrs = dict(f[key].attrs)
    del f[key]
    f.create_dataset(key, data=np.asarray(values, dtype=object), dtype=h5py.string_dtype())
    f[key].attrs.update(attrs)


def strings(f: h5py.File, key: str) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in f[key][:]]


def drop_column(f: h5py.File, frame: str, column: str) -> None:
    del f[f"{frame}/{column}"]
    order = [c for c in strings_attr(f[frame].attrs["column-order"]) if c != column]
    f[frame].attrs["column-order"] = np.asarray(order, dtype=object) if order else np.empty(0, dtype=float)


def strings_attr(values) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in np.atleast_1d(values)]


# ------------------------------------------------------------------------------------------- checkpoint


def test_checkpoint_missing(case):
    run_case(case, ck=case.inp / "nope.pt", mention=[str(case.inp / "nope.pt"), "not found"])


def test_checkpoint_is_a_directory(case):
    d = case.inp / "dir.pt"
    d.mkdir()
    try:
        run_case(case, ck=d, mention=[str(d), "directory"])
    finally:
        d.rmdir()


@pytest.mark.parametrize("content", [b"", b"hello, I am not a checkpoint\n", b"PK\x03\x04garbage" * 10,
                                     bytes(range(256)) * 8], ids=["empty", "text", "fake-zip", "binary"])
def test_checkpoint_not_torch(case, content):
    bad = case.inp / "bad.pt"
    bad.write_bytes(content)
    run_case(case, "--gene", "GENE0", ck=bad, mention=[str(bad), "checkpoint"])


@pytest.mark.parametrize("fraction", [0.01, 0.5, 0.99])
def test_checkpoint_truncated(case, fraction):
    raw = case.ck.read_bytes()
    bad = case.inp / "cut.pt"
    bad.write_bytes(raw[: int(len(raw) * fraction)])
    run_case(case, "--gene", "GENE0", ck=bad, mention=[str(bad), "checkpoint"])


class _Payload:
    """Unpickling this calls ``func(*args)``: code execution hidden in a checkpoint."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _evil_variants(upstream: Path, marker: Path):
    ck = checkpoint_dict(upstream)
    good = {**ck, "history": _Payload(open, str(marker), "w")}
    shell = {**ck, "results": _Payload(os.system, f"touch {marker}")}
    return {
        "zip-open": lambda p: torch.save(good, p),
        "zip-os-system": lambda p: torch.save(shell, p),
        "legacy-format": lambda p: torch.save(good, p, _use_new_zipfile_serialization=False),
        "raw-pickle": lambda p: p.write_bytes(pickle.dumps(good)),
        "top-level": lambda p: torch.save(_Payload(open, str(marker), "w"), p),
    }


@pytest.mark.parametrize("variant", ["zip-open", "zip-os-system", "legacy-format", "raw-pickle", "top-level"])
def test_checkpoint_needing_code_execution_is_refused(case, upstream, tmp_path, variant):
    # control: the very same payload does run when unpickled without weights_only
    control_marker = tmp_path / "control-ran"
    control = tmp_path / "control.pt"
    _evil_variants(upstream, control_marker)[variant](control)
    try:
        torch.load(control, map_location="cpu", weights_only=False)
    except Exception:  # noqa: BLE001 - the payload may break the rest of the load; it ran first
        pass
    assert control_marker.exists(), "the payload is not live, the test would prove nothing"

    marker = tmp_path / "payload-ran"
    bad = case.inp / "GENE0_evil.pt"
    _evil_variants(upstream, marker)[variant](bad)
    msg = run_case(case, "--gene", "GENE0", ck=bad, mention=[str(bad)])
    assert not marker.exists(), "the checkpoint's code ran"
    if variant != "raw-pickle":  # a raw pickle is not even a torch file; either message is fine
        assert "code execution" in msg or "refused" in msg, msg
    # inspect refuses it too
    result = invoke(["inspect", bad])
    assert_clean_user_error(result, str(bad))
    assert not marker.exists()


@pytest.mark.slow
def test_checkpoint_code_execution_in_a_real_process(case, upstream, tmp_path):
    marker = tmp_path / "payload-ran"
    bad = case.inp / "GENE0_evil.pt"
    _evil_variants(upstream, marker)["zip-os-system"](bad)
    before = sha256_tree(case.inp)
    proc = subprocess.run([sys.executable, "-m", "cell2net_attr", "run", str(bad), str(case.data), "--gene", "GENE0",
                           "--covariates", COVARIATES, "-o", str(case.target)],
                          capture_output=True, text=True, timeout=120, cwd=case.cwd)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.startswith("error: ") and str(bad) in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not marker.exists()
    assert leftovers(case.out) == [] and sha256_tree(case.inp) == before


@pytest.mark.parametrize("obj, what", [
    ({"foo": torch.zeros(3)}, "expected keys"),
    ({"model_state_dict": {}}, "expected keys"),
    ([torch.zeros(3)], "expected keys"),
    (torch.zeros(3), "expected keys"),
    ({"model_state_dict": {"a": 1}, "module_summary": {}}, "tensors"),
    ({"model_state_dict": [1, 2], "module_summary": {}}, "tensors"),
    ({"model_state_dict": {}, "module_summary": [1]}, "module_summary"),
], ids=["foreign-dict", "no-summary", "list", "tensor", "state-not-tensors", "state-not-dict", "summary-not-dict"])
def test_checkpoint_without_expected_keys(case, obj, what):
    bad = case.inp / "GENE0_keys.pt"
    torch.save(obj, bad)
    run_case(case, "--gene", "GENE0", ck=bad, mention=[str(bad), what])


def test_checkpoint_bare_state_dict(case, upstream):
    """A user who saved ``module.state_dict()`` alone gets told what is missing."""
    bad = case.inp / "GENE0_sd.pt"
    torch.save(checkpoint_dict(upstream)["model_state_dict"], bad)
    run_case(case, "--gene", "GENE0", ck=bad, mention=[str(bad), "model_state_dict"])


def test_checkpoint_of_another_architecture(case, upstream):
    other = torch.nn.Sequential(torch.nn.Linear(77, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))
    bad = case.inp / "GENE0_mlp.pt"
    torch.save({"model_state_dict": other.state_dict(), "module_summary": checkpoint_dict(upstream)["module_summary"]},
               bad)
    run_case(case, "--gene", "GENE0", ck=bad, mention=[str(bad), "Cell2Net"])


def _mutated_checkpoint(case, upstream, name, edit) -> Path:
    ck = checkpoint_dict(upstream)
    edit(ck["model_state_dict"], ck["module_summary"])
    bad = case.inp / f"{name}.pt"
    torch.save(ck, bad)
    return bad


def _pop(key):
    return lambda sd, s: sd.pop(key)


def _set(key, value):
    return lambda sd, s: sd.__setitem__(key, value)


def _summary(key, value):
    return lambda sd, s: s.__setitem__(key, value)


def _del_summary(key):
    return lambda sd, s: s.pop(key)


@pytest.mark.parametrize("edit, what", [
    (_pop("fc.0.bias"), "missing"),
    (_pop("seq_encoder.stem_conv.0.weight"), "seq_encoder.stem_conv.0.weight"),
    (_pop("attn_blocks.0.ln_1.weight"), "attn"),
    (_set("extra.weight", torch.zeros(2)), "unexpected"),
    (_set("fc.0.weight", torch.zeros(32, 78)), "fc.0.weight"),
    (_set("fc.4.weight", torch.zeros(2, 32)), "fc.4.weight"),
    (_set("attn_blocks.0.ln_1.bias", torch.zeros(15)), "attn_blocks.0.ln_1.bias"),
    (_set("seq_encoder.conv_tower.2.0.weight", torch.zeros(32, 31, 1, 3)), "conv_tower.2.0.weight"),
    (_set("seq_encoder.stem_conv.0.weight", torch.zeros(64, 4, 5)), "stem_conv.0.weight"),
    (_set("merge_seq_atac.0.weight", torch.zeros(126, 300, 1)), "merge_seq_atac.0.weight"),
    (_set("fc.0.weight", torch.zeros(32, 77, dtype=torch.int64)), "dtype"),
    (_summary("n_tfs", 8), "fc.0.weight"),
    (_summary("n_peaks", 5), "fc.0.weight"),
    (_summary("peak_len", 128), "peak_len"),
    (_summary("n_tfs", "7"), "n_tfs"),
    (_summary("n_tfs", -1), "n_tfs"),
    (_summary("n_covariates", True), "n_covariates"),
    (_summary("n_peaks", 0), "peaks"),
    (_summary("n_dims", 32), "n_dims"),
    (_summary("n_filters", [64, 32]), "n_filters"),
    (_del_summary("peak_len"), "peak_len"),
    (_summary("n_peaks", 10**9), "fc.0.weight"),  # must not try to build a 10^9-peak model
], ids=lambda v: v if isinstance(v, str) else "")
def test_checkpoint_shape_inconsistencies(case, upstream, edit, what):
    bad = _mutated_checkpoint(case, upstream, "GENE0_shapes", edit)
    run_case(case, "--gene", "GENE0", ck=bad, mention=[str(bad), what])


def test_checkpoint_of_another_gene(case):
    """TF0's model on GENE0's per-gene file: TF0 has no rows there."""
    run_case(case, ck=case.tf0, mention=[str(case.data), "TF0"])


# ----------------------------------------------------------------------------------------------- data


def test_data_missing(case):
    run_case(case, data=case.inp / "nope.h5mu", mention=[str(case.inp / "nope.h5mu"), "not found"])


def test_data_is_a_directory(case):
    d = case.inp / "dir.h5mu"
    d.mkdir()
    try:
        run_case(case, data=d, mention=[str(d), "directory"])
    finally:
        d.rmdir()


@pytest.mark.parametrize("content", [b"", b"gene,peak\nG,p\n", b"\x89HDF\r\n\x1a\n" + b"\0" * 100],
                         ids=["empty", "csv", "fake-signature"])
def test_data_not_hdf5(case, content):
    bad = case.inp / "bad.h5mu"
    bad.write_bytes(content)
    run_case(case, data=bad, mention=[str(bad), "HDF5"])


def test_data_hdf5_not_mudata(case):
    bad = case.inp / "plain.h5mu"
    with h5py.File(bad, "w") as f:
        f["x"] = np.arange(3)
    run_case(case, data=bad, mention=[str(bad), "MuData"])


def test_data_anndata_not_mudata(case):
    import anndata as ad

    bad = case.inp / "rna.h5ad"
    ad.AnnData(np.ones((3, 2), dtype=np.float32)).write_h5ad(bad)
    run_case(case, data=bad, mention=[str(bad), "MuData"])


def test_data_encoding_says_anndata(case):
    bad = h5_edit(case.data, lambda f: f.attrs.__setitem__("encoding-type", "anndata"))
    run_case(case, mention=[str(bad), "MuData"])


@pytest.mark.parametrize("fraction", [0.001, 0.3, 0.7, 0.999])
def test_data_truncated(case, fraction):
    raw = case.data.read_bytes()
    bad = case.inp / "cut.h5mu"
    bad.write_bytes(raw[: int(len(raw) * fraction)])
    run_case(case, data=bad, mention=[str(bad)])


@pytest.mark.parametrize("key, what", [
    ("mod/atac", "atac"),
    ("mod/rna", "rna"),
    ("mod/atac/layers/counts", "counts"),
    ("mod/atac/layers", "counts"),
    ("uns/peak_to_gene", "peak_to_gene"),
    ("mod/atac/uns/peaks", "sequence"),
    ("obs", "obs"),
    ("mod/atac/var", "atac"),
    ("mod/rna/obsm/tf", "obsm['tf']"),
    ("uns/tfs", "tfs"),
])
def test_data_missing_element_per_gene(case, key, what):
    h5_edit(case.data, lambda f: f.__delitem__(key))
    run_case(case, mention=[str(case.data), what])


@pytest.mark.parametrize("key, what", [
    ("mod/rna/layers/counts", "counts"),
    ("mod/rna/uns/gene_tf", "gene_tf"),
    ("mod/atac/layers/counts", "counts"),
    ("uns/peak_to_gene", "peak_to_gene"),
    ("mod/atac/uns/peaks", "sequence"),
])
def test_data_missing_element_full(case, key, what):
    h5_edit(case.full, lambda f: f.__delitem__(key))
    run_case(case, data=case.full, mention=[str(case.full), what])


def test_data_wrong_modality_flag(case):
    run_case(case, "--atac-mod", "chromatin", mention=["chromatin", "--atac-mod"])


@pytest.mark.parametrize("column", ["gene", "peak", "distance"])
def test_data_peak_to_gene_lacks_column(case, column):
    h5_edit(case.data, lambda f: drop_column(f, "uns/peak_to_gene", column))
    run_case(case, mention=[str(case.data), column])


def test_data_sequence_column_missing(case):
    h5_edit(case.data, lambda f: drop_column(f, "mod/atac/uns/peaks", "sequence"))
    run_case(case, mention=[str(case.data), "sequence"])


def test_data_sequence_row_missing(case):
    def edit(f):
        names = strings(f, "mod/atac/uns/peaks/_index")
        replace_strings(f, "mod/atac/uns/peaks/_index", [names[0] + "x"] + names[1:])

    h5_edit(case.data, edit)
    run_case(case, mention=[str(case.data), "peaks"])


def test_data_peak_missing_from_atac_var(case):
    def edit(f):
        names = strings(f, "mod/atac/var/_index")
        replace_strings(f, "mod/atac/var/_index", ["chrZ-1-2"] + names[1:])

    h5_edit(case.data, edit)
    run_case(case, mention=[str(case.data), "atac.var_names"])


@pytest.mark.parametrize("covariates, what", [
    ("cov0,covX", "covX"),
    ("cov0,celltype", "celltype"),
    ("cov0", "--covariates"),
    ("cov0,cov1,cov0", "--covariates"),
    ("cov0,,cov1", "--covariates"),
])
def test_data_covariate_columns(case, covariates, what):
    run_case(case, "--covariates", covariates, cov=False, mention=[what])


def test_data_covariates_not_given(case):
    msg = run_case(case, cov=False, mention=["--covariates"])
    assert "cov0" in msg and "cov1" in msg  # the candidates are listed


def test_data_covariate_column_deleted(case):
    h5_edit(case.data, lambda f: drop_column(f, "obs", "cov1"))
    run_case(case, mention=[str(case.data), "cov1"])


def test_data_covariate_dataset_deleted_but_listed(case):
    h5_edit(case.data, lambda f: f.__delitem__("obs/cov1"))
    run_case(case, mention=[str(case.data), "cov1"])


@pytest.mark.parametrize("gene", ["GENE1", "NOPE", "gene0"])
def test_data_gene_absent_from_peak_to_gene(case, gene):
    run_case(case, "--gene", gene, mention=[str(case.data), gene])


def test_data_gene_absent_full_suggests(case):
    msg = run_case(case, "--gene", "GENE9", data=case.full, mention=[str(case.full), "GENE9"])
    assert "GENE0" in msg or "GENE1" in msg


def test_data_peak_count_differs(case):
    def edit(f):
        genes = strings(f, "uns/peak_to_gene/gene")
        replace_strings(f, "uns/peak_to_gene/gene", ["OTHER"] + genes[1:])

    h5_edit(case.data, edit)
    run_case(case, mention=[str(case.data), "3 peaks", "expects 4"])


def test_data_tf_count_differs(case):
    def edit(f):
        rows = strings(f, "mod/rna/uns/gene_tf/_index")
        f["mod/rna/uns/gene_tf/TF1"][rows.index("GENE0")] = 1  # GENE0 gains an 8th TF

    h5_edit(case.full, edit)
    run_case(case, data=case.full, mention=[str(case.full), "8 TFs", "expects 7"])


def test_data_tf_table_width_differs(case):
    def edit(f):
        replace_strings(f, "uns/tfs", strings(f, "uns/tfs")[:-1])

    h5_edit(case.data, edit)
    run_case(case, mention=[str(case.data), "tf"])


def test_data_other_gene_in_demo_atlas(case, demo_atlas):
    data, checkpoints = demo_atlas
    before = sha256_tree(data, *checkpoints)
    result = invoke(["run", checkpoints[0], data, "--gene", "GB", "--covariates", COVARIATES, "-o", case.target])
    assert_clean_user_error(result, [str(data), "peaks"], case.out)
    assert sha256_tree(data, *checkpoints) == before


@pytest.mark.parametrize("which, length", [(0, 255), (1, 257), (2, 0), (3, 10_000)])
def test_data_sequence_wrong_length(case, which, length):
    def edit(f):
        seqs = strings(f, "mod/atac/uns/peaks/sequence")
        seqs[which] = ("ACGT" * 2600)[:length]
        replace_strings(f, "mod/atac/uns/peaks/sequence", seqs)
        return strings(f, "mod/atac/uns/peaks/_index")[which]

    with h5py.File(case.data, "r+") as f:
        peak = edit(f)
    run_case(case, mention=[str(case.data), peak, "length"])


@pytest.mark.parametrize("letter", ["X", "-", "R", " ", "é"])
def test_data_sequence_bad_letters(case, letter):
    with h5py.File(case.data, "r+") as f:
        seqs = strings(f, "mod/atac/uns/peaks/sequence")
        seqs[2] = seqs[2][:100] + letter + seqs[2][101 : 256 if len(letter.encode()) == 1 else 256]
        replace_strings(f, "mod/atac/uns/peaks/sequence", seqs)
        peak = strings(f, "mod/atac/uns/peaks/_index")[2]
    run_case(case, mention=[str(case.data), peak])


def test_data_sequence_lowercase_and_n_is_fine(case):
    with h5py.File(case.data, "r+") as f:
        seqs = strings(f, "mod/atac/uns/peaks/sequence")
        seqs[1] = seqs[1].lower()
        seqs[2] = "N" * 256
        replace_strings(f, "mod/atac/uns/peaks/sequence", seqs)
    result = invoke(["run", case.ck, case.data, "--covariates", COVARIATES, "-o", case.target, "--n-steps", "4"])
    assert result.exit_code == 0, result.stderr
    assert leftovers(case.out) == ["GENE0.h5"]


@pytest.mark.parametrize("key, index, value, what", [
    ("mod/atac/layers/counts/data", 0, np.nan, "accessibility"),
    ("mod/atac/layers/counts/data", -1, np.inf, "accessibility"),
    ("mod/rna/obsm/tf/data", 5, np.nan, "TF expression"),
    ("mod/rna/obsm/tf/data", -3, -np.inf, "TF expression"),
    ("obs/cov0", 3, np.nan, "cov0"),
    ("obs/cov1", 63, np.inf, "cov1"),
])
def test_data_nan_or_inf(case, key, index, value, what):
    h5_edit(case.data, lambda f: f[key].__setitem__(index if index >= 0 else f[key].shape[0] + index, value))
    # a small batch size so that the bad cell is met after the output was opened (abort path)
    run_case(case, "--batch-size", "8", "--n-steps", "4", mention=[str(case.data), what])


def test_data_nan_in_full_layout(case):
    def edit(f):
        column = strings(f, "mod/rna/var/_index").index("TF2")  # one of GENE0's TFs
        indptr, indices = f["mod/rna/layers/counts/indptr"][:], f["mod/rna/layers/counts/indices"][:]
        hits = np.flatnonzero(indices[indptr[40]:] == column)
        f["mod/rna/layers/counts/data"][indptr[40] + hits[0]] = np.nan

    h5_edit(case.full, edit)
    run_case(case, "--batch-size", "8", "--n-steps", "4", "--idx", "32:64", data=case.full,
             mention=[str(case.full), "TF expression"])


def test_data_nan_distance(case):
    def edit(f):
        attrs = dict(f["uns/peak_to_gene/distance"].attrs)
        d = f["uns/peak_to_gene/distance"][:].astype(float)
        d[1] = np.nan
        del f["uns/peak_to_gene/distance"]
        f["uns/peak_to_gene/distance"] = d
        f["uns/peak_to_gene/distance"].attrs.update(attrs)

    h5_edit(case.data, edit)
    run_case(case, mention=[str(case.data), "distance"])


def test_data_zero_cells(case):
    import mudata as md

    md.set_options(pull_on_update=False)
    m = md.read_h5mu(case.data)
    empty = m[m.obs_names[:0]].copy()
    bad = case.inp / "empty.h5mu"
    empty.write_h5mu(bad)
    run_case(case, data=bad, mention=[str(bad), "zero cells"], ck=case.ck)


def test_data_obs_missing_from_modality(case):
    def edit(f):
        names = strings(f, "mod/rna/obs/_index")
        replace_strings(f, "mod/rna/obs/_index", ["someone_else"] + names[1:])

    h5_edit(case.data, edit)
    run_case(case, mention=[str(case.data), "rna"])


@pytest.mark.parametrize("key, index, value", [
    ("mod/atac/layers/counts/indptr", 10, 10**6),  # scipy's column indexing read out of bounds (segfault)
    ("mod/atac/layers/counts/indptr", 16, 2**31 - 1),  # negative nnz slips past scipy's own full check
    ("mod/atac/layers/counts/indptr", 0, 5),
    ("mod/atac/layers/counts/indices", 3, 100),  # a column beyond the matrix: silent memory corruption
    ("mod/atac/layers/counts/indices", 3, -100),
    ("mod/rna/obsm/tf/indptr", 40, 0),
])
def test_data_sparse_matrix_corrupt(case, key, index, value):
    """Found by the fuzz test: these crashed the process before the sparse blocks were checked."""
    h5_edit(case.data, lambda f: f[key].__setitem__(index, value))
    run_case(case, "--n-steps", "4", mention=[str(case.data), key.rsplit("/", 1)[0]])


def _resize(f: h5py.File, key: str, values) -> None:
    attrs = dict(f[key].attrs)
    values = np.asarray(values)
    if values.dtype.kind in "OSU":
        values = np.asarray([v.decode() if isinstance(v, bytes) else str(v) for v in values], dtype=object)
    del f[key]
    f.create_dataset(key, data=values, dtype=h5py.string_dtype() if values.dtype.kind == "O" else values.dtype)
    f[key].attrs.update(attrs)


# regressions found by the fuzz test: each was an internal error (exit 1) or a silently wrong result
@pytest.mark.parametrize("edit, what", [
    (lambda f: _resize(f, "obs/cov0", f["obs/cov0"][:-1]), "cov0"),
    (lambda f: _resize(f, "mod/atac/obs/_index", [*f["mod/atac/obs/_index"][:-1], f["mod/atac/obs/_index"][0]]),
     "more than once"),
    (lambda f: _resize(f, "mod/atac/var/_index", [f["mod/atac/var/_index"][1], *f["mod/atac/var/_index"][1:]]),
     "more than once"),
    (lambda f: [_resize(f, f"mod/atac/uns/peaks/{c}", [*f[f"mod/atac/uns/peaks/{c}"][:], f[f"mod/atac/uns/peaks/{c}"][0]])
                for c in ("_index", "chr", "sequence")], "more than one row"),
    (lambda f: f["uns/peak_to_gene"].attrs.__setitem__("encoding-type", ""), "uns/peak_to_gene"),
    (lambda f: f["mod/atac/layers/counts"].attrs.__setitem__("encoding-type", np.asarray([], dtype=float)),
     "counts"),
    (lambda f: f["obs/_index"].attrs.__setitem__("encoding-version", ""), "obs"),
], ids=["covariate-length", "duplicate-cells-in-modality", "duplicate-peak-in-var", "duplicate-sequence-row",
        "empty-encoding", "array-encoding", "empty-encoding-version"])
def test_data_fuzz_regressions(case, edit, what):
    h5_edit(case.data, edit)
    run_case(case, "--n-steps", "4", mention=[str(case.data), what])


def test_data_duplicate_names_elsewhere_are_harmless(case):
    """Duplicated var names that the model does not use (common for gene symbols) are no error."""
    def edit(f):
        _resize(f, "mod/rna/var/_index", ["TFx", "TFx", *strings(f, "mod/rna/var/_index")[2:]])

    h5_edit(case.full, edit)
    with h5py.File(case.full) as f:
        names = strings(f, "mod/rna/var/_index")
    assert "TF0" in names and names.count("TFx") == 2  # GENE0 and GENE1 renamed, TFs intact
    r = invoke(["run", case.ck, case.full, "--covariates", COVARIATES, "-o", case.target, "--n-steps", "4", "-q"])
    assert r.exit_code == 0, r.stderr


# ---------------------------------------------------------------------------------------------- index


@pytest.mark.parametrize("idx, what", [
    ("", "empty"),
    (",", "empty"),
    ("1,,2", "empty"),
    ("5:5", "empty"),
    ("10:2", "empty"),
    ("1:2:3", "1:2:3"),
    ("0,cell_00001_C", "mixes"),
    ("0x10", "0x10"),
    ("1.5", "1.5"),
    ("64", "out of range"),
    ("-65", "out of range"),
    ("0:65", "out of range"),
    ("99999999999999999999999", "out of range"),
    ("cell_nope", "cell_nope"),
    ("cell_00001_c", "cell_00001_C"),  # a suggestion
    ("0,0", "more than once"),
    ("0,-64", "more than once"),
    ("0:4,2", "more than once"),
    ("cell_00001_C,cell_00001_C", "cell_00001_C"),
    (":,0", "more than once"),
])
def test_index_errors(case, idx, what):
    msg = run_case(case, "--idx", idx, mention=["--idx", what])
    assert len(msg) < 300


@pytest.mark.parametrize("idx_type, idx, what", [
    ("bogus", "0", "--idx-type"),
    ("position", "cell_00001_C", "cell_00001_C"),
    ("name", "0", "unknown obs name"),
])
def test_index_type(case, idx_type, idx, what):
    run_case(case, "--idx", idx, "--idx-type", idx_type, mention=[what])


def test_index_file_missing(case, tmp_path):
    path = tmp_path / "no-such-list.txt"
    run_case(case, "--idx", f"@{path}", mention=[str(path)])


def test_index_file_empty(case, tmp_path):
    path = tmp_path / "cells.txt"
    path.write_text("\n  \n")
    run_case(case, "--idx", f"@{path}", mention=["--idx", "empty"])


def test_index_file_not_text(case, tmp_path):
    path = tmp_path / "cells.bin"
    path.write_bytes(b"\xff\xfe\x00\x81" * 100)
    run_case(case, "--idx", f"@{path}", mention=[str(path)])


def test_index_file_is_a_directory(case, tmp_path):
    run_case(case, "--idx", f"@{tmp_path}", mention=[str(tmp_path)])


@pytest.mark.parametrize("tokens, what", [
    ([str(i % 64) for i in range(200_000)], "more than once"),
    ([str(64 + i) for i in range(200_000)], "more"),
    ([f"cell_{i}_Z" for i in range(200_000)], "more"),
], ids=["duplicates", "out-of-range", "unknown-names"])
def test_index_very_long_list_from_file(case, tmp_path, tokens, what):
    path = tmp_path / "cells.txt"
    path.write_text("\n".join(tokens) + "\n")
    msg = run_case(case, "--idx", f"@{path}", mention=["--idx", what])
    assert len(msg) < 400, "a long list must not flood the terminal"


def test_index_long_valid_list_from_file_and_stdin(case, tmp_path):
    order = np.random.default_rng(0).permutation(64)
    path = tmp_path / "cells.txt"
    path.write_text("\n".join(map(str, order)) + "\n")
    npy = case.out / "a.npy"
    r = invoke(["run", case.ck, case.data, "--covariates", COVARIATES, "--idx", f"@{path}", "-o", npy,
                "--n-steps", "4", "-q"])
    assert r.exit_code == 0, r.stderr
    r2 = invoke(["run", case.ck, case.data, "--covariates", COVARIATES, "--idx", "@-", "-o", case.out / "b.npy",
                 "--n-steps", "4", "-q"], input="\n".join(map(str, order)))
    assert r2.exit_code == 0, r2.stderr
    a, b = np.load(npy), np.load(case.out / "b.npy")
    assert a.shape == (64, 7) and np.array_equal(a, b)


# ---------------------------------------------------------------------------------------------- flags


@pytest.mark.parametrize("args, flag", [
    (["--n-steps", "0"], "--n-steps"),
    (["--n-steps", "-3"], "--n-steps"),
    (["--batch-size", "0"], "--batch-size"),
    (["--batch-size", "-1"], "--batch-size"),
    (["--batch-size", "0", "--engine", "captum"], "--batch-size"),
    (["--method", "simpson"], "--method"),
    (["--method", "exact", "--engine", "captum"], "--method"),
    (["--engine", "turbo"], "--engine"),
    (["--module-mode", "test"], "--module-mode"),
    (["--module-mode", "train"], "--module-mode"),
    (["--num-workers", "-1"], "--num-workers"),
    (["--threads", "0"], "--threads"),
    (["--device", "tpu"], "--device"),
    (["--device", "cuda:x"], "--device"),
])
def test_flag_values(case, args, flag):
    run_case(case, *args, mention=[flag])


@pytest.mark.parametrize("device", ["cuda", "cuda:0", "cuda:3"])
def test_flag_cuda_without_gpu(case, device):
    if torch.cuda.is_available() and device != "cuda:3":
        pytest.skip("a GPU is available")
    if torch.cuda.is_available() and torch.cuda.device_count() > 3:
        pytest.skip("four GPUs are available")
    run_case(case, "--device", device, mention=["--device", device])


def test_flag_unparsable_number(case):
    result = invoke(["run", case.ck, case.data, "-o", case.target, "--n-steps", "many"])
    assert result.exit_code == 2 and "Traceback" not in result.stderr and "--n-steps" in result.stderr
    assert leftovers(case.out) == []


def test_output_directory_missing(case):
    target = case.out / "no" / "such" / "GENE0.h5"
    run_case(case, out=target, mention=[str(target.parent), "does not exist"])


def test_output_directory_not_writable(case, monkeypatch):
    real_access = os.access

    def deny(path, mode, *a, **kw):
        if Path(path) == case.out and mode & os.W_OK:
            return False
        return real_access(path, mode, *a, **kw)

    monkeypatch.setattr(os, "access", deny)
    run_case(case, mention=[str(case.out), "not writable"])


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes anywhere")
def test_output_directory_not_writable_for_real(case):
    case.out.chmod(0o500)
    try:
        run_case(case, mention=[str(case.out), "not writable"])
    finally:
        case.out.chmod(0o700)


@pytest.mark.parametrize("name", ["GENE0.h5", "GENE0.npy"])
def test_output_exists_without_overwrite(case, name):
    target = case.out / name
    target.write_bytes(b"precious")
    before = sha256_tree(case.inp)
    result = invoke(["run", case.ck, case.data, "--covariates", COVARIATES, "-o", target])
    assert_clean_user_error(result, [str(target), "--overwrite"])
    assert target.read_bytes() == b"precious" and leftovers(case.out) == [name]
    assert sha256_tree(case.inp) == before
    ok = invoke(["run", case.ck, case.data, "--covariates", COVARIATES, "-o", target, "--overwrite", "--n-steps", "4",
                 "-q"])
    assert ok.exit_code == 0, ok.stderr
    sidecar = [f".{name}.run.json"] if name.endswith(".npy") else []  # a .npy's run identity lives beside it
    assert target.read_bytes() != b"precious" and leftovers(case.out) == sidecar + [name]


def test_output_is_a_directory(case):
    (case.out / "GENE0.h5").mkdir()
    before = sha256_tree(case.inp)
    result = invoke(["run", case.ck, case.data, "--covariates", COVARIATES, "-o", case.out / "GENE0.h5",
                     "--overwrite"])
    assert_clean_user_error(result, [str(case.out / "GENE0.h5"), "directory"])
    assert leftovers(case.out) == ["GENE0.h5"] and sha256_tree(case.inp) == before


@pytest.mark.parametrize("overwrite", [False, True])
def test_output_is_an_input(case, overwrite):
    before = sha256_tree(case.inp)
    extra = ["--overwrite"] if overwrite else []
    target = case.inp / "GENE0.h5mu"
    result = invoke(["run", case.ck, case.data, "--covariates", COVARIATES, "-o", target, *extra])
    assert result.exit_code == 2 and str(target) in result.stderr, result.stderr
    assert sha256_tree(case.inp) == before


def test_output_unknown_format(case):
    run_case(case, out=case.out / "GENE0.csv", mention=[str(case.out / "GENE0.csv"), ".csv"])


def test_output_delta_needs_hdf5(case):
    run_case(case, "--delta", out=case.out / "GENE0.npy", mention=[str(case.out / "GENE0.npy"), "--delta"])


def _enospc(*_a, **_k):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_disk_full_hdf5_while_writing(case, monkeypatch):
    monkeypatch.setattr(h5py.Dataset, "__setitem__", _enospc)
    run_case(case, "--n-steps", "4", mention=[str(case.target), "disk full"])


def _h5py_flush_failure(*_a, **_k):
    """What h5py raises when HDF5 cannot flush to a full disk: a RuntimeError, not an OSError."""
    raise RuntimeError("Unable to flush raw data (file write failed: time = Thu Jan  1 00:00:00 2026\n, "
                       "filename = 'x', file descriptor = 3, errno = 28, error message = 'No space left on device')")


@pytest.mark.parametrize("failure", [_enospc, _h5py_flush_failure], ids=["OSError", "h5py-RuntimeError"])
def test_disk_full_hdf5_on_close(case, monkeypatch, failure):
    real_close = h5py.File.close
    calls = []

    def close(self):
        first = not calls
        calls.append(1)
        real_close(self)
        if first:
            failure()

    monkeypatch.setattr(h5py.File, "close", close)
    run_case(case, "--n-steps", "4", "--delta", mention=[str(case.target), "disk full"])


def test_disk_full_hdf5_on_create(case, monkeypatch):
    real = h5py.Group.create_dataset

    def create(self, name, *a, **kw):
        if name == "tf_names":
            _enospc()
        return real(self, name, *a, **kw)

    monkeypatch.setattr(h5py.Group, "create_dataset", create)
    run_case(case, "--n-steps", "4", mention=[str(case.target), "disk full"])


@pytest.mark.parametrize("name", ["GENE0.h5", "GENE0.npy"])
def test_disk_full_found_before_writing(case, monkeypatch, name):
    """An output that cannot fit is refused before any file is created (HDF5 does not survive ENOSPC)."""
    import shutil as _shutil

    usage = _shutil.disk_usage(case.out)
    monkeypatch.setattr(_shutil, "disk_usage", lambda _p: usage._replace(free=1000))
    created = []
    real_file = h5py.File

    def spy(*a, **kw):
        created.append(a[0])
        return real_file(*a, **kw)

    monkeypatch.setattr(h5py, "File", spy)
    msg = run_case(case, "--n-steps", "4", out=case.out / name, mention=[str(case.out / name), "disk full", "free"])
    assert not [c for c in created if str(case.out) in str(c)], msg


def test_disk_full_npy_on_open(case, monkeypatch):
    monkeypatch.setattr(np.lib.format, "open_memmap", _enospc)
    run_case(case, "--n-steps", "4", out=case.out / "GENE0.npy", mention=[str(case.out / "GENE0.npy"), "disk full"])


@pytest.mark.skipif(not hasattr(os, "posix_fallocate"), reason="no posix_fallocate")
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_disk_full_npy_is_found_before_the_memory_map_is_written(case, monkeypatch, code):
    """A memory-mapped write to a full disk is a SIGBUS: the blocks must be reserved up front."""
    def full(*_a, **_k):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "posix_fallocate", full)
    run_case(case, "--n-steps", "4", out=case.out / "GENE0.npy", mention=[str(case.out / "GENE0.npy"), "disk full"])


def test_npy_output_on_a_file_system_without_fallocate(case, monkeypatch):
    def unsupported(*_a, **_k):
        raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))

    monkeypatch.setattr(os, "posix_fallocate", unsupported, raising=False)
    r = invoke(["run", case.ck, case.data, "--covariates", COVARIATES, "-o", case.out / "GENE0.npy", "--n-steps", "4",
                "-q"])
    assert r.exit_code == 0, r.stderr
    assert leftovers(case.out) == [".GENE0.npy.run.json", "GENE0.npy"]
    assert np.load(case.out / "GENE0.npy").shape == (64, 7)


def test_disk_full_npy_on_flush(case, monkeypatch):
    monkeypatch.setattr(np.memmap, "flush", _enospc)
    run_case(case, "--n-steps", "4", out=case.out / "GENE0.npy", mention=[str(case.out / "GENE0.npy"), "disk full"])


def test_disk_full_on_rename(case, monkeypatch):
    import cell2net_attr.io.writers as writers

    monkeypatch.setattr(writers.os, "replace", _enospc)
    run_case(case, "--n-steps", "4", mention=[str(case.target), "disk full"])


# ------------------------------------------------------------------------ interruptions and internal errors


def assert_only_resumable(case, err: str) -> None:
    """After an interrupt: nothing at the final path; only the hidden partial kept for --resume."""
    partial = f".{case.target.name}.partial"
    assert not case.target.exists()
    assert all(name == partial or name.startswith(partial + "/") for name in leftovers(case.out)), leftovers(case.out)
    assert "--resume" in err


def test_keyboard_interrupt_mid_run_leaves_nothing(case, monkeypatch):
    real_write = h5py.Dataset.__setitem__
    calls = []

    def write(self, key, value):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_write(self, key, value)

    monkeypatch.setattr(h5py.Dataset, "__setitem__", write)
    monkeypatch.setenv("CELL2NET_ATTR_CHUNK_ROWS", "8")  # several chunks, so several writes
    before = sha256_tree(case.inp)
    result = invoke(["run", case.ck, case.data, "--covariates", COVARIATES, "-o", case.target, "--batch-size", "8",
                     "--n-steps", "4"])
    assert result.exit_code == 130, result.stderr
    assert "interrupted" in result.stderr and "Traceback" not in result.stderr
    assert_only_resumable(case, result.stderr)
    assert sha256_tree(case.inp) == before
    monkeypatch.undo()
    resumed = invoke(["run", case.ck, case.data, "--covariates", COVARIATES, "-o", case.target, "--batch-size", "8",
                      "--n-steps", "4", "--resume"])
    assert resumed.exit_code == 0 and leftovers(case.out) == [case.target.name]


@pytest.mark.slow
def test_sigint_real_process_leaves_nothing(case):
    """SIGINT a real run while it writes: exit 130, nothing at the output path, only the hidden
    resumable partial beside it, inputs unchanged. (Small batches of the reference engine and
    two-row chunks make the run write 32 chunks, each slowed, so the signal lands mid-run.)"""
    slow = ("import sys, time, cell2net_attr.io.writers as w\n"
            "orig = w.H5Writer.write\n"
            "def write(self, *a):\n"
            "    orig(self, *a)\n"
            "    time.sleep(0.25)\n"
            "w.H5Writer.write = write\n"
            "from cell2net_attr.cli import main\n"
            "sys.argv = ['cell2net-attr'] + sys.argv[1:]\n"
            "main()\n")
    before = sha256_tree(case.inp)
    proc = subprocess.Popen([sys.executable, "-c", slow, "run", str(case.ck), str(case.data), "--covariates",
                             COVARIATES, "-o", str(case.target), "--batch-size", "2", "--n-steps", "4",
                             "--num-workers", "0", "--engine", "captum"],
                            cwd=case.cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=default_sigint, env={**os.environ, "CELL2NET_ATTR_CHUNK_ROWS": "2"})
    try:
        deadline = time.monotonic() + 60
        while not any(p.name.endswith(".partial") for p in case.out.iterdir()):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the run never started writing"
            time.sleep(0.02)
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert_only_resumable(case, err)
    assert sha256_tree(case.inp) == before


def test_internal_error_is_exit_1_and_leaves_nothing(case, monkeypatch):
    def boom(*_a, **_k):
        raise RuntimeError("simulated bug\nsecond line")

    monkeypatch.setattr(h5py.Dataset, "__setitem__", boom)
    before = sha256_tree(case.inp)
    result = invoke(["run", case.ck, case.data, "--covariates", COVARIATES, "-o", case.target, "--n-steps", "4"])
    assert result.exit_code == 1, result.stderr
    assert "internal error" in result.stderr and "simulated bug" in result.stderr
    assert "Traceback" not in result.stderr and "second line" not in result.stderr
    assert leftovers(case.out) == [] and sha256_tree(case.inp) == before


@pytest.mark.slow
def test_traceback_only_with_debug(case):
    missing = case.inp / "nope.pt"
    base = [sys.executable, "-m", "cell2net_attr"]
    args = ["run", str(missing), str(case.data), "-o", str(case.target)]
    plain = subprocess.run(base + args, capture_output=True, text=True, timeout=120, cwd=case.cwd)
    assert plain.returncode == 2 and "Traceback" not in plain.stderr
    assert plain.stderr.strip() == f"error: {missing}: checkpoint file not found"
    debug = subprocess.run(base + ["--debug"] + args, capture_output=True, text=True, timeout=120, cwd=case.cwd)
    assert debug.returncode == 2 and "Traceback" in debug.stderr and "UserError" in debug.stderr
    assert debug.stderr.strip().splitlines()[-1] == plain.stderr.strip()  # the same last line, the same exit code
    assert leftovers(case.out) == []


# ------------------------------------------------------------------------------------------- inspect


@pytest.mark.parametrize("make", [
    lambda c: c.inp / "nope.pt",
    lambda c: (c.inp / "t.pt").write_bytes(b"text") and c.inp / "t.pt",
])
def test_inspect_bad_checkpoint(case, make):
    bad = make(case)
    before = sha256_tree(case.inp)
    assert_clean_user_error(invoke(["inspect", bad]), str(bad))
    assert_clean_user_error(invoke(["inspect", bad, case.data]), str(bad))
    assert sha256_tree(case.inp) == before


def test_inspect_bad_data(case):
    bad = case.inp / "x.h5mu"
    bad.write_bytes(b"nope")
    assert_clean_user_error(invoke(["inspect", case.ck, bad]), str(bad))


def test_inspect_mismatch_exits_2_with_a_reason(case):
    h5_edit(case.data, lambda f: f.__delitem__("uns/peak_to_gene"))
    result = invoke(["inspect", case.ck, case.data, "--covariates", COVARIATES])
    assert result.exit_code == 2 and "Traceback" not in result.stderr
    assert "peak_to_gene" in result.stdout and "False" in result.stdout
