"""The package's layering (README "How the code is laid out"), read from the source with ast."""

import ast
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[2]
PKG = ROOT / "dsafs"
# What each layer may import from dsafs (the top-level shared modules: errors, units, rules,
# events; `cli` may import everything).
SHARED = {"dsafs", "dsafs.errors", "dsafs.units", "dsafs.rules", "dsafs.events"}
ALLOWED = {
    "ondisk": {"ondisk"},
    "members": {"members", "ondisk"},
    "engine": {"engine", "members", "ondisk"},
    "testing": {"testing", "engine", "members", "ondisk", "service"},
    "service": {"service", "engine", "members", "ondisk"},
}
MAX_LINES = 600


def modules():
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        name = ".".join(rel.parts)
        if name.endswith(".__init__"):
            name = name[: -len(".__init__")]
        yield name, path


def is_module(dotted):
    rel = pathlib.Path(*dotted.split("."))
    return (ROOT / rel).is_dir() or (ROOT / rel).with_suffix(".py").exists()


def dsafs_imports(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("dsafs"):
            assert node.level == 0, f"{path}: relative import"
            for a in node.names:     # `from dsafs.engine import decide` imports dsafs.engine.decide
                sub = f"{node.module}.{a.name}"
                yield sub if is_module(sub) else node.module
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("dsafs"):
                    yield a.name


def layer(name):
    parts = name.split(".")
    return parts[1] if len(parts) > 2 else None


def test_no_module_imports_a_layer_above_its_own():
    bad = []
    for name, path in modules():
        own = layer(name)
        for imp in dsafs_imports(path):
            if imp in SHARED or own is None and name != "dsafs.cli" and layer(imp) is None:
                continue
            if name == "dsafs.cli":
                continue
            if own is None:          # a shared module imports only shared ones
                bad.append(f"{name} -> {imp}")
            elif layer(imp) not in ALLOWED[own]:
                bad.append(f"{name} -> {imp}")
    assert not bad, "\n".join(bad)


def test_the_engine_never_imports_pyfuse3():
    for name, path in modules():
        if layer(name) in ("engine", "members", "ondisk"):
            assert "pyfuse3" not in path.read_text(), name


def test_no_import_cycles():
    graph = {name: {i for i in dsafs_imports(path) if i != name} for name, path in modules()}
    state = {}

    def visit(n, stack):
        state[n] = "open"
        for m in graph.get(n, ()):
            if state.get(m) == "open":
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(m):] + [m]))
            if m not in state:
                visit(m, stack + [m])
        state[n] = "done"

    for n in graph:
        if n not in state:
            visit(n, [n])


def test_no_engine_class_inherits_from_another_engine_class():
    engine_classes = set()
    bases = []
    for name, path in modules():
        if layer(name) != "engine":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                engine_classes.add(node.name)
                bases += [(name, node.name, ast.unparse(b)) for b in node.bases]
    bad = [f"{m}.{c}({b})" for m, c, b in bases if b.split(".")[-1] in engine_classes]
    assert not bad, bad


def test_no_module_reaches_into_another_modules_private_names():
    """`x._name` (x not self/cls) where `_name` is not defined in the same module: another
    module's private state. (A request object and the member that owns it, in one module, may
    share privates: that is one mechanism.)"""
    pattern = re.compile(r"\b(?!self\b|cls\b)([a-z_][a-z0-9_]*)\.(_[a-z][a-z0-9_]*)")
    defined = re.compile(r"(?:self\.|def |^\s*)(_[a-z][a-z0-9_]*)\s*[=:(]", re.M)
    allowed = {"_errno", "os", "sys", "trio"}     # module aliases and stdlib conventions
    # intake.py replaces pyfuse3's reader wait: the one place dsafs patches a library's private
    # (its docstring says why, and which pyfuse3 versions it supports)
    exempt = {("dsafs.service.intake", "pyfuse3._wait_fuse_readable")}
    bad = []
    for name, path in modules():
        text = path.read_text()
        own = set(defined.findall(text))
        for n, line in enumerate(text.splitlines(), 1):
            code = line.split("#", 1)[0]
            for m in pattern.finditer(code):
                if (m.group(1) not in allowed and m.group(2) not in own
                        and (name, m.group(0)) not in exempt):
                    bad.append(f"{name}:{n}: {line.strip()}")
    assert not bad, "\n".join(bad)


def test_every_module_is_under_600_lines():
    long = [f"{name}: {len(path.read_text().splitlines())}" for name, path in modules()
            if len(path.read_text().splitlines()) > MAX_LINES]
    assert not long, long


def test_every_module_states_its_invariant():
    missing = [name for name, path in modules() if path.name != "__init__.py"
               and "Invariant" not in (ast.get_docstring(ast.parse(path.read_text())) or "")]
    assert not missing, missing
