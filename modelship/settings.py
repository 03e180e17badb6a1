"""Typed, per-environment settings read from Invoke's configuration layers.

`invoke.yaml` holds `modelship.defaults` and `modelship.environments.<env>`; this module
applies the INVOKE_MODELSHIP_* variables, merges the defaults with the environment a task
runs against, validates the result against `settings_schema` and returns one immutable
`Settings` object, made of the very models that validated it. Every mistake (an unknown key or variable, a bad value, a missing `-f`
file) ends as one `PipelineError` line naming the key and where it came from. It must never
hold environment-specific values itself: those live in config files only.
"""

from __future__ import annotations

import copy
import difflib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from modelship_serving.contract import AppContract

from . import stage_files
from .errors import PipelineError
from .settings_schema import (
    AppSection,
    Dns1035Label,
    EnvironmentName,
    EnvironmentSection,
    ModelName,
    ModelshipSection,
    is_text,
    leaf_paths,
    model_at,
)

# Re-exported for the modules and tests that take the project's root from here.
PROJECT_ROOT = stage_files.PROJECT_ROOT


def _merge(base: dict, override: Mapping) -> dict:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _plain(value: Any) -> Any:
    """Invoke's DataProxy objects to plain dicts, so merging and dataclasses see real types."""
    if isinstance(value, Mapping):
        return {key: _plain(value[key]) for key in value}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


class Settings(EnvironmentSection):
    """One environment's settings as the code reads them: the validated sections of
    `EnvironmentSection` (defaults merged with the environment), with the environment's
    name and the top of the `modelship` block. Immutable."""

    env: EnvironmentName
    app_name: Dns1035Label
    model_name: ModelName

    @property
    def image_repository(self) -> str:
        """Registry-qualified repository, e.g. `myregistry.azurecr.io/digits-api`."""
        if not self.registry.host:
            raise PipelineError(
                f"No registry is configured for environment '{self.env}'.",
                f"Set modelship.environments.{self.env}.registry.host in invoke.yaml.",
            )
        return f"{self.registry.host}/{self.image.repository}"

    @property
    def contract(self) -> AppContract:
        """The app's contract (the `app` section) as the checks and the image's server use it."""
        return AppContract(**self.app.model_dump(exclude={"wsgi"}))

    @property
    def serves_sample_api(self) -> bool:
        """Whether the image runs the sample app, whose server also speaks the v2 API."""
        return self.app.wsgi == AppSection().wsgi

    @property
    def render_dir(self) -> Path:
        return stage_files.on_disk(stage_files.RENDER_DIR, self.env)


def _has_path(data: Any, path: tuple) -> bool:
    for key in path:
        in_mapping = isinstance(data, Mapping) and key in data
        in_list = isinstance(data, list) and isinstance(key, int) and 0 <= key < len(data)
        if not (in_mapping or in_list):
            return False
        data = data[key]
    return True


def _dotted(path: tuple) -> str:
    text = ""
    for key in path:
        text += f"[{key}]" if isinstance(key, int) else (f".{key}" if text else str(key))
    return text


class _Origins:
    """Where a value came from, so an error sends the user to the file or variable to fix."""

    def __init__(self, config: Any, from_env_vars: dict[tuple, str]):
        self.from_env_vars = from_env_vars
        self.project_file = Path(getattr(config, "_project_path", None) or "invoke.yaml").name
        runtime_path = getattr(config, "_runtime_path", None)
        # Highest precedence first, the order in which invoke merges its layers.
        candidates = [
            ("the Invoke configuration (changed at run time)", "_modifications"),
            ("the Invoke overrides", "_overrides"),
            (f"-f {runtime_path}", "_runtime"),
            ("an INVOKE_ variable", "_env"),
            (self.project_file, "_project"),
            (getattr(config, "_user_path", None) or "the user config file", "_user"),
            (getattr(config, "_system_path", None) or "the system config file", "_system"),
        ]
        self.layers = [(label, getattr(config, attribute, None) or {})
                       for label, attribute in candidates]

    def of(self, path: tuple) -> str:
        if path in self.from_env_vars:
            return self.from_env_vars[path]
        for label, layer in self.layers:
            if _has_path(layer, path):
                return label
        return self.project_file


# --- INVOKE_MODELSHIP_* variables -------------------------------------------------------------
# Invoke itself only overrides keys the loaded files already hold, at the exact place they
# hold them; this module resolves a variable against the schema instead, so any setting can
# be overridden for any environment.

ENV_VAR_PREFIX = "INVOKE_MODELSHIP_"
_TOP_LEVEL_SETTINGS = tuple(name for name, field in ModelshipSection.model_fields.items()
                            if field.annotation is str)
# Invoke ranks these above its environment-variable layer; so does this module.
_LAYERS_ABOVE_ENV_VARS = ("_runtime", "_overrides", "_modifications")


def _variable(path: tuple) -> str:
    return ENV_VAR_PREFIX + "_".join(path).upper()


def _settings_by_variable(environments: Mapping) -> dict[str, tuple]:
    """Every variable that names a setting, with the key path (below `modelship`) it sets."""
    paths = [(name,) for name in _TOP_LEVEL_SETTINGS]
    for path in leaf_paths(EnvironmentSection):
        paths.append(("defaults",) + path)
        paths.extend(("environments", env) + path for env in environments)
    return {_variable(path): path for path in paths}


def _is_text_setting(path: tuple) -> bool:
    if len(path) == 1:
        return True
    return is_text(EnvironmentSection, path[1:] if path[0] == "defaults" else path[2:])


def _parse_variable(name: str, raw: str, path: tuple) -> Any:
    # Text is taken as written: YAML would turn version 1.30 into the number 1.3.
    if _is_text_setting(path):
        return raw
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        raise PipelineError(f"{name}={raw!r} is not a YAML value.",
                            "Write a number, true/false, or a list such as [a, b].") from None


def _unknown_variable(name: str, settings_by_variable: Mapping, environments: Mapping):
    rest = name[len(ENV_VAR_PREFIX):]
    if rest.startswith("ENVIRONMENTS_") and not any(
            rest.startswith(f"ENVIRONMENTS_{env.upper()}_") for env in environments):
        return PipelineError(f"{name} names no environment of modelship.environments.",
                             f"Known environments: {', '.join(sorted(environments)) or 'none'}.")
    nearest = difflib.get_close_matches(name, settings_by_variable, n=1)
    hint = (f" (did you mean {nearest[0]}, which sets "
            f"{_dotted(('modelship',) + settings_by_variable[nearest[0]])}?)") if nearest else ""
    return PipelineError(f"{name} names no modelship setting{hint}.",
                         "Rename or unset it; README.md (Configuration) says which variables work.")


def _set_path(data: dict, path: tuple, value: Any) -> None:
    for key in path[:-1]:
        if data.get(key) is None:
            data[key] = {}
        data = data[key]
        if not isinstance(data, dict):
            return  # the file holds a value where a section belongs; validation says so
    data[path[-1]] = value


def _apply_env_vars(section: dict, config: Any, environ: Mapping[str, str]) -> dict[tuple, str]:
    """Apply INVOKE_MODELSHIP_* variables to `section`; returns which variable set which path."""
    environments = section.get("environments")
    environments = environments if isinstance(environments, dict) else {}
    settings_by_variable = _settings_by_variable(environments)
    shadowing = [getattr(config, attribute, None) or {} for attribute in _LAYERS_ABOVE_ENV_VARS]
    applied = {}
    for name in sorted(environ):
        if not name.startswith(ENV_VAR_PREFIX):
            continue
        path = settings_by_variable.get(name)
        if path is None:
            raise _unknown_variable(name, settings_by_variable, environments)
        if any(_has_path(layer, ("modelship",) + path) for layer in shadowing):
            continue
        _set_path(section, path, _parse_variable(name, environ[name], path))
        applied[("modelship",) + path] = name
    return applied


# --- validation --------------------------------------------------------------------------------


def _requirement(error: Mapping, section: type | None) -> str:
    """What a value must be, in words, from one pydantic error."""
    kind, context = error["type"], error.get("ctx", {})
    if kind in ("value_error", "assertion_error"):
        return str(context["error"])
    if kind in ("model_type", "model_attributes_type") and section:
        return f"must be a section holding {', '.join(section.model_fields)}"
    phrases = {
        "int_type": "must be a whole number",
        "int_from_float": "must be a whole number",
        "bool_type": "must be true or false",
        "string_type": "must be text",
        "dict_type": "must be a mapping of keys to settings",
        "list_type": "must be a list such as [a.example.com]",
        "literal_error": f"must be one of {context.get('expected')}",
        "greater_than_equal": f"must be at least {context.get('ge')}",
        "less_than_equal": f"must be at most {context.get('le')}",
    }
    return phrases.get(kind, error["msg"].lower())


def _shown(value: Any) -> str:
    if value is None:
        return "empty (null)"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _validation_problem(error: ValidationError, schema: type, full_path, origins: _Origins,
                        missing_path=None, missing_note: str = "") -> PipelineError:
    """The first of pydantic's errors as one line naming the key, its source and the rule.

    `full_path` turns a location in the validated mapping into its key path in the config;
    `missing_path` does so for a key nobody set (by default the same).
    """
    missing_path = missing_path or full_path
    first = error.errors()[0]
    loc = tuple(key for key in first["loc"] if key != "[key]")
    path = full_path(loc)
    dotted = _dotted(path)
    more = error.error_count() - 1
    after = f" ({more} more problem{'s' if more > 1 else ''} after this one)" if more else ""
    if first["type"] == "extra_forbidden":
        known = list(model_at(schema, loc[:-1]).model_fields)
        nearest = difflib.get_close_matches(str(loc[-1]), known, n=1)
        if nearest:
            return PipelineError(f"{origins.of(path)}: {dotted} is not a setting "
                                 f"(did you mean '{nearest[0]}'?).", f"Rename or remove it.{after}")
        return PipelineError(f"{origins.of(path)}: {dotted} is not a setting.",
                             f"Settings there: {', '.join(known)}.{after}")
    if first["type"] == "missing":
        return PipelineError(f"{origins.project_file}: {_dotted(missing_path(loc))} is not "
                             f"set{missing_note}.", f"Add it.{after}")
    requirement = _requirement(first, model_at(schema, loc))
    if "[key]" in first["loc"]:
        return PipelineError(f"{origins.of(path)}: the name {_shown(first['input'])} in "
                             f"{_dotted(path[:-1])} {requirement}.", after.strip())
    if first["type"] == "value_error" and isinstance(first["input"], dict):
        # A rule across a section's keys (autoscaling's range) words itself.
        return PipelineError(f"{origins.of(path)}: {dotted} {requirement}.", after.strip())
    return PipelineError(f"{origins.of(path)}: {dotted} is {_shown(first['input'])}: "
                         f"it {requirement}.", after.strip())


# Settings that once lived elsewhere: silently ignoring the old place would validate
# manifests against the wrong version or fetch credentials for no cluster.
_MOVED_SETTINGS = {
    ("deployment", "kubernetes_version"): "kubernetes.version",
    ("deployment", "aks"): "kubernetes.aks",
}


def _refuse_moved_settings(merged: Mapping, full_path, origins: _Origins) -> None:
    for old_place, new_place in _MOVED_SETTINGS.items():
        if _has_path(merged, old_place):
            path = full_path(old_place)
            raise PipelineError(f"{origins.of(path)}: {_dotted(path)} has moved.",
                                f"Move it to {new_place}.")


def _refuse_missing_runtime_file(config: Any) -> None:
    # Invoke skips a -f file it cannot find and carries on with the other layers.
    runtime_path = getattr(config, "_runtime_path", None)
    found = getattr(config, "_runtime_found", None)
    if runtime_path and (found is False or (found is None and not Path(runtime_path).is_file())):
        raise PipelineError(f"The config file {runtime_path} (given with -f or "
                            "INVOKE_RUNTIME_CONFIG) does not exist.",
                            "Check the path: without it, the run would use invoke.yaml alone.")


def known_environments(config: Mapping) -> list[str]:
    return sorted(_plain(config.get("modelship", {})).get("environments", {}))


def _chosen_environment(top: ModelshipSection, env: str | None, origins: _Origins) -> str:
    environments = sorted(top.environments)
    chosen = env or top.default_env or "local"
    if chosen in top.environments:
        return chosen
    nearest = difflib.get_close_matches(chosen, environments, n=1)
    hint = f" (did you mean '{nearest[0]}'?)" if nearest else ""
    problem = f"Unknown environment '{chosen}'{hint}." if env else (
        f"{origins.of(('modelship', 'default_env'))}: modelship.default_env is '{chosen}', "
        f"which is not an environment{hint}.")
    raise PipelineError(problem, f"Use one of: {', '.join(environments) or 'none'} (or add it "
                                 "under modelship.environments in invoke.yaml).")


def load_settings(config: Mapping, env: str | None = None,
                  environ: Mapping[str, str] | None = None) -> Settings:
    """Validated settings for `env` (or the configured default) from an Invoke config.

    `environ` (default: `os.environ`) supplies the INVOKE_MODELSHIP_* overrides.
    """
    _refuse_missing_runtime_file(config)
    section = _plain(config.get("modelship", {}))
    if not section:
        raise PipelineError(
            "No 'modelship' section in the Invoke configuration.",
            "Run invoke from the project root, where invoke.yaml lives.",
        )
    environ = os.environ if environ is None else environ
    origins = _Origins(config, _apply_env_vars(section, config, environ))
    try:
        top = ModelshipSection.model_validate(section)
    except ValidationError as error:
        raise _validation_problem(error, ModelshipSection, lambda loc: ("modelship",) + loc,
                                  origins) from None
    env = _chosen_environment(top, env, origins)
    environment = top.environments[env]

    def full_path(loc: tuple) -> tuple:
        owner = ("environments", env) if _has_path(environment, loc) else ("defaults",)
        return ("modelship",) + owner + loc

    merged = _merge(top.defaults or {}, environment)
    _refuse_moved_settings(merged, full_path, origins)
    try:
        valid = EnvironmentSection.model_validate(merged)
    except ValidationError as error:
        raise _validation_problem(
            error, EnvironmentSection, full_path, origins,
            missing_path=lambda loc: ("modelship", "environments", env) + loc,
            missing_note=" (nor in modelship.defaults)") from None
    return Settings(env=env, app_name=top.app_name, model_name=top.model_name,
                    **{name: getattr(valid, name) for name in EnvironmentSection.model_fields})
