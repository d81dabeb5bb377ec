"""LiteRT interpreter loading: ai-edge-litert first, tflite-runtime as fallback, EdgeTPU delegate when present."""

import contextlib
import ctypes
import os
import re

from kseg.errors import ModelFileError
from kseg.native_log import held_native_output

try:
    from ai_edge_litert.interpreter import Interpreter, load_delegate
except ImportError:  # pragma: no cover - devices with only tflite-runtime
    from tflite_runtime.interpreter import Interpreter, load_delegate


def edgetpu_delegate():
    """The Coral EdgeTPU delegate (``libedgetpu.so.1``), or None when it does not load: then the CPU runs the
    model, and a line says so."""
    try:
        return load_delegate("libedgetpu.so.1")
    except (OSError, ValueError) as e:
        print(f"kseg-edge: EdgeTPU delegate unavailable ({e}); running on the CPU")
        return None


def load_interpreter(model_path=None, model_content=None, num_threads=None, delegate=None):
    """Create and allocate an interpreter.

    Args:
        model_path: path to a ``.tflite`` file (or pass ``model_content`` bytes).
        num_threads: XNNPACK threads; ``None`` lets LiteRT decide.
        delegate: a loaded delegate (``edgetpu_delegate()``), or None for the CPU.
    """
    if model_path is not None and not os.path.isfile(model_path):
        raise ModelFileError(f"model file not found: {model_path}")
    name = model_path or "<bytes>"
    # LiteRT announces its XNNPACK delegate on stderr whatever TF_CPP_MIN_LOG_LEVEL says (kseg.native_log)
    with held_native_output(fds=(2,)):
        try:
            interp = Interpreter(model_path=model_path, model_content=model_content,
                                 num_threads=num_threads, experimental_delegates=[delegate] if delegate else None)
        except (ValueError, RuntimeError) as e:
            raise ModelFileError(f"{name} is not a valid TFLite model: {e}") from None
        try:
            interp.allocate_tensors()
        except (ValueError, RuntimeError) as e:  # a valid file whose ops this LiteRT cannot prepare (sizes, versions)
            raise ModelFileError(f"{name}: LiteRT cannot run this model: {e}") from None
    if model_path is not None:
        release_file_pages(model_path)
    return interp


def release_file_pages(path=None):
    """Hands the resident pages of clean, read-only file mappings back to the page cache, and lets the page cache
    forget the pages of those files that no process maps.

    With ``path``, only the maps of that file: once tensors are allocated, XNNPACK (and the EdgeTPU delegate) hold
    their own packed copy of the weights and the model file's pages are rarely read again (peak RSS of
    ``kseg-edge run`` on a 5 MB int8 model 105 -> 101 MB). Without, every shared library's too: the kernel's
    read-ahead maps far more library code at import than a frame loop runs (OpenCV: 18 MB resident after
    ``import cv2`` where the block device reads ahead 8 MB), and it is all counted as the process's memory.

    Forgetting matters for files that were read whole, as ``pip install`` and an exporter's write leave them: the
    page cache then holds them in large folios, and Linux (6.x) maps a whole folio on a fault, so touching one
    function made up to 2 MB resident (peak RSS of ``kseg-edge run`` 109 MB after a fresh install, 73 MB once the
    libraries came back from disk in read-around pieces; docs/edge.md). Pages another process maps stay cached.

    A page read again comes back from the page cache or the disk on first touch, so nothing is lost; maps holding
    privately modified (copied-on-write) pages, such as relocated library data, and writable maps are left alone,
    since dropping those would lose data.
    Linux only; a no-op elsewhere or when ``/proc/self/smaps`` cannot be read.
    """
    libc = _glibc()
    if libc is None:
        return
    real = os.path.realpath(path) if path is not None else None
    try:
        with open("/proc/self/smaps") as f:
            smaps = f.read()
    except OSError:
        return
    libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    released = set()
    for block in re.split(r"\n(?=[0-9a-f]+-[0-9a-f]+ )", smaps):
        head = block.split("\n", 1)[0].split(maxsplit=5)
        if len(head) < 6 or "w" in head[1] or not head[5].startswith("/"):
            continue  # anonymous, writable or special ([vdso], [heap], ...)
        if real is not None and head[5] != real:
            continue
        if re.search(r"^Anonymous:\s+[1-9]", block, re.M):
            continue  # copied-on-write pages (``Private_Dirty`` also counts file pages not yet written back)
        start, end = (int(x, 16) for x in head[0].split("-"))
        libc.madvise(start, end - start, 4)  # 4: MADV_DONTNEED
        released.add(head[5])
    for name in released:
        _forget_cached_pages(name)


def _forget_cached_pages(path):
    with contextlib.suppress(OSError):  # deleted since it was mapped, or not a file with a page cache
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def limit_malloc_arenas(arenas=1):
    """Caps glibc's malloc arenas (``M_ARENA_MAX``) before the pipeline starts its threads.

    By default glibc gives each thread that allocates its own arena, so frame-sized buffers freed by one stage
    and allocated by another leave pages resident in several arenas. One arena: peak RSS of ``kseg-edge run`` on
    the zoo's int8 DeepLabV3+ 101-102 -> 99 MB (docs/edge.md); its pipeline FPS stayed within the run-to-run
    noise, unlike with a low mmap threshold. The environment variable ``MALLOC_ARENA_MAX``, when set, wins. A
    no-op outside glibc.
    """
    libc = _glibc()
    if libc is not None and "MALLOC_ARENA_MAX" not in os.environ:
        libc.mallopt(-8, arenas)  # -8: M_ARENA_MAX


def _glibc():
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def run_once(interp, x):
    """Invoke on one batch-1 input array (already in the model's input dtype); return output 0."""
    inp = interp.get_input_details()[0]
    interp.set_tensor(inp["index"], x.astype(inp["dtype"], copy=False))
    interp.invoke()
    return interp.get_tensor(interp.get_output_details()[0]["index"])
