"""dvc.yaml declares every file and param each stage really uses, found by reading the code (ast).

A stage's code is its module (`python -m pipeline.<stage>`) and, transitively,
every module of this repository that it imports. Each of those files must be a
dep of the stage (itself or a directory holding it), or DVC would call the
stage up to date after a change to code it runs.

The params a stage reads are found the same way. The code reads params.yaml
in the stage's `main()` (`params = load_params()`) and hands sections to
functions whose argument is named after the section (`serving`, or
`window_params`), so a read is a chain of constant keys on `params`, on an
alias assigned from it in the same function, or on such an argument:
`params["serving"]["model_name"]`, `settings = params["evaluate"]` then
`settings["margin"]`, `serving["base_path"]`, `smoke.get("rest_target")`.
Passing `params` or a section on as a call argument is not a read (the
callee reads what it needs);
using it as a value in any other way (stored, returned) reads all of it. The
`main()` of an imported module never runs in the stage, so it is skipped.
"""

import ast
import functools
from pathlib import Path

import pytest
import yaml

from tests.helpers.repository import REPO_ROOT

DVC_YAML = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())
PARAMS = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
PACKAGES = ("pipeline", "serving", "forecast")
LOADER = "pipeline.config"  # load_params hands all of params.yaml to the stage's main()
SECTIONS = {name for name, value in PARAMS.items() if isinstance(value, dict)}


def module_file(module: str) -> Path:
    path = REPO_ROOT / Path(*module.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


@functools.cache
def parsed(path: Path) -> ast.Module:
    """The syntax tree of a source file, read once: the finders below walk the same modules many times."""
    return ast.parse(path.read_text())


def imported_modules(module: str) -> set[str]:
    """The repository's modules that `module` imports directly (at any depth in its code)."""
    found = set()
    for node in ast.walk(parsed(module_file(module))):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            if name.split(".")[0] in PACKAGES and module_file(name).exists():
                found.add(name)
    return found - {module}


def import_closure(module: str) -> set[str]:
    """`module` and every repository module importing it runs, the packages holding them included."""
    closure, todo = set(), [module]
    while todo:
        current = todo.pop()
        if current not in closure:
            closure.add(current)
            todo.extend(imported_modules(current))
            parts = current.split(".")
            todo.extend(
                ".".join(parts[:depth])
                for depth in range(1, len(parts))
                if module_file(".".join(parts[:depth])).exists()
            )
    return closure


def _constant_key(node) -> str | None:
    """The key of `x["key"]` or `x.get("key", ...)`, else None."""
    if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, str):
        return node.slice.value
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "get"
        and node.args
        and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, str)
    ):
        return node.args[0].value
    return None


def _base(node):
    return node.value if isinstance(node, ast.Subscript) else node.func.value


def params_read(function: ast.AST) -> set[tuple[str, ...]]:
    """Key paths of params.yaml that `function`'s code reads (see the module docstring)."""
    roots = {"params": ()}
    roots.update({name: (name,) for name in SECTIONS})
    roots.update({f"{name}_params": (name,) for name in SECTIONS})
    parents = {child: parent for parent in ast.walk(function) for child in ast.iter_child_nodes(parent)}

    def path_of(node):
        keys = []
        while _constant_key(node) is not None:
            keys.append(_constant_key(node))
            node = _base(node)
        if isinstance(node, ast.Name) and node.id in roots:
            return roots[node.id] + tuple(reversed(keys))
        return None

    aliases, alias_values = {"params"}, set()
    # Aliases first (`settings = params["evaluate"]`), in source order.
    for node in ast.walk(function):
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1):
            continue
        target, value = node.targets[0], node.value
        pairs = (
            [(target, value)]
            if isinstance(target, ast.Name)
            else list(zip(target.elts, value.elts))
            if isinstance(target, ast.Tuple) and isinstance(value, ast.Tuple)
            else []
        )
        for name, source in pairs:
            path = path_of(source)
            if isinstance(name, ast.Name) and path is not None:
                roots[name.id] = path
                aliases.add(name.id)
                alias_values.add(source)
    reads = set()
    for node in ast.walk(function):
        if not (isinstance(node, (ast.Subscript, ast.Call, ast.Name))):
            continue
        path = path_of(node)
        parent = parents.get(node)
        if path is None or (isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load)):
            continue
        if isinstance(node, ast.Name) and node.id not in aliases:
            continue  # `model`, `window`...: only their keys are params, the bare name may be anything
        if _constant_key(parent) is not None and _base(parent) is node:
            continue  # part of a longer chain
        if isinstance(parent, ast.Attribute) and parent.attr == "get":
            continue  # x.get(...): the call is the chain
        if node in alias_values:
            continue  # an alias
        handed_on = isinstance(parent, (ast.Call, ast.keyword)) and node is not getattr(parent, "func", None)
        if handed_on and (path == () or (len(path) == 1 and path[0] in SECTIONS)):
            continue  # params or a section handed to a function, which reads what it needs
        reads.add(path)
    return reads


def _definitions(module: str) -> tuple[dict, dict]:
    """Top-level functions and classes of `module` by name, and the names it imports from the repository."""
    tree = parsed(module_file(module))
    definitions = {node.name: node for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
    imported = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PACKAGES:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                imported[alias.asname or alias.name] = (
                    (submodule, None) if module_file(submodule).exists() else (node.module, alias.name)
                )
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in PACKAGES:
                    imported[alias.asname or alias.name] = (alias.name, None)
    return definitions, imported


def reachable_code(module: str) -> list[ast.AST]:
    """The definitions that the stage's `main()` can run, following references by name
    (`f`, `module.f`, a class and all its methods), plus every module's top-level code."""
    seen, todo, code = set(), [(module, "main")], []
    for name in import_closure(module):
        tree = parsed(module_file(name))
        code += [node for node in tree.body if not isinstance(node, (ast.FunctionDef, ast.ClassDef))]
    while todo:
        where, name = todo.pop()
        definitions, imported = _definitions(where)
        if (where, name) in seen or name not in definitions or where == LOADER:
            continue
        seen.add((where, name))
        code.append(definitions[name])
        for node in ast.walk(definitions[name]):
            if isinstance(node, ast.Name):
                if node.id in definitions:
                    todo.append((where, node.id))
                elif node.id in imported and imported[node.id][1] is not None:
                    todo.append(imported[node.id])
            elif isinstance(node, ast.Attribute) and isinstance(node.value, (ast.Name, ast.Attribute)):
                owner = ast.unparse(node.value)
                target = imported.get(owner, (owner, None))[0] if owner in imported else owner
                if target.split(".")[0] in PACKAGES:
                    todo.append((target, node.attr))
    return code


def stage_params(module: str) -> set[tuple[str, ...]]:
    return set().union(*(params_read(node) for node in reachable_code(module)))


def stage_of(name: str) -> tuple[str, dict]:
    stage = DVC_YAML["stages"][name]
    return stage["cmd"].split("python -m ")[1].split()[0], stage


STAGES = list(DVC_YAML["stages"])


@pytest.mark.parametrize("name", STAGES)
def test_every_module_a_stage_imports_is_a_dep(name):
    module, stage = stage_of(name)
    deps = [dep.rstrip("/") for dep in stage["deps"]]
    files = sorted(str(module_file(m).relative_to(REPO_ROOT)) for m in import_closure(module))
    missing = [f for f in files if not any(f == dep or f.startswith(dep + "/") for dep in deps)]
    assert not missing, f"dvc.yaml: stage {name} runs {missing} but does not depend on them"


@pytest.mark.parametrize("name", STAGES)
def test_every_code_dep_is_code_the_stage_runs(name):
    """A stage depends on no module it does not run, so editing one stage never makes another stale."""
    module, stage = stage_of(name)
    files = {str(module_file(m).relative_to(REPO_ROOT)) for m in import_closure(module)}
    code_deps = [dep.split("#")[0].strip() for dep in stage["deps"] if dep.endswith(".py")]
    unused = sorted(set(code_deps) - files)
    assert not unused, f"dvc.yaml: stage {name} depends on {unused} but never imports them"


@pytest.mark.parametrize("name", STAGES)
def test_every_param_a_stage_reads_is_declared(name):
    module, stage = stage_of(name)
    declared = {tuple(param.split(".")) for param in stage.get("params", [])}
    missing = sorted(
        ".".join(path) or "(all of params.yaml)"
        for path in stage_params(module)
        if not any(path[: len(d)] == d for d in declared)
    )
    assert not missing, f"dvc.yaml: stage {name} reads params {missing} but does not declare them"


@pytest.mark.parametrize("name", STAGES)
def test_every_declared_param_is_read(name):
    module, stage = stage_of(name)
    reads = stage_params(module)
    unused = [
        param
        for param in stage.get("params", [])
        if not any(
            path[: len(param.split("."))] == tuple(param.split(".")) or tuple(param.split("."))[: len(path)] == path
            for path in reads
        )
    ]
    assert not unused, f"dvc.yaml: stage {name} declares params {unused} that its code never reads"


def test_no_stage_imports_another_stage():
    """What stages share lives in library modules, so editing one stage never makes another stale."""
    stage_modules = {stage_of(name)[0] for name in STAGES}
    crossing = sorted(
        f"{module} imports {other}"
        for module in stage_modules
        for other in imported_modules(module)
        if other in stage_modules or other.rpartition(".")[0] in stage_modules
    )
    assert crossing == []


def test_the_import_reader_finds_a_stage_importing_a_stage(tmp_path, monkeypatch):
    """The check above reads real import statements, in any form and at any depth of the code."""
    (tmp_path / "pipeline").mkdir()
    sources = {
        "evaluate": "from pipeline.train import make_dataset\ndef main():\n    import pipeline.window\n",
        "train": "",
        "window": "",
        "model": "import numpy\n",
    }
    for name, code in sources.items():
        (tmp_path / "pipeline" / f"{name}.py").write_text(code)
    monkeypatch.setitem(globals(), "REPO_ROOT", tmp_path)
    assert imported_modules("pipeline.evaluate") == {"pipeline.train", "pipeline.window"}
    assert imported_modules("pipeline.model") == set()


def test_the_finder_sees_aliases_section_arguments_and_wholesale_use():
    code = ast.parse("""
def main():
    params = load_params()
    settings, smoke = params["evaluate"], params["smoke"]
    use(settings["margin"], params["seed"], smoke.get("server"))
    publish(params["serving"])          # handed on: not a read
    card = {"data": params["data"]}     # stored: all of `data`

def publish(serving):
    return serving["base_path"], serving.get("keep_versions")
""")
    reads = set().union(*(params_read(node) for node in code.body))
    assert reads == {
        ("evaluate", "margin"),
        ("seed",),
        ("smoke", "server"),
        ("data",),
        ("serving", "base_path"),
        ("serving", "keep_versions"),
    }


def test_renaming_the_served_input_would_make_the_stages_that_use_it_stale():
    for name in ("train", "evaluate", "export", "smoke"):
        module, stage = stage_of(name)
        assert "pipeline.schema" in import_closure(module), name
        assert "pipeline/schema.py" in stage["deps"], name


def test_serving_never_imports_pipeline_and_pipeline_only_the_version_store():
    """The layout is TF Serving's, so its version store lives in serving/; the pipeline uses nothing else there."""

    def modules(package):
        return [
            ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts).removesuffix(".__init__")
            for path in (REPO_ROOT / package).rglob("*.py")
        ]

    crossing = sorted(
        f"{module} imports {other}"
        for module in modules("serving")
        for other in imported_modules(module)
        if other.split(".")[0] == "pipeline"
    )
    assert crossing == []
    beyond_the_store = sorted(
        f"{module} imports {other}"
        for module in modules("pipeline")
        for other in imported_modules(module)
        if other.split(".")[0] == "serving" and not other.startswith("serving.store")
    )
    assert beyond_the_store == []


def test_every_plotted_file_is_an_output_its_stage_writes():
    """Each file a dvc.yaml plot reads lies in a stage's outs, and that stage's code names it.

    A plot is a named definition reading the files in its `y`, or an image: just its path."""
    plotted = {
        path
        for plot in DVC_YAML["plots"]
        for path in (
            [plot] if isinstance(plot, str) else [file for definition in plot.values() for file in definition["y"]]
        )
    }
    assert {
        "plots/evaluate/by_horizon.csv",
        "plots/evaluate/reliability.csv",
        "models/architecture/model.png",
    } <= plotted
    for path in sorted(plotted):
        owners = [
            name
            for name, stage in DVC_YAML["stages"].items()
            for out in stage.get("outs", [])
            for declared in ([out] if isinstance(out, str) else out)
            if path == declared or path.startswith(declared.rstrip("/") + "/")
        ]
        assert len(owners) == 1, f"dvc.yaml: plot file {path} is in the outs of {owners or 'no stage'}"
        module, _ = stage_of(owners[0])
        if not path.startswith("dvclive/"):  # DVCLive writes the training curves
            constants = {
                node.value
                for name in import_closure(module)
                for node in ast.walk(parsed(module_file(name)))
                if isinstance(node, ast.Constant) and isinstance(node.value, str)
            }
            assert Path(path).name in constants, f"{module} never writes {path}"
