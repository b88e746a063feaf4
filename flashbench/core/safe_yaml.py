"""YAML read as bad input must be: aliases bounded, duplicate keys refused, nothing but plain data.

``yaml.safe_load`` builds only plain data, but it lets a file of a few hundred bytes stand for
billions of nodes: an alias is a reference, so nine lists of nine aliases to the list before
cost nothing to load, and everything that walks the result afterwards (validation, an error
message quoting it) walks every reference. And it keeps the last of two equal keys silently.
"""

from __future__ import annotations

from typing import Any

import yaml

from flashbench.core.errors import quoted

__all__ = ["MAX_NODES", "YamlRefused", "load"]

# A config has tens of nodes; the largest preset about a hundred.
MAX_NODES = 10_000


class YamlRefused(yaml.YAMLError):
    """A document that parses but is refused: the message says why, with its line."""


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that counts each node as large as the tree it stands for, aliases expanded,
    and refuses one beyond MAX_NODES as soon as it is composed, before anything walks it."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self._sizes: dict[int, int] = {}  # id of each composed node -> its expanded size

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            node = super().compose_node(parent, index)
            if id(node) not in self._sizes:  # still being composed: it holds itself
                raise YamlRefused(f"recursive alias at line {mark.line + 1}")
            return node
        node = super().compose_node(parent, index)
        children = node.value if isinstance(node, yaml.SequenceNode) else \
            [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else []
        size = 1 + sum(self._sizes[id(child)] for child in children)
        if size > MAX_NODES:
            raise YamlRefused(f"the value at line {node.start_mark.line + 1} expands to more "
                              f"than {MAX_NODES:,} values (aliases repeat what they name); "
                              f"a config is a few lists of sizes")
        self._sizes[id(node)] = size
        return node

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            seen: set[Any] = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # '<<' may override keys
                    continue
                key = self.construct_object(key_node, deep=deep)
                try:
                    duplicate = key in seen
                except TypeError:  # an unhashable key: the constructor says so below
                    continue
                if duplicate:
                    raise YamlRefused(f"duplicate key {quoted(key)} at line "
                                      f"{key_node.start_mark.line + 1}")
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load(text: str) -> Any:
    """The document in ``text`` as plain data; YamlRefused or another YAMLError when refused."""
    loader = _BoundedLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()
