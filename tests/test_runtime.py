import os
import platform
import subprocess
import sys

import pytest

PROBE = ("import ctypes, s2s.ops.runtime as r; ok = r.tune_allocator(); "
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


def test_onednn_cache_limit_is_a_default_and_set_before_gemm_starts_onednn():
    code = ("import os, s2s.ops.gemm as g, s2s.ops.runtime as r; assert g._op is g._UNSET; "
            "r.limit_onednn_caches(); print(os.environ['ONEDNN_PRIMITIVE_CACHE_CAPACITY'], "
            "os.environ['LRU_CACHE_CAPACITY'])")
    env = {k: v for k, v in os.environ.items()
           if k not in ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")}
    run = lambda **extra: subprocess.run(  # noqa: E731
        [sys.executable, "-c", code], env={**env, **extra}, capture_output=True, text=True,
        check=True).stdout.split()
    assert run() == ["32", "32"]
    assert run(ONEDNN_PRIMITIVE_CACHE_CAPACITY="7") == ["7", "32"]  # an explicit setting wins
