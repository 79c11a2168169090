"""PySpark's ``pyspark.sql.functions`` over Sluice's engine. Column arguments are names or
Columns (PySpark's ``ColumnOrName``); the functions resolve by Spark's name in the engine's
function registry when the column is used, so an unknown one is an ``AnalysisException`` there."""

import functools

from sluice import _native
from sluice.sql.column import Column, _col, _name, _spark_pos
from sluice.sql.udf import UserDefinedFunction


def _c(v):
    return _col(v)._c


def _lit(v):
    return v._c if isinstance(v, Column) else _native.Column.lit(v)


def _fn(name, *cols):
    return Column(_native.Column.call(name, [_c(c) for c in cols]))


def col(col):
    return Column(_native.Column.col(col))


column = col


def lit(col):
    return col if isinstance(col, Column) else Column(_native.Column.lit(col))


def expr(str):
    return Column(_native.Column.expr(str))


# --- windows, JSON, generators ---------------------------------------------------------------

def window(timeColumn, windowDuration, slideDuration=None, startTime=None):
    return Column(_native.window(_c(timeColumn), windowDuration, slideDuration, startTime))


def session_window(timeColumn, gapDuration):
    if isinstance(gapDuration, Column):
        raise TypeError("session_window: a dynamic gap (a Column) is not supported; give a duration string")
    return Column(_native.session_window(_c(timeColumn), gapDuration))


def window_time(windowColumn):
    return Column(_native.window_time(_c(windowColumn)))


def from_json(col, schema, options=None):
    from sluice.sql.types import DataType

    if options:
        raise ValueError("from_json: options are not supported yet: %r" % (options,))
    ddl = schema.toDDL() if hasattr(schema, "toDDL") else (
        schema.simpleString() if isinstance(schema, DataType) else schema
    )
    return Column(_native.from_json(_c(col), ddl))


def to_json(col, options=None):
    if options:
        raise ValueError("to_json: options are not supported yet: %r" % (options,))
    return Column(_native.to_json(_c(col)))


def explode(col):
    return Column(_native.explode(_c(col), False, False))


def explode_outer(col):
    return Column(_native.explode(_c(col), False, True))


def posexplode(col):
    return Column(_native.explode(_c(col), True, False))


def posexplode_outer(col):
    return Column(_native.explode(_c(col), True, True))


def split(str, pattern, limit=-1):
    return Column(_native.Column.call("split", [_c(str), _lit(pattern), _lit(limit)]))


def asc(col):
    return _col(col).asc()


def desc(col):
    return _col(col).desc()


# --- conditionals -------------------------------------------------------------------------------

def when(condition, value):
    branches = [(_lit(condition), _lit(value))]
    return Column(_native.case(branches, None), branches)


def coalesce(*cols):
    return _fn("coalesce", *cols)


def isnull(col):
    return _col(col).isNull()


def isnotnull(col):
    return _col(col).isNotNull()


def greatest(*cols):
    return _fn("greatest", *cols)


def least(*cols):
    return _fn("least", *cols)


# --- time -----------------------------------------------------------------------------------------

def current_timestamp():
    return Column(_native.Column.call("now", []))


now = current_timestamp


def current_date():
    return Column(_native.Column.call("current_date", []))


def to_timestamp(col, format=None):
    if format is None:
        return _col(col).cast("timestamp")
    raise ValueError("to_timestamp: a format is not supported yet; timestamps are read as ISO 8601")


def to_date(col, format=None):
    if format is None:
        return _col(col).cast("date")
    raise ValueError("to_date: a format is not supported yet; dates are read as ISO 8601")


def _part(name):
    def f(col):
        return _fn(name, col)

    f.__name__ = name
    return f


year = _part("year")
month = _part("month")
dayofmonth = _part("dayofmonth")
dayofweek = _part("dayofweek")
hour = _part("hour")
minute = _part("minute")
second = _part("second")
quarter = _part("quarter")


# --- strings --------------------------------------------------------------------------------------

def concat(*cols):
    """Spark's concat: NULL if any input is NULL (SQL's ``||``)."""
    out = _col(cols[0])
    for c in cols[1:]:
        out = Column(out._c.binary("||", _col(c)._c, False))
    return out


def concat_ws(sep, *cols):
    return Column(_native.Column.call("concat_ws", [_lit(sep)] + [_c(c) for c in cols]))


def regexp_replace(string, pattern, replacement):
    return Column(
        _native.Column.call("regexp_replace", [_c(string), _lit(pattern), _lit(replacement), _lit("g")])
    )


def substring(str, pos, len):
    return Column(_native.Column.call("substr", [_c(str), _lit(_spark_pos(pos)), _lit(len)]))


def format_string(format, *cols):
    raise ValueError("format_string is not supported yet; use concat")


def _one(name, df_name=None):
    def f(col):
        return _fn(df_name or name, col)

    f.__name__ = name
    return f


for _name in (
    "upper", "lower", "trim", "ltrim", "rtrim", "length", "reverse", "initcap",
    "abs", "sqrt", "exp", "log10", "log2", "ceil", "floor", "signum", "sin", "cos", "tan",
    "md5", "sha256", "size", "ascii",
):
    globals()[_name] = _one(_name)

ln = _one("ln")


def log(arg1, arg2=None):
    if arg2 is None:
        return _fn("ln", arg1)
    return Column(_native.Column.call("log", [_lit(arg1), _c(arg2)]))


def round(col, scale=0):
    return Column(_native.Column.call("round", [_c(col), _lit(scale)]))


def pow(col1, col2):
    return Column(_native.Column.call("power", [_lit(col1) if not isinstance(col1, str) else _c(col1), _lit(col2) if not isinstance(col2, str) else _c(col2)]))


def array_contains(col, value):
    return Column(_native.Column.call("array_has", [_c(col), _lit(value)]))


def element_at(col, extraction):
    return Column(_native.Column.call("array_element", [_c(col), _lit(extraction)]))


def array(*cols):
    if len(cols) == 1 and isinstance(cols[0], (list, tuple)):
        cols = cols[0]
    return _fn("make_array", *cols)


def struct(*cols):
    if len(cols) == 1 and isinstance(cols[0], (list, tuple)):
        cols = cols[0]
    args = []
    for c in cols:
        args += [_native.Column.lit(_name(c)), _c(c)]
    return Column(_native.Column.call("named_struct", args))


# --- aggregates -------------------------------------------------------------------------------

def count(col):
    if isinstance(col, str) and col == "*":
        return Column(_native.count_star())
    return _fn("count", col)


def countDistinct(col, *cols):
    return Column(_native.count_distinct([_c(c) for c in (col,) + cols]))


count_distinct = countDistinct


for _name in (
    "sum", "avg", "mean", "min", "max", "first", "last", "collect_list", "stddev",
    "stddev_samp", "stddev_pop", "variance", "var_samp", "var_pop", "approx_count_distinct",
    "median",
):
    globals()[_name] = _one(_name)


def collect_set(col):
    return expr("array_agg(DISTINCT `%s`) FILTER (WHERE `%s` IS NOT NULL)" % (_name(col), _name(col)))


def sum_distinct(col):
    return expr("sum(DISTINCT `%s`)" % _name(col))


# --- Python functions ---------------------------------------------------------------------------

def udf(f=None, returnType="string", useArrow=None):
    """A Python function over values; called with whole Arrow batches (the loop over the
    batch's values runs in Python, for the rows of one batch at a time)."""
    if f is None or isinstance(f, (str,)) or hasattr(f, "simpleString"):
        rt = returnType if f is None else f
        return functools.partial(udf, returnType=rt)
    return UserDefinedFunction(f, returnType, kind="row")


def pandas_udf(f=None, returnType=None, functionType=None):
    """A vectorised Python function: pandas Series in, a pandas Series out, once per batch."""
    if f is None or isinstance(f, str) or hasattr(f, "simpleString"):
        rt = returnType if f is None else f
        return functools.partial(pandas_udf, returnType=rt)
    if returnType is None:
        raise ValueError("pandas_udf needs a returnType")
    if functionType not in (None, 200, "SCALAR"):
        raise ValueError(
            "pandas_udf: functionType %r is not supported; Series to Series (SCALAR) only" % (functionType,)
        )
    return UserDefinedFunction(f, returnType, kind="pandas")


def arrow_udf(f=None, returnType=None):
    """A vectorised Python function over pyarrow arrays."""
    if f is None or isinstance(f, str) or hasattr(f, "simpleString"):
        rt = returnType if f is None else f
        return functools.partial(arrow_udf, returnType=rt)
    return UserDefinedFunction(f, returnType, kind="arrow")
