"""A warm ``ftbench`` for the bad-input corpus (tests/test_bad_inputs.py): each request runs the CLI
in a process of its own, forked from this one after it has imported ftbench (torch, pandas, ...).

A fresh interpreter spends seconds importing torch before it can refuse ``--lr inf``; forking a
process that has imported and done nothing else gives the same separate process — its own exit
code, stdin, stdout and stderr, working folder and environment, the interpreter's own handling of
an uncaught exception (a traceback on stderr, exit 1) — in milliseconds. The tests switch to a
fresh interpreter per input with ``FTBENCH_CORPUS_FRESH=1``.

Protocol: one JSON object per line on stdin (``argv``, ``cwd``, ``env``, ``stdout``, ``stderr``:
the files the child's output goes to, ``timeout``), one JSON object per line back (``code``).
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback


def _child(req: dict) -> int:
    """In the forked process: become ``ftbench ARGV`` with the request's stdio, folder and env."""
    code = 1
    try:
        for fd, path, flags in ((0, os.devnull, os.O_RDONLY),
                                (1, req["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
                                (2, req["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)):
            new = os.open(path, flags, 0o644)
            os.dup2(new, fd)
            os.close(new)
        os.chdir(req["cwd"])
        os.environ.update(req["env"])
        sys.argv = ["ftbench", *req["argv"]]
        from ftbench.cli import entry

        try:
            entry()
            code = 0
        except SystemExit as e:  # as the interpreter turns SystemExit into the exit status
            if e.code is None or isinstance(e.code, int):
                code = e.code or 0
            else:
                print(e.code, file=sys.stderr)
                code = 1
        except BaseException:  # noqa: BLE001 - as the interpreter reports an uncaught exception
            traceback.print_exc()
            code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def run(req: dict) -> dict:
    """Fork, run the request in the child, wait for it (killing it after ``timeout`` s)."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child never returns
        _child(req)
    deadline = time.monotonic() + float(req.get("timeout", 120))
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return {"code": os.waitstatus_to_exitcode(status)}
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            return {"code": 124}
        time.sleep(0.005)


def main() -> None:
    # Everything a command imports on its way to refusing an input, imported once here.
    import ftbench.cli
    import ftbench.data.fetch
    import ftbench.report.regress
    import ftbench.report.table
    import ftbench.results.store
    import ftbench.sweep.executors
    import ftbench.sweep.pool
    import ftbench.execution.runner  # noqa: F401
    from ftbench.methods.base import all_methods
    from ftbench.spec import RunSpec
    from ftbench.plan.suites import expand_suite
    from ftbench.plan.resolve import resolve

    all_methods()
    resolve(RunSpec())  # imports the benchmark's data and model code (sklearn, timm): no training
    expand_suite("smoke")
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        print(json.dumps(run(json.loads(line))), flush=True)


if __name__ == "__main__":
    main()
