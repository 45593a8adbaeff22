#!/usr/bin/env python3
"""Unit tests of tools/fuzz_options.py (ctest: triage.fuzz_options_test),
and a check of every fuzz/NAME.options in the tree."""

import glob
import io
import os
import sys
import tempfile
import unittest
from contextlib import redirect_stderr, redirect_stdout

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fuzz_options  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class LibfuzzerFlags(unittest.TestCase):
    def test_only_the_libfuzzer_section_in_file_order(self):
        text = "# a comment\n[asan]\ndetect_odr_violation = 0\n[libfuzzer]\nmax_len = 1024\n  timeout=10  # why\n"
        self.assertEqual(fuzz_options.libfuzzer_flags(text), ["-max_len=1024", "-timeout=10"])

    def test_section_names_ignore_case_and_values_keep_inner_spaces(self):
        text = "[LibFuzzer]\nonly_ascii = a b\n"
        self.assertEqual(fuzz_options.libfuzzer_flags(text), ["-only_ascii=a b"])

    def test_a_line_that_is_not_a_setting_is_named(self):
        with self.assertRaisesRegex(fuzz_options.OptionsError, r"x.options:2: expected"):
            fuzz_options.libfuzzer_flags("[libfuzzer]\nmax_len 1024\n", "x.options")

    def test_a_setting_before_any_section_is_named(self):
        with self.assertRaisesRegex(fuzz_options.OptionsError, r":1: .* before any \[section\]"):
            fuzz_options.libfuzzer_flags("max_len = 1\n")

    def test_a_key_twice_in_one_section_is_named(self):
        with self.assertRaisesRegex(fuzz_options.OptionsError, r":3: timeout is set twice"):
            fuzz_options.libfuzzer_flags("[libfuzzer]\ntimeout = 1\ntimeout = 2\n")

    def test_main_prints_nothing_for_a_missing_file_and_fails_on_a_bad_one(self):
        out = io.StringIO()
        with redirect_stdout(out):
            self.assertEqual(fuzz_options.main(["/nonexistent/x.options"]), 0)
        self.assertEqual(out.getvalue(), "")
        with tempfile.NamedTemporaryFile("w", suffix=".options", delete=False) as f:
            f.write("[libfuzzer]\n= 3\n")
        err = io.StringIO()
        try:
            with redirect_stderr(err):
                self.assertEqual(fuzz_options.main([f.name]), 2)
        finally:
            os.unlink(f.name)
        self.assertIn(f.name + ":2", err.getvalue())


class TheTreesOptions(unittest.TestCase):
    def test_every_target_parses_and_keeps_the_per_input_leak_check(self):
        files = sorted(glob.glob(os.path.join(ROOT, "fuzz", "*.options")))
        self.assertGreaterEqual(len(files), 6)
        for path in files:
            with open(path, encoding="utf-8") as f:
                flags = fuzz_options.libfuzzer_flags(f.read(), path)
            self.assertFalse(any(x.startswith("-detect_leaks=") for x in flags), path)
            self.assertTrue(any(x.startswith("-max_len=") for x in flags), path)


if __name__ == "__main__":
    unittest.main()
