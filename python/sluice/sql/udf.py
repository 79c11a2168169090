"""Python functions in a stream (``pandas_udf``, ``udf``, ``arrow_udf``): the engine hands a
whole batch's argument columns over as pyarrow arrays, once per batch chunk; this module turns
them into pandas Series (``pandas_udf``) or values (``udf``) and the result back into Arrow."""

import pyarrow as pa

from sluice import _native
from sluice.sql.column import Column, _col
from sluice.sql.types import ddl_of


class UserDefinedFunction:
    """A Python function usable as a column function: ``f(col("x"))``."""

    def __init__(self, func, returnType, kind):
        self.func = func
        self.returnType = returnType
        self.evalType = kind
        self.__name__ = getattr(func, "__name__", "udf")
        self._native = _native.Udf(self.__name__, self._call, ddl_of(returnType))

    def _call(self, arrays, num_rows):
        if self.evalType == "pandas":
            out = self.func(*[a.to_pandas() for a in arrays])
            if len(out) != num_rows:
                raise ValueError(
                    "pandas_udf %s returned %d values for %d rows" % (self.__name__, len(out), num_rows)
                )
            return pa.Array.from_pandas(out)
        if self.evalType == "arrow":
            out = self.func(*arrays)
            return out if isinstance(out, pa.Array) else pa.array(out)
        if not arrays:
            return pa.array([self.func() for _ in range(num_rows)])
        lists = [a.to_pylist() for a in arrays]
        return pa.array([self.func(*row) for row in zip(*lists)])

    def __call__(self, *cols):
        return Column(self._native.call([_col(c)._c for c in cols]))
