"""Reuse of big nng messages on the send side of a link.

nng allocates every message body with ``calloc``, so a new 2.7 MB message costs a memset of all
its bytes before we copy the frame in: on a link whose sender is the busy end that is ~10 % of
its CPU per frame. nng frees a sent message by dropping a reference (``nng_msg`` is refcounted:
that is how nng sends one message to several pipes), so a sender that keeps its own reference
gets the buffer back once the transport has written it, and can refill it instead of allocating.

The two calls this takes, ``nni_msg_clone`` (add a reference) and ``nni_msg_shared`` (does anyone
but us hold it?), are nng internals: pynng's extension exports them but its cffi API does not
declare them. They are looked up with ctypes on first use and checked by a self-test; where they
are missing or behave unexpectedly, ``MsgPool.take`` always answers None and the link allocates
every message, as plain nng would. A message is refilled only when nng holds no reference to it,
so a buffer nng is still writing is never touched.
"""

from __future__ import annotations

import ctypes
import logging
import threading

import pynng

log = logging.getLogger("edgeva.link")
_ffi, _lib = pynng.ffi, pynng.lib

_refs: tuple | None = None  # (clone, shared) ctypes functions once checked; () when unusable


def _refcount_calls() -> tuple:
    """``(clone, shared)`` from pynng's extension, or ``()`` where they cannot be used."""
    global _refs
    if _refs is not None:
        return _refs
    _refs = ()
    try:
        so = ctypes.CDLL(pynng._nng.__file__)
        clone, shared = so.nni_msg_clone, so.nni_msg_shared
    except (OSError, AttributeError):
        log.info("nng message reuse unavailable (no nni_msg_clone/nni_msg_shared): allocating")
        return _refs
    clone.argtypes, clone.restype = [ctypes.c_void_p], None
    shared.argtypes, shared.restype = [ctypes.c_void_p], ctypes.c_bool
    pp = _ffi.new("nng_msg **")
    if _lib.nng_msg_alloc(pp, 64):
        return _refs
    p = _addr(pp[0])
    ok = not shared(p)
    clone(p)
    ok = ok and shared(p)
    _lib.nng_msg_free(pp[0])  # back to one reference
    ok = ok and not shared(p)
    _lib.nng_msg_free(pp[0])
    if ok:
        _refs = (clone, shared)
    else:
        log.warning("nng message refcount self-test failed: message reuse disabled")
    return _refs


def _addr(msg) -> int:
    return int(_ffi.cast("uintptr_t", msg))


class MsgPool:
    """Up to ``capacity`` nng messages a link refills instead of allocating.

    ``take(size)`` -> a message of ``size`` bytes that nobody else references, or None (pool
    exhausted or reuse unavailable: allocate). Before handing a taken message to nng, call
    ``keep`` (our reference survives the send); ``give_back`` returns a taken message that was
    never sent. ``close`` drops our references (nng frees what it still holds when done); a
    message taken at that moment is let go when it is sent or given back, never under its user.
    """

    def __init__(self, capacity: int) -> None:
        calls = _refcount_calls()
        self.enabled = bool(calls) and capacity > 0
        self._clone, self._shared = calls if calls else (None, None)
        self.capacity = capacity
        self._msgs: list = []  # cffi nng_msg pointers we hold a reference to
        self._busy: set[int] = set()  # taken by our caller, not yet sent or given back
        self._lock = threading.Lock()
        self._closed = False
        self.reused = 0

    def take(self, size: int):
        """A message of exactly ``size`` bytes to fill, or None (allocate one instead)."""
        if not self.enabled:
            return None
        with self._lock:
            for m in self._msgs:
                a = _addr(m)
                if a in self._busy or self._shared(a):
                    continue
                if size > _lib.nng_msg_capacity(m):
                    _lib.nng_msg_clear(m)  # grow without copying the old bytes
                if _lib.nng_msg_realloc(m, size):
                    continue
                self._busy.add(a)
                self.reused += 1
                return m
        return None

    def adopt(self, msg) -> bool:
        """Make a freshly allocated ``msg`` (held by our caller) a pool member if there is
        room; it counts as taken. False: not pooled, send it the plain way."""
        if not self.enabled:
            return False
        with self._lock:
            if len(self._msgs) >= self.capacity:
                return False
            self._msgs.append(msg)
            self._busy.add(_addr(msg))
            return True

    def keep(self, msg) -> None:
        """Add our reference just before ``nng_sendmsg`` takes one (call ``unkeep`` if the
        send fails: nng then took nothing)."""
        self._clone(_addr(msg))

    def unkeep(self, msg) -> None:
        _lib.nng_msg_free(msg)  # drops the reference ``keep`` added

    def sent(self, msg) -> None:
        """nng accepted ``msg``: it is ours again once nng drops its reference."""
        self._return(msg)

    def give_back(self, msg) -> None:
        """A taken message that will not be sent (dropped or closing): free to take again."""
        self._return(msg)

    def _return(self, msg) -> None:
        with self._lock:
            self._busy.discard(_addr(msg))
            if self._closed:
                self._msgs.remove(msg)
                _lib.nng_msg_free(msg)  # our reference; nng frees it later if it holds one

    def close(self) -> None:
        """Drop our reference to every message not in use; the rest go when returned."""
        with self._lock:
            self._closed = True
            self.enabled = False
            idle = [m for m in self._msgs if _addr(m) not in self._busy]
            for m in idle:
                self._msgs.remove(m)
                _lib.nng_msg_free(m)
