"""The link's message pool: a message is refilled only when nng holds no reference to it, and
closing the pool never frees a message someone is still using. nng's own reference is played
here by the refcount calls the pool uses (``keep`` adds one, ``nng_msg_free`` drops one)."""

from __future__ import annotations

import pynng
import pytest

from edgeva.agent.dataplane.msgpool import MsgPool

_ffi, _lib = pynng.ffi, pynng.lib


def _alloc(size: int):
    pp = _ffi.new("nng_msg **")
    assert _lib.nng_msg_alloc(pp, size) == 0
    return pp[0]


@pytest.fixture
def pool():
    p = MsgPool(2)
    if not p.enabled:
        pytest.skip("this pynng build lacks nni_msg_clone/nni_msg_shared: the pool is off")
    yield p
    p.close()


def test_message_is_refilled_only_after_nng_lets_go(pool: MsgPool) -> None:
    assert pool.take(100) is None  # empty: the caller allocates
    m = _alloc(100)
    assert pool.adopt(m)
    pool.keep(m)  # "send": nng now holds a reference too
    pool.sent(m)
    assert pool.take(100) is None  # nng still has it (writing, queued)
    _lib.nng_msg_free(m)  # nng is done with it
    again = pool.take(50)
    assert again == m and _lib.nng_msg_len(again) == 50
    assert pool.take(50) is None  # taken: not handed out twice
    pool.give_back(again)
    grown = pool.take(1 << 20)  # bigger than its buffer: regrown in place, still pooled
    assert grown == m and _lib.nng_msg_len(grown) == 1 << 20
    assert pool.reused == 2


def test_pool_is_bounded(pool: MsgPool) -> None:
    ms = [_alloc(10) for _ in range(3)]
    assert [pool.adopt(m) for m in ms] == [True, True, False]
    _lib.nng_msg_free(ms[2])  # not pooled: its owner frees it


def test_close_spares_a_message_in_use_and_drops_it_when_returned(pool: MsgPool) -> None:
    m = _alloc(64)
    assert pool.adopt(m)  # taken by a sender, mid-encode
    pool.keep(m)  # and nng got it too
    pool.close()
    assert pool.take(64) is None  # closed: nothing handed out
    p = int(_ffi.cast("uintptr_t", m))
    assert pool._shared(p)  # both references alive: close did not free it under its user
    pool.sent(m)  # the sender returns it: the pool's reference goes
    assert not pool._shared(p)
    _lib.nng_msg_free(m)  # nng's, the last
