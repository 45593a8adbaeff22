#!/usr/bin/env python3
"""Unit tests of tools/coverage_summary.py (ctest: triage.coverage_summary_test)."""

import io
import json
import os
import sys
import tempfile
import unittest
from contextlib import redirect_stderr, redirect_stdout

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import coverage_summary  # noqa: E402


def export(*files):
    """An llvm-cov export -summary-only of (filename, covered, count) files."""
    return {
        "type": "llvm.coverage.json.export",
        "version": "2.0.1",
        "data": [{
            "files": [{"filename": name, "summary": {"lines": {"count": n, "covered": c, "percent": 0}}}
                      for name, c, n in files],
            "totals": {},
        }],
    }


class PerDirectory(unittest.TestCase):
    def test_files_add_up_per_directory_relative_to_the_root(self):
        dirs = coverage_summary.per_directory(
            export(("/r/src/anyctx/page/a.cc", 3, 4), ("/r/src/anyctx/page/b.h", 1, 6),
                   ("/r/src/harness/x.cc", 0, 5)), "/r/src")
        self.assertEqual(dirs, {"anyctx/page": (4, 10), "harness": (0, 5)})

    def test_a_root_with_a_trailing_slash_and_a_file_outside_it(self):
        dirs = coverage_summary.per_directory(export(("/r/src/top.cc", 1, 1), ("/usr/include/v.h", 2, 3)), "/r/src/")
        self.assertEqual(dirs, {"": (1, 1), "/usr/include": (2, 3)})

    def test_the_report_is_sorted_and_ends_with_the_total(self):
        lines = coverage_summary.report({"b": (1, 4), "a": (3, 4), "c": (0, 0)})
        self.assertEqual(lines, [
            "a                          75.0% lines  (3 of 4)",
            "b                          25.0% lines  (1 of 4)",
            "c                           0.0% lines  (0 of 0)",
            "total                      50.0% lines  (4 of 8)",
        ])

    def test_what_is_missing_is_named(self):
        with self.assertRaisesRegex(coverage_summary.ExportError, 'no "data" list'):
            coverage_summary.per_directory({"files": []}, "/r")
        with self.assertRaisesRegex(coverage_summary.ExportError, 'has no "files" list'):
            coverage_summary.per_directory({"data": [{}]}, "/r")
        with self.assertRaisesRegex(coverage_summary.ExportError, 'without a "filename"'):
            coverage_summary.per_directory({"data": [{"files": [{}]}]}, "/r")
        bad = {"data": [{"files": [{"filename": "/r/x.cc", "summary": {"regions": {}}}]}]}
        with self.assertRaisesRegex(coverage_summary.ExportError, r"/r/x.cc: no summary.lines"):
            coverage_summary.per_directory(bad, "/r")


class Main(unittest.TestCase):
    def run_main(self, argv, stdin_text=None):
        out, err = io.StringIO(), io.StringIO()
        old = sys.stdin
        sys.stdin = io.StringIO(stdin_text or "")
        try:
            with redirect_stdout(out), redirect_stderr(err):
                rc = coverage_summary.main(argv)
        finally:
            sys.stdin = old
        return rc, out.getvalue(), err.getvalue()

    def test_reads_a_file_or_standard_input(self):
        text = json.dumps(export(("/r/src/d/f.cc", 1, 2)))
        rc, out, _ = self.run_main(["--root", "/r/src"], text)
        self.assertEqual((rc, out.splitlines()[-1]), (0, "total                      50.0% lines  (1 of 2)"))
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
            fh.write(text)
        try:
            rc, out2, _ = self.run_main(["--root", "/r/src", fh.name])
        finally:
            os.unlink(fh.name)
        self.assertEqual((rc, out2), (0, out))

    def test_input_that_is_not_an_export_exits_2_and_says_why(self):
        rc, out, err = self.run_main(["--root", "/r"], "llvm-cov: error: no profile")
        self.assertEqual((rc, out), (2, ""))
        self.assertIn("coverage_summary: standard input: not JSON", err)
        rc, _, err = self.run_main(["--root", "/r", "/nonexistent/export.json"])
        self.assertEqual(rc, 2)
        self.assertIn("/nonexistent/export.json", err)


if __name__ == "__main__":
    unittest.main()
