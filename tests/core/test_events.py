from haruhi_tui.core.events import EventLog, job_state, read_events


def test_events_roundtrip_and_torn_last_line(tmp_path):
    log = EventLog(tmp_path, "train")
    log.start({"lr": 1e-4}, total=3, unit="step")
    for step in (1, 2):
        log.emit("step", step=step, total=3, loss=2.0 / step, learning_rate=1e-4)
    log.emit("checkpoint", step=2, path=str(tmp_path / "checkpoint-2"))
    with (tmp_path / "events.jsonl").open("a") as fh:
        fh.write('{"event": "step", "step": 3')  # a job killed mid-write
    events, offset = read_events(tmp_path)
    assert [e["event"] for e in events] == ["start", "step", "step", "checkpoint"]
    state = job_state(tmp_path)
    assert state.status == "running" and state.done == 2 and state.losses == [(1, 2.0), (2, 1.0)]
    with (tmp_path / "events.jsonl").open("a") as fh:
        fh.write(', "total": 3, "loss": 0.5}\n')
    more, _ = read_events(tmp_path, offset)
    assert [e["step"] for e in more] == [3]
    log.end("cancelled", metrics={"loss": 0.5})
    assert job_state(tmp_path).status == "cancelled"


def test_damaged_or_foreign_lines_are_skipped_not_raised(tmp_path):
    """Each of these lines raised in JobState.apply (KeyError, ValueError, TypeError): a watcher (the app's jobs
    screen) replaying the file crashed."""
    import json

    log = EventLog(tmp_path, "train")
    log.start({"lr": 1e-4}, total=3, unit="step")
    bad = [{"event": "step"}, {"event": "step", "step": "two"}, {"event": "step", "step": 2, "loss": "low"},
           {"event": "step", "step": True}, {"event": "progress", "total": 3}, {"event": "checkpoint", "step": 1},
           {"event": "start", "config": "x"}, {"event": "end", "metrics": [1]}, {"event": "error", "message": 5},
           {"event": "party"}, [1, 2], "step"]
    with (tmp_path / "events.jsonl").open("a", encoding="utf-8") as fh:
        for record in bad:
            fh.write(json.dumps(record) + "\n")
        fh.write("\udcff not json\n".encode("utf-8", "surrogateescape").decode("latin-1"))
        fh.write("[" * 100_000 + "\n")
    log.emit("step", step=1, total=3, loss=1.5)
    events, _ = read_events(tmp_path)
    assert [e["event"] for e in events] == ["start", "step"]
    state = job_state(tmp_path)
    assert state.done == 1 and state.losses == [(1, 1.5)] and state.config == {"lr": 1e-4}


def test_an_events_file_that_cannot_be_read_gives_nothing(tmp_path):
    (tmp_path / "events.jsonl" / "events.jsonl").mkdir(parents=True)
    assert read_events(tmp_path / "events.jsonl", 5) == ([], 5)
    assert job_state(tmp_path / "events.jsonl").losses == []
