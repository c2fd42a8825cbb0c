"""Mutation testing of the parts where a silent bug costs most (issue 25): `make mutants`.

    .venv/bin/python tools/mutants.py                      # every file in tools/mutants/map.toml
    .venv/bin/python tools/mutants.py agent/paths.py       # some of them
    .venv/bin/python tools/mutants.py --changed            # files changed since the marker commit
    .venv/bin/python tools/mutants.py --changed BASE       # ... since BASE (a commit or ref)
    .venv/bin/python tools/mutants.py --report             # the last results of every file, no run
    .venv/bin/python tools/mutants.py --list FILE          # the mutants of FILE and their keys
    .venv/bin/python tools/mutants.py --mark               # record HEAD as mutation-checked

The mutants are cosmic-ray's (its operators and its parso-based rewriting), one at a time, on a
private copy of the tree (never the working tree: others run tests in it), each tested with the
tests that tools/mutants/map.toml names for the mutated file (`pytest -x`, fastest first). A
mutant survives when those tests pass. A survivor listed in tools/mutants/equivalents.toml (rules) or equivalents/<file>.toml
(equivalent, with a reason, or still open) is reported apart; any other survivor is NEW, and the
run exits 1. Results per file go to out/mutants/<file>.json; `--report` adds them up.

Mutant keys are stable across edits elsewhere in the file: `file|function|operator|line text|n`
(n counts the same operator on identical lines of the same function).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
STOP = threading.Event()  # SIGTERM/SIGINT: start no more mutants, store what was run
CONF = ROOT / "tools" / "mutants"
OUT = ROOT / "out" / "mutants"
MARKER = CONF / "checked.toml"


@dataclass
class Mutant:
    """One mutation of one file: where, what, and (after a run) what the tests said."""

    file: str
    operator: str
    occurrence: int
    line: int
    function: str
    key: str
    outcome: str = "pending"  # killed | survived | timeout | error | skipped | equivalent | open
    seconds: float = 0.0
    diff: str = ""
    note: str = ""
    changed: bool = False


@dataclass
class FileConf:
    """A mutated file's entry of map.toml."""

    path: str
    tests: list[str]
    timeout_s: float
    functions: list[str] = field(default_factory=list)


def load_map() -> tuple[dict, dict[str, FileConf]]:
    """Read map.toml: global settings and each mutated file's tests."""
    data = tomllib.loads((CONF / "map.toml").read_text())
    files = {}
    for path, ent in data["files"].items():
        files[path] = FileConf(path, list(ent["tests"]), float(ent.get("timeout_s", data["timeout_s"])),
                               list(ent.get("functions", [])))
    return data, files


def equivalents_file(path: str) -> Path:
    """The file listing one mutated file's equivalent and open survivors (one per mutated file,
    so that people working on different files never edit the same list)."""
    return CONF / "equivalents" / (path.replace("/", "__").removesuffix(".py") + ".toml")


def load_known() -> dict[str, tuple[str, str]]:
    """Read equivalents.toml and equivalents/*.toml: key -> (kind, reason), kind 'equivalent'
    or 'open'."""
    known = {}
    for p in [CONF / "equivalents.toml", *sorted((CONF / "equivalents").glob("*.toml"))]:
        if not p.exists():
            continue
        data = tomllib.loads(p.read_text())
        for kind in ("equivalent", "open"):
            for ent in data.get(kind, []):
                known[ent["key"]] = (kind, ent.get("reason", ""))
    return known


def load_rules() -> list[tuple[re.Pattern, str, str]]:
    """equivalents.toml's [[rule]]s: (file regex, regex on the mutant's new line(s), reason)."""
    p = CONF / "equivalents.toml"
    if not p.exists():
        return []
    data = tomllib.loads(p.read_text())
    return [(re.compile(r.get("file", ".")), re.compile(r["mutated"]), r["reason"]) for r in data.get("rule", [])]


def equivalent_by_rule(m: Mutant, rules: list[tuple[re.Pattern, str, str]]) -> str | None:
    """The reason of the first rule that says mutant m (its diff known) is equivalent."""
    added = "\n".join(ln[1:] for ln in m.diff.splitlines() if ln.startswith("+"))
    for file_re, new_re, reason in rules:
        if file_re.search(m.file) and new_re.search(added):
            return reason
    return None


def _in_annotation(tree, pos: tuple[int, int]) -> bool:
    """Whether ``pos`` lies in a type annotation (a parameter's, a return's, a variable's)."""
    node = tree.get_leaf_for_position(pos)
    while node is not None and node.parent is not None:
        parent = node.parent
        if parent.type in ("param", "funcdef") and getattr(parent, "annotation", None) is node:
            return True
        if parent.type == "annassign" and parent.children[1] is node:
            return True
        if parent.type == "tfpdef" and parent.children[-1] is node:  # a parameter with a default
            return True
        node = parent
    return False


def enumerate_mutants(root: Path, fc: FileConf, settings: dict) -> list[Mutant]:
    """Every mutant of fc.path under root that the operator list and skip rules keep."""
    import parso
    from cosmic_ray.commands.init import _all_work_items

    keep = re.compile(settings["operators"])
    skips = [re.compile(s) for s in settings.get("skip_lines", [])]
    source = (root / fc.path).read_text()
    lines = source.splitlines()
    tree = parso.parse(source) if settings.get("skip_annotations") else None
    out: list[Mutant] = []
    seen: dict[str, int] = {}
    for item in _all_work_items([root / fc.path], {}):
        m = item.mutations[0]
        if not keep.search(m.operator_name):
            continue
        fn = m.definition_name or "<module>"
        if fc.functions and fn not in fc.functions:
            continue
        text = lines[m.start_pos[0] - 1].strip()
        if any(s.search(text) for s in skips):
            continue
        if tree is not None and _in_annotation(tree, m.start_pos):
            continue
        base = f"{fc.path}|{fn}|{m.operator_name.removeprefix('core/')}|{text}"
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.append(Mutant(fc.path, m.operator_name, m.occurrence, m.start_pos[0], fn, f"{base}|{n}"))
    return out


def copy_tree(dest: Path) -> None:
    """A private copy of the working tree (tracked and untracked, not ignored), venv linked."""
    names = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, names):
        src = ROOT / name
        if not src.is_file():
            continue
        dst = dest / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)
    for venv in (".venv", ".venv-mlserver", ".venv-pytriton"):
        if (ROOT / venv).exists():
            (dest / venv).symlink_to(ROOT / venv)
    # Byte-code of the unmutated tree, made once: runs write none (PYTHONDONTWRITEBYTECODE), a
    # mutant's source gets another mtime than its .pyc says, and a restored file its old one.
    subprocess.run([sys.executable, "-m", "compileall", "-q", "-j", "0", *[str(dest / d) for d in
                    ("edgeva", "agent", "control", "modules", "schemas", "bench", "tests")]], capture_output=True)


PRELOAD = ("numpy", "cv2", "msgpack", "pydantic", "paho.mqtt.client", "pynng", "hypothesis", "pytest")


def serve(work: Path) -> None:
    """A test server for one private copy: imports the heavy third-party modules once, then
    for each request (a JSON line: tests, timeout) forks a child that runs pytest on the copy
    as it is on disk now and answers one JSON line (outcome, output). None of the project's
    modules is imported here, so each child imports them, mutated or not, from disk."""
    import importlib

    sys.dont_write_bytecode = True
    # cosmic-ray's ExceptionReplacer writes `except CosmicRayTestingException:`; its own workers
    # define the name, and so must ours, or evaluating that clause raises NameError instead of
    # letting the original exception pass the handler by
    import builtins

    builtins.CosmicRayTestingException = type("CosmicRayTestingException", (Exception,), {})  # type: ignore[attr-defined]
    for mod in PRELOAD:
        try:
            importlib.import_module(mod)
        except Exception:  # noqa: BLE001 - a missing optional module: the child imports it
            pass
    os.chdir(work)
    sys.path.insert(0, str(work))
    out_path = work / ".mutant-run.log"
    for line in sys.stdin:
        req = json.loads(line)
        t0 = time.monotonic()
        shm_before = set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()
        pid = os.fork()
        if pid == 0:  # the child: a new session, so that a timeout kills what it started too
            os.setsid()
            fd = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            rc = 3
            try:
                import pytest

                rc = int(pytest.main(["-x", "-q", "-p", "no:cacheprovider", *req["tests"]]))
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(rc)
        outcome = None
        while outcome is None:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                code = os.waitstatus_to_exitcode(status)
                outcome = "survived" if code == 0 else "killed"
            elif time.monotonic() - t0 > req["timeout"]:
                outcome = "timeout"
            else:
                time.sleep(0.02)
        try:  # whatever the tests left behind in their session (agents, brokers, modules)
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if outcome == "timeout":
            os.waitpid(pid, 0)
        # Segments a killed run left behind: the tests name theirs after their process (the
        # child); a mutant that broke the ring's cleanup must not fill /dev/shm.
        if shm_before or os.path.isdir("/dev/shm"):
            for name in set(os.listdir("/dev/shm")) - shm_before:
                if str(pid) in name:
                    try:
                        os.unlink(os.path.join("/dev/shm", name))
                    except OSError:
                        pass
        text = out_path.read_text(errors="replace") if out_path.exists() else ""
        if outcome == "killed":
            note = next((ln.strip() for ln in text.splitlines() if ln.startswith("E ")), "")
            note = note or next((ln.strip() for ln in text.splitlines() if "FAILED" in ln or "rror" in ln), "")
            note = note[:160]
        else:
            note = text[-300:] if outcome == "survived" else ""
        print(json.dumps({"outcome": outcome, "note": note}), flush=True)


class Server:
    """The orchestrator's end of one ``serve`` process."""

    def __init__(self, work: Path) -> None:
        self.work = work
        env = dict(os.environ, PYTHONPATH=str(work), PYTHONDONTWRITEBYTECODE="1")
        self.proc = subprocess.Popen([str(ROOT / ".venv/bin/python"), str(Path(__file__).resolve()),
                                      "--serve", str(work)], cwd=work, env=env, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)

    def run(self, tests: list[str], timeout: float) -> tuple[str, str]:
        """Run the tests on the copy as it is now; (outcome, note)."""
        self.proc.stdin.write(json.dumps({"tests": tests, "timeout": timeout}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the test server of {self.work} died")
        res = json.loads(line)
        return res["outcome"], res["note"]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(30)


def mutate(work: Path, m: Mutant) -> tuple[str, str] | None:
    """Write mutant m into work's copy of its file; (original, diff) or None when impossible."""
    import difflib

    import cosmic_ray.plugins
    from cosmic_ray.mutating import mutate_code

    p = work / m.file
    orig = p.read_text()
    op = cosmic_ray.plugins.get_operator(m.operator)()
    new = mutate_code(orig, op, m.occurrence)
    if new is None:
        return None
    st = p.stat()
    p.write_text(new)
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 7_000_000_000))  # never the .pyc's mtime
    diff = "".join(difflib.unified_diff(orig.splitlines(True), new.splitlines(True), n=0))
    return orig, "\n".join(ln for ln in diff.splitlines() if ln[:1] in "+-" and ln[:3] not in ("+++", "---"))


def changed_lines(base: str, path: str) -> set[int]:
    """Lines of path (in the working tree) that differ from base."""
    diff = subprocess.run(["git", "diff", "-U0", base, "--", path], cwd=ROOT, capture_output=True,
                          text=True).stdout
    lines: set[int] = set()
    for mt in re.finditer(r"^@@ -\S+ \+(\d+)(?:,(\d+))? @@", diff, re.M):
        start, count = int(mt.group(1)), int(mt.group(2) or 1)
        lines.update(range(start, start + count))
    return lines


def marker_base() -> str:
    """The commit the last mutation check covered: the marker's commit if this history has it,
    else the last commit that changed the marker (a fresh clone has no pre-submission ref)."""
    if MARKER.exists():
        commit = tomllib.loads(MARKER.read_text()).get("commit", "")
        if commit and subprocess.run(["git", "merge-base", "--is-ancestor", commit, "HEAD"],
                                     cwd=ROOT, capture_output=True).returncode == 0:
            return commit
    last = subprocess.run(["git", "log", "-1", "--format=%H", "--", str(MARKER.relative_to(ROOT))],
                          cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return last or "HEAD"


def changed_files(base: str, files: dict[str, FileConf]) -> tuple[list[str], set[str]]:
    """Mapped files that differ between base and the working tree, or whose tests do; and of
    those, the ones whose tests changed (every survivor of those counts, not only changed lines)."""
    names = set(subprocess.run(["git", "diff", "--name-only", base, "--"], cwd=ROOT, capture_output=True,
                               text=True, check=True).stdout.split())
    names |= set(subprocess.run(["git", "ls-files", "-o", "--exclude-standard"], cwd=ROOT,
                                capture_output=True, text=True).stdout.split())
    tests_changed = {f for f, fc in files.items() if any(t.split("::")[0] in names for t in fc.tests)}
    return [f for f in files if f in names or f in tests_changed], tests_changed


def _sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _last_run(path: str) -> dict[str, Mutant]:
    """The mutants of the last stored run of ``path`` if the file has not changed since (a run
    stored without a hash counts as of the same file)."""
    p = OUT / (path.replace("/", "__") + ".json")
    if not p.exists():
        return {}
    data = json.loads(p.read_text())
    if data.get("sha", _sha(ROOT / path)) != _sha(ROOT / path):
        return {}
    return {m["key"]: Mutant(**m) for m in data["mutants"]}


def run_file(fc: FileConf, settings: dict, known: dict, workers: list[Server], deadline: float,
             base: str | None, resurvey: bool = False) -> list[Mutant]:
    """Run every mutant of one file, changed lines first; stop starting new ones at deadline.
    ``resurvey``: keep the last run's kills (tests only grow) and run the rest again."""
    mtimes = {fc.path: (workers[0].work / fc.path).stat().st_mtime_ns}
    mutants = enumerate_mutants(ROOT, fc, settings)
    t0 = time.monotonic()
    outcome, note = workers[0].run(fc.tests, max(fc.timeout_s, 600))
    base_s = time.monotonic() - t0
    if outcome != "survived":  # the tests fail unmutated: every mutant would read as killed
        for m in mutants:
            m.outcome, m.note = "error", f"baseline: the tests fail without a mutant ({outcome}: {note[:100]})"
        print(f"   BASELINE FAILED: {note}", flush=True)
        return mutants
    timeout = max(fc.timeout_s, 3 * base_s + 10)
    print(f"   baseline {base_s:.1f} s, {len(mutants)} mutants, timeout {timeout:.0f} s", flush=True)
    if base is not None:
        cl = changed_lines(base, fc.path)
        for m in mutants:
            m.changed = m.line in cl
        mutants.sort(key=lambda m: not m.changed)
    todo = []
    last = _last_run(fc.path) if resurvey else {}
    kept = {k: m for k, m in last.items() if m.outcome in ("killed", "timeout")}
    for m in mutants:
        if m.key in known:
            m.outcome, m.note = known[m.key]
        elif m.key in kept:
            m.outcome, m.note, m.diff, m.seconds = "killed", "(last run) " + kept[m.key].note, kept[m.key].diff, 0.0
        else:
            todo.append(m)
    if kept:
        print(f"   resurvey: {len(mutants) - len(todo)} kept from the last run, {len(todo)} to run", flush=True)
    lock = threading.Lock()
    tests = fc.tests
    done, t_start = [0], time.monotonic()
    rules = load_rules()

    def worker(server: Server) -> None:
        work = server.work
        while True:
            with lock:
                if not todo or time.monotonic() > deadline or STOP.is_set():
                    return
                m = todo.pop(0)
            t0 = time.monotonic()
            res = mutate(work, m)
            if res is None:
                m.outcome = "error"
                m.note = "cosmic-ray made no mutation"
                continue
            orig, m.diff = res
            path = work / m.file
            why = equivalent_by_rule(m, rules)
            if why is not None:  # no need to run it
                path.write_text(orig)
                os.utime(path, ns=(mtimes[m.file], mtimes[m.file]))
                m.outcome, m.note = "equivalent", why
                continue
            try:
                m.outcome, m.note = server.run(tests, timeout)
            finally:
                path.write_text(orig)
                os.utime(path, ns=(mtimes[m.file], mtimes[m.file]))
            m.seconds = round(time.monotonic() - t0, 1)
            with lock:
                done[0] += 1
                if done[0] % 25 == 0:
                    print(f"   {done[0]}/{len(mutants)} run, {time.monotonic() - t_start:.0f} s", flush=True)
            if m.outcome == "survived":
                print(f"  SURVIVED {m.key}\n    {m.diff}", flush=True)

    threads = [threading.Thread(target=worker, args=(s,)) for s in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for m in todo:
        prev = last.get(m.key)
        if prev is not None and prev.outcome == "survived":  # not re-run: its last outcome stands
            m.outcome, m.note, m.diff = "survived", "(last run; not re-run) " + prev.note, prev.diff
            continue
        m.outcome = "skipped"
        m.note = "stopped" if STOP.is_set() else "time budget spent"
    return mutants


def summary(path: str, mutants: list[Mutant]) -> dict:
    """Counts of one file's mutants and its kill rate (equivalents left out of the rate)."""
    c: dict[str, int] = {}
    for m in mutants:
        c[m.outcome] = c.get(m.outcome, 0) + 1
    killed = c.get("killed", 0) + c.get("timeout", 0)
    live = c.get("survived", 0) + c.get("open", 0)
    rate = 100.0 * killed / (killed + live) if killed + live else 100.0
    return {"file": path, "total": len(mutants), "killed": killed, "survived": c.get("survived", 0),
            "open": c.get("open", 0), "equivalent": c.get("equivalent", 0),
            "skipped": c.get("skipped", 0), "error": c.get("error", 0), "rate": round(rate, 1)}


def print_table(rows: list[dict]) -> None:
    """The per-file table of a run or of --report."""
    print(f"{'file':34} {'mutants':>7} {'killed':>6} {'new':>4} {'open':>4} {'equiv':>5} "
          f"{'notrun':>6} {'rate':>6}")
    for r in rows:
        print(f"{r['file']:34} {r['total']:7} {r['killed']:6} {r['survived']:4} {r['open']:4} "
              f"{r['equivalent']:5} {r['skipped'] + r['error']:6} {r['rate']:5.1f}%")
    if len(rows) > 1:
        k = sum(r["killed"] for r in rows)
        live = sum(r["survived"] + r["open"] for r in rows)
        print(f"{'all':34} {sum(r['total'] for r in rows):7} {k:6} {sum(r['survived'] for r in rows):4} "
              f"{sum(r['open'] for r in rows):4} {sum(r['equivalent'] for r in rows):5} "
              f"{sum(r['skipped'] + r['error'] for r in rows):6} {100.0 * k / max(1, k + live):5.1f}%")


def record_open(survivors: list[Mutant]) -> None:
    """Append survivors to their file's equivalents/<file>.toml as [[open]]: not yet killed, to
    be triaged."""
    by_file: dict[str, list[Mutant]] = {}
    for m in survivors:
        by_file.setdefault(m.file, []).append(m)
    for path, ms in by_file.items():
        lines = ["", f"# --- open survivors recorded {time.strftime('%Y-%m-%d %H:%M')} (tools/mutants.py --record-open) ---"]
        for m in ms:
            change = " / ".join(ln.strip() for ln in m.diff.splitlines() if ln.startswith("+"))[:200]
            lines += ["[[open]]", f"key = {json.dumps(m.key)}",
                      f"reason = {json.dumps('not yet killed (open): ' + change)}"]
        dest = equivalents_file(path)
        dest.parent.mkdir(exist_ok=True)
        with open(dest, "a") as f:
            f.write("\n".join(lines) + "\n")
        print(f"recorded {len(ms)} open survivors in {dest.relative_to(ROOT)}")


def report(record: bool = False) -> int:
    """Add up the last results of every file (out/mutants/*.json); with ``record``, list the
    new survivors as open in equivalents.toml."""
    rows, new = [], []
    known, rules = load_known(), load_rules()
    settings, files = load_map()
    for p in sorted(OUT.glob("*.json")):
        data = json.loads(p.read_text())
        if data["file"] not in files:
            continue
        # mutants the map no longer makes (a skip rule added since the run) are left out
        current = {m.key for m in enumerate_mutants(ROOT, files[data["file"]], settings)}
        ms = [Mutant(**m) for m in data["mutants"] if m["key"] in current]
        for m in ms:  # a survivor since listed is reported as listed
            if m.outcome == "survived" and m.key in known:
                m.outcome = known[m.key][0]
            elif m.outcome == "survived" and equivalent_by_rule(m, rules):
                m.outcome = "equivalent"
        rows.append(summary(data["file"], ms))
        new += [m for m in ms if m.outcome == "survived"]
    print_table(rows)
    for m in new:
        print(f"NEW SURVIVOR {m.key}\n    {m.diff}")
    if record:
        record_open(new)
        return 0
    return 1 if new else 0


def main() -> int:
    """Parse the command line, run the chosen files' mutants, print and store the results."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="*", help="mapped files to mutate (default: all)")
    ap.add_argument("--changed", nargs="?", const="", default=None, metavar="BASE",
                    help="only files changed since BASE (default: the marker in checked.toml)")
    ap.add_argument("--jobs", "-j", type=int, default=1, help="mutants tested at once (private copies)")
    ap.add_argument("--budget-s", type=float, default=0, help="start no mutant after this many seconds")
    ap.add_argument("--resurvey", action="store_true",
                    help="keep the last run's killed mutants of an unchanged file, run the others again")
    ap.add_argument("--report", action="store_true", help="print the stored results, run nothing")
    ap.add_argument("--record-open", action="store_true",
                    help="with --report: list its new survivors as open (not yet killed) in equivalents.toml")
    ap.add_argument("--list", action="store_true", help="print the files' mutants and keys, run nothing")
    ap.add_argument("--mark", action="store_true", help="write HEAD into tools/mutants/checked.toml")
    ap.add_argument("--serve", metavar="COPY", help=argparse.SUPPRESS)  # internal: a test server
    a = ap.parse_args()
    if a.serve:
        serve(Path(a.serve))
        return 0
    settings, files = load_map()
    if a.report:
        return report(record=a.record_open)
    if a.mark:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
        MARKER.write_text("# The last commit whose mapped files were mutation-checked "
                          "(tools/mutants.py --mark);\n# CI's --changed mode mutates what changed "
                          f"since.\ncommit = \"{head}\"\n")
        print(f"marked {head}")
        return 0
    base, tests_changed = None, set()
    if a.changed is not None:
        base = a.changed or marker_base()
        chosen, tests_changed = changed_files(base, files)
        if a.files:  # `--changed BASE FILE...`: only those of the changed files
            chosen = [f for f in chosen if f in a.files]
        print(f"--changed: base {base[:12]}, mapped files changed (or their tests): {', '.join(chosen) or 'none'}")
    else:
        unknown = [f for f in a.files if f not in files]
        if unknown:
            print(f"not in tools/mutants/map.toml: {', '.join(unknown)}", file=sys.stderr)
            return 2
        chosen = a.files or list(files)
    if a.list:
        known = load_known()
        for f in chosen:
            for m in enumerate_mutants(ROOT, files[f], settings):
                print(f"{m.line:5} {known.get(m.key, ('', ''))[0]:10} {m.key}")
        return 0
    if not chosen:
        print("mutants: nothing to mutate")
        return 0
    OUT.mkdir(parents=True, exist_ok=True)
    # A stop finishes the mutants under test, stores the results and removes the copies.
    signal.signal(signal.SIGTERM, lambda *_: STOP.set())
    signal.signal(signal.SIGINT, lambda *_: STOP.set())
    known = load_known()
    deadline = time.monotonic() + (a.budget_s or 1e9)
    tmp = Path(tempfile.mkdtemp(prefix="edgeva-mutants-"))
    rows, new, untriaged = [], [], []
    workers: list[Server] = []
    try:
        workers = []
        for i in range(max(1, a.jobs)):
            w = tmp / f"w{i}"
            copy_tree(w)
            workers.append(Server(w))
        for f in chosen:
            if STOP.is_set():
                break
            t0 = time.monotonic()
            print(f"== {f}: tests {' '.join(files[f].tests)}", flush=True)
            ms = run_file(files[f], settings, known, workers, deadline, base, a.resurvey)
            row = summary(f, ms)
            row["seconds"] = round(time.monotonic() - t0)
            rows.append(row)
            for m in ms:
                if m.outcome != "survived":
                    continue
                # --changed: a survivor counts when the change made it (a changed line, or the
                # file's tests changed); older untriaged ones are reported apart
                if base is None or m.changed or f in tests_changed:
                    new.append(m)
                else:
                    untriaged.append(m)
            (OUT / (f.replace("/", "__") + ".json")).write_text(json.dumps(
                {"file": f, "sha": _sha(ROOT / f), "summary": row, "mutants": [asdict(m) for m in ms]}, indent=1))
            print(f"   {row}", flush=True)
    finally:
        for s in workers:
            s.close()
        shutil.rmtree(tmp, ignore_errors=True)
    print_table(rows)
    notrun = sum(r["skipped"] for r in rows)
    if notrun:
        print(f"{notrun} mutants not run: the time budget was spent (they count neither way)")
    for m in untriaged:
        print(f"untriaged survivor (on a line this change did not touch) {m.key}\n    {m.diff}")
    for m in new:
        print(f"NEW SURVIVOR {m.key}\n    {m.diff}")
    print(f"mutants: {sum(r['killed'] for r in rows)} killed, {len(new)} new survivors"
          + (f", {len(untriaged)} untriaged on unchanged lines" if untriaged else ""))
    if new:
        print("a new survivor: kill it with a test, or list it in tools/mutants/equivalents/<file>.toml "
              "(equivalent, with the reason)")
    return 1 if new else 0


if __name__ == "__main__":
    sys.exit(main())
