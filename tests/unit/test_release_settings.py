"""release.* settings through the real CLI: the documented -f file is accepted, mistakes refused."""

from __future__ import annotations

import re

import pytest
import yaml

from modelship.settings import PROJECT_ROOT
from tests.unit.test_config_errors import invoke, one_line

pytestmark = pytest.mark.subprocess_project_code


def documented_example() -> str:
    text = (PROJECT_ROOT / "docs" / "operations.md").read_text()
    return re.search(r"<!-- canary-settings-example -->\n```yaml\n(.*?)```", text,
                     re.DOTALL).group(1)


def test_the_documented_canary_settings_are_accepted(tmp_path):
    runtime_file = tmp_path / "canary.yaml"
    runtime_file.write_text(documented_example())
    assert yaml.safe_load(runtime_file.read_text())["modelship"]["environments"]["local"][
        "release"]["canary"]["steps"] == [10, 25, 50, 100]

    result = invoke("-f", str(runtime_file), "diff", "--env=local")

    assert result.returncode == 0, result.stderr
    assert "nothing to compare" in result.stdout


@pytest.mark.parametrize("change, named", [
    ("intervall: 60s", "release.canary.intervall is not a setting (did you mean 'interval'?)"),
    ("steps: [10, 50]", "must rise step by step and end with 100"),
    ("drift_measure: kl", "release.canary.drift_measure"),
])
def test_a_mistyped_canary_setting_is_refused_in_one_line(tmp_path, change, named):
    key = change.split(":")[0]
    lines = [line for line in documented_example().splitlines()
             if not line.strip().startswith(f"{key.rstrip('l')}:")
             and not line.strip().startswith(f"{key}:")]
    lines.append(f"          {change}")
    runtime_file = tmp_path / "canary.yaml"
    runtime_file.write_text("\n".join(lines) + "\n")

    line = one_line(invoke("-f", str(runtime_file), "diff", "--env=local"))

    assert line.startswith(f"diff failed: -f {runtime_file}: modelship.environments.local.")
    assert named in line
