"""Device-correct by construction (issue 32): a tensor factory call names its device, or says why it is on the CPU.

The suite cannot run a GPU in CI, so this is the CPU-side guard of the GPU path: every call of a torch factory
(``torch.tensor``, ``torch.zeros``, ``torch.arange``, ...) in ``src/`` and in the tests of code that touches a model
passes ``device=``, or carries a comment with the word "cpu" on one of the statement's lines saying why the tensor is
deliberately on the CPU (a float64 solve, a result returned on the CPU, a seeded draw moved on purpose). A CPU tensor
made by accident for a model on ``cuda`` is how 85 tests and ROME failed on the first GPU run.

Exempt by contract: ``knowloc.analysis`` (pure maths on CPU results; it never sees a model), and the tests of
analysis, plots, data and the report (no model tensors). Docstring examples are strings, not calls, so they are not
checked.
"""

from __future__ import annotations

import ast
import io
import tokenize
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FACTORIES = {"tensor", "as_tensor", "zeros", "ones", "full", "empty", "arange", "randn", "rand", "randint", "eye",
             "linspace", "randperm"}
EXEMPT = ("src/knowloc/analysis/", "tests/analysis/", "tests/plots/", "tests/data/", "tests/report/")


def undeviced_factory_calls(source: str) -> list[tuple[int, str]]:
    """``[(line, call)]`` of torch factory calls with no ``device=`` and no "cpu" comment on their statement's lines.

    Example:
        >>> undeviced_factory_calls("import torch\\nx = torch.zeros(3)\\ny = torch.ones(2, device=d)\\n")
        [(2, 'torch.zeros')]
    """
    tree = ast.parse(source)
    comments: dict[int, str] = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            comments[token.start[0]] = token.string.lower()
    found = []
    for statement in ast.walk(tree):
        if not isinstance(statement, ast.stmt) or isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                                         ast.ClassDef, ast.With, ast.For, ast.If,
                                                                         ast.While, ast.Try)):
            continue
        lines = range(statement.lineno, (statement.end_lineno or statement.lineno) + 1)
        explained = any("cpu" in comments.get(line, "") for line in lines)
        for node in ast.walk(statement):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch"
                    and node.func.attr in FACTORIES):
                continue
            if any(k.arg == "device" or k.arg is None for k in node.keywords) or explained:
                continue
            found.append((node.lineno, f"torch.{node.func.attr}"))
    # compound statements' headers (a `with`'s items, a `for`'s iterable, an `if`'s test) are checked as well
    for statement in ast.walk(tree):
        header = {ast.With: lambda s: s.items, ast.For: lambda s: [s.iter], ast.If: lambda s: [s.test],
                  ast.While: lambda s: [s.test]}.get(type(statement))
        if header is None:
            continue
        for part in header(statement):
            for node in ast.walk(part):
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                        and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch"
                        and node.func.attr in FACTORIES
                        and not any(k.arg == "device" or k.arg is None for k in node.keywords)
                        and "cpu" not in comments.get(node.lineno, "")):
                    found.append((node.lineno, f"torch.{node.func.attr}"))
    return sorted(set(found))


def checked_files() -> list[Path]:
    files = sorted((REPO / "src" / "knowloc").rglob("*.py")) + sorted((REPO / "tests").rglob("*.py"))
    return [f for f in files if not str(f.relative_to(REPO)).startswith(EXEMPT)]


def test_the_checker_flags_a_cpu_tensor_and_accepts_a_device_or_a_reason():
    source = ("import torch\n"
              "a = torch.tensor([1, 2])\n"
              "b = torch.tensor([1, 2], device=lm.device)\n"
              "c = torch.zeros(2, 3)  # on the CPU: a float64 solve\n"
              "d = lm.model(input_ids=torch.arange(\n"
              "    4))\n"
              "with trace(torch.ones(1)):\n"
              "    pass\n"
              "e = torch.randn(3, **where)\n")
    assert undeviced_factory_calls(source) == [(2, "torch.tensor"), (5, "torch.arange"), (7, "torch.ones")]


@pytest.mark.parametrize("path", checked_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_tensor_factory_names_its_device_or_why_it_is_on_the_cpu(path):
    calls = undeviced_factory_calls(path.read_text())
    assert not calls, (f"{path.relative_to(REPO)}: " + ", ".join(f"line {line} {call}" for line, call in calls)
                       + ": pass device= (the model's, or the suite's `device` fixture) or say in a comment with "
                       "'cpu' why the tensor is on the CPU")
