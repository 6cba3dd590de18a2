"""What a value may be, in one language for a flag and for a field of a saved file: a Number
(type, range, finite or not), a ListOf, a Packed tensor, a type, or a dict of the required keys of
a nested dict; fields_problem checks a whole file's content against its schema before anything
uses it. The kinds of the flags every script shares (SEED, LR, EPOCHS, ...) are declared here once.

    parser.add_argument(..., type=kinds.EPOCHS)   # a flag: from 1 to MAX_EPOCHS, in one line if not
    problem = kinds.fields_problem(saved, {"loss": kinds.ListOf(kinds.Number(float, 0, 10), 5)})
"""
import argparse
import base64
import math

import torch


# The limits of numeric flags: beyond them a run cannot be what the user meant (or fit in memory)
SEED_MAX = 2 ** 32 - 1   # the seed range every library here accepts (numpy's is the smallest)


MAX_IMAGES = 10 ** 7     # more than any dataset these scripts read


MAX_EPOCHS = 10 ** 4


MAX_BATCH = 2 ** 16


MAX_SEEDS = 100


MAX_WORKERS = 256


MAX_LR = 1e30            # far past divergence, which a run records (status "diverged")


class Number:
    """An argparse `type`: the one place a numeric flag is checked. `kind` (int or float),
    finite, in [low, high] (an end excluded if `open_low` / `open_high`); `why` says why, in
    the one-line error a flag out of range gives (exit code 2)."""

    def __init__(self, kind, low, high, open_low=False, open_high=False, why="", finite=True):
        self.kind, self.low, self.high, self.open_low, self.open_high = kind, low, high, open_low, open_high
        self.why = why
        # False: NaN and an infinite end of the range are values too (read from a file: a precision
        # with nothing detected, an exploded gradient)
        self.finite = finite
        self.__name__ = "integer" if kind is int else "number"  # argparse names the type in errors

    def describe(self):
        if self.kind is int and not self.open_low and not self.open_high:
            return f"an integer from {self.low} to {self.high}"
        return (f"{'an integer' if self.kind is int else 'a number'} in {'(' if self.open_low else '['}"
                f"{self.low:g}, {self.high:g}{')' if self.open_high else ']'}")

    def problem(self, value):
        """Why `value` (already a number, e.g. read from a file) is not one of these, or None."""
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (
                self.kind is int and not isinstance(value, int)):
            return f"{value!r} is not {self.describe()}"
        if not self.finite and (math.isnan(value) or value in (self.low, self.high)):
            return None
        if not math.isfinite(value) or value < self.low or value > self.high \
                or (self.open_low and value == self.low) or (self.open_high and value == self.high):
            why = f" ({self.why})" if self.why else ""
            return f"must be {self.describe()}{why}, got {value}"
        return None

    def __call__(self, text):
        try:
            value = self.kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"takes {self.describe()}, got {text!r}")
        problem = self.problem(value)
        if problem:
            raise argparse.ArgumentTypeError(problem if problem.startswith("must") else f"must be "
                                             f"{self.describe()}, got {text}")
        return value


def count_flag(high, low=1):
    """An integer flag from `low` (1: a positive count) to `high`."""
    return Number(int, low, high)


SEED = Number(int, 0, SEED_MAX)


LR = Number(float, 0, MAX_LR, open_low=True)


FRACTION = Number(float, 0, 1)  # an accuracy


IMAGES = count_flag(MAX_IMAGES)


EPOCHS = count_flag(MAX_EPOCHS)


BATCH = count_flag(MAX_BATCH)


SEEDS = count_flag(MAX_SEEDS)


WORKERS = count_flag(MAX_WORKERS)


MAX_SHARDS = 10_000  # more parts than any sweep has runs


def parse_shard(text):
    """'K/N' -> (K, N) with 0 <= K < N, for `--shard` (e.g. $SLURM_ARRAY_TASK_ID/4)."""
    try:
        k, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise ValueError(f"takes K/N, e.g. 0/4, got {text!r}")
    if not 0 <= k < n <= MAX_SHARDS:
        raise ValueError(f"K/N needs 0 <= K < N <= {MAX_SHARDS}, got {text!r}")
    return k, n


class Shard:
    """The argparse `type` of --shard: parse_shard's ValueError said in argparse's one line."""
    __name__ = "shard"

    def __call__(self, text):
        try:
            return parse_shard(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e))


SHARD = Shard()


class ListOf:
    """A schema for a JSON list: each item `item` (a schema itself); `length` items if given
    (else at least `min_length`)."""

    def __init__(self, item, length=None, min_length=1):
        self.item, self.length, self.min_length = item, length, min_length

    def problem(self, value):
        if not isinstance(value, list):
            return f"a {type(value).__name__} where a list belongs"
        if self.length is not None and len(value) != self.length:
            return f"{len(value)} items, not {self.length}"
        if len(value) < self.min_length:
            return f"{len(value)} items, fewer than {self.min_length}"
        for i, item in enumerate(value):
            problem = value_problem(item, self.item)
            if problem:
                return f"item {i}{problem}"
        return None


def value_problem(value, schema):
    """What is wrong with `value` against `schema`, None if nothing, said to follow the value's
    name (" is 'fast', not of type float", ": must be ..."). A schema is a Number (checked by
    value: finite, in range), a type or tuple of types, a dict (the required keys of a nested
    dict, see fields_problem), a ListOf, or another schema with a `problem(value)` method."""
    if isinstance(schema, dict):
        problem = fields_problem(value, schema)
    elif hasattr(schema, "problem"):  # a Number, a ListOf, a Packed
        problem = schema.problem(value)
    else:
        types = schema if isinstance(schema, tuple) else (schema,)
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            return f" is {value!r}, not of type {'/'.join(t.__name__ for t in types)}"
        return None
    return problem and f": {problem}"


def fields_problem(mapping, fields):
    """What is wrong with the fields of a dict read from a file, None if nothing: `fields` maps
    each required key to its schema (value_problem): the whole content is checked, nested
    dicts and lists included, before anything uses it."""
    if not isinstance(mapping, dict):
        return f"a {type(mapping).__name__} where a dict belongs"
    for key, schema in fields.items():
        if key not in mapping:
            return f"no {key!r}"
        problem = value_problem(mapping[key], schema)
        if problem:
            return f"{key!r}{problem}"
    return None


PACKED_DTYPES = {"uint8": torch.uint8, "float32": torch.float32}


def packed(tensor):
    """A uint8 or float32 tensor as JSON, exactly and compactly: its dtype, shape and base64 bytes
    (a saved figure's images and maps would be a number per line)."""
    t = tensor.detach().cpu().contiguous()
    dtype = next(name for name, d in PACKED_DTYPES.items() if d == t.dtype)
    return {"dtype": dtype, "shape": list(t.shape), "base64": base64.b64encode(t.numpy().tobytes()).decode()}


class Packed:
    """A schema (fields_problem) for a tensor, saved by `packed` in JSON or as is in a .pt file:
    its dtype, its shape (an int per dimension, None for any length) and the range of its values
    (finite unless `finite` is False)."""

    def __init__(self, dtype, shape, low=-math.inf, high=math.inf, finite=True):
        self.dtype, self.shape, self.low, self.high, self.finite = dtype, shape, low, high, finite

    def problem(self, value):
        try:
            t = value if isinstance(value, torch.Tensor) else unpacked(value)
        except (ValueError, TypeError) as e:
            return str(e)
        dtype = str(t.dtype).removeprefix("torch.")
        if dtype != self.dtype or t.dim() != len(self.shape) or any(
                n is not None and n != m for n, m in zip(self.shape, t.shape)):
            want = "x".join("N" if n is None else str(n) for n in self.shape)
            return f"a {dtype} tensor of shape {list(t.shape)}, not {self.dtype} {want}"
        finite = torch.isfinite(t)  # all True for an integer tensor
        if self.finite and not finite.all():
            return "a tensor with values that are not finite"
        values = t if finite.all() else t[finite]  # no copy of a whole feature matrix to check it
        if values.numel() and (values.min() < self.low or values.max() > self.high):
            return f"a tensor with values outside [{self.low:g}, {self.high:g}]"
        return None


def unpacked(value):
    """The tensor `packed` saved; ValueError unless its bytes are the dtype and shape it claims."""
    if not isinstance(value, dict) or value.get("dtype") not in PACKED_DTYPES:
        raise ValueError("not a packed tensor")
    shape, dtype = value.get("shape"), PACKED_DTYPES[value["dtype"]]
    if not isinstance(shape, list) or not all(isinstance(n, int) and n >= 0 for n in shape):
        raise ValueError("a packed tensor without a shape")
    data = bytearray(base64.b64decode(str(value.get("base64")), validate=True))
    if len(data) != math.prod(shape) * dtype.itemsize:
        raise ValueError("a packed tensor whose bytes are not its shape")
    return torch.frombuffer(data, dtype=dtype).reshape(shape) if data else torch.zeros(shape, dtype=dtype)
