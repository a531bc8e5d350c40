"""Unit tests: what a cell reads and binds, and how values are serialized."""

from __future__ import annotations

import threading

import pytest

from clusterjupyter import serialize
from clusterjupyter.capture import analyze, gather


@pytest.mark.parametrize("src, inputs, optional, outputs", [
    ("x = x + 1", ["x"], [], ["x"]),
    ("y = 2\nz = y * k", ["k"], [], ["y", "z"]),
    ("total += v", ["v", "total"], [], ["total"]),
    ("for i in r:\n    acc = f(acc, i)", ["r", "f", "acc"], [], ["i", "acc"]),
    ("with open(p) as fh:\n    s = fh.read()", ["open", "p"], [], ["fh", "s"]),
    ("import numpy as np\nm = np.mean(d)", ["d"], [], ["np", "m"]),
    ("from os import path as P\nq = P.join(a, 'b')", ["a"], [], ["P", "q"]),
    ("def f(u):\n    return u * alpha\nres = f(3)", ["alpha"], [], ["f", "res"]),
    ("def f():\n    return g()\ndef g():\n    return 1\nf()", [], ["g"], ["f", "g"]),
    ("class A(Base):\n    k = K\n    def m(self):\n        return M", ["Base", "K", "M"], [],
     ["A"]),
    ("sq = [v * w for v in vals]", ["vals", "w"], [], ["sq"]),
    ("if (n := len(items)) > 3:\n    big = n", ["len", "items"], [], ["n", "big"]),
    ("lam = lambda t: t + off", ["off"], [], ["lam"]),
    ("def bump():\n    global counter\n    counter += 1\nbump()", [], ["counter"],
     ["bump", "counter"]),
    ("try:\n    r = risky()\nexcept ValueError as e:\n    err = e", ["risky", "ValueError"], [],
     ["r", "err"]),
])
def test_inputs_and_outputs(src, inputs, optional, outputs):
    a = analyze(src)
    assert a.inputs == inputs
    assert a.optional == optional
    assert a.outputs == outputs


def test_deleted_names_and_last_expression():
    a = analyze("del old\nnew = 1\nnew")
    assert a.deleted == ["old"]
    assert a.inputs == ["old"]
    assert a.has_result
    assert not analyze("x = 1").has_result
    assert not analyze("x = 1\nx;").has_result  # a trailing semicolon hides the value
    assert analyze("x = 1\nx  # shown").has_result


def test_syntax_error_is_raised():
    with pytest.raises(SyntaxError):
        analyze("x = (")


def test_gather_takes_values_modules_and_function_globals():
    import math

    ns: dict = {"__name__": "__main__"}
    exec("alpha = 3\ndef helper(v):\n    return v * alpha\n", ns)
    helper, alpha = ns["helper"], ns["alpha"]
    ns = {"math": math, "helper": helper, "alpha": alpha, "data": [1], "In": [],
          "hidden": 1}
    a = analyze("out = [helper(math.sqrt(v)) for v in data]\nprint(hidden)")
    got = gather(a, ns, hidden=["hidden"])
    assert got.modules == {"math": "math"}
    assert set(got.values) == {"helper", "data", "alpha"}
    assert got.optional == {"alpha"}  # reached through the function's globals


def test_blob_keeps_large_buffers_out_of_band_and_round_trips():
    np = pytest.importorskip("numpy")
    arr = np.arange(1_000_000, dtype=np.float64)
    blob = serialize.dump({"a": arr, "b": b"x" * 10})
    # the array's memory is referenced, not copied, and the header is tiny
    assert any(p.obj is arr or getattr(p, "nbytes", 0) == arr.nbytes for p in blob.parts[2:])
    data = b"".join(bytes(p) for p in blob.parts)
    back = serialize.loads(data)
    assert (back["a"] == arr).all() and back["a"].flags.writeable
    assert back["b"] == b"x" * 10
    import hashlib

    assert hashlib.sha256(data).hexdigest() == blob.sha256


def test_notebook_functions_travel_by_value_and_classes_by_reference():
    import types

    main = types.ModuleType("__main__")
    exec("class Point:\n    def __init__(s, x): s.x = x\n"
         "def norm(p):\n    return abs(p.x) * scale\nscale = 2\n", main.__dict__)
    ns = main.__dict__
    opts = serialize.DumpOptions(main=main, class_ref=serialize.main_class_ref(ns))
    point_blob = b"".join(bytes(p) for p in serialize.dump(ns["Point"](-3), opts).parts)
    func_blob = b"".join(bytes(p) for p in serialize.dump(ns["norm"], opts).parts)
    # receiving side: a different namespace that has its own Point and scale
    other = types.ModuleType("__main__")
    exec("class Point:\n    def __init__(s, x): s.x = x\nscale = 10\n", other.__dict__)
    p = serialize.loads(point_blob, other)
    assert isinstance(p, other.__dict__["Point"])  # the receiver's own class
    f = serialize.loads(func_blob, other)
    assert f(p) == 30  # globals resolve in the receiving namespace


def test_unpicklable_value_raises():
    with pytest.raises(TypeError):
        serialize.dump(threading.Lock())


def test_large_blob_digest_is_cached_by_content_not_identity():
    np = pytest.importorskip("numpy")
    arr = np.zeros(1 << 18)  # 2 MiB: above the fingerprint threshold
    first = serialize.dump(arr).sha256
    assert serialize.dump(arr).sha256 == first  # unchanged: same address (from the cache)
    arr[12345] = 1.0  # mutated in place: same object, new content, new address
    changed = serialize.dump(arr)
    import hashlib

    assert changed.sha256 != first
    assert changed.sha256 == hashlib.sha256(b"".join(bytes(p) for p in changed.parts)).hexdigest()
