"""A strict reader of Containerfiles for tests/entrypoints/test_containerfile_commands.py: FROM, ARG, ENV, WORKDIR,
COPY, RUN, USER, EXPOSE, ENTRYPOINT and CMD are parsed and evaluated (build args, ENV, paths remapped under a temp
root); anything else fails by name (ContainerfileError) rather than being emulated wrongly.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from dataclasses import dataclass, field

REMAPPED = ("/opt/pagoda", "/tmp", "/mnt/models", "/usr/local/bin")
# What the python:3.12-slim base image brings (its PATH; its /usr/local/bin, TMP/usr/local/bin here, holds python).
BASE_ENV = {"PATH": "/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}

class ContainerfileError(ValueError):
    pass


@dataclass
class Instruction:
    name: str
    args: str
    line: int


SUPPORTED = ("FROM", "ARG", "ENV", "WORKDIR", "COPY", "RUN", "USER", "EXPOSE", "ENTRYPOINT", "CMD")


def parse(text: str) -> list[Instruction]:
    """Logical lines -> instructions. Comment lines (also inside a continuation) are dropped, as Docker does."""
    lines = text.splitlines()
    out: list[Instruction] = []
    i = 0
    while i < len(lines):
        raw = lines[i]
        start = i + 1
        i += 1
        stripped = raw.strip()
        if not out and re.match(r"#\s*(syntax|escape|check)\s*=", stripped, re.I):
            raise ContainerfileError(f"line {start}: parser directive {stripped!r} is not emulated")
        if not stripped or stripped.startswith("#"):
            continue
        logical = raw
        while logical.rstrip().endswith("\\"):
            logical = logical.rstrip()[:-1]
            while i < len(lines) and lines[i].strip().startswith("#"):
                i += 1
            if i >= len(lines):
                raise ContainerfileError(f"line {start}: continuation at the end of the file")
            logical += " " + lines[i]
            i += 1
        name, _, args = logical.strip().partition(" ")
        if name.upper() not in SUPPORTED:
            raise ContainerfileError(f"line {start}: instruction {name} is not emulated")
        if name != name.upper():
            raise ContainerfileError(f"line {start}: write {name} as {name.upper()}")
        args = args.strip()
        if not args:
            raise ContainerfileError(f"line {start}: {name} without arguments")
        if name in ("FROM", "COPY", "RUN") and args.startswith("--"):
            raise ContainerfileError(f"line {start}: {name} flag {args.split()[0]} is not emulated")
        if "<<" in args and name in ("RUN", "COPY"):
            raise ContainerfileError(f"line {start}: heredocs are not emulated")
        out.append(Instruction(name, args, start))
    return out


_VAR = re.compile(r"\\\$|\$(\w+)|\$\{([^}]*)\}")


def substitute(text: str, env: dict[str, str], where: str, keep_escapes: bool = False) -> str:
    """Docker's $VAR / ${VAR} substitution (unset -> empty); `\\$` is a literal `$` (kept as `\\$` with
    keep_escapes, for a later shlex quote removal); modifiers are refused."""

    def one(m: re.Match) -> str:
        if m.group(0) == "\\$":
            return m.group(0) if keep_escapes else "$"
        name = m.group(1) or m.group(2)
        if not re.fullmatch(r"\w+", name):
            raise ContainerfileError(f"{where}: substitution ${{{name}}} is not emulated")
        return env.get(name, "")

    return _VAR.sub(one, text)


def words(text: str, env: dict[str, str], where: str) -> list[str]:
    """Split on unquoted blanks, substitute each raw word, then remove its quotes and escapes."""
    raw, word, quote, escaped = [], "", None, False
    for ch in text + " ":
        if escaped:
            word, escaped = word + ch, False
        elif ch == "\\" and quote != "'":
            word, escaped = word + ch, True
        elif quote:
            word += ch
            quote = None if ch == quote else quote
        elif ch in "'\"":
            word, quote = word + ch, ch
        elif ch.isspace():
            if word:
                raw.append(word)
            word = ""
        else:
            word += ch
    if quote:
        raise ContainerfileError(f"{where}: unterminated quote")
    return ["".join(shlex.split(substitute(w, env, where, keep_escapes=True))) for w in raw]


def remap(text: str, root: str) -> str:
    """The image's absolute paths -> the same paths under `root`, wherever they start a path in `text`."""
    pattern = r"(?<![\w.\-/])(" + "|".join(re.escape(p) for p in REMAPPED) + r")(?![\w.\-])"
    return re.sub(pattern, lambda m: root + m.group(1), text)


def exec_form(inst: Instruction) -> list[str]:
    try:
        value = json.loads(inst.args)
    except json.JSONDecodeError:
        value = None
    if not (isinstance(value, list) and value and all(isinstance(v, str) for v in value)):
        raise ContainerfileError(f"line {inst.line}: {inst.name} must be a JSON list (exec form): the shell form "
                                 "runs under /bin/sh -c, which does not pass SIGTERM on to the server")
    return value


@dataclass
class Image:
    base: str = ""
    args: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)  # ENV only, in the image's own paths
    workdir: str = "/"
    user: str = "0"
    expose: list[str] = field(default_factory=list)
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    copies: list[tuple[list[str], str]] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)


def evaluate(instructions: list[Instruction], build_args: dict[str, str], base_env: dict[str, str],
             on_copy=None, on_run=None) -> Image:
    """Walk the instructions as a builder does; COPY and RUN go to on_copy(image, sources, dest) and
    on_run(image, command, env) when given (the emulated build), else are only recorded."""
    img = Image()
    if not instructions or instructions[0].name != "FROM":
        raise ContainerfileError("the first instruction must be FROM (ARG before FROM is not emulated)")
    unused = set(build_args)
    for inst in instructions:
        where = f"line {inst.line} ({inst.name})"
        scope = {**img.args, **img.env}
        if inst.name == "FROM":
            if img.base:
                raise ContainerfileError(f"{where}: multi-stage builds are not emulated")
            img.base = inst.args
            img.env = dict(base_env)
        elif inst.name == "ARG":
            name, eq, default = inst.args.partition("=")
            if not re.fullmatch(r"\w+", name) or " " in inst.args.strip():
                raise ContainerfileError(f"{where}: expected ARG NAME[=default], got {inst.args!r}")
            if name in build_args:
                img.args[name] = build_args[name]
                unused.discard(name)
            elif eq:
                img.args[name] = " ".join(words(default, scope, where))
        elif inst.name == "ENV":
            pairs = {}
            for token in words(inst.args, scope, where):  # every pair sees the environment before the line
                key, eq, value = token.partition("=")
                if not eq or not re.fullmatch(r"\w+", key):
                    raise ContainerfileError(f"{where}: expected KEY=VALUE pairs (the legacy `ENV key value` "
                                             f"form is not emulated), got {token!r}")
                pairs[key] = value
            img.env.update(pairs)
        elif inst.name == "WORKDIR":
            path = substitute(inst.args, scope, where)
            if not path.startswith("/"):
                raise ContainerfileError(f"{where}: a relative WORKDIR is not emulated")
            img.workdir = os.path.normpath(path)
        elif inst.name == "COPY":
            if inst.args.startswith("["):
                raise ContainerfileError(f"{where}: the JSON form of COPY is not emulated")
            parts = words(inst.args, scope, where)
            if len(parts) < 2:
                raise ContainerfileError(f"{where}: COPY needs a source and a destination")
            *sources, dest = parts
            for src in sources:
                if re.search(r"[*?\[]", src) or src.startswith("/") or ".." in src.split("/"):
                    raise ContainerfileError(f"{where}: source {src!r} is not emulated (wildcard or outside "
                                             "the context)")
            if not dest.startswith("/"):
                dest = os.path.normpath(os.path.join(img.workdir, dest)) + ("/" if dest.endswith("/") else "")
            img.copies.append((sources, dest))
            if on_copy:
                on_copy(img, sources, dest)
        elif inst.name == "RUN":
            if inst.args.startswith("["):
                raise ContainerfileError(f"{where}: the exec form of RUN is not emulated")
            img.runs.append(inst.args)
            if on_run:
                on_run(img, inst.args, {**img.args, **img.env})
        elif inst.name == "USER":
            user = substitute(inst.args, scope, where)
            if not re.fullmatch(r"\d+(:\d+)?", user):
                raise ContainerfileError(f"{where}: USER {user!r}: only a numeric uid[:gid] is emulated")
            img.user = user
        elif inst.name == "EXPOSE":
            img.expose += substitute(inst.args, scope, where).split()
        elif inst.name == "ENTRYPOINT":
            img.entrypoint = exec_form(inst)
            img.cmd = []  # Docker: ENTRYPOINT resets a CMD set before it
        elif inst.name == "CMD":
            img.cmd = exec_form(inst)
    if unused:
        raise ContainerfileError(f"build args {sorted(unused)} are declared by no ARG")
    return img


def load(path: str, build_args: dict[str, str] | None = None, base_env: dict[str, str] | None = None) -> Image:
    with open(path) as f:
        return evaluate(parse(f.read()), build_args or {}, base_env or BASE_ENV)
