"""Judge a user's SQL text before it runs: exactly one plain read, nothing else.

The text is parsed by ClickHouse itself, with the pure function
`parseQueryToJSON` (ClickHouse 26.8+, chDB 26.9): the text travels as a bound
parameter, so nothing in it is executed while it is judged, and the parser is
the one that will run it (no second SQL grammar to drift from ClickHouse's).
The JSON tree is then walked with an allow-list:

- the statement is a SELECT (with UNION / INTERSECT / EXCEPT, WITH, subqueries)
  or SHOW TABLES / SHOW DATABASES; everything else (INSERT, ALTER, CREATE,
  DROP, SYSTEM, KILL, SET, EXPLAIN, DESCRIBE, ...) is refused, and so is any
  node type not on the list below (a new kind of clause is refused until
  someone looks at it);
- no INTO OUTFILE (chDB writes the file even with readonly=1), no SETTINGS
  clause (it could lift the limits the server sets), no FORMAT clause (the
  client chooses the wire format);
- table functions only from SAFE_TABLE_FUNCTIONS, which generate rows in
  memory; file, url, s3, hdfs, remote, cluster, executable, mysql, postgresql,
  jdbc, odbc, input, merge, ... are refused, as are functions that read files
  (`file()` as a scalar, catboostEvaluate) and any table function's name used
  as an ordinary function.

Multiple statements are a syntax error of the parser itself ("Multi-statements
are not allowed"), comments included.
"""

from __future__ import annotations

import threading
from typing import Any

import orjson

# Node types of a plain read, as parseQueryToJSON names them.
READ_NODES = frozenset(
    {
        "SelectWithUnionQuery",
        "SelectIntersectExceptQuery",
        "SelectQuery",
        "ShowTablesQuery",
        "ExpressionList",
        "Literal",
        "Identifier",
        "Function",
        "Asterisk",
        "QualifiedAsterisk",
        "ColumnsRegexpMatcher",
        "ColumnsListMatcher",
        "QualifiedColumnsRegexpMatcher",
        "QualifiedColumnsListMatcher",
        "ColumnsTransformerList",
        "ColumnsExceptTransformer",
        "ColumnsReplaceTransformer",
        "ColumnsReplaceTransformerReplacement",
        "ColumnsApplyTransformer",
        "TablesInSelectQuery",
        "TablesInSelectQueryElement",
        "TableExpression",
        "TableIdentifier",
        "TableJoin",
        "ArrayJoin",
        "Subquery",
        "SampleRatio",
        "OrderByElement",
        "InterpolateElement",
        "WithElement",
        "WindowDefinition",
        "WindowListElement",
    }
)
ROOTS = frozenset({"SelectWithUnionQuery", "SelectIntersectExceptQuery", "ShowTablesQuery"})

# Table functions that only generate rows in memory (lower case).
SAFE_TABLE_FUNCTIONS = frozenset(
    {
        "numbers",
        "numbers_mt",
        "zeros",
        "zeros_mt",
        "generaterandom",
        "generate_series",
        "generateseries",
        "values",
        "view",
    }
)
# Ordinary functions that read the host's files or models (lower case).
DENIED_FUNCTIONS = frozenset({"file", "catboostevaluate", "modelevaluate"})
# Table functions whose names are also harmless ordinary functions.
SCALAR_NAMESAKES = frozenset({"format", "null"})
# Known before any server is asked (the server's own list is added to these).
KNOWN_TABLE_FUNCTIONS = frozenset(
    {
        "file",
        "url",
        "urlcluster",
        "s3",
        "s3cluster",
        "gcs",
        "azureblobstorage",
        "hdfs",
        "hdfscluster",
        "remote",
        "remotesecure",
        "cluster",
        "clusterallreplicas",
        "executable",
        "mysql",
        "postgresql",
        "jdbc",
        "odbc",
        "sqlite",
        "mongodb",
        "redis",
        "input",
        "merge",
        "dictionary",
        "python",
        "iceberg",
        "deltalake",
        "hudi",
        "fuzzjson",
        "loop",
    }
)


class QueryRefused(ValueError):
    """The SQL text is not a single plain read; the message says why, in one line."""


def parse(client: Any, sql: str) -> dict[str, Any]:
    """ClickHouse's own parse of `sql` as a JSON tree (the text is a bound parameter)."""
    try:
        result = client.query("SELECT parseQueryToJSON({sql:String})", parameters={"sql": sql})
    except Exception as exc:
        message = one_line(exc)
        if "UNKNOWN_FUNCTION" in message or "Unknown function" in message:
            raise QueryRefused(
                "this ClickHouse cannot judge queries (parseQueryToJSON needs ClickHouse 26.8 "
                "or later); queries are refused"
            ) from None
        if "JSON serialization" in message or "not supported by parseQueryToJSON" in message:
            raise QueryRefused(
                "only SELECT and SHOW TABLES are allowed (for a table's columns: "
                "SELECT * FROM system.columns WHERE table = '...')"
            ) from None
        raise QueryRefused(f"not a valid single statement: {_syntax(message)}") from None
    tree = orjson.loads(result.result_rows[0][0])
    if not isinstance(tree, dict):
        raise QueryRefused("not a valid single statement")
    return tree


def _syntax(message: str) -> str:
    # "Code: 62. DB::Exception: Syntax error ...: In scope SELECT parseQueryToJSON(...)"
    text = message.split("DB::Exception: ", 1)[-1]
    return text.split(": In scope SELECT parseQueryToJSON", 1)[0][:300]


def one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:500]


class Judge:
    """Judges SQL texts through `client` (the read client); caches the server's
    list of table functions."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self._table_functions: frozenset[str] | None = None
        self._lock = threading.Lock()

    def table_functions(self) -> frozenset[str]:
        with self._lock:
            if self._table_functions is None:
                try:
                    rows = self.client.query("SELECT name FROM system.table_functions").result_rows
                    names = {str(r[0]).lower() for r in rows}
                except Exception:
                    names = set()
                self._table_functions = KNOWN_TABLE_FUNCTIONS | names
            return self._table_functions

    def check(self, sql: str) -> str:
        """Return the text to run (trailing ';' removed) or raise QueryRefused."""
        text = sql.strip()
        while text.endswith(";"):
            text = text[:-1].rstrip()
        if not text:
            raise QueryRefused("empty query")
        check_tree(parse(self.client, text), self.table_functions())
        return text


def check_tree(tree: dict[str, Any], table_functions: frozenset[str]) -> None:
    """Raise QueryRefused unless `tree` (parseQueryToJSON's output) is a plain read.

    >>> try:
    ...     check_tree({"type": "InsertQuery"}, frozenset())
    ... except QueryRefused as refused:
    ...     print(refused)
    only SELECT and SHOW TABLES are allowed (this is a InsertQuery)
    """
    root = tree.get("type")
    if root not in ROOTS:
        raise QueryRefused(f"only SELECT and SHOW TABLES are allowed (this is a {root})")
    _walk(tree, table_functions, in_table_position=False)


def _walk(node: Any, table_functions: frozenset[str], in_table_position: bool) -> None:
    if isinstance(node, list):
        for item in node:
            _walk(item, table_functions, False)
        return
    if not isinstance(node, dict):
        return
    kind = node.get("type")
    if kind is not None:
        if kind == "QueryParameter":
            raise QueryRefused("query parameters ({name:Type}) are not supported here")
        if kind not in READ_NODES:
            raise QueryRefused(f"not a plain read: {kind} is not allowed")
    if "out_file" in node or node.get("is_into_outfile_with_stdout"):
        raise QueryRefused("INTO OUTFILE is not allowed")
    if "settings" in node or kind == "SetQuery":
        raise QueryRefused("a SETTINGS clause is not allowed (the server sets the limits)")
    if "format_ast" in node:
        raise QueryRefused("a FORMAT clause is not allowed")
    if kind == "Function":
        name = str(node.get("name", "")).lower()
        if in_table_position:
            if name not in SAFE_TABLE_FUNCTIONS:
                raise QueryRefused(
                    f"table function {node.get('name')}() is not allowed "
                    f"(allowed: {', '.join(sorted(SAFE_TABLE_FUNCTIONS))})"
                )
        elif name in DENIED_FUNCTIONS or (
            name in table_functions and name not in SAFE_TABLE_FUNCTIONS | SCALAR_NAMESAKES
        ):
            raise QueryRefused(f"function {node.get('name')}() is not allowed")
    for key, value in node.items():
        _walk(value, table_functions, in_table_position=key == "table_function")
