"""The suite's ETA times each kind of probe on its own, and says how much is left at least while some kind has
not run yet (the demo mixes single-map trials with fused trials that cost several times more)."""

from probekit.pipelines.progress import Progress, Rates


class _Probe:
    kind, head = "probe", "linear"

    def __init__(self, cid, fusion, task, trials):
        self.id, self.fusion, self.task, self._units = cid, fusion, task, trials

    def units(self):
        return self._units


def test_probe_kinds_are_timed_per_fusion_and_task():
    single, fused = _Probe("a", "single", "seg", 4), _Probe("b", "global", "depth", 4)
    assert Rates.group(single) == "probe:linear:single:seg" and Rates.group(fused) == "probe:linear:global:depth"
    bar = Progress("demo", total=3, enabled=False)
    later = _Probe("c", "global", "depth", 2)
    bar.plan([single, fused, later], measured=[])
    bar.start(single)
    bar.finish(single, ok=True, seconds=8.0, units=4)  # 2 s a single-map trial
    bar.start(fused)
    bar.finish(fused, ok=True, seconds=40.0, units=4)  # 10 s a fused depth trial: not 2
    assert bar.eta() == (20.0, [])


def test_with_kinds_not_timed_yet_the_line_gives_what_is_left_at_least():
    single, fused = _Probe("a", "single", "seg", 4), _Probe("b", "global", "depth", 4)
    more = [_Probe(f"m{i}", f, t, 3) for i, (f, t) in enumerate([("spatial", "seg"), ("concat", "seg"),
                                                                   ("global", "seg")])]
    bar = Progress("demo", total=5, enabled=False)
    bar.plan([single, fused, *more], measured=[(_Probe("old", "single", "seg", 0), 6.0, 3)])  # 2 s a trial
    assert bar.eta() == (None, ["probe:linear:concat:seg", "probe:linear:global:depth", "probe:linear:global:seg",
                                "probe:linear:spatial:seg"])
    # the single-map probe's 4 trials at 2 s are known: a lower bound; the four kinds not timed are counted
    assert ("ETA after the first probe linear concat seg, probe linear global depth and 2 other kinds of cell "
            "(at least 0:08)") in bar.line()
