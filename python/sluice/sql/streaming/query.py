"""``StreamingQuery`` (the handle of a running query) and ``spark.streams``."""

import json
import threading
import time

from sluice.errors import StreamingQueryException


# the keys of PySpark's progress, in its order
_PROGRESS_KEYS = (
    "id", "runId", "name", "timestamp", "batchId", "batchDuration", "durationMs", "eventTime",
    "stateOperators", "sources", "sink", "numInputRows", "inputRowsPerSecond",
    "processedRowsPerSecond", "observedMetrics",
)


def _progress(text):
    """A batch's progress as PySpark gives it: Spark's keys in Spark's order (``batchDuration``
    is the trigger's execution time; ``eventTime`` and ``observedMetrics`` empty when there is
    nothing to say), then Sluice's own (``dataQuality`` when the query has expectations)."""
    p = json.loads(text)
    p.setdefault("batchDuration", p.get("durationMs", {}).get("triggerExecution", 0))
    p.setdefault("eventTime", {})
    p.setdefault("observedMetrics", {})
    out = {k: p[k] for k in _PROGRESS_KEYS if k in p}
    out.update((k, v) for k, v in p.items() if k not in out)
    return out


class StreamingQuery:
    """A running (or finished) streaming query."""

    def __init__(self, native, spark):
        self._q = native
        self._spark = spark

    @property
    def id(self):
        return self._q.id()

    @property
    def runId(self):
        return self._q.run_id()

    @property
    def name(self):
        return self._q.name()

    @property
    def isActive(self):
        return self._q.is_active()

    @property
    def status(self):
        return json.loads(self._q.status_json())

    @property
    def lastProgress(self):
        p = self._q.last_progress_json()
        return None if p is None else _progress(p)

    @property
    def recentProgress(self):
        return [_progress(p) for p in self._q.recent_progress_json()]

    def awaitTermination(self, timeout=None):
        """Waits for the query to end; with a timeout (seconds), whether it ended in time.
        Raises ``StreamingQueryException`` if it failed; Ctrl-C stops it cleanly, then raises
        ``KeyboardInterrupt``."""
        if timeout is not None and (not isinstance(timeout, (int, float)) or timeout < 0):
            raise ValueError("timeout must be a positive integer or float. Got %s" % timeout)
        try:
            if timeout is not None:
                return self._q.await_termination(float(timeout))
            self._q.await_termination(None)
            return None
        except KeyboardInterrupt:
            # (the native wait stops it too; a Ctrl-C between Python lines lands here)
            self._q.stop()
            raise

    def processAllAvailable(self):
        self._q.process_all_available()

    def stop(self):
        self._q.stop()

    def exception(self):
        msg = self._q.exception()
        return None if msg is None else StreamingQueryException(msg)

    def explain(self, extended=False):
        print(self._q.plan() or "")

    def __repr__(self):
        return "<StreamingQuery id=%s name=%s>" % (self.id, self.name)


class StreamingQueryManager:
    """``spark.streams``: the session's queries."""

    def __init__(self, spark):
        self._spark = spark
        self._queries = []
        self._lock = threading.Lock()
        self._terminated = []

    def _started(self, q):
        with self._lock:
            self._queries.append(q)

    @property
    def active(self):
        with self._lock:
            return [q for q in self._queries if q.isActive]

    def get(self, id):
        for q in self.active:
            if q.id == id:
                return q
        return None

    def awaitAnyTermination(self, timeout=None):
        """Waits until any query of the session ends (or ``timeout`` seconds); raises the
        exception of a query that failed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                queries = list(self._queries)
            for q in queries:
                if not q.isActive and q not in self._terminated:
                    self._terminated.append(q)
                    e = q.exception()
                    if e is not None:
                        raise e
                    return True
            active = [q for q in queries if q.isActive]
            if not active:
                return True if timeout is None else False
            remaining = 0.1 if deadline is None else min(0.1, deadline - time.monotonic())
            if remaining <= 0:
                return False
            active[0].awaitTermination(remaining)

    def resetTerminated(self):
        with self._lock:
            self._terminated = [q for q in self._queries if not q.isActive]
