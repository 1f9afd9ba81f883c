"""Static checks of deploy/ files that Docker cannot run here: commands, flags, paths, pins.

Flags are checked against the ``--help`` of the tools installed in this environment, so a
flag that flwr or MLflow renamed or dropped fails the test instead of a hospital's start-up.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from functools import cache
from pathlib import Path

BIN = Path(sys.executable).parent
# Sub-command depth of each tool's command line: `flwr supernode register` has two.
SUBCOMMANDS = {"flwr": 2, "mlflow": 2, "flower-superlink": 0, "flower-supernode": 0}
_FLAG = re.compile(r"(?<![\w-])(--[a-z0-9][a-z0-9-]*)")
_ENV_DEFAULT = re.compile(r"\$\{(\w+):-([^}]*)\}")


@cache
def help_flags(command: tuple[str, ...]) -> frozenset[str]:
    """The long flags ``command --help`` lists (e.g. ``("flwr", "run")``).

    Raises
    ------
    ValueError
        If the command does not exist (its ``--help`` fails).
    """
    argv = [str(BIN / command[0]), *command[1:], "--help"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120, env={"COLUMNS": "400", "PATH": str(BIN)})
    if result.returncode != 0:
        raise ValueError(f"unknown command {' '.join(command)!r}: {result.stderr.strip()[-300:]}")
    return frozenset(_FLAG.findall(result.stdout + result.stderr))


def tool_command(argv: list[str]) -> tuple[str, ...]:
    """The command part of ``argv`` (tool plus its sub-commands, before the first option)."""
    depth = SUBCOMMANDS[argv[0]]
    words = [argv[0]]
    for word in argv[1 : 1 + depth]:
        if word.startswith("-"):
            break
        words.append(word)
    # `flwr run` takes positional args; keep only known sub-command words.
    while len(words) > 1:
        try:
            help_flags(tuple(words))
            break
        except ValueError:
            words.pop()
    return tuple(words)


def unknown_flags(argv: list[str]) -> list[str]:
    """Flags in ``argv`` that its tool does not know (``--x=value`` counts as ``--x``)."""
    known = help_flags(tool_command(argv))
    used = [word.split("=", 1)[0] for word in argv[1:] if word.startswith("--")]
    return [flag for flag in used if flag not in known]


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    instructions, pending = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        pending += " " + stripped.rstrip("\\").strip() if pending else stripped.rstrip("\\").strip()
        if not stripped.endswith("\\"):
            word, _, args = pending.partition(" ")
            instructions.append((word.upper(), args.strip()))
            pending = ""
    if pending:
        raise ValueError(f"Dockerfile ends inside a continued instruction: {pending[:80]!r}")
    return instructions


def exec_form(args: str) -> list[str]:
    """The argv of an exec-form instruction (``ENTRYPOINT ["a", "b"]``)."""
    value = json.loads(args)
    if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        raise ValueError(f"not an exec-form JSON array: {args!r}")
    return value


def with_env_defaults(text: str) -> str:
    """Compose-style ``${VAR:-default}`` replaced by its default."""
    return _ENV_DEFAULT.sub(lambda m: m.group(2), text)


def shell_commands(markdown: str) -> list[list[str]]:
    """Commands of the ```bash blocks of a Markdown text, continuation lines joined."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", markdown, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split(" #", 1)[0].strip()
            if line and not line.startswith("#"):
                for part in re.split(r"\s(?:&&|\|\||;|\|)\s", line):
                    commands.append(shlex.split(part))
    return commands
