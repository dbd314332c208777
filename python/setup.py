"""Builds libpatchbay.so with the repository's CMake (the C library is the
engine; nothing is reimplemented in Python) and puts it inside the package,
with the CUDA backend's module (libpatchbay_cuda.so) beside it when the
build has one: the library loads it from there on first use of CUDA.

PB_BUILD_DIR: use the libpatchbay.so an existing build folder holds (the
test command's Release build) instead of configuring a new one.
"""

import os
import shutil
import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


class BuildWithLibrary(build_py):
    def run(self):
        library = self._library()
        super().run()
        target = Path(self.build_lib) / "patchbay"
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy2(library, target / "libpatchbay.so")
        cuda_module = library.parent / "libpatchbay_cuda.so"
        if cuda_module.exists():
            shutil.copy2(cuda_module, target / cuda_module.name)

    def _library(self) -> Path:
        given = os.environ.get("PB_BUILD_DIR")
        if given:
            library = Path(given).resolve() / "libpatchbay.so"
            if not library.exists():
                raise SystemExit(f"patchbay: PB_BUILD_DIR={given} holds no libpatchbay.so")
            return library
        build = ROOT / "build-python"
        subprocess.check_call(["cmake", "-S", str(ROOT), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
                               "-DPB_SHARED=ON"])
        subprocess.check_call(["cmake", "--build", str(build), "--target", "patchbay_shared", "-j",
                               str(os.cpu_count() or 1)])
        return build / "libpatchbay.so"


setup(cmdclass={"build_py": BuildWithLibrary})
