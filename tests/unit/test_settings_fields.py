"""The settings the code reads are the settings the schema accepts: one definition.

`Settings` is built from the schema's own pydantic models, so a field cannot exist in one
and not the other; this test also reads every `settings.<a>.<b>...` the code writes and
resolves it against those models, so a read of a field the schema lacks (the way
`model_store.public_key` once was documented, read and refused) fails here, not at a user's.
"""

from __future__ import annotations

import ast

import pytest

from modelship.settings import PROJECT_ROOT, Settings
from modelship.settings_schema import EnvironmentSection, Section, section_model

# Names the code gives a Settings object.
SETTINGS_NAMES = {"settings"}


def code_files():
    return sorted((PROJECT_ROOT / "modelship").rglob("*.py")) + [PROJECT_ROOT / "tasks.py"]


def chain_of(node: ast.Attribute) -> list[str] | None:
    """['deployment', 'service', 'port'] for `settings.deployment.service.port` (also as
    `self.settings...`); None when the chain does not start at a settings object."""
    names = []
    while isinstance(node, ast.Attribute):
        names.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name) and node.id in SETTINGS_NAMES:
        return names[::-1]
    if names and names[-1] in SETTINGS_NAMES and isinstance(node, ast.Name) \
            and node.id == "self":
        return names[::-1][1:]
    return None


def settings_reads() -> list[tuple[str, int, list[str]]]:
    reads = []
    for path in code_files():
        tree = ast.parse(path.read_text())
        parents = {child: parent for parent in ast.walk(tree)
                   for child in ast.iter_child_nodes(parent)}
        for node in ast.walk(tree):
            # Only the longest chain: `settings.a.b`, not its inner `settings.a` again.
            if not isinstance(node, ast.Attribute) or isinstance(parents.get(node),
                                                                 ast.Attribute):
                continue
            chain = chain_of(node)
            if chain:
                reads.append((path.relative_to(PROJECT_ROOT).as_posix(), node.lineno, chain))
    return reads


def unresolved(chain: list[str]) -> str | None:
    """The first name of `chain` that is neither a field nor an attribute of the model it is
    read from; None when the whole chain resolves."""
    model: type[Section] = Settings
    for name in chain:
        field = model.model_fields.get(name)
        if field is None:
            # A property (render_dir) or a method of every model (model_dump) is code.
            return None if hasattr(model, name) else name
        model = section_model(field.annotation)
        if model is None:
            return None  # a leaf setting: what follows is the value's own attribute
    return None


def test_the_code_reads_settings_in_many_places():
    reads = settings_reads()
    assert len(reads) > 100
    assert any(chain[:2] == ["model_store", "public_key"] for _, _, chain in reads)


def test_every_settings_attribute_the_code_reads_is_a_schema_field():
    wrong = [f"{path}:{line}: settings.{'.'.join(chain)} ({name} is not a setting)"
             for path, line, chain in settings_reads()
             if (name := unresolved(chain)) is not None]
    assert wrong == []


def test_a_misspelt_read_would_be_caught():
    assert unresolved(["model_store", "public_keys"]) == "public_keys"
    assert unresolved(["deployment", "service", "prot"]) == "prot"
    assert unresolved(["deployment", "service", "port"]) is None


def test_the_typed_settings_are_the_schema_models():
    for name, field in EnvironmentSection.model_fields.items():
        assert Settings.model_fields[name].annotation is field.annotation, name
    assert set(Settings.model_fields) - set(EnvironmentSection.model_fields) == {
        "env", "app_name", "model_name"}


@pytest.mark.parametrize("path", [("model_store", "public_key"), ("deployment", "port"),
                                  ("local_services", "slot_ports"), ("kubernetes", "aks")])
def test_documented_settings_are_schema_fields(path):
    assert unresolved(list(path)) is None
