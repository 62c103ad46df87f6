"""The compiled module keeps what it links from static archives to itself.

Some toolchains link libstdc++ statically by default (the CUDA image of the H200 we test on
does). The module then carried its own libstdc++ and, with those symbols exported, the process's
libstdc++.so answered part of its calls: error messages that print numbers crashed the
interpreter. CMakeLists.txt links ``_core`` with ``--exclude-libs,ALL``; this checks the result on
any toolchain through the module's own static library, whose functions must not be exported
either (they were before the flag).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cellsynth import _core

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the linker flag and this check are Linux (ELF)"
)


def _exported() -> list[str]:
    nm = shutil.which("nm")
    assert nm, "nm (binutils) is needed: it comes with the compiler that builds the core"
    out = subprocess.run(
        [nm, "-D", "-C", "--defined-only", str(Path(_core.__file__))],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return [line.split(" ", 2)[2] for line in out.splitlines() if line.count(" ") >= 2]


def test_only_the_module_entry_and_header_templates_are_exported() -> None:
    names = _exported()
    assert "PyInit__core" in names
    # Anywhere in the name: template instantiations demangle with their return type first.
    ours = [n for n in names if "cellsynth::" in n]
    assert not ours, f"the core's own functions are exported: {ours[:5]}"
    # The library's own code behind number formatting (header templates such as to_string or a
    # stringbuf destructor are emitted into every module and stay exported; those are harmless).
    library = r"(typeinfo (name )?for |vtable for )?std::(__cxx11::)?"
    library += r"(locale|ios_base|basic_ostream|basic_ios|codecvt|num_put|numpunct)\b"
    runtime = [n for n in names if re.match(library, n)]
    assert not runtime, f"libstdc++'s own code is exported: {runtime[:5]}"
