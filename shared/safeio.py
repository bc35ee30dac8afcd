"""Reading untrusted bytes within the limits of `shared.limits`: JSON (size, nesting) and zip archives (member
count, declared uncompressed size against the archive's size) are checked before they are trusted or expanded.

Every reader of the suite that parses JSON or opens an archive goes through here, so a limit lives in one place.
"""
from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any

from . import limits as L
from .errors import InvalidFileError, SuiteError


def json_depth(obj: Any) -> int:
    """Nesting depth of a parsed JSON value (a scalar is 0), iteratively: no recursion limit to hit."""
    deepest, stack = 0, [(obj, 1)]
    while stack:
        node, d = stack.pop()
        if isinstance(node, dict):
            deepest = max(deepest, d)
            stack.extend((v, d + 1) for v in node.values())
        elif isinstance(node, list):
            deepest = max(deepest, d)
            stack.extend((v, d + 1) for v in node)
    return deepest


def load_json(text: str | bytes, source: str, *, error: type[SuiteError] = InvalidFileError,
              max_bytes: int = L.MAX_JSON_BYTES, max_depth: int = L.MAX_JSON_DEPTH) -> Any:
    """Parse JSON that came from a file or a header: over `max_bytes`, not UTF-8, not JSON, or nested deeper than
    `max_depth` raises `error` naming `source` (never a RecursionError or a UnicodeDecodeError)."""
    if len(text) > max_bytes:
        raise error(f"{source}: {len(text):,} bytes of JSON, over the {max_bytes:,}-byte limit")
    try:
        value = json.loads(text)
    except RecursionError:
        raise error(f"{source}: JSON nested deeper than {max_depth} levels (the limit)") from None
    except (UnicodeDecodeError, ValueError) as e:  # JSONDecodeError is a ValueError
        raise error(f"{source}: not valid JSON ({type(e).__name__}: {str(e)[:200]})") from None
    depth = json_depth(value)
    if depth > max_depth:
        raise error(f"{source}: JSON nested {depth} levels deep, over the limit of {max_depth}")
    return value


def read_json_file(path: str | os.PathLike, *, error: type[SuiteError] = InvalidFileError) -> Any:
    """A JSON file (config.json, an index), its size checked before it is read."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > L.MAX_JSON_BYTES:
            raise error(f"{path}: {size:,} bytes, over the {L.MAX_JSON_BYTES:,}-byte limit for a JSON file")
        raw = path.read_bytes()
    except OSError as e:
        raise error(f"{path}: unreadable ({type(e).__name__}: {e.strerror or e})") from None
    return load_json(raw, str(path), error=error)


def check_zip(path: str | os.PathLike, what: str = "archive") -> None:
    """Refuse a zip archive (.pt, .keras) before anything is extracted: corrupt, too many members, or members that
    claim more than MAX_ZIP_RATIO times the archive's size (or MAX_ARCHIVE_UNCOMPRESSED) uncompressed: a zip bomb.
    The sizes come from the central directory, read without decompressing anything."""
    path = Path(path)
    size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as e:
        raise InvalidFileError(f"{path}: not a readable {what} (corrupt zip: {e})") from None
    if len(infos) > L.MAX_ARCHIVE_MEMBERS:
        raise InvalidFileError(f"{path}: {len(infos):,} members, over the limit of {L.MAX_ARCHIVE_MEMBERS:,}")
    declared = sum(i.file_size for i in infos)
    compressed = sum(i.compress_size for i in infos)
    limit = min(L.MAX_ARCHIVE_UNCOMPRESSED, max(size * L.MAX_ZIP_RATIO, L.ZIP_RATIO_FLOOR))
    if declared > limit or compressed > size:
        raise InvalidFileError(
            f"{path}: a {size:,}-byte {what} whose members claim {declared:,} bytes uncompressed ({compressed:,} "
            f"compressed), over the limit of {L.MAX_ZIP_RATIO}x its size (or {L.MAX_ARCHIVE_UNCOMPRESSED:,} bytes): "
            f"refused as a zip bomb before extracting anything")


def read_zip_member(path: str | os.PathLike, name: str, what: str = "archive") -> bytes:
    """One member of a checked archive, read at most to its declared size (plus one byte, to catch a lie)."""
    check_zip(path, what)
    try:
        with zipfile.ZipFile(path) as z:
            info = z.getinfo(name)
            if info.file_size > L.MAX_JSON_BYTES:
                raise InvalidFileError(f"{path}: member {name!r} claims {info.file_size:,} bytes, over the "
                                       f"{L.MAX_JSON_BYTES:,}-byte limit")
            with z.open(info) as f:
                data = f.read(info.file_size + 1)
    except KeyError:
        raise InvalidFileError(f"{path}: not a {what}: no member {name!r}") from None
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError) as e:
        raise InvalidFileError(f"{path}: member {name!r} is unreadable ({type(e).__name__}: {e})") from None
    if len(data) > info.file_size:
        raise InvalidFileError(f"{path}: member {name!r} is larger than its declared {info.file_size:,} bytes")
    return data


def refuse_unsafe_keras_classes(config: Any, allowed: frozenset[str], source: str) -> None:
    """Refuse a Keras config (a `.keras` file's config.json, read as data) that names a Lambda layer (code) or a
    class that is neither Keras' own nor one of `allowed` ("package>Class" registered names), anywhere in it."""
    from .errors import capped_list

    bad: list[str] = []

    def walk(node):
        if isinstance(node, dict):
            if "class_name" in node:
                cls, module, reg = node.get("class_name"), str(node.get("module") or ""), node.get("registered_name")
                if cls == "Lambda" or (isinstance(reg, str) and reg.endswith("Lambda")):
                    name = node["config"].get("name", "?") if isinstance(node.get("config"), dict) else "?"
                    bad.append(f"a Lambda layer ({name!r}): arbitrary code")
                elif reg is not None and reg not in allowed:
                    bad.append(f"unknown class {reg!r} (module {module!r})")
                elif reg is None and not (module == "keras" or module.startswith("keras.")):
                    bad.append(f"class {cls!r} from module {module!r} is not a Keras class")
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(config)
    if bad:
        raise InvalidFileError(f"{source}: refusing to load: " + capped_list(bad, sep="; "))
