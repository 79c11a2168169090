"""``Row``: a tuple with named fields, as PySpark's ``collect()`` returns them."""


class Row(tuple):
    """A row: ``row.word``, ``row["word"]``, ``row[0]``, ``row.asDict()``."""

    def __new__(cls, *args, **kwargs):
        if kwargs:
            row = tuple.__new__(cls, tuple(kwargs.values()))
            row.__fields__ = list(kwargs.keys())
            return row
        row = tuple.__new__(cls, args)
        row.__fields__ = None
        return row

    @classmethod
    def _make(cls, fields, values):
        row = tuple.__new__(cls, tuple(values))
        row.__fields__ = list(fields)
        return row

    def asDict(self, recursive=False):
        if self.__fields__ is None:
            raise TypeError("Cannot convert a Row class into dict")
        if not recursive:
            return dict(zip(self.__fields__, self))

        def conv(v):
            if isinstance(v, Row):
                return v.asDict(True)
            if isinstance(v, list):
                return [conv(x) for x in v]
            if isinstance(v, dict):
                return {k: conv(x) for k, x in v.items()}
            return v

        return {k: conv(v) for k, v in zip(self.__fields__, self)}

    def __getattr__(self, item):
        if item.startswith("__"):
            raise AttributeError(item)
        fields = self.__dict__.get("__fields__")
        if fields and item in fields:
            return self[fields.index(item)]
        raise AttributeError(item)

    def __getitem__(self, item):
        if isinstance(item, str):
            if self.__fields__ and item in self.__fields__:
                return tuple.__getitem__(self, self.__fields__.index(item))
            raise ValueError(item)
        return tuple.__getitem__(self, item)

    def __repr__(self):
        if self.__fields__:
            return "Row(%s)" % ", ".join("%s=%r" % (k, v) for k, v in zip(self.__fields__, self))
        return "<Row(%s)>" % ", ".join(repr(v) for v in self)
