#!/usr/bin/env python3
"""Unit tests of bench/report.py (ctest: bench.report_test): how ci/bench's
runs are read back and how the ratios are paired within rounds."""

import json
import os
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import report  # noqa: E402


def gbench(rows):
    """A Google Benchmark JSON document with the given (name, threads, cpu ns) rows."""
    return {"benchmarks": [{"name": n, "run_name": n, "run_type": "iteration", "threads": t, "cpu_time": ns,
                            "iterations": 1000} for n, t, ns in rows]}


class Runs(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.addCleanup(self.dir.cleanup)
        os.makedirs(os.path.join(self.dir.name, "alloc"))

    def write(self, name, rows):
        with open(os.path.join(self.dir.name, "alloc", name), "w") as f:
            json.dump(gbench(rows), f)

    def test_run_names_with_and_without_a_group(self):
        self.assertEqual(report.run_name("x/alloc/anyctx.round3.group10.json"), ("anyctx", 3))
        self.assertEqual(report.run_name("x/alloc/tcmalloc.round12.json"), ("tcmalloc", 12))

    def test_each_round_keeps_its_own_value(self):
        self.write("anyctx.round1.group2.json", [("small/kmalloc/64/real_time/threads:1", 1, 4.0)])
        self.write("anyctx.round2.group2.json", [("small/kmalloc/64/real_time/threads:1", 1, 8.0)])
        self.write("tcmalloc.round1.group2.json", [("small/malloc/64/real_time/threads:1", 1, 2.0)])
        values, raw, _ = report.collect_alloc(self.dir.name)
        self.assertEqual(values["anyctx"][("small/kmalloc/64", 1)], {1: 4.0, 2: 8.0})
        self.assertEqual(values["tcmalloc"][("small/malloc/64", 1)], {1: 2.0})
        self.assertEqual(sorted((r["subject"], r["round"]) for r in raw),
                         [("anyctx", 1), ("anyctx", 2), ("tcmalloc", 1)])


class Ratios(unittest.TestCase):
    def test_the_paired_median_cancels_a_drift_that_hits_both_rows(self):
        # The machine slows down in round 2 for both subjects: every round's
        # ratio is 2.
        self.assertEqual(report.paired_ratio({1: 4.0, 2: 16.0, 3: 8.0}, {1: 2.0, 2: 8.0, 3: 4.0}), 2.0)

    def test_only_rounds_both_have_are_paired(self):
        self.assertEqual(report.paired_ratio({1: 3.0, 2: 100.0}, {1: 1.0}), 3.0)
        self.assertIsNone(report.paired_ratio({1: 3.0}, {2: 1.0}))
        self.assertIsNone(report.paired_ratio({1: 3.0}, {1: 0.0}))

    def test_the_table_takes_each_subjects_minimum(self):
        # anyctx was slowed in rounds 1 and 3, tcmalloc in round 2: the
        # minima (4 against 2) are each subject's undisturbed cost; the
        # medians (12 against 2) and the rounds' ratios (6, 2/3, 6) mix the
        # slowdowns in.
        values = {
            "anyctx": {("small/kmalloc/64", 1): {1: 12.0, 2: 4.0, 3: 12.0}},
            "tcmalloc": {("small/malloc/64", 1): {1: 2.0, 2: 6.0, 3: 2.0}},
            "jemalloc": {("small/malloc/64", 1): {1: 3.0, 2: 3.0, 3: 3.0}},
        }
        rows, peers = report.ratio_table(values, {})
        row = next(r for r in rows if r["anyctx_op"] == "small/kmalloc/64")
        self.assertEqual(peers, ["jemalloc", "tcmalloc"])
        self.assertEqual(row["best"], "tcmalloc")
        self.assertEqual(row["anyctx_ns"], 4.0)
        self.assertEqual(row["peer_ns"], {"jemalloc": 3.0, "tcmalloc": 2.0})
        self.assertEqual(row["ratio_best"], 2.0)
        self.assertEqual(row["ratio"]["jemalloc"], 4.0 / 3.0)
        self.assertEqual(row["ratio_paired"]["tcmalloc"], 6.0)

    def test_the_two_thread_target_compares_minima(self):
        values = {"anyctx": {("small/kmalloc/64", 1): {1: 4.0, 2: 8.0, 3: 4.0},
                             ("small/kmalloc/64", 2): {1: 8.4, 2: 4.2, 3: 8.4}}}
        rows, peers = report.ratio_table(values, {})
        lines = dict(report.targets(rows, {}, peers))
        verdict = lines["64 B kmalloc pair at 2 threads within 10 % of 1 thread"]
        self.assertTrue(verdict.startswith("MET"), verdict)
        self.assertIn("+5.0 %", verdict)

    def test_the_two_thread_target_names_the_peers_own_step(self):
        # anyctx +25 %, tcmalloc +50 %, jemalloc -10 %: the verdict is
        # anyctx's own; the peers' steps are context, not a correction.
        values = {"anyctx": {("small/kmalloc/64", 1): {1: 4.0}, ("small/kmalloc/64", 2): {1: 5.0}},
                  "tcmalloc": {("small/malloc/64", 1): {1: 2.0}, ("small/malloc/64", 2): {1: 3.0}},
                  "jemalloc": {("small/malloc/64", 1): {1: 3.0}, ("small/malloc/64", 2): {1: 2.7}}}
        rows, peers = report.ratio_table(values, {})
        verdict = dict(report.targets(rows, {}, peers))["64 B kmalloc pair at 2 threads within 10 % of 1 thread"]
        self.assertTrue(verdict.startswith("MISSED"), verdict)
        self.assertIn("+25.0 %", verdict)
        self.assertIn("the peers' malloc(64)+free from 1 to 2 threads: jemalloc -10.0 %, tcmalloc +50.0 %", verdict)

    def test_the_two_thread_target_without_common_rounds(self):
        values = {"anyctx": {("small/kmalloc/64", 1): {1: 4.0}, ("small/kmalloc/64", 2): {2: 4.8}}}
        rows, peers = report.ratio_table(values, {})
        verdict = dict(report.targets(rows, {}, peers))["64 B kmalloc pair at 2 threads within 10 % of 1 thread"]
        self.assertTrue(verdict.startswith("MISSED"), verdict)
        self.assertIn("median of the rounds' ratios -; the peers' malloc(64)+free from 1 to 2 threads: -)", verdict)


if __name__ == "__main__":
    unittest.main()
