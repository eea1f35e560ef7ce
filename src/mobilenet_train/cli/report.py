"""`mobilenet-report RUN_OR_DIR ... [out=DIR] [tb=DIR] [--tensorboard]`: tables and plots of runs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..config import parse_options
from ..config.help import options_help
from ..config.schema import ReportOptions, find_field
from ..errors import UserError, fail
from ..faults import os_fault

PROG = "mobilenet-report"


def split_items(items: list[str]) -> tuple[list[str], list[str]]:
    """(paths, option items): only out=/tb= are options; run dirs such as alpha=0.5,res=160 stay paths."""
    options = [i for i in items if find_field(ReportOptions, i.partition("=")[0]) is not None and "=" in i]
    return [i for i in items if i not in options], options


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog=PROG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Tables and accuracy-vs-cost plots (paper Tables 6/7, Figures 4/5) for training runs and "
                    "eval.json results, beside the paper's and TF-slim's published numbers; multi-label, embedding "
                    "and detection runs in their own tables beside the paper's Tables 12, 14 and 13.",
        epilog="examples: mobilenet-report multirun/paper_grid/2025-01-01_12-00-00 out=report; "
               "mobilenet-report outputs multirun out=report --tensorboard; mobilenet-report outputs tb=tb_sweep\n"
               + options_help(PROG),
    )
    parser.add_argument("items", nargs="+", metavar="RUN_OR_DIR",
                        help="run dirs, dirs holding runs (searched recursively), metrics.jsonl or eval JSON files; "
                             "plus out=DIR (default: report) and tb=DIR")
    parser.add_argument("--tensorboard", action="store_true", help="also write every run's scalars to OUT/tb")
    ns = parser.parse_args(argv)
    from ..report import attributes_table, embeddings_table, make_report, results_table

    try:
        paths, option_items = split_items(ns.items)
        opts, _ = parse_options(ReportOptions, option_items)
        for item in option_items:
            if not item.partition("=")[2]:
                raise UserError(f"'{item}' needs a directory, e.g. {item.partition('=')[0]}=report")
        if not paths:
            raise UserError("no run or directory given (e.g. mobilenet-report multirun/ out=report)")
        out = Path(opts.out)
        tb = Path(opts.tb) if opts.tb else (out / "tb" if ns.tensorboard else None)
        report = make_report(paths, out, tb)
    except UserError as e:
        fail(PROG, e)
    except OSError as e:  # one the write sites did not translate (a directory made)
        fail(PROG, os_fault(e))
    for s in report.skipped:
        print(f"{PROG}: skipped {s}", file=sys.stderr)
    tables = [results_table(report.table) if report.table else [],
              attributes_table(report.task_tables["multilabel"]) if report.task_tables["multilabel"] else [],
              embeddings_table(report.task_tables["embedding"]) if report.task_tables["embedding"] else []]
    if any(tables):
        print("\n\n".join("\n".join(t) for t in tables if t) + "\n")
    print(f"{report.count} result(s); written: " + ", ".join(str(p) for p in report.written))


if __name__ == "__main__":
    main()
