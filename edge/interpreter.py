"""LiteRT interpreter loading: ai-edge-litert first, tflite-runtime as fallback, EdgeTPU delegate when present."""

import ctypes
import os

from kseg.errors import ModelFileError

try:
    from ai_edge_litert.interpreter import Interpreter, load_delegate
except ImportError:  # pragma: no cover - devices with only tflite-runtime
    from tflite_runtime.interpreter import Interpreter, load_delegate


def load_interpreter(model_path=None, model_content=None, num_threads=None, edgetpu=False):
    """Create and allocate an interpreter.

    Args:
        model_path: path to a ``.tflite`` file (or pass ``model_content`` bytes).
        num_threads: XNNPACK threads; ``None`` lets LiteRT decide.
        edgetpu: try ``libedgetpu.so.1``; on failure fall back to the CPU and say so.
    """
    if model_path is not None and not os.path.isfile(model_path):
        raise ModelFileError(f"model file not found: {model_path}")
    delegates = []
    if edgetpu:
        try:
            delegates.append(load_delegate("libedgetpu.so.1"))
        except (OSError, ValueError) as e:
            print(f"kseg-edge: EdgeTPU delegate unavailable ({e}); running on the CPU")
    try:
        interp = Interpreter(model_path=model_path, model_content=model_content,
                             num_threads=num_threads, experimental_delegates=delegates or None)
        interp.allocate_tensors()
    except (ValueError, RuntimeError) as e:
        raise ModelFileError(f"{model_path or '<bytes>'} is not a valid TFLite model: {e}") from None
    if model_path is not None:
        _release_mapped_pages(model_path)
    return interp


def _release_mapped_pages(path):
    """Hands the resident pages of the interpreter's read-only memory map of ``path`` back to the page cache.

    Once tensors are allocated, XNNPACK (and the EdgeTPU delegate) hold their own packed copy of the weights and
    the file's pages are rarely read again; any that are come back from the page cache on first touch. Without
    this the process holds the model twice (measured: peak RSS of ``kseg-edge run`` on a 5 MB int8 model 105 ->
    101 MB). Linux only; a no-op elsewhere or when the map cannot be found.
    """
    libc = _glibc()
    if libc is None:
        return
    try:
        real = os.path.realpath(path)
        with open("/proc/self/maps") as f:
            ranges = [line.split()[0] for line in f if line.rstrip().endswith(real) and "w" not in line.split()[1]]
    except OSError:
        return
    libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    for span in ranges:
        start, end = (int(x, 16) for x in span.split("-"))
        libc.madvise(start, end - start, 4)  # 4: MADV_DONTNEED; read-only file pages, nothing is lost


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
