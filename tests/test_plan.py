"""``plan``: the arithmetic of the prediction, its fields, and the bytes it predicts against a real job."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cell2net_attr.pipeline.plan import Calibration, GeneShape, JobShape, parse_time_limit, predict

from .conftest import COVARIATES, invoke
from .test_errors import assert_clean_user_error


def _cal(**changes) -> Calibration:
    values = dict(sizes=(100, 300), cell_seconds=(1e-3, 3e-3), cell_cpu=(2e-3, 6e-3), gene_seconds=0.5, gene_cpu=0.4,
                  read_seconds=1e-4, read_gene_seconds=1e-5, value_seconds=1e-6, start_seconds=5.0, start_cpu=3.0,
                  bytes_per_value=2.0, bytes_per_row=20.0, bytes_per_file=1000.0, summary_bytes_per_row=50.0,
                  summary_bytes=300.0, memory_base=100 << 20, memory_per_gene=10 << 20, memory_work=5 << 20,
                  read_rows=2048, buffer_bytes=256 << 20)
    return Calibration(**{**values, **changes})


GENES = [GeneShape(f"G{i}", n_features=10 * (i + 1), n_inputs=50, size=100 + 50 * i) for i in range(5)]


def test_cell_cost_is_linear_through_the_calibration_genes():
    cal = _cal()
    assert cal.cell_cost(200) == pytest.approx(2e-3)
    assert cal.cell_cost(500) == pytest.approx(5e-3)  # extrapolated on the line
    assert cal.cell_cost(0) == pytest.approx(0.25e-3)  # never below a quarter of the cheapest
    one = _cal(sizes=(100,), cell_seconds=(1e-3,), cell_cpu=(1e-3,))
    assert one.cell_cost(300) == pytest.approx(3e-3)  # one gene: proportional to the size


def test_one_process_is_start_genes_cells_writing_and_reading():
    cal, job = _cal(), JobShape(cells=1000, per_cell=True, summary_rows_per_gene=8, group_genes=2)
    plan = predict(GENES, job, cal)
    own = sum(0.5 + 1000 * (cal.cell_cost(g.size) + 1e-6 * g.n_features) for g in GENES)
    reading = sum(1000 * (1e-4 + 1e-5 * k) for k in (2, 2, 1))  # groups of 2, 2 and 1 genes
    assert plan.serial_seconds == pytest.approx(5.0 + own + reading)
    assert plan.seconds == plan.serial_seconds and plan.tasks == 1
    cpu = sum(0.4 + 1000 * cal.cell_cost(g.size, cpu=True) for g in GENES) + 3.0  # writing and reading: wall
    assert plan.cpu_seconds == pytest.approx(cpu + 1000 * 1e-6 * sum(g.n_features for g in GENES) + reading)
    files = sum(1000 + 1000 * (20 + 2 * g.n_features) for g in GENES)
    assert plan.per_cell_bytes == files and plan.summary_bytes == 300 + 50 * 8 * 5
    assert plan.output_bytes == files + plan.summary_bytes
    group = 2 * (10 << 20) + 2 * 1000 * 100 * 4 + 1000 * (30 + 40) * 4  # G2 and G3: genes, read blocks, rows
    assert plan.peak_memory_bytes == (100 << 20) + (5 << 20) + group
    assert plan.cell_genes == 5000 and plan.fits


def test_no_per_cell_writes_nothing_but_the_summary():
    plan = predict(GENES, JobShape(cells=1000, per_cell=False, summary_rows_per_gene=8), _cal())
    assert plan.per_cell_bytes == 0 and plan.output_bytes == plan.summary_bytes == 300 + 50 * 8 * 5


def test_tasks_for_a_time_limit_are_the_fewest_that_fit():
    cal, job = _cal(), JobShape(cells=100_000)
    serial = predict(GENES, job, cal).serial_seconds
    limit = serial / 2  # one process does not fit, nor (with the margin) two
    plan = predict(GENES, job, cal, time_limit=limit)
    assert plan.tasks > 2 and plan.fits and plan.task_seconds <= 0.8 * limit
    fewer = predict(GENES, job, cal, tasks=plan.tasks - 1)
    assert fewer.task_seconds > 0.8 * limit
    assert plan.seconds == plan.task_seconds < serial
    extra = (plan.tasks - 1) * (3.0 + 100_000 * 1e-4)  # each task starts, and reads for its own group
    assert plan.cpu_seconds == pytest.approx(predict(GENES, job, cal).cpu_seconds + extra)
    given = predict(GENES, job, cal, tasks=5)  # one gene per task: its own time and a start
    assert given.task_seconds == pytest.approx(max(5.0 + 0.5 + 100_000 * (cal.cell_cost(g.size) + 1e-6 * g.n_features
                                                                          + 1e-4 + 1e-5) for g in GENES))
    hopeless = predict(GENES, job, cal, time_limit=1.0)
    assert hopeless.tasks == 5 and not hopeless.fits and "run --shard" in hopeless.notes[0]


@pytest.mark.parametrize("text,seconds", [("30", 1800), ("2:30", 150), ("01:02:03", 3723), ("1-2", 93600),
                                          ("1-02:03", 93780), ("2-00:00:10", 172810)])
def test_slurm_time_limits(text, seconds):
    assert parse_time_limit(text) == seconds


def test_plan_json_fields_and_its_bytes_against_the_real_job(demo_atlas, tmp_path):
    data, cks = demo_atlas
    args = ["--covariates", COVARIATES, "--n-steps", "16", "--format", "h5ad", "--dtype", "float16",
            "--compression", "gzip", "--groupby", "celltype", "--summary", tmp_path / "out" / "s.tsv"]
    r = invoke(["plan", *cks, data, *args, "--json", "--tasks", "2", "--calibration-cells", "32"])
    assert r.exit_code == 0, r.output
    plan = json.loads(r.stdout)
    for key in ("seconds", "cpu_seconds", "peak_memory_bytes", "output_bytes", "tasks"):
        assert isinstance(plan[key], (int, float)) and plan[key] > 0, key
    assert plan["tasks"] == 2 and plan["cells"] == 60 and plan["genes"] == 3 and plan["cell_genes"] == 180
    assert plan["seconds"] == plan["task_seconds"] <= plan["serial_seconds"]
    assert not list(tmp_path.iterdir())  # plan writes nothing
    r = invoke(["run-many", *cks, data, "--out-dir", tmp_path / "out", *args, "-q"])
    assert r.exit_code == 0, r.output
    files = sum(p.stat().st_size for p in (tmp_path / "out").glob("*.h5ad"))
    assert plan["per_cell_bytes"] == pytest.approx(files, rel=0.2)
    assert plan["summary_bytes"] == pytest.approx((tmp_path / "out" / "s.tsv").stat().st_size, rel=0.3)
    r = invoke(["plan", *cks, data, "--covariates", COVARIATES, "--n-steps", "16", "--calibration-cells", "16"])
    assert r.exit_code == 0 and r.stdout.startswith("job:") and "3 genes x 60 cells" in r.stdout, r.output
    assert "plan: calibrating on 16 cells" in r.stderr


@pytest.mark.parametrize("args,flag", [(["--time-limit", "soon"], "--time-limit"),
                                       (["--format", "npy", "--compression", "gzip"], "--compression"),
                                       (["--groupby", "celltype"], "--groupby")])
def test_plan_refuses_bad_flags(demo_atlas, args, flag):
    data, cks = demo_atlas
    assert_clean_user_error(invoke(["plan", *cks, data, "--covariates", COVARIATES, *args]), flag)


def test_calibration_genes_are_the_smallest_and_the_largest():
    from cell2net_attr.pipeline.calibrate import pick_genes

    shapes = [GeneShape(f"G{i}", 1, 1, s) for i, s in enumerate([50, 10, 90, 30])]
    assert pick_genes(shapes, 2) == [1, 2]
    assert pick_genes(shapes, 1) == [1]
    assert sorted(pick_genes(shapes, 3)) == [1, 2, 3] or sorted(pick_genes(shapes, 3)) == [0, 1, 2]
    assert np.all(np.array(pick_genes(shapes, 9)) >= 0)


def test_uncompressed_files_take_whole_chunks():
    """An uncompressed HDF5 dataset allocates whole chunks of rows: 5,012 cells in chunks of 4,096 take 8,192."""
    from cell2net_attr.io.writers import allocated_rows
    from cell2net_attr.pipeline.plan import output_bytes

    assert allocated_rows(5012) == 8192 and allocated_rows(4096) == 4096 and allocated_rows(100) == 100
    cal = _cal(bytes_per_file=0.0, bytes_per_row=0.0)
    plain, padded = JobShape(cells=5012), JobShape(cells=5012, stored_rows=8192)
    files, _ = output_bytes(GENES, plain, cal)
    assert files == sum(5012 * g.n_features * 2 for g in GENES)
    assert output_bytes(GENES, padded, cal)[0] == sum(8192 * g.n_features * 2 for g in GENES)
