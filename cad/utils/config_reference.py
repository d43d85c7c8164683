"""The config reference page (docs/config_reference.md), generated from `add_cad_config`.

The keys and defaults are those `add_cad_config` adds to Detectron2's `get_cfg()` (or whose
default it changes), read at run time; the meaning of each key is the comment above its
assignment in cad/config.py, read from the source (`key_comments`). A comment covers the
assignments right below it, up to the next blank line or comment. A key without a comment is an
error: every cad key has one (developers' guide).
"""
import ast
import io
import tokenize
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

from detectron2.config import CfgNode, get_cfg

import cad.config
from cad.config import CHOICES, add_cad_config

CONFIG_SOURCE = Path(cad.config.__file__)
# Where the page lives, relative to the repository root, and the command that writes it.
PAGE = "docs/config_reference.md"
COMMAND = "tools/gen_config_reference.py"


class ConfigReferenceError(ValueError):
    """A key of cad/config.py without a comment, or a key added where the source does not show it."""


@dataclass(frozen=True)
class KeyComment:
    """A key assigned in cad/config.py: the `_add_<section>_config` function that assigns it, that
    function's docstring (first paragraph, one line) and the key's comment (one line)."""

    key: str
    section: str
    section_doc: str
    comment: str


def _comment_lines(source: str) -> Dict[int, str]:
    """Line number -> text of every line that holds only a comment."""
    out = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT and not tok.line[: tok.start[1]].strip():
            out[tok.start[0]] = tok.string.lstrip("#").strip()
    return out


def _dotted(node: ast.AST, aliases: Dict[str, str]) -> Optional[str]:
    """'MODEL.MASK_FORMER.NHEADS' for `cfg.MODEL.MASK_FORMER.NHEADS` (or `mf.NHEADS` with the alias
    mf -> MODEL.MASK_FORMER); None for anything else."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name) or node.id not in aliases:
        return None
    return ".".join(filter(None, [aliases[node.id], *reversed(parts)]))


def _is_node(value: ast.AST) -> bool:
    return isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "CN"


def key_comments(source: str) -> List[KeyComment]:
    """Every key assigned in the `_add_*` functions of `source` (cad/config.py), in source order,
    with its comment block joined to one line (module docstring). Raises `ConfigReferenceError`
    naming every key without a comment."""
    comments = _comment_lines(source)
    lines = source.splitlines()
    found, missing = [], []
    for fn in ast.parse(source).body:
        if not (isinstance(fn, ast.FunctionDef) and fn.name.startswith("_add_") and fn.args.args):
            continue
        aliases = {fn.args.args[0].arg: ""}
        section = fn.name[len("_add_"):].removesuffix("_config")
        section_doc = " ".join((ast.get_docstring(fn) or "").split("\n\n")[0].split())
        previous: Optional[KeyComment] = None
        for stmt in fn.body:
            if not isinstance(stmt, ast.Assign):
                previous = None
                continue
            targets = [t for t in (_dotted(t, aliases) for t in stmt.targets) if t is not None]
            names = [t.id for t in stmt.targets if isinstance(t, ast.Name)]
            if not targets and isinstance(stmt.value, ast.Attribute) and _dotted(stmt.value, aliases):
                aliases.update(dict.fromkeys(names, _dotted(stmt.value, aliases)))  # head = cfg.MODEL.SEM_SEG_HEAD
                targets = []
            elif targets:
                aliases.update(dict.fromkeys(names, targets[0]))  # mf = cfg.MODEL.MASK_FORMER = CN()
            if _is_node(stmt.value) or not targets:
                previous = None
                continue
            block, line = [], stmt.lineno - 1
            while line in comments:
                block.insert(0, comments[line])
                line -= 1
            if block:
                comment = " ".join(block)
            elif previous is not None and lines[stmt.lineno - 2].strip():
                comment = previous.comment  # the comment of the group of assignments right above
            else:
                missing.append(targets[0])
                continue
            previous = KeyComment(targets[0], section, section_doc, comment)
            found.append(previous)
    if missing:
        raise ConfigReferenceError(f"keys without a comment above them in cad/config.py: {', '.join(missing)}")
    return found


def _flat(cfg: CfgNode, prefix: str = "") -> Dict[str, object]:
    out = {}
    for k, v in cfg.items():
        if isinstance(v, CfgNode):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render_config_reference() -> str:
    """The Markdown page: one table per `_add_*` function, keys in source order."""
    cad_cfg = get_cfg()
    add_cad_config(cad_cfg)
    base, cad_values = _flat(get_cfg()), _flat(cad_cfg)
    keys = {k for k, v in cad_values.items() if k not in base or base[k] != v}
    documented = key_comments(CONFIG_SOURCE.read_text())
    unseen = keys - {d.key for d in documented}
    if unseen:
        raise ConfigReferenceError(f"keys added at run time but not assigned in cad/config.py's _add_* functions: "
                                   f"{', '.join(sorted(unseen))}")
    out = [
        "# Config reference",
        "",
        f"<!-- Generated by {COMMAND} from cad/config.py; do not edit. -->",
        "",
        "Every key cad adds to Detectron2's config (`add_cad_config` in `cad/config.py`) or whose",
        "Detectron2 default it changes, with its default and meaning. Set a key in a config file or",
        "as a trailing `KEY VALUE` override of `tools/train_net.py`. Regenerate this page with",
        f"`.venv/bin/python {COMMAND}` after changing `cad/config.py`.",
    ]
    section = None
    for d in documented:
        if d.key not in keys:
            continue
        if d.section != section:
            section = d.section
            out += ["", f"## {section}", ""] + ([d.section_doc, ""] if d.section_doc else [])
            out += ["| Key | Default | Meaning |", "|---|---|---|"]
        meaning = d.comment
        if d.key in CHOICES:
            meaning += " One of: " + ", ".join(f"`{c}`" for c in CHOICES[d.key]) + "."
        if d.key in base:
            meaning += f" (Detectron2's default: `{base[d.key]!r}`.)"
        out.append(f"| `{d.key}` | `{_cell(repr(cad_values[d.key]))}` | {_cell(meaning)} |")
    return "\n".join(out) + "\n"
