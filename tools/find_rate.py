#!/usr/bin/env python3
"""find_rate: how reliably a fuzz target finds a bug, from repeated trials.

    tools/find_rate.py --budget S [--share B]... TRIALS.tsv

TRIALS.tsv is what `ci/mutants --trials K --target T` writes, one line per
trial, tab-separated:

    SEED  SECONDS  ORACLE

SEED is the trial's libFuzzer -seed; SECONDS the time from its start to its
first report, or "-" when it ran its whole budget of S seconds without one;
ORACLE what reported it ("-" without a report). Lines starting with "#" and
empty lines are skipped.

One trial says little: the time to a find varies by an order of magnitude
from seed to seed, and a mutant found by 5 runs of 8 and one found by 7 of 8
may well be equally hard. This prints what the trials allow one to say, with
95 % intervals:

  found       the trials that found it within S seconds (Wilson interval);
  rate        finds per second of fuzzing, taking the time to a find as
              memoryless (exponential, each trial censored at S): the
              maximum-likelihood rate (finds / total seconds fuzzed) with a
              likelihood-ratio interval;
  within B    the chance that one run of B seconds finds it, 1 - exp(-rate B),
              for S and for each --share B (`ci/mutants --seconds N` gives
              each of T targets J * N / T seconds, J at a time: 20 s of
              `--seconds 60` for six targets on two cores);
  95 % needs  the seconds a run needs to find it with probability 0.95.

The memoryless model is checked, not assumed: the finds in the first half of
the budget are printed beside what the model predicts for them.

Exit status: 0; 2 for bad input, with the line that is wrong.
"""

import argparse
import math
import sys

Z95 = 1.959963984540054  # the 97.5 % point of the standard normal
CHI2_1_95 = Z95 * Z95  # the 95 % point of chi-square with one degree of freedom


class TrialsError(Exception):
    pass


def parse_trials(text, budget):
    """Return: [(seed, seconds or None, oracle)] from a TRIALS.tsv text."""
    trials = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split("\t")
        if len(fields) != 3:
            raise TrialsError(f"line {n}: expected SEED, SECONDS and ORACLE separated by tabs, got {line!r}")
        seed, seconds, oracle = fields
        if not seed.isdigit():
            raise TrialsError(f"line {n}: the seed {seed!r} is not a number")
        if seconds == "-":
            trials.append((int(seed), None, oracle))
            continue
        try:
            t = float(seconds)
        except ValueError:
            raise TrialsError(f"line {n}: the seconds {seconds!r} are neither a number nor '-'") from None
        if not (t >= 0 and math.isfinite(t)):
            raise TrialsError(f"line {n}: the seconds {seconds!r} are not a time")
        # A report may come a little after the budget (the fuzzer checks its
        # clock between inputs); it counts as within it.
        trials.append((int(seed), min(t, budget), oracle))
    if not trials:
        raise TrialsError("no trials")
    return trials


def wilson(k, n):
    """Return: the 95 % Wilson score interval of the proportion k / n."""
    p = k / n
    centre = (p + Z95 * Z95 / (2 * n)) / (1 + Z95 * Z95 / n)
    half = Z95 / (1 + Z95 * Z95 / n) * math.sqrt(p * (1 - p) / n + Z95 * Z95 / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def rate_mle(finds, exposure):
    """Return: the maximum-likelihood rate of `finds` in `exposure` seconds."""
    return finds / exposure


def rate_interval(finds, exposure):
    """Return: the 95 % likelihood-ratio interval of the rate: every rate whose
    log likelihood, finds * log(rate) - rate * exposure, is within
    CHI2_1_95 / 2 of the maximum."""

    def loglik(r):
        return (finds * math.log(r) if finds else 0.0) - r * exposure

    mle = rate_mle(finds, exposure)
    cut = (loglik(mle) if finds else 0.0) - CHI2_1_95 / 2

    def bisect(lo, hi, inside_at_lo):
        for _ in range(200):
            mid = (lo + hi) / 2
            if (loglik(mid) >= cut) == inside_at_lo:
                lo = mid
            else:
                hi = mid
        return (lo + hi) / 2

    # The upper end: beyond the maximum, the likelihood falls without bound.
    hi = max(mle, 1.0 / exposure)
    while loglik(hi) >= cut:
        hi *= 2
    upper = bisect(max(mle, 1e-300), hi, True)
    lower = 0.0 if finds == 0 else bisect(mle, 1e-300, True)
    return lower, upper


def within(rate, seconds):
    """Return: the chance that a run of `seconds` finds it at `rate`."""
    return 1.0 - math.exp(-rate * seconds)


def needed(rate, p=0.95):
    """Return: the seconds a run needs to find it with probability p."""
    return math.inf if rate <= 0 else -math.log(1.0 - p) / rate


def summary(trials, budget, shares):
    """Return: the report, a list of lines."""
    n = len(trials)
    times = sorted(t for _, t, _ in trials if t is not None)
    finds = len(times)
    exposure = sum(t if t is not None else budget for _, t, _ in trials)
    lines = []
    lo, hi = wilson(finds, n)
    lines.append(f"trials: {n} of {budget:g} s; found in {finds} "
                 f"({100 * finds / n:.0f} %, 95 % interval {100 * lo:.0f}-{100 * hi:.0f} %)")
    if times:
        lines.append("first reports at (s): " + " ".join(f"{t:.1f}" for t in times))
    oracles = sorted({o for _, t, o in trials if t is not None and o != "-"})
    if oracles:
        lines.append("oracles: " + "; ".join(oracles))
    rate = rate_mle(finds, exposure)
    rlo, rhi = rate_interval(finds, exposure)
    lines.append(f"rate: {rate:.4f} finds/s (95 % interval {rlo:.4f}-{rhi:.4f}), "
                 f"{exposure:.1f} s fuzzed, the time to a find taken as memoryless")
    for b in [budget] + [s for s in shares if s != budget]:
        lines.append(f"within {b:g} s: {100 * within(rate, b):.0f} % "
                     f"({100 * within(rlo, b):.0f}-{100 * within(rhi, b):.0f} %)")
    need, need_lo, need_hi = needed(rate), needed(rhi), needed(rlo)
    fmt = lambda s: "never" if math.isinf(s) else f"{s:.0f} s"
    lines.append(f"95 % needs: {fmt(need)} ({fmt(need_lo)}-{fmt(need_hi)})")
    half = budget / 2
    early = sum(1 for t in times if t <= half)
    # Under the model a trial finds within the first half with 1 - exp(-rate * half).
    lines.append(f"check of the model: {early} found within {half:g} s, "
                 f"{n * within(rate, half):.1f} expected")
    return lines


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, required=True, help="seconds each trial could run")
    parser.add_argument("--share", type=float, action="append", default=[],
                        help="also print the chance of a find within this many seconds")
    parser.add_argument("trials", help="TRIALS.tsv")
    args = parser.parse_args(argv)
    if not args.budget > 0:
        print("find_rate: --budget must be positive", file=sys.stderr)
        return 2
    try:
        with open(args.trials, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        print(f"find_rate: cannot read {args.trials}: {e.strerror}", file=sys.stderr)
        return 2
    try:
        trials = parse_trials(text, args.budget)
    except TrialsError as e:
        print(f"find_rate: {args.trials}: {e}", file=sys.stderr)
        return 2
    print("\n".join(summary(trials, args.budget, args.share)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
