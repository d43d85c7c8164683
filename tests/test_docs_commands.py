"""Every `tools/...` command the docs show works: the script exists, each `--flag` is one its
argument parser accepts (with a value among its choices, a registered split for the dataset
options), each `configs/...yaml` exists, and each `KEY` override is a config key
that the tool takes where the command puts it (trailing, or after `--opts` for the tools whose
overrides go there).

Commands are read from README.md, docs/**/*.md, datasets/README.md and configs/**/README.md (fenced
code blocks and inline code that start with `tools/`, after an optional `python`, `$ ` prompt or
VAR=value prefix; shell variables set earlier in the block expanded), from the help texts of the
tools themselves (their string literals' lines that start with `tools/`) and from the Makefile's
recipes. Placeholders (CFG, W, $D, <...>, ...) are not checked: only flags,
`configs/` paths and upper-case dotted keys under a top-level config node (MODEL.*, CAD.*, ...) are.

Each tool's parser is the one it really builds: its script runs in this process, as
`python tools/X.py --help` would, up to its first parse_args/parse_known_args call, which returns
the parser here instead of parsing (nothing else of the tool runs).
"""
import argparse
import ast
import functools
import glob
import itertools
import re
import runpy
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Tuple
from unittest import mock

import pytest
from detectron2.data import DatasetCatalog

from cad.engine.setup import default_cfg, is_config_key

from conftest import REPO

DOC_FILES = sorted({REPO / "README.md", REPO / "datasets" / "README.md",
                    *(REPO / "docs").rglob("*.md"), *(REPO / "configs").rglob("README.md")})
TOOL_FILES = sorted({*(REPO / "tools").rglob("*.py"), *(REPO / "cad").rglob("cli.py")})

# Options whose value is a split name (registered, or a coco:/images: spec, not checked).
DATASET_FLAGS = ("--dataset", "--train-dataset", "--test-dataset")
KEY = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+$")
SCRIPT = re.compile(r"^tools/[\w/]+\.py$")
FENCE = re.compile(r"^```.*?^```", re.M | re.S)
INLINE = re.compile(r"`([^`]+)`")
PREFIX = re.compile(r"^(\$\s+|(\w+=\S*\s+)+|(\.venv/bin/)?python3?\s+)+")


@dataclass(frozen=True)
class Command:
    where: str  # file:line
    text: str


def _tokens(command: str, strip: str = "[](){},|") -> List[str]:
    """Shell words of `command` without the brackets of optional parts."""
    try:
        tokens = shlex.split(command)
    except ValueError:  # an unbalanced quote in a placeholder
        tokens = command.split()
    return [t.strip(strip) for t in tokens]


def _expand(text: str, env: Dict[str, str]) -> str:
    """`$NAME`, `${NAME}` and `$(NAME)` (Makefile) replaced for the names set earlier in the block."""
    return re.sub(r"\$(?:\{(\w+)\}|\((\w+)\)|(\w+))",
                  lambda m: env.get(m.group(1) or m.group(2) or m.group(3), m.group(0)), text)


def _segments(text: str, env: Dict[str, str]) -> Iterator[str]:
    """The `tools/...` commands of one shell line (split at `&&` and `;`; prompt, `python` and
    VAR=value prefixes removed; variables set earlier in the block expanded). A part that only
    sets variables (`W=work; CPU="A 1 B 2"`) adds them to `env`."""
    for part in re.split(r"&&|;", text):
        part = part.strip()
        assignment = re.fullmatch(r"(\w+)\s*[:?]?=\s*(.*)", part)
        words = _tokens(assignment.group(2), strip="") if assignment else []
        if len(words) == 1:  # NAME=value, NAME="a b" (not NAME=value tools/x.py)
            env[assignment.group(1)] = _expand(words[0], env)
            continue
        part = PREFIX.sub("", _expand(part, env))
        if SCRIPT.match(part.split(" ", 1)[0]):
            yield part


def _shell_lines(block: str, first_line: int) -> Iterator[Tuple[int, str]]:
    """(line number, logical line) with backslash continuations joined and comments removed."""
    lines = block.split("\n")
    i = 0
    while i < len(lines):
        start, line = i, lines[i]
        while line.rstrip().endswith("\\") and i + 1 < len(lines):
            i += 1
            line = line.rstrip()[:-1] + " " + lines[i].strip()
        i += 1
        yield first_line + start, re.split(r"(?:^|\s)#", line, maxsplit=1)[0]


def _block_commands(block: str, first_line: int, where: str) -> List[Command]:
    env: Dict[str, str] = {}
    return [Command(f"{where}:{number}", c) for number, line in _shell_lines(block, first_line) for c in _segments(line, env)]


def doc_commands(path: Path) -> List[Command]:
    """Commands in the code blocks and inline code of a Markdown file."""
    text, rel = path.read_text(), path.relative_to(REPO)
    out = []
    for block in FENCE.finditer(text):
        out += _block_commands(block.group(0), text.count("\n", 0, block.start()) + 1, str(rel))
    prose = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)
    for span in INLINE.finditer(prose):
        out += _block_commands(" ".join(span.group(1).split()), prose.count("\n", 0, span.start()) + 1, str(rel))
    return out


def help_commands(path: Path) -> List[Command]:
    """Commands in the string literals (docstrings, epilogs) of a tool's source."""
    rel = str(path.relative_to(REPO))
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and "tools/" in node.value:
            out += _block_commands("\n".join(line.strip() for line in node.value.split("\n")), node.lineno, rel)
    return out


def makefile_commands(path: Path) -> List[Command]:
    """Commands of the Makefile's recipes, its variables expanded."""
    text = path.read_text().replace("$(PY) ", "")
    recipe = "\n".join(line.lstrip("\t@") for line in text.split("\n"))
    return _block_commands(recipe, 1, path.name)


ALL_COMMANDS = ([c for f in DOC_FILES for c in doc_commands(f)] + [c for f in TOOL_FILES for c in help_commands(f)]
                + makefile_commands(REPO / "Makefile"))


class _Parsed(Exception):
    def __init__(self, parser: argparse.ArgumentParser):
        super().__init__()
        self.parser = parser


def _return_parser(self, args=None, namespace=None):
    raise _Parsed(self)


@functools.lru_cache(maxsize=None)
def tool_parser(script: str) -> argparse.ArgumentParser:
    """The parser `script` builds (module docstring), cached per script."""
    path = REPO / script
    with mock.patch.object(argparse.ArgumentParser, "parse_known_args", _return_parser), \
            mock.patch.object(sys, "argv", [str(path)]), mock.patch.object(sys, "path", [str(path.parent), *sys.path]):
        try:
            runpy.run_path(str(path), run_name="__main__")
        except _Parsed as e:
            return e.parser
    raise AssertionError(f"{script} returned without parsing its arguments")


@functools.lru_cache(maxsize=None)
def _cfg():
    return default_cfg()


def _expand_braces(pattern: str) -> List[str]:
    """'a{b,c}d' -> ['abd', 'acd'] (shell brace expansion, no nesting)."""
    parts = re.split(r"\{([^{}]*,[^{}]*)\}", pattern)
    choices = [[p] if i % 2 == 0 else p.split(",") for i, p in enumerate(parts)]
    return ["".join(c) for c in itertools.product(*choices)]


def _placeholder(value: str) -> bool:
    """CFG, W, N, $W/x, <name>, ..., an empty value or the next option."""
    return not value or value.startswith("-") or bool(re.search(r"[$<]|\.\.\.|^[A-Z][A-Z0-9_]*$", value))


def problems(command: str) -> List[str]:
    """What is wrong with one command; [] when it works."""
    tokens = [part for t in _tokens(command) for part in (t.split("=", 1) if t.startswith("--") else [t])]
    script = tokens[0]
    if not (REPO / script).is_file():
        return [f"{script} does not exist"]
    configs = [t for t in tokens if t.startswith("configs/") and t.endswith(".yaml") and not re.search(r"[<$]|\.\.\.", t)]
    out = [f"{c} does not exist" for c in configs if not any(glob.glob(str(REPO / p)) for p in _expand_braces(c))]
    flags = [t for t in tokens if re.match(r"^--[a-z]", t)]
    # An override: KEY.SUB under a top-level node of the config (IMG_0001.JPG is a file name).
    keys = [(i, t) for i, t in enumerate(tokens) if KEY.match(t) and t.split(".")[0] in _cfg()]
    if not (flags or keys):
        return out
    parser = tool_parser(script)
    known = parser._option_string_actions
    out += [f"{script} has no option {f}" for f in flags if f not in known]
    for flag, value in zip(tokens, tokens[1:] + [""]):
        action = known.get(flag)
        if action is None or action.nargs == 0 or _placeholder(value):
            continue
        if action.choices is not None:
            out += [f"{flag} {v}: not one of {', '.join(map(str, action.choices))}" for v in value.split("|")
                    if v not in map(str, action.choices)]
        if flag in DATASET_FLAGS and ":" not in value and value not in DatasetCatalog.list():
            out.append(f"{flag} {value}: no such registered split")
    opts = [a for a in parser._actions if a.dest == "opts"]
    for i, key in keys:
        if not is_config_key(_cfg(), key):
            out.append(f"{key} is not a config key")
        elif not opts:
            out.append(f"{script} takes no config overrides ({key})")
        elif opts[0].option_strings and not any(t in opts[0].option_strings for t in tokens[:i]):
            out.append(f"{script} takes overrides after {opts[0].option_strings[0]} only ({key})")
    return out


def test_docs_show_commands():
    """The extraction finds the commands of every source (guards against a parser that finds none)."""
    where = {c.where.split(":")[0] for c in ALL_COMMANDS}
    assert {"README.md", "datasets/README.md", "docs/motion.md", "docs/guided_distillation.md",
            "tools/demo.py", "cad/engine/cli.py", "Makefile"} <= where
    assert len(ALL_COMMANDS) > 100
    env = {}
    assert list(_segments('C=configs/x; S="A.B 1"', env)) == [] and env == {"C": "configs/x", "S": "A.B 1"}
    assert list(_segments("D=/data python tools/x.py --config-file $C/y.yaml $S && tools/z.py", env)) == [
        "tools/x.py --config-file configs/x/y.yaml A.B 1", "tools/z.py"]


def test_problems_finds_each_kind_of_error():
    assert problems("tools/nothing.py --x") == ["tools/nothing.py does not exist"]
    assert problems("tools/train_net.py --config-file configs/none.yaml --eval-only --num-gpu 8 MODEL.WEIGHT W") == [
        "configs/none.yaml does not exist", "tools/train_net.py has no option --num-gpu", "MODEL.WEIGHT is not a config key"]
    assert problems("tools/demo.py --config-file CFG --input a.jpg --output o MODEL.WEIGHTS W") == [
        "tools/demo.py takes overrides after --opts only (MODEL.WEIGHTS)"]
    assert problems("tools/discover.py lost --images DIR --out x.json MODEL.WEIGHTS W") == [
        "tools/discover.py takes no config overrides (MODEL.WEIGHTS)"]
    assert problems("tools/eval_pseudo_masks.py --gt G --pred P --iou-type segm|box") == [
        "--iou-type box: not one of segm, bbox"]
    assert problems("tools/discover.py lost --dataset=voc07_train --out x.json") == [
        "--dataset voc07_train: no such registered split"]
    assert problems("tools/demo.py --config-file CFG --input IMG_0001.JPG --output o --opts MODEL.WEIGHTS W") == []
    assert problems("tools/train_net.py --config-file configs/GuidedDistillation/coco/{r50,dinov2}_teacher_1pct.yaml") == []


@pytest.mark.parametrize("where", sorted({c.where.split(":")[0] for c in ALL_COMMANDS}))
def test_commands_work(where):
    broken = [f"{c.where}: {p}: {c.text}" for c in ALL_COMMANDS if c.where.split(":")[0] == where for p in problems(c.text)]
    assert not broken, "\n".join(broken)
