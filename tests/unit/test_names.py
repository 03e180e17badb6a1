"""The shared names: one meaning of "running in CI", and labels the Dockerfile really sets."""

from __future__ import annotations

import re

import pytest

from modelship import image, names
from modelship.settings import PROJECT_ROOT


@pytest.mark.parametrize("environ, in_ci", [
    ({}, False),
    ({"CI": "true"}, True),
    ({"CI": "1"}, True),
    ({"CI": " Yes "}, True),
    ({"CI": "false"}, False),
    ({"CI": "0"}, False),
    ({"CI": "No"}, False),
    ({"CI": ""}, False),
    ({"TF_BUILD": "True"}, True),
    ({"TF_BUILD": "False"}, False),
    ({"TF_BUILD": "False", "CI": "true"}, True),
])
def test_running_in_ci_means_ci_or_tf_build_set_to_a_truthy_value(environ, in_ci):
    assert names.running_in_ci(environ) is in_ci


def test_azure_pipelines_is_tf_build_alone():
    assert names.running_in_azure_pipelines({"TF_BUILD": "True"})
    assert not names.running_in_azure_pipelines({"CI": "true"})


def test_the_dockerfile_sets_every_label_the_build_passes_on():
    dockerfile = (PROJECT_ROOT / "Dockerfile").read_text()
    label_instruction = dockerfile[dockerfile.rindex("\nLABEL "):]
    set_there = dict(re.findall(r'([\w.]+)="\$\{(\w+)\}"', label_instruction))
    for label, argument in image.LABEL_BUILD_ARGS.items():
        assert set_there.get(label) == argument, label
    for label in (names.REVISION_LABEL, names.MODEL_SHA256_LABEL, names.MODEL_VERSION_LABEL,
                  names.INPUTS_LABEL):
        assert label in set_there
