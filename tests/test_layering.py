"""The package's layers only look down, and no two modules import each other in a circle.

CORE |= {"limits", "numerics", "model", "kernels", "validate", "weights", "paged_kv_cache"}
CORE |= {"arguments"}
    formats     checkpoints/, tokenizers/
    generation  sampling, generate, chat, chat_template
    serving     engine/ (scheduler, block pool, requests: many prompts on one model)
    api         llama_np/__init__.py (what `import llama_np` offers)
    tools       tools/ (costs, memory, machine, profile, trace, ...)
    server      server/ (llama-np serve: HTTP on the engine; the engine never imports it)
    cli         cli/, __main__

Every import in llama_np/ (module level or inside a function, relative or absolute, except
`if TYPE_CHECKING:` blocks) is read with ast and must go to the same layer or one below.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "llama_np"
CORE = {"errors", "config", "schema", "dtypes", "quants", "packed", "layers", "kv_cache", "hooks"}
CORE |= {"limits", "numerics", "model", "kernels", "validate", "weights", "paged_kv_cache"}
CORE |= {"arguments"}
LAYERS = ["core", "formats", "generation", "serving", "api", "tools", "server", "cli"]


def layer_of(module: str) -> str:
    parts = module.split(".")[1:]  # without "llama_np"
    if not parts:
        return "api"
    top = parts[0]
    if top in CORE:
        return "core"
    if top in ("checkpoints", "tokenizers"):
        return "formats"
    if top in ("sampling", "generate", "chat", "chat_template"):
        return "generation"
    if top == "engine":
        return "serving"
    if top == "tools":
        return "tools"
    if top == "server":
        return "server"
    if top in ("cli", "__main__"):
        return "cli"
    raise AssertionError(f"module {module} has no layer: add it to tests/test_layering.py")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """The llama_np modules `path` imports (a name imported from a package counts as the
    submodule when one exists)."""
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text())
    type_checking = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for n in ast.walk(node)
    }
    found = set()
    for node in ast.walk(tree):
        if id(node) in type_checking:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("llama_np")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.startswith("llama_np"):
                target = node.module
            else:
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                exists = (PACKAGE.parent / sub.replace(".", "/")).with_suffix(".py").exists()
                exists |= (PACKAGE.parent / sub.replace(".", "/") / "__init__.py").exists()
                found.add(sub if exists else target)
    return found


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
GRAPH = {m: {i for i in imports(p) if i != m} for m, p in MODULES.items()}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_only_look_down(module):
    mine = LAYERS.index(layer_of(module))
    upward = [i for i in GRAPH[module] if LAYERS.index(layer_of(i)) > mine]
    assert not upward, f"{module} ({layer_of(module)}) imports a higher layer: {upward}"


def test_no_import_cycles():
    # Depth-first search for a back edge; the package facade (__init__) is re-exports only,
    # so edges into a package's __init__ from its own submodules are ignored.
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(GRAPH.get(m, ())):
            if n not in MODULES or m.startswith(n + "."):
                continue
            if state.get(n) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*stack[stack.index(n) :], n]))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(MODULES):
        if m not in state:
            visit(m)


def test_the_engine_imports_no_tools_or_cli():
    """`import llama_np.model` loads only the core (checked in a fresh interpreter)."""
    import subprocess
    import sys

    code = (
        "import sys, llama_np.model\n"
        "bad = [m for m in sys.modules if m.startswith(('llama_np.tools', 'llama_np.cli'))]\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_server_is_loaded_only_by_serve():
    """`import llama_np` and the CLI load neither llama_np.server nor its web stack (the
    serve extra is optional); only `llama-np serve` imports them."""
    import subprocess
    import sys

    code = (
        "import sys, llama_np, llama_np.cli.main\n"
        "web = ('llama_np.server', 'starlette', 'uvicorn')\n"
        "print([m for m in sys.modules if m.startswith(web)])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
