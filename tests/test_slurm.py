"""The sharded workflow as a real SLURM job array, on a single-node cluster on loopback.

``tests/slurm/start.sh`` starts munged, slurmctld and slurmd in a temporary directory (one node,
127.0.0.1 only); ``tests/slurm/stop.sh`` stops them again whatever happens. The jobs are submitted
with the commands of the README's "Running on a SLURM cluster" section, run verbatim by bash:
``examples/slurm_array.sh`` as a job array (0-based and 1-based), the merge step as a dependent job.

The workflows run side by side (the test cluster lets jobs share its CPUs), so the module takes about
as long as its slowest workflow. Without the SLURM and MUNGE commands (``make test`` installs
them with ``tests/slurm/install.sh``) or without root, the tests are skipped with the reason.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "tests" / "slurm"

# The README's "Running on a SLURM cluster" commands, run by bash as they are, in a directory that
# holds GENE0.pt, full.h5mu and examples/. The 1-based run replaces --array=0-2 by --array=1-3.
SUBMIT = """\
mkdir -p out
jid=$(sbatch --parsable --array=0-2 examples/slurm_array.sh run GENE0.pt full.h5mu out/GENE0.h5 --covariates cov0,cov1)
sbatch --parsable --dependency=afterok:$jid examples/slurm_array.sh merge out/GENE0.h5
"""
PREEMPT = "scancel --signal=TERM --full ${jid}_1"
RESUBMIT = """\
jid=$(sbatch --parsable examples/slurm_array.sh run GENE0.pt full.h5mu out/GENE0.h5 --covariates cov0,cov1 --shard 1/3 --resume)
sbatch --parsable --dependency=afterok:$jid examples/slurm_array.sh merge out/GENE0.h5
"""
# What the preemption test adds to the run options, so that a task is still computing when it is
# signalled: the reference engine, one cell per batch, 24 cells (8 per task); and small chunks
# (CELL2NET_ATTR_CHUNK_ROWS=4), so that there is something to resume.
SLOW = "--engine captum --batch-size 1 --n-steps 24 --idx 0:24"
CHUNKY = {"CELL2NET_ATTR_CHUNK_ROWS": "4"}

FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL",
         "DEADLINE"}
WAIT_S = 150  # the longest any one wait may take (all the jobs of this module need about 40 s)
_FIELDS = re.compile(r"(?:^|\s)(JobId|ArrayJobId|ArrayTaskId|JobState|Reason|ExitCode)=(\S*)")


@dataclass
class Cluster:
    """The running test cluster: the environment its clients and jobs need."""

    dir: Path
    env: dict[str, str]

    def cmd(self, *args: str, cwd: Path | None = None, timeout: float = 30) -> str:
        r = subprocess.run(args, cwd=cwd, env=self.env, capture_output=True, text=True, timeout=timeout)
        assert r.returncode == 0, f"{' '.join(args)} failed ({r.returncode}): {r.stderr}"
        return r.stdout

    def jobs(self, jobid: str) -> list[dict[str, str]]:
        """One record per job, or per task of an array (``scontrol show job`` keeps finished jobs)."""
        out = self.cmd("scontrol", "-o", "show", "job", jobid)
        return [dict(_FIELDS.findall(line)) for line in out.splitlines() if line.strip()]

    def wait(self, *jobids: str, timeout: float = WAIT_S) -> list[dict[str, str]]:
        """Poll until every job (every array task) has ended or can never start."""
        deadline = time.monotonic() + timeout
        while True:
            recs = [r for j in jobids for r in self.jobs(j)]
            if recs and all(_ended(r) for r in recs):
                return recs
            if time.monotonic() > deadline:
                pytest.fail(f"jobs {', '.join(jobids)} did not end within {timeout} s: {recs}\n"
                            f"{self.logs()}", pytrace=False)
            time.sleep(0.2)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n" + "\n".join(p.read_text(errors="replace").splitlines()[-15:])
                         for p in sorted((self.dir / "log").glob("*.log")))


def _ended(rec: dict[str, str]) -> bool:
    return rec.get("JobState") in FINAL or (rec.get("JobState") == "PENDING"
                                             and rec.get("Reason") == "DependencyNeverSatisfied")


@dataclass
class Workflow:
    """One submission of the README commands in its own directory."""

    dir: Path
    array: str = ""
    merge: str = ""

    @property
    def out(self) -> Path:
        return self.dir / "out" / "GENE0.h5"

    def log(self, jobid: str, task: str | int = "*") -> str:
        files = sorted(self.dir.glob(f"c2n-shards-{jobid}_{task}.log"))
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')}" for p in files)

    def all_logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')}" for p in sorted(self.dir.glob("*.log")))


def _submit(cluster: Cluster, wf: Workflow, block: str, env: dict[str, str] | None = None) -> Workflow:
    """Run a README block with bash in ``wf.dir``; it leaves the array job in $jid and prints the merge job."""
    r = subprocess.run(["bash", "-e", "-u", "-o", "pipefail", "-c", block + 'printf "array=%s\\n" "$jid"\n'],
                       cwd=wf.dir, env={**cluster.env, **(env or {})}, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"submission failed ({r.returncode}):\n{block}\n{r.stderr}"
    *_, merge, array = r.stdout.split()
    wf.array, wf.merge = array.removeprefix("array="), merge
    return wf


def _outcome(cluster: Cluster, wf: Workflow) -> tuple[bool, dict[str, tuple[str, str]], dict[str, str]]:
    """Wait for the array and its merge job: (success, {task: (state, exit code)}, merge record).

    The workflow has succeeded only when every task and the merge step completed with exit code 0.
    """
    recs = cluster.wait(wf.array, wf.merge)
    tasks = {r.get("ArrayTaskId", "-"): (r["JobState"], r["ExitCode"]) for r in recs
             if r.get("ArrayJobId", r["JobId"]) == wf.array}
    merge = next(r for r in recs if r["JobId"] == wf.merge)
    ok = (all(t == ("COMPLETED", "0:0") for t in tasks.values())
          and (merge["JobState"], merge["ExitCode"]) == ("COMPLETED", "0:0"))
    return ok, tasks, merge


def _workdir(path: Path, upstream: Path) -> Path:
    """A directory laid out as the README commands expect it."""
    path.mkdir(parents=True)
    (path / "examples").symlink_to(ROOT / "examples")
    (path / "GENE0.pt").symlink_to(upstream / "models" / "GENE0.pt")
    (path / "full.h5mu").symlink_to(upstream / "full.h5mu")
    return path


def _same(merged: Path, single: Path) -> None:
    """Equal up to float rounding (shards have other batch compositions, so other BLAS sum orders)."""
    with h5py.File(merged) as m, h5py.File(single) as s:
        a, b = m["attributions"][:], s["attributions"][:]
        assert a.shape == b.shape and np.abs(a - b).max() <= 1e-6 * np.abs(b).max()
        assert list(m["obs_names"][:]) == list(s["obs_names"][:])
        assert m.attrs["selection_sha256"] == s.attrs["selection_sha256"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, request) -> Cluster:
    check = subprocess.run(["bash", str(SCRIPTS / "install.sh"), "--check"], capture_output=True, text=True)
    if check.returncode != 0:
        pytest.skip((check.stdout + check.stderr).strip() or "SLURM test cluster: SLURM is not installed")
    if os.geteuid() != 0:
        pytest.skip("SLURM test cluster: its daemons and jobs run as root, and this is not root")
    root = tmp_path_factory.mktemp("slurm")
    request.addfinalizer(lambda: subprocess.run(["bash", str(SCRIPTS / "stop.sh"), str(root)], timeout=120))
    r = subprocess.run(["bash", str(SCRIPTS / "start.sh"), str(root)], capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        pytest.fail(f"tests/slurm/start.sh failed ({r.returncode}):\n{r.stdout}{r.stderr}", pytrace=False)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SQUEUE_", "SCANCEL_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}"
    env["SLURM_CONF"] = str(root / "slurm.conf")
    return Cluster(root, env)


def _cli(upstream: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "cell2net_attr", "run", str(upstream / "models" / "GENE0.pt"),
            str(upstream / "full.h5mu"), "--covariates", "cov0,cov1", "--out", str(out), "-q", *extra]


class Campaign:
    """The workflows of this module, each submitted on first use, all in their own directories.

    The preemption test submits the slow workflow first and, once it has signalled its task, the
    others, so that all of them run side by side. The unsharded reference runs start beside them.
    """

    def __init__(self, cluster: Cluster, upstream: Path, base: Path) -> None:
        self.cluster, self.upstream, self.base = cluster, upstream, base
        self.slow: Workflow | None = None
        self.others: dict[str, Workflow] = {}
        self.refs: dict[str, tuple[Path, subprocess.Popen]] = {}

    def _reference(self, name: str, *extra: str) -> None:
        out = self.base / f"single-{name}.h5"
        self.refs[name] = (out, subprocess.Popen(_cli(self.upstream, out, *extra), env=self.cluster.env))

    def reference(self, name: str) -> Path:
        """The unsharded run's output, once it has finished."""
        out, proc = self.refs[name]
        assert proc.wait(timeout=WAIT_S) == 0, f"the unsharded reference run {name} failed"
        return out

    def submit_slow(self) -> Workflow:
        """The README workflow with the slow run options (SLOW) and small chunks."""
        if self.slow is None:
            self.slow = _submit(self.cluster, Workflow(_workdir(self.base / "preempt", self.upstream)),
                                _slowed(SUBMIT), CHUNKY)
            self._reference("slow", *SLOW.split())
        return self.slow

    def submit_others(self) -> dict[str, Workflow]:
        """The README workflow 0-based, 1-based, and with a task that fails."""
        if not self.others:
            wfs = self.others
            wfs["0-2"] = _submit(self.cluster, Workflow(_workdir(self.base / "zero", self.upstream)), SUBMIT)
            wfs["1-3"] = _submit(self.cluster, Workflow(_workdir(self.base / "one", self.upstream)),
                                 SUBMIT.replace("--array=0-2", "--array=1-3"))
            failing = Workflow(_workdir(self.base / "failing", self.upstream))
            (failing.dir / "out").mkdir()
            (failing.dir / "out" / "GENE0-00001-of-00003.h5").write_bytes(b"left over")  # task 1 refuses it
            wfs["failing"] = _submit(self.cluster, failing, SUBMIT)
            self._reference("fast")
        return self.others

    def close(self) -> None:
        for _, proc in self.refs.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait()


def _slowed(block: str) -> str:
    return block.replace("--covariates cov0,cov1", f"--covariates cov0,cov1 {SLOW}")


@pytest.fixture(scope="module")
def campaign(cluster, upstream, tmp_path_factory):
    c = Campaign(cluster, upstream, tmp_path_factory.mktemp("workflows"))
    yield c
    c.close()


def test_preempted_array_task_resumes_when_resubmitted(cluster, campaign):
    """scancel --signal=TERM on a running task (what preemption does), then the README's resubmission."""
    wf = campaign.submit_slow()
    partial = wf.dir / "out" / ".GENE0-00001-of-00003.h5.partial"
    deadline = time.monotonic() + WAIT_S
    while not list(partial.glob("chunk-*.npz")):
        state = {r.get("ArrayTaskId"): r["JobState"] for r in cluster.jobs(wf.array)}
        assert state.get("1") in (None, "PENDING", "RUNNING"), f"task 1 ended before it was preempted: {state}"
        assert time.monotonic() < deadline, f"task 1 saved no chunk within {WAIT_S} s\n{wf.all_logs()}"
        time.sleep(0.05)
    cluster.cmd("bash", "-c", f"jid={wf.array}; {PREEMPT}", cwd=wf.dir)
    campaign.submit_others()  # to run while this workflow finishes

    ok, tasks, merge = _outcome(cluster, wf)
    assert not ok and tasks["1"] == ("FAILED", "143:0"), (tasks, wf.log(wf.array, 1))
    assert tasks["0"] == tasks["2"] == ("COMPLETED", "0:0"), (tasks, wf.all_logs())
    assert merge["Reason"] == "DependencyNeverSatisfied" and merge["JobState"] in ("CANCELLED", "PENDING"), merge
    log = wf.log(wf.array, 1)
    saved = re.search(r"terminated \(SIGTERM\).*?(\d+)/(\d+) cells saved.*--resume", log)
    assert saved, log
    done, total = map(int, saved.groups())
    assert 0 < done < total == 8 and not wf.out.exists()

    _submit(cluster, wf, _slowed(RESUBMIT), CHUNKY)
    recs = cluster.wait(wf.array, wf.merge)
    assert all((r["JobState"], r["ExitCode"]) == ("COMPLETED", "0:0") for r in recs), (recs, wf.all_logs())
    resumed = wf.log(wf.array)
    assert f"{total - done}/{total - done} cells" in resumed, resumed  # only the rest was computed
    assert not partial.exists()
    _same(wf.out, campaign.reference("slow"))


@pytest.mark.parametrize("array", ["0-2", "1-3"])
def test_array_then_dependent_merge_equals_a_single_run(cluster, campaign, upstream, array):
    wf = campaign.submit_others()[array]
    ok, tasks, merge = _outcome(cluster, wf)
    assert ok, (tasks, merge, wf.all_logs())
    first = int(array[0])
    assert sorted(tasks) == [str(first + k) for k in range(3)]
    shards = sorted(p.name for p in (wf.dir / "out").glob("GENE0-*.h5"))
    assert shards == [f"GENE0-{k:05d}-of-00003.h5" for k in range(3)]
    with h5py.File(wf.dir / "out" / shards[1]) as f:
        assert f.attrs["shard_index"] == 1 and f.attrs["row_start"] == 21
    _same(wf.out, campaign.reference("fast"))
    ref = np.load(upstream / "ref" / "GENE0.all.s100.mbi.npy")
    with h5py.File(wf.out) as f:
        assert np.abs(f["attributions"][:] - ref).max() <= 1e-5 * np.abs(ref).max()


def test_a_failed_task_fails_the_workflow(cluster, campaign):
    """Task 1 finds a stale shard output and refuses it: the merge step never runs."""
    wf = campaign.submit_others()["failing"]
    ok, tasks, merge = _outcome(cluster, wf)
    assert not ok
    assert tasks == {"0": ("COMPLETED", "0:0"), "1": ("FAILED", "2:0"), "2": ("COMPLETED", "0:0")}, \
        (tasks, wf.all_logs())
    assert "output exists" in wf.log(wf.array, 1)
    assert merge["Reason"] == "DependencyNeverSatisfied" and merge["JobState"] in ("CANCELLED", "PENDING"), merge
    assert not wf.out.exists() and not list(wf.dir.glob(f"c2n-shards-{wf.merge}_*.log"))


def test_readme_shows_the_commands_tested_here():
    readme = (ROOT / "README.md").read_text()
    section = readme.partition("## Running on a SLURM cluster")[2].split("\n## ", 1)[0]
    assert section, "README.md has no 'Running on a SLURM cluster' section"
    for block in (SUBMIT, PREEMPT, RESUBMIT):
        assert block.strip() in section, f"README's SLURM section does not show:\n{block}"
