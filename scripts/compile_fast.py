"""Compile the fast engine with mypyc (``make compile``).

The modules of ``gateway/fast`` are copied to ``gateway/fast_c`` and the copy is compiled
in place by mypyc (C extension modules, one shared library); the copied sources are then
removed, and ``gateway/fast_c/__init__.py`` is written last, holding the digest of the
sources it was made from. ``gateway.fast.engine_class`` runs this build only when that
digest matches the sources as they are now, so an edit that was not compiled yet is never
silently ignored; without a build (no C compiler, a failed build, ``GATEWAY_NO_EXTENSIONS``)
the engine runs interpreted, the same code.

    python scripts/compile_fast.py          # about 30 s on this machine
"""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "gateway" / "fast"
TARGET = ROOT / "gateway" / "fast_c"
BUILD = ROOT / "build" / "mypyc"

sys.path.insert(0, str(ROOT))
from gateway.fast import MODULES, source_digest  # noqa: E402


def main() -> int:
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:
        print(
            f"compile_fast: no C compiler ({compiler}): the fast engine runs interpreted",
            file=sys.stderr,
        )
        return 0
    digest = source_digest()
    shutil.rmtree(TARGET, ignore_errors=True)
    TARGET.mkdir(parents=True)
    for name in MODULES:
        shutil.copyfile(SOURCE / f"{name}.py", TARGET / f"{name}.py")
    (TARGET / "__init__.py").write_text("")  # a package while mypyc builds it

    from mypyc.build import mypycify
    from setuptools import setup

    os.chdir(ROOT)
    paths = [f"gateway/fast_c/{name}.py" for name in MODULES]
    print(f"compile_fast: compiling {len(paths)} modules with mypyc", flush=True)
    setup(
        name="gateway-fast-compiled",
        packages=[],
        ext_modules=mypycify(
            paths, opt_level="3", group_name="gateway.fast_c.native", target_dir=str(BUILD)
        ),
        script_args=["-q", "build_ext", "--inplace", "--build-temp", str(BUILD / "temp")],
    )
    for name in MODULES:
        (TARGET / f"{name}.py").unlink()
    # Last: until this file holds the digest, the build is not used.
    (TARGET / "__init__.py").write_text(
        '"""The fast engine compiled by mypyc from gateway/fast (scripts/compile_fast.py);\n'
        'generated, not in git."""\n\n'
        f'SOURCE_DIGEST = "{digest}"\n'
    )
    built = sorted(p.name for p in TARGET.glob("*.so"))
    print(f"compile_fast: built {', '.join(built)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
