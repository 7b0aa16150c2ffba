"""The Thrift decoder has two builds: mypyc's C extension (compiled by ``pip install``, see
``setup.py``) and its plain Python source. The suite runs on the compiled one where the
install built it; this runs the decoder's own tests again on the plain Python one, which
runs wherever the extension is missing, stale or turned off (``SPILLWAY_PURE_PYTHON=1``)."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import agents.thrift_codec as codec

ROOT = Path(__file__).resolve().parent.parent.parent
DECODER_TESTS = ["tests/unit/test_thrift_codec.py", "tests/unit/test_fuzz_source.py"]


def test_this_checkouts_install_compiled_the_decoder_and_the_suite_runs_it() -> None:
    extension = ROOT / "agents" / f"thrift_wire{sysconfig.get_config_var('EXT_SUFFIX')}"
    assert extension.exists(), "scripts/setup.sh (pip install -e .) did not compile agents/thrift_wire.py"
    assert codec.COMPILED and codec.thrift_wire.__file__ == str(extension)


def test_the_decoders_tests_pass_on_the_plain_python_decoder() -> None:
    env = dict(os.environ, SPILLWAY_PURE_PYTHON="1")
    show = "import agents.thrift_codec as c; print(c.COMPILED, c.thrift_wire.__file__)"
    which = subprocess.run([sys.executable, "-c", show], cwd=ROOT, env=env, capture_output=True, text=True,
                           check=True).stdout.split()
    assert which == ["False", str(ROOT / "agents" / "thrift_wire.py")]
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *DECODER_TESTS],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and "failed" not in run.stdout
