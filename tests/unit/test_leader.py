"""Which replica acts: the Lease decision, judged by the standby's own clock (no API server needed)."""

from __future__ import annotations

from codex_operator.leader import Seen, Timing, decide

T = Timing(duration=15)


def lease(holder: str | None, renew: str = "t0", duration: int = 15) -> dict:
    return {"spec": {"holderIdentity": holder, "renewTime": renew, "leaseDurationSeconds": duration}}


def test_no_lease_is_created_and_our_own_is_renewed():
    assert decide(None, "a", Seen(), 0, T) == "create"
    assert decide(lease("a"), "a", Seen(), 0, T) == "renew"


def test_a_lease_handed_back_is_taken_at_once():
    assert decide(lease(None), "b", Seen(), 0, T) == "take"
    assert decide(lease(""), "b", Seen(), 0, T) == "take"


def test_a_renewed_lease_is_never_taken_however_old_its_timestamps_look():
    seen = Seen()
    for i, now in enumerate([0, 10, 20, 30, 40, 50]):
        assert decide(lease("a", renew=f"t{i}"), "b", seen, now, T) == "wait"


def test_an_unrenewed_lease_is_taken_only_after_a_whole_duration_on_the_standbys_clock():
    seen = Seen()
    assert decide(lease("a"), "b", seen, 100, T) == "wait"  # first sight starts the clock
    assert decide(lease("a"), "b", seen, 114, T) == "wait"
    assert decide(lease("a"), "b", seen, 116, T) == "take"


def test_the_holders_own_duration_counts():
    seen = Seen()
    assert decide(lease("a", duration=60), "b", seen, 0, T) == "wait"
    assert decide(lease("a", duration=60), "b", seen, 30, T) == "wait"
    assert decide(lease("a", duration=60), "b", seen, 61, T) == "take"
