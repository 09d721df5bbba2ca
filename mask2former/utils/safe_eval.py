"""A tiny arithmetic evaluator for the one Python expression official configs carry.

Mask2Former's configs write `INPUT.MIN_SIZE_TRAIN: !!python/object/apply:eval ["[int(x * 0.1 * 640) for x in
range(5, 21)]"]`, which detectron2 reads with `yaml.unsafe_load` (running any code a file holds). Here the
expression is parsed with `ast` and its tree walked by hand; nothing reaches Python's `eval`. Admitted: int and
float literals; `+ - * / // % **` and comparisons on numbers; unary `-` and `+`; calls of `range` and `int`; list
and tuple displays; list comprehensions with one `for` over a range or a list and optional `if`s; the names those
comprehensions bind. Anything else is refused with a `SafeEvalError` saying what is not allowed.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable

MAX_CHARS = 2000  # longer expressions are refused before parsing
MAX_ITEMS = 10_000  # items in one range, list or comprehension
MAX_STEPS = 200_000  # evaluated nodes in all (bounds nested comprehensions)
MAX_INT_BITS = 4096  # no intermediate integer larger than this

_BINARY: dict[type, Callable] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type, Callable] = {ast.USub: operator.neg, ast.UAdd: operator.pos}
_COMPARE: dict[type, Callable] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
}
ALLOWED = (
    "int/float literals, + - * / // % ** and comparisons on numbers, unary minus, range(), int(), "
    "list/tuple displays and [... for NAME in range(...)/list if ...] comprehensions"
)


class SafeEvalError(ValueError):
    """The expression holds something the evaluator does not admit (the message says what)."""


def safe_eval(expression: str) -> object:
    """The value of `expression` (numbers, lists, tuples of them), or SafeEvalError naming what is refused."""
    if not isinstance(expression, str):
        raise SafeEvalError(f"expected the expression as a string, got {type(expression).__name__}")
    if len(expression) > MAX_CHARS:
        raise SafeEvalError(f"expression longer than {MAX_CHARS} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except (SyntaxError, RecursionError, MemoryError) as error:
        raise SafeEvalError(f"not a Python expression ({getattr(error, 'msg', type(error).__name__)})") from None
    evaluator = _Evaluator()
    try:
        return evaluator._value(tree.body, {})
    except RecursionError:
        raise SafeEvalError("expression nested too deeply") from None


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _describe(node: ast.AST) -> str:
    try:
        return f"{type(node).__name__} '{ast.unparse(node)}'"
    except Exception:  # noqa: BLE001  (unparse of an odd node: the type name is enough)
        return type(node).__name__


class _Evaluator:
    def __init__(self) -> None:
        self.steps = 0

    def eval(self, node: ast.AST, names: dict[str, object]) -> object:
        self.steps += 1
        if self.steps > MAX_STEPS:
            raise SafeEvalError(f"expression takes more than {MAX_STEPS} steps")
        method = getattr(self, f"_{type(node).__name__}", None)
        if method is None:
            raise SafeEvalError(f"{_describe(node)} is not allowed")
        return method(node, names)

    def _Constant(self, node: ast.Constant, names: dict) -> object:
        if not _is_number(node.value):
            raise SafeEvalError(f"the literal {node.value!r} is not allowed (only int and float literals)")
        return _checked_number(node.value, node)

    def _Name(self, node: ast.Name, names: dict) -> object:
        if node.id not in names:
            raise SafeEvalError(f"the name '{node.id}' is not allowed (only names bound by a comprehension)")
        return names[node.id]

    def _number(self, node: ast.AST, names: dict) -> int | float:
        value = self.eval(node, names)
        if not _is_number(value):
            raise SafeEvalError(f"'{ast.unparse(node)}' is not a number (arithmetic is on numbers only)")
        return value

    def _BinOp(self, node: ast.BinOp, names: dict) -> int | float:
        op = _BINARY.get(type(node.op))
        if op is None:
            raise SafeEvalError(f"the operator in '{ast.unparse(node)}' is not allowed")
        left, right = self._number(node.left, names), self._number(node.right, names)
        if isinstance(node.op, ast.Pow):
            _check_power(left, right, node)
        try:
            value = op(left, right)
        except (ZeroDivisionError, OverflowError, ValueError) as error:
            raise SafeEvalError(f"'{ast.unparse(node)}': {error}") from None
        return _checked_number(value, node)

    def _UnaryOp(self, node: ast.UnaryOp, names: dict) -> int | float:
        op = _UNARY.get(type(node.op))
        if op is None:
            raise SafeEvalError(f"the operator in '{ast.unparse(node)}' is not allowed")
        return op(self._number(node.operand, names))

    def _Compare(self, node: ast.Compare, names: dict) -> bool:
        left = self._number(node.left, names)
        for op_node, right_node in zip(node.ops, node.comparators, strict=True):
            op = _COMPARE.get(type(op_node))
            if op is None:
                raise SafeEvalError(f"the comparison in '{ast.unparse(node)}' is not allowed")
            right = self._number(right_node, names)
            if not op(left, right):
                return False
            left = right
        return True

    def _Call(self, node: ast.Call, names: dict) -> object:
        if not isinstance(node.func, ast.Name) or node.func.id not in ("range", "int"):
            raise SafeEvalError(f"the call '{ast.unparse(node)}' is not allowed (only range() and int())")
        if node.keywords or any(isinstance(arg, ast.Starred) for arg in node.args):
            raise SafeEvalError(f"'{ast.unparse(node)}': keyword or * arguments are not allowed")
        args = [self._number(arg, names) for arg in node.args]
        if node.func.id == "int":
            if len(args) != 1:
                raise SafeEvalError(f"'{ast.unparse(node)}': int() takes one number")
            try:
                return int(args[0])
            except (OverflowError, ValueError) as error:
                raise SafeEvalError(f"'{ast.unparse(node)}': {error}") from None
        if not 1 <= len(args) <= 3 or not all(isinstance(arg, int) for arg in args):
            raise SafeEvalError(f"'{ast.unparse(node)}': range() takes one to three integers")
        try:
            numbers = range(*args)
        except ValueError as error:
            raise SafeEvalError(f"'{ast.unparse(node)}': {error}") from None
        if len(numbers) > MAX_ITEMS:
            raise SafeEvalError(f"'{ast.unparse(node)}' has {len(numbers)} items (at most {MAX_ITEMS})")
        return numbers

    def _items(self, nodes: list[ast.expr], names: dict, node: ast.AST) -> list:
        if len(nodes) > MAX_ITEMS:
            raise SafeEvalError(f"'{_describe(node)}' has more than {MAX_ITEMS} items")
        if any(isinstance(item, ast.Starred) for item in nodes):
            raise SafeEvalError(f"* unpacking in '{ast.unparse(node)}' is not allowed")
        return [self._value(item, names) for item in nodes]

    def _value(self, node: ast.AST, names: dict) -> object:
        value = self.eval(node, names)
        return list(value) if isinstance(value, range) else value

    def _List(self, node: ast.List, names: dict) -> list:
        return self._items(node.elts, names, node)

    def _Tuple(self, node: ast.Tuple, names: dict) -> tuple:
        return tuple(self._items(node.elts, names, node))

    def _ListComp(self, node: ast.ListComp, names: dict) -> list:
        if len(node.generators) != 1:
            raise SafeEvalError(f"'{ast.unparse(node)}': only one 'for' per comprehension is allowed")
        generator = node.generators[0]
        if generator.is_async or not isinstance(generator.target, ast.Name):
            raise SafeEvalError(f"'{ast.unparse(node)}': the comprehension must bind one name ('for x in ...')")
        if generator.target.id in ("range", "int"):
            raise SafeEvalError(f"'{ast.unparse(node)}': '{generator.target.id}' cannot be a comprehension name")
        iterable = self.eval(generator.iter, names)
        if not isinstance(iterable, range | list | tuple):
            raise SafeEvalError(f"'{ast.unparse(generator.iter)}': a comprehension runs over a range or a list")
        out = []
        for item in iterable:
            scope = {**names, generator.target.id: item}
            if all(self.eval(condition, scope) for condition in generator.ifs):
                out.append(self._value(node.elt, scope))
        return out


def _check_power(base: int | float, exponent: int | float, node: ast.AST) -> None:
    if abs(exponent) > 1024 or (
        isinstance(base, int)
        and isinstance(exponent, int)
        and abs(base) > 1
        and exponent * math.log2(abs(base)) > MAX_INT_BITS
    ):
        raise SafeEvalError(f"the power '{ast.unparse(node)}' is too large")


def _checked_number(value: int | float, node: ast.AST) -> int | float:
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise SafeEvalError(f"'{ast.unparse(node)}' is too large (more than {MAX_INT_BITS} bits)")
    if isinstance(value, complex):  # a negative number to a fractional power
        raise SafeEvalError(f"'{ast.unparse(node)}' is not a real number")
    return value
