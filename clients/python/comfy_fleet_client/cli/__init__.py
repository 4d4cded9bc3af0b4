"""The `comfy-fleet` command.

Exit status: 0 when the command did what it was asked (and, for a task it waited for, the
task succeeded); 1 when a task it waited for failed or was cancelled; 2 for a bad command line
or any error (server unreachable, bad key, unknown workflow, bad parameter…), always told in
one line on stderr.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn, TextIO

from rich.console import Console

from comfy_fleet_client import errors, models, protocol
from comfy_fleet_client.cli import follow, params, render
from comfy_fleet_client.client import Client

PROG = "comfy-fleet"
EXIT_OK, EXIT_TASK_FAILED, EXIT_ERROR = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error told in one line (exit status 2)."""

    def error(self, message: str) -> NoReturn:
        raise params.UsageError(f"{message} (see {self.prog} --help)")


def _common() -> argparse.ArgumentParser:
    # Options accepted before or after the command; SUPPRESS keeps a later absence from
    # overwriting an earlier value.
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--url", default=argparse.SUPPRESS,
                   help=f"server (default $COMFY_FLEET_URL, else {protocol.DEFAULT_URL})")
    p.add_argument("--key", default=argparse.SUPPRESS, help="API key (default $COMFY_FLEET_KEY)")
    p.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON")
    p.add_argument("--progress", choices=["auto", "always", "never"], default=argparse.SUPPRESS,
                   help="progress bar on stderr (auto: when stderr is a terminal and not --json)")
    return p


def _waiting(p: argparse.ArgumentParser) -> None:
    p.add_argument("--wait", action="store_true", help="follow the task until it ends (exit 0 only if it succeeded)")
    p.add_argument("--out", metavar="DIR", help="download the outputs into DIR (implies --wait)")
    p.add_argument("--timeout", type=float, metavar="S", help="give up waiting after S seconds")


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    parser = _Parser(prog=PROG, parents=[common], description="Run ComfyUI workflows on a comfy-fleet service.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    sub.add_parser("workflows", parents=[common], help="the served workflows and their parameters")

    p = sub.add_parser("submit", parents=[common], help="submit a task")
    p.add_argument("workflow")
    p.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE",
                   help="a parameter (JSON when it parses, else text; an image may be a file path)")
    p.add_argument("--client-task-id")
    p.add_argument("--callback-url")
    p.add_argument("--priority", type=int)
    p.add_argument("--tenant")
    p.add_argument("--workflow-version")
    _waiting(p)

    p = sub.add_parser("tasks", parents=[common], help="list tasks, newest first")
    p.add_argument("--status")
    p.add_argument("--workflow")
    p.add_argument("--client-task-id")
    p.add_argument("--batch")
    p.add_argument("--tenant")
    p.add_argument("--limit", type=int, default=20, help="how many (default 20; 0 for all)")

    for name, text in (("task", "show a task"), ("cancel", "cancel a task")):
        sub.add_parser(name, parents=[common], help=text).add_argument("task_id")

    p = sub.add_parser("watch", parents=[common], help="follow a task until it ends")
    p.add_argument("task_id")
    p.add_argument("--out", metavar="DIR", help="download the outputs into DIR")
    p.add_argument("--timeout", type=float, metavar="S", help="give up after S seconds")

    p = sub.add_parser("rerun", parents=[common], help="run a task again (same workflow version and inputs)")
    p.add_argument("task_id")
    p.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE", help="override a parameter")
    p.add_argument("--same-seed", action="store_true", help="keep a drawn seed")
    p.add_argument("--priority", type=int)
    _waiting(p)

    p = sub.add_parser("batch", parents=[common], help="submit a sweep of one workflow as a batch")
    p.add_argument("workflow")
    p.add_argument("--sweep", action="append", default=[], metavar="NAME=V1,V2", required=True,
                   help="a parameter's values (repeat for a cartesian product; the last varies fastest)")
    p.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE", help="a fixed parameter")
    p.add_argument("--client-batch-id")
    p.add_argument("--callback-url")
    p.add_argument("--priority", type=int)
    p.add_argument("--tenant")
    p.add_argument("--workflow-version", help="run this version of the workflow in every task")
    _waiting(p)

    sub.add_parser("endpoints", parents=[common], help="the fleet's ComfyUI endpoints")
    return parser


class _Run:
    """One invocation: the parsed arguments, the client, where to print."""

    def __init__(self, args: argparse.Namespace, out: TextIO, err: TextIO) -> None:
        self.args, self.out, self.err = args, out, err
        self.json = bool(getattr(args, "json", False))
        url, key = protocol.settings_from_env(getattr(args, "url", None), getattr(args, "key", None))
        self.client = Client(url, key)
        mode = getattr(args, "progress", "auto")
        show = mode == "always" or (mode == "auto" and not self.json and err.isatty())
        self.console = Console(file=err, force_terminal=mode == "always" or None) if show else None

    def emit(self, value: Any, human: Any) -> None:
        if self.json:
            print(render.to_json(value), file=self.out)
        else:
            human(value, self.out)

    def finish(self, task: models.Task, out_dir: str | None) -> int:
        """Print the ended task, download its outputs when asked; the exit status."""
        files: list[Path] = []
        if out_dir and task.succeeded:
            files = self.client.download_outputs(task, out_dir)
        if self.json:
            body = task.model_dump(mode="json")
            if out_dir:
                body["downloaded"] = [str(f) for f in files]
            print(render.to_json(body), file=self.out)
        else:
            print(f"{task.task_id} {task.status}", file=self.out)
            for f in files:
                print(f, file=self.out)
        if task.succeeded:
            return EXIT_OK
        print(f"{PROG}: task {task.task_id} {task.status}: {_one_line(render.error_text(task))}", file=self.err)
        return EXIT_TASK_FAILED

    def wait_for(self, task: models.Task) -> int:
        timeout = getattr(self.args, "timeout", None)
        final = follow.follow(self.client, task.task_id, self.console, task.workflow, timeout)
        return self.finish(final, getattr(self.args, "out", None))

    def workflow(self, name: str) -> models.Workflow:
        return self.client.workflow(name)

    def wants_wait(self) -> bool:
        return bool(getattr(self.args, "wait", False) or getattr(self.args, "out", None))


def _cmd_workflows(r: _Run) -> int:
    r.emit(r.client.workflows(), render.workflows)
    return EXIT_OK


def _cmd_submit(r: _Run) -> int:
    a = r.args
    wf = r.workflow(a.workflow)  # also tells an unknown workflow before anything is sent
    task = r.client.submit(
        a.workflow, params.build_params(a.param, wf), client_task_id=a.client_task_id,
        callback_url=a.callback_url, priority=a.priority, tenant=a.tenant, workflow_version=a.workflow_version,
    )
    if r.wants_wait():
        return r.wait_for(task)
    r.emit(task, lambda t, out: print(f"{t.task_id} {t.status}", file=out))
    return EXIT_OK


def _cmd_tasks(r: _Run) -> int:
    a = r.args
    items = list(r.client.list(
        status=a.status, workflow=a.workflow, client_task_id=a.client_task_id, batch_id=a.batch,
        tenant=a.tenant, page_size=min(max(a.limit, 1), 500) if a.limit else 500, limit=a.limit or None,
    ))
    r.emit(items, render.tasks)
    return EXIT_OK


def _cmd_task(r: _Run) -> int:
    r.emit(r.client.get(r.args.task_id), render.task)
    return EXIT_OK


def _cmd_watch(r: _Run) -> int:
    return r.wait_for(r.client.get(r.args.task_id))


def _cmd_cancel(r: _Run) -> int:
    r.emit(r.client.cancel(r.args.task_id), lambda t, out: print(f"{t.task_id} {t.status}", file=out))
    return EXIT_OK


def _cmd_rerun(r: _Run) -> int:
    a = r.args
    overrides: dict[str, Any] = {}
    if a.param:
        wf = r.workflow(r.client.get(a.task_id).workflow)
        overrides = params.build_params(a.param, wf)
    task = r.client.rerun(a.task_id, params=overrides or None, priority=a.priority,
                          same_seed=True if a.same_seed else None)
    if r.wants_wait():
        return r.wait_for(task)
    r.emit(task, lambda t, out: print(f"{t.task_id} {t.status}", file=out))
    return EXIT_OK


def _cmd_batch(r: _Run) -> int:
    a = r.args
    wf = r.workflow(a.workflow)
    try:
        batch = r.client.create_batch(
            workflow=a.workflow, params=params.build_params(a.param, wf), sweep=params.build_sweep(a.sweep, wf),
            client_batch_id=a.client_batch_id, callback_url=a.callback_url, priority=a.priority, tenant=a.tenant,
            workflow_version=a.workflow_version,
        )
    except errors.NotFound as exc:
        if exc.code == "not_found":  # the route itself, not a workflow
            raise errors.NotFound(f"this server has no batches (POST /batches answered 404: {exc.message})",
                                  code="batches_unsupported", status=404) from None
        raise
    if not r.wants_wait():
        r.emit(batch, render.batch)
        return EXIT_OK
    status = EXIT_OK
    finals = []
    for tid in batch.task_ids:
        task = r.client.wait(tid, getattr(a, "timeout", None))
        finals.append(task)
        if a.out and task.succeeded:
            r.client.download_outputs(task, Path(a.out) / tid)
        if not task.succeeded:
            status = EXIT_TASK_FAILED
    r.emit(r.client.get_batch(batch.batch_id), render.batch)
    for t in finals:
        if not t.succeeded:
            print(f"{PROG}: task {t.task_id} {t.status}: {_one_line(render.error_text(t))}", file=r.err)
            break
    return status


def _cmd_endpoints(r: _Run) -> int:
    r.emit(r.client.endpoints(), render.endpoints)
    return EXIT_OK


_COMMANDS = {
    "workflows": _cmd_workflows, "submit": _cmd_submit, "tasks": _cmd_tasks, "task": _cmd_task,
    "watch": _cmd_watch, "cancel": _cmd_cancel, "rerun": _cmd_rerun, "batch": _cmd_batch,
    "endpoints": _cmd_endpoints,
}


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def describe_error(exc: errors.ComfyFleetError, url: str) -> str:
    """The one line that tells what went wrong and, where it helps, what to do."""
    if isinstance(exc, errors.Unreachable):
        return _one_line(f"{exc.message}; is the service running? (set COMFY_FLEET_URL or --url)")
    text = f"{exc.code}"
    if exc.status:
        text += f" ({exc.status})"
    text += f": {exc.message}"
    if isinstance(exc, errors.Unauthorized):
        text += "; set COMFY_FLEET_KEY or --key to a valid key"
    elif isinstance(exc, errors.InvalidRequest) and isinstance(exc.details, list):
        named = [f"{d.get('param')}: {d.get('problem')}" for d in exc.details
                 if isinstance(d, dict) and d.get("param") and d.get("problem")]
        if named and not all(n.split(":")[0] in exc.message for n in named):
            text += " [" + "; ".join(named) + "]"
    elif isinstance(exc, errors.RateLimited) and exc.retry_after is not None:
        text += f"; retry after {exc.retry_after:g}s"
    return _one_line(text)


def main(argv: Sequence[str] | None = None, *, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    """Run the command; returns its exit status."""
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    try:
        args = build_parser().parse_args(argv)
    except params.UsageError as exc:
        print(f"{PROG}: {_one_line(str(exc))}", file=err)
        return EXIT_ERROR
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    run = _Run(args, out, err)
    try:
        return _COMMANDS[args.command](run)
    except params.UsageError as exc:
        print(f"{PROG}: {_one_line(str(exc))}", file=err)
    except errors.ComfyFleetError as exc:
        print(f"{PROG}: {describe_error(exc, run.client.url)}", file=err)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=err)
        return 130
    except OSError as exc:  # writing outputs: a full disk, a folder we may not write
        print(f"{PROG}: {_one_line(str(exc))}", file=err)
    finally:
        run.client.close()
    return EXIT_ERROR
