"""``loadtest.breakdown``: samples charged to the innermost stage of the pipeline, inside its runs only."""

from __future__ import annotations

from loadtest.breakdown import charge, frame_name, report

ROOT = "run_pipeline (loadtest/bench_pipeline.py:230)"
PROCESS = "TaskPipeline.process (/w/streams/pipeline.py:193)"
APPLY = "TaskAggregator.apply (/w/streams/core/_task.py:300)"
CLOSE = "TaskAggregator._close_due (/w/streams/core/_task.py:590)"
FOLD = "_fold (/w/streams/core/_task.py:640)"


def test_frame_names_are_file_and_function() -> None:
    assert frame_name(APPLY) == "_task.py:apply"
    assert frame_name("apply (streams/core/_task.py:300)") == "_task.py:apply"
    assert frame_name("<listcomp> (/w/streams/pipeline.py:192)") == "pipeline.py:<listcomp>"
    assert frame_name("main (x.py)") == "x.py:main"


def test_the_innermost_stage_takes_the_sample_and_only_pipeline_runs_count() -> None:
    lines = [
        f"<module> (a.py:1);{ROOT};{PROCESS};{APPLY} 7\n",
        f"<module> (a.py:1);{ROOT};{PROCESS};{APPLY};{CLOSE} 5\n",  # a close inside apply
        f"<module> (a.py:1);{ROOT};{PROCESS};{APPLY};{CLOSE};x (y.py:3);{FOLD};dict.get (z.py) 3\n",
        f"<module> (a.py:1);{ROOT};add (loadtest/bench_pipeline.py:80) 2\n",
        f"<module> (a.py:1);generate (loadtest/produce.py:10);{APPLY} 100\n",  # outside the runs
        "garbage\n",
    ]
    got = charge(lines)
    assert got == {
        "apply (per-event state)": 7,
        "window close (sum buckets, HLL estimate, record)": 5,
        "sessions + rollups (fold, close)": 3,
        "other (benchmark loop)": 2,
    }
    table = report(got, 1.7)
    assert "| apply (per-event state) | 41.2 % | 0.70 |" in table
    assert "| all (17 samples) | 100 % | 1.70 |" in table
