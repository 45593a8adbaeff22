#!/usr/bin/env python3
"""Tests of tools/find_rate.py: parsing, the intervals, the report."""

import math
import os
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import find_rate  # noqa: E402


class ParseTest(unittest.TestCase):
    def test_found_and_censored_trials(self):
        text = "# seed\tseconds\toracle\n1\t4.5\tharness: invariants\n\n2\t-\t-\n3\t20.7\tharness: invariants\n"
        trials = find_rate.parse_trials(text, budget=20)
        self.assertEqual(trials, [(1, 4.5, "harness: invariants"), (2, None, "-"), (3, 20.0, "harness: invariants")])

    def test_bad_lines_are_named(self):
        cases = {
            "1\t2.0\n": "line 1: expected SEED, SECONDS and ORACLE",
            "1\t2.0\tx\nseven\t-\t-\n": "line 2: the seed 'seven' is not a number",
            "1\tsoon\tx\n": "line 1: the seconds 'soon' are neither a number nor '-'",
            "1\tnan\tx\n": "line 1: the seconds 'nan' are not a time",
            "1\t-3\tx\n": "line 1: the seconds '-3' are not a time",
            "# nothing\n": "no trials",
        }
        for text, message in cases.items():
            with self.assertRaises(find_rate.TrialsError) as e:
                find_rate.parse_trials(text, budget=20)
            self.assertIn(message, str(e.exception))


class IntervalTest(unittest.TestCase):
    def test_wilson_bounds_and_symmetry(self):
        self.assertEqual(find_rate.wilson(0, 8)[0], 0.0)
        self.assertEqual(find_rate.wilson(8, 8)[1], 1.0)
        for k in range(0, 17):
            lo, hi = find_rate.wilson(k, 16)
            self.assertLessEqual(lo, k / 16)
            self.assertGreaterEqual(hi, k / 16)
            mlo, mhi = find_rate.wilson(16 - k, 16)
            self.assertAlmostEqual(lo, 1 - mhi)
            self.assertAlmostEqual(hi, 1 - mlo)
        # 14 of 16: the textbook Wilson interval.
        lo, hi = find_rate.wilson(14, 16)
        self.assertAlmostEqual(lo, 0.640, places=3)
        self.assertAlmostEqual(hi, 0.965, places=3)

    def test_rate_interval_ends_are_where_the_likelihood_drops_by_the_chi_square_point(self):
        for finds, exposure in [(1, 100.0), (14, 216.4), (60, 600.0)]:
            lo, hi = find_rate.rate_interval(finds, exposure)
            mle = find_rate.rate_mle(finds, exposure)
            self.assertLess(lo, mle)
            self.assertGreater(hi, mle)
            loglik = lambda r: finds * math.log(r) - r * exposure
            for end in (lo, hi):
                self.assertAlmostEqual(loglik(mle) - loglik(end), find_rate.CHI2_1_95 / 2, places=6)

    def test_no_find_gives_a_zero_lower_end_and_the_one_sided_upper_end(self):
        lo, hi = find_rate.rate_interval(0, 320.0)
        self.assertEqual(lo, 0.0)
        self.assertAlmostEqual(hi, find_rate.CHI2_1_95 / 2 / 320.0, places=9)

    def test_more_trials_narrow_the_interval(self):
        lo1, hi1 = find_rate.rate_interval(7, 108.0)
        lo2, hi2 = find_rate.rate_interval(70, 1080.0)
        self.assertLess(hi2 - lo2, hi1 - lo1)

    def test_within_and_needed_are_inverse(self):
        rate = 0.065
        self.assertAlmostEqual(find_rate.within(rate, find_rate.needed(rate)), 0.95)
        self.assertTrue(math.isinf(find_rate.needed(0.0)))


class SummaryTest(unittest.TestCase):
    def trials(self):
        found = [1.4, 2.4, 3.7, 4.7, 6.6, 11.9, 16.4, 17.1]
        return [(i + 1, t, "harness: invariants") for i, t in enumerate(found)] + [(9, None, "-"), (10, None, "-")]

    def test_report(self):
        lines = find_rate.summary(self.trials(), budget=20, shares=[40])
        exposure = sum([1.4, 2.4, 3.7, 4.7, 6.6, 11.9, 16.4, 17.1]) + 40
        rate = 8 / exposure
        self.assertEqual(lines[0], "trials: 10 of 20 s; found in 8 (80 %, 95 % interval 49-94 %)")
        self.assertEqual(lines[1], "first reports at (s): 1.4 2.4 3.7 4.7 6.6 11.9 16.4 17.1")
        self.assertEqual(lines[2], "oracles: harness: invariants")
        self.assertTrue(lines[3].startswith(f"rate: {rate:.4f} finds/s (95 % interval "), lines[3])
        self.assertTrue(lines[4].startswith(f"within 20 s: {100 * (1 - math.exp(-rate * 20)):.0f} % ("), lines[4])
        self.assertTrue(lines[5].startswith("within 40 s: "), lines[5])
        self.assertTrue(lines[6].startswith(f"95 % needs: {-math.log(0.05) / rate:.0f} s ("), lines[6])
        self.assertEqual(lines[7], f"check of the model: 5 found within 10 s, {10 * (1 - math.exp(-rate * 10)):.1f} expected")

    def test_no_find(self):
        lines = find_rate.summary([(1, None, "-"), (2, None, "-")], budget=20, shares=[])
        self.assertEqual(lines[0], "trials: 2 of 20 s; found in 0 (0 %, 95 % interval 0-66 %)")
        self.assertIn("rate: 0.0000 finds/s", lines[1])
        self.assertTrue(lines[3].startswith("95 % needs: never ("), lines[3])


class MainTest(unittest.TestCase):
    def run_main(self, argv):
        """Return: main's exit status and what it wrote to stderr."""
        with tempfile.TemporaryFile("w+") as err:
            old, sys.stderr = sys.stderr, err
            try:
                rc = find_rate.main(argv)
            finally:
                sys.stderr = old
            err.seek(0)
            return rc, err.read()

    def test_bad_file_exits_2_naming_the_line(self):
        with tempfile.NamedTemporaryFile("w", suffix=".tsv", delete=False) as f:
            f.write("1\t2.0\tx\n2 3.0 x\n")
        try:
            rc, err = self.run_main(["--budget", "20", f.name])
        finally:
            os.unlink(f.name)
        self.assertEqual(rc, 2)
        self.assertIn("line 2: expected SEED, SECONDS and ORACLE", err)

    def test_missing_file_exits_2(self):
        rc, err = self.run_main(["--budget", "20", "/nonexistent/trials.tsv"])
        self.assertEqual(rc, 2)
        self.assertIn("cannot read /nonexistent/trials.tsv", err)


if __name__ == "__main__":
    unittest.main()
