"""The Python API works from a directory holding a ``data/`` folder of images (issue 14 item 8).

A user's ``./data`` is a namespace package on ``sys.path[0]``; with the default (import-hook) editable
install it shadows the project's ``data`` package. The test installs the checkout with the Makefile's own
``pip install -e`` arguments into a throwaway venv (dependencies borrowed from this one, nothing
downloaded) and imports the API from such a directory in a fresh interpreter.
"""
from __future__ import annotations

import re
import shlex
import site
import subprocess
import sys
import venv
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def _makefile_install_args() -> list[str]:
    line = next(ln for ln in (ROOT / "Makefile").read_text().splitlines() if re.search(r"pip install .*-e ", ln))
    args = shlex.split(line.split("pip install", 1)[1])
    return [str(ROOT) if a == ".[dev]" else a for a in args if a != "-q"]  # the checkout, without extras


def test_api_imports_from_a_folder_with_a_data_dir(tmp_path):
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    py = env_dir / "bin" / "python"
    sp = Path(subprocess.check_output([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                      text=True).strip())
    (sp / "zz_deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")  # after the project's own .pth
    clean = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "TMPDIR": str(tmp_path)}
    subprocess.run([py, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                    *_makefile_install_args()], check=True, cwd=ROOT, env=clean,
                   capture_output=True, text=True, timeout=240)
    work = tmp_path / "work"
    (work / "data" / "glyphs").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(work / "data" / "glyphs" / "0.png")
    code = ("import mandc, data, finetune, profiler; from data import DatasetFeatures, load_dataset; "
            "print(data.__file__)")
    r = subprocess.run([py, "-c", code], cwd=work, env=clean, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert Path(r.stdout.strip()) == ROOT / "data" / "__init__.py"
