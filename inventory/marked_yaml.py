"""PyYAML's safe loader, keeping the line of every mapping key.

Mappings load as ``MarkedDict`` (a plain ``dict`` subclass) whose ``line`` is
where the mapping starts and whose ``key_lines`` maps each key to its line, so
the parsers can say "inv.yml:12: ..." about any key.  Duplicate keys, which
PyYAML silently collapses, are an error here: in an inventory a repeated host or
group is almost always a typo that would lose variables.
"""

from __future__ import annotations

from typing import Any

import yaml

from inventory.errors import InventoryError


class MarkedDict(dict[Any, Any]):
    """A mapping from YAML with 1-based line numbers for itself and its keys."""

    line: int
    key_lines: dict[Any, int]

    def __init__(self) -> None:
        super().__init__()
        self.line = 0
        self.key_lines = {}

    def line_of(self, key: Any) -> int:
        return self.key_lines.get(key, self.line)


class _DuplicateKey(yaml.MarkedYAMLError):
    pass


class _MarkedLoader(yaml.SafeLoader):
    def construct_marked_mapping(self, node: yaml.MappingNode) -> MarkedDict:
        result = MarkedDict()
        result.line = node.start_mark.line + 1
        self.flatten_mapping(node)
        for key_node, value_node in node.value:
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, str | int | float | bool) and key is not None:
                raise yaml.constructor.ConstructorError(
                    None, None, "mapping keys must be scalars", key_node.start_mark
                )
            if key in result:
                raise _DuplicateKey(None, None, f"duplicate key {key!r}", key_node.start_mark)
            result[key] = self.construct_object(value_node, deep=True)
            result.key_lines[key] = key_node.start_mark.line + 1
        return result


_MarkedLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _MarkedLoader.construct_marked_mapping,  # type: ignore[arg-type]
)


def load_marked_yaml(text: str, path: str) -> Any:
    """Parse one YAML document; any YAML error becomes one ``InventoryError`` line."""
    try:
        return yaml.load(text, Loader=_MarkedLoader)  # a SafeLoader subclass: no arbitrary objects
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        reason = exc.problem or exc.context or "malformed YAML"
        raise InventoryError(path, line, reason) from None
    except yaml.YAMLError as exc:
        raise InventoryError(path, None, f"malformed YAML: {exc}") from None


def plain(value: Any) -> Any:
    """Deep-convert ``MarkedDict`` values back to plain dicts (for variable values)."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value
