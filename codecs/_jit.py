"""Compiler flags for every numba kernel in one place, and warmup() that compiles them."""

import time

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, overload

# cache: compiled code is stored beside the module so a restart only loads it.
# nogil: kernels run on batches and may be called from worker threads.
# boundscheck off and error_model="numpy": the wrappers check array sizes and
# the kernels check every header field before using it as an index, so no
# per-access check is needed.
# numba keys its cache on the kernel's own source file only: after editing a
# helper in this module, delete codecs/__pycache__/*.nbi and *.nbc.
FLAGS = {"cache": True, "nogil": True, "boundscheck": False, "error_model": "numpy"}

# Byte buffers handed to kernels are always read-only views (see readonly_bytes),
# so bytes, bytearray and memoryview input share one compiled signature.
READONLY_BYTES = types.Array(types.uint8, 1, "C", readonly=True)


def readonly_bytes(data) -> np.ndarray:
    """A read-only uint8 view of any buffer (bytes, bytearray, memoryview, ndarray), no copy."""
    if isinstance(data, np.ndarray) and not data.flags.writeable and data.dtype == np.uint8 and data.ndim == 1:
        return data  # already what kernels take: the common case on the hot path
    view = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data
    if view.dtype != np.uint8 or view.ndim != 1 or not view.flags.c_contiguous:
        view = np.ascontiguousarray(view, dtype=np.uint8).reshape(-1)
    if view.flags.writeable:
        view = view.view()
        view.flags.writeable = False
    return view


# (dispatcher, signature) of every kernel, filled at import by @kernel and read
# only by warmup(); kernels never touch it.
_KERNELS: list[tuple[object, object]] = []


def kernel(signature):
    """Decorate a module-level kernel: njit with FLAGS, compiled for ``signature`` by warmup().

    Compilation is deferred to warmup() (or the first call) so that importing
    shopcast.codecs stays fast for tools that never touch the hot path.
    """

    def wrap(func):
        dispatcher = numba.njit(**FLAGS)(func)
        _KERNELS.append((dispatcher, signature))
        return dispatcher

    return wrap


def helper(func):
    """Decorate a small function called only from kernels; it is inlined into them."""
    return numba.njit(inline="always", **FLAGS)(func)


def copy_bytes(dst, dst_start, src, src_start, count):
    """Copy ``count`` bytes of 1-D uint8 ``src`` from ``src_start`` into ``dst`` at ``dst_start``.

    Kernels call this instead of slice assignment: numba compiles a slice copy
    into a byte loop, this into one memcpy, several times faster on fragments.
    Callers check the bounds.
    """
    dst[dst_start : dst_start + count] = src[src_start : src_start + count]


def xor_bytes(dst, dst_start, src, src_start, count):
    """XOR ``count`` bytes of 1-D uint8 ``src`` from ``src_start`` into ``dst`` at ``dst_start``."""
    dst[dst_start : dst_start + count] ^= src[src_start : src_start + count]


@intrinsic
def _memcpy(typingctx, dst, dst_start, src, src_start, count):
    signature = types.void(dst, dst_start, src, src_start, count)

    def codegen(context, builder, sig, args):
        dst_array = context.make_array(sig.args[0])(context, builder, args[0])
        src_array = context.make_array(sig.args[2])(context, builder, args[2])
        dst_pointer = builder.gep(dst_array.data, [args[1]])
        src_pointer = builder.gep(src_array.data, [args[3]])
        cgutils.raw_memcpy(builder, dst_pointer, src_pointer, args[4], 1)
        return context.get_dummy_value()

    return signature, codegen


@intrinsic
def _load_u64(typingctx, array, start):
    """8 bytes of a uint8 array from ``start`` as one uint64, unaligned, native byte order."""
    signature = types.uint64(array, start)

    def codegen(context, builder, sig, args):
        data = context.make_array(sig.args[0])(context, builder, args[0]).data
        pointer = builder.bitcast(builder.gep(data, [args[1]]), ir.IntType(64).as_pointer())
        return builder.load(pointer, align=1)

    return signature, codegen


@intrinsic
def _store_u64(typingctx, array, start, value):
    """Store a uint64 into 8 bytes of a uint8 array from ``start``, unaligned."""
    signature = types.void(array, start, value)

    def codegen(context, builder, sig, args):
        data = context.make_array(sig.args[0])(context, builder, args[0]).data
        pointer = builder.bitcast(builder.gep(data, [args[1]]), ir.IntType(64).as_pointer())
        builder.store(args[2], pointer, align=1)
        return context.get_dummy_value()

    return signature, codegen


@overload(copy_bytes, jit_options={"cache": True})
def _copy_bytes_compiled(dst, dst_start, src, src_start, count):
    def copy(dst, dst_start, src, src_start, count):
        if count > 0:
            _memcpy(dst, dst_start, src, src_start, count)

    return copy


@overload(xor_bytes, jit_options={"cache": True})
def _xor_bytes_compiled(dst, dst_start, src, src_start, count):
    def xor(dst, dst_start, src, src_start, count):
        # Eight bytes at a time: a byte loop runs at a fraction of memory speed.
        words = count // 8
        for word in range(words):
            offset = word * 8
            _store_u64(dst, dst_start + offset,
                       _load_u64(dst, dst_start + offset) ^ _load_u64(src, src_start + offset))
        for index in range(words * 8, count):
            dst[dst_start + index] ^= src[src_start + index]

    return xor


def warmup() -> float:
    """Compile, or load from the cache, every kernel signature; return the seconds it took.

    Call once at start-up, before the server reports it is ready, so that no
    request pays for compilation. The public wrappers convert their arguments
    to exactly these types, so no other signature is ever compiled.
    """
    # Importing the kernel modules registers their kernels.
    from shopcast.codecs import _jitter, _packetizer  # noqa: F401

    started_s = time.perf_counter()
    for dispatcher, signature in _KERNELS:
        compile_signature = getattr(dispatcher, "compile", None)
        if compile_signature is None:  # NUMBA_DISABLE_JIT: nothing to compile
            continue
        compile_signature(signature)
    return time.perf_counter() - started_s
