"""Peak windows on the genome and placing variants in them, against upstream's variant fixtures."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cell2net_attr.data.peak_windows import (HIT_COLUMNS, OUTSIDE, WindowIndex, chrom_naming_hint, name_window,
                                             parse_peak_name, peak_windows)
from cell2net_attr.data.variants import SKIP_COLUMNS, read_variants
from cell2net_attr.errors import UserError

# --- names and the two window rules ---------------------------------------------------------------


@pytest.mark.parametrize("name,want", [
    ("chr1-1000-1500", ("chr1", 1000, 1500)),
    ("chr1:1000-1500", ("chr1", 1000, 1500)),
    ("chr1_1000_1500", ("chr1", 1000, 1500)),
    ("chrUn_KI270302v1-10-20", ("chrUn_KI270302v1", 10, 20)),
    ("HLA-A*01:01-5-9", ("HLA-A*01:01", 5, 9)),
    ("1-5-9", ("1", 5, 9)),
])
def test_parse_peak_name(name, want):
    assert parse_peak_name(name) == want


@pytest.mark.parametrize("name", ["chr1", "chr1-100", "chr1-100-2x0", "-100-200", "peak_17", "chr1-1e3-2e3"])
def test_unparsable_names(name):
    assert parse_peak_name(name) is None
    with pytest.raises(UserError, match=f"data.h5mu: peak '{name}'"):
        name_window(name, 256, "data.h5mu")


def test_name_rule_is_upstream_add_peaks():
    # mid = (start + end) // 2; window [mid - L // 2, mid - L // 2 + L)
    assert name_window("chr1-4000-4500", 256) == ("chr1", 4122, 4378)
    assert name_window("chr1-101-200", 5) == ("chr1", 148, 153)  # mid 150 (floor), 5 // 2 = 2
    assert name_window("chr2:0-10", 256) == ("chr2", -123, 133)


def test_peak_windows_by_name_and_by_columns():
    seqs = ["acgtn" * 2, "A" * 10]
    by_name = peak_windows(["chr1-100-200", "chr2:0-10"], seqs)
    assert by_name[["peak", "chrom", "start", "end"]].values.tolist() == [
        ["chr1-100-200", "chr1", 145, 155], ["chr2:0-10", "chr2", 0, 10]]
    assert by_name["sequence"].tolist() == ["ACGTNACGTN", "A" * 10]
    assert by_name["start"].dtype == np.int64
    # start/end columns win over the name; the name need not parse when chrom is given
    cols = peak_windows(["chr1-100-200", "p2"], seqs, chrom=["chr1", "chr9"], start=[7, 30.0], end=[17, 40])
    assert cols[["chrom", "start", "end"]].values.tolist() == [["chr1", 7, 17], ["chr9", 30, 40]]
    # start/end without chrom: the chromosome is the name's
    assert peak_windows(["chr1-100-200"], seqs[:1], start=[7], end=[17])["chrom"].tolist() == ["chr1"]


@pytest.mark.parametrize("kw,what", [
    (dict(start=[0], end=[9]), "peak 'chr1-100-200': its window start 0, end 9 spans 9 bp but its stored sequence has 10"),
    (dict(start=[0]), "has a start column but no end column"),
    (dict(end=[10]), "has an end column but no start column"),
    (dict(start=[np.nan], end=[10]), "its start nan is not an integer"),
    (dict(start=[0.5], end=[10]), "its start 0.5 is not an integer"),
    (dict(chrom=["chr2"]), "its chromosome column says 'chr2' but its name says 'chr1'"),
    (dict(chrom=[None]), "no chromosome"),
])
def test_window_errors_name_the_peak(kw, what):
    with pytest.raises(UserError) as info:
        peak_windows(["chr1-100-200"], ["A" * 10], source="data.h5mu", **kw)
    assert str(info.value).startswith("data.h5mu: ") and what in str(info.value)


def test_window_errors_for_names_and_sequences():
    with pytest.raises(UserError, match="peak 'p1': the peak table has no start/end columns"):
        peak_windows(["p1"], ["A" * 10])
    with pytest.raises(UserError, match="peak 'p1': the peak table has no chromosome column"):
        peak_windows(["p1"], ["A" * 10], start=[0], end=[10])
    with pytest.raises(UserError, match="peak 'chr1-1-2': its stored sequence is float"):
        peak_windows(["chr1-1-2"], [np.nan])


# --- placing variants ---------------------------------------------------------------------------


def _snvs(rows):
    return pd.DataFrame([(c, p, r, a, f"v{i}", i + 2) for i, (c, p, r, a) in enumerate(rows)],
                        columns=["chrom", "pos", "ref", "alt", "id", "line"])


def _small_index():
    #            0123456789
    windows = peak_windows(["pA", "pB", "pC"], ["ACGTNACGTA", "cgtnacgtac", "TTTTT"], chrom=["chr1", "chr1", "chr2"],
                           start=[100, 101, 0], end=[110, 111, 5])
    genes = pd.DataFrame({"gene": ["G2", "G1", "G1", "G2"], "peak": ["pA", "pA", "pB", "pC"]})
    return WindowIndex(windows, genes, source="data.h5mu")


def test_overlapping_windows_several_genes_and_skips():
    index = _small_index()
    got = index.place(_snvs([
        ("chr1", 102, "C", "G"),  # pA offset 1 (C) for G2 and G1; pB offset 0 (C) for G1
        ("chr1", 105, "A", "T"),  # pA offset 4 is N; pB offset 3 is N
        ("chr1", 104, "T", "A"),  # pA offset 3 (T); pB offset 2 (t, stored lower case)
        ("chr1", 111, "C", "A"),  # pB offset 9 only (pA ends at 110)
        ("chr1", 101, "A", "G"),  # pA offset 0 only (0-based 100)
        ("chr1", 100, "A", "G"),  # 0-based 99: before every window
        ("chr2", 3, "G", "A"),    # pC has T: another genome build?
        ("chrX", 3, "G", "A"),    # no window on chrX
    ]))
    assert tuple(got.hits.columns) == HIT_COLUMNS and tuple(got.skipped.columns) == SKIP_COLUMNS
    assert got.hits[["variant", "gene", "peak", "offset"]].values.tolist() == [
        [0, "G2", "pA", 1], [0, "G1", "pA", 1], [0, "G1", "pB", 0],  # gene_peaks row order within a variant
        [2, "G2", "pA", 3], [2, "G1", "pA", 3], [2, "G1", "pB", 2],
        [3, "G1", "pB", 9],
        [4, "G2", "pA", 0], [4, "G1", "pA", 0],
    ]
    assert got.hits["id"].tolist()[:3] == ["v0"] * 3 and got.hits["line"].tolist()[0] == 2
    skipped = got.skipped[["id", "kind", "peak"]].values.tolist()
    assert skipped == [["v1", "stored_n", "pA"], ["v1", "stored_n", "pB"], ["v5", "outside", ""],
                       ["v6", "ref_mismatch", "pC"], ["v7", "outside", ""]]
    reasons = got.skipped["reason"].tolist()
    assert reasons[0] == "the stored sequence has N at chr1:105 (peak pA, offset 4): no base to change"
    assert reasons[2] == OUTSIDE == "outside every modelled peak window"
    assert reasons[3] == "REF G but the stored sequence has T at chr2:3 (peak pC, offset 2): another genome build?"


def test_only_modelled_peaks_are_searched_and_unknown_peaks_are_errors():
    windows = peak_windows(["chr1-0-10", "chr1-100-110"], ["A" * 10] * 2)
    index = WindowIndex(windows, pd.DataFrame({"gene": ["G"], "peak": ["chr1-100-110"]}))
    got = index.place(_snvs([("chr1", 3, "A", "C"), ("chr1", 103, "A", "C")]))
    assert got.hits["variant"].tolist() == [1] and got.skipped["kind"].tolist() == ["outside"]
    with pytest.raises(UserError, match=r"data.h5mu: peak\(s\) \['nope'\] of the modelled genes have no window"):
        WindowIndex(windows, pd.DataFrame({"gene": ["G"], "peak": ["nope"]}), source="data.h5mu")
    twice = pd.concat([windows, windows.assign(start=windows["start"] + 1, end=windows["end"] + 1)])
    with pytest.raises(UserError, match="peak 'chr1-0-10' has two different windows"):
        WindowIndex(twice)
    assert len(WindowIndex(pd.concat([windows, windows])).windows) == 2  # the same row twice is one window


def test_overlaps_is_a_keep_filter_for_read_variants(tmp_path):
    index = _small_index()
    lines = ["#CHROM\tPOS\tID\tREF\tALT"] + [f"chr1\t{p}\t.\tA\tC" for p in range(90, 120)]
    lines += ["chr1\t99\tdel\tAAT\tA", "chr2\t6\t.\tT\tA", "chr3\t1\t.\tT\tA"]
    path = tmp_path / "v.vcf"
    path.write_text("\n".join(lines) + "\n")
    got = read_variants(path, chroms=index.chroms, keep=index.overlaps, chunk_size=4)
    assert got.snvs["pos"].tolist() == list(range(101, 112))  # 1-based 101..111 = 0-based [100, 111)
    assert got.skipped["id"].tolist() == ["del"]  # REF span [98, 101) reaches pA
    assert index.chroms == {"chr1", "chr2"} and got.n_records == 33


def test_chrom_naming_hint():
    hint = chrom_naming_hint({"1", "2"}, {"chr1", "chr7"})
    assert "chromosomes like '1', the peaks like 'chr1'" in hint and "'chr' prefix" in hint
    assert "the peaks like 'chrM'" in chrom_naming_hint({"MT"}, {"chrM", "chr1"})
    assert "the peaks like '7'" in chrom_naming_hint({"chr7"}, {"7"})
    assert chrom_naming_hint({"chr1", "chrZ"}, {"chr1"}) is None
    assert "the peaks on ['chr1']" in chrom_naming_hint({"scaffold9"}, {"chr1"})


# --- brute force: the vectorised search is an exact interval query ---------------------------------


def _brute_find(windows, chroms, pos0):
    pairs = []
    for q, (c, p) in enumerate(zip(chroms, pos0)):
        for w, row in enumerate(windows.itertuples()):
            if row.chrom == c and row.start <= p < row.end:
                pairs.append((q, w))
    return pairs


_window = st.tuples(st.sampled_from(["chr1", "chr2", "3"]), st.integers(-20, 120), st.integers(0, 70))
_query = st.tuples(st.sampled_from(["chr1", "chr2", "3", "chrX"]), st.integers(-30, 200), st.integers(0, 80))


@pytest.mark.slow
@settings(max_examples=150, deadline=None)
@given(st.lists(_window, min_size=1, max_size=25), st.lists(_query, min_size=0, max_size=40))
def test_find_and_overlaps_equal_brute_force(windows, queries):
    table = pd.DataFrame({"peak": [f"p{i}" for i in range(len(windows))], "chrom": [w[0] for w in windows],
                          "start": [w[1] for w in windows], "end": [w[1] + w[2] for w in windows],
                          "sequence": ["A" * w[2] for w in windows]})
    index = WindowIndex(table)
    # besides the random ones, query every window's edges: start - 1, start, end - 1, end
    queries = queries + [(c, x, 1) for c, s, n in windows for x in (s - 1, s, s + n - 1, s + n)]
    chroms = np.array([q[0] for q in queries], dtype=object)
    pos0 = np.array([q[1] for q in queries], dtype=np.int64)
    q, w = index.find(chroms, pos0)
    # index.windows keeps the table's rows (all are modelled), so window numbers are comparable
    assert index.windows["peak"].tolist() == table["peak"].tolist()
    assert list(zip(q.tolist(), w.tolist())) == _brute_find(table, chroms, pos0)
    ends = pos0 + np.array([q[2] for q in queries], dtype=np.int64)
    want = [any(c == r.chrom and s < r.end and r.start < e for r in table.itertuples())
            for c, s, e in zip(chroms, pos0, ends)]
    assert index.overlaps(chroms, pos0, ends).tolist() == want


# --- upstream fixtures: the manifest's variants, written as VCF and TSV, come back exactly ----------


@pytest.fixture(scope="module")
def full(upstream):
    import mudata as md

    return md.read_h5mu(upstream / "full.h5mu")


@pytest.fixture(scope="module")
def ism_manifest(upstream):
    return json.loads((upstream / "ref" / "ism" / "manifest.json").read_text())


def _fixture_index(full, **columns):
    table = full["atac"].uns["peaks"]
    assert not {"start", "end"} & set(table.columns)  # these fixtures follow the name rule
    windows = peak_windows(table.index.tolist(), table["sequence"].tolist(), chrom=table["chr"].tolist(), **columns)
    return WindowIndex(windows, full.uns["peak_to_gene"][["gene", "peak"]], source="full.h5mu")


def _manifest_rows(ism_manifest):
    return [(g, r) for g, m in ism_manifest["models"].items() for r in m["variants"]["rows"]]


def _write_variants(path, rows, kind):
    if kind == "vcf.gz":
        text = "##fileformat=VCFv4.2\n#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n" + "".join(
            f"{c}\t{p}\t{i}\t{r}\t{a}\t.\tPASS\t.\n" for c, p, i, r, a in rows)
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text("id\tchrom\tpos\tref\talt\n" + "".join(f"{i}\t{c}\t{p}\t{r}\t{a}\n" for c, p, i, r, a in rows))
    return path


@pytest.mark.parametrize("kind", ["vcf.gz", "tsv"])
def test_manifest_variants_map_back_to_their_peak_and_offset(full, ism_manifest, tmp_path, kind):
    index = _fixture_index(full)
    rows, want = [], []
    for n, (gene, r) in enumerate(_manifest_rows(ism_manifest)):
        chrom, start, _ = name_window(r["peak"], 256)  # README: VCF position = window start + offset + 1
        rows.append((chrom, start + r["offset"] + 1, f"{gene}_{n}", r["ref"], r["alt"]))
        want.append((f"{gene}_{n}", gene, r["peak"], r["offset"], r["ref"], r["alt"]))
    got_file = read_variants(_write_variants(tmp_path / f"v.{kind}", rows, kind), chroms=index.chroms,
                             keep=index.overlaps)
    assert len(got_file.snvs) == len(rows) and got_file.skipped.empty
    placed = index.place(got_file.snvs)
    assert placed.skipped.empty
    got = [tuple(x) for x in placed.hits[["id", "gene", "peak", "offset", "ref", "alt"]].values.tolist()]
    assert got == want
    # REF is the stored base, read independently from the file
    seqs = full["atac"].uns["peaks"]["sequence"]
    assert all(seqs[peak][offset] == ref for _, _, peak, offset, ref, _ in got)


def test_start_end_columns_equal_to_the_name_rule_give_the_same_hits(full, ism_manifest):
    table = full["atac"].uns["peaks"]
    spans = [name_window(p, len(s)) for p, s in zip(table.index, table["sequence"])]
    by_name, by_cols = _fixture_index(full), _fixture_index(full, start=[s[1] for s in spans],
                                                            end=[s[2] for s in spans])
    rows = _manifest_rows(ism_manifest)
    snvs = _snvs([(name_window(r["peak"], 256)[0], name_window(r["peak"], 256)[1] + r["offset"] + 1, r["ref"], r["alt"])
                  for _, r in rows])
    assert by_name.place(snvs).hits.equals(by_cols.place(snvs).hits)
    # one base off (an 0/1-based slip in start/end): the manifest's REF bases mostly no longer match
    shifted = _fixture_index(full, start=[s[1] + 1 for s in spans], end=[s[2] + 1 for s in spans])
    off = shifted.place(snvs)
    assert len(off.hits) + len(off.skipped) == len(rows)
    assert off.skipped["kind"].isin(["ref_mismatch", "stored_n"]).all() and len(off.skipped) >= len(rows) // 2
    assert all("another genome build?" in t for t in off.skipped["reason"][off.skipped["kind"] == "ref_mismatch"])


def test_stored_n_of_the_fixture_is_a_skip(full, ism_manifest):
    gene = "GENE0"
    peak = ism_manifest["models"][gene]["peaks"][ism_manifest["models"][gene]["peaks_with_N"][0]]
    seq = full["atac"].uns["peaks"]["sequence"][peak]
    offset = seq.index("N")
    chrom, start, _ = name_window(peak, len(seq))
    got = _fixture_index(full).place(_snvs([(chrom, start + offset + 1, "A", "C")]))
    assert got.hits.empty and got.skipped["kind"].tolist() == ["stored_n"]
    assert got.skipped["reason"].iloc[0].startswith(f"the stored sequence has N at {chrom}:{start + offset + 1} "
                                                    f"(peak {peak}, offset {offset})")


def test_empty_inputs_give_empty_tables_with_the_columns():
    index = WindowIndex(peak_windows(["chr1-0-10"], ["A" * 10]))
    none = pd.DataFrame({c: pd.Series([], dtype=object) for c in ("chrom", "ref", "alt", "id")}).assign(
        pos=np.array([], np.int64), line=np.array([], np.int64))
    got = index.place(none)
    assert got.hits.empty and got.skipped.empty and tuple(got.hits.columns) == HIT_COLUMNS
    nothing = WindowIndex(peak_windows([], []))
    assert nothing.chroms == frozenset()
    assert nothing.place(_snvs([("chr1", 3, "A", "C")])).skipped["kind"].tolist() == ["outside"]
    assert not nothing.overlaps(np.array(["chr1"], dtype=object), np.array([2]), np.array([3])).any()


def test_index_checks_hand_built_tables():
    table = pd.DataFrame({"peak": ["p"], "chrom": ["chr1"], "start": [10], "end": [19], "sequence": ["acgtacgtac"]})
    with pytest.raises(UserError, match="x.h5mu: peak 'p': window start 10, end 19 does not fit its stored sequence"):
        WindowIndex(table, source="x.h5mu")
    with pytest.raises(UserError, match="peak 'chr1-0-99999999999999': its window .* is outside any chromosome"):
        peak_windows(["chr1-0-99999999999999"], ["A" * 4])
    index = WindowIndex(table.assign(end=20))  # lower case stored bases compare as upper case
    assert index.place(_snvs([("chr1", 11, "A", "C")])).hits["offset"].tolist() == [0]
