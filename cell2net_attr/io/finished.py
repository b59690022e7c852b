"""The finished parts of an output that is written once, at the end of a job: kept on disk until then.

A job whose one output gathers many genes (``run-many --summary``: one table) writes it when every gene is
done. Meanwhile each finished gene's result is saved here, a ``.npz`` of named arrays and the gene's identity,
written atomically under ``.<output>.partial/``: a job that is interrupted or killed keeps the genes it
finished, and its rerun takes them instead of computing them again. ``meta.json`` records what the output is
(its identity); a store of another output is discarded, with a warning.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .partial import partial_dir
from .writers import os_error, plain_value

_IDENTITY = "identity_json"  # the entry of a gene's .npz holding its identity, as JSON text


class FinishedParts:
    """Finished genes' results for ``out``, until ``out`` is written (see the module docstring)."""

    def __init__(self, out: Path, meta: dict, warn: Callable[[str], None]) -> None:
        self.out, self.dir = Path(out), partial_dir(Path(out))
        self.meta = json.loads(json.dumps(meta, default=plain_value))
        meta_file = self.dir / "meta.json"
        if self.dir.exists():
            try:
                saved = json.loads(meta_file.read_text())
            except (OSError, ValueError):
                saved = None
            if saved != self.meta:
                warn(f"discarding the finished genes in {self.dir}: they are of another run")
                shutil.rmtree(self.dir, ignore_errors=True)
        try:
            self.dir.mkdir(exist_ok=True)
            meta_file.write_text(json.dumps(self.meta, indent=1, sort_keys=True))
        except OSError as exc:
            raise os_error(exc, self.out) from exc
        self._warn = warn

    def path(self, key: str) -> Path:
        """Where ``key``'s result is kept (named by a digest: a gene name need not be a file name)."""
        return self.dir / f"part-{hashlib.sha256(key.encode()).hexdigest()[:24]}.npz"

    def save(self, key: str, identity: dict, arrays: dict[str, np.ndarray]) -> None:
        """Keep ``key``'s result (atomically: whole or absent)."""
        buf = io.BytesIO()
        record = {"key": key, "identity": identity}
        np.savez(buf, **arrays, **{_IDENTITY: np.asarray(json.dumps(record, default=plain_value))})
        final = self.path(key)
        tmp = final.with_name(f".{final.name}.{os.getpid()}")
        try:
            with open(tmp, "wb") as fh:
                fh.write(buf.getvalue())
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, final)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise os_error(exc, self.out) from exc

    def load(self) -> dict[str, tuple[dict, dict[str, np.ndarray]]]:
        """Every kept result: key -> (identity, arrays). A damaged file is left out, with a warning."""
        found = {}
        for path in sorted(self.dir.glob("part-*.npz")):
            try:
                with np.load(path) as z:
                    record = json.loads(str(z[_IDENTITY]))
                    arrays = {k: z[k] for k in z.files if k != _IDENTITY}
            except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
                self._warn(f"{path} is damaged ({type(exc).__name__}); its gene is computed again")
                continue
            found[record["key"]] = (record["identity"], arrays)
        return found

    def discard(self) -> None:
        """Remove the store (the output is written)."""
        shutil.rmtree(self.dir, ignore_errors=True)
