"""Bad-input probe: every top-level script on bad (and awkward-but-valid) inputs, as a new
user would run them; a table of every case and its outcome.

    python bench/bad_inputs.py                          # all cases (~10-15 min on 2 cores)
    python bench/bad_inputs.py --only 'infer-coords'    # the cases whose id or script matches
    python bench/bad_inputs.py --list                   # the cases, without running them

Each case runs a script as a subprocess on inputs built in its own folder under --out and
is classified against the error contract (exit 2 and one `error: ...` line naming the
offending file, row, column or key; no traceback; nothing half-written) or its check on
the outputs. Writes --table (default docs/bad_inputs.md) and <out>/failures.md (the
command and last stderr lines of every failing case); exits 1 if any case fails.
Cases and classification: src/bench/bad_inputs.py.
"""
import argparse
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.bench.bad_inputs import render_failures, render_table, run_bad_inputs, select, summary  # noqa: E402
from src.cli import run  # noqa: E402
from src.utils import atomic_write_text  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", metavar="REGEX", help="run only the cases whose id or script matches")
    parser.add_argument("--workers", type=int, default=2, help="cases run at once (default: 2)")
    parser.add_argument("--out", default="outputs/bench/bad_inputs", help="work folder (fixtures, one folder per case)")
    parser.add_argument("--table", help="Markdown table of the outcomes (default: docs/bad_inputs.md; with --only: "
                                        "<out>/table.md, so a partial run never replaces the full table)")
    parser.add_argument("--list", action="store_true", help="list the selected cases and exit")
    args = parser.parse_args()
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    if args.list:
        for case in select(args.only):
            print(f"{case.id:40s} {case.script:16s} {case.expect:5s} {case.desc}")
        return 0
    command = "python bench/bad_inputs.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    report = run_bad_inputs(Path(args.out), args.only, args.workers, command.strip())
    table = Path(args.table or (Path(args.out) / "table.md" if args.only else "docs/bad_inputs.md"))
    atomic_write_text(table, render_table(report))
    atomic_write_text(Path(args.out) / "failures.md", render_failures(report))
    print(summary(report))
    print(f"-> {table}; commands and stderr of the failing cases: {Path(args.out) / 'failures.md'}")
    return 1 if report.failed or report.repo_changes else 0


if __name__ == "__main__":
    run(main)
