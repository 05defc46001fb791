"""Which job a ledger row answers (station/opcua/jobs.py), row by row; tests/station/test_opcua.py drives the same
rules through a real line and client."""
from __future__ import annotations

from station.opcua.jobs import JobBook


class Clock:
    def __init__(self) -> None:
        self.now = 1_000

    def __call__(self) -> int:
        return self.now


def row(row_id: int, taken: int, verdict: str = "PASS") -> dict:
    return {"id": row_id, "timestamp_ns": taken, "verdict": verdict}


def test_frames_taken_during_a_flow_keep_its_job_after_abort():
    clock = Clock()
    book = JobBook(before=10, clock=clock)
    clock.now = 2_000
    book.start_flow("run-1")
    assert book.flow_job == "run-1"
    clock.now = 3_000
    assert book.hold_flow() == "run-1" and book.flow_job is None  # Abort
    book.start_single("run-2")
    assert book.assign(row(11, 2_500)) == "run-1"  # taken before the Abort, committed after: still the flow's
    assert book.assign(row(12, 2_900)) == "run-1"
    assert book.assign(row(13, 3_100)) == "run-2"  # taken after: the single job's part
    assert book.assign(row(14, 3_200)) == ""  # no job asked for it
    assert [book.of(i) for i in (5, 11, 13, 14, 15)] == ["", "run-1", "run-2", "", None]  # 15: not published yet


def test_single_jobs_in_order_gap_rows_answer_them_and_dropped_triggers_are_forgotten():
    book = JobBook(clock=Clock())
    for job in ("a", "b", "c", "d"):
        book.start_single(job)
    book.drop_unfired(2)  # Abort: the source had not served the last two triggers
    assert book.waiting == 2 and book.oldest_waiting == "a"
    assert book.assign(row(1, 5_000, "GAP")) == "a"  # the part was lost: its job gets the GAP row
    assert book.assign(row(2, 5_001)) == "b"
    assert book.waiting == 0
    book.start_single("e")
    book.cancel_single("e")  # the trigger could not be fired
    assert book.assign(row(3, 5_002)) == ""


def test_a_ledger_job_column_wins():
    book = JobBook(clock=Clock())
    book.start_single("mine")
    assert book.assign({**row(1, 5_000), "job_id": "recorded"}) == "recorded"
    assert book.waiting == 1
    assert book.assign({**row(2, 5_001), "job_id": "mine"}) == "mine" and book.waiting == 0
