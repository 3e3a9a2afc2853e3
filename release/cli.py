"""`loopline`: the user's jobs, and the models in the registry.

    loopline train [--as-of DATE]     the training flow: harvest, the DVC stages, a recorded commit, the gate, promotion
    loopline monitor [--hours H]      the monitoring flow: check the served traffic, alert, retrain
    loopline harvest                  labelled served records become a DVC-tracked batch for ingest
    loopline tune [--trials N]        hyperparameter search (tune: in params.yaml); writes tuned.yaml
    loopline cv                       cross-validation of the training settings (cv: in params.yaml)
    loopline serve [--port P]         the HTTP service over the production model, on 127.0.0.1
    loopline score INPUT OUTPUT       offline batch scoring of a CSV/Parquet file or folder (rejects and lineage beside)
    loopline deploy                   the scheduled Prefect deployments (training, monitoring, tuning)
    loopline demo [--weeks N]         the closed loop on the bike data, end to end
    loopline register                 store the pipeline's candidate as a version and print its gate verdict
    loopline promote [VERSION]        make a version (default: the candidate just built) the production model
    loopline promote V --force --reason "why"
    loopline rollback --reason "why"  production goes back to the version it replaced
    loopline list                     every version, its gate verdict, and which one is in production
    loopline show [VERSION]           a version's lineage and model card (default: production)
    loopline verify                   registry, production pointer and BentoML's store agree; repairs the store

Run from the project root. Each job is a thin launcher of its module (`python -m flows.training`, ...),
whose options it passes on: `loopline tune --help` shows the search's. The registry lives in registry/
(or $LOOPLINE_REGISTRY); tool state under .state/ unless PREFECT_HOME, BENTOML_HOME, ... say otherwise.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from loopline.errors import LooplineError
from loopline.paths import ProjectPaths
from loopline.registry import Registry


def _registry(paths: ProjectPaths) -> Registry:
    return Registry.for_project(paths.root)


def cmd_register(args: argparse.Namespace, paths: ProjectPaths) -> int:
    from release.promote import register_candidate

    version, report, created = register_candidate(paths, _registry(paths))
    print(f"{'registered' if created else 'already registered'}: {version.id}")
    print(report.summary() if report.rules else f"gate {'PASSED' if report.passed else 'FAILED'}")
    return 0


def cmd_promote(args: argparse.Namespace, paths: ProjectPaths) -> int:
    from release.promote import promote, register_candidate

    if args.force and not (args.reason and args.reason.strip()):
        raise SystemExit("loopline promote: --force needs a --reason, which is recorded with the model")
    registry = _registry(paths)
    version_id = args.version
    if version_id is None:
        version, report, _ = register_candidate(paths, registry)
        version_id = version.id
        print(f"candidate {version_id}: gate {'PASSED' if report.passed else 'FAILED'}")
    result = promote(paths, registry, version_id, force_reason=args.reason if args.force else None)
    if not result["changed"]:
        print(f"{result['version']} is already the production model")
    else:
        print(f"production is now {result['version']}" + (" (forced past a failed gate)" if result["forced"] else ""))
    return 0


def cmd_rollback(args: argparse.Namespace, paths: ProjectPaths) -> int:
    from release.promote import rollback

    old, new = rollback(paths, _registry(paths), args.reason)
    print(f"production rolled back from {old} to {new}")
    return 0


def cmd_list(args: argparse.Namespace, paths: ProjectPaths) -> int:
    registry = _registry(paths)
    production = registry.production()
    versions = registry.list()
    if not versions:
        print(f"no versions in {registry.root}")
        return 0
    print(f"{'':2}{'version':18}{'registered':27}{'gate':8}{'schema':24}headline")
    for v in versions:
        meta = v.metadata
        model = meta["metrics"]["model"]
        first = next(iter(model))
        mark = "* " if v.id == production else "  "
        print(
            f"{mark}{v.id:18}{meta['registered_at']:27}{'pass' if meta['gate']['passed'] else 'FAIL':8}"
            f"{meta['schema']:24}{first} {model[first]:.4g}"
        )
    return 0


def cmd_show(args: argparse.Namespace, paths: ProjectPaths) -> int:
    registry = _registry(paths)
    version_id = args.version or registry.production()
    if version_id is None:
        raise SystemExit("loopline show: no production model yet; name a version (see `loopline list`)")
    version = registry.get(version_id)
    if args.json:
        print(json.dumps(version.metadata, indent=2))
    else:
        print(version.file("card.md").read_text())
        events = [e for e in registry.history() if e.get("version") == version.id]
        for e in events:
            print(f"- {e['at']} {e['event']}" + (f": {e['reason']}" if e.get("reason") else ""))
    return 0


def cmd_verify(args: argparse.Namespace, paths: ProjectPaths) -> int:
    from release.store import verify_release

    report = verify_release(_registry(paths))
    for line in report.repaired:
        print(f"repaired {line}")
    for line in report.problems:
        print(f"PROBLEM {line}")
    print(
        f"{report.checked} version(s) checked: "
        + ("registry, pointer and store agree" if report.ok else f"{len(report.problems)} problem(s) left")
    )
    return 0 if report.ok else 1


JOBS = {
    "train": (
        ["-m", "flows.training"],
        "the training flow: harvest, the DVC stages, a recorded commit, the gate, promotion",
    ),
    "monitor": (["-m", "flows.monitor"], "the monitoring flow: check the served traffic, alert, retrain"),
    "harvest": (["-m", "dataprep.harvest"], "labelled served records become a DVC-tracked batch for ingest"),
    "tune": (["-m", "tuning.search"], "hyperparameter search (tune: in params.yaml); writes tuned.yaml"),
    "cv": (["-m", "tuning.crossval"], "cross-validation of the training settings (cv: in params.yaml)"),
    "serve": (
        ["-m", "bentoml", "serve", "serving.service:Predictor", "--host", "127.0.0.1"],
        "the HTTP service over the production model (BentoML; --port, default 3000)",
    ),
    "score": (
        ["-m", "serving.score"],
        "offline batch scoring of a CSV or Parquet file (or folder) with the production model",
    ),
    "deploy": (["-m", "flows.serve"], "prefect.yaml's scheduled deployments, served from this one process"),
    "demo": (["-m", "flows.demo"], "the closed loop on the bike data, end to end"),
}
"""The jobs `loopline` launches: the module's command line, and what it does."""


def tool_state_defaults(paths: ProjectPaths) -> dict[str, str]:
    """Tool state inside the project, as `make` keeps it, unless the environment says otherwise."""
    return {
        "PREFECT_HOME": str(paths.state_dir / "prefect"),
        "BENTOML_HOME": str(paths.state_dir / "bentoml"),
        "BENTOML_DO_NOT_TRACK": "true",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DVC_NO_ANALYTICS": "1",
        "DVC_SITE_CACHE_DIR": str(paths.state_dir / "dvc-site-cache"),
        "MPLBACKEND": "Agg",
    }


def run_job(name: str, args: list[str]) -> int:
    """Replace this process with the job's module, its options passed on."""
    command, _ = JOBS[name]
    sys.stdout.flush()
    os.execv(sys.executable, [sys.executable, *command, *args])
    return 1  # not reached


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="loopline",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[2:]),
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (_, summary) in JOBS.items():
        p = sub.add_parser(name, help=summary, add_help=False)  # --help goes to the job itself
        p.add_argument("job_args", nargs=argparse.REMAINDER)
    p = sub.add_parser("register", help="store the pipeline's candidate model and print its gate verdict")
    p.set_defaults(run=cmd_register)
    p = sub.add_parser("promote", help="make a version the production model (checks hash, loading, gate)")
    p.add_argument("version", nargs="?", help="version id or a unique prefix; default: the candidate in artifacts/")
    p.add_argument("--force", action="store_true", help="promote although the gate failed (needs --reason)")
    p.add_argument("--reason", help="why; recorded with the promotion")
    p.set_defaults(run=cmd_promote)
    p = sub.add_parser("rollback", help="production goes back to the version it replaced")
    p.add_argument("--reason", required=True, help="why; recorded with the rollback")
    p.set_defaults(run=cmd_rollback)
    p = sub.add_parser("list", help="every version, its gate verdict, and the production one (*)")
    p.set_defaults(run=cmd_list)
    p = sub.add_parser("show", help="a version's model card and history (default: production)")
    p.add_argument("version", nargs="?")
    p.add_argument("--json", action="store_true", help="the full lineage record instead of the card")
    p.set_defaults(run=cmd_show)
    p = sub.add_parser("verify", help="check every version's hash, the pointer and BentoML's store; repair the store")
    p.set_defaults(run=cmd_verify)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    paths = ProjectPaths.here()
    for variable, value in tool_state_defaults(paths).items():
        os.environ.setdefault(variable, value)
    if argv and argv[0] in JOBS:
        return run_job(argv[0], argv[1:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=f"loopline {args.command}: %(message)s", stream=sys.stderr)
    try:
        return args.run(args, paths)
    except LooplineError as exc:
        print(f"loopline {args.command}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
