"""JSON given by users and files (architectures, tokenizers, configs), read with a bound on nesting.

A JSON document nested a few thousand levels deep makes Python's parser (and every later walk of
the result) raise a bare RecursionError; a dict built in Python can be nested without limit, or
contain itself. Real configs are shallow: a Keras model nests about four levels per nested model
or wrapper layer, so MAX_DEPTH leaves room for dozens of those."""
from __future__ import annotations

import json

from ..errors import ModelFormatError

MAX_DEPTH = 256


def too_deep(what, source):
    return ModelFormatError(f"{what} is nested more than {MAX_DEPTH} levels deep (dicts and lists inside each "
                            "other); a real one nests a few levels: check how it was made", source)


def loads(text, what, source):
    """json.loads, with a RecursionError (or a result deeper than MAX_DEPTH) as a ModelFormatError
    naming ``what`` and ``source``. Other errors (ValueError, TypeError) pass to the caller."""
    try:
        obj = json.loads(text)
    except RecursionError:
        raise too_deep(what, source) from None
    check_depth(obj, what, source)
    return obj


def check_depth(obj, what, source):
    """Refuse dicts / lists / tuples nested deeper than MAX_DEPTH (also one that contains itself),
    walking iteratively; returns ``obj``."""
    deepest = {}  # id -> the greatest depth a shared container was walked at (each walked <= MAX_DEPTH times)
    if not isinstance(obj, (dict, list, tuple)):
        return obj
    todo = [(obj, 1)]
    while todo:
        item, depth = todo.pop()
        if depth > MAX_DEPTH:
            raise too_deep(what, source)
        if deepest.get(id(item), 0) >= depth:
            continue
        deepest[id(item)] = depth
        children = item.values() if isinstance(item, dict) else item
        todo.extend((child, depth + 1) for child in children if isinstance(child, (dict, list, tuple)))
    return obj
