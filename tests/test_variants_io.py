"""Reading variant files: VCF and tables, plain and compressed, skip reasons, and every parse error."""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from cell2net_attr.data.variants import SKIP_COLUMNS, SKIP_KINDS, SNV_COLUMNS, classify, read_variants
from cell2net_attr.errors import UserError

HEADER = "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO"
VCF = "\n".join([
    "##fileformat=VCFv4.2",
    "##contig=<ID=chr1,length=100000>",
    HEADER,
    "chr1\t100\trs1\tA\tG\t50\tPASS\t.",
    "chr1\t200\t.\tc\tt\t.\t.\t.",
    "",
    "2\t300\trs3;rs3b\tG\tA\t.\t.\tDP=3",
    "chr1\t400\tdel1\tAT\tA\t.\t.\t.",
]) + "\n"


def _write(path: Path, text: str, newline: str = "\n") -> Path:
    path.write_bytes(text.replace("\n", newline).encode())
    return path


def _bgzip(data: bytes, block: int = 50) -> bytes:
    """BGZF as bgzip writes it: gzip members with a BC extra field, then the empty EOF member."""
    out = b""
    for chunk in [data[i:i + block] for i in range(0, len(data), block)] + [b""]:
        comp = zlib.compressobj(6, zlib.DEFLATED, -15)
        body = comp.compress(chunk) + comp.flush()
        head = b"\x1f\x8b\x08\x04" + b"\0\0\0\0" + b"\0\xff" + struct.pack("<H", 6)
        out += head + b"BC" + struct.pack("<HH", 2, len(body) + 25) + body
        out += struct.pack("<II", zlib.crc32(chunk), len(chunk))
    return out


def _error(path: Path, **kw) -> str:
    with pytest.raises(UserError) as info:
        read_variants(path, **kw)
    message = str(info.value)
    assert message.startswith(str(path) + ":"), message
    return message


# --- VCF ----------------------------------------------------------------------------------------


def test_vcf_records_ids_lines_and_case(tmp_path):
    got = read_variants(_write(tmp_path / "a.vcf", VCF))
    assert got.format == "vcf" and got.n_records == 4 and got.n_dropped == 0
    assert tuple(got.snvs.columns) == SNV_COLUMNS and tuple(got.skipped.columns) == SKIP_COLUMNS
    assert got.snvs.values.tolist() == [
        ["chr1", 100, "A", "G", "rs1", 4],
        ["chr1", 200, "C", "T", "chr1:200:C:T", 5],  # lower case read as upper; '.' id -> chrom:pos:ref:alt
        ["2", 300, "G", "A", "rs3;rs3b", 7],  # no chr prefix added; the line number counts the blank line
    ]
    assert got.skipped[["id", "line", "kind"]].values.tolist() == [["del1", 8, "indel"]]
    assert got.snvs["pos"].dtype == np.int64 and got.snvs["line"].dtype == np.int64
    assert got.chroms_seen == {"chr1", "2"}


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
@pytest.mark.parametrize("pack", ["plain", "gzip", "bgzip"])
def test_vcf_compressed_and_crlf_read_the_same(tmp_path, pack, newline):
    data = VCF.replace("\n", newline).encode()
    data = {"plain": data, "gzip": gzip.compress(data), "bgzip": _bgzip(data)}[pack]
    path = tmp_path / ("a.vcf" if pack == "plain" else "a.vcf.gz")
    path.write_bytes(data)
    got = read_variants(path)
    ref = read_variants(_write(tmp_path / "ref.vcf", VCF))
    assert got.snvs.equals(ref.snvs) and got.skipped.equals(ref.skipped)
    assert not any("\r" in str(v) for v in got.snvs.values.ravel())


def test_gzip_is_told_by_content_not_name(tmp_path):
    plain = _write(tmp_path / "named.vcf.gz", VCF)  # plain text with a .gz name
    zipped = tmp_path / "named.vcf"
    zipped.write_bytes(gzip.compress(VCF.encode()))
    assert read_variants(plain).snvs.equals(read_variants(zipped).snvs)


def test_minimal_vcf_without_meta_lines_and_samples(tmp_path):
    text = "#CHROM\tPOS\tID\tREF\tALT\nchr1\t5\t.\tA\tC\n"
    got = read_variants(_write(tmp_path / "m.vcf", text))
    assert got.format == "vcf" and got.snvs["id"].tolist() == ["chr1:5:A:C"]


def test_vcf_with_samples_and_comment_after_header(tmp_path):
    text = f"{HEADER}\tFORMAT\tS1\tS2\nchr1\t5\tx\tA\tC\t.\t.\t.\tGT\t0|1\t1|1\n#a comment\nchr1\t6\ty\tA\tT\t.\t.\t.\tGT\t0|0\t0|1\n"
    got = read_variants(_write(tmp_path / "s.vcf", text))
    assert got.snvs["id"].tolist() == ["x", "y"] and got.snvs["line"].tolist() == [2, 4]


# --- tables -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,sep", [("t.tsv", "\t"), ("t.csv", ","), ("t.txt", " "), ("t.txt", "  ")])
def test_table_separators_order_case_and_extra_columns(tmp_path, name, sep):
    rows = [["#Alt", "Chrom", "score", "POS", "ref", "ID"], ["G", "chr1", "0.5", "100", "A", "rs1"],
            ["t", "chrX", "1", "7", "c", "."], ["C", "chr2", "2", "9", "A", "-"]]
    text = "\n".join(sep.join(r) for r in rows) + "\n"
    got = read_variants(_write(tmp_path / name, text))
    assert got.format == "table"
    assert got.snvs.values.tolist() == [["chr1", 100, "A", "G", "rs1", 2], ["chrX", 7, "C", "T", "chrX:7:C:T", 3],
                                        ["chr2", 9, "A", "C", "-", 4]]


def test_table_without_id_column_gzip_and_quotes(tmp_path):
    text = 'chrom,pos,ref,alt\n"chr1", 10, A, T\r\nchr1,11,A,<DEL>\n'
    path = tmp_path / "t.csv.gz"
    path.write_bytes(gzip.compress(text.encode()))
    got = read_variants(path)
    assert got.snvs.values.tolist() == [["chr1", 10, "A", "T", "chr1:10:A:T", 2]]
    assert got.skipped[["id", "kind"]].values.tolist() == [["chr1:11:A:<DEL>", "symbolic"]]


def test_table_empty_ref_and_alt_fields_are_skips(tmp_path):
    text = "chrom\tpos\tref\talt\nchr1\t1\t\tA\nchr1\t2\tA\t\n"
    got = read_variants(_write(tmp_path / "t.tsv", text))
    assert got.skipped["kind"].tolist() == ["missing_ref", "missing_alt"] and got.snvs.empty


# --- skip reasons -------------------------------------------------------------------------------

SKIPS = [
    ("A", ".", "missing_alt", "no ALT allele ('.')"),
    ("A", "C,G", "multiallelic", "multi-allelic ALT 'C,G'"),
    ("A", "<DEL>", "symbolic", "symbolic or breakend ALT '<DEL>'"),
    ("N", "N[chr2:321682[", "symbolic", "breakend ALT 'N[chr2:321682['"),
    ("A", "]chr13:123456]A", "symbolic", "breakend"),
    ("A", "*", "symbolic", "ALT '*'"),
    ("A", ".A", "symbolic", "ALT '.A'"),
    ("AT", "A", "indel", "indel (REF 'AT', ALT 'A')"),
    ("A", "AGT", "indel", "indel"),
    ("A", "-", "indel", "indel (REF 'A', ALT '-')"),
    ("AT", "GC", "mnv", "multi-base substitution (REF 'AT', ALT 'GC')"),
    ("N", "A", "not_acgt", "REF 'N' is not one of A, C, G, T"),
    ("A", "R", "not_acgt", "ALT 'R' is not one of A, C, G, T"),
    ("a", "A", "same_base", "ALT 'A' is the same base as REF"),
]


@pytest.mark.parametrize("ref,alt,kind,text", SKIPS, ids=[f"{k}:{a}" for _, a, k, _ in SKIPS])
def test_every_skip_reason_from_a_vcf(tmp_path, ref, alt, kind, text):
    assert classify(ref, alt)[0] == kind
    path = _write(tmp_path / "s.vcf", f"{HEADER}\nchr1\t10\t.\t{ref}\t{alt}\t.\t.\t.\nchr1\t11\tok\tA\tC\t.\t.\t.\n")
    got = read_variants(path)
    assert got.snvs["id"].tolist() == ["ok"]
    row = got.skipped.iloc[0]
    assert (row["kind"], row["line"], row["id"], row["ref"], row["alt"]) == (kind, 2, f"chr1:10:{ref}:{alt}", ref, alt)
    assert text in row["reason"] and kind in SKIP_KINDS and row["peak"] == ""


@pytest.mark.parametrize("ref,alt", [(a, b) for a in "ACGTacgt" for b in "ACGTacgt" if a.upper() != b.upper()])
def test_every_substitution_is_scorable(ref, alt):
    assert classify(ref, alt) is None


# --- errors: file and line named ------------------------------------------------------------------


@pytest.mark.parametrize("body,where,what", [
    ("", None, "empty file"),
    ("\n  \n\r\n", None, "empty file"),
    (f"{HEADER}\nchr1\tx12\t.\tA\tC\t.\t.\t.\n", "line 2", "position 'x12' is not an integer"),
    (f"{HEADER}\nchr1\t0\t.\tA\tC\t.\t.\t.\n", "line 2", "position 0 is below 1"),
    (f"{HEADER}\nchr1\t-5\t.\tA\tC\t.\t.\t.\n", "line 2", "not an integer"),
    (f"{HEADER}\nchr1\t1.5\t.\tA\tC\t.\t.\t.\n", "line 2", "not an integer"),
    (f"{HEADER}\n\nchr1\t5\t.\tA\tC\t.\t.\n", "line 3", "7 fields, the #CHROM header has 8"),
    (f"{HEADER}\nchr1 5 . A C . . .\n", "line 2", "fields must be separated by tabs"),
    (f"{HEADER}\n\t5\t.\tA\tC\t.\t.\t.\n", "line 2", "empty CHROM"),
    ("##fileformat=VCFv4.2\nchr1\t5\t.\tA\tC\n", "line 2", "a data line before the #CHROM header"),
    ("##fileformat=VCFv4.2\n#CHROM\tPOS\tREF\tALT\n", "line 2", "must start with #CHROM, POS, ID, REF, ALT"),
    ("##fileformat=VCFv4.2\n##source=x\n", None, "no #CHROM header line"),
    ("gene\tscore\nGATA1\t3\n", "line 1", "no column 'chrom', 'pos', 'ref', 'alt'"),
    ("chrom\tpos\tref\n", "line 1", "no column 'alt'"),
    ("chrom\tpos\tref\talt\tpos\n", "line 1", "names column 'pos' twice"),
    ("chrom\tpos\tref\talt\nchr1\t5\tA\n", "line 2", "3 fields, the header line has 4"),
    ("chrom,pos,ref,alt\nchr1,5,A,C\nchr1,five,A,C\n", "line 3", "position 'five' is not an integer"),
])
def test_parse_errors_name_file_and_line(tmp_path, body, where, what):
    message = _error(_write(tmp_path / "bad.vcf", body))
    assert what in message and (where is None or f": {where}: " in message), message


def test_binary_junk_and_nul_bytes(tmp_path):
    junk = tmp_path / "junk.vcf"
    junk.write_bytes(bytes(np.random.default_rng(0).integers(128, 256, 400, dtype=np.uint8)))
    assert "not UTF-8 text" in _error(junk) and "line 1" in _error(junk)
    nul = tmp_path / "nul.vcf"
    nul.write_bytes(HEADER.encode() + b"\nchr1\t5\t.\tA\tC\t.\t.\t.\n\x00\x01BAM\n")
    assert ": line 3: NUL bytes" in _error(nul)
    # a gzip-compressed binary file (a BAM is BGZF): decompresses fine, then is no text
    bam = tmp_path / "reads.vcf.gz"
    bam.write_bytes(_bgzip(b"BAM\x01" + bytes(range(256))))
    assert "binary file" in _error(bam)


def test_truncated_and_corrupt_gzip(tmp_path):
    data = gzip.compress((VCF * 50).encode())
    cut = tmp_path / "cut.vcf.gz"
    cut.write_bytes(data[: len(data) // 2])
    assert "the gzip stream is truncated" in _error(cut)
    bad = tmp_path / "bad.vcf.gz"
    bad.write_bytes(data[:10] + b"\xff" * 40 + data[50:])
    assert "the gzip stream is unreadable" in _error(bad)


def test_missing_file_and_directory(tmp_path):
    assert "no such file" in _error(tmp_path / "absent.vcf")
    assert "is a directory" in _error(tmp_path)


# --- streaming filters --------------------------------------------------------------------------


def _many(tmp_path: Path, n: int) -> Path:
    rows = [f"chr{1 + i % 3}\t{i + 1}\tv{i}\t{'ACGT'[i % 4]}\t{'CGTA'[i % 4]}\t.\t.\t." for i in range(n)]
    rows[7] = "chr2\t8\tv7\tAT\tA\t.\t.\t."  # an indel: its REF span is 2 bp
    return _write(tmp_path / "many.vcf", HEADER + "\n" + "\n".join(rows) + "\n")


def test_chroms_filter_drops_early_but_counts(tmp_path):
    got = read_variants(_many(tmp_path, 100), chroms={"chr2"})
    assert set(got.snvs["chrom"]) == {"chr2"} and got.n_records == 100
    assert len(got.snvs) + len(got.skipped) == 33 and got.n_dropped == 67
    assert got.chroms_seen == {"chr1", "chr2", "chr3"}


@pytest.mark.parametrize("chunk_size", [1, 7, 1000])
def test_keep_filter_gets_ref_spans_in_chunks(tmp_path, chunk_size):
    calls = []

    def keep(chrom, start, end):
        calls.append(len(chrom))
        assert chrom.dtype == object and start.dtype == np.int64 and end.dtype == np.int64
        return (start < 20) & (end > 5)  # 0-based half-open: pos 7..20

    got = read_variants(_many(tmp_path, 100), keep=keep, chunk_size=chunk_size)
    assert got.snvs["pos"].tolist() == [p for p in range(6, 21) if p != 8]
    assert got.skipped["pos"].tolist() == [8]
    assert max(calls) <= chunk_size and sum(calls) == 100


def test_keep_filter_sees_indel_span_reaching_in(tmp_path):
    # the indel at pos 8 spans [7, 9): only its second base meets [8, 9); a 1-bp span [7, 8) would not
    got = read_variants(_many(tmp_path, 20), keep=lambda c, s, e: (s < 8) & (e > 8))
    assert got.snvs.empty and got.skipped["pos"].tolist() == [8]


def test_filtered_lines_are_still_checked(tmp_path):
    path = _write(tmp_path / "f.vcf", f"{HEADER}\nchr9\tbad\t.\tA\tC\t.\t.\t.\n")
    assert ": line 2: position 'bad'" in _error(path, chroms={"chr1"})


def test_header_only_vcf_is_empty_not_an_error(tmp_path):
    got = read_variants(_write(tmp_path / "h.vcf", "##fileformat=VCFv4.2\n" + HEADER + "\n"))
    assert got.snvs.empty and got.skipped.empty and got.n_records == 0
    assert tuple(got.snvs.columns) == SNV_COLUMNS and got.snvs["pos"].dtype == np.int64
