"""The site's own task runner: the pin is checked before any code of the run's app bundle could run.

Flower 1.42's SuperNode stores each run's FAB as the SuperLink sent it and queues one task per
message on its local runtime API. With ``--isolation subprocess`` (Flower's default) it starts
``flower-superexec``, which claims each task (``AcquireTask``) and starts ``flwr-clientapp --token``;
that process pulls message, context, run and FAB (``PullTaskInput``), *installs the FAB and imports the
ClientApp from it*. ``fl-client start`` runs the SuperNode with ``--isolation process`` instead (Flower
then starts neither) and starts this runner next to it, which plays both roles:

* ``serve``: the SuperExec loop on the SuperNode's runtime API (127.0.0.1; ``AcquireTask`` authenticated
  with the SuperExec HMAC secret the two share), one ``task`` process per claimed ClientApp task;
* ``task``: pulls the task input with Flower's own ``pull_task_input``, computes the SHA-256 of the FAB
  bytes and checks it against ``site.yaml`` ``app_release`` (fl_client.app_release). Pinned: it runs the
  ClientApp of the site's installation (``fl_client.client_app:app``); the FAB is never unpacked,
  installed or imported. Not pinned: it logs one line naming the received and the expected digest and
  replies with a Flower ``Error`` (code ``INVALID_FAB``) whose reason says the same, so the
  coordinator's ``reply.has_error()`` is true. Replies, task status and context go back with Flower's
  ``push_message`` and ``push_task_output``, as ``flwr-clientapp`` does.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

INSTALLED_CLIENTAPP = "fl_client.client_app:app"
TOKEN_ENV = "FEDCOHORT_TASK_TOKEN"  # the task's token goes to the task process in its environment
_ACQUIRE = "/flwr.proto.Runtime/AcquireTask"
log = logging.getLogger("fedcohort.runner")


def _client(address: str, interceptors: list[object]):  # type: ignore[no-untyped-def]
    from flwr.supercore.retry import make_simple_http_retry_invoker
    from flwr.supercore.runtime import RuntimeHttpClient

    # The runtime API listens on 127.0.0.1 only, without TLS (fl-client start sets --host 127.0.0.1).
    return RuntimeHttpClient.from_server_address(server_address=address, insecure=True, root_certificates=None,
                                                 interceptors=interceptors,  # type: ignore[arg-type]
                                                 retry_invoker=make_simple_http_retry_invoker())


def task_command(address: str, site_config: Path, parent_pid: int) -> list[str]:
    """The task process: this interpreter, ``-P`` (no working directory on sys.path), this module."""
    return [sys.executable, "-P", "-m", "fl_client.pinned_runner", "task", "--runtime-api-address", address,
            "--site-config", str(site_config), "--parent-pid", str(parent_pid)]


def serve(address: str, site_config: Path, *, parent_pid: int | None = None, auth_secret_file: Path | None = None,
          poll_s: float = 1.0) -> None:
    """Claim ClientApp tasks from the SuperNode and run each in a ``task`` process, until stopped."""
    from flwr.proto.runtime_pb2 import AcquireTaskRequest
    from flwr.supercore.app_utils import start_parent_process_monitor
    from flwr.supercore.constant import TaskType
    from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor, SuperExecAuthHttpInterceptor

    from cohort.siteconfig import load_site_config
    from fl_client.app_release import load_pin

    site_config = site_config.resolve()
    pin = load_pin(load_site_config(site_config))  # fail now on a bad pin, not at the first run
    log.info("serving site %s on %s: runs pinned to %s; the ClientApp is the installed %s",
             site_config, address, pin.expected() if pin else "nothing (no app_release: every run is refused)",
             INSTALLED_CLIENTAPP)
    interceptors: list[object] = [RuntimeVersionHttpInterceptor(component_name="SuperExec")]
    secret = auth_secret_file.read_bytes() if auth_secret_file else None
    if secret:
        interceptors.append(SuperExecAuthHttpInterceptor(master_secret=secret, protected_methods=frozenset({_ACQUIRE})))
    if parent_pid is not None:
        start_parent_process_monitor(parent_pid)  # SIGINT here when the SuperNode is gone
    client = _client(address, interceptors)
    children: list[subprocess.Popen[bytes]] = []
    try:
        while True:
            res = client.AcquireTask(AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP.value]))
            if auth_secret_file is not None:  # the SuperNode has read it (it authenticated us): remove it
                _remove_secret(auth_secret_file)
                auth_secret_file = None
            if res.HasField("task") and res.token:
                log.info("task %d of run %d: starting a task process", res.task.task_id, res.task.run_id)
                env = dict(os.environ, **{TOKEN_ENV: res.token})
                children.append(subprocess.Popen(task_command(address, site_config, os.getpid()), env=env))
            children = [c for c in children if c.poll() is None]
            time.sleep(poll_s)
    except KeyboardInterrupt:
        log.info("stopping (the SuperNode is gone or a signal came)")
    finally:
        client.close()
        for child in children:
            if child.poll() is None:
                child.terminate()


def _remove_secret(path: Path) -> None:
    path.unlink(missing_ok=True)
    if path.parent.name.startswith("fedcohort-runner-"):
        shutil.rmtree(path.parent, ignore_errors=True)


def run_task(address: str, token: str, site_config: Path, *, parent_pid: int | None = None) -> int:
    """One ClientApp task: pull, check the FAB against the pin, run the installed ClientApp or refuse."""
    from flwr.app import Message
    from flwr.app.error import Error
    from flwr.common.constant import ErrorCode, SubStatus
    from flwr.supercore.app_utils import start_parent_process_monitor
    from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
    from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor
    from flwr.supernode.runtime.run_clientapp import pull_task_input, push_message, push_task_output

    from cohort.siteconfig import load_site_config
    from fl_client.app_release import RUN_CONFIG_SIGNATURE, fab_sha256, load_pin

    if parent_pid is not None:
        start_parent_process_monitor(parent_pid)
    client = _client(address, [RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"),
                               RuntimeTokenHttpInterceptor(token)])
    heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))
    heartbeat.start()
    message = context = reply = None
    sub_status, details, code = SubStatus.FAILED, "ClientApp task failed due to unknown reason", 1
    try:
        message, context, run, fab = pull_task_input(client)
        site = load_site_config(site_config)
        pin = load_pin(site)
        if pin is None:
            accepted, reason = False, (f"received sha256 {fab_sha256(fab.content)}, expected a pinned release, but "
                                       f"{site_config} has no app_release section")
        else:
            verdict = pin.check(fab.content, str(context.run_config.get(RUN_CONFIG_SIGNATURE, "")))
            accepted, reason = verdict.accepted, verdict.reason
        if not accepted:
            log.error("refused run %d (%s) at site %s: %s", run.run_id, message.metadata.message_type,
                      site.site_id, reason)
            reply = Message(Error(code=ErrorCode.INVALID_FAB, reason=f"site {site.site_id} refused the run: {reason}"),
                            reply_to=message)
            details, code = reason, 3
        else:
            from fl_client.client_app import app  # the site's installation, never the bundle

            log.info("run %d (%s): %s; running the installed %s", run.run_id, message.metadata.message_type,
                     reason, INSTALLED_CLIENTAPP)
            reply = app(message=message, context=context)
            sub_status, details, code = SubStatus.COMPLETED, "", 0
    except Exception as exc:  # as flwr-clientapp: an error reply, and the reason in the task status
        log.exception("the ClientApp task failed")
        details = f"{type(exc)}:<'{exc}'>"
        if message is not None:
            reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=details), reply_to=message)
    finally:
        try:
            if reply is not None and context is not None:
                push_message(client, reply, context)
        except Exception:
            log.exception("failed to push the reply")
            code = code or 1
        push_task_output(client=client, context=context, sub_status=sub_status, details=details)
        heartbeat.stop()
        client.close()
    return code


def main(argv: list[str] | None = None) -> int:
    handler = logging.StreamHandler(sys.stderr)  # our lines only; Flower logs through its own handler
    handler.setFormatter(logging.Formatter("%(levelname)s fedcohort-runner: %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    p = argparse.ArgumentParser(prog="python -m fl_client.pinned_runner", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("serve", "task"):
        s = sub.add_parser(name)
        s.add_argument("--runtime-api-address", required=True, help="the SuperNode's runtime API, 127.0.0.1:PORT")
        s.add_argument("--site-config", type=Path, required=True)
        s.add_argument("--parent-pid", type=int, default=None, help="exit when this process is gone")
        if name == "serve":
            s.add_argument("--auth-secret-file", type=Path, default=None,
                           help="the SuperExec auth secret shared with the SuperNode (removed once used)")
    args = p.parse_args(argv)
    if args.cmd == "serve":
        serve(args.runtime_api_address, args.site_config, parent_pid=args.parent_pid,
              auth_secret_file=args.auth_secret_file)
        return 0
    token = os.environ.pop(TOKEN_ENV, "")
    if not token:
        p.error(f"the task's token is expected in ${TOKEN_ENV}")
    return run_task(args.runtime_api_address, token, args.site_config, parent_pid=args.parent_pid)


if __name__ == "__main__":
    sys.exit(main())
