"""go_tools builds a pinned Go command once into the cache outside the clone and reuses it
while go.mod and go.sum are the ones it was built from. A real `go build` of a module with
a local dependency (no proxy needed); skipped where Go is not installed."""

from __future__ import annotations

import subprocess

import pytest

from modelship import go_tools

pytestmark = pytest.mark.skipif(go_tools.go_command() is None, reason="Go is not installed")


def make_module(root):
    tool = root / "tools" / "hello"
    (tool / "greeting").mkdir(parents=True)
    (tool / "greeting" / "go.mod").write_text("module example.com/greeting\n\ngo 1.22\n")
    (tool / "greeting" / "greeting.go").write_text(
        'package greeting\n\nconst Text = "hello from the pinned module"\n')
    (tool / "go.mod").write_text(
        "module modelship/tools/hello\n\ngo 1.22\n\nrequire example.com/greeting v1.2.3\n\n"
        "replace example.com/greeting => ./greeting\n")
    (tool / "go.sum").write_text("")
    (tool / "main.go").write_text(
        'package main\n\nimport (\n\t"fmt"\n\n\t"example.com/greeting"\n)\n\n'
        'func main() { fmt.Println(greeting.Text) }\n')
    return tool


def test_a_tool_is_built_once_per_pins_into_the_cache_and_reused(tmp_path, monkeypatch):
    make_module(tmp_path)
    monkeypatch.setattr(go_tools, "TOOLS_ROOT", tmp_path / "tools")
    monkeypatch.setenv("MODELSHIP_TOOLS_CACHE", str(tmp_path / "cache"))
    tool = go_tools.GoTool("hello", "example.com/greeting", ".")
    said = []

    binary = go_tools.ensure_go_tool(tool, said.append)
    assert binary == tmp_path / "cache" / "hello" / "v1.2.3" / "hello"
    assert subprocess.run([binary], capture_output=True, text=True).stdout == \
        "hello from the pinned module\n"
    assert any(line.startswith("building hello v1.2.3") for line in said)

    said.clear()
    assert go_tools.ensure_go_tool(tool, said.append) == binary
    assert said == []  # reused: nothing built

    (tool.module_dir / "go.sum").write_text("\n")  # a re-pin at the same version
    go_tools.ensure_go_tool(tool, said.append)
    assert any(line.startswith("building hello") for line in said)
