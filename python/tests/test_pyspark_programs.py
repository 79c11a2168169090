"""Unchanged PySpark programs (tests/pyspark_programs, from Spark's Python documentation) run
with only their import lines changed, and print what PySpark 4.3 printed for the same input
(expected/, written by run_pyspark.sh from real PySpark runs). Console tables are compared
batch by batch with their rows sorted (Spark's row order within a batch is arbitrary)."""

import os
import pathlib
import re
import subprocess
import sys

import pytest

HERE = pathlib.Path(__file__).resolve().parent / "pyspark_programs"

PROGRAMS = {
    "word_count": "text",
    "windowed_word_count": "events",
    "watermark_word_count": "events",
    "foreach_batch": "events",
}


def to_sluice(source):
    """The program with its import lines changed from pyspark to sluice, nothing else."""
    out = []
    for line in source.splitlines(keepends=True):
        if re.match(r"\s*(from|import)\s+pyspark\b", line):
            line = re.sub(r"\bpyspark\b", "sluice", line)
        out.append(line)
    changed = [a for a, b in zip(source.splitlines(), "".join(out).splitlines()) if a != b]
    assert changed and all(re.match(r"\s*(from|import) ", a) for a in changed)
    return "".join(out)


def batches(text):
    """Console-sink output as {batch id: sorted table rows} (empty batches left out), plus the
    other lines the program printed."""
    result, other, current = {}, [], None
    for line in text.splitlines():
        m = re.match(r"Batch: (\d+)$", line)
        if m:
            current = int(m.group(1))
            continue
        if line.startswith("|") and current is not None:
            cells = tuple(c.strip() for c in line.strip("|").split("|"))
            result.setdefault(current, []).append(cells)
        elif line.startswith("+") or line.startswith("-----"):
            continue
        elif line.strip():
            other.append(line)
    tables = {b: sorted(rows[1:]) for b, rows in result.items() if len(rows) > 1}
    headers = {rows[0] for rows in result.values()}
    return tables, headers, other


def run(py, program, tmp_path, engine):
    inp = tmp_path / "input"
    if not inp.exists():
        subprocess.run([sys.executable, str(HERE / "make_input.py"), PROGRAMS[program], str(inp)], check=True)
    script = tmp_path / ("%s-%s.py" % (program, engine))
    source = (HERE / (program + ".py")).read_text()
    script.write_text(to_sluice(source) if engine == "sluice" else source)
    p = subprocess.run(
        [py, str(script), str(inp), str(tmp_path / ("chk-" + engine)), str(tmp_path / ("out-" + engine))],
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, TZ="UTC"),
    )
    assert p.returncode == 0, p.stderr
    return p.stdout


@pytest.mark.parametrize("program", sorted(PROGRAMS))
def test_unchanged_pyspark_program(program, tmp_path):
    got = batches(run(sys.executable, program, tmp_path, "sluice"))
    want = batches((HERE / "expected" / (program + ".out")).read_text())
    assert got == want
    spark_py = os.environ.get("SLUICE_TEST_SPARK_PYTHON")
    if spark_py:  # the same program run live with PySpark on the same input
        assert batches(run(spark_py, program, tmp_path, "pyspark")) == want
