"""The package's import structure (issue 27 §3, "a house without circles"), read from the
source with ``ast`` (nothing is imported):

- no import circle among ``apq_lib``'s modules, neither through module-level imports nor
  when the imports inside functions are counted too (a function-level import that only
  dodges a circle is still a circle);
- the number of ``apq_lib``-internal imports inside functions stays at or below a limit
  that only goes down.

An edge ``a -> b`` is an ``import`` / ``from ... import`` in ``a`` that names module ``b``
(``from pkg import sub`` names ``pkg.sub`` when that is a module, otherwise ``pkg``).
Imports under ``if TYPE_CHECKING:`` or ``if __name__ == "__main__":`` never run on import,
so they are no edges. The implicit import of a module's parent packages is not an edge.
"""
from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = "apq_lib"

# apq_lib-internal imports inside functions (the target: <= 5; one left: hardware's lazy
# figures, which import matplotlib). Lower it when you
# remove some; never raise it.
MAX_FUNCTION_LEVEL_IMPORTS = 1


def _modules() -> dict[str, tuple[Path, bool]]:
    out = {}
    for p in sorted((ROOT / PKG).rglob("*.py")):
        parts = list(p.relative_to(ROOT).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_pkg else parts)] = (p, is_pkg)
    return out


def _skipped_block(node: ast.AST) -> bool:
    """``if TYPE_CHECKING:`` / ``if __name__ == "__main__":`` (never run on import)."""
    if not isinstance(node, ast.If):
        return False
    t = node.test
    if isinstance(t, ast.Name) and t.id == "TYPE_CHECKING":
        return True
    if isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING":
        return True
    return (isinstance(t, ast.Compare) and isinstance(t.left, ast.Name)
            and t.left.id == "__name__" and len(t.comparators) == 1
            and isinstance(t.comparators[0], ast.Constant)
            and t.comparators[0].value == "__main__")


def _targets(mod: str, is_pkg: bool, node: ast.Import | ast.ImportFrom, mods) -> list[str]:
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        if node.level:
            base = mod.split(".") if is_pkg else mod.split(".")[:-1]
            base = base[:len(base) - (node.level - 1)]
            base_name = ".".join(base + ([node.module] if node.module else []))
        else:
            base_name = node.module or ""
        names = [f"{base_name}.{a.name}" if f"{base_name}.{a.name}" in mods else base_name
                 for a in node.names]
    return [n for n in names if n in mods and n != mod]


def import_graph() -> tuple[dict, dict, list]:
    """``(module-level edges, all edges, function-level imports)``; the last as
    ``(module, line, statement)`` for apq_lib-internal imports inside a function."""
    mods = _modules()
    top: dict[str, set] = defaultdict(set)
    every: dict[str, set] = defaultdict(set)
    in_func: list[tuple[str, int, str]] = []
    for mod, (path, is_pkg) in mods.items():
        def walk(node: ast.AST, func: bool) -> None:
            for ch in ast.iter_child_nodes(node):
                if _skipped_block(ch):
                    continue
                f = func or isinstance(ch, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
                if isinstance(ch, (ast.Import, ast.ImportFrom)):
                    tg = _targets(mod, is_pkg, ch, mods)
                    every[mod].update(tg)
                    if f and tg:
                        in_func.append((mod, ch.lineno, ast.unparse(ch)))
                    elif not f:
                        top[mod].update(tg)
                walk(ch, f)
        walk(ast.parse(path.read_text(), str(path)), False)
    return top, every, in_func


def circles(edges: dict[str, set]) -> list[frozenset]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[frozenset] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(frozenset(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def _show(cs) -> str:
    return "; ".join(" <-> ".join(sorted(c)) for c in cs)


def test_the_graph_sees_a_planted_circle():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert circles(edges) == [frozenset("abc")]
    top, every, in_func = import_graph()
    assert "apq_lib.predictor.pipeline" in top["apq_lib.predictor.collect"]
    assert all(top[m] <= every[m] for m in top)


def test_module_level_imports_have_no_circle():
    top, _, _ = import_graph()
    found = circles(top)
    assert not found, f"import circles through module-level imports: {_show(found)}"


def test_no_import_circle_counting_function_level_imports():
    _, every, _ = import_graph()
    found = circles(every)
    assert not found, (f"import circles (function-level imports included): {_show(found)}; "
                       f"break them by moving the shared code down a layer, not by moving "
                       f"an import into a function")


def test_function_level_imports_are_limited():
    _, _, in_func = import_graph()
    listing = "\n".join(f"  {m}:{line}: {s}" for m, line, s in in_func)
    print(f"{len(in_func)} apq_lib-internal imports inside functions:\n{listing}")
    assert len(in_func) <= MAX_FUNCTION_LEVEL_IMPORTS, (
        f"{len(in_func)} apq_lib-internal imports inside functions (limit "
        f"{MAX_FUNCTION_LEVEL_IMPORTS}); move them to module level:\n{listing}")


# modules allowed over MAX_MODULE_LINES: the profile schema (one dataclass per section)
MAX_MODULE_LINES, LONG_MODULES = 400, {"apq_lib/config.py"}


def test_no_module_over_the_line_limit():
    """One paper concept per module: none over 400 lines but the profile schema."""
    long = {str(p.relative_to(ROOT)): n for p in (ROOT / PKG).rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert set(long) <= LONG_MODULES, long


def test_one_name_per_concept():
    """No public top-level function, class or constant is defined in two modules (the
    ``main`` of each command-line module excepted): one name, one meaning."""
    where = defaultdict(list)
    for p in (ROOT / PKG).rglob("*.py"):
        for node in ast.parse(p.read_text()).body:
            names = [node.name] if isinstance(node, (ast.FunctionDef, ast.ClassDef)) else \
                [t.id for t in getattr(node, "targets", []) if isinstance(t, ast.Name)
                 and t.id.isupper()] if isinstance(node, ast.Assign) else []
            for n in names:
                if not n.startswith("_") and n != "main":
                    where[n].append(str(p.relative_to(ROOT)))
    twice = {n: ps for n, ps in where.items() if len(ps) > 1}
    assert not twice, twice


# ------------------------------------------------------------------ seeds (issue 27 §3)
def _code_units() -> dict[str, str]:
    """Every source the suite runs: the package's modules and the notebooks' code cells."""
    import json
    out = {str(p.relative_to(ROOT)): p.read_text() for p in (ROOT / PKG).rglob("*.py")}
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(nb.read_text())["cells"]
        code = ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]
        out[str(nb.relative_to(ROOT))] = "\n".join(
            ln for ln in "\n".join(code).splitlines() if not ln.lstrip().startswith(("%", "!")))
    return out


def _name(node: ast.AST) -> str:
    """``seed`` of ``seed`` / ``cfg.seed``; ``stream_rng`` of ``stream_rng`` / ``m.stream_rng``."""
    return node.id if isinstance(node, ast.Name) else \
        node.attr if isinstance(node, ast.Attribute) else ""


def _names_seed(node: ast.AST) -> bool:
    return _name(node).lower().endswith("seed")    # seed, cfg.seed, split_seed; not n_seeds


def _seed_arithmetic(src: str) -> list[str]:
    """Arithmetic on a seed (``seed + 7919``, ``self.seed * 1000 + k``, ``cfg.seed + i``):
    an ad-hoc offset instead of a registered stream."""
    return [ast.unparse(n) for n in ast.walk(ast.parse(src))
            if isinstance(n, ast.BinOp) and (_names_seed(n.left) or _names_seed(n.right))]


# where each function that takes a stream has it as a positional argument
_STREAM_ARG = {"stream_seed": 1, "stream_rng": 1, "stream_generator": 1, "train_batches": 1,
               "finetune_batches": 4}


def _streams_named(src: str) -> set[str]:
    """String constants passed as a stream: the second argument of a ``stream_*`` call or of
    the loaders that take a stream, or a ``stream=`` keyword."""
    out = set()
    for n in ast.walk(ast.parse(src)):
        if not isinstance(n, ast.Call):
            continue
        i = _STREAM_ARG.get(_name(n.func))
        args = [] if i is None else n.args[i:i + 1]
        args += [k.value for k in n.keywords if k.arg == "stream"]
        out |= {a.value for a in args if isinstance(a, ast.Constant) and isinstance(a.value, str)}
    return out


def test_seed_checks_see_planted_cases():
    assert _seed_arithmetic("f(seed + 7919)\ng(self.seed * 1000 + k)\nh(x + 1)") == [
        "seed + 7919", "self.seed * 1000"]
    assert _seed_arithmetic("[cfg.seed + i for i in range(3)]") == ["cfg.seed + i"]
    assert _seed_arithmetic("stream_seed(seed, 'x', k + 1)") == []
    assert _streams_named("stream_seed(s, 'a', 1)\nstream_rng(s, 'b')\n"
                          "finetune_batches(d, r, s, m, 'c')\nfinetune_batches(d, r, s, m, "
                          "stream='e')\nself.train_batches(k, 'f')") == {"a", "b", "c", "e", "f"}


def test_no_seed_is_derived_by_arithmetic():
    """Every seed the suite derives comes from a registered stream
    (:func:`apq_lib.runtime.stream_seed`), never from an offset or a multiplier: offsets
    collide (run 1 of one experiment is run 0 of the next seed) and name no stream."""
    bad = {path: hits for path, src in _code_units().items()
           if path != "apq_lib/runtime.py" and (hits := _seed_arithmetic(src))}
    assert not bad, bad


def test_every_registered_stream_is_drawn_from():
    """The registry names exactly the streams the code draws from (an unused entry is a
    stream someone bypassed with an ad-hoc seed; an unregistered one raises at run time)."""
    import importlib
    streams = importlib.import_module("apq_lib.runtime").STREAMS
    named = set().union(*(_streams_named(src) for src in _code_units().values()))
    assert set(streams) - named == set(), "registered, never drawn from"
    assert named - set(streams) == set(), "drawn from, not registered"
