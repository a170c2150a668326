"""The decode thread count is a measurement: the chooser follows the numbers it is given."""

from __future__ import annotations

from haruhi_tui.core.decode_threads import ThreadChooser, candidate_counts


def run(chooser: ThreadChooser, seconds: dict[int, float], steps: int) -> list[int]:
    """Decode ``steps`` tokens where a step with n threads takes ``seconds[n]``; the counts used."""
    used = []
    for _ in range(steps):
        n = chooser.pick()
        used.append(n)
        chooser.record(n, seconds[n])
    return used


def test_candidates_are_all_cores_and_half():
    assert candidate_counts(2) == (2, 1)
    assert candidate_counts(16) == (16, 8)
    assert candidate_counts(1) == (1,)


def test_on_an_idle_machine_all_cores_win_and_the_other_count_is_rarely_tried():
    chooser = ThreadChooser((2, 1))
    used = run(chooser, {2: 0.028, 1: 0.045}, 2000)  # measured on 2 idle cores: 35 vs 22 tokens/s
    assert chooser.current == 2 and chooser.switches == 0
    tried = used.count(1)
    assert 3 <= tried  # it did look
    noisy = ThreadChooser((2, 1))
    used = run(noisy, {2: 0.028, 1: 0.045}, 50)
    for _ in range(20):  # a hiccup now and then (a save, a garbage collection) costs a short look, no switch
        noisy.record(noisy.pick(), 0.2)
        run(noisy, {2: 0.028, 1: 0.045}, 100)
    assert noisy.current == 2
    lost = tried * (0.045 - 0.028)
    assert lost <= 0.02 * 2000 * 0.028  # trying cost under 2 % of the decoding time


def test_when_other_programs_take_a_core_it_moves_to_fewer_threads_after_one_stalled_token():
    chooser = ThreadChooser((2, 1))
    run(chooser, {2: 0.028, 1: 0.045}, 200)
    used = run(chooser, {2: 2.0, 1: 0.06}, 300)  # load arrives: two threads stall at every barrier
    assert chooser.current == 1
    assert used[:2] == [2, 1]  # slower than one thread was: it looks at once
    assert used.count(2) == 1
    # and it does not go back to try the stalling count for a long time (it costs seconds)
    later = run(chooser, {2: 2.0, 1: 0.06}, 2000)
    assert later.count(2) <= 1


def test_when_the_load_goes_away_it_finds_all_cores_again():
    chooser = ThreadChooser((2, 1), max_every=300)
    run(chooser, {2: 2.0, 1: 0.06}, 100)
    assert chooser.current == 1
    run(chooser, {2: 0.028, 1: 0.045}, 1000)
    assert chooser.current == 2


def test_a_fixed_count_is_never_changed():
    chooser = ThreadChooser((3,))
    assert set(run(chooser, {3: 0.05}, 100)) == {3} and chooser.probes == 0


def test_repaints_between_tokens_do_not_make_it_leave_the_faster_count():
    """Measured in the chat app on 2 cores: two threads 16-17 ms a token with a 30-90 ms step now and then (a
    repaint, a save), one thread 22 ms: the app must stay with two."""
    chooser = ThreadChooser((2, 1))
    hiccups = [0.035, 0.09, 0.04, 0.06, 0.03]
    used = []
    for step in range(3000):
        n = chooser.pick()
        used.append(n)
        if n == 1:
            chooser.record(1, 0.022)
        else:
            chooser.record(2, hiccups[step % 5] if step % 6 == 0 else 0.0165)
    assert chooser.switches == 0 and chooser.current == 2
    assert used.count(1) <= 0.03 * len(used)
