"""The pipeline's stages as functions: what each Invoke task does, and the deploy loop.

Each stage takes the environment's settings and `dry`, reports progress through `echo` and
returns the one line the task prints when it ends. Stages hand over only through the release
record (`release_record`) and the rendered folder, never through each other's working
folders, so any stage can run on its own agent from the artifacts it is given. Under `dry`
a stage reads what it needs to describe its work and changes nothing: no file, upload,
push, container or mutating kubectl/az call; its line says what it would do.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import release_record
from .console import current, human_size
from .errors import PipelineError
from .names import Echo, inputs_tag
from .outcome import FAILED, NOT_NEEDED, UP_TO_DATE, Outcome, dry_run, not_needed, ran, up_to_date
from .release_targets import release_target
from .settings import Settings
from .stage_files import MODEL_DIR, PROJECT_ROOT, PUBLISH_DIR, RECORD_FILE, on_disk, shown

NO_RECORD_YET = f"no {RECORD_FILE} yet: the one `invoke build` would write"


class StageFailed(PipelineError):
    """A stage of `deploy` failed; says which, and how to re-run it alone."""

    def __init__(self, stage: str, env: str, error: PipelineError):
        super().__init__(
            f"deploy stopped at {stage}: {error.problem}",
            f"{error.fix} (re-run this stage alone with `invoke {stage} --env={env}`)".strip(),
        )
        self.stage = stage


def open_model_store(settings: Settings):
    from . import model_store

    section = settings.model_store
    return model_store.open_store(section.uri, section.account_url, section.endpoint_url,
                                  settings.env)


# --- fetch-model -----------------------------------------------------------------------------


def fetch_model(settings: Settings, *, version: str | None = None, locked: bool = False,
                lock_file: str | None = None, dry: bool, echo: Echo) -> Outcome:
    from . import model_store
    from .transfer import console_progress

    version = version or "latest"
    if dry:
        wanted = "the locked version" if locked else version
        line = (f"[dry] would fetch {wanted} from {settings.model_store.uri} into "
                f"{MODEL_DIR.rstrip('/')} and verify it")
        try:
            open_model_store(settings)
        except PipelineError as problem:
            # Said, not raised: a dry run reports what the real one would run into.
            line += f"; the real run would stop here: {problem.problem}"
        return dry_run(line)
    store = open_model_store(settings)
    result = model_store.fetch(store, on_disk(MODEL_DIR), version, locked=locked,
                               lock_file=Path(lock_file) if lock_file else None,
                               progress=console_progress, public_key=_public_key(settings))
    model = f"model {result.version} ({human_size(result.size)}, sha256 {result.sha256[:12]}…)"
    if result.downloaded:
        return ran(f"{model}: downloaded and verified")
    return up_to_date(f"{model}: already up to date, nothing downloaded")


def _public_key(settings: Settings) -> Path | None:
    configured = settings.model_store.public_key
    return PROJECT_ROOT / configured if configured else None


# --- build -----------------------------------------------------------------------------------


def base_image(settings: Settings, *, dry: bool, echo: Echo) -> str:
    from .base_image import ensure_base_image
    from .engine import docker_client

    if not settings.image.offline_base:
        return f"base image {settings.image.base}: pulled by the engine (offline_base is off)"
    if dry:
        return f"[dry] would build {settings.image.base} offline if missing"
    return ensure_base_image(docker_client(), settings.image.base, settings.image.python_version,
                             echo)


def lock(settings: Settings, *, dry: bool) -> str:
    """The image's lock, then (in the toolkit's own checkout) the host's: the virtualenv's,
    checkov's, kserve's and Azurite's."""
    from . import host_locks
    from .image import IMAGE_LOCK, IMAGE_REQUIREMENTS_IN
    from .stage_files import in_toolkit_checkout
    from .wheelhouse import lock_requirements

    if dry and not in_toolkit_checkout():
        return f"[dry] would lock {IMAGE_REQUIREMENTS_IN.name} for {settings.image.platform}"
    if dry:
        return (f"[dry] would lock {IMAGE_REQUIREMENTS_IN.name} for {settings.image.platform}, "
                f"and the host's {host_locks.HOST_LOCK.name}, {host_locks.CHECKOV_LOCK.name}, "
                f"{host_locks.KSERVE_LOCK.name} and Azurite's package-lock.json")
    count = lock_requirements(IMAGE_REQUIREMENTS_IN, IMAGE_LOCK, settings.image.python_version,
                              settings.image.platform)
    if not in_toolkit_checkout():
        return f"locked {count} packages into requirements/{IMAGE_LOCK.name}"
    host = host_locks.lock_host()
    checkov = host_locks.lock_checkov()
    kserve = host_locks.lock_kserve()
    azurite = host_locks.lock_azurite()
    return (f"locked {count} packages into requirements/{IMAGE_LOCK.name}, {host} into "
            f"{host_locks.HOST_LOCK.name}, {checkov} into {host_locks.CHECKOV_LOCK.name}, "
            f"{kserve} into {host_locks.KSERVE_LOCK.name}; {azurite} re-resolved")


def build(settings: Settings, *, force: bool = False, no_cache: bool = False, dry: bool,
          echo: Echo) -> Outcome:
    """Build the image, or find it already in the registry (same inputs): nothing rebuilt."""
    from . import image
    from .base_image import ensure_base_image
    from .engine import docker_client
    from .gitinfo import source_state
    from .registry import login
    from .sbom import write_sbom
    from .wheelhouse import prepare_wheelhouse

    if settings.image.audit.enabled:
        # Before anything else, and under --dry too: it only reads the lock and the file.
        from .audit import gate

        echo(gate(settings, image.IMAGE_LOCK))
    if dry:
        model_dir = MODEL_DIR.rstrip("/")
        model = (model_dir if (image.MODEL_DIR / "metadata.json").is_file()
                 else f"the model `invoke fetch-model` would fetch ({model_dir} is empty)")
        return dry_run(f"[dry] would build {settings.image.repository} from "
                       f"{settings.image.base} with {model} (skipped if the registry holds the "
                       f"same inputs) and write {RECORD_FILE}")
    client = docker_client()
    if settings.image.offline_base:
        echo(ensure_base_image(client, settings.image.base, settings.image.python_version, echo))
    echo(prepare_wheelhouse(image.IMAGE_LOCK, image.WHEELHOUSE, settings.image.python_version,
                            settings.image.platform))
    plan = image.plan_build(client, settings, source_state())
    cache_from: list[str] = []
    if settings.registry.host:
        try:
            auth = login(client, settings)
        except PipelineError as error:
            echo(f"warning: cannot check the registry for an up-to-date image ({error})")
        else:
            reference = f"{settings.image_repository}:{inputs_tag(plan.inputs)}"
            digest = None if force or no_cache else image.registry_digest(client, reference, auth)
            cached = f"{settings.image_repository}@{digest}" if digest else None
            problem = cached and image.cached_image_problem(client, cached, plan, auth,
                                                            settings)
            if problem:
                echo(f"not reusing {cached} ({reference}): {problem}; rebuilding")
            elif digest:
                record = image.record_up_to_date(plan, settings, digest)
                release_record.save(_keep_contract_test(record, settings.env))
                echo(write_sbom(client, record.local_image, record.image.name,
                                record.image.labels))
                return up_to_date(f"up to date: {record.image.name} has the same inputs; "
                                  "nothing built")
            if not image.built_here_before(client, settings.image.repository):
                cache = image.pull_cache_image(client, settings.image_repository, auth)
                cache_from = [cache] if cache else []
    record = image.build_image(client, settings, plan, cache_from, echo, no_cache)
    release_record.save(record)
    echo(write_sbom(client, record.local_image, record.image.name, record.image.labels))
    return ran(f"built {record.image.name} ({human_size(record.image.size_bytes)})")


def _keep_contract_test(record, env: str):
    """An up-to-date build is the image the previous record pushed for `env`: if the
    contract test passed for that image, it still has."""
    if not release_record.exists():
        return record
    try:
        previous = release_record.load()
    except PipelineError:
        return record
    pushed = previous.push_for(env)
    if (previous.contract_test is None or pushed is None
            or pushed.reference != record.image.name
            or previous.contract_test.image not in (previous.local_image, pushed.reference)):
        return record
    return record.with_contract_test(record.image.name)


# --- test ------------------------------------------------------------------------------------


def test(c, settings: Settings, *, unit: bool = True, force: bool = False, dry: bool,
         echo: Echo) -> Outcome:
    """Unit tests, then the container contract test on the image the record names; each is
    skipped when it already passed for exactly these inputs (`force` runs them anyway)."""
    from .contract_check import run_contract
    from .engine import docker_client

    units_ran = unit and run_unit_tests(c, force=force, dry=dry, echo=echo)
    if dry:
        subject = (release_record.load().image.name if release_record.exists()
                   else NO_RECORD_YET)
        return dry_run(f"[dry] would run the container contract test on {subject}, unless it "
                       "passed for that image already")
    record = release_record.load()
    image_ref = record.image.id or record.image.name
    tested = record.contract_test.image if record.contract_test else None
    if tested == image_ref and not force:
        line = f"container test: already passed for {record.image.name}"
        return ran(line) if units_ran else up_to_date(f"up to date: {line}")
    client = docker_client()
    if record.image.id is None:
        # An up-to-date build was not rebuilt here: test the very image the registry holds.
        from .engine import pull
        from .registry import login

        pull(client, image_ref, login(client, settings))
    run_contract(client, image_ref, record.model.as_metadata(), echo, settings.contract)
    release_record.save(record.with_contract_test(image_ref))
    return ran(f"container test passed for {record.image.name}")


# pytest's exit codes: no test selected (what an unaffected change gives), and an internal
# or usage error (the run itself broke, not a test).
PYTEST_NOTHING_SELECTED = 5
PYTEST_BROKE = (3, 4)


def run_unit_tests(c, *, force: bool, dry: bool, echo: Echo) -> bool:
    """The unit tests, unless they passed for the same inputs; True when they ran."""
    import os
    import time

    from . import unit_test_cache
    from .stage_files import PROJECT_ROOT

    if not (PROJECT_ROOT / "tests" / "unit").is_dir():
        # A project without unit tests of its own: the container test still runs.
        echo("unit tests: none (no tests/unit folder in the project)")
        return False
    digest = unit_test_cache.inputs_digest()
    previous = None if force else unit_test_cache.passed_run(digest)
    if previous is not None:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(previous.passed_at))
        echo(f"unit tests: up to date (passed at {when} for these inputs, sha256 "
             f"{digest[:12]}…; `invoke test --force` runs them again)")
        return False
    run = unit_test_cache.plan_run(force, os.environ)
    started = time.monotonic()
    results = _side_by_side(c, run.commands, run.env, dry)
    if dry:
        return True
    if run.fallback and any(result.exited in PYTEST_BROKE for result in results):
        # The selection itself failed (a damaged coverage file, a testmon bug): say so and
        # run everything the plain way.
        echo("unit tests: test selection failed (pytest-testmon), running all of them")
        unit_test_cache.forget_coverage()
        run = dataclasses.replace(run, commands=(run.fallback,), scope="all",
                                  collects_coverage=False, fallback="")
        results = _side_by_side(c, run.commands, {}, dry)
    failed = next((result for result in results
                   if not result.ok and result.exited != PYTEST_NOTHING_SELECTED), None)
    if failed is not None:
        unit_test_cache.forget()
        if run.collects_coverage:
            unit_test_cache.forget_coverage()
        if not current().verbose:
            echo("\n".join(failed.stdout.strip().splitlines()[-15:]))
        raise PipelineError("The unit tests failed.", "Fix the failures listed above.")
    if run.collects_coverage:
        unit_test_cache.remember_baseline()
    unit_test_cache.remember_pass(digest, time.monotonic() - started)
    summaries = [(result.stdout.strip().splitlines() or ["no tests selected"])[-1].strip("= ")
                 for result in results]
    echo(f"unit tests ({run.scope}): {'; '.join(summaries)}")
    return True


def _side_by_side(c, commands: tuple[str, ...], env: dict, dry: bool) -> list:
    """Run independent commands at once and wait for all (under --dry, Invoke prints each
    instead of running it)."""
    hide = None if current().verbose else "stdout"
    pending = [c.run(command, warn=True, pty=False, env=env, hide=hide,
                     asynchronous=not dry and len(commands) > 1) for command in commands]
    return [promise.join() if hasattr(promise, "join") else promise for promise in pending]


# --- push ------------------------------------------------------------------------------------


def push(settings: Settings, *, force: bool = False, dry: bool, echo: Echo) -> Outcome:
    from .engine import docker_client
    from .registry import push_image

    if dry and not release_record.exists():
        return dry_run(f"[dry] would push the image ({NO_RECORD_YET}) to "
                       f"{settings.image_repository}")
    from .provenance import ensure_signed, would_sign
    from .sbom import built_sbom, push_sbom

    record = release_record.load()
    pushed = None if force else record.push_for(settings.env)
    if pushed:
        # The image may be there from a build of the same inputs at another commit: this
        # commit's provenance is attested all the same.
        signed = ensure_signed(settings, record, pushed, dry=dry, echo=echo,
                               sbom=built_sbom(record))
        if signed and not signed.startswith("signature and provenance"):
            echo(signed)
        return up_to_date(f"up to date: {pushed.reference} is already in the registry")
    if dry:
        echo(would_sign(settings, record))
        return dry_run(f"[dry] would push {record.image.name} to {settings.image_repository}")
    pushed = push_image(docker_client(), settings, record)
    release_record.save(record.with_push(settings.env, pushed))
    echo(ensure_signed(settings, record, pushed, dry=False, echo=echo,
                       sbom=built_sbom(record)))
    stored = push_sbom(settings, record, pushed)
    if stored:
        echo(stored)
    return ran(f"pushed {pushed.reference} ({human_size(pushed.bytes_pushed)} uploaded)")


# --- render ----------------------------------------------------------------------------------


def _release_to_render(settings: Settings, image: str | None):
    from .gitinfo import source_state
    from .manifests import Release

    if image:
        source = source_state()
        return Release.for_review(image, source.revision, source.dirty)
    record = release_record.load()
    return Release.from_record(record, record.require_push(settings.env))


def render(settings: Settings, *, image: str | None = None, check: bool = False,
           against: str | None = None, require_checkov: bool = False, dry: bool,
           echo: Echo) -> Outcome:
    from . import manifest_checks, manifests

    if dry and not image and (not release_record.exists()
                              or release_record.load().push_for(settings.env) is None):
        return dry_run(f"[dry] would render {shown(settings.render_dir)}/ for the image "
                       f"`invoke push --env={settings.env}` records")
    release = _release_to_render(settings, image)
    if check or dry:
        expected = Path(against) if against else settings.render_dir
        differences = manifests.check(settings, release, expected)
        if differences:
            echo("".join(differences).rstrip())
        if dry:
            effect = "changing the files in the diff above" if differences else "no change"
            return dry_run(f"[dry] would write {shown(settings.render_dir)}/ and validate it "
                           f"({effect})")
        if differences:
            raise PipelineError(
                f"The rendering for '{settings.env}' differs from {expected} (diff above).",
                f"Review the diff; `invoke render --env={settings.env}` writes the new one.",
            )
        return ran(f"rendering for '{settings.env}' matches {expected}")

    # Pods of an environment pull only from its own registry.
    registries = [settings.registry.host] if settings.registry.host else []
    checks = manifest_checks.checks_fingerprint(settings.kubernetes.version, require_checkov,
                                                registries)
    source = f" with --image {image}" if image else ""
    if manifests.already_rendered(settings, release, checks):
        return up_to_date(f"up to date: {shown(settings.render_dir)}/ already holds this "
                          f"rendering{source}, validated")

    def validate(folder: Path) -> list[str]:
        return manifest_checks.check_rendered(folder, settings.kubernetes.version,
                                              require_checkov, allowed_registries=registries)

    for line in manifests.render(settings, release, validate=validate, checks=checks):
        echo(line)
    return ran(f"rendered {len(list(settings.render_dir.glob('*.yaml')))} manifests into "
               f"{shown(settings.render_dir)}/{source}")


# --- apply, rollback, status, diff -----------------------------------------------------------


def apply(c, settings: Settings, *, yes: bool = False, smoke: bool = True,
          strategy: str | None = None, dry: bool, echo: Echo) -> Outcome:
    from .provenance import verify_release

    target = release_target(c, settings)
    if dry and not release_record.exists():
        return dry_run(f"[dry] would roll the pushed image out to {target.where} "
                       f"({NO_RECORD_YET})")
    record = release_record.load()
    if dry and record.push_for(settings.env) is None:
        return dry_run(f"[dry] would roll {record.image.name} out to {target.where} once "
                       f"`invoke push --env={settings.env}` has pushed it")
    pushed = record.require_push(settings.env)
    # Before the target changes anything: what is applied is what this key's owner built.
    verify_release(settings, record, pushed, dry=dry, echo=echo)
    if _strategy(settings, strategy) == "canary":
        return _canary(target, settings, record, pushed, yes=yes, dry=dry, echo=echo)
    return target.apply(record, pushed, smoke=smoke, yes=yes, dry=dry, echo=echo)


def provenance_keygen(settings: Settings, *, dry: bool) -> list[str]:
    from .provenance_keys import keygen

    return keygen(settings, dry=dry)


STRATEGIES = ("rolling", "canary")


def _strategy(settings: Settings, strategy: str | None) -> str:
    chosen = strategy or settings.release.strategy
    if chosen not in STRATEGIES:
        raise PipelineError(f"Unknown release strategy '{chosen}'.",
                            f"Use one of: {', '.join(STRATEGIES)}.")
    return chosen


def _canary(target, settings: Settings, record, pushed, *, yes: bool, dry: bool,
            echo: Echo) -> Outcome:
    """The canary through the target; its decisions go into the release record either way."""
    try:
        result = target.canary(record, pushed, yes=yes, dry=dry, echo=echo)
    except BaseException as stopped:
        interrupted = getattr(stopped, "canary_result", None)
        if interrupted is not None:
            _record_canary(settings, pushed, interrupted)
            if isinstance(stopped, KeyboardInterrupt):
                raise PipelineError(
                    f"The canary of {pushed.reference} was interrupted and rolled back: the "
                    "stable version serves every request.",
                    f"Run `invoke deploy --env={settings.env} --strategy=canary` again.") \
                    from None
        raise
    if isinstance(result, Outcome):
        return result
    _record_canary(settings, pushed, result)
    if not result.promoted:
        raise PipelineError(
            f"canary rolled back, the stable version serves every request: {result.reason}",
            f"The decisions are in {RECORD_FILE} (canary.{settings.env}); fix the release, "
            "or change release.canary's thresholds if they are wrong.")
    return ran(f"canary promoted: {pushed.reference} serves every request "
               f"({result.reason})")


def _record_canary(settings: Settings, pushed, result) -> None:
    record = release_record.load()
    release_record.save(record.with_canary(settings.env, release_record.CanaryRecord(
        reference=pushed.reference, outcome=result.outcome, reason=result.reason,
        decisions=[decision.as_record() for decision in result.decisions])))


def rollback(c, settings: Settings, *, dry: bool, echo: Echo) -> str:
    from .provenance import verify_rollback

    target = release_target(c, settings)
    # A canary a killed deploy left running: ending it is the rollback (the stable release
    # never stopped serving, nothing new starts).
    ended = target.end_interrupted_canary(dry=dry, echo=echo)
    if ended:
        return ended
    previous = None if dry else target.previous_release()
    # As before `apply`: what runs again is what this key's owner built, from the commit and
    # model the runtime kept for that release.
    verify_rollback(settings, previous.reference if previous else None,
                    previous.commit if previous else None,
                    previous.model_sha256 if previous else None, dry=dry, echo=echo)
    return target.rollback(previous, dry=dry, echo=echo)


def status(c, settings: Settings, *, dry: bool) -> list[str]:
    target = release_target(c, settings)
    state = target.status(dry=dry)
    if state is None:
        if dry:
            return []  # the read-only command was printed, nothing was read
        raise PipelineError(f"Nothing is deployed in '{settings.env}'.",
                            f"Run `invoke deploy --env={settings.env}`.")
    return [f"{settings.app_name} in {target.where}"] + [
        f"  {key.replace('_', ' '):16} {value}" for key, value in state.items()
    ]


def diff(c, settings: Settings, *, dry: bool) -> str:
    return release_target(c, settings).diff(dry=dry)


def aks_credentials(c, settings: Settings, *, dry: bool, echo: Echo) -> str:
    return release_target(c, settings).fetch_credentials(dry=dry, echo=echo)


# --- deploy ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[], Outcome]


def deploy(c, settings: Settings, *, strategy: str | None = None, dry: bool,
           echo: Echo) -> Outcome:
    """Every stage in order with its defaults; the first failure stops the rest. Ends with a
    table: each stage, whether it ran or was up to date, and its seconds."""
    import time

    from .console import StageRow

    target = release_target(c, settings)
    target.prepare(dry=dry, echo=echo)

    def render_if_read() -> Outcome:
        if not target.renders_manifests:
            return not_needed(f"render: not needed for runtime {target.runtime}, which reads "
                              "no manifests")
        return render(settings, dry=dry, echo=echo)

    stages = (
        Stage("fetch-model", lambda: fetch_model(settings, dry=dry, echo=echo)),
        Stage("build", lambda: build(settings, dry=dry, echo=echo)),
        Stage("test", lambda: test(c, settings, dry=dry, echo=echo)),
        Stage("push", lambda: push(settings, dry=dry, echo=echo)),
        Stage("render", render_if_read),
        Stage("apply", lambda: apply(c, settings, strategy=strategy, dry=dry, echo=echo)),
    )
    rows: list[StageRow] = []
    for stage in stages:
        echo(f"==> {stage.name} (--env={settings.env})")
        started = time.monotonic()
        try:
            outcome = stage.run()
        except PipelineError as error:
            rows.append(StageRow(stage.name, FAILED, time.monotonic() - started))
            current().stage_table(rows)
            raise StageFailed(stage.name, settings.env, error) from None
        rows.append(StageRow(stage.name, outcome.status, time.monotonic() - started))
        echo(outcome.line)
    current().stage_table(rows)
    if dry:
        run = [row.stage for row in rows if row.status != NOT_NEEDED]
        return dry_run(f"[dry] deploy --env={settings.env} would run {', '.join(run)}")
    if all(row.status in (UP_TO_DATE, NOT_NEEDED) for row in rows):
        return up_to_date(f"deploy --env={settings.env}: up to date, nothing changed")
    return ran(f"deploy --env={settings.env}: done")


# --- the local environment's services -------------------------------------------------------


def local_up(c, settings: Settings, *, dry: bool, echo: Echo) -> list[str]:
    if dry:
        return ["[dry] would start Docker Engine, the registry and Azurite where none answers, "
                "and the local edge if a deployment container runs"]
    return release_target(c, settings).start_services(echo)


def local_status(c, settings: Settings) -> list[str]:
    return release_target(c, settings).describe_services()


def local_down(c, settings: Settings, *, dry: bool) -> list[str]:
    if dry:
        return ["[dry] would remove the local deployment and stop the services local.up "
                "started"]
    return release_target(c, settings).stop_services()


def local_cluster_up(c, settings: Settings, *, dry: bool, echo: Echo) -> list[str]:
    """Build (once per machine) and start the environment's local control plane."""
    return release_target(c, settings).start_cluster(echo, dry=dry)


def local_cluster_down(c, settings: Settings, *, dry: bool) -> list[str]:
    return release_target(c, settings).stop_cluster(dry=dry)


# --- the data scientists' side ---------------------------------------------------------------


def publish_model(settings: Settings, *, version: str | None = None,
                  model_dir: str | None = None, model: str | None = None,
                  samples: str | None = None, name: str | None = None, task: str | None = None,
                  tolerance: float | str | None = None, force: bool = False,
                  signing_key: str | None = None, promote: bool = False, dry: bool) -> str:
    """Publish an ONNX file with its samples, a model folder, or the sample digits model.

    Whatever the source, the folder is opened as the app would open it and its golden
    samples replayed before anything is written to the store.
    """
    from . import model_store, publishing

    if (model is None) != (samples is None):
        raise PipelineError("--model and --samples go together.",
                            "Pass both: the ONNX file and the JSON of its golden samples.")
    if model is not None and model_dir is not None:
        raise PipelineError("--model and --model-dir both name a model.", "Pass one of them.")
    try:
        tolerance = float(tolerance) if tolerance is not None else None
    except ValueError:
        raise PipelineError(f"--tolerance {tolerance} is not a number.",
                            "Pass a relative tolerance such as 1e-4.") from None
    if model_dir is not None and version is None:
        version = str(model_store.read_model_dir(Path(model_dir))["version"])
    version = model_store.require_publishable_version(version or model_store.new_version())
    name = name or settings.model_name
    store = open_model_store(settings)
    if dry:
        try:
            latest = _latest_after(_current_latest(store), version, promote, would=True)
        except PipelineError as problem:
            latest = f"the real run would stop here: {problem.problem}"
        return f"[dry] would verify and publish {name} {version} to {store.uri}; {latest}"
    if model is not None:
        model_dir = publishing.export_own_model(
            Path(model), Path(samples), on_disk(PUBLISH_DIR) / version, name=name,
            version=version, task=task, tolerance=tolerance)
    elif model_dir is None:
        from .sample_model import train_digits_model

        model_dir = train_digits_model(on_disk(PUBLISH_DIR) / version, name=name,
                                       version=version)
    # The schema first: it names the bad field.
    described = model_store.read_model_dir(Path(model_dir))
    verified = publishing.verify_serves(Path(model_dir))
    signature = None
    if signing_key is not None:
        from . import signing

        signature = Path(model_dir) / "model.sig"
        signing.sign(Path(model_dir) / model_store.MODEL_FILE, described, Path(signing_key),
                     signature)
    metadata = model_store.publish(store, Path(model_dir), version, force=force,
                                   signature=signature, promote=promote)
    return (f"published {metadata['name']} {version} (sha256 {metadata['sha256'][:12]}…, "
            f"{verified} golden samples verified) to {store.uri}; "
            f"{_latest_after(metadata.latest_before, version, promote)}")


def _current_latest(store) -> str | None:
    """The version `latest` names before a publish; None for a store that holds nothing
    yet, or whose container does not exist yet (publish creates an Azure container)."""
    from .model_store import latest_or_none
    from .stores import StoreObjectMissing

    try:
        return latest_or_none(store)
    except StoreObjectMissing as missing:
        if missing.whole_store:
            return None
        raise


def _latest_after(current: str | None, version: str, promote: bool, would: bool = False) -> str:
    """What publishing `version` does to `latest`, in the words of one line."""
    from .model_store import is_newer, moves_latest

    verb = "would move" if would else "moved"
    if not moves_latest(current, version, promote):
        stays = "would stay" if would else "stays"
        return (f"latest {stays} at {current} ({version} is older; pass --promote, or run "
                f"`invoke model.promote --version {version}`, to move it)")
    if current is None:
        return f"latest {verb} to {version} (the first version)"
    if current == version:
        return f"latest {'would name' if would else 'names'} {version} as before"
    newer = is_newer(version, current)
    return f"latest {verb} from {current} to {version} ({'newer' if newer else '--promote'})"


def list_models(settings: Settings, *, orphans: bool = False) -> list[str]:
    """One line per published version, oldest first, the one `latest` names marked; with
    `orphans`, the files no version names instead, and how to remove them."""
    from . import model_store

    store = open_model_store(settings)
    if orphans:
        return _orphan_lines(store, model_store.list_orphans(store))
    versions = model_store.list_versions(store)
    if not versions:
        return [f"no model is published in {store.uri} yet"]
    lines = [f"{'':2}{'VERSION':<24}{'CREATED':<34}{'SIZE':>12}  SHA256"]
    for entry in versions:
        mark = "* " if entry.latest else "  "
        lines.append(f"{mark}{entry.version:<24}{entry.created:<34}{entry.size:>12}  "
                     f"{entry.sha256[:16]}…")
    return lines + [f"* = latest in {store.uri}"]


def _orphan_lines(store, orphans: list[str]) -> list[str]:
    import shlex

    from .stores import FileStore

    if not orphans:
        return [f"no orphaned files in {store.uri}: every file belongs to a published version"]
    lines = [f"{store.uri}/{key}" for key in orphans]
    lines.append(f"{len(orphans)} file(s) in {store.uri} belong to no published version "
                 "(an interrupted or losing publish, or a --force replacement, left them)")
    where = " ".join(shlex.quote(str(store.root / key)) for key in orphans) \
        if isinstance(store, FileStore) else ""
    remove = (f"rm -- {where}" if where else
              "delete each object above with your storage tool (`az storage blob delete`, "
              "`aws s3 rm`)")
    lines.append(f"to remove them once no publish is running: {remove}")
    return lines


def promote_model(settings: Settings, *, version: str, dry: bool) -> str:
    from . import model_store

    store = open_model_store(settings)
    previous = model_store.resolve_version(store) if store.exists(model_store.LATEST_POINTER) \
        else "nothing"
    metadata = model_store.promote(store, version, dry=dry)
    if dry:
        return (f"[dry] would move latest in {store.uri} from {previous} to {version} "
                f"(sha256 {metadata['sha256'][:12]}…)")
    return (f"latest in {store.uri} now names {version} (sha256 {metadata['sha256'][:12]}…); "
            f"it named {previous}")


def check_model(c, settings: Settings) -> tuple[list[str], bool]:
    """(lines to print, whether to fail): the latest published model against the deployed one.

    Under Azure Pipelines the lines set output variables and it never fails on a difference:
    a stage condition decides. It only reads, so `--dry` changes nothing about it.
    """
    import os

    from . import model_check
    from .names import running_in_azure_pipelines

    latest = model_check.latest_published(open_model_store(settings))
    deployed = release_target(c, settings).deployed_model()
    comparison = model_check.Comparison(settings.env, settings.model_name, latest, deployed)
    lines = [comparison.summary()]
    if running_in_azure_pipelines(os.environ):
        return lines + model_check.pipeline_variables(comparison), False
    return lines, comparison.differs


def check_pipeline(config, namespace, echo: Echo) -> str:
    """`ci.check`: each problem in ci/, then a PipelineError; or the one line saying valid.
    `namespace` is the task collection the pipeline's `invoke` calls must name."""
    from . import pipeline_check
    from .settings import known_environments

    problems = pipeline_check.check(namespace=namespace, environments=known_environments(config))
    if problems:
        for problem in problems:
            echo(str(problem))
        raise PipelineError(f"{len(problems)} problem(s) in the pipeline files (listed above).",
                            "Fix them; a pipeline run would fail on each.")
    return (f"ci/: {len(pipeline_check.pipeline_files())} pipeline files valid; every invoke "
            "call names existing tasks and flags and finds its inputs")
