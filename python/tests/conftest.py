"""Shared fixtures: a session per test, the repository's golden data, PostgreSQL access."""

import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
GOLDEN = REPO / "testdata" / "golden" / "spark-window"
PROGRAMS = pathlib.Path(__file__).resolve().parent / "programs"


@pytest.fixture
def spark():
    from sluice.sql import SparkSession

    s = SparkSession.builder.appName("pytest").getOrCreate()
    yield s
    s.stop()


def write_lines(path, lines):
    """Writes a file whole, then renames it into place (a file that arrives complete)."""
    tmp = path.parent / ("." + path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in lines))
    os.rename(tmp, path)


def run_program(name, *args, env=None, check=True):
    """Runs tests/programs/<name> in a new Python process (for kills and restarts)."""
    e = dict(os.environ)
    e.update(env or {})
    p = subprocess.run(
        [sys.executable, str(PROGRAMS / name), *map(str, args)],
        env=e,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if check and p.returncode != 0:
        raise AssertionError("%s exited %d:\n%s\n%s" % (name, p.returncode, p.stdout, p.stderr))
    return p


def pg_url():
    return os.environ.get("SLUICE_TEST_PG_URL", "postgres://sluice:sluice@127.0.0.1:5432/postgres")


def psql(db, sql):
    """Rows of `sql` in database `db`, as `a|b` lines, read with the real psql client."""
    url = pg_url()
    rest = url.split("://", 1)[1]
    creds, hostpart = rest.rsplit("@", 1)
    user, password = creds.split(":", 1)
    hostport = hostpart.split("/", 1)[0]
    host, _, port = hostport.partition(":")
    out = subprocess.run(
        ["psql", "-X", "-A", "-t", "-q", "-F", "|", "-v", "ON_ERROR_STOP=1", "-h", host,
         "-p", port or "5432", "-U", user, "-d", db, "-c", sql],
        env=dict(os.environ, PGPASSWORD=password, PGTZ="UTC", PGCONNECT_TIMEOUT="5"),
        capture_output=True,
        text=True,
        check=True,
    )
    return [line for line in out.stdout.splitlines() if line]
