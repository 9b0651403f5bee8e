"""Mutation testing of the modules that hold natsreg's rules, with a score per module.

    python tools/mutation.py                     # run, print the score per module
    python tools/mutation.py --check             # ... and fail below the recorded scores
    python tools/mutation.py --record            # ... and record the new scores
    python tools/mutation.py natsreg/_semver.py  # one module (or several), quicker
    python tools/mutation.py --survivors         # ... and list what no test killed

mutmut (the ``mutation`` extra) changes one thing at a time in the modules listed under
[tool.mutmut] only_mutate in pyproject.toml (a comparison flipped, a constant changed, a
statement removed, ...) and runs the fast tier (``-m "pure and not slow"``) against each
change. A mutant no test notices is a rule no test holds. The score is killed mutants over
all of them; a mutant that no fast test even reaches counts as a survivor. A line marked
``# pragma: no mutate`` is left alone: it must say why its mutants are equivalent.

The recorded scores live in tools/mutation-scores.json; ``--check`` is what CI runs.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECORDED = ROOT / "tools" / "mutation-scores.json"
MUTANTS = ROOT / "mutants"
FLOOR = 90.0  # no module may be recorded below it

# mutmut's exit codes per mutant (mutmut/stats.py): a failing test run or a timeout kills.
_KILLED = {1, 3, 24, -24, 36, 152, 255}
_SURVIVED = {0}
_NO_TESTS = {5, 33}


@dataclass(frozen=True)
class Score:
    module: str
    killed: int
    survived: int
    unreached: int
    other: int

    @property
    def total(self) -> int:
        return self.killed + self.survived + self.unreached + self.other

    @property
    def percent(self) -> float:
        return 100.0 * self.killed / self.total if self.total else 100.0


def configured_modules() -> list[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mutmut"]
    return list(config["only_mutate"])


def dotted(module: str) -> str:
    return module.removesuffix(".py").replace("/", ".")


def run_mutmut(modules: list[str], children: int) -> None:
    shutil.rmtree(MUTANTS, ignore_errors=True)  # no stale verdicts from an earlier run
    patterns = [f"{dotted(m)}.*" for m in modules]
    command = [sys.executable, "-m", "mutmut", "run", "--max-children", str(children), *patterns]
    print("$", " ".join(command[1:]), flush=True)
    started = time.monotonic()
    # mutmut's own progress line is for a terminal; a log (CI) gets one line every 30 s, and
    # what mutmut said is kept, to show if it fails.
    quiet = not sys.stdout.isatty()
    with (
        tempfile.TemporaryFile() as said,
        subprocess.Popen(command, cwd=ROOT, stdout=said if quiet else None) as run,
    ):
        while True:
            try:
                returncode = run.wait(timeout=30)
                break
            except subprocess.TimeoutExpired:
                if quiet:
                    print(f"... mutating, {time.monotonic() - started:.0f} s", flush=True)
        if returncode != 0 and quiet:
            said.seek(0)
            print(_last_lines(said.read().decode(errors="replace")), flush=True)
    if returncode != 0:
        raise SystemExit(f"mutmut failed (exit {returncode}); what it said last is above")
    print(f"mutmut ran in {time.monotonic() - started:.0f} s", flush=True)


def _last_lines(said: str, count: int = 40) -> str:
    # mutmut redraws its progress line with carriage returns, a spinner's frame first: each
    # redraw is a line here, kept once.
    lines: list[str] = []
    for line in said.replace("\r", "\n").splitlines():
        if line.strip() and not (lines and line[1:] == lines[-1][1:]):
            lines.append(line)
    return "\n".join(lines[-count:])


def scores(modules: list[str]) -> tuple[list[Score], dict[str, list[str]]]:
    results: list[Score] = []
    survivors: dict[str, list[str]] = {}
    for module in modules:
        meta = MUTANTS / f"{module}.meta"
        if not meta.exists():
            raise SystemExit(f"no mutmut results for {module}: is it under only_mutate?")
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        counted: Counter[str] = Counter()
        for name, code in codes.items():
            kind = (
                "killed"
                if code in _KILLED
                else "survived"
                if code in _SURVIVED
                else "unreached"
                if code in _NO_TESTS
                else "other"
            )
            counted[kind] += 1
            if kind != "killed":
                survivors.setdefault(module, []).append(name)
        results.append(
            Score(module, **{k: counted[k] for k in Score.__dataclass_fields__ if k != "module"})
        )
    return results, survivors


def report(results: list[Score], recorded: dict[str, float]) -> None:
    header = ("killed", "survived", "unreached", "score", "recorded")
    print(
        f"{'module':34} {header[0]:>7} {header[1]:>9} {header[2]:>10} {header[3]:>7} {header[4]:>9}"
    )
    for s in results:
        was = recorded.get(s.module)
        was_text = f"{was:.1f}%" if was is not None else "-"
        print(
            f"{s.module:34} {s.killed:7} {s.survived:9} {s.unreached:10} "
            f"{s.percent:6.1f}% {was_text:>9}"
        )
    killed = sum(s.killed for s in results)
    total = sum(s.total for s in results)
    print(f"{'all':34} {killed:7} {'':9} {'':10} {100.0 * killed / total:6.1f}%")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("modules", nargs="*", help="modules to mutate (default: only_mutate)")
    parser.add_argument("--check", action="store_true", help="fail below the recorded scores")
    parser.add_argument("--record", action="store_true", help="record the scores measured")
    parser.add_argument("--survivors", action="store_true", help="list the surviving mutants")
    parser.add_argument("--max-children", type=int, default=2, help="parallel mutants (2)")
    args = parser.parse_args()

    configured = configured_modules()
    modules = args.modules or configured
    unknown = sorted(set(modules) - set(configured))
    if unknown:
        raise SystemExit(f"not under [tool.mutmut] only_mutate in pyproject.toml: {unknown}")
    recorded: dict[str, float] = json.loads(RECORDED.read_text()) if RECORDED.exists() else {}

    run_mutmut(modules, args.max_children)
    results, survivors = scores(modules)
    report(results, recorded)
    if args.survivors:
        for module, names in survivors.items():
            print(f"\n{module}: {len(names)} not killed (`mutmut show NAME` shows one)")
            for name in names:
                print("   ", name)

    if args.check:
        fallen = [s for s in results if s.percent < recorded.get(s.module, FLOOR) - 0.05]
        for s in fallen:
            was = recorded.get(s.module, FLOOR)
            print(
                f"FAIL {s.module}: {s.percent:.1f}% < recorded {was:.1f}%;"
                " run `python tools/mutation.py --survivors` and add the tests that kill them",
                file=sys.stderr,
            )
        if fallen:
            raise SystemExit(1)
    if args.record:
        low = [s.module for s in results if s.percent < FLOOR]
        if low:
            raise SystemExit(f"not recorded: below {FLOOR}% in {low}")
        recorded.update({s.module: round(s.percent, 1) for s in results})
        RECORDED.write_text(json.dumps(dict(sorted(recorded.items())), indent=2) + "\n")
        print(f"recorded in {RECORDED.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
