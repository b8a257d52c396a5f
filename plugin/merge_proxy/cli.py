"""The ``merge-proxy`` command line.

Each subcommand lives in its own module exposing ``register(subparsers)``; this module only wires them
together and turns our own exceptions into one line on stderr and a non-zero exit, so a user sees the
cause and the fix instead of a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence

from merge_proxy import __version__
from merge_proxy.errors import MergeProxyError, describe_os_error

#: Modules that add a subcommand, in the order ``--help`` lists them.
_SUBCOMMAND_MODULES: tuple[str, ...] = (
    "merge_proxy.commands.train",
    "merge_proxy.commands.publish",
    "merge_proxy.commands.experts",
    "merge_proxy.commands.merge",
    "merge_proxy.commands.sweep",
    "merge_proxy.commands.report",
    "merge_proxy.demo",
)


def build_parser() -> argparse.ArgumentParser:
    """The full parser; subcommand modules are imported here but import nothing heavy themselves."""
    import importlib

    parser = argparse.ArgumentParser(
        prog="merge-proxy",
        description="Choose SFT data mixtures with merged expert proxies "
        "(LLaMA-Factory, lmms-eval, Hugging Face Hub).",
    )
    parser.add_argument("--version", action="version", version=f"merge-proxy {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log at DEBUG level instead of INFO"
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _SUBCOMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if not args.verbose:  # one line per HTTP request drowns what the user needs to see
        for noisy in ("httpx", "httpcore", "huggingface_hub"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    # Commands that write outputs which must appear whole or not at all unwind on SIGTERM as on
    # Ctrl-C; the others (train: torchrun runs its own SIGTERM shutdown) keep the default.
    restore = (_terminate_as_interrupt(hangup=getattr(args, "unwind_on_sighup", False))
               if getattr(args, "unwind_on_sigterm", False) else None)
    try:
        return int(args.handler(args) or 0)
    except MergeProxyError as err:
        print(f"merge-proxy {args.command}: error: {err}", file=sys.stderr)
        return err.exit_code
    except BrokenPipeError:  # the reader went away (`| head`): quiet, as a process killed by SIGPIPE
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        return 128 + signal.SIGPIPE
    except OSError as err:  # an output path that cannot be written: a file in the way, no permission, a full disk
        print(f"merge-proxy {args.command}: error: {describe_os_error(err)}", file=sys.stderr)
        return 1
    except _Terminated as stop:
        print(f"merge-proxy {args.command}: terminated ({signal.Signals(stop.signum).name})", file=sys.stderr)
        return 128 + stop.signum
    except KeyboardInterrupt:
        print(f"merge-proxy {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        if restore is not None:
            restore()


class _Terminated(KeyboardInterrupt):
    """SIGTERM (SLURM's time limit, ``scancel``, ``kill``) or SIGHUP (a closed terminal or dropped ssh
    session) raised like Ctrl-C in the main thread."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _terminate_as_interrupt(hangup: bool = False) -> Callable[[], None] | None:
    """Make SIGTERM (and with ``hangup``, SIGHUP) unwind like Ctrl-C, so atomic outputs and journals
    clean up instead of leaving a partial directory; returns what puts the previous handlers back (None
    off the main thread). A SIGHUP already ignored (``nohup``) stays ignored.

    Only this process unwinds: forked children (datasets.map workers, multiprocessing pools, which
    are stopped with SIGTERM) inherit the handler and die by the default action instead. A second
    signal during the clean-up kills at once.
    """
    if threading.current_thread() is not threading.main_thread():
        return None
    owner = os.getpid()

    def handler(signum: int, frame: object) -> None:
        signal.signal(signum, signal.SIG_DFL)
        if os.getpid() != owner:
            os.kill(os.getpid(), signum)
            return
        raise _Terminated(signum)

    previous = {}
    for signum in (signal.SIGTERM, signal.SIGHUP) if hangup else (signal.SIGTERM,):
        before = signal.getsignal(signum)
        if signum == signal.SIGHUP and before == signal.SIG_IGN:
            continue
        previous[signum] = before
        signal.signal(signum, handler)

    def restore() -> None:
        for signum, before in previous.items():
            signal.signal(signum, before if before is not None else signal.SIG_DFL)

    return restore


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
