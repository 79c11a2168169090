"""The GIL and threads: Ctrl-C in awaitTermination stops the query cleanly; a query keeps
running while the Python thread that started it waits on something else."""

import os
import signal
import subprocess
import sys
import threading

from conftest import PROGRAMS, write_lines


def test_ctrl_c_in_await_termination_stops_the_query(tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    write_lines(inp / "a.txt", ["one", "two"])
    p = subprocess.Popen(
        [sys.executable, str(PROGRAMS / "await_ctrl_c.py"), str(inp), str(tmp_path / "chk")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert p.stdout.readline().strip() == "ready 2"
        os.kill(p.pid, signal.SIGINT)
        out, err = p.communicate(timeout=60)
    finally:
        p.kill()
    assert p.returncode == 3, err
    assert out.strip() == "interrupted active=False exception=None"
    assert (tmp_path / "chk" / "commits" / "0").exists()


def test_query_runs_while_python_waits_elsewhere(spark, tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    q = (
        spark.readStream.text(str(inp))
        .writeStream.format("memory")
        .queryName("waiting")
        .option("checkpointLocation", str(tmp_path / "chk"))
        .start()
    )
    done = threading.Event()


    def watch():
        # another thread waits for the query's progress while the main thread is blocked on
        # the event (not in any Sluice call)
        while q.isActive:
            p = q.lastProgress
            if p and sum(x["numInputRows"] for x in q.recentProgress) == 3:
                done.set()
                return
            q.awaitTermination(0.05)

    t = threading.Thread(target=watch)
    t.start()
    write_lines(inp / "a.txt", ["x", "y", "z"])
    assert done.wait(60), "the query did not process the file while Python waited"
    t.join()
    q.stop()
    assert sorted(r.value for r in spark.sql("SELECT * FROM waiting").collect()) == ["x", "y", "z"]
