"""What a cell reads from the kernel and what it binds: static analysis of the cell's source.

The analysis runs on the cell *after* IPython's input transformers (so ``!cmd`` and ``%magic``
lines are already Python). It walks the top-level statements in evaluation order:

* a name read at module level before the cell has bound it is an **input** (``x = x + 1``,
  ``total += v``, a loop that reads what it later assigns);
* a name read inside a function, lambda, class body or comprehension that resolves to the module
  scope is an input too (the cell may call the function);
* a name bound at module level (assignment, augmented assignment, ``for``/``with`` targets,
  ``import``, ``def``, ``class``, walrus, ``global`` in a nested function) is an **output**; ``del``
  makes it a deletion.

Names first bound in a branch (``if``/``for``/``try`` bodies) and read later are *optional* inputs:
sent when available, silently left behind when they cannot be pickled. The runner finds outputs
dynamically as well (what the namespace holds afterwards), so ``exec`` or ``from m import *`` still
bring their names back; the static list is what the user sees in a dry run.
"""

from __future__ import annotations

import ast
import re
import symtable
import tokenize
import io
import types
from dataclasses import dataclass, field
from typing import Any, Iterable, cast

_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda, ast.ListComp,
           ast.SetComp, ast.DictComp, ast.GeneratorExp)
_BRANCHES: tuple[type[ast.stmt], ...] = (ast.If, ast.For, ast.AsyncFor, ast.While, ast.Try,
                                         ast.Match)
if hasattr(ast, "TryStar"):
    _BRANCHES += (ast.TryStar,)

#: Names IPython puts in the namespace that never travel.
KERNEL_NAMES = frozenset({"In", "Out", "get_ipython", "exit", "quit", "_", "__", "___",
                          "_ih", "_oh", "_dh", "_sh"})


@dataclass
class CellAnalysis:
    """The result of :func:`analyze`. Lists keep first-occurrence order."""

    source: str
    inputs: list[str] = field(default_factory=list)
    optional: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    has_result: bool = False
    #: magics the cell uses, in order: ("line"|"cell", name) and ("system"|"getoutput", "!")
    magics: list[tuple[str, str]] = field(default_factory=list)


class _Walker(ast.NodeVisitor):
    def __init__(self) -> None:
        self.bound: set[str] = set()        # bound unconditionally so far
        self.soft: set[str] = set()         # bound in some branch so far
        self.required: dict[str, None] = {}
        self.optional: dict[str, None] = {}
        self.stores: dict[str, None] = {}
        self.deletes: dict[str, None] = {}
        self.branch_depth = 0
        self.late_reads: list[str] = []     # reads inside nested scopes (resolved at the end)
        self.magics: list[tuple[str, str]] = []

    # reads and writes ------------------------------------------------------------------------
    def read(self, name: str) -> None:
        if name in self.bound:
            return
        if name in self.soft:
            self.optional.setdefault(name, None)
        else:
            self.required.setdefault(name, None)

    def store(self, name: str) -> None:
        self.stores.setdefault(name, None)
        self.deletes.pop(name, None)
        if self.branch_depth:
            self.soft.add(name)
        else:
            self.bound.add(name)

    def visit_Name(self, node: ast.Name) -> None:
        if isinstance(node.ctx, ast.Load):
            self.read(node.id)
        elif isinstance(node.ctx, ast.Store):
            self.store(node.id)
        else:  # Del
            self.read(node.id)
            self.deletes.setdefault(node.id, None)
            self.bound.discard(node.id)
            self.soft.discard(node.id)

    # evaluation order ------------------------------------------------------------------------
    def visit_Assign(self, node: ast.Assign) -> None:
        self.visit(node.value)
        for t in node.targets:
            self.visit(t)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        if node.value is not None:
            self.visit(node.value)
            self.visit(node.target)
        self.visit(node.annotation)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        self.visit(node.value)
        if isinstance(node.target, ast.Name):
            self.read(node.target.id)
            self.store(node.target.id)
        else:
            self.visit(node.target)

    def visit_NamedExpr(self, node: ast.NamedExpr) -> None:
        self.visit(node.value)
        self.visit(node.target)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.store(alias.asname or alias.name.split(".")[0])

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        for alias in node.names:
            if alias.name != "*":
                self.store(alias.asname or alias.name)

    def visit_Global(self, node: ast.Global) -> None:  # at module level: no effect
        pass

    def _branch(self, nodes: Iterable[ast.AST]) -> None:
        self.branch_depth += 1
        for n in nodes:
            self.visit(n)
        self.branch_depth -= 1

    def _targets(self, node: ast.AST) -> set[str]:
        return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}

    def visit_For(self, node: ast.For | ast.AsyncFor) -> None:
        self.visit(node.iter)
        self.branch_depth += 1
        self.visit(node.target)
        # inside the body the loop variables are bound; after the loop maybe not
        names = self._targets(node.target) - self.bound
        self.bound |= names
        for n in [*node.body, *node.orelse]:
            self.visit(n)
        self.bound -= names
        self.branch_depth -= 1

    visit_AsyncFor = visit_For

    def visit_While(self, node: ast.While) -> None:
        self.visit(node.test)
        self._branch([*node.body, *node.orelse])

    def visit_If(self, node: ast.If) -> None:
        self.visit(node.test)
        self._branch([*node.body, *node.orelse])

    def visit_Try(self, node: ast.AST) -> None:
        self._branch([*node.body, *node.handlers, *node.orelse])  # type: ignore[attr-defined]
        for n in node.finalbody:  # type: ignore[attr-defined]
            self.visit(n)

    visit_TryStar = visit_Try

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> None:
        if node.type is not None:
            self.visit(node.type)
        if not node.name:
            for n in node.body:
                self.visit(n)
            return
        # the name is bound inside the handler and unbound by Python when it ends
        had = node.name in self.stores
        was_bound = node.name in self.bound
        self.bound.add(node.name)
        for n in node.body:
            self.visit(n)
        if not was_bound:
            self.bound.discard(node.name)
        if not had:
            self.stores.pop(node.name, None)

    def visit_Match(self, node: ast.AST) -> None:
        self.visit(node.subject)  # type: ignore[attr-defined]
        self._branch(node.cases)  # type: ignore[attr-defined]

    def visit_MatchAs(self, node: ast.AST) -> None:
        self.generic_visit(node)
        if node.name:  # type: ignore[attr-defined]
            self.store(node.name)  # type: ignore[attr-defined]

    def visit_MatchStar(self, node: ast.AST) -> None:
        if node.name:  # type: ignore[attr-defined]
            self.store(node.name)  # type: ignore[attr-defined]

    def visit_MatchMapping(self, node: ast.AST) -> None:
        self.generic_visit(node)
        if node.rest:  # type: ignore[attr-defined]
            self.store(node.rest)  # type: ignore[attr-defined]

    def visit_With(self, node: ast.With | ast.AsyncWith) -> None:
        for item in node.items:
            self.visit(item.context_expr)
            if item.optional_vars is not None:
                self.visit(item.optional_vars)
        for n in node.body:
            self.visit(n)

    visit_AsyncWith = visit_With

    # magics: IPython turned them into get_ipython() calls; their arguments hold code and names
    def visit_Call(self, node: ast.Call) -> None:
        self.generic_visit(node)
        magic = _magic_call(node)
        if magic is None:
            return
        kind, name, args = magic
        self.magics.append((kind, name))
        if kind in ("system", "getoutput"):
            self._expansions(args[0] if args else "")
            return
        line = args[1] if len(args) > 1 else ""
        if kind == "line":
            if name in CODE_MAGICS:
                self._code(_strip_options(line, CODE_MAGICS[name]), in_place=name == "time")
            else:
                self._expansions(line)
            return
        body = args[2] if len(args) > 2 else ""
        if name in CODE_MAGICS:
            self._code(_strip_options(line, CODE_MAGICS[name]), in_place=False)
            self._code(body, in_place=name == "time")
        elif name == "capture":
            self._expansions(line)
            self._code(body, in_place=True)
            words = [w for w in line.split() if not w.startswith("-")]
            if words and words[0].isidentifier():
                self.store(words[0])
        else:
            self._expansions(line)

    def _code(self, text: str, in_place: bool) -> None:
        """Python code inside a magic's argument: run here (``%time``) or in a scope of its
        own (``%timeit``), where it only reads the namespace."""
        try:
            tree = ast.parse(_dedent(text))
        except SyntaxError:
            return
        if in_place:
            for stmt in tree.body:
                self.visit(stmt)
            return
        stored = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)
                  and not isinstance(n.ctx, ast.Load)}
        for n in ast.walk(tree):
            if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load) and n.id not in stored:
                self.read(n.id)

    def _expansions(self, text: str) -> None:
        """``$name`` and ``{expression}`` in a magic's line or a shell command (optional: a
        ``$NAME`` may be the shell's own variable)."""
        names = set(re.findall(r"(?<!\$)\$\{?([A-Za-z_]\w*)", text))
        for expr in re.findall(r"(?<!\{)\{([^{}]+)\}(?!\})", text):
            try:
                tree = ast.parse(expr.strip(), mode="eval")
            except SyntaxError:
                continue
            names |= {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
        for name in sorted(names):
            if name not in self.bound and name not in self.required:
                self.optional.setdefault(name, None)

    # nested scopes: symtable knows Python's scoping rules exactly ----------------------------
    def _nested(self, node: ast.AST) -> None:
        snippet = ast.Module(body=[node if isinstance(node, ast.stmt)
                                   else ast.Expr(cast(ast.expr, node))],
                             type_ignores=[])
        table = symtable.symtable(ast.unparse(snippet), "<cell>", "exec")
        names_here: list[tuple[str, bool]] = []   # (name, is_store) in the enclosing scope
        for sym in table.get_symbols():
            if sym.is_referenced():
                names_here.append((sym.get_name(), False))
        for sym in table.get_symbols():
            if sym.is_assigned() or sym.is_imported():
                names_here.append((sym.get_name(), True))
        for name, is_store in names_here:
            if is_store:
                self.store(name)
            else:
                self.read(name)
        for child in table.get_children():
            self._nested_table(child)

    def _nested_table(self, table: symtable.SymbolTable) -> None:
        for sym in table.get_symbols():
            if sym.is_global() and sym.is_referenced() and sym.get_name() not in self.bound:
                self.late_reads.append(sym.get_name())
            if sym.is_declared_global() and sym.is_assigned():
                self.stores.setdefault(sym.get_name(), None)
                self.late_reads.append(sym.get_name())
        for child in table.get_children():
            self._nested_table(child)

    def visit_FunctionDef(self, node: ast.AST) -> None:
        self._nested(node)

    visit_AsyncFunctionDef = visit_ClassDef = visit_Lambda = visit_FunctionDef
    visit_ListComp = visit_SetComp = visit_DictComp = visit_GeneratorExp = visit_FunctionDef

    def finish(self) -> None:
        for name in self.late_reads:
            if name in self.stores:
                if name not in self.required:
                    self.optional.setdefault(name, None)
            else:
                self.required.setdefault(name, None)


#: magics whose argument is Python code, with their options that take a value
CODE_MAGICS = {"time": "", "timeit": "nrp", "prun": "DlsT"}
_SHELL_CALLS = {"run_line_magic": "line", "run_cell_magic": "cell", "system": "system",
                "getoutput": "getoutput"}


def _magic_call(node: ast.Call) -> tuple[str, str, list[str]] | None:
    """``get_ipython().run_line_magic('time', 'x = f()')`` -> ("line", "time", [...])."""
    func = node.func
    if not (isinstance(func, ast.Attribute) and func.attr in _SHELL_CALLS
            and isinstance(func.value, ast.Call) and isinstance(func.value.func, ast.Name)
            and func.value.func.id == "get_ipython"):
        return None
    args = [a.value if isinstance(a, ast.Constant) and isinstance(a.value, str) else ""
            for a in node.args]
    kind = _SHELL_CALLS[func.attr]
    if kind in ("line", "cell"):
        return (kind, args[0], args) if args and args[0] else None
    return kind, "!", args


def _strip_options(line: str, with_value: str) -> str:
    """The code after a magic's leading ``-x`` options (``-n 10 -r 3 f(x)`` -> ``f(x)``)."""
    words = line.split(" ")
    i = 0
    while i < len(words):
        w = words[i]
        if not w:
            i += 1
        elif w.startswith("-") and len(w) >= 2 and w[1].isalpha():
            i += 2 if (w[1] in with_value and len(w) == 2) else 1
        else:
            break
    return " ".join(words[i:])


def _dedent(text: str) -> str:
    import textwrap

    return textwrap.dedent(text)


def _ends_with_semicolon(source: str) -> bool:
    try:
        toks = [t for t in tokenize.generate_tokens(io.StringIO(source).readline)
                if t.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT,
                                  tokenize.ENDMARKER, tokenize.INDENT, tokenize.DEDENT)]
    except (tokenize.TokenError, SyntaxError):
        return False
    return bool(toks) and toks[-1].string == ";"


def analyze(source: str) -> CellAnalysis:
    """Analyse a (transformed) cell. Raises ``SyntaxError`` for invalid source."""
    tree = ast.parse(source, "<cell>", "exec")
    walker = _Walker()
    for stmt in tree.body:
        walker.visit(stmt)
    walker.finish()
    required = [n for n in walker.required]
    optional = [n for n in walker.optional if n not in walker.required]
    outputs = [n for n in walker.stores if n not in walker.deletes]
    has_result = bool(tree.body) and isinstance(tree.body[-1], ast.Expr) \
        and not _ends_with_semicolon(source)
    return CellAnalysis(source=source, inputs=required, optional=optional, outputs=outputs,
                        deleted=list(walker.deletes), has_result=has_result,
                        magics=walker.magics)


# -- from names to values ---------------------------------------------------------------------

@dataclass
class Captured:
    """The values a cell needs, taken from the kernel namespace at submit time."""

    values: dict[str, Any] = field(default_factory=dict)
    modules: dict[str, str] = field(default_factory=dict)   # name in namespace -> module name
    optional: set[str] = field(default_factory=set)


def _code_names(code: types.CodeType) -> Iterable[str]:
    yield from code.co_names
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _code_names(const)


def _globals_used(value: Any) -> Iterable[str]:
    """Global names used by a notebook function or class (its methods), recursively."""
    if isinstance(value, types.FunctionType):
        yield from _code_names(value.__code__)
    elif isinstance(value, type):
        for base in value.__mro__[1:]:
            if getattr(base, "__module__", None) == "__main__":
                yield base.__name__
        for attr in vars(value).values():
            func = getattr(attr, "__func__", attr)
            for f in (func, getattr(attr, "fget", None), getattr(attr, "fset", None)):
                if isinstance(f, types.FunctionType):
                    yield from _code_names(f.__code__)


def gather(analysis: CellAnalysis, namespace: dict, hidden: Iterable[str] = (),
           skip: Iterable[str] = ()) -> Captured:
    """Pick the cell's inputs out of ``namespace``.

    Notebook functions and classes bring the globals they use along (as optional inputs), so the
    cell can call them on the cluster. Modules travel by name and are imported there.
    """
    excluded = set(hidden) | KERNEL_NAMES | set(skip)
    captured = Captured()
    queue: list[tuple[str, bool]] = [(n, False) for n in analysis.inputs]
    queue += [(n, True) for n in analysis.optional]
    seen: set[str] = set()
    while queue:
        name, optional = queue.pop(0)
        if name in seen or name in excluded or name not in namespace:
            continue
        seen.add(name)
        value = namespace[name]
        if isinstance(value, types.ModuleType):
            captured.modules[name] = value.__name__
            continue
        captured.values[name] = value
        if optional:
            captured.optional.add(name)
        if getattr(value, "__module__", None) == "__main__":
            queue.extend((g, True) for g in _globals_used(value) if g not in seen)
    return captured
