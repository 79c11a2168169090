"""foreachBatch with pandas: exactly-once output across a SIGKILL and restart. The process is
killed after the function wrote batch 1 but before the batch was committed; on restart batch 1 is
handed over again with the same batch_id (as Spark does), so the output files equal those of an
uninterrupted run and no row is counted twice."""

import json
import signal

from conftest import run_program, write_lines


def stage(d):
    d.mkdir()
    for i in range(4):
        write_lines(
            d / ("part-%d.json" % i),
            [json.dumps({"word": w, "n": i * 10 + j}) for j, w in enumerate("abcab")],
        )


def outputs(d):
    return {p.name: p.read_text() for p in sorted(d.iterdir())}


def test_foreach_batch_pandas_exactly_once_across_kill(tmp_path):
    inp = tmp_path / "in"
    stage(inp)
    # uninterrupted
    ref_out, ref_log = tmp_path / "ref", tmp_path / "ref.log"
    ref_out.mkdir()
    run_program("foreach_pandas.py", inp, ref_out, tmp_path / "ref-chk", ref_log)
    assert ref_log.read_text().split("\n")[:-1] == ["0 5", "1 5", "2 5", "3 5"]
    # killed after the sink of batch 1, then restarted
    out, log, chk = tmp_path / "out", tmp_path / "out.log", tmp_path / "chk"
    out.mkdir()
    p = run_program(
        "foreach_pandas.py", inp, out, chk, log, env={"SLUICE_CRASH_AT": "after-sink@1"}, check=False
    )
    assert p.returncode == -signal.SIGKILL, p.stderr
    assert log.read_text().split("\n")[:-1] == ["0 5", "1 5"]
    assert not (chk / "commits" / "1").exists()
    run_program("foreach_pandas.py", inp, out, chk, log)
    # batch 1 handed over again with the same id and the same rows; nothing else twice
    assert log.read_text().split("\n")[:-1] == ["0 5", "1 5", "1 5", "2 5", "3 5"]
    assert outputs(out) == outputs(ref_out)
    assert len(outputs(out)) == 4
