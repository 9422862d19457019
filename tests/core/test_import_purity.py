"""The core must import under Pyodide: only the standard library and pydantic, no I/O."""

from __future__ import annotations

import json
import subprocess
import sys

ALLOWED_THIRD_PARTY = {
    "pydantic",
    "pydantic_core",
    "typing_extensions",
    "annotated_types",
    "typing_inspection",
}


def test_importing_the_core_loads_no_third_party_module_but_pydantic() -> None:
    code = (
        "import sys, json; before = set(sys.modules); import refluxo.core; "
        "[getattr(refluxo.core, name) for name in refluxo.core.__all__]; "
        "print(json.dumps(sorted(set(sys.modules) - before)))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    loaded = {name.split(".")[0] for name in json.loads(out.stdout)}
    stdlib = set(sys.stdlib_module_names) | {"refluxo"}
    third_party = {m for m in loaded if m not in stdlib and not m.startswith("_")}
    assert third_party <= ALLOWED_THIRD_PARTY, third_party - ALLOWED_THIRD_PARTY


def test_the_core_never_imports_an_adapter() -> None:
    code = (
        "import sys, refluxo.core; print([m for m in sys.modules "
        "if m.startswith('refluxo.') and not m.startswith('refluxo.core')])"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "[]"


def test_defining_the_models_does_not_compile_the_tokenizer() -> None:
    # Reading a builtin default factory's signature (pydantic does, for every such field)
    # compiles tokenize's regular expressions on CPython before 3.12: milliseconds of every
    # cold start, for nothing.
    code = (
        "import tokenize, refluxo.core.dispatcher, refluxo.core.settings; "
        "compiled = getattr(tokenize, '_compile', None); "
        "print(compiled.cache_info().currsize if hasattr(compiled, 'cache_info') else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "0"
