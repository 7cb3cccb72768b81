"""The library speaks its own language: no message raised in pipeline/ or trainer/ names an option
of the command line or ``python cli.py``; the fix travels as fields that ``cli.describe_error``
words (tested in test_errors_cli.py)."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import click

import cli

ROOT = Path(__file__).resolve().parent.parent

# Files whose messages still name options, converted by another branch (issue 12); the lead
# empties this list when the branches meet. A file listed here that no longer names one fails too.
TO_CONVERT: set[str] = set()
NOT_MESSAGES = {"add_argument", "add_parser", "ArgumentParser", "run", "check_output", "Popen"}


def cli_options() -> set[str]:
    """Every long option of the command line (the group's and each command's)."""
    params = list(cli.main.params) + [p for c in cli.main.commands.values() for p in c.params]
    return {o for p in params if isinstance(p, click.Option) for o in p.opts + p.secondary_opts
            if o.startswith("--")}


def message_strings(tree: ast.AST):
    """``(line, text)`` of every string that can end up in a message: all string literals but
    docstrings and the arguments of argparse or subprocess calls (another program's options)."""
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) \
                and node.body and isinstance(node.body[0], ast.Expr):
            skip.add(id(node.body[0].value))
        if isinstance(node, ast.Call):
            func = node.func
            if (func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")) \
                    in NOT_MESSAGES:
                skip.update(id(piece) for piece in ast.walk(node))
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            yield node.lineno, node.value


def cli_words(text: str, options: set[str]) -> list[str]:
    found = [o for o in re.findall(r"(?<![\w-])--[a-z][\w-]*", text) if o in options]
    return found + (["cli.py"] if "cli.py" in text else [])


def offending_files() -> dict[str, list[str]]:
    options, found = cli_options(), {}
    for path in sorted([*ROOT.glob("pipeline/**/*.py"), *ROOT.glob("trainer/**/*.py")]):
        name = path.relative_to(ROOT).as_posix()
        for line, text in message_strings(ast.parse(path.read_text(encoding="utf-8"))):
            words = cli_words(text, options)
            if words:
                found.setdefault(name, []).append(f"{name}:{line}: {', '.join(words)}")
    return found


def test_the_scan_finds_an_option_in_a_raised_message():
    options = cli_options()
    assert {"--k", "--overwrite", "--image-dir", "--no-inter", "--version"} <= options
    tree = ast.parse('def f():\n    """Docstrings may say --overwrite."""\n'
                     '    raise MissingInput(f"{x}: pass --overwrite")\n'
                     'def g():\n    hint = " (see `python cli.py extract`)"\n    raise E(hint)\n'
                     'def h():\n    run(["git", "--k"])\n')
    hits = [cli_words(text, options) for _, text in sorted(message_strings(tree))]
    assert [h for h in hits if h] == [["--overwrite"], ["cli.py"]]


def test_no_library_message_names_a_command_line_option():
    found = offending_files()
    new = {name: hits for name, hits in found.items() if name not in TO_CONVERT}
    assert not new, "messages name options or cli.py (put the fix in fields):\n" + "\n".join(
        hit for hits in new.values() for hit in hits)
    stale = sorted(TO_CONVERT - set(found))
    assert not stale, f"converted already; remove from TO_CONVERT: {stale}"
