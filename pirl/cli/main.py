"""``pirl``: the command line. Each subcommand builds its typed config from ``--config``
(a YAML path or a preset name in ``configs/<command>/`` or ``configs/``) and trailing
``key=value`` overrides, then calls its entry function.

The dispatch table :data:`COMMANDS` names every entry point as ``module:function`` and its
config class as ``module:Class``; they are imported only when that subcommand runs, so a
missing or heavy module never slows down or breaks the others. An entry function is called
as ``fn(cfg, args) -> int | None`` with the resolved config and the parsed arguments
(``args.run_dir``, ``args.resume``, ``args.checkpoint``, ``args.runs``, ...).

A :class:`pirl.errors.UserError` raised while a command runs (a missing or damaged file, an
unknown task, a simulator that is not installed) is printed as its one-line message with exit
status 2; ``--debug`` or ``PIRL_DEBUG=1`` prints the traceback too. Other exceptions are bugs
and keep their traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from pirl import __version__
from pirl.config import PACKAGE_CONFIGS, ConfigError, describe, dump_yaml, list_presets, load_config, load_yaml, migrate_moved_keys
from pirl.errors import UserError


@dataclass(frozen=True)
class Command:
    """One subcommand: where its entry function and its config class live."""

    help: str
    """One line for ``pirl --help``."""
    target: str
    """``module:function`` called as ``fn(cfg, args) -> int | None``."""
    config: str
    """``module:Class`` of its typed config (a frozen dataclass)."""
    run_dir: bool = True
    """Takes ``--run-dir`` (where it writes its outputs)."""


COMMANDS: dict[str, Command] = {
    "collect": Command("collect expert demonstrations into a dataset",
                       "pirl.data.collect:collect_main", "pirl.data.collect:CollectConfig"),
    "sft": Command("supervised flow-matching fine-tuning on demonstrations",
                   "pirl.train.sft:sft_main", "pirl.train.sft:SFTConfig"),
    "train": Command("online RL fine-tuning (PPO / GRPO / LOOP with Flow-Noise / Flow-SDE)",
                     "pirl.train.rl:train_main", "pirl.train.rl:TrainConfig"),
    "eval": Command("evaluate a checkpoint on held-out seeds (success rates, videos)",
                    "pirl.train.evaluate:eval_main", "pirl.train.evaluate:EvalConfig"),
    "report": Command("plot success curves and tabulate results of run directories",
                      "pirl.train.report:report_main", "pirl.train.report:ReportConfig", run_dir=False),
    "demo": Command("a short end-to-end run (SFT then RL) on a small task set",
                    "pirl.demo:demo_main", "pirl.demo:DemoConfig"),
}

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class Unavailable(RuntimeError):
    """A subcommand's module is not importable (not built yet, or a missing dependency)."""


def resolve(ref: str) -> Any:
    """Imports ``module:attr``; raises :class:`Unavailable` saying what is missing."""
    module, _, attr = ref.partition(":")
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        raise Unavailable(f"cannot import {module} ({e})") from e
    try:
        return getattr(mod, attr)
    except AttributeError as e:
        raise Unavailable(f"{module} has no {attr!r}") from e


def preset_dirs(command: str) -> list[Path]:
    """Where ``--config NAME`` is looked up: ``configs/<command>/``, then ``configs/``, in the
    current directory first, then in the pirl checkout."""
    roots = [Path("configs"), PACKAGE_CONFIGS]
    out: list[Path] = []
    for r in roots:
        for d in (r / command, r):
            if d.resolve() not in [o.resolve() for o in out]:
                out.append(d)
    return out


class _HelpAction(argparse.Action):
    """``-h/--help``: the usual help, then every config field with its docstring."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, **kw: Any) -> None:
        super().__init__(option_strings, dest=dest, default=argparse.SUPPRESS, nargs=0,
                         help="show this help (with every config key) and exit")

    def __call__(self, parser: argparse.ArgumentParser, namespace: Any, values: Any, option_string: Any = None) -> None:
        parser.print_help()
        name = getattr(parser, "_pirl_command", None)
        if name is not None:
            cmd = COMMANDS[name]
            try:
                cls = resolve(cmd.config)
                print(f"\nconfig keys ({cls.__name__}; set with key=value, nested keys dotted):")
                print(describe(cls))
            except (Unavailable, ConfigError) as e:
                print(f"\nconfig keys: not available yet: {e}")
            presets = list_presets(preset_dirs(name))
            if presets:
                print(f"\npresets: {', '.join(presets)}")
        parser.exit(0)


def build_parser() -> argparse.ArgumentParser:
    """The ``pirl`` parser with one subparser per entry of :data:`COMMANDS`."""
    parser = argparse.ArgumentParser(
        prog="pirl", add_help=False,
        description="Online RL fine-tuning of flow-matching robot policies.",
        epilog="Run 'pirl COMMAND --help' for a command's options and config keys.",
    )
    parser.add_argument("-h", "--help", action=_HelpAction)
    parser.add_argument("--version", action="version", version=f"pirl {__version__}")
    debug_help = "on a user error (missing file, unknown task, ...) also print the traceback (or PIRL_DEBUG=1)"
    parser.add_argument("--debug", action="store_true", help=debug_help)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, cmd in COMMANDS.items():
        p = sub.add_parser(name, help=cmd.help, description=cmd.help, add_help=False,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p._pirl_command = name  # type: ignore[attr-defined]
        p.add_argument("-h", "--help", action=_HelpAction)
        p.add_argument("-c", "--config", metavar="PRESET|PATH",
                       help="YAML config file or preset name (default: the config class's defaults)")
        p.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
        # SUPPRESS: `pirl --debug train` must not be reset to False by the subcommand's default
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=debug_help)
        if cmd.run_dir:
            p.add_argument("--run-dir", type=Path, metavar="DIR",
                           help="where the run writes its outputs (default: runs/<command>-<time>)")
        if name == "train":
            p.add_argument("--resume", type=Path, metavar="RUN_DIR",
                           help="continue a run from its latest checkpoint, with its saved config "
                                "(iterations=N / time_limit_s=S extend it)")
        if name == "eval":
            p.add_argument("--checkpoint", type=Path, metavar="PATH",
                           help="the policy to evaluate: a policy file, or a `pirl train` run directory (its "
                                "policy_best.safetensors, else policy_latest.safetensors); the same as policy=PATH")
        if name == "report":
            p.add_argument("items", nargs="*", metavar="RUN_DIR|key=value",
                           help="run directories to report on, and config overrides")
        else:
            p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides (dotted keys)")
    return parser


def _unknown_option(name: str, cmd: Any, token: str) -> str:
    """What to say for an option the command lacks: a config key given as ``--key`` is named in its key=value form."""
    key = token.lstrip("-").split("=", 1)[0]
    fields = {f.name for f in dataclasses.fields(resolve(cmd.config))}
    if token.startswith("-") and key.replace("-", "_").split(".")[0] in fields:
        key = key.replace("-", "_")
        return (f"unknown option {token}: config keys are set as key=value, without dashes ({key}=VALUE); "
                f"`pirl {name} --help` lists them")
    return f"unrecognized argument {token}: `pirl {name} --help` lists the options and config keys"


def _checkpoint_policy(path: Path) -> Path:
    """``--checkpoint``'s policy: the file itself, or a run directory's best (else latest) policy file."""
    for name in ("policy_best.safetensors", "policy_latest.safetensors"):
        if path.is_dir() and (path / name).is_file():
            return path / name
    return path  # a file, or a directory the policy loader names the problem of


RESUME_EXTENDS = ("iterations", "time_limit_s")
"""The keys `pirl train --resume RUN key=value` may change: they move the run's end, not what it computes."""


def _split_report_items(items: Sequence[str]) -> tuple[list[str], list[str]]:
    runs, overrides = [], []
    for it in items:
        (overrides if "=" in it and not Path(it).is_dir() else runs).append(it)
    return runs, overrides


def env_of_policy_file(args) -> Optional[dict[str, Any]]:
    """The env a pirl policy file records (the simulator and task order it was trained in), when the command line
    names that file and does not choose env.suite; without its tasks when the command line gives env.tasks (a LIBERO
    policy's `env.tasks=libero_object:0,5` stays LIBERO, with the state the policy reads); None otherwise (the
    policy's own loading reports a bad file). Other env.* given (a chunk, an assets folder) apply on top."""
    overrides = list(getattr(args, "overrides", ()) or ())
    keys = {o.split("=", 1)[0] for o in overrides}
    if keys & {"env", "env.suite"}:
        return None
    policy = next((o.split("=", 1)[1] for o in reversed(overrides) if o.startswith("policy=")), None)
    if not policy or not policy.endswith(".safetensors") or not Path(policy).is_file():
        return None
    import json

    from safetensors import safe_open

    from pirl.envs.registry import env_from_record
    from pirl.policies.io import IMAGE_KINDS

    try:
        with safe_open(policy, framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
        record = json.loads(meta.get("extra", "{}")).get("env")
    except Exception:  # noqa: BLE001 - not readable here: the policy loader says why, with the fix
        return None
    if not isinstance(record, dict):
        return None
    env = env_from_record(record, images=meta.get("pirl_kind") in IMAGE_KINDS)
    if "env.tasks" in keys:
        env.pop("tasks", None)
    return env


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``pirl`` script; returns the exit status."""
    try:
        return _main(argv)
    except BrokenPipeError:  # `pirl ... | head` closed stdout: stop quietly, as a Unix tool does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the interpreter's final flush would fail too
        return 141  # 128 + SIGPIPE, what the shell reports for such a pipeline stage


def _main(argv: Optional[Sequence[str]]) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if args.command is None:
        if unknown:
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        parser.print_help()
        return EXIT_USAGE
    name, cmd = args.command, COMMANDS[args.command]
    # argparse fills a nargs="*" positional once: key=value items after an option (`policy=P --run-dir D
    # iterations=3`) come back unparsed, and belong to the same list
    later = [t for t in unknown if "=" in t and not t.startswith("-")]
    unknown = [t for t in unknown if t not in later]
    if unknown:
        print(f"pirl {name}: error: {_unknown_option(name, cmd, unknown[0])}", file=sys.stderr)
        return EXIT_USAGE
    if name == "report":
        args.runs, args.overrides = _split_report_items([*args.items, *later])
    else:
        args.overrides = [*args.overrides, *later]
    if getattr(args, "checkpoint", None) is not None:
        if any(o.startswith("policy=") for o in args.overrides):
            print(f"pirl {name}: error: --checkpoint and policy= both name the policy: give one", file=sys.stderr)
            return EXIT_USAGE
        args.overrides.append(f"policy={_checkpoint_policy(args.checkpoint)}")

    def fail(msg: str) -> int:
        print(f"pirl {name}: error: {' '.join(msg.split())}", file=sys.stderr)  # one line, whatever the message
        return EXIT_USAGE

    source: Any = args.config
    if getattr(args, "resume", None) is not None:
        fixed = [o for o in args.overrides if o.split("=", 1)[0] not in RESUME_EXTENDS]
        if args.config is not None or fixed:
            return fail("--resume continues a run with its saved config; --config and overrides other than "
                        f"{' / '.join(RESUME_EXTENDS)} (to extend it) are not allowed, got "
                        f"{fixed[0] if fixed else '--config'} (start a new run to change the config)")
        source = args.resume / "config.yaml"
        if not source.is_file():
            return fail(f"{args.resume}: not a run directory (no config.yaml)")
        try:
            saved = load_yaml(source, ())
        except ConfigError as e:
            return fail(str(e))
        if isinstance(saved, dict) and "dataset" in saved:  # pirl sft's config: no RL run to continue
            return fail(f"{args.resume} is a `pirl sft` run, not a `pirl train` one: start RL from it with "
                        f"`pirl train policy={args.resume / 'final.safetensors'}`")
        if isinstance(saved, dict) and "demos_per_task" in saved:  # pirl demo's: its RL stage is a train run
            return fail(f"{args.resume} is a `pirl demo` run: its RL stage resumes with "
                        f"`pirl train --resume {args.resume / 'rl'}`")
    if name in ("train", "eval") and getattr(args, "resume", None) is None and args.config is None:
        recorded = env_of_policy_file(args)
        if recorded:
            source = {"env": recorded}
            print(f"pirl {name}: env from the policy file's record: "
                  + ", ".join(f"{k}={v}" for k, v in recorded.items())
                  + (", the tasks from env.tasks" if "tasks" not in recorded else "")
                  + " (set env.suite / env.tasks or --config to choose another)",
                  file=sys.stderr)  # stderr: --print-config's stdout stays YAML
    try:
        cls = resolve(cmd.config)
        if getattr(args, "resume", None) is not None:  # a run saved by an older pirl: its keys' new places
            source, notes = migrate_moved_keys(cls, saved)  # the config.yaml read above
            if notes:
                print(f"pirl {name}: {args.resume}/config.yaml was saved with keys that have moved since; read as "
                      f"{', '.join(notes)}")
        cfg = load_config(cls, source, args.overrides, search=preset_dirs(name))
    except Unavailable as e:
        return fail(f"not available yet: {e}")
    except ConfigError as e:
        return fail(str(e))
    if args.print_config:
        print(dump_yaml(cfg), end="")
        return 0
    try:
        fn: Callable[..., Optional[int]] = resolve(cmd.target)
    except Unavailable as e:
        return fail(f"not available yet: {e}")
    try:
        rc = fn(cfg, args)
    except KeyboardInterrupt:  # a second Ctrl-C (the first one is handled by the loop)
        print(f"pirl {name}: aborted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except UserError as e:
        if args.debug or os.environ.get("PIRL_DEBUG", "") not in ("", "0"):
            traceback.print_exc()
        return fail(str(e))
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
