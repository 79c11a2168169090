"""PySpark's data types (``pyspark.sql.types``): written to Sluice as DDL type strings, and
read back from the engine's Arrow schemas."""

import pyarrow as pa


class DataType:
    """Base of the types."""

    _name = None

    def simpleString(self):
        return self._name

    def typeName(self):
        return self._name

    def __repr__(self):
        return "%s()" % type(self).__name__

    def __eq__(self, other):
        return type(self) is type(other) and self.__dict__ == other.__dict__

    def __hash__(self):
        return hash(self.simpleString())


def _atomic(class_name, ddl):
    return type(class_name, (DataType,), {"_name": ddl})


StringType = _atomic("StringType", "string")
BinaryType = _atomic("BinaryType", "binary")
BooleanType = _atomic("BooleanType", "boolean")
DateType = _atomic("DateType", "date")
TimestampType = _atomic("TimestampType", "timestamp")
TimestampNTZType = _atomic("TimestampNTZType", "timestamp_ntz")
DoubleType = _atomic("DoubleType", "double")
FloatType = _atomic("FloatType", "float")
ByteType = _atomic("ByteType", "tinyint")
ShortType = _atomic("ShortType", "smallint")
IntegerType = _atomic("IntegerType", "int")
LongType = _atomic("LongType", "bigint")
NullType = _atomic("NullType", "void")


class DecimalType(DataType):
    def __init__(self, precision=10, scale=0):
        self.precision, self.scale = precision, scale

    def simpleString(self):
        return "decimal(%d,%d)" % (self.precision, self.scale)

    def __repr__(self):
        return "DecimalType(%d, %d)" % (self.precision, self.scale)


class ArrayType(DataType):
    def __init__(self, elementType, containsNull=True):
        self.elementType, self.containsNull = elementType, containsNull

    def simpleString(self):
        return "array<%s>" % self.elementType.simpleString()

    def __repr__(self):
        return "ArrayType(%r, %s)" % (self.elementType, self.containsNull)


class MapType(DataType):
    def __init__(self, keyType, valueType, valueContainsNull=True):
        self.keyType, self.valueType = keyType, valueType
        self.valueContainsNull = valueContainsNull

    def simpleString(self):
        return "map<%s,%s>" % (self.keyType.simpleString(), self.valueType.simpleString())


class StructField:
    def __init__(self, name, dataType, nullable=True, metadata=None):
        self.name, self.dataType, self.nullable = name, dataType, nullable
        self.metadata = metadata or {}

    def simpleString(self):
        return "%s:%s" % (self.name, self.dataType.simpleString())

    def __repr__(self):
        return "StructField('%s', %r, %s)" % (self.name, self.dataType, self.nullable)

    def __eq__(self, other):
        return isinstance(other, StructField) and (self.name, self.dataType, self.nullable) == (
            other.name,
            other.dataType,
            other.nullable,
        )


class StructType(DataType):
    def __init__(self, fields=None):
        self.fields = list(fields or [])

    def add(self, field, data_type=None, nullable=True, metadata=None):
        if isinstance(field, StructField):
            self.fields.append(field)
        else:
            if isinstance(data_type, str):
                data_type = _parse_simple(data_type)
            self.fields.append(StructField(field, data_type, nullable, metadata))
        return self

    def fieldNames(self):
        return [f.name for f in self.fields]

    @property
    def names(self):
        return self.fieldNames()

    def __iter__(self):
        return iter(self.fields)

    def __len__(self):
        return len(self.fields)

    def __getitem__(self, key):
        if isinstance(key, str):
            for f in self.fields:
                if f.name == key:
                    return f
            raise KeyError("No StructField named %s" % key)
        return self.fields[key]

    def simpleString(self):
        return "struct<%s>" % ",".join(f.simpleString() for f in self.fields)

    def toDDL(self):
        """The schema as a DDL string (``a INT, b STRING``), as Sluice's reader takes it."""
        return ", ".join(
            "`%s` %s%s" % (f.name, f.dataType.simpleString(), "" if f.nullable else " NOT NULL")
            for f in self.fields
        )

    def treeString(self):
        lines = ["root"]

        def walk(fields, depth):
            for f in fields:
                t = f.dataType
                lines.append(
                    "%s-- %s: %s (nullable = %s)"
                    % (" |   " * depth + " |", f.name, t.typeName() if isinstance(t, (StructType, ArrayType, MapType)) else t.simpleString(), str(f.nullable).lower())
                )
                if isinstance(t, StructType):
                    walk(t.fields, depth + 1)

        walk(self.fields, 0)
        return "\n".join(lines) + "\n"

    def __repr__(self):
        return "StructType([%s])" % ", ".join(repr(f) for f in self.fields)


StructType._name = "struct"
ArrayType._name = "array"
MapType._name = "map"

_SIMPLE = {
    c._name: c
    for c in (
        StringType, BinaryType, BooleanType, DateType, TimestampType, TimestampNTZType,
        DoubleType, FloatType, ByteType, ShortType, IntegerType, LongType, NullType,
    )
}
_SIMPLE.update({"integer": IntegerType, "long": LongType, "short": ShortType, "byte": ByteType})


def _parse_simple(name):
    t = _SIMPLE.get(name.strip().lower())
    if t is None:
        raise ValueError("unknown type %r" % name)
    return t()


def ddl_of(data_type):
    """A type given as a DataType or a DDL string, as a DDL string."""
    if isinstance(data_type, DataType):
        return data_type.simpleString()
    return str(data_type)


def from_arrow_type(t):
    """The PySpark type of an Arrow type."""
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return StringType()
    if pa.types.is_boolean(t):
        return BooleanType()
    if pa.types.is_int8(t):
        return ByteType()
    if pa.types.is_int16(t):
        return ShortType()
    if pa.types.is_int32(t):
        return IntegerType()
    if pa.types.is_integer(t):
        return LongType()
    if pa.types.is_float32(t):
        return FloatType()
    if pa.types.is_floating(t):
        return DoubleType()
    if pa.types.is_decimal(t):
        return DecimalType(t.precision, t.scale)
    if pa.types.is_timestamp(t):
        return TimestampType() if t.tz else TimestampNTZType()
    if pa.types.is_date(t):
        return DateType()
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return BinaryType()
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return ArrayType(from_arrow_type(t.value_type))
    if pa.types.is_struct(t):
        return StructType([StructField(f.name, from_arrow_type(f.type), f.nullable) for f in t])
    if pa.types.is_map(t):
        return MapType(from_arrow_type(t.key_type), from_arrow_type(t.item_type))
    if pa.types.is_null(t):
        return NullType()
    raise TypeError("no PySpark type for Arrow type %s" % t)


def from_arrow_schema(schema):
    """A ``StructType`` from a pyarrow schema."""
    return StructType(
        [StructField(f.name, from_arrow_type(f.type), f.nullable) for f in schema]
    )
