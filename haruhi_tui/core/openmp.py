"""Giving back llama.cpp's OpenMP threads when a thread is done with the model.

llama-cpp-python's Linux wheels build llama.cpp with OpenMP (libgomp), which keeps a pool of helper threads
for every thread that ever ran a computation, for as long as that thread lives. The app computes in several
threads (a reply, the warm-up of a line being typed, the benchmarks' own loops), and Textual's thread
workers are pooled, so they live on. Once libgomp manages more threads than the machine has cores, it spins
only ~100 times at a barrier before it sleeps in the kernel, and llama.cpp meets a barrier after every
operation of every layer: measured on the 2-core machine, two threads then decoded at 44-50 tokens/s with
20,000-28,000 sleeps in 96 tokens, against 60-62 tokens/s and none once the other thread's pool was given
back (``omp_pause_resource_all``, OpenMP 5.0). So the engine gives its thread's pool back after every reply
and every prompt evaluation; the next one in any thread starts a fresh pool (a thread start, ~0.1 ms).
"""

from __future__ import annotations

import ctypes
import os

_OMP_PAUSE_SOFT = 1
_gomp = None


def _libgomp():
    """libgomp if this process has loaded it (llama.cpp built with OpenMP), else None."""
    global _gomp
    if _gomp is None:
        try:
            gomp = ctypes.CDLL("libgomp.so.1", mode=os.RTLD_NOLOAD)
            gomp.omp_pause_resource_all.argtypes = [ctypes.c_int]
            gomp.omp_pause_resource_all.restype = ctypes.c_int
        except (OSError, AttributeError):  # not loaded (yet), not Linux, or older than OpenMP 5.0
            return None
        _gomp = gomp
    return _gomp


def release_threads() -> None:
    """Give back the OpenMP helper threads of the calling thread (nothing when llama.cpp does not use
    OpenMP). Call it between computations, never while one runs in this thread."""
    gomp = _libgomp()
    if gomp is not None:
        gomp.omp_pause_resource_all(_OMP_PAUSE_SOFT)
