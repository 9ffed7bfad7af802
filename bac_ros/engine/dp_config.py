"""A diffusion_policy hydra cfg as plain data, without OmegaConf doing anything.

Why not OmegaConf: a checkpoint's cfg comes from strangers. Building OmegaConf objects runs
code while they are built (type-annotation strings go through ``typing.get_type_hints``) and
resolving them runs resolvers (``${oc.env:...}`` copies environment variables into the
config; custom resolvers, huge expressions). So the restricted unpickler builds inert
stand-ins for OmegaConf's classes (``safe_unpickle``), this module reads their pickled state
as plain dicts / lists / scalars, and resolves only the interpolation forms diffusion_policy
configs use, by itself, with bounds:

- ``${a.b.c}``: an absolute reference to another value of the same cfg;
- ``${eval:'...'}``: arithmetic / comparisons / conditionals through ``safe_eval`` (no
  names, no calls, bounded operands and results).

Any other ``${...}`` (``oc.env``, ``now``, relative ``${..x}``) is left as the literal string:
fields bac_ros needs then fail their type check with a message naming the field.
"""

from __future__ import annotations

import ast
import operator
import re
from typing import Any

MAX_NODES = 200_000
MAX_DEPTH = 64
MAX_STRING = 65_536
MAX_EXPR = 1_000
MAX_REF_DEPTH = 32

_REF = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*$")
_INNER = re.compile(r"\$\{([^${}]*)\}")


class ConfigError(ValueError):
    """The stored cfg cannot be read safely; the message says which part and why."""


def is_standin(obj: Any) -> bool:
    return getattr(type(obj), "_omegaconf_standin", False)


def to_plain(obj: Any) -> Any:
    """Stand-ins (or a real DictConfig, trusted path) -> dicts, lists and scalars."""
    if type(obj).__module__.startswith("omegaconf"):  # trusted full-pickle path
        from omegaconf import OmegaConf

        return OmegaConf.to_container(obj, resolve=False)  # never runs a resolver
    count = [0]

    def walk(o: Any, depth: int) -> Any:
        count[0] += 1
        if count[0] > MAX_NODES or depth > MAX_DEPTH:
            raise ConfigError(f"the checkpoint's cfg is larger than {MAX_NODES} values or "
                              f"deeper than {MAX_DEPTH} levels; refusing to read it.")
        if is_standin(o):
            state = getattr(o, "state", None)
            if isinstance(state, tuple) and len(state) == 2:  # (dict state, slots)
                state = state[0]
            if not isinstance(state, dict):
                return None
            if "_content" in state:  # DictConfig / ListConfig
                return walk(state["_content"], depth + 1)
            return walk(state.get("_val"), depth + 1)  # a value node
        if isinstance(o, dict):
            return {str(walk(k, depth + 1)): walk(v, depth + 1) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [walk(v, depth + 1) for v in o]
        if isinstance(o, str):
            if len(o) > MAX_STRING:
                raise ConfigError(f"a cfg string is {len(o)} characters long (limit "
                                  f"{MAX_STRING}); refusing to read it.")
            return o
        if o is None or isinstance(o, (bool, int, float)):
            return o
        return repr(o)[:200]  # anything else stays inert text

    return walk(obj, 0)


_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
           ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
           ast.Pow: operator.pow}
_CMPOPS = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt,
           ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge}
_MAX_NUMBER = 1e12


def _bounded(v: Any, expr: str) -> Any:
    if isinstance(v, bool) or v is None:
        return v
    if isinstance(v, (int, float)):
        if abs(v) > _MAX_NUMBER:
            raise ConfigError(f"${{eval:{expr[:80]}}}: a value exceeds {_MAX_NUMBER:g}.")
        return v
    if isinstance(v, (str, list)) and len(v) > MAX_EXPR:
        raise ConfigError(f"${{eval:{expr[:80]}}}: a result is longer than {MAX_EXPR}.")
    return v


def safe_eval(expr: str) -> Any:
    """Evaluate diffusion_policy's ``${eval:...}`` arithmetic without Python's eval():
    constants, + - * / // % **, comparisons, and/or/not, x if c else y, lists; every
    intermediate value bounded (so ``9**9**9`` or ``'a'*10**9`` are refused, not computed)."""
    expr = str(expr)
    if len(expr) > MAX_EXPR:
        raise ConfigError(f"${{eval:...}} expression of {len(expr)} characters (limit "
                          f"{MAX_EXPR}).")

    def ev(node):
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float, bool, str,
                                                                      type(None))):
            return _bounded(node.value, expr)
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            a, b = ev(node.left), ev(node.right)
            if isinstance(node.op, ast.Pow) and (not isinstance(b, (int, float)) or abs(b) > 64
                                                 or not isinstance(a, (int, float))):
                raise ConfigError(f"${{eval:{expr[:80]}}}: exponent out of range.")
            if isinstance(node.op, ast.Mult) and not (isinstance(a, (int, float)) and
                                                      isinstance(b, (int, float))):
                raise ConfigError(f"${{eval:{expr[:80]}}}: only numbers can be multiplied.")
            try:
                return _bounded(_BINOPS[type(node.op)](a, b), expr)
            except (TypeError, ZeroDivisionError, OverflowError) as exc:
                raise ConfigError(f"${{eval:{expr[:80]}}}: {exc}") from exc
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.Not)):
            v = ev(node.operand)
            return -v if isinstance(node.op, ast.USub) else not v
        if isinstance(node, ast.BoolOp):
            vals = [ev(v) for v in node.values]
            return all(vals) if isinstance(node.op, ast.And) else any(vals)
        if isinstance(node, ast.Compare) and len(node.ops) == 1 and type(node.ops[0]) in _CMPOPS:
            return _CMPOPS[type(node.ops[0])](ev(node.left), ev(node.comparators[0]))
        if isinstance(node, ast.IfExp):
            return ev(node.body) if ev(node.test) else ev(node.orelse)
        if isinstance(node, (ast.List, ast.Tuple)) and len(node.elts) <= MAX_EXPR:
            return [ev(e) for e in node.elts]
        raise ConfigError(f"unsupported expression in cfg ${{eval:{expr[:80]}}} (arithmetic, "
                          "comparisons and conditionals only).")

    try:
        tree = ast.parse(expr, mode="eval")
    except (SyntaxError, ValueError) as exc:
        raise ConfigError(f"cannot parse cfg ${{eval:{expr[:80]}}}: {exc}") from exc
    return ev(tree)


class Resolver:
    """Resolves the supported interpolations of one plain cfg tree, lazily and bounded."""

    def __init__(self, root: dict):
        self.root = root

    def lookup(self, path: str, depth: int) -> Any:
        node: Any = self.root
        for part in path.split("."):
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                raise ConfigError(f"cfg interpolation ${{{path}}} points to nothing.")
        return self.value(node, depth + 1)

    def value(self, v: Any, depth: int = 0) -> Any:
        if depth > MAX_REF_DEPTH:
            raise ConfigError(f"cfg interpolations nest deeper than {MAX_REF_DEPTH} "
                              "(a cycle?).")
        if isinstance(v, dict):
            return {k: self.value(x, depth + 1) for k, x in v.items()}
        if isinstance(v, list):
            return [self.value(x, depth + 1) for x in v]
        if isinstance(v, str) and "${" in v:
            return self._string(v, depth)
        return v

    def _string(self, s: str, depth: int) -> Any:
        for _ in range(256):  # innermost ${...} first, until none is left we can resolve
            m = _INNER.search(s)
            if m is None:
                return s
            body = m.group(1).strip()
            if body.startswith("eval:"):
                arg = body[5:].strip()
                if len(arg) >= 2 and arg[0] == arg[-1] and arg[0] in "'\"":
                    arg = arg[1:-1]
                val = safe_eval(arg)
            elif _REF.match(body):
                val = self.lookup(body, depth)
            else:
                return s  # oc.env, now, relative refs, ...: kept as literal text
            if m.span() == (0, len(s)):
                return val
            s = s[:m.start()] + str(val) + s[m.end():]
            if len(s) > MAX_STRING:
                raise ConfigError("a cfg string grew past the size limit while resolving.")
        raise ConfigError("too many interpolations in one cfg string.")
