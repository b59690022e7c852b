"""What a downstream input is, and the one-line refusal that says so and names the command that takes it.

Our HDF5 and AnnData outputs declare their kind in their ``encoding-type`` (see
:data:`~cell2net_attr.io.schema.ENCODING_TYPES`); TSV/CSV tables carry no attributes, so the tool's own
tables are told by their columns (:func:`table_kind`). The data (MuData) and checkpoints are told by their
``encoding-type`` and their first bytes.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from ..io.reader import declared_kind

#: What each kind of file is, in a message.
WHAT = {
    "attributions": "an attribution file (cells x TFs or peaks), written by `run` / `run-many`",
    "summary": "a summary (statistics per gene, group and TF or peak), written by `summarize`",
    "activity": "an activity table (TF x group), written by `activity`",
    "top_tfs": "a list of the top variable TFs per group, written by `activity --top-out`",
    "mutagenesis": "a saturation mutagenesis output (effects per peak, position and base), written by `mutagenesis`",
    "variants": "a table of variant effects (per cell), written by `variants`",
    "data": "the data file (MuData .h5mu)",
    "checkpoint": "a model checkpoint (.pt)",
}
#: What to do with a file of each kind instead.
ADVICE = {
    "attributions": "summarize, activity and plot take it",
    "summary": "give it to activity or plot",
    "activity": "plot --kind heatmap draws it",
    "top_tfs": "it is a result to read, not an input",
    "mutagenesis": "it is a result to read (cell2net_attr.io.mutagenesis_io.read_mutagenesis, anndata)",
    "variants": "it is a result to read (anndata.read_h5ad)",
    "data": "give it with --data, and the attribution files as arguments",
    "checkpoint": "`run` computes attribution files from it, which summarize, activity and plot take",
}
#: The kinds each command takes, and how its help says so.
ACCEPTS = {"summarize": ("attributions",), "activity": ("attributions", "summary"),
           "plot": ("attributions", "summary", "activity")}
TAKES = {"summarize": "summarize takes attribution files (run, run-many outputs)",
         "activity": "activity takes summaries (summarize tables or .h5ad) or attribution files",
         "plot": "plot takes summaries, activity tables (drawn as a heatmap) or attribution files"}

_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt")


def table_kind(columns: list[str]) -> str:
    """``summary``, ``activity`` or ``top_tfs`` by a table's header (as this tool writes them), else ``""``."""
    cols = [str(c) for c in columns]
    if "gene" in cols and "mean_attr" in cols:
        return "summary"
    if cols and cols[0] == "rank" and "mean_attr" not in cols:
        return "top_tfs"
    if cols and cols[0] in ("tf", "peak") and "gene" not in cols and "mean_attr" not in cols and len(cols) > 1:
        return "activity"
    return ""


def file_kind(path: str | Path) -> str:
    """The kind of an HDF5 or checkpoint file (a key of :data:`WHAT`), ``""`` when it does not say (an attribution
    file written before outputs declared themselves, or a file that is none of ours: its reader decides)."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            magic = fh.read(4)
    except OSError:
        return ""
    if magic == b"PK\x03\x04" or (path.suffix.lower() in _CHECKPOINT_SUFFIXES and not magic.startswith(b"\x89HDF")):
        return "checkpoint"  # torch.save writes a zip (an old one a pickle)
    declared = declared_kind(path)
    return "data" if declared == "mudata" else declared if declared in WHAT else ""


def refusal(path: str | Path, kind: str, command: str) -> UserError:
    """The error for giving ``command`` a file of ``kind`` it does not take."""
    if kind == "data":
        return UserError(f"this is {WHAT[kind]}: {ADVICE[kind]}", path)
    return UserError(f"this is {WHAT[kind]}; {TAKES[command]} ({ADVICE[kind]})", path)


def data_refusal(path: str | Path, kind: str) -> UserError:
    """The error for giving ``--data`` a file that is not the data."""
    return UserError(f"{path} is {WHAT[kind]}, not data: --data takes the .h5mu (MuData) whose obs holds the "
                     f"--groupby column", param="data")
