"""The `campaignops` command line: one thin subcommand per pipeline step, shared by people,
DVC stages and Airflow tasks. Heavy libraries load inside the subcommand that needs them.

Bad input — a data or mapping file that is missing, a directory or unreadable, a mapping's
problems, an unsafe batch or campaign id — prints one line per problem naming the file or option
and exits 2, without a traceback (_InputErrors); CAMPAIGNOPS_DEBUG=1 shows the traceback instead."""
from __future__ import annotations

import json
import os
import sys
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from typer.core import TyperGroup

from campaignops.config import load_settings
from campaignops.pipelines.inputs import InputError, check_id, one_line

DEBUG_ENV = "CAMPAIGNOPS_DEBUG"   # set (not 0): input errors raise with their traceback
FILE_ERRORS = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)


def _input_error_lines(exc: BaseException) -> list[str] | None:
    """The lines that report `exc` if it is bad input (else None: a bug keeps its traceback)."""
    if isinstance(exc, InputError):
        lines = str(exc).splitlines() or [type(exc).__name__]
        if hasattr(exc, "problems") and len(lines) > 1:   # a MappingError: each line names file and key
            return [f"[red]mapping errors ({len(lines)}):[/]", *(escape(line) for line in lines)]
        return [("[red]mapping error:[/] " if hasattr(exc, "problems") else "[red]error:[/] ") + escape(lines[0])]
    if isinstance(exc, FILE_ERRORS):
        what = f"{exc.filename}: {exc.strerror}" if exc.filename else str(exc)
        return ["[red]error:[/] " + escape(one_line(what))]
    return None


class _InputErrors(TyperGroup):
    """Every command runs inside this: bad input becomes its lines and exit code 2."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (ValueError, OSError) as exc:
            lines = _input_error_lines(exc)
            if lines is None or _debug():
                raise
            for line in lines:
                console.print(line, highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None


def _debug() -> bool:
    return os.environ.get(DEBUG_ENV, "0") not in ("", "0")


def _safe_id(value: str | None, option: str) -> str | None:
    """An id option's value, checked against the safe-id rule (UnsafeId otherwise)."""
    return None if value is None else check_id(value, option)


app = typer.Typer(help=f"campaignops: personalized campaign MLOps ({DEBUG_ENV}=1: tracebacks for input errors)",
                  no_args_is_help=True, cls=_InputErrors)
stack_app = typer.Typer(help="The embedded local stack (S3, MLflow, Airflow)", no_args_is_help=True)
data_app = typer.Typer(help="Raw data: synthetic generation and imports", no_args_is_help=True)
app.add_typer(stack_app, name="stack")
app.add_typer(data_app, name="data")
console = Console(width=None if sys.stdout.isatty() else 180)  # logs keep the tables readable


def _print(result) -> None:
    console.print_json(json.dumps(result, default=str))


@stack_app.command("up")
def stack_up(profile: Optional[str] = typer.Option(
        None, help="local (default: LocalExecutor, SQLite) | distributed (Airflow on Postgres with the "
                   "CeleryExecutor, a Redis broker and params stack.celery_workers workers); recorded for down/status")) -> None:
    """Start SeaweedFS (S3), MLflow and Airflow (+ Postgres and Redis for --profile distributed) on
    127.0.0.1 and wait until healthy."""
    from campaignops.infra import stack

    settings = load_settings()
    stack.up(settings, profile=profile)
    stack_status()


@stack_app.command("down")
def stack_down() -> None:
    """Stop the processes `stack up` started (and only those)."""
    from campaignops.infra import stack

    for line in stack.down(load_settings()):
        console.print(line)


@stack_app.command("status")
def stack_status() -> None:
    """Each service, its URL and health."""
    from campaignops.infra import stack

    table = Table("service", "url", "pid", "running", "healthy", "detail")
    for s in stack.status(load_settings()):
        table.add_row(str(s["service"]), str(s["url"]), str(s.get("pid") or "-"), str(s["running"]), str(s["healthy"]),
                      str(s.get("detail") or ""))
    console.print(table)
    settings = load_settings()
    if stack.people_file(settings).exists():
        console.print(f"accounts: {settings.env.get('CAMPAIGNOPS_AIRFLOW_USER', stack.ADMIN_USER)} (pipeline service "
                      f"account, {settings.env_file}); " + ", ".join(f"{n} ({r})" for n, r in stack.PEOPLE.items())
                      + f" in {stack.people_file(settings)}", highlight=False, soft_wrap=True)


@data_app.command("generate")
def data_generate(users: Optional[int] = typer.Option(None, help="number of users (default: params data.users)"),
                  seed: Optional[int] = typer.Option(None, help="random seed (default: params data.seed)"),
                  batch: Optional[str] = typer.Option(None, help="batch id (default: the date, else params data.batch)"),
                  date: Optional[str] = typer.Option(
                      None, help="simulated day (ISO date within params data.sim): the world as of that midnight, "
                                 "with the outcomes of the campaigns the platform scored"),
                  broken_outcomes: bool = typer.Option(
                      False, "--broken-outcomes", help="fault injection: shuffle responded/revenue across exposures")) -> None:
    """Write a synthetic campaign world with known truth to S3 raw/<batch>/."""
    from campaignops.pipelines import synth

    _safe_id(batch, "--batch")
    try:
        manifest = synth.generate(load_settings(), users=users, seed=seed, batch=batch, date=date,
                                  broken_outcomes=broken_outcomes)
    except ValueError as exc:   # a date outside the calendar, a scores run of another world
        console.print(f"[red]error:[/] {exc}", soft_wrap=True)
        raise typer.Exit(2)
    out = {"batch": manifest["batch"], "tables": {t: v["rows"] for t, v in manifest["tables"].items()}}
    if date is not None:
        out["sim"] = {"day": manifest["sim"]["day"], "upcoming_campaign_id": manifest["upcoming_campaign_id"],
                      "policies": {c: v.get("policy") for c, v in manifest["sim"]["campaigns"].items()
                                   if v["status"] == "resolved"}}
    _print(out)


@data_app.command("import")
def data_import(datafile: str = typer.Argument(..., help="the campaign log: CSV or parquet"),
                mapping: Optional[str] = typer.Option(
                    None, "--mapping", help="mapping YAML (e.g. validation/mappings/hillstrom.yaml); with --init: "
                                            "where to write the starter (default: <stem>.mapping.yaml here)"),
                init: bool = typer.Option(False, "--init", help="write a starter mapping guessed from the log's "
                                                                "columns (each guess commented) and stop; never "
                                                                "overwrites a file"),
                batch: Optional[str] = typer.Option(None, help="batch id (default: the mapping's batch)"),
                response: Optional[str] = typer.Option(None, help="response column (default: the mapping's)"),
                holdout_fraction: Optional[float] = typer.Option(
                    None, help="hold out this share of the users (e.g. 0.2), chosen by a seeded hash of the id"),
                holdout_fold: Optional[str] = typer.Option(
                    None, help="F/K: hold out fold F of K equal folds of users (cross-fitting: K imports)"),
                holdout_column: Optional[str] = typer.Option(
                    None, help="COL or COL=VALUE: hold out the rows this column marks (COL alone: the values "
                               "holdout, test, true, 1, yes)")) -> None:
    """Map a randomized campaign log into a raw batch raw/<batch>/ as the mapping declares (--init:
    write a starter mapping first). Without a holdout option the holdout is params features.split's."""
    from campaignops.pipelines import import_starter, importer

    _safe_id(batch, "--batch")
    if init:
        path, guesses = import_starter.write_starter(datafile, mapping)   # StarterError: one line, exit 2
        _print(guesses)
        console.print(escape(f"wrote {path}: check the lines marked CHECK, then "
                             f"`campaignops data import --mapping {path} {datafile}`"), highlight=False, soft_wrap=True)
        return
    if mapping is None:
        console.print("[red]error:[/] give --mapping FILE.yaml (or --init to write a starter mapping from the log)")
        raise typer.Exit(2)
    fold = None
    if holdout_fold is not None:
        try:
            f, k = (int(v) for v in holdout_fold.split("/"))
        except ValueError:
            console.print(f"[red]--holdout-fold must be F/K (e.g. 0/5), got {holdout_fold!r}[/]")
            raise typer.Exit(2)
        fold = (f, k)
    try:
        manifest = importer.import_file(load_settings(), mapping, datafile, batch=batch, response=response,
                                        holdout_fold=fold, holdout_fraction=holdout_fraction,
                                        holdout_column=holdout_column)
    except InputError:   # a mapping's problems, an unreadable data file, an unsafe id: _InputErrors
        raise
    except ValueError as exc:  # e.g. a holdout option out of range (importer.import_file checks them)
        if _debug():
            raise
        console.print(f"[red]error:[/] {escape(one_line(str(exc)))}", soft_wrap=True)
        raise typer.Exit(2)
    result = manifest["import"]
    _print({"batch": manifest["batch"], "tables": {t: v["rows"] for t, v in manifest["tables"].items()},
            "import": result})
    h = result["holdout"]
    console.print(escape(f"holdout: {h.get('rows', '?')} rows ({h.get('share', 0):.1%}) by {h['how']}"),
                  highlight=False, soft_wrap=True)
    for w in result["warnings"]:
        console.print(f"[yellow]warning:[/] {escape(w)}", highlight=False, soft_wrap=True)


@app.command()
def ingest(batch: Optional[str] = typer.Option(None, help="batch id (default: params data.batch)")) -> None:
    """Register a landed raw batch: snapshot its S3 manifest into data/raw_manifest.json."""
    from campaignops.pipelines import ingest as step

    _print(step.ingest(load_settings(), batch=_safe_id(batch, "--batch")))


@app.command()
def validate() -> None:
    """Validate the raw batch (GX suites), quarantine bad rows, write data/validated."""
    from campaignops.pipelines import validate as step

    _print(step.run(load_settings()))


@app.command()
def features() -> None:
    """Build point-in-time features into data/features."""
    from campaignops.pipelines import features as step

    _print(step.build(load_settings()))


@app.command()
def train() -> None:
    """Train the campaign response model; log it to MLflow; save to data/model."""
    from campaignops.pipelines import train as step

    _print(step.run(load_settings()))


@app.command()
def drift(stage: str = typer.Option(..., help="train: the new features before training; score: the scoring frame"),
          campaign_id: Optional[str] = typer.Option(None, help="score stage: campaign (default: the upcoming one)")) -> None:
    """Drift gate: PSI per feature vs the champion's training snapshot; exit 1 on a blocking breach."""
    from campaignops.pipelines import drift as step

    if stage not in step.STAGES:
        raise typer.BadParameter(f"--stage must be one of {', '.join(step.STAGES)}")
    _safe_id(campaign_id, "--campaign-id")
    settings = load_settings()
    try:
        report = step.gate_training(settings) if stage == "train" else step.gate_scoring(settings, campaign_id)
    except step.DriftDetected as exc:
        console.print(f"[red]drift gate blocked {stage}:[/] {exc}")
        raise typer.Exit(1)
    _print(step.summary(report))


@app.command()
def evaluate(crossfit: Optional[int] = typer.Option(
                 None, "--crossfit", metavar="K",
                 help="instead: cross-fit K folds of the features' exposures (network recipe and baselines refitted "
                      "per fold, params evaluate.crossfit); per-fold and pooled out-of-fold Qini to reports/crossfit/"),
             mlflow: Optional[bool] = typer.Option(
                 None, "--mlflow/--no-mlflow",
                 help="with --crossfit: log a `crossfit` MLflow run (default: params evaluate.crossfit.mlflow; "
                      "auto = when a tracking server is configured)")) -> None:
    """Compare candidate and champion on the holdout; write reports/evaluation.json."""
    if crossfit is not None:
        _crossfit(crossfit, mlflow)
        return
    from campaignops.pipelines import evaluate as step

    report = step.run(load_settings())
    _print(report)
    if not report["passed"]:
        console.print(f"[yellow]gate failed:[/] {'; '.join(report['reasons'])}")


def _crossfit(k: int, mlflow: Optional[bool]) -> None:
    import logging

    from rich.logging import RichHandler
    from rich.markup import escape

    from campaignops.pipelines import crossfit as step

    logging.basicConfig(level=logging.WARNING, format="%(message)s", handlers=[RichHandler(console=console, show_path=False)])
    logging.getLogger("campaignops").setLevel(logging.INFO)   # one line per fold
    try:
        report = step.run(load_settings(), k=k, mlflow=mlflow)
    except (ValueError, FileNotFoundError) as exc:   # bad params / k, or no features built yet
        console.print(f"[red]crossfit refused:[/] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(2)
    cfg = report["config"]
    table = Table("model", "arm", "Qini per fold (mean ± sd)", "pooled raw", f"pooled calibrated ({cfg['calibration']})",
                  title=f"cross-fitted Qini, {cfg['k']} folds of {report['users']} users ({report['exposures']} "
                        f"exposures); random-ranking sd {report['random_qini_sd']:.4f}")
    for row in step.table_rows(report):
        table.add_row(*row, end_section=row[1] == "all arms (mean)")
    console.print(table)
    for key, path in report["outputs"].items():
        console.print(escape(f"{key}: {path}"), highlight=False, soft_wrap=True)
    if report.get("mlflow_run_id"):
        console.print(f"mlflow run: {report['mlflow_run_id']}")


@app.command()
def promote(rollback: bool = typer.Option(False, help="make the previous champion the champion again"),
            approve: bool = typer.Option(False, "--approve", help="challenger mode: make the current `challenger` "
                                                                  "the champion"),
            force: bool = typer.Option(False, "--force", help="override: make the candidate (or --version N) champion "
                                                              "whatever the gate said; needs --reason"),
            reason: Optional[str] = typer.Option(None, "--reason", help="why (required with --force; recorded)"),
            version: Optional[str] = typer.Option(None, "--version", help="with --force: this registered version "
                                                                          "instead of the evaluated candidate"),
            show_history: bool = typer.Option(False, "--history", help="print the promotion log (S3 promotions/) "
                                                                       "checked against the registry"),
            as_json: bool = typer.Option(False, "--json", help="with --history: the records as JSON")) -> None:
    """Register the gated candidate and move the `champion` alias to it (params promote.mode challenger: the
    `challenger` alias). Every alias change is recorded in the promotion log (S3 promotions/). A gate refusal
    prints {"promoted": false, "reasons": ...} (exit 0, as before); exit 2 when the request cannot be served
    (an override without --reason, unreadable model artifacts, nothing to roll back or approve)."""
    from rich.markup import escape

    from campaignops.pipelines import promote as step

    settings = load_settings()
    if sum([rollback, approve, show_history, force]) > 1:
        console.print("[red]error:[/] give one of --rollback, --approve, --force, --history")
        raise typer.Exit(2)
    if show_history:
        records = step.history(settings)
        if as_json:
            _print(records)
            return
        name = settings.params["train"]["model_name"]
        table = Table(*step.HISTORY_COLUMNS, title=f"promotion log of {name} (S3 promotions/{name}/)")
        for row in step.table_rows(records):
            table.add_row(*(escape(c) for c in row))
        console.print(table)
        if not records:
            console.print("[yellow]no alias change recorded yet[/]")
        return
    try:
        if rollback:
            out = step.rollback(settings, reason=reason)
        elif approve:
            out = step.approve(settings, reason=reason)
        else:
            out = step.run(settings, force=force, reason=reason, version=version)
    except step.PromotionError as exc:
        console.print(f"[red]promote refused:[/] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(2)
    _print(out)


@app.command()
def score(campaign_id: Optional[str] = typer.Option(None, help="campaign to score (default: the upcoming one)"),
          budget: Optional[str] = typer.Option(None, help="send budget in currency (default: params score.default_budget)"),
          engine: Optional[str] = typer.Option(None, help="local | spark (default: params score.engine)"),
          exploration_share: Optional[float] = typer.Option(
              None, help="share of users given a uniformly random arm (default: params score.exploration.share)"),
          use_last_validated: bool = typer.Option(
              False, help="if the ingested batch failed validation, score the last validated batch (recorded)"),
          replay: bool = typer.Option(False, help="re-score a campaign that has already ended (analysis only)")) -> None:
    """Score every user × variant with the champion; commit the targeting to S3 (scores/<campaign>/<run>/)."""
    from campaignops.pipelines import score as step
    from campaignops.pipelines.drift import DriftDetected
    from campaignops.pipelines.score_request import RequestError

    import logging

    from rich.logging import RichHandler

    logging.basicConfig(level=logging.WARNING, format="%(message)s", handlers=[RichHandler(console=console, show_path=False)])
    logging.getLogger("campaignops").setLevel(logging.INFO)   # one line per phase; libraries stay at WARNING
    exploration = None if exploration_share is None else {"share": exploration_share}
    _safe_id(campaign_id, "--campaign-id")
    try:
        manifest = step.run(load_settings(), campaign_id=campaign_id, budget=budget, engine=engine,
                            exploration=exploration, allow_last_validated=use_last_validated, replay=replay)
    except RequestError as exc:
        console.print(f"[red]score refused:[/] {exc}", soft_wrap=True)
        raise typer.Exit(2)
    except DriftDetected as exc:
        console.print(f"[red]drift gate blocked scoring:[/] {exc}", soft_wrap=True)
        raise typer.Exit(1)
    _print(step.summary(manifest))
    if manifest["status"] == "no_targets":
        console.print("[yellow]the model targets nobody at this budget: no user's predicted uplift pays for its send; "
                      "latest.json was not moved[/]")


@app.command()
def feedback(campaign_id: str = typer.Option(..., help="campaign whose outcomes to compare with its forecast"),
             scores_run: Optional[str] = typer.Option(None, help="scores run id (default: the run latest.json names)")) -> None:
    """Forecast vs actual of a scored campaign once its outcomes landed; report to S3 feedback/ and MLflow.

    Exit codes: 0 the forecast holds; 3 some gated metric's actual is outside the forecast's interval
    (params.yaml feedback.gate); 2 the outcomes have not landed or the request cannot be served."""
    from campaignops.pipelines import feedback as step

    _safe_id(campaign_id, "--campaign-id")
    _safe_id(scores_run, "--scores-run")
    try:
        report = step.run(load_settings(), campaign_id, scores_run)
    except step.FeedbackError as exc:   # OutcomesNotReady included
        console.print(f"[red]feedback refused:[/] {exc}", soft_wrap=True)
        raise typer.Exit(2)
    table = Table("scope", "metric", "sends fc/actual", "forecast [interval]", "actual [interval]", "truth",
                  "fc ÷ actual", "in interval", "flag",
                  title=f"feedback {report['campaign_id']} / {report['scores_run_id']} (actual: IPW, "
                        f"{report['level']:.0%} interval)")
    num = lambda x: "–" if x is None else f"{x:,.1f}"   # noqa: E731
    for scope, block in [("total", report["total"]), *report["by_variant"].items()]:
        for name, m in block["metrics"].items():
            f, a = m["forecast"] or {}, m["actual"]
            out = f"{scope}.{name}" in report["outside_interval"]
            table.add_row(scope, name, f"{block['sends']['forecast']}/{block['sends']['actual']}",
                          f"{num(f.get('forecast'))} [{num(f.get('lo'))}, {num(f.get('hi'))}]",
                          f"{num(a['estimate'])} [{num(a['lo'])}, {num(a['hi'])}]", num(m["truth"]),
                          "–" if m["forecast_over_actual"] is None else f"{m['forecast_over_actual']:.2f}",
                          {True: "yes", False: "no", None: "–"}[m["within_interval"]],
                          "[bold red]OUTSIDE[/]" if out else "")
    console.print(table)
    if report.get("truth"):
        t = report["truth"]
        console.print(f"truth: sends' incremental responses {num(t['incremental_responses'])}, oracle at equal sends "
                      f"{num(t['oracle_same_sends'])}, share of the oracle "
                      f"{'–' if t['share_of_oracle'] is None else format(t['share_of_oracle'], '.3f')}")
    console.print(f"report: {report['output']['html']}")
    if report["outside_interval"]:
        for line in step.flag_lines(report):
            console.print(f"[bold red]outside the forecast:[/] {line}", soft_wrap=True)
        raise typer.Exit(3)


@app.command()
def adjust(campaign_id: Optional[str] = typer.Option(None, help="running campaign (default: every one due on the date)"),
           date: Optional[str] = typer.Option(None, help="ISO date the allocation is for (default: the ingested "
                                                         "batch's date)")) -> None:
    """Reallocate a running campaign's remaining sends from its landed outcomes (a new allocation version in S3
    allocations/<campaign>/); on its start day, write the plan that sends it in daily waves. Exit 2 when refused."""
    from campaignops.pipelines import adjust as step

    _safe_id(campaign_id, "--campaign-id")
    try:
        results = step.run_due(load_settings(), campaign_id, date)
    except step.AdjustError as exc:
        console.print(f"[red]adjust refused:[/] {exc}", soft_wrap=True)
        raise typer.Exit(2)
    _print(results)


@app.command("lineage")
def lineage(ref: str = typer.Argument(..., help="a scores manifest URI (s3://…/manifest.json), a campaign id (its "
                                                "latest run), a model version (3, name/3, models:/name/3) or an MLflow run id"),
            html: Optional[str] = typer.Option(None, "--html", help="also write the chain as one self-contained HTML page here"),
            as_json: bool = typer.Option(False, "--json", help="print the chain as JSON instead of a table"),
            max_download_mb: float = typer.Option(512.0, help="bytes re-read to re-hash objects; beyond it, objects "
                                                              "are checked by size only (unverifiable)")) -> None:
    """Trace a scored row back to its raw batch: scores parts → manifest → model version → MLflow
    run → git sha + dvc.lock → DVC data → validation + Data Docs → raw batch, each hop checked.
    Exit 0: every hop verified or unverifiable; 1: a mismatch (a hash, size, row count or id differs);
    3: no mismatch but something the chain points at is missing; 2: the reference resolves to nothing."""
    from pathlib import Path

    from campaignops.pipelines import lineage as lin
    from campaignops.pipelines.lineage_render import render_html, render_text

    try:
        chain = lin.trace(load_settings(), ref, max_bytes=int(max_download_mb * (1 << 20)))
    except lin.LineageError as exc:
        console.print(f"[red]error:[/] {exc}", soft_wrap=True)
        raise typer.Exit(2)
    if html:
        Path(html).write_text(render_html(chain))
    if as_json:
        typer.echo(json.dumps(chain, indent=2, default=str))
    else:
        typer.echo(render_text(chain, width=console.width or 160))
        if html:
            typer.echo(f"page: {html}")
    if chain["counts"]["mismatch"]:
        raise typer.Exit(1)
    if chain["counts"]["missing"]:
        raise typer.Exit(3)


@app.command("reproduce")
def reproduce(ref: str = typer.Argument(..., help="a model version (7, name/7, models:/name/7) or an alias (champion)"),
              keep: bool = typer.Option(False, help="keep the temporary workspace (its path is printed)"),
              as_json: bool = typer.Option(False, "--json", help="print the checks as JSON instead of a table")) -> None:
    """Check out a model version's code (git sha) and data (its run's dvc.lock + the DVC remote) into a
    temporary workspace, rebuild its features there and compare every hash with the recorded ones.
    Exit 0: all matched; 1: a mismatch; 3: something to compare with is missing; 2: unknown version."""
    from campaignops.pipelines import reproduce as rep

    try:
        result = rep.reproduce(load_settings(), ref, keep=keep,
                               progress=None if as_json else (lambda msg: console.print(f"[dim]{msg}[/]", soft_wrap=True)))
    except rep.ReproduceError as exc:
        console.print(f"[red]error:[/] {exc}", soft_wrap=True)
        raise typer.Exit(2)
    typer.echo(json.dumps(result, indent=2, default=str) if as_json else rep.render_text(result))
    raise typer.Exit({rep.MATCHED: 0, rep.MISMATCH: 1}.get(result["status"], 3))


if __name__ == "__main__":
    app()


@app.command("history")
def history(html: Optional[str] = typer.Option(None, "--html", help="also write the table as one self-contained HTML page here"),
            as_json: bool = typer.Option(False, "--json", help="print the rows as JSON")) -> None:
    """The loop day by day: retraining gate and champion, the campaign scored, forecast vs actual."""
    from pathlib import Path

    from campaignops.pipelines import history as hist
    from campaignops.pipelines.storage import ObjectStore

    days = hist.collect(ObjectStore(load_settings()))
    if as_json:
        _print(days)
        return
    table = Table(*hist.COLUMNS, title="campaignops: the loop, day by day")
    for row in hist.table_rows(days):
        table.add_row(*row)
    console.print(table)
    if not days:
        console.print("[yellow]no retraining day and no scored campaign yet[/]")
    if html:
        Path(html).write_text(hist.to_html(days))
        console.print(f"wrote {html}")
