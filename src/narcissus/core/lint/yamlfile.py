"""YAML read into `tree` nodes through PyYAML's composer, which gives every node its start and
end in the text and resolves nothing: no tags are constructed and no code runs (only the safe
loader's composer is used). PyYAML is an optional dependency (the `lint` extra), imported here
only; without it, or for text it rejects (a Helm template), the caller reads the file line by
line instead.
"""

from __future__ import annotations

from narcissus.core.lint.tree import Mapping, Node, Scalar, Sequence

TYPE_CHECKING = False
if TYPE_CHECKING:
    import yaml


def parse(text: str) -> list[Node]:
    """Every document in `text`. Raises ImportError without PyYAML and ValueError on text that
    is not YAML."""
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    converted: dict[int, Node] = {}
    try:
        documents = list(yaml.compose_all(text, Loader=loader))
        return [_convert(document, converted) for document in documents if document is not None]
    except yaml.YAMLError as exc:
        raise ValueError(_one_line(exc)) from exc
    except RecursionError as exc:
        raise ValueError("nested too deeply") from exc


def _one_line(exc: yaml.YAMLError) -> str:
    """PyYAML's message (several lines, its positions last) as one line that says where first:
    `line 3, column 4: did not find expected ',' or ']' while parsing a flow sequence`."""
    import yaml

    if not isinstance(exc, yaml.MarkedYAMLError):
        return " ".join(str(exc).split())
    said = " ".join(part for part in (exc.problem, exc.context) if part) or "not YAML"
    mark = exc.problem_mark or exc.context_mark
    return f"line {mark.line + 1}, column {mark.column + 1}: {said}" if mark else said


def _convert(node: yaml.Node, converted: dict[int, Node]) -> Node:
    """PyYAML node -> tree node; a node met again through an alias maps to the same one."""
    import yaml

    if id(node) in converted:
        return converted[id(node)]
    result: Node
    if isinstance(node, yaml.MappingNode):
        result = converted[id(node)] = Mapping()
        result.pairs = [(_convert(k, converted), _convert(v, converted)) for k, v in node.value]
    elif isinstance(node, yaml.SequenceNode):
        result = converted[id(node)] = Sequence()
        result.items = [_convert(item, converted) for item in node.value]
    else:
        result = Scalar(str(node.value), node.start_mark.index, node.end_mark.index)
        converted[id(node)] = result
    return result
