"""The tables of every public function's parameters in ``docs/conventions.md`` match the code.

``docs/conventions.md`` holds, between ``<!-- signature-table: NAME -->`` and
``<!-- /signature-table -->``, one Markdown table per group of public functions: one row
per function, a ``positional`` column with the arguments before ``*`` (as the signature
writes them, without annotations), and one column per keyword-only option name used by any
function of the group, each cell holding that function's default (``required`` for a
keyword-only option without a default, blank where the function has no such option).

The tests parse those tables and compare them with ``inspect.signature`` of every public
object: the callables in ``nce_ref.__all__`` and ``nce_ref.mi.__all__`` and of the modules
``nce_ref.mi.__all__`` names, and every function of ``nce_ref.autodiff.registry()``. A
public function without a row, a row without a function, a wrong cell or a column no
function uses fails, and the message prints the corrected rows.

To rewrite the tables from the code (after changing a signature)::

    python tests/test_docs_tables.py            # print them
    python tests/test_docs_tables.py --write    # replace them in docs/conventions.md
"""

from __future__ import annotations

import inspect
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "conventions.md"
BLOCK = re.compile(r"(<!-- signature-table: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /signature-table -->)",
                   re.DOTALL)
FUNCTION, POSITIONAL, REQUIRED = "function", "positional", "required"
# options written first and last, in these orders (the others keep their order of first use)
FIRST = ("temperature", "similarity", "kind", "eps", "reduction")
LAST = ("method", "block_size", "memory_budget", "check_finite", "xp")
API, GROUND_TRUTH = "api", "ground-truth"


# --- the code's side -----------------------------------------------------------------

def public_functions() -> dict[str, dict[str, object]]:
    """``{table: {name: callable}}``, names as the registry writes them (``"mi.nwj"``)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import nce_ref
    from nce_ref import autodiff, mi

    api: dict[str, object] = {}
    truth: dict[str, object] = {}
    for prefix, mod in (("", nce_ref), ("mi.", mi)):
        for name in mod.__all__:
            obj = getattr(mod, name)
            if inspect.ismodule(obj):
                if mod is mi:
                    for sub in obj.__all__:
                        f = getattr(obj, sub)
                        if callable(f) and not inspect.isclass(f):
                            truth[f"mi.{name}.{sub}"] = f
            elif callable(obj):
                api[prefix + name] = obj
    for name, entry in autodiff.registry().items():
        api.setdefault(name, entry.public)
    return {API: api, GROUND_TRUTH: truth}


def _literal(value) -> str:
    if isinstance(value, str) and '"' not in value:
        return f'"{value}"'
    return repr(value)


def positional(sig: inspect.Signature) -> str:
    """The parameters before ``*`` as ``a, b=None, /`` (``*args``, ``**kwargs`` kept)."""
    parts, seen_pos_only = [], False
    for p in sig.parameters.values():
        if p.kind is p.KEYWORD_ONLY:
            continue
        if seen_pos_only and p.kind is not p.POSITIONAL_ONLY:
            parts.append("/")
            seen_pos_only = False
        if p.kind is p.POSITIONAL_ONLY:
            seen_pos_only = True
        if p.kind is p.VAR_POSITIONAL:
            parts.append(f"*{p.name}")
        elif p.kind is p.VAR_KEYWORD:
            parts.append(f"**{p.name}")
        elif p.default is p.empty:
            parts.append(p.name)
        else:
            parts.append(f"{p.name}={_literal(p.default)}")
    if seen_pos_only:
        parts.append("/")
    return f"`{', '.join(parts)}`" if parts else ""


def options(sig: inspect.Signature) -> dict[str, str]:
    """``{keyword-only name: cell}``: the default in backticks, or ``required``."""
    return {p.name: REQUIRED if p.default is p.empty else f"`{_literal(p.default)}`"
            for p in sig.parameters.values() if p.kind is p.KEYWORD_ONLY}


def expected_row(f) -> dict[str, str]:
    """``{column: cell}`` of ``f``'s row, blank cells left out (as :func:`parse_tables` does)."""
    sig = inspect.signature(f)
    row = {POSITIONAL: positional(sig), **options(sig)}
    return {k: v for k, v in row.items() if v}


def columns_for(funcs: dict[str, object]) -> list[str]:
    names: list[str] = []
    for f in funcs.values():
        for opt in options(inspect.signature(f)):
            if opt not in names:
                names.append(opt)
    return ([n for n in FIRST if n in names] + [n for n in names if n not in FIRST + LAST]
            + [n for n in LAST if n in names])


# --- the Markdown side -----------------------------------------------------------------

def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _unquote(cell: str) -> str:
    return cell[1:-1] if len(cell) >= 2 and cell[0] == cell[-1] == "`" else cell


def render_row(name: str, row: dict[str, str], columns: list[str]) -> str:
    cells = [f"`{name}`", row.get(POSITIONAL, "")] + [row.get(c, "") for c in columns]
    return "| " + " | ".join(cells) + " |"


def render_table(funcs: dict[str, object]) -> str:
    columns = columns_for(funcs)
    lines = ["| " + " | ".join([FUNCTION, POSITIONAL] + [f"`{c}`" for c in columns]) + " |",
             "|" + "---|" * (len(columns) + 2)]
    lines += [render_row(name, expected_row(f), columns) for name, f in funcs.items()]
    return "\n".join(lines) + "\n"


def parse_tables(text: str) -> dict[str, tuple[list[str], dict[str, dict[str, str]]]]:
    """``{table: (option columns, {function: {column: cell}})}``; blank cells left out."""
    tables = {}
    for m in BLOCK.finditer(text):
        lines = [ln for ln in m["body"].splitlines() if ln.strip().startswith("|")]
        assert len(lines) >= 2, f"signature-table {m['name']!r} has no table"
        header = [_unquote(c) for c in _cells(lines[0])]
        assert header[:2] == [FUNCTION, POSITIONAL], (
            f"signature-table {m['name']!r}: the first columns must be {FUNCTION!r}, {POSITIONAL!r}; "
            f"got {header[:2]}")
        rows = {}
        for ln in lines[2:]:
            cells = _cells(ln)
            assert len(cells) == len(header), (
                f"signature-table {m['name']!r}: {len(cells)} cells for {len(header)} columns in\n{ln}")
            rows[_unquote(cells[0])] = {col: cell for col, cell in zip(header[1:], cells[1:]) if cell}
        tables[m["name"]] = (header[2:], rows)
    return tables


def write_tables(text: str, groups: dict[str, dict[str, object]]) -> str:
    def repl(m):
        funcs = groups.get(m["name"])
        if funcs is None:
            return m[0]
        return m[1] + "\n" + render_table(funcs) + "\n" + m[4]
    return BLOCK.sub(repl, text)


# --- the tests ---------------------------------------------------------------------------

def _doc_tables():
    return parse_tables(DOC.read_text(encoding="utf-8"))


_HOW = ("Or rewrite every table from the code: `python tests/test_docs_tables.py --write` "
        "(`python tests/test_docs_tables.py` prints them).")


def test_every_table_is_in_the_doc():
    tables, groups = _doc_tables(), public_functions()
    missing = [g for g in groups if g not in tables]
    assert not missing, (
        f"docs/conventions.md lacks the signature table(s) {missing}; add, for each, the lines\n"
        + "\n".join(f"<!-- signature-table: {g} -->\n\n{render_table(groups[g])}\n<!-- /signature-table -->"
                    for g in missing))


def test_every_public_function_has_a_row_and_every_row_a_function():
    tables, groups = _doc_tables(), public_functions()
    problems = []
    for g, funcs in groups.items():
        columns, rows = tables.get(g, ([], {}))
        for name, f in funcs.items():
            if name not in rows:
                problems.append(f"table {g!r} lacks the public function `{name}`; add the row\n"
                                f"{render_row(name, expected_row(f), columns)}")
        for name in rows:
            if name not in funcs:
                problems.append(f"table {g!r} has a row for `{name}`, which is not a public function "
                                f"of that group: remove it")
    assert not problems, "docs/conventions.md:\n" + "\n".join(problems) + "\n" + _HOW


def test_columns_are_the_keyword_only_options():
    tables, groups = _doc_tables(), public_functions()
    problems = []
    for g, funcs in groups.items():
        if g not in tables:
            continue
        columns = tables[g][0]
        used = columns_for(funcs)
        new, unused = [c for c in used if c not in columns], [c for c in columns if c not in used]
        if new or unused:
            problems.append(f"table {g!r}: " + (f"add the column(s) {new}; " if new else "")
                            + (f"remove the column(s) {unused}, which no function takes; " if unused else "")
                            + f"the whole table reads\n{render_table(funcs)}")
    assert not problems, "docs/conventions.md:\n" + "\n".join(problems) + "\n" + _HOW


def test_rows_match_the_signatures():
    tables, groups = _doc_tables(), public_functions()
    problems = []
    for g, funcs in groups.items():
        if g not in tables:
            continue
        columns, rows = tables[g]
        for name, f in funcs.items():
            if name not in rows:
                continue  # reported by the test above
            want, have = expected_row(f), rows[name]
            if want != have:
                diff = [f"`{k}`: table {have.get(k, '(blank)')}, code {want.get(k, '(blank)')}"
                        for k in dict.fromkeys([*want, *have]) if want.get(k) != have.get(k)]
                absent = [k for k in want if k != POSITIONAL and k not in columns]
                problems.append(f"table {g!r}, row `{name}` ({'; '.join(diff)}) should read\n"
                                f"{render_row(name, want, columns)}"
                                + (f"\nonce the table has the column(s) {absent} (see the columns test)"
                                   if absent else ""))
    assert not problems, "docs/conventions.md:\n" + "\n".join(problems) + "\n" + _HOW


def test_the_parser_reads_what_the_renderer_writes():
    groups = public_functions()
    text = "".join(f"<!-- signature-table: {g} -->\n\n{render_table(f)}\n<!-- /signature-table -->\n"
                   for g, f in groups.items())
    tables = parse_tables(text)
    for g, funcs in groups.items():
        columns, rows = tables[g]
        assert columns == columns_for(funcs)
        assert rows == {name: expected_row(f) for name, f in funcs.items()}
    assert write_tables(text, groups) == text


if __name__ == "__main__":
    groups = public_functions()
    if sys.argv[1:] == ["--write"]:
        DOC.write_text(write_tables(DOC.read_text(encoding="utf-8"), groups), encoding="utf-8")
    elif sys.argv[1:]:
        sys.exit("usage: python tests/test_docs_tables.py [--write]")
    else:
        for g, funcs in groups.items():
            print(f"<!-- signature-table: {g} -->\n\n{render_table(funcs)}\n<!-- /signature-table -->\n")
