"""Compile the fast engine with mypyc (``make compile``).

The modules of ``gateway/fast`` are copied to ``gateway/fast_c`` and the copy is compiled
in place by mypyc (C extension modules, one shared library); the copied sources are then
removed, and ``gateway/fast_c/__init__.py`` is written last, holding the digest of the
sources it was made from. ``gateway.fast.engine_class`` runs this build only when that
digest matches the sources as they are now, so an edit that was not compiled yet is never
silently ignored; without a build (no C compiler, a failed build, ``GATEWAY_NO_EXTENSIONS``)
the engine runs interpreted, the same code.

    python scripts/compile_fast.py          # about 30 s on this machine
    python scripts/compile_fast.py --install   # then into the installed package (below)

``--install`` is for an installed gateway (the container image, a systemd install): ``pip
install .`` leaves ``gateway.fast_c`` out, since a build is made for one interpreter; this
copies the build into the ``gateway`` package of the interpreter running the script (its
``site-packages``), after checking that the package installed there is the one built
from, and then asks that package, from outside the checkout, which build it runs.

Without a C compiler or Python's headers, or when the build fails, it says so and exits 0
(the engine runs interpreted); with GATEWAY_REQUIRE_COMPILED=1, as ``make test`` runs it, it
fails instead, so CI never tests the interpreted build thinking it is the compiled one.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "gateway" / "fast"
TARGET = ROOT / "gateway" / "fast_c"
BUILD = ROOT / "build" / "mypyc"

sys.path.insert(0, str(ROOT))
from gateway.fast import MODULES, built_digest, source_digest  # noqa: E402


def fail(message: str) -> int:
    """A build that cannot be made: the engine runs interpreted. Under
    GATEWAY_REQUIRE_COMPILED=1 (``make test`` sets it) that is an error instead."""
    strict = bool(os.environ.get("GATEWAY_REQUIRE_COMPILED"))
    print(
        f"compile_fast: {message}: the fast engine runs interpreted"
        + (" (GATEWAY_REQUIRE_COMPILED is set: failing)" if strict else ""),
        file=sys.stderr,
    )
    return 1 if strict else 0


def compiler_version() -> str:
    """The compiler a build is made by; a build by another one is rebuilt."""
    try:
        return f"mypy {importlib.metadata.version('mypy')}"
    except importlib.metadata.PackageNotFoundError:
        return "mypy none"


def current() -> bool:
    """A build of the sources as they are, by this compiler, is already there."""
    if built_digest() != source_digest():
        return False
    try:
        made_by = getattr(importlib.import_module("gateway.fast_c"), "COMPILER", None)
    except ImportError:
        return False
    extensions = all((TARGET / name).exists() for name in _extension_names())
    return made_by == compiler_version() and extensions


def _extension_names() -> list[str]:
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    return [f"{name}{suffix}" for name in (*MODULES, "native__mypyc")]


def _ir_lines() -> list[str]:
    """The IR mypyc wrote for this build (its ops.txt), one op a line."""
    ops = BUILD / "ops.txt"
    return ops.read_text().splitlines() if ops.exists() else []


def build() -> None:
    from mypyc.build import mypycify
    from setuptools import Distribution

    paths = [f"gateway/fast_c/{name}.py" for name in MODULES]
    print(f"compile_fast: compiling {len(paths)} modules with mypyc", flush=True)
    extensions = mypycify(
        paths, opt_level="3", group_name="gateway.fast_c.native", target_dir=str(BUILD)
    )
    # A bare Distribution, not setup(): setup() would read the project's pyproject.toml,
    # whose packaging metadata has nothing to do with this build.
    dist = Distribution({"name": "gateway-fast-compiled", "ext_modules": extensions})
    dist.script_args = ["-q", "build_ext", "--inplace", "--build-temp", str(BUILD / "temp")]
    dist.parse_command_line()
    dist.run_commands()


def install() -> int:
    """Copy the build into the installed ``gateway`` package and check that it runs."""
    installed = Path(sysconfig.get_paths()["purelib"]) / "gateway"
    if not (installed / "fast" / "__init__.py").exists():
        # (an editable install keeps the package in the checkout: nothing to copy there)
        print(
            f"compile_fast: no installed gateway package in {installed.parent} "
            "(`pip install .` first; an editable install needs no --install)",
            file=sys.stderr,
        )
        return 1
    if installed.resolve() == (ROOT / "gateway").resolve():
        return 0  # an editable or in-place install: the build is already there
    ask = "from gateway.fast import engine_class; print(engine_class()[1])"
    check = [sys.executable, "-c", ask]
    shutil.rmtree(installed / "fast_c", ignore_errors=True)
    shutil.copytree(TARGET, installed / "fast_c", ignore=shutil.ignore_patterns("__pycache__"))
    # From / and with no PYTHONPATH: the installed package, not this checkout, answers.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "GATEWAY_NO_EXTENSIONS")}
    answer = subprocess.run(check, cwd="/", env=env, capture_output=True, text=True)
    build = answer.stdout.strip()
    if answer.returncode != 0 or build != "compiled":
        # Another version of the package than the one built from, or a build that does
        # not load there: remove it rather than leave a build that is never run.
        shutil.rmtree(installed / "fast_c", ignore_errors=True)
        print(
            f"compile_fast: the installed package in {installed} runs "
            f"{build or answer.stderr.strip()[-500:]!r}, not the build; removed it",
            file=sys.stderr,
        )
        return 1
    print(f"compile_fast: installed the build in {installed / 'fast_c'}: it runs compiled")
    return 0


def main() -> int:
    listed = sorted(p.stem for p in SOURCE.glob("*.py") if p.stem != "__init__")
    if listed != sorted(MODULES):
        # A module left out would run interpreted beside compiled ones, or not be found.
        print(f"compile_fast: gateway.fast.MODULES {MODULES} != {listed}", file=sys.stderr)
        return 1
    os.chdir(ROOT)  # mypyc names modules by their paths
    if current():
        print("compile_fast: the compiled build is current")
        return install() if "--install" in sys.argv[1:] else 0
    compiler = (os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:
        return fail(f"no C compiler ({compiler})")
    header = Path(sysconfig.get_paths()["include"]) / "Python.h"
    if not header.exists():
        return fail(f"no Python headers ({header})")
    digest = source_digest()
    shutil.rmtree(TARGET, ignore_errors=True)
    TARGET.mkdir(parents=True)
    for name in MODULES:
        shutil.copyfile(SOURCE / f"{name}.py", TARGET / f"{name}.py")
    (TARGET / "__init__.py").write_text("")  # a package while mypyc builds it
    try:
        build()
    except (Exception, SystemExit) as exc:  # setuptools reports a failed build by SystemExit
        shutil.rmtree(TARGET, ignore_errors=True)
        return fail(f"the build failed ({exc})")
    for name in MODULES:
        (TARGET / f"{name}.py").unlink()
    leaking = [line.strip() for line in _ir_lines() if "CPyBytes_Concat" in line]
    if leaking:
        # mypyc's bytes + bytes never releases its left operand (gateway/fast/__init__.py).
        shutil.rmtree(TARGET, ignore_errors=True)
        return fail(f"`bytes + bytes` in the engine leaks when compiled: {leaking[:3]}")
    if source_digest() != digest:
        # Edited while it compiled: this build is of the old sources; leave it unmarked.
        return fail("the sources changed during the build; run it again")
    # Last: until this file holds the digest, the build is not used.
    (TARGET / "__init__.py").write_text(
        '"""The fast engine compiled by mypyc from gateway/fast (scripts/compile_fast.py);\n'
        'generated, not in git."""\n\n'
        f'COMPILER = "{compiler_version()}"\n'
        f'SOURCE_DIGEST = "{digest}"\n'
    )
    print(f"compile_fast: built {', '.join(_extension_names())}")
    return install() if "--install" in sys.argv[1:] else 0


if __name__ == "__main__":
    raise SystemExit(main())
