"""Bounded fuzzing: mutated checkpoints and .h5mu files give a clean error or a valid result, every time.

Mutations are drawn with a fixed seed, so a failure names a reproducible case. All cases run in one
child process (a crash of a C library must not take pytest down, and must be pinned on its case):
the child invokes the CLI in-process per case under an alarm (a hang is reported, not waited on),
and the parent checks the contract: exit 0 with a readable output, or exit 2 with exactly one
``error:`` line; never exit 1, a traceback, a crash or a hang; nothing left behind; inputs unchanged.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest

from .conftest import COVARIATES, sha256_tree

SEED = 20240613
N_CHECKPOINT = 16
N_DATA_BYTES = 12
N_DATA_STRUCT = 32
PER_CASE_S = 30

DRIVER = r"""
import json, signal, sys, time, warnings
warnings.simplefilter("ignore")
from typer.testing import CliRunner
from cell2net_attr.cli import app

class Hang(BaseException):
    pass

def alarm(*_):
    raise Hang()

signal.signal(signal.SIGALRM, alarm)
cases = json.load(open(sys.argv[1]))
limit = float(sys.argv[2])
runner = CliRunner()
for i, args in enumerate(cases):
    print(json.dumps({"start": i}), flush=True)
    t0 = time.monotonic()
    signal.setitimer(signal.ITIMER_REAL, limit)
    try:
        r = runner.invoke(app, args)
        res = {"case": i, "exit": r.exit_code, "stderr": r.stderr, "stdout": r.stdout,
               "exception": None if r.exception is None or isinstance(r.exception, SystemExit)
               else repr(r.exception)}
    except Hang:
        res = {"case": i, "exit": "hang", "stderr": "", "stdout": "", "exception": "hang"}
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    res["seconds"] = round(time.monotonic() - t0, 3)
    print(json.dumps(res), flush=True)
"""


@pytest.fixture(autouse=True, scope="module")
def _upstream_fixtures_never_change(upstream):
    before = sha256_tree(upstream)
    yield
    assert sha256_tree(upstream) == before, "a shared fixture file changed"


# ---------------------------------------------------------------------------------------------- mutators


def _flip(raw: bytes, rng: random.Random, lo: int = 0, hi: int | None = None, k: int | None = None) -> bytes:
    out = bytearray(raw)
    hi = len(out) if hi is None else min(hi, len(out))
    for _ in range(k or rng.randint(1, 8)):
        pos = rng.randrange(lo, hi)
        out[pos] = rng.choice([out[pos] ^ (1 << rng.randrange(8)), rng.randrange(256), 0x00, 0xFF])
    return bytes(out)


def _pickle_span(path: Path) -> tuple[int, int]:
    """Byte range of the pickle (``data.pkl``) inside a torch zip file."""
    with zipfile.ZipFile(path) as z:
        info = next(i for i in z.infolist() if i.filename.endswith("data.pkl"))
    return info.header_offset, info.header_offset + 30 + len(info.filename) + info.file_size + 64


def mutate_checkpoint(raw: bytes, span: tuple[int, int], rng: random.Random) -> tuple[str, bytes]:
    kind = rng.choice(["truncate", "flip", "flip-pickle", "flip-pickle", "zero-block", "splice"])
    if kind == "truncate":
        return kind, raw[: rng.randrange(len(raw))]
    if kind == "flip":
        return kind, _flip(raw, rng)
    if kind == "flip-pickle":
        return kind, _flip(raw, rng, *span, k=rng.randint(1, 4))
    if kind == "zero-block":
        start = rng.randrange(len(raw))
        n = rng.choice([16, 256, 4096])
        return kind, raw[:start] + bytes(min(n, len(raw) - start)) + raw[start + n :]
    start, n = rng.randrange(len(raw)), rng.randint(1, 512)  # duplicate a chunk elsewhere
    return kind, raw[:start] + raw[rng.randrange(len(raw)) :][:n] + raw[start:]


def mutate_h5_bytes(raw: bytes, rng: random.Random) -> tuple[str, bytes]:
    kind = rng.choice(["truncate", "flip", "flip-header", "flip-header"])
    if kind == "truncate":
        return kind, raw[: rng.randrange(len(raw))]
    if kind == "flip":
        return kind, _flip(raw, rng, k=rng.randint(1, 16))
    return kind, _flip(raw, rng, 0, 4096, k=rng.randint(1, 4))


def _objects(f: h5py.File) -> list[str]:
    names: list[str] = []
    f.visit(names.append)
    return names


def mutate_h5_structure(path: Path, rng: random.Random) -> str:
    """Edit a copy of an .h5mu in place with h5py; returns a description."""
    with h5py.File(path, "r+") as f:
        names = _objects(f)
        datasets = [n for n in names if isinstance(f[n], h5py.Dataset)]
        kind = rng.choice(["delete", "delete", "values", "values", "attr", "strings", "reshape"])
        if kind == "delete":
            victim = rng.choice(names)
            del f[victim]
            return f"delete {victim}"
        if kind == "values":
            numeric = [n for n in datasets if f[n].dtype.kind in "iuf" and f[n].size]
            victim = rng.choice(numeric)
            d = f[victim]
            arr = d[()]
            flat = arr.reshape(-1) if arr.ndim else arr.reshape(1)
            special = [0, -1, 1, 2**31 - 1, -(2**31), 10**6]
            if d.dtype.kind == "f":
                special += [np.nan, np.inf, -np.inf, 1e30]
            for _ in range(rng.randint(1, 3)):
                value = rng.choice(special)
                try:
                    flat[rng.randrange(flat.size)] = value
                except (OverflowError, ValueError):
                    flat[rng.randrange(flat.size)] = 0
            d[()] = flat.reshape(arr.shape)
            return f"values {victim}"
        if kind == "attr":
            owners = [n for n in names if len(f[n].attrs)]
            victim = rng.choice(owners)
            key = rng.choice(sorted(f[victim].attrs))
            value = rng.choice(["nonsense", "", np.asarray([64, 10**9]), np.asarray([-1, 4]), 0,
                                np.asarray(["a", "b"], dtype=object), np.asarray([], dtype=float)])
            f[victim].attrs[key] = value
            return f"attr {victim}@{key}={value!r}"
        strings = [n for n in datasets if f[n].dtype.kind == "O" and f[n].size]
        if kind == "strings":
            victim = rng.choice(strings)
            values = [v.decode() if isinstance(v, bytes) else str(v) for v in f[victim][:]]
            i = rng.randrange(len(values))
            values[i] = rng.choice(["", "N" * 256, "acgt" * 64, "X" * 256, values[i][::-1], values[0], "é" * 3])
            attrs = dict(f[victim].attrs)
            del f[victim]
            f.create_dataset(victim, data=np.asarray(values, dtype=object), dtype=h5py.string_dtype())
            f[victim].attrs.update(attrs)
            return f"strings {victim}[{i}]"
        victim = rng.choice(datasets)  # reshape: drop or repeat an element
        arr = f[victim][()]
        attrs = dict(f[victim].attrs)
        if arr.ndim == 0 or arr.shape[0] == 0:
            return "noop"
        arr = arr[:-1] if rng.random() < 0.5 else np.concatenate([arr, arr[-1:]])
        del f[victim]
        f.create_dataset(victim, data=arr, dtype=h5py.string_dtype() if arr.dtype.kind == "O" else arr.dtype)
        f[victim].attrs.update(attrs)
        return f"reshape {victim} -> {arr.shape}"


# ------------------------------------------------------------------------------------------------ the test


def _build_cases(upstream: Path, root: Path) -> list[dict]:
    rng = random.Random(SEED)
    ck_src = upstream / "models" / "GENE0.pt"
    data_src = {"per-gene": upstream / "models" / "GENE0.h5mu", "full": upstream / "full.h5mu"}
    ck_raw = ck_src.read_bytes()
    span = _pickle_span(ck_src)
    cases = []

    def new_case(label: str) -> tuple[Path, Path, Path]:
        d = root / f"case{len(cases):03d}"
        (d / "in").mkdir(parents=True)
        (d / "out").mkdir()
        return d / "in" / "GENE0.pt", d / "in" / "data.h5mu", d / "out"

    for _ in range(N_CHECKPOINT):
        kind, raw = mutate_checkpoint(ck_raw, span, rng)
        ck, data, out = new_case(kind)
        ck.write_bytes(raw)
        layout = rng.choice(sorted(data_src))
        shutil.copyfile(data_src[layout], data)
        cases.append({"what": f"checkpoint {kind} ({layout} data)", "ck": ck, "data": data, "out": out})
    for _ in range(N_DATA_BYTES):
        layout = rng.choice(sorted(data_src))
        kind, raw = mutate_h5_bytes(data_src[layout].read_bytes(), rng)
        ck, data, out = new_case(kind)
        shutil.copyfile(ck_src, ck)
        data.write_bytes(raw)
        cases.append({"what": f"{layout} data bytes {kind}", "ck": ck, "data": data, "out": out})
    for _ in range(N_DATA_STRUCT):
        layout = rng.choice(sorted(data_src))
        ck, data, out = new_case("struct")
        shutil.copyfile(ck_src, ck)
        shutil.copyfile(data_src[layout], data)
        what = mutate_h5_structure(data, rng)
        cases.append({"what": f"{layout} data {what}", "ck": ck, "data": data, "out": out})
    for c in cases:
        c["args"] = ["run", str(c["ck"]), str(c["data"]), "--covariates", COVARIATES, "-o", str(c["out"] / "GENE0.h5"),
                     "--n-steps", "4", "--batch-size", "16", "-q"]
    return cases


def _check(case: dict, res: dict) -> str | None:
    """None when the contract holds, else what went wrong."""
    err = res["stderr"]
    left = sorted(p.name for p in case["out"].iterdir())
    if res["exit"] == "hang":
        return f"hang (over {PER_CASE_S}s)"
    if "Traceback" in err or "Traceback" in res["stdout"] or res["exception"]:
        return f"traceback/exception {res['exception']}: {err[-500:]}"
    if res["exit"] == 0:
        if left != ["GENE0.h5"]:
            return f"exit 0 but the output directory holds {left}"
        with h5py.File(case["out"] / "GENE0.h5", "r") as f:
            attr, obs, tfs = f["attributions"], f["obs_names"], f["tf_names"]
            if attr.ndim != 2 or attr.shape != (len(obs), len(tfs)) or attr.shape[1] != 7:
                return f"exit 0 but attributions have shape {attr.shape} for {len(obs)} cells, {len(tfs)} TFs"
        return None
    if res["exit"] != 2:
        return f"exit {res['exit']}: {err[-500:]}"
    lines = [ln for ln in err.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error: ")]
    if len(errors) != 1 or lines[-1] != errors[0] or len(lines) > 3:
        return f"exit 2 but stderr is not one error line: {err[-500:]!r}"
    named = errors[0][len("error: "):].split(": ")[0]
    if named not in (str(case["ck"]), str(case["data"])) and not named.startswith("--"):
        return f"the message names neither an input nor a flag: {errors[0]}"
    if left:
        return f"exit 2 but left {left}"
    return None


def test_fuzz_checkpoints_and_h5mu(upstream, tmp_path):
    cases = _build_cases(upstream, tmp_path)
    hashes = [sha256_tree(c["ck"], c["data"]) for c in cases]
    spec = tmp_path / "cases.json"
    spec.write_text(json.dumps([c["args"] for c in cases]))
    proc = subprocess.run([sys.executable, "-c", DRIVER, str(spec), str(PER_CASE_S)], capture_output=True, text=True,
                          timeout=PER_CASE_S * 2 + 4 * len(cases), cwd=tmp_path)
    events = [json.loads(ln) for ln in proc.stdout.splitlines() if ln.startswith("{")]
    results = {e["case"]: e for e in events if "case" in e}
    started = [e["start"] for e in events if "start" in e]
    if proc.returncode != 0 or len(results) != len(cases):
        last = started[-1] if started else None
        what = cases[last]["what"] if last is not None else "before the first case"
        pytest.fail(f"the fuzz driver died (rc {proc.returncode}) in case {last}: {what}\n{proc.stderr[-3000:]}")

    problems = []
    outcomes = {0: 0, 2: 0}
    for i, case in enumerate(cases):
        res = results[i]
        bad = _check(case, res)
        if sha256_tree(case["ck"], case["data"]) != hashes[i]:
            bad = (bad or "") + " (an input changed)"
        if bad:
            problems.append(f"case {i} [{case['what']}]: {bad}")
        else:
            outcomes[res["exit"]] += 1
    assert not problems, "\n".join(problems)
    # the fuzz must exercise both outcomes, or it is not testing much
    assert outcomes[0] >= 1 and outcomes[2] >= len(cases) // 3, outcomes


@pytest.mark.parametrize("seed", [1, 2])
def test_fuzz_idx_strings(upstream, tmp_path, monkeypatch, seed):
    """Random --idx text: exit 0 or one clean --idx error, in-process (no C code involved)."""
    from typer.testing import CliRunner

    from cell2net_attr.cli import app

    monkeypatch.chdir(tmp_path)
    rng = random.Random(seed)
    alphabet = list("0123456789:-,@ _abcxyzCGT") + ["cell_00001_C", "cell_00063_T", "\t", "é"]
    out = tmp_path / "out"
    out.mkdir()
    runner = CliRunner()
    for _ in range(12):
        idx = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        target = out / "x.npy"
        r = runner.invoke(app, ["run", str(upstream / "models" / "GENE0.pt"), str(upstream / "models" / "GENE0.h5mu"),
                                "--covariates", COVARIATES, "-o", str(target), "--n-steps", "2", "-q", "--idx", idx])
        assert r.exit_code in (0, 2), (idx, r.exit_code, r.stderr)
        assert "Traceback" not in r.stderr
        if r.exit_code == 2:
            lines = r.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("error: "), (idx, r.stderr)
            assert [p.name for p in out.iterdir()] == []
        else:
            assert np.load(target).shape[1] == 7
            target.unlink()
            (out / ".x.npy.run.json").unlink()  # its run identity, kept beside a .npy
