"""``Column``: PySpark's column expression. Operators and methods build the engine's
expression (``sluice._native.Column``), resolved against the DataFrame that uses it."""

from sluice import _native
from sluice.sql.types import ddl_of


def _n(v):
    """The native column of a Column or a literal value."""
    if isinstance(v, Column):
        return v._c
    return _native.Column.lit(v)


def _name(c):
    """The name of a column given as a name or a Column reference (``col("x")``)."""
    return c if isinstance(c, str) else c._c.text_


def _col(v):
    """A column given as a name or a Column (PySpark's ``ColumnOrName``)."""
    if isinstance(v, Column):
        return v
    if isinstance(v, str):
        return Column(_native.Column.col(v))
    raise TypeError("expected a column name or a Column, got %r" % (v,))


class Column:
    """A column expression (``df.word``, ``col("word")``, ``F.lit(1)``, ``a + b``)."""

    __slots__ = ("_c", "_case", "_sort")

    def __init__(self, native, case=None, sort=None):
        self._c = native
        self._case = case
        # (ascending, nulls first) for orderBy
        self._sort = sort

    # sort order (Spark: ascending puts NULLs first, descending last)
    def asc(self):
        return Column(self._c, None, (True, True))

    def asc_nulls_first(self):
        return Column(self._c, None, (True, True))

    def asc_nulls_last(self):
        return Column(self._c, None, (True, False))

    def desc(self):
        return Column(self._c, None, (False, False))

    def desc_nulls_first(self):
        return Column(self._c, None, (False, True))

    def desc_nulls_last(self):
        return Column(self._c, None, (False, False))

    # comparison and arithmetic
    def _bin(self, op, other, reverse=False):
        return Column(self._c.binary(op, _n(other), reverse))

    def __eq__(self, other):
        return self._bin("==", other)

    def __ne__(self, other):
        return self._bin("!=", other)

    def __lt__(self, other):
        return self._bin("<", other)

    def __le__(self, other):
        return self._bin("<=", other)

    def __gt__(self, other):
        return self._bin(">", other)

    def __ge__(self, other):
        return self._bin(">=", other)

    def eqNullSafe(self, other):
        return self._bin("<=>", other)

    def __add__(self, other):
        return self._bin("+", other)

    def __radd__(self, other):
        return self._bin("+", other, True)

    def __sub__(self, other):
        return self._bin("-", other)

    def __rsub__(self, other):
        return self._bin("-", other, True)

    def __mul__(self, other):
        return self._bin("*", other)

    def __rmul__(self, other):
        return self._bin("*", other, True)

    def __truediv__(self, other):
        # Spark's `/` is fractional division
        return Column(self._c.cast("double"))._bin("/", other)

    def __rtruediv__(self, other):
        return Column(_native.Column.lit(other).cast("double"))._bin("/", self)

    def __mod__(self, other):
        return self._bin("%", other)

    def __rmod__(self, other):
        return self._bin("%", other, True)

    def __and__(self, other):
        return self._bin("&", other)

    def __rand__(self, other):
        return self._bin("&", other, True)

    def __or__(self, other):
        return self._bin("|", other)

    def __ror__(self, other):
        return self._bin("|", other, True)

    def __invert__(self):
        return Column(self._c.not_())

    def __neg__(self):
        return Column(self._c.neg())

    def __bool__(self):
        raise ValueError(
            "Cannot convert column into bool: please use '&' for 'and', '|' for 'or', "
            "'~' for 'not' when building DataFrame boolean expressions."
        )

    __hash__ = None

    # names and types
    def alias(self, *alias, **kwargs):
        if kwargs:
            raise ValueError("alias: %s not supported (column metadata is not kept)" % sorted(kwargs))
        return Column(self._c.alias(*alias))

    name = alias

    def cast(self, dataType):
        return Column(self._c.cast(ddl_of(dataType)))

    astype = cast

    # predicates
    def isNull(self):
        return Column(self._c.is_null())

    def isNotNull(self):
        return Column(self._c.is_not_null())

    def isin(self, *cols):
        if len(cols) == 1 and isinstance(cols[0], (list, set, tuple)):
            cols = tuple(cols[0])
        return Column(self._c.isin([_n(c) for c in cols]))

    def between(self, lowerBound, upperBound):
        return Column(self._c.between(_n(lowerBound), _n(upperBound)))

    def like(self, other):
        return Column(self._c.like(other))

    def rlike(self, other):
        return Column(_native.Column.call("regexp_like", [self._c, _native.Column.lit(other)]))

    def contains(self, other):
        return Column(_native.Column.call("strpos", [self._c, _n(other)]))._bin(">", 0)

    def startswith(self, other):
        return Column(_native.Column.call("starts_with", [self._c, _n(other)]))

    def endswith(self, other):
        return Column(_native.Column.call("ends_with", [self._c, _n(other)]))

    def substr(self, startPos, length):
        return Column(_native.Column.call("substr", [self._c, _n(_spark_pos(startPos)), _n(length)]))

    # struct fields
    def getField(self, name):
        return Column(self._c.get_field(name))

    def getItem(self, key):
        if isinstance(key, str):
            return self.getField(key)
        # arrays: Spark's getItem is 0-based, SQL's element access 1-based
        if not isinstance(key, int) or key < 0:
            raise ValueError("getItem: an array index is a non-negative int, got %r" % (key,))
        return Column(_native.Column.call("array_element", [self._c, _n(key + 1)]))

    def __getitem__(self, key):
        return self.getItem(key)

    def __getattr__(self, item):
        if item.startswith("_"):
            raise AttributeError(item)
        return self.getField(item)

    # CASE WHEN
    def when(self, condition, value):
        if self._case is None:
            raise TypeError("when() can only be applied on a Column previously generated by when()")
        branches = self._case + [(_col_or_lit(condition), _col_or_lit(value))]
        return Column(_native.case(branches, None), branches)

    def otherwise(self, value):
        if self._case is None:
            raise TypeError("otherwise() can only be applied on a Column previously generated by when()")
        return Column(_native.case(self._case, _col_or_lit(value)))

    def __str__(self):
        return str(self._c)

    __repr__ = __str__


def _spark_pos(pos):
    """Spark's 1-based string position: 0 counts as 1; negative ones (from the end) are refused."""
    if isinstance(pos, int):
        if pos < 0:
            raise ValueError("substring: a negative position (from the end) is not supported yet")
        return max(pos, 1)
    return pos


def _col_or_lit(v):
    return v._c if isinstance(v, Column) else _native.Column.lit(v)
