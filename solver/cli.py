"""The ``tme`` command line: run, validate, schema, verify, compare, sensitivity, cohort, examples.

Run in parallel as ``mpirun -n N tme run CONFIG``. Errors a user can cause (a bad argument,
scenario, mesh or output directory, a full disk, a run stopped by its NaN guard, not enough
memory) print one line, once, and exit with status 2; an interrupt prints one line and exits with
130. An unexpected exception on any rank aborts the whole job (as ``python -m mpi4py`` does)
instead of leaving the other ranks waiting forever.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import traceback
from pathlib import Path

from . import __version__

from . import log
from .config.spec import ScenarioError

def _rank() -> int:
    from mpi4py import MPI

    return MPI.COMM_WORLD.rank


def _say(line: str) -> None:
    """One line on stderr from rank 0 (every rank parses the same arguments)."""
    if _rank() == 0:
        print(line, file=sys.stderr, flush=True)


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: the usage block is for --help, not for every typo."""

    def error(self, message):
        _say(f"tme: error: {message} (see '{self.prog} --help')")
        sys.exit(2)


def _size(text: str) -> int:
    """'40 GB', '512 MiB', '2e9 B' -> bytes (argparse type of --max-memory)."""
    from .resources import parse_bytes

    try:
        return parse_bytes(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="tme", description="Tumour microenvironment under chemotherapy: "
                "drug transport, clonal resistance and treatment strategies (FEniCSx).")
    p.add_argument("--version", action="version", version=f"tme {__version__}")
    # accepted before or after the command (tme --quiet run ... or tme run ... --quiet)
    common = _Parser(add_help=False)
    common.add_argument("--log-all-ranks", action="store_true", default=argparse.SUPPRESS,
                        help="every MPI rank logs, not only rank 0")
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                        help="only warnings and errors")
    for action in common._actions:
        p._add_action(action)
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    def add(name, **kw):
        return sub.add_parser(name, parents=[common], **kw)

    memory = dict(type=_size, default=None, metavar="SIZE",
                  help="memory the set-up may plan for, e.g. '40 GB' (default: the memory "
                       "available on the job's machines at start); a mesh estimated to need more "
                       "is refused before it is built")
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
    r.add_argument("--max-memory", **memory)

    v = add("validate", help="the whole set-up of a run (mesh, fields, every check), without running it")
    v.add_argument("config", type=Path)
    v.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE")
    v.add_argument("--quiet-ok", action="store_true", help="print nothing when valid")
    v.add_argument("--max-memory", **memory)

    add("schema", help="print the JSON schema of scenario files")

    c = add("compare", help="run several scenarios (or a sweep) and compare them")
    c.add_argument("configs", type=Path, nargs="+", metavar="CONFIG")
    c.add_argument("--sweep", action="append", default=[], metavar="KEY.PATH=V1,V2,...",
                   help="one run per value (repeatable: the runs are the product)")
    c.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override a value in every run (repeatable)")
    c.add_argument("--out", type=Path, required=True, help="output directory")
    c.add_argument("--overwrite", action="store_true")
    c.add_argument("--max-memory", **memory)

    def study_options(q):
        q.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                       help="override a value in every run (repeatable)")
        q.add_argument("--out", type=Path, required=True, help="output directory (the same command on "
                       "the same --out continues a stopped study)")
        q.add_argument("--overwrite", action="store_true", help="start afresh: remove the study's "
                       "files in --out first")
        q.add_argument("--ranks-per-run", type=int, default=1, metavar="N",
                       help="MPI ranks of each run (must divide the job's ranks; default 1: "
                            "as many runs at once as ranks)")
        q.add_argument("--max-memory", **memory)

    s = add("sensitivity", help="global sensitivity of an outcome to parameters (Sobol' indices "
            "or Morris screening)")
    s.add_argument("config", type=Path, metavar="CONFIG")
    s.add_argument("--vary", action="append", default=[], metavar="KEY=LOW..HIGH", required=True,
                   help="a parameter and its range with units, e.g. "
                        "drugs.doxorubicin.emax='0.05 1/hour..0.5 1/hour' (repeatable)")
    s.add_argument("--log", action="append", default=[], metavar="KEY",
                   help="sample this varied key uniformly in log (repeatable)")
    s.add_argument("--samples", type=int, required=True, metavar="N",
                   help="Sobol': base samples, a power of 2 (N·(d+2) runs); Morris: trajectories "
                        "(N·(d+1) runs)")
    s.add_argument("--output", required=True, metavar="METRIC",
                   help="time_to_progression, nadir, final_burden or final_resistant_fraction")
    s.add_argument("--method", choices=("sobol", "morris"), default="sobol")
    s.add_argument("--seed", type=int, default=0, help="seed of the design (default 0)")
    study_options(s)

    h = add("cohort", help="a virtual cohort: sampled patients under one or more strategies "
            "(Kaplan-Meier, response rates, hazard ratios)")
    h.add_argument("config", type=Path, metavar="CONFIG")
    h.add_argument("--sample", action="append", default=[], metavar="KEY=DISTRIBUTION",
                   help="a patient parameter: lognormal(median, cv), uniform(low, high) or "
                        "normal(mean, sd), with units, e.g. "
                        "clones.clones.sensitive.growth='lognormal(0.5 1/day, 0.3)' (repeatable)")
    h.add_argument("--n", type=int, metavar="N", help="number of patients (with --sample)")
    h.add_argument("--patients", type=Path, metavar="FILE.csv",
                   help="patients from a CSV file: one row per patient, one column per key path "
                        "('key [unit]' with bare numbers, or 'key' with units in the cells)")
    h.add_argument("--strategy", action="append", default=[], metavar="NAME=FILE_OR_OVERRIDE",
                   help="an arm: NAME=fragment.yaml, NAME=key.path=value (repeat NAME for more "
                        "overrides) or NAME= (the scenario as it is); the first is the reference of the hazard ratios")
    h.add_argument("--seed", type=int, help="seed of the sampled patients (needed with --sample)")
    study_options(h)
    t = add("fit", help="fit scenario values to a patient's measurements (weighted least squares, "
            "Laplace uncertainty)")
    t.add_argument("config", type=Path, metavar="CONFIG")
    t.add_argument("--data", type=Path, required=True, metavar="MEASUREMENTS.csv",
                   help="the measurements: 'time [day]' and any of 'burden [mm^3]' (or [mm^2], "
                        "[cell]), 'resistant_fraction', 'fraction_<clone>[@<region>]', each with "
                        "an optional '<column>_sd' (docs/api.md, Fitting)")
    t.add_argument("--fit", dest="params", action="append", default=[], metavar="KEY=LOW..HIGH",
                   help="a scenario key to fit and its bounds with their unit, e.g. "
                        "--fit 'drugs.chemo.emax=0.005 1/hour..0.1 1/hour' (repeatable)")
    t.add_argument("--log", dest="log_keys", action="append", default=[], metavar="KEY",
                   help="fit this key on a log scale (repeatable)")
    t.add_argument("--start", action="append", default=[], metavar="KEY=VALUE",
                   help="start from this value instead of the scenario's (repeatable)")
    t.add_argument("--noise", action="append", default=[], metavar="[COLUMN=]MODEL",
                   help="noise of the rows without an sd: 'lognormal:cv=0.1' (burden), "
                        "'resistant_fraction=normal:sd=0.05', 'fractions=normal:sd=0.05'")
    t.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override a scenario value first (repeatable)")
    t.add_argument("--multistart", type=int, default=0, metavar="K",
                   help="K more starts from a scrambled Sobol design in the bounds; the best is kept")
    t.add_argument("--seed", type=int, default=0, help="seed of the Sobol design (default 0)")
    t.add_argument("--ranks-per-run", type=int, default=1, metavar="R",
                   help="ranks of each forward run; the job's ranks / R runs go at once (default 1)")
    t.add_argument("--fd-step", type=float, default=None, metavar="H",
                   help="forward-difference step as a fraction of each scaled range (default "
                        "sqrt of the runs' noise level: time.tolerance, else the linear tolerance)")
    t.add_argument("--time-tolerance", type=float, default=None, metavar="TOL",
                   help="time.tolerance of the fit's runs (tighter than the scenario's: less noise)")
    t.add_argument("--max-evaluations", type=int, default=100, metavar="N",
                   help="evaluations of the residuals per start (default 100)")
    t.add_argument("--out", type=Path, required=True, help="output directory")
    t.add_argument("--overwrite", action="store_true", help="replace the fit's files in --out")

    w = add("forecast", help="forecast strategies from a fit: parameter sets drawn from its "
            "uncertainty, each run under each strategy; median and 90 %% bands")
    w.add_argument("fitdir", type=Path, metavar="FITDIR", help="the --out of a tme fit")
    w.add_argument("--strategy", dest="strategies", action="append", default=[],
                   metavar="NAME=SPEC", help="a strategy: NAME=FILE.yaml (a scenario fragment "
                   "merged into the fitted scenario), NAME=key.path=value (an override), or NAME= "
                   "(the fitted scenario); repeat a NAME to add changes (repeatable)")
    w.add_argument("--samples", type=int, default=100, metavar="N",
                   help="parameter sets drawn from the fit (default 100)")
    w.add_argument("--seed", type=int, default=0, help="seed of the draws (default 0)")
    w.add_argument("--end", default=None, metavar="TIME", help="time.end of every run, e.g. '365 day'")
    w.add_argument("--ranks-per-run", type=int, default=1, metavar="R")
    w.add_argument("--out", type=Path, required=True, help="output directory (the same command "
                   "on the same --out continues a stopped forecast)")
    w.add_argument("--overwrite", action="store_true", help="start afresh in --out (the forecast's "
                   "files only)")

    f = add("verify", help="run the verification cases against closed forms")
    f.add_argument("--case", action="append", default=[], help="run only these cases (repeatable)")

    e = add("examples", help="the example scenarios shipped with tme: list them, print the path "
            "of one, or copy them (with their meshes) into a directory")
    e.add_argument("action", nargs="?", choices=("list", "path", "copy"), default="list",
                   help="list (default): their names; path NAME: the file of one; copy DIR: "
                        "DIR/configs and DIR/meshes, runnable from anywhere")
    e.add_argument("target", nargs="?", metavar="NAME|DIR")
    return p


def main(argv: list[str] | None = None) -> int:
    """The `tme` command: ``argv`` (default: the process's own arguments, as the `tme` command
    and ``python -m tme`` call it); returns the exit status."""
    args = _parser().parse_args(argv)
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    all_ranks, quiet = getattr(args, "log_all_ranks", False), getattr(args, "quiet", False)
    logger = log.setup(comm.rank, comm.size, all_ranks, level=30 if quiet else 20)
    if args.command is None:
        _say("tme: error: a command is needed: run, validate, compare, fit, forecast, sensitivity, "
             "cohort, schema, verify or examples (see 'tme --help')")
        return 2
    try:
        return _dispatch(args, comm, program=argv is None)
    except (ScenarioError, FloatingPointError) as exc:
        # raised on every rank alike: a scenario error is agreed across ranks where it is found,
        # and so is the run's NaN/negative guard (which names field, time and place)
        if comm.rank == 0:
            print(f"tme: error: {exc}", file=sys.stderr, flush=True)
        return 2
    except ImportError as exc:
        # DOLFINx missing or of a release tme does not run on (tme.compat): the same on every rank
        if exc.name != "dolfinx":
            raise
        if comm.rank == 0:
            print(f"tme: error: {exc}", file=sys.stderr, flush=True)
        return 2
    except (OSError, MemoryError) as exc:
        # a full disk, an unwritable file, memory exhausted: may strike one rank only, unless the
        # writer already raised it on every rank
        from .resources import describe_failure

        line = f"tme: error: {describe_failure(exc, getattr(args, 'out', None))}"
        if getattr(exc, "agreed", False):
            if comm.rank == 0:
                print(line, file=sys.stderr, flush=True)
            return 2
        return log.fatal(line, 2)
    except KeyboardInterrupt:
        return log.fatal("tme: interrupted; the files written so far are readable up to the last "
                            "completed step", 130)
    except Exception:
        if comm.size > 1:
            # one rank failing must not leave the others blocked in a collective
            sys.stderr.write(f"tme: rank {comm.rank} failed:\n{traceback.format_exc()}")
            sys.stderr.flush()
            comm.Abort(1)
        logger.debug("unexpected error", exc_info=True)
        raise


def _study(args, comm) -> None:
    """Run the study command of ``args`` (compare, sensitivity, cohort, fit, forecast)."""
    if args.command == "compare":
        from .studies.compare import compare

        compare(args.configs, args.out, comm, sweeps=args.sweep, overrides=args.overrides,
                overwrite=args.overwrite, max_memory=args.max_memory)
    elif args.command == "sensitivity":
        from .studies.sensitivity import study

        study(args.config, args.vary, args.samples, args.output, comm, method=args.method,
              logs=args.log, seed=args.seed, overrides=args.overrides, out=args.out,
              overwrite=args.overwrite, ranks_per_run=args.ranks_per_run,
              max_memory=args.max_memory)
    elif args.command == "cohort":
        from .studies.cohort import study

        study(args.config, comm, samples=args.sample, n=args.n, patients=args.patients,
              strategies=args.strategy, seed=args.seed, overrides=args.overrides,
              out=args.out, overwrite=args.overwrite, ranks_per_run=args.ranks_per_run,
              max_memory=args.max_memory)
    elif args.command == "fit":
        from .studies.fit import fit, parse_assignments

        fit(args.config, args.data, args.params, log=args.log_keys, noise=args.noise,
            start=parse_assignments(args.start, "--start"),
            overrides=args.overrides, out=args.out, comm=comm, ranks_per_run=args.ranks_per_run,
            multistart=args.multistart, seed=args.seed, fd_step=args.fd_step,
            time_tolerance=args.time_tolerance, max_evaluations=args.max_evaluations,
            overwrite=args.overwrite)
    else:
        from .studies.forecast import forecast

        forecast(args.fitdir, args.strategies, args.out, comm, samples=args.samples, seed=args.seed,
                 end=args.end, ranks_per_run=args.ranks_per_run, overwrite=args.overwrite)


def _dispatch(args, comm, program: bool = False) -> int:
    """Run the command of ``args``; ``program``: tme is the process (not a call of
    :func:`main` from Python), see :func:`_settled`."""
    from .config import scenario as sc

    if args.command == "schema":
        if comm.rank == 0:
            print(json.dumps(sc.json_schema(), indent=2))
        return 0
    if args.command == "validate":
        from .problem import Problem

        _settled(program)
        scen = sc.load(args.config, args.overrides)
        # the set-up of tme run itself, without an output directory: validate passing means
        # run starts
        model = Problem(scen, comm, max_memory=args.max_memory).initialise().model
        if comm.rank == 0 and not args.quiet_ok:
            print(sc.resolved_yaml(scen), end="")
        log.get().info(f"{model.describe()}; valid: 'tme run' passes every check of its set-up")
        return 0
    if args.command == "examples":
        return _examples(args, comm)
    if args.command == "verify":
        from .studies.verify import main as verify_main

        return verify_main(comm, cases=args.case)
    if args.command in ("compare", "sensitivity", "cohort", "fit", "forecast"):
        from .studies.batch import Stopped

        try:
            _study(args, comm)
        except Stopped as exc:   # a study stopped by a signal: finished runs kept, one line
            if comm.rank == 0:
                print(str(exc), file=sys.stderr, flush=True)
            return 128 + exc.signal
        return 0
    if args.command == "run":
        from .problem import run

        _settled(program)
        if args.resume is None:
            if args.config is None:
                raise ScenarioError("tme run: give a scenario file, or --resume DIR")
            scen = sc.load(args.config, args.overrides)
            summary = run(scen, args.out or Path("results") / scen.name, comm=comm, overwrite=args.overwrite,
                          max_memory=args.max_memory, inputs=_inputs(args.config, scen))
        else:
            if args.out is not None and args.out.resolve() != args.resume.resolve():
                raise ScenarioError(f"--out {args.out} with --resume {args.resume}: a resumed run "
                                    f"writes into its own directory; leave out --out")
            scen = None if args.config is None else sc.load(args.config, args.overrides)
            summary = run(scen, args.resume, comm=comm, resume=True, overrides=args.overrides,
                          with_changes=args.resume_with_changes, max_memory=args.max_memory)
        # stopped by a signal: 128 + its number, as a shell reports a process it killed
        return 128 + summary["signal"] if "signal" in summary else 0
    raise AssertionError(args.command)


def _settled(program: bool) -> None:
    """When tme is the process (``program``): what is loaded by now (the modules a run needs:
    DOLFINx, UFL, PETSc, the scenario's pydantic models) lives until the process ends, so it is
    moved out of the garbage collector's sight (``gc.freeze``), and neither the collections
    during the run nor the last ones at exit walk it again (those at exit took 0.2 s of every
    `tme run` here). What the run builds afterwards (meshes, forms, files) is collected as
    before. A call of :func:`main` from Python leaves the caller's collector as it is."""
    if program:
        gc.freeze()


def _examples(args, comm) -> int:
    from . import examples

    if args.action == "list":
        if args.target is not None:
            raise ScenarioError(f"tme examples list: takes no argument (got {args.target!r})")
        if comm.rank == 0:
            for name in examples.names():
                print(name)
        return 0
    if args.target is None:
        what = "NAME (see 'tme examples')" if args.action == "path" else "the directory DIR to copy into"
        raise ScenarioError(f"tme examples {args.action}: give {what}")
    if args.action == "path":
        found = examples.path(args.target)
        if comm.rank == 0:
            print(found)
        return 0
    err = None
    if comm.rank == 0:
        try:
            dest = examples.copy(args.target)
        except ScenarioError as exc:
            err = str(exc)
        else:
            log.get().info(f"copied the example scenarios to {dest / 'configs'} and their meshes to "
                           f"{dest / 'meshes'}; run one with: tme run {dest / 'configs' / 'default.yaml'}")
    err = comm.bcast(err, root=0)
    if err:
        raise ScenarioError(err)
    return 0


def _inputs(config: Path, scen) -> list[Path]:
    """The files a run reads: an output directory must not hold them where a run writes."""
    paths = [Path(config)]
    mesh_path = getattr(scen.mesh, "path", None)
    if mesh_path is not None:
        paths.append(Path(mesh_path))
    return paths
