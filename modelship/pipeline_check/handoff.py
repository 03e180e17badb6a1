"""Hand-off proof: on the expanded pipeline, every job (a fresh agent holding only the
checkout) produces or downloads each file its tasks read, as modelship/stage_files.py
declares, from artifacts that stages it depends on published.

Stages run on fresh agents that share only pipeline artifacts. Every job's steps are walked
in order: an `invoke` call needs each file its tasks read to be produced earlier in the job
or downloaded from an artifact that a stage this one depends on published. Only reads files.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from .. import stage_files
from .expansion import ExpandedJob, PipelineExpander, pipeline_roots, where as _where
from .invoke_calls import default_environment, parser as invoke_parser
from .problems import Problem
from .scripts import EXPRESSION, SCRIPT_INPUTS, SCRIPT_KEYS, InvokeCall, ShellScript, invoke_calls

SOURCES_DIRECTORIES = ("$(Build.SourcesDirectory)", "$(System.DefaultWorkingDirectory)",
                       "$(Build.Repository.LocalPath)", "$(Pipeline.Workspace)/s")
PIPELINE_WORKSPACE = "$(Pipeline.Workspace)"


@dataclass(frozen=True)
class Artifact:
    stage: str
    contents: frozenset[str]  # paths inside the artifact; "" is the artifact's whole root


def _path_pattern(path: str) -> re.Pattern:
    return re.compile(re.escape(path).replace(re.escape(stage_files.ENV_PLACEHOLDER), "[^/]+"))


DECLARED_FOLDERS = tuple(
    _path_pattern(path) for declared in stage_files.TASK_FILES.values()
    for path in (*declared.reads, *declared.writes) if path.endswith("/"))


def _covers(available: set[str], path: str) -> bool:
    """The file or folder is on the agent: itself, or a folder holding it, is available."""
    return path in available or any(
        entry.endswith("/") and path.startswith(entry) for entry in available)


def _join(folder: str, entry: str) -> str:
    return f"{folder}/{entry}" if folder else entry


def _project_path(raw) -> str | None:
    """A pipeline path as a path relative to the project root; None when it points elsewhere."""
    text = str(raw).strip()
    for directory in SOURCES_DIRECTORIES:
        if text == directory or text.startswith(directory + "/"):
            text = text[len(directory):].lstrip("/")
            break
    else:
        if text.startswith(("$(", "/", "~")) or EXPRESSION.search(text):
            return None
    normalized = posixpath.normpath(text) if text else "."
    if normalized == ".":
        return ""
    return None if normalized.startswith("..") else normalized


class HandOffChecker:
    """Walks the jobs of the pipelines that `expander` expands; problems share its list."""

    def __init__(self, expander: PipelineExpander, namespace, default_env: str):
        self.expander = expander
        self.repository_root = expander.repository_root
        self.parser = invoke_parser(namespace)
        self.default_env = default_env
        self.problems = expander.problems

    def check_pipeline(self, path: Path) -> None:
        jobs, depends_on = self.expander.pipeline_jobs(path)
        upstream = {stage: self._upstream(stage, depends_on) for stage in depends_on}
        published: dict[str, Artifact] = {}
        for stage in self._in_dependency_order(depends_on):
            for job in (job for job in jobs if job.stage == stage):
                self._walk(job, upstream[stage], published)

    @staticmethod
    def _upstream(stage: str, depends_on: dict[str, list[str]]) -> set[str]:
        seen: set[str] = set()
        pending = list(depends_on.get(stage, ()))
        while pending:
            name = pending.pop()
            if name not in seen:
                seen.add(name)
                pending.extend(depends_on.get(name, ()))
        return seen

    @staticmethod
    def _in_dependency_order(depends_on: dict[str, list[str]]) -> list[str]:
        ordered: list[str] = []
        remaining = list(depends_on)
        while remaining:
            ready = [stage for stage in remaining
                     if all(needed in ordered or needed not in depends_on
                            for needed in depends_on[stage])]
            ready = ready[:1] or remaining[:1]  # a dependency cycle: Azure rejects it anyway
            ordered.append(ready[0])
            remaining.remove(ready[0])
        return ordered

    def _walk(self, job: ExpandedJob, upstream: set[str], published: dict[str, Artifact]) -> None:
        available: set[str] = set()  # project files on the agent beyond the checkout
        for step in job.steps:
            where = _where(step, job.path)
            task_name = str(step.get("task", "")).split("@")[0]
            inputs = step.get("inputs") if isinstance(step.get("inputs"), dict) else {}
            if "publish" in step:
                self._publish(job, where, step["publish"], step.get("artifact"), available,
                              published)
            elif task_name == "PublishPipelineArtifact":
                self._publish(job, where, inputs.get("targetPath", inputs.get("path")),
                              inputs.get("artifact", inputs.get("artifactName")), available,
                              published)
            elif "download" in step:
                if str(step["download"]) == "current":
                    artifact = step.get("artifact")
                    default = _join(PIPELINE_WORKSPACE, str(artifact)) if artifact \
                        else PIPELINE_WORKSPACE
                    self._download(job, where, artifact, step.get("path", default), upstream,
                                   available, published)
            elif task_name == "DownloadPipelineArtifact":
                if str(inputs.get("buildType", inputs.get("source", "current"))) == "current":
                    artifact = inputs.get("artifactName", inputs.get("artifact"))
                    target = inputs.get("targetPath", inputs.get("path", inputs.get(
                        "downloadPath", PIPELINE_WORKSPACE)))
                    self._download(job, where, artifact, target, upstream, available, published)
            else:
                for script in self._step_scripts(step, where):
                    for call in invoke_calls(script):
                        self._run(job, call, available)

    @staticmethod
    def _step_scripts(step: dict, where: tuple[Path, int | None]) -> list[ShellScript]:
        inputs = step.get("inputs") if isinstance(step.get("inputs"), dict) else {}
        texts = [step.get(key) for key in SCRIPT_KEYS] + [inputs.get(key) for key in SCRIPT_INPUTS]
        return [ShellScript(getattr(text, "path", None) or where[0],
                            getattr(text, "line", None) or where[1] or 0, str(text))
                for text in texts if isinstance(text, str)]

    def _run(self, job: ExpandedJob, call: InvokeCall, available: set[str]) -> None:
        from invoke.parser import ParseError

        try:
            parsed = self.parser.parse_argv(list(call.argv))
        except ParseError:
            return  # invoke_call_problems reports it
        for context in (context for context in parsed if context.name):
            env_flag = context.args.get("env")
            given = env_flag is not None and env_flag.got_value
            env = str(env_flag.value) if given else self.default_env
            command = f"invoke {context.name}" + (f" --env={env}" if given else "")
            if context.name not in stage_files.TASK_FILES:
                self.problems.append(Problem(
                    call.path, call.line,
                    f"job {job.label}: `{command}`: the task declares no files in "
                    "modelship/stage_files.py TASK_FILES, so what it needs cannot be checked"))
                continue
            declared = stage_files.files_for(context.name, env)
            for needed in declared.reads:
                if not _covers(available, needed):
                    self.problems.append(Problem(
                        call.path, call.line,
                        f"job {job.label}: `{command}` reads {needed} but nothing earlier in this "
                        "job produces it and no artifact of an earlier stage is downloaded there"))
            available.update(declared.writes)

    def _publish(self, job: ExpandedJob, where, raw_path, artifact, available: set[str],
                 published: dict[str, Artifact]) -> None:
        if not artifact:
            return  # Azure Pipelines names it after the job; nothing downloads it by that name
        path = _project_path(raw_path) if raw_path is not None else ""
        contents: frozenset[str] = frozenset()
        if path is not None:
            folder = f"{path}/" if path else ""
            inside = {entry[len(folder):] for entry in available
                      if entry.startswith(folder) and entry != folder}
            if path and path in available:
                contents = frozenset({posixpath.basename(path)})
            elif folder in available:
                contents = frozenset({""})
            elif inside:
                contents = frozenset(inside)
            else:
                # Only a folder holding it is on the agent, or nothing is: file or folder is
                # then told by the declarations, or by the checkout for a source path.
                is_folder = (any(pattern.fullmatch(folder) for pattern in DECLARED_FOLDERS)
                             or (self.repository_root / path).is_dir())
                contents = frozenset({""} if is_folder else {posixpath.basename(path)})
                if folder.startswith(stage_files.BUILD_DIR) and not _covers(available, path):
                    self.problems.append(Problem(
                        *where, f"job {job.label}: publishes {path} as artifact '{artifact}' but "
                        "nothing earlier in this job produces it"))
        published[str(artifact)] = Artifact(job.stage, contents)

    def _download(self, job: ExpandedJob, where, artifact, raw_target, upstream: set[str],
                  available: set[str], published: dict[str, Artifact]) -> None:
        target = _project_path(raw_target)
        if not artifact:
            # Every artifact of the run, each into a folder named after it.
            for name, found in published.items():
                if found.stage in upstream and target is not None:
                    self._land(found, _join(target, name), available)
            return
        found = published.get(str(artifact))
        if found is None or found.stage not in upstream:
            reason = (f"no stage that {job.stage or 'this stage'} depends on publishes it"
                      if found is None else
                      f"it is published by stage {found.stage}, which stage {job.stage} does not "
                      "depend on (directly or through dependsOn)")
            self.problems.append(Problem(*where, f"job {job.label}: downloads artifact "
                                                 f"'{artifact}', but {reason}"))
            if found is None:
                return
            # Landing it anyway keeps the report to this one cause, not every read after it.
        if target is not None:
            self._land(found, target, available)

    @staticmethod
    def _land(artifact: Artifact, target: str, available: set[str]) -> None:
        for entry in artifact.contents:
            if entry:
                available.add(_join(target, entry))
            elif target:  # the whole folder; at the project root it would claim every file
                available.add(f"{target}/")


def handoff_problems(ci_dir: Path, namespace, default_env: str | None = None) -> list[Problem]:
    """Every job's `invoke` calls find the files they read on a fresh agent."""
    checker = HandOffChecker(PipelineExpander(ci_dir), namespace,
                             default_env or default_environment())
    for path in pipeline_roots(ci_dir):
        try:
            checker.check_pipeline(path)
        except yaml.YAMLError:
            continue  # the schema check reports it
    return checker.problems
