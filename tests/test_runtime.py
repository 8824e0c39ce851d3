import os
import platform
import subprocess
import sys

import pytest

PROBE = ("import ctypes, s2s.runtime as r; ok = r.tune_allocator(); "
         "print(ok, r.tune_allocator())")


def _probe(**env):
    out = subprocess.run([sys.executable, "-c", PROBE], env={**os.environ, **env},
                         capture_output=True, text=True, check=True)
    return out.stdout.split()


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="allocator tuning is glibc-only")
def test_allocator_is_tuned_once_on_glibc():
    assert _probe() == ["True", "True"]


def test_allocator_left_alone_on_request():
    assert _probe(S2S_MALLOC="system") == ["False", "False"]
