"""The operator gives free memory back once its jobs fall to half their high-water mark (memory.Trimmer)."""

from __future__ import annotations

from codex_operator import memory


def test_memory_is_given_back_once_the_jobs_fall_to_half_their_peak_and_not_before(monkeypatch):
    trims: list[int] = []
    monkeypatch.setattr(memory, "_malloc_trim", lambda: trims.append(1) or True)
    t = memory.Trimmer(floor=200)
    assert not any(t.seen(n) for n in (0, 50, 100, 0))  # a few jobs come and go: nothing to give back
    assert not any(t.seen(n) for n in (500, 1000, 600, 501))
    assert t.seen(500) and trims == [1]  # half of 1,000
    assert not t.seen(400) and not t.seen(260)  # measured from 500 now: 250 is the next mark
    assert t.seen(120) and trims == [1, 1]
    assert not t.seen(0) and trims == [1, 1]  # 120 is below the floor: too few to be worth a trim


def test_each_trim_is_followed_by_one_more_once_the_bursts_connections_have_closed(monkeypatch):
    trims: list[float] = []
    t = memory.Trimmer(floor=200)
    monkeypatch.setattr(memory, "_malloc_trim", lambda: trims.append(now) or True)
    for now, jobs in ((0, 1000), (10, 400)):
        t.seen(jobs, now)
    assert trims == [10]
    for now, jobs in ((20, 390), (29, 380), (30, 380), (40, 370), (80, 370)):
        t.seen(jobs, now)
    assert trims == [10, 30]  # AGAIN_AFTER (20 s) after the first, once


def test_malloc_trim_runs_here():
    assert memory._malloc_trim()  # glibc: the operator image is Debian's
