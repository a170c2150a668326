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
