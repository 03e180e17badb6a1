"""Settings that reach a command line cannot run a shell command of their own.

Each setting below ends up in a kubectl, az or kubelogin command that `c.run` hands to a
shell. Through the real CLI (`invoke --dry`, values from INVOKE_MODELSHIP_* variables) every
payload must either be refused by the settings schema in one line, or reach the command as
one literal argument; in neither case may the `touch` it carries create a file.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from modelship.settings import PROJECT_ROOT

INVOKE = str(Path(sys.executable).with_name("invoke"))
DEV = "INVOKE_MODELSHIP_ENVIRONMENTS_DEV_"
# Every setting that reaches a command, and a task whose --dry run builds that command.
SETTINGS_IN_COMMANDS = [
    (DEV + "KUBERNETES_CONTEXT", "model.check"),
    (DEV + "KUBERNETES_CONTEXT", "aks.credentials"),
    (DEV + "KUBERNETES_NAMESPACE", "model.check"),
    (DEV + "KUBERNETES_AKS_RESOURCE_GROUP", "aks.credentials"),
    (DEV + "KUBERNETES_AKS_CLUSTER", "aks.credentials"),
    (DEV + "KUBERNETES_AKS_LOGIN", "aks.credentials"),
    (DEV + "KUBERNETES_ROLLOUT_TIMEOUT", "model.check"),
    (DEV + "REGISTRY_HOST", "model.check"),
    (DEV + "IMAGE_REPOSITORY", "model.check"),
    (DEV + "DEPLOYMENT_API_KEY_SECRET_NAME", "model.check"),
    (DEV + "DEPLOYMENT_API_KEY_KEY", "model.check"),
    ("INVOKE_MODELSHIP_APP_NAME", "model.check"),
]
PAYLOADS = [
    "x --help >/dev/null; touch {marker}; #",
    "x$(touch {marker})",
    "x`touch {marker}`",
    "x|touch {marker}",
    "x&&touch {marker}",
    "x\ntouch {marker}",
    # Passes the resource-group schema (parentheses are allowed there): must stay one word.
    "rg(touch{marker})",
]


def run_cli(task: str, variable: str, value: str, tmp_path) -> subprocess.CompletedProcess:
    env = {**os.environ, DEV + "KUBERNETES_AKS_RESOURCE_GROUP": "rg-dev",
           DEV + "KUBERNETES_AKS_CLUSTER": "aks-dev", variable: value}
    return subprocess.run([INVOKE, "--dry", task, "--env", "dev"], cwd=PROJECT_ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("payload", PAYLOADS)
@pytest.mark.parametrize(("variable", "task"), SETTINGS_IN_COMMANDS)
def test_no_setting_can_inject_a_shell_command(variable, task, payload, tmp_path):
    marker = tmp_path / "pwned"
    value = payload.format(marker=marker)
    result = run_cli(task, variable, value, tmp_path)
    output = result.stdout + result.stderr

    assert not marker.exists(), f"{variable}={value!r} ran a command:\n{output}"
    if result.returncode != 0:
        # Refused by the schema, in one line naming the variable.
        assert variable in output and "must be" in output, output
        assert "Traceback" not in output
        return
    # Accepted: it is in a printed command as exactly one argument.
    plain = re.sub(r"\x1b\[[0-9;]*m", "", output)
    words = [word for line in plain.splitlines() for word in shlex.split(line) if value in word]
    assert words, output
