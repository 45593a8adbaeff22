#!/usr/bin/env python3
"""Unit tests of tools/fuzz_stats.py (ctest: triage.fuzz_stats_test): the
numbers ci/fuzz reads out of libFuzzer's and AFL++'s output, the result of a
run, and the summary table."""

import io
import json
import os
import sys
import tempfile
import unittest
from contextlib import redirect_stderr, redirect_stdout

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fuzz_stats  # noqa: E402

ONE_PROCESS = """INFO: Seed: 1
#2\tINITED cov: 700 ft: 900 corp: 5/1Kb exec/s: 0 rss: 40Mb
#4096\tpulse  cov: 812 ft: 2301 corp: 140/9Kb lim: 4 exec/s: 585 rss: 90Mb
#5000\tNEW    cov: 815 ft: 2310 corp: 141/9Kb lim: 4 exec/s: 600 rss: 91Mb L: 3/4 MS: 1 Custom-
"""
FORK = "#9128: cov: 2999 ft: 4912 corp: 306 exec/s 278 oom/timeout/crash: 0/0/0 time: 22s job: 3 dft_time: 0\n"
FINAL = "stat::number_of_executed_units: 61961\nstat::average_exec_per_sec:     2581\nstat::new_units_added: 17\n"


class Scratch(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.addCleanup(self.dir.cleanup)

    def write(self, name, text):
        path = os.path.join(self.dir.name, name)
        with open(path, "w") as f:
            f.write(text)
        return path


class LibFuzzer(Scratch):
    def test_the_last_status_line_of_either_form(self):
        self.assertEqual(fuzz_stats.lf_status(ONE_PROCESS), (5000, 815, 2310, 141, 600))
        self.assertEqual(fuzz_stats.lf_status(ONE_PROCESS + FORK), (9128, 2999, 4912, 306, 278))
        self.assertIsNone(fuzz_stats.lf_status("INFO: Seed: 1\n"))

    def test_the_final_statistics_win_over_the_status_line(self):
        log = self.write("fuzz.log", ONE_PROCESS + FINAL)
        row = fuzz_stats.lf_row("page_ops", log, 0, 30, 5, 150, [])
        self.assertEqual(row["result"], "ok")
        self.assertEqual((row["execs"], row["exec_s"], row["new"]), (61961, 2581.0, 17))
        self.assertEqual(row["coverage"], "cov 815 ft 2310")
        self.assertEqual((row["corpus"], row["crashes"], row["log"]), (150, 0, log))

    def test_without_final_statistics_the_rate_is_executions_over_seconds(self):
        log = self.write("fuzz.log", ONE_PROCESS)
        row = fuzz_stats.lf_row("page_ops", log, 0, 10, 5, 150, [])
        self.assertEqual((row["execs"], row["exec_s"], row["new"]), (5000, 500, 145))

    def test_a_log_without_numbers_gives_dashes(self):
        log = self.write("fuzz.log", "INFO: Seed: 1\n")
        row = fuzz_stats.lf_row("page_ops", log, 0, 0, 0, 0, [])
        self.assertEqual((row["execs"], row["exec_s"], row["coverage"]), (None, None, None))
        out = io.StringIO()
        with redirect_stdout(out):
            self.assertEqual(fuzz_stats.main(["progress", "--engine", "libfuzzer", os.path.join(self.dir.name, "none.log")]), 0)
        self.assertEqual(out.getvalue(), "execs -  exec/s -  cov - ft -  corpus -  crashes 0\n")

    def test_progress_line(self):
        log = self.write("fuzz.log", ONE_PROCESS)
        self.assertEqual(fuzz_stats.progress("libfuzzer", [log], 2),
                         "execs 5000  exec/s 600  cov 815 ft 2310  corpus 141  crashes 2")


class Results(unittest.TestCase):
    def test_result_truth_table(self):
        rows = [
            ([], 0, "ok"),
            ([], 1, "ERROR(1)"),
            ([], 124, "HUNG"),
            ([], 137, "HUNG"),
            (["a/crash-1"], 0, "CRASH"),
            (["a/crash-1", "a/timeout-2"], 70, "TIMEOUT"),  # the newest artifact names it
            (["a/oom-3"], 0, "OOM"),
            (["a/leak-4"], 1, "LEAK"),
            (["a/notes.txt"], 0, "ok"),
        ]
        for artifacts, rc, expected in rows:
            self.assertEqual(fuzz_stats.result_of(artifacts, rc), expected, (artifacts, rc))


class Afl(Scratch):
    def stats(self, name, **kv):
        return self.write(name, "".join("%-18s: %s\n" % (k, v) for k, v in kv.items()))

    def test_instances_are_summed_or_the_largest_taken(self):
        a = self.stats("main", execs_done=1000, execs_per_sec="50.5", edges_found=300, corpus_count=40,
                       run_time=20, saved_crashes=0, saved_hangs=0, total_edges=65536, bitmap_cvg="0.46%")
        b = self.stats("s1", execs_done=500, execs_per_sec="20.1", edges_found=310, corpus_count=42, run_time=19,
                       saved_crashes=0, saved_hangs=0)
        row = fuzz_stats.afl_row("page_ops", "afl.log", [a, b], 0, 10, [])
        self.assertEqual(row["result"], "ok")
        self.assertEqual((row["execs"], row["exec_s"], row["corpus"], row["new"]), (1500, 75, 42, 32))
        self.assertEqual(row["coverage"], "edges 310/65536 0.46%")
        self.assertEqual(fuzz_stats.progress("afl", [a, b, os.path.join(self.dir.name, "missing")], 1),
                         "execs 1500  exec/s 70  edges 310  corpus 42  crashes 1  hangs 0")

    def test_afl_results(self):
        ok = self.stats("ok", execs_done=1, run_time=1, saved_crashes=0, saved_hangs=0)
        crashed = self.stats("crashed", execs_done=1, run_time=1, saved_crashes=2, saved_hangs=0)
        hung = self.stats("hung", execs_done=1, run_time=1, saved_crashes=0, saved_hangs=1)
        missing = os.path.join(self.dir.name, "missing")
        cases = [
            ([ok], 0, [], "ok"),
            ([crashed], 0, [], "CRASH"),
            ([hung], 0, [], "TIMEOUT"),
            ([ok], 0, ["x/crash-afl-abc"], "CRASH"),  # a seed AFL++ skipped
            ([ok], 0, ["x/timeout-afl-abc"], "TIMEOUT"),
            ([ok], 3, [], "ERROR(3)"),
            ([missing], 0, [], "ERROR(0)"),  # it never wrote its statistics
        ]
        for stats, rc, artifacts, expected in cases:
            self.assertEqual(fuzz_stats.afl_row("t", "l", stats, rc, 0, artifacts)["result"], expected,
                             (stats, rc, artifacts))
        self.assertEqual(fuzz_stats.afl_row("t", "l", [crashed, hung], 0, 0, [])["crashes"], 3)

    def test_seeds_the_dry_run_skipped(self):
        log = ("[!] WARNING: Test case 'id:000001,time:0,execs:0,orig:b-seed' results in a crash, skipping\n"
               "[!] WARNING: Test case 'id:000000,time:0,execs:0,orig:a-seed' results in a timeout, skipping\n"
               "[!] WARNING: Test case 'id:000002,time:0,execs:0,orig:c-seed' results in a crash, skipping\n"
               "[!] WARNING: Test case 'id:000002,time:0,execs:0,orig:c-seed' results in a timeout, skipping\n")
        self.assertEqual(fuzz_stats.seed_findings(log),
                         [("timeout", "a-seed"), ("crash", "b-seed"), ("timeout", "c-seed")])
        self.assertEqual(fuzz_stats.seed_findings("nothing here\n"), [])

    def test_statsd_datagrams_become_fuzzer_stats_lines(self):
        datagram = "fuzzing.execs_done:1234|g\nother.metric:5|c\nfuzzing.edges_found:77|g|#tag\n"
        self.assertEqual(fuzz_stats.statsd_lines(datagram), ["execs_done : 1234\n", "edges_found : 77\n"])
        self.assertEqual(fuzz_stats.afl_stats("".join(fuzz_stats.statsd_lines(datagram))),
                         {"execs_done": "1234", "edges_found": "77"})


class Summary(Scratch):
    def rows(self, *rows):
        return self.write("rows.jsonl", "".join(json.dumps(r) + "\n" for r in rows))

    def run_summary(self, args):
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            rc = fuzz_stats.main(args)
        return rc, out.getvalue(), err.getvalue()

    def test_a_table_and_the_count(self):
        ok = {"target": "page_ops", "result": "ok", "execs": 100, "exec_s": 2581.4, "coverage": "cov 1 ft 2",
              "corpus": 9, "new": 4, "crashes": 0, "artifacts": []}
        path = self.rows(ok)
        rc, out, _ = self.run_summary(["summary", "--engine", "libfuzzer", "--seconds", "10", "--jobs", "1", path])
        self.assertEqual(rc, 0)
        lines = out.splitlines()
        self.assertIn("=== ci/fuzz summary (libfuzzer, 10s per target, 1 job(s)) ===", lines)
        self.assertEqual(lines[-3].split()[:8], ["target", "result", "execs", "exec/s", "coverage", "corpus", "new",
                                                 "crashes"])
        self.assertEqual(lines[-2].split(), ["page_ops", "ok", "100", "2581", "cov", "1", "ft", "2", "9", "4", "0"])
        self.assertEqual(lines[-1], "fuzz targets: 1 passed, 0 failed")

    def test_a_failure_without_an_artifact_is_named_and_fails_the_run(self):
        hung = {"target": "slab_ops", "result": "HUNG", "crashes": 0, "artifacts": [], "log": "w/fuzz.log"}
        crash = {"target": "page_ops", "result": "CRASH", "crashes": 1, "artifacts": ["a/crash-1"]}
        rc, out, _ = self.run_summary(["summary", "--engine", "libfuzzer", "--seconds", "10", "--jobs", "1",
                                       self.rows(crash, hung)])
        self.assertEqual(rc, 1)
        self.assertIn("slab_ops: HUNG without an artifact; see w/fuzz.log", out)
        self.assertNotIn("page_ops: CRASH without", out)
        self.assertIn("fuzz targets: 0 passed, 2 failed", out)

    def test_a_failed_merge_fails_the_run(self):
        ok = {"target": "page_ops", "result": "ok", "artifacts": []}
        rc, out, _ = self.run_summary(["summary", "--engine", "libfuzzer", "--seconds", "1", "--jobs", "1",
                                       "--merged", "page_ops=error", self.rows(ok)])
        self.assertEqual(rc, 1)
        self.assertIn("merged", out.splitlines()[2])
        self.assertTrue(out.splitlines()[3].rstrip().endswith("error"))
        rc, _, _ = self.run_summary(["summary", "--engine", "libfuzzer", "--seconds", "1", "--jobs", "1",
                                     "--merged", "page_ops=+3", self.rows(ok)])
        self.assertEqual(rc, 0)

    def test_bad_input_is_named(self):
        bad = self.write("rows.jsonl", '{"target": "a", "result": "ok"}\nnot json\n')
        rc, _, err = self.run_summary(["summary", "--engine", "x", "--seconds", "1", "--jobs", "1", bad])
        self.assertEqual(rc, 2)
        self.assertIn("rows.jsonl:2: not a row", err)
        rc, _, err = self.run_summary(["row", "--engine", "libfuzzer", "--target", "t", "--log", "l", "--rc", "x"])
        self.assertEqual(rc, 2)
        self.assertIn("--rc: 'x' is not a whole number", err)
        rc, _, err = self.run_summary(["summary", "--engine", "x", "--seconds", "1", "--jobs", "1",
                                       "--merged", "nothing", self.rows({"target": "a", "result": "ok"})])
        self.assertEqual(rc, 2)
        self.assertIn("expected TARGET=VALUE", err)

    def test_row_prints_one_json_line(self):
        log = self.write("fuzz.log", ONE_PROCESS + FINAL)
        crash = self.write("crash-abc", "x")
        rc, out, _ = self.run_summary(["row", "--engine", "libfuzzer", "--target", "page_ops", "--log", log, "--rc", "77",
                                       "--elapsed", "3", "--seeds", "5", "--corpus-end", "9", crash])
        self.assertEqual(rc, 0)
        row = json.loads(out)
        self.assertEqual((row["target"], row["result"], row["crashes"], row["artifacts"]),
                         ("page_ops", "CRASH", 1, [crash]))


if __name__ == "__main__":
    unittest.main()
