#!/usr/bin/env python3
"""check_workflows: structural checks of .github/workflows/ against the tree.

    tools/check_workflows.py [--root DIR]

No linter for GitHub workflows is packaged for Debian 12 (actionlint is not;
yamllint checks YAML style, not workflows), so this checks what matters for
this project, offline, with PyYAML (Debian: python3-yaml):

  - every workflow parses and has `on` and `jobs`; every job has `runs-on`
    and `steps` (a list); every step has `uses` or `run`
  - every `uses:` of another repository is pinned to a version tag (v4,
    v1.2.3) or a full commit SHA, not a branch
  - ci.yml exists and a step of it runs ci/test
  - every job that uses ClusterFuzzLite's actions builds and runs with the
    same sanitizer, uses a known mode, and its build step names the language
    of .clusterfuzzlite/project.yaml; the fuzzing modes (code-change, batch)
    of each workflow cover exactly the sanitizers project.yaml lists, prune
    uses one of them, coverage uses 'coverage'; code-change runs on pull
    requests, the other modes on a schedule
  - the fuzz targets: fuzz/NAME.cc (less fuzz/afl_mutator.cc and
    fuzz/replay_main.cc) each declare ANYCTX_FUZZ_TARGET("NAME") or define
    LLVMFuzzerTestOneInput, and are
    exactly the targets fuzz/CMakeLists.txt adds (which build.sh builds, all
    of them, as the target anyctx_fuzzers); a workflow matrix that names
    targets names exactly these

Prints one line per problem and exits 1 if there is any, else prints a
summary and exits 0. Run by ctest (workflows.check, label workflows).
"""

import argparse
import glob
import os
import re
import sys

try:
    import yaml
except ImportError:  # pragma: no cover - depends on the machine
    yaml = None

NOT_TARGETS = {"afl_mutator", "replay_main"}
CFLITE_BUILD = "google/clusterfuzzlite/actions/build_fuzzers"
CFLITE_RUN = "google/clusterfuzzlite/actions/run_fuzzers"
FUZZING_MODES = {"code-change", "batch"}
MODES = FUZZING_MODES | {"prune", "coverage"}
PINNED = re.compile(r"^v\d+(\.\d+){0,2}$|^[0-9a-f]{40}$")
ENTRY = re.compile(r"LLVMFuzzerTestOneInput\s*\([^;{)]*\)\s*\{")
MATRIX_REF = re.compile(r"^\$\{\{\s*matrix\.([A-Za-z0-9_-]+)\s*\}\}$")


class Problems:
    def __init__(self):
        self.lines = []

    def add(self, where, what):
        self.lines.append("%s: %s" % (where, what))


def load_yaml(path, problems):
    try:
        with open(path, encoding="utf-8") as f:
            return yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as e:
        problems.add(path, "does not parse: %s" % str(e).replace("\n", " "))
        return None


def triggers(doc):
    """The `on` of a workflow as a dict (PyYAML reads a bare `on` key as True)."""
    on = doc.get("on", doc.get(True))
    if isinstance(on, str):
        return {on: None}
    if isinstance(on, list):
        return {k: None for k in on}
    if isinstance(on, dict):
        return on
    return None


def as_values(value, matrix):
    """The values a `with:` entry takes: a literal, or a matrix column."""
    if value is None:
        return None
    m = MATRIX_REF.match(str(value).strip())
    if m:
        column = (matrix or {}).get(m.group(1))
        if isinstance(column, list):
            return [str(v) for v in column]
        return None
    return [str(value)]


def check_structure(name, doc, problems):
    if not isinstance(doc, dict):
        problems.add(name, "is not a mapping")
        return False
    if "name" not in doc:
        problems.add(name, "has no name")
    if triggers(doc) is None:
        problems.add(name, "has no `on` (or it is empty)")
    jobs = doc.get("jobs")
    if not isinstance(jobs, dict) or not jobs:
        problems.add(name, "has no jobs")
        return False
    ok = True
    for job_id, job in jobs.items():
        where = "%s: job %s" % (name, job_id)
        if not isinstance(job, dict):
            problems.add(where, "is not a mapping")
            ok = False
            continue
        if "uses" in job:  # a reusable workflow: no runs-on, no steps
            check_pinned(where, job["uses"], problems)
            continue
        if "runs-on" not in job:
            problems.add(where, "has no runs-on")
        steps = job.get("steps")
        if not isinstance(steps, list) or not steps:
            problems.add(where, "has no steps")
            ok = False
            continue
        for i, step in enumerate(steps):
            swhere = "%s: step %d" % (where, i + 1)
            if not isinstance(step, dict):
                problems.add(swhere, "is not a mapping")
                continue
            if ("uses" in step) == ("run" in step):
                problems.add(swhere, "needs exactly one of uses and run")
            if "uses" in step:
                check_pinned(swhere, step["uses"], problems)
    return ok


def check_pinned(where, uses, problems):
    uses = str(uses)
    if uses.startswith("./") or uses.startswith("docker://"):
        return
    action, _, ref = uses.partition("@")
    if not ref:
        problems.add(where, "uses %s without a version" % action)
    elif not PINNED.match(ref):
        problems.add(where, "uses %s@%s: pin a version tag (v4, v1.2.3) or a commit SHA, not a branch"
                     % (action, ref))


def steps_of(job):
    return [s for s in job.get("steps") or [] if isinstance(s, dict)]


def action_of(step):
    return str(step.get("uses", "")).partition("@")[0]


def runs_ci_test(doc):
    for job in (doc.get("jobs") or {}).values():
        if not isinstance(job, dict):
            continue
        for step in steps_of(job):
            if re.search(r"(^|[\s/'\";&|(])ci/test($|[\s'\";&|)])", str(step.get("run", ""))):
                return True
    return False


def read_project(root, problems):
    path = os.path.join(root, ".clusterfuzzlite", "project.yaml")
    doc = load_yaml(path, problems) if os.path.exists(path) else None
    if doc is None:
        problems.add(path, "missing or empty")
        return None, set()
    language = doc.get("language")
    sanitizers = set(str(s) for s in doc.get("sanitizers") or ["address"])
    if not language:
        problems.add(path, "names no language")
    return language, sanitizers


def check_cflite(name, doc, language, sanitizers, problems):
    """Returns the modes the workflow runs."""
    on = triggers(doc) or {}
    fuzzing = set()  # sanitizers of the workflow's code-change and batch jobs
    modes = set()
    for job_id, job in (doc.get("jobs") or {}).items():
        if not isinstance(job, dict):
            continue
        where = "%s: job %s" % (name, job_id)
        matrix = (job.get("strategy") or {}).get("matrix")
        builds = [s for s in steps_of(job) if action_of(s) == CFLITE_BUILD]
        runs = [s for s in steps_of(job) if action_of(s) == CFLITE_RUN]
        if not builds and not runs:
            continue
        if not builds or not runs:
            problems.add(where, "needs both build_fuzzers and run_fuzzers")
            continue
        build_with = builds[0].get("with") or {}
        run_with = runs[0].get("with") or {}
        if str(build_with.get("language")) != str(language):
            problems.add(where, "build_fuzzers language %r, project.yaml says %r"
                         % (build_with.get("language"), language))
        # Both actions default to address when no sanitizer is given.
        build_san = as_values(build_with.get("sanitizer", "address"), matrix)
        run_san = as_values(run_with.get("sanitizer", "address"), matrix)
        if build_san is None or run_san is None:
            problems.add(where, "sanitizer is neither a name nor a matrix column")
            continue
        if sorted(build_san) != sorted(run_san):
            problems.add(where, "builds with %s but runs with %s" % (build_san, run_san))
        mode = str(run_with.get("mode", "code-change"))
        modes.add(mode)
        if mode not in MODES:
            problems.add(where, "unknown mode %r (one of %s)" % (mode, ", ".join(sorted(MODES))))
            continue
        seconds = run_with.get("fuzz-seconds")
        if mode in FUZZING_MODES and not (isinstance(seconds, int) and seconds > 0):
            problems.add(where, "mode %s needs fuzz-seconds, a positive number" % mode)
        if mode in FUZZING_MODES:
            fuzzing.update(run_san)
        elif mode == "prune":
            extra = set(run_san) - sanitizers
            if extra:
                problems.add(where, "prunes with %s, not in project.yaml" % sorted(extra))
        elif set(run_san) != {"coverage"}:
            problems.add(where, "mode coverage needs sanitizer coverage, got %s" % run_san)
        if mode == "code-change" and "pull_request" not in on and "push" not in on:
            problems.add(where, "code-change fuzzing without a pull_request or push trigger")
        if mode != "code-change" and "schedule" not in on:
            problems.add(where, "mode %s without a schedule" % mode)
    if fuzzing and fuzzing != sanitizers:
        problems.add(name, "fuzzes with sanitizers %s, project.yaml lists %s"
                     % (sorted(fuzzing), sorted(sanitizers)))
    return modes


def fuzz_targets(root, problems):
    """The targets of fuzz/*.cc, checked against fuzz/CMakeLists.txt."""
    names = set()
    for path in sorted(glob.glob(os.path.join(root, "fuzz", "*.cc"))):
        name = os.path.basename(path)[:-3]
        if name in NOT_TARGETS:
            continue
        names.add(name)
        with open(path, encoding="utf-8") as f:
            text = f.read()
        if 'ANYCTX_FUZZ_TARGET("%s")' % name not in text and not ENTRY.search(text):
            problems.add(os.path.relpath(path, root),
                         'is not a fuzz target: neither ANYCTX_FUZZ_TARGET("%s") nor an '
                         'LLVMFuzzerTestOneInput definition' % name)
    cmake = os.path.join(root, "fuzz", "CMakeLists.txt")
    listed = set()
    try:
        with open(cmake, encoding="utf-8") as f:
            text = f.read()
    except OSError:
        problems.add(cmake, "missing")
        return names
    for m in re.finditer(r"foreach\s*\(\s*(\w+)\s+IN\s+ITEMS\s+([^)]*)\)(.*?)endforeach", text, re.S):
        if re.search(r"anyctx_add_fuzz_target\s*\(\s*\$\{%s\}" % m.group(1), m.group(3)):
            listed.update(m.group(2).split())
    listed.update(re.findall(r"anyctx_add_fuzz_target\s*\(\s*([A-Za-z0-9_]+)", text))
    if listed != names:
        if names - listed:
            problems.add(cmake, "does not add the fuzz targets %s of fuzz/*.cc" % sorted(names - listed))
        if listed - names:
            problems.add(cmake, "adds targets %s that have no fuzz/NAME.cc" % sorted(listed - names))
    build_sh = os.path.join(root, ".clusterfuzzlite", "build.sh")
    try:
        with open(build_sh, encoding="utf-8") as f:
            if not re.search(r"--target\s+anyctx_fuzzers\b", f.read()):
                problems.add(build_sh, "does not build the target anyctx_fuzzers (every fuzz target)")
    except OSError:
        problems.add(build_sh, "missing")
    return names


def check_matrix_targets(name, doc, targets, problems):
    for job_id, job in (doc.get("jobs") or {}).items():
        matrix = (job.get("strategy") or {}).get("matrix") if isinstance(job, dict) else None
        for key in ("target", "fuzz-target", "fuzzer"):
            column = (matrix or {}).get(key)
            if isinstance(column, list) and set(map(str, column)) != targets:
                problems.add("%s: job %s" % (name, job_id),
                             "matrix %s is %s, the fuzz targets are %s" % (key, sorted(column), sorted(targets)))


def check(root):
    """Returns (problems, summary lines)."""
    problems = Problems()
    summary = []
    wf_dir = os.path.join(root, ".github", "workflows")
    paths = sorted(glob.glob(os.path.join(wf_dir, "*.yml")) + glob.glob(os.path.join(wf_dir, "*.yaml")))
    if not paths:
        problems.add(wf_dir, "holds no workflow")
    language, sanitizers = read_project(root, problems)
    targets = fuzz_targets(root, problems)
    found_ci = False
    for path in paths:
        name = os.path.relpath(path, root)
        doc = load_yaml(path, problems)
        if doc is None:
            continue
        if not check_structure(name, doc, problems):
            continue
        check_matrix_targets(name, doc, targets, problems)
        modes = check_cflite(name, doc, language, sanitizers, problems)
        if os.path.basename(path) in ("ci.yml", "ci.yaml"):
            found_ci = True
            if not runs_ci_test(doc):
                problems.add(name, "no step runs ci/test")
        summary.append("%s: %d job(s)%s" % (name, len(doc["jobs"]),
                                            ", ClusterFuzzLite " + " ".join(sorted(modes)) if modes else ""))
    if paths and not found_ci:
        problems.add(wf_dir, "has no ci.yml that runs ci/test")
    summary.append("fuzz targets: %s; project.yaml: %s, sanitizers %s"
                   % (" ".join(sorted(targets)), language, " ".join(sorted(sanitizers))))
    return problems.lines, summary


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                    help="the checkout (default: the one holding this script)")
    args = ap.parse_args(argv)
    if yaml is None:
        print("check_workflows: PyYAML is missing (Debian: python3-yaml; ci/setup installs it)", file=sys.stderr)
        return 2
    problems, summary = check(args.root)
    for line in summary:
        print("check_workflows: " + line)
    for line in problems:
        print("check_workflows: PROBLEM: " + line)
    if problems:
        print("check_workflows: %d problem(s)" % len(problems))
        return 1
    print("check_workflows: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
