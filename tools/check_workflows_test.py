#!/usr/bin/env python3
"""Unit tests of tools/check_workflows.py (ctest: workflows.check_test).

Each test writes a small tree (project.yaml, build.sh, fuzz/, workflows) to a
temporary directory, breaks one thing, and looks for the problem line.
"""

import os
import sys
import tempfile
import textwrap
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import check_workflows  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PROJECT = """\
language: c++
sanitizers:
  - address
  - undefined
"""

CI = """\
name: CI
on: [push, pull_request]
jobs:
  test:
    runs-on: ubuntu-24.04
    steps:
      - uses: actions/checkout@v4
      - run: ci/test
"""

PR = """\
name: PR fuzzing
on:
  pull_request:
jobs:
  PR:
    runs-on: ubuntu-latest
    strategy:
      matrix:
        sanitizer: [address, undefined]
    steps:
      - uses: google/clusterfuzzlite/actions/build_fuzzers@v1
        with:
          language: c++
          sanitizer: ${{ matrix.sanitizer }}
      - uses: google/clusterfuzzlite/actions/run_fuzzers@v1
        with:
          fuzz-seconds: 300
          mode: code-change
          sanitizer: ${{ matrix.sanitizer }}
"""

CRON = """\
name: cron
on:
  schedule:
    - cron: '0 1 * * *'
jobs:
  Pruning:
    runs-on: ubuntu-latest
    steps:
      - uses: google/clusterfuzzlite/actions/build_fuzzers@v1
        with: {language: c++}
      - uses: google/clusterfuzzlite/actions/run_fuzzers@v1
        with: {mode: prune, fuzz-seconds: 60}
  Coverage:
    runs-on: ubuntu-latest
    steps:
      - uses: google/clusterfuzzlite/actions/build_fuzzers@v1
        with: {language: c++, sanitizer: coverage}
      - uses: google/clusterfuzzlite/actions/run_fuzzers@v1
        with: {mode: coverage, sanitizer: coverage, fuzz-seconds: 60}
"""

FUZZ_CMAKE = """\
foreach(target IN ITEMS alpha beta)
  anyctx_add_fuzz_target(${target} SOURCES ${target}.cc LIBS anyctx_harness)
endforeach()
"""


class Tree:
    """A small checkout in a temporary directory."""

    def __init__(self, tmp):
        self.root = tmp
        self.write(".clusterfuzzlite/project.yaml", PROJECT)
        self.write(".clusterfuzzlite/build.sh", "cmake --build \"$build\" --target anyctx_fuzzers -j 2\n")
        self.write("fuzz/CMakeLists.txt", FUZZ_CMAKE)
        self.write("fuzz/alpha.cc", 'ANYCTX_FUZZ_TARGET("alpha")\n')
        self.write("fuzz/beta.cc", 'extern "C" int LLVMFuzzerTestOneInput(const uint8_t* d, size_t n) {\n  return 0;\n}\n')
        self.write("fuzz/afl_mutator.cc", "// not a target\n")
        self.write("fuzz/replay_main.cc", 'extern "C" int LLVMFuzzerTestOneInput(const uint8_t*, size_t);\n')
        self.write(".github/workflows/ci.yml", CI)
        self.write(".github/workflows/cflite_pr.yml", PR)
        self.write(".github/workflows/cflite_cron.yml", CRON)

    def write(self, rel, text):
        path = os.path.join(self.root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(textwrap.dedent(text))

    def replace(self, rel, old, new):
        path = os.path.join(self.root, rel)
        with open(path, encoding="utf-8") as f:
            text = f.read()
        assert old in text, (rel, old)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text.replace(old, new))

    def problems(self):
        return check_workflows.check(self.root)[0]


class CheckWorkflowsTest(unittest.TestCase):
    def setUp(self):
        self._tmp = tempfile.TemporaryDirectory(prefix="check-workflows-")
        self.tree = Tree(self._tmp.name)

    def tearDown(self):
        self._tmp.cleanup()

    def assertProblem(self, fragment):
        problems = self.tree.problems()
        self.assertTrue(any(fragment in p for p in problems),
                        "no problem containing %r in %r" % (fragment, problems))

    def test_the_repository_passes(self):
        problems, summary = check_workflows.check(ROOT)
        self.assertEqual(problems, [])
        self.assertTrue(any("fuzz targets: " in s for s in summary))

    def test_a_good_tree_passes(self):
        self.assertEqual(self.tree.problems(), [])

    def test_a_workflow_needs_on(self):
        # (PyYAML reads `on:` as the boolean True; the good tree shows that counts.)
        self.tree.write(".github/workflows/ci.yml", CI.replace("on: [push, pull_request]\n", ""))
        self.assertProblem("has no `on`")

    def test_branch_pins_are_refused(self):
        self.tree.replace(".github/workflows/ci.yml", "actions/checkout@v4", "actions/checkout@main")
        self.assertProblem("actions/checkout@main: pin a version tag")
        self.tree.replace(".github/workflows/ci.yml", "actions/checkout@main", "actions/checkout")
        self.assertProblem("without a version")

    def test_tags_and_shas_are_pinned(self):
        self.tree.replace(".github/workflows/ci.yml", "actions/checkout@v4",
                          "actions/checkout@0123456789abcdef0123456789abcdef01234567")
        self.assertEqual(self.tree.problems(), [])
        self.tree.replace(".github/workflows/ci.yml", "@0123456789abcdef0123456789abcdef01234567", "@v4.1.7")
        self.assertEqual(self.tree.problems(), [])

    def test_job_needs_runs_on_and_steps(self):
        self.tree.replace(".github/workflows/ci.yml", "    runs-on: ubuntu-24.04\n", "")
        self.assertProblem("job test: has no runs-on")
        self.tree.write(".github/workflows/ci.yml", "name: CI\non: push\njobs:\n  test:\n    runs-on: x\n")
        self.assertProblem("job test: has no steps")

    def test_ci_must_run_ci_test(self):
        self.tree.replace(".github/workflows/ci.yml", "run: ci/test", "run: ci/test-clusterfuzzlite")
        self.assertProblem("no step runs ci/test")
        os.remove(os.path.join(self.tree.root, ".github/workflows/ci.yml"))
        self.assertProblem("has no ci.yml")

    def test_ci_test_in_a_longer_command_counts(self):
        self.tree.replace(".github/workflows/ci.yml", "run: ci/test",
                          "run: docker run debian:12 bash -c 'apt-get update && ci/test'")
        self.assertEqual(self.tree.problems(), [])

    def test_sanitizers_must_match_project_yaml(self):
        self.tree.replace(".github/workflows/cflite_pr.yml", "[address, undefined]", "[address]")
        self.assertProblem("fuzzes with sanitizers ['address'], project.yaml lists ['address', 'undefined']")
        self.tree.replace(".github/workflows/cflite_pr.yml", "[address]", "[address, undefined, memory]")
        self.assertProblem("fuzzes with sanitizers ['address', 'memory', 'undefined']")

    def test_build_and_run_use_one_sanitizer(self):
        self.tree.replace(".github/workflows/cflite_pr.yml",
                          "          language: c++\n          sanitizer: ${{ matrix.sanitizer }}",
                          "          language: c++\n          sanitizer: address")
        self.assertProblem("builds with ['address'] but runs with ['address', 'undefined']")

    def test_language_must_match_project_yaml(self):
        self.tree.replace(".github/workflows/cflite_pr.yml", "language: c++", "language: c")
        self.assertProblem("build_fuzzers language 'c', project.yaml says 'c++'")

    def test_coverage_needs_the_coverage_sanitizer(self):
        self.tree.replace(".github/workflows/cflite_cron.yml",
                          "{mode: coverage, sanitizer: coverage", "{mode: coverage, sanitizer: address")
        self.assertProblem("builds with ['coverage'] but runs with ['address']")
        self.assertProblem("mode coverage needs sanitizer coverage")

    def test_modes_and_triggers(self):
        self.tree.replace(".github/workflows/cflite_pr.yml", "mode: code-change", "mode: fuzz-everything")
        self.assertProblem("unknown mode 'fuzz-everything'")
        self.tree.replace(".github/workflows/cflite_pr.yml", "mode: fuzz-everything", "mode: batch")
        self.assertProblem("mode batch without a schedule")

    def test_fuzzing_needs_seconds(self):
        self.tree.replace(".github/workflows/cflite_pr.yml", "          fuzz-seconds: 300\n", "")
        self.assertProblem("mode code-change needs fuzz-seconds")

    def test_fuzz_targets_match_fuzz_cmakelists(self):
        self.tree.write("fuzz/gamma.cc", 'ANYCTX_FUZZ_TARGET("gamma")\n')
        self.assertProblem("does not add the fuzz targets ['gamma'] of fuzz/*.cc")
        os.remove(os.path.join(self.tree.root, "fuzz/gamma.cc"))
        os.remove(os.path.join(self.tree.root, "fuzz/beta.cc"))
        self.assertProblem("adds targets ['beta'] that have no fuzz/NAME.cc")

    def test_a_source_that_is_no_target(self):
        self.tree.write("fuzz/beta.cc", "// helpers only\n")
        self.assertProblem("fuzz/beta.cc: is not a fuzz target")

    def test_build_sh_builds_every_target(self):
        self.tree.write(".clusterfuzzlite/build.sh", "cmake --build \"$build\" --target fuzz_alpha\n")
        self.assertProblem("does not build the target anyctx_fuzzers")

    def test_a_matrix_of_targets_names_them_all(self):
        self.tree.replace(".github/workflows/cflite_pr.yml", "        sanitizer: [address, undefined]\n",
                          "        sanitizer: [address, undefined]\n        target: [alpha]\n")
        self.assertProblem("matrix target is ['alpha'], the fuzz targets are ['alpha', 'beta']")

    def test_yaml_that_does_not_parse(self):
        self.tree.write(".github/workflows/broken.yml", "name: [unclosed\n")
        self.assertProblem("broken.yml: does not parse")

    def test_main_exit_status(self):
        self.assertEqual(check_workflows.main(["--root", self.tree.root]), 0)
        self.tree.replace(".github/workflows/ci.yml", "actions/checkout@v4", "actions/checkout@main")
        self.assertEqual(check_workflows.main(["--root", self.tree.root]), 1)


if __name__ == "__main__":
    unittest.main()
