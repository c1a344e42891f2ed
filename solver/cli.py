"""The ``tme`` command line: run, validate, schema, verify, compare.

Run in parallel as ``mpirun -n N tme run CONFIG``. An unexpected exception on any rank aborts the
whole job (as ``python -m mpi4py`` does) instead of leaving the other ranks waiting forever;
errors a user can cause print one line on rank 0 and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from pathlib import Path

from . import __version__, log
from .scenario import ScenarioError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tme", description="Tumour microenvironment under chemotherapy: "
                                "drug transport, clonal resistance and treatment strategies (FEniCSx).")
    p.add_argument("--version", action="version", version=f"tme {__version__}")
    # accepted before or after the command (tme --quiet run ... or tme run ... --quiet)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--log-all-ranks", action="store_true", default=argparse.SUPPRESS,
                        help="every MPI rank logs, not only rank 0")
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                        help="only warnings and errors")
    for action in common._actions:
        p._add_action(action)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def add(name, **kw):
        return sub.add_parser(name, parents=[common], **kw)

    r = add("run", help="run a scenario, or continue a stopped one (--resume DIR)")
    r.add_argument("config", type=Path, nargs="?", help="scenario YAML file (with --resume: "
                   "default the checkpoint's scenario)")
    r.add_argument("--out", type=Path, help="output directory (default results/<scenario name>)")
    r.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override a scenario value, e.g. --set time.end='10 day' (repeatable)")
    r.add_argument("--overwrite", action="store_true", help="replace the contents of a non-empty --out")
    r.add_argument("--resume", type=Path, metavar="DIR", help="continue the run in DIR from its last "
                   "complete checkpoint, appending to its outputs")
    r.add_argument("--resume-with-changes", action="store_true", help="with --resume: accept a "
                   "scenario that differs in keys that can change mid-run (time.*, output.*)")

    v = add("validate", help="check a scenario and print its resolved form")
    v.add_argument("config", type=Path)
    v.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE")
    v.add_argument("--quiet-ok", action="store_true", help="print nothing when valid")

    add("schema", help="print the JSON schema of scenario files")

    c = add("compare", help="run several scenarios (or a sweep) and compare them")
    c.add_argument("configs", type=Path, nargs="+", metavar="CONFIG")
    c.add_argument("--sweep", action="append", default=[], metavar="KEY.PATH=V1,V2,...",
                   help="one run per value (repeatable: the runs are the product)")
    c.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override a value in every run (repeatable)")
    c.add_argument("--out", type=Path, required=True, help="output directory")
    c.add_argument("--overwrite", action="store_true")

    f = add("verify", help="run the verification cases against closed forms")
    f.add_argument("--case", action="append", default=[], help="run only these cases (repeatable)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    all_ranks, quiet = getattr(args, "log_all_ranks", False), getattr(args, "quiet", False)
    logger = log.setup(comm.rank, comm.size, all_ranks, level=30 if quiet else 20)
    if args.command is None:
        _parser().print_help()
        return 2
    try:
        return _dispatch(args, comm)
    except ScenarioError as exc:
        if comm.rank == 0:
            print(f"tme: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception:
        if comm.size > 1:
            # one rank failing must not leave the others blocked in a collective
            sys.stderr.write(f"tme: rank {comm.rank} failed:\n{traceback.format_exc()}")
            sys.stderr.flush()
            comm.Abort(1)
        logger.debug("unexpected error", exc_info=True)
        raise


def _dispatch(args, comm) -> int:
    from . import scenario as sc

    if args.command == "schema":
        if comm.rank == 0:
            print(json.dumps(sc.json_schema(), indent=2))
        return 0
    if args.command == "validate":
        scen = sc.load(args.config, args.overrides)
        if comm.rank == 0 and not args.quiet_ok:
            print(sc.resolved_yaml(scen), end="")
        return 0
    if args.command == "verify":
        from .verify import main as verify_main

        return verify_main(comm, cases=args.case)
    if args.command == "compare":
        from .compare import compare

        compare(args.configs, args.out, comm, sweeps=args.sweep, overrides=args.overrides,
                overwrite=args.overwrite)
        return 0
    if args.command == "run":
        from .problem import run

        if args.resume is None:
            if args.config is None:
                raise ScenarioError("tme run: give a scenario file, or --resume DIR")
            scen = sc.load(args.config, args.overrides)
            summary = run(scen, args.out or Path("results") / scen.name, comm=comm, overwrite=args.overwrite)
        else:
            if args.out is not None and args.out.resolve() != args.resume.resolve():
                raise ScenarioError(f"--out {args.out} with --resume {args.resume}: a resumed run "
                                    f"writes into its own directory; leave out --out")
            scen = None if args.config is None else sc.load(args.config, args.overrides)
            summary = run(scen, args.resume, comm=comm, resume=True, overrides=args.overrides,
                          with_changes=args.resume_with_changes)
        # stopped by a signal: 128 + its number, as a shell reports a process it killed
        return 128 + summary["signal"] if "signal" in summary else 0
    raise AssertionError(args.command)
