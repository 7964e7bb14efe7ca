"""JSON for the plugin's start path: the C accelerator `_json` without the `json` package.

Owns: `loads(text)` and `dumps(value)`, the same results as `json.loads` / `json.dumps`
(compact separators aside) for the documents CNI exchanges. Importing `json` costs ~20 ms on
these machines (it pulls in `re` and `enum` to build its regular expressions); `_json`, the C
module `json` itself uses when it can, costs well under one. Malformed input raises
`ValueError` (`json.JSONDecodeError`, from the `json` package, imported only then).

May import: the standard library only (`_json`).
"""

from __future__ import annotations

import _json

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

WHITESPACE = " \t\n\r"


def _constant(name: str) -> float:
    return {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}[name]


class _Context:
    """What `_json.make_scanner` reads from a decoder: json.JSONDecoder's defaults."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = staticmethod(_constant)
    memo: dict[str, str] = {}


def _refuse(value: object) -> object:
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


_scan = _json.make_scanner(_Context())  # type: ignore[arg-type]  # typeshed: a decoder only
_encode = _json.make_encoder(None, _refuse, _json.encode_basestring_ascii, None, ": ", ", ",
                             False, False, True)


def loads(text: str) -> Any:
    """The value of JSON document `text`; ValueError when it is not one."""
    start = len(text) - len(text.lstrip(WHITESPACE))
    try:
        value, end = _scan(text, start)
    except (StopIteration, SystemError):
        # Malformed. `_json` raises most of its errors through `json.decoder`, which it only
        # finds once that is imported: the `json` package then says what is wrong (slowly,
        # which only a refusal pays).
        import json

        return json.loads(text)
    finally:
        _Context.memo.clear()
    if text[end:].strip(WHITESPACE):
        raise ValueError(f"extra data at character {end}")
    return value


def dumps(value: Any) -> str:
    """`value` as JSON (ASCII, `json.dumps`' separators); TypeError for what JSON lacks."""
    return "".join(_encode(value, 0))
