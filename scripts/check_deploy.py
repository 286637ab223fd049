#!/usr/bin/env python3
"""Checks of the deploy files that need neither a Docker daemon nor a cluster.

Run through scripts/check-deploy.sh, which installs the tools and passes their paths in the
environment (HELM, PROMTOOL, HADOLINT, YAMLLINT, KUBERNETES_VALIDATE). A check whose tool is
missing is reported as skipped; the shell script decides whether that is allowed.

The last line is a cargo-style "test result:" line so scripts/test.sh counts these checks too.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlparse

import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "keygate"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
CHART_ALERTS = CHART / "files" / "alerts.yml"
# The Kubernetes version the chart is rendered for and validated against: the oldest minor that
# kubernetes-validate still ships schemas for at or above the chart's kubeVersion floor.
KUBE_VERSION = os.environ.get("KEYGATE_CHECK_KUBE_VERSION", "1.30.0")
# Kinds kubernetes-validate has no schema for (CRDs); each gets its own check below.
CRD_KINDS = {"PrometheusRule", "ServiceMonitor", "HTTPRoute"}


class CheckFailed(Exception):
    pass


class Skipped(Exception):
    pass


class Report:
    def __init__(self) -> None:
        self.passed = 0
        self.failed: list[str] = []
        self.skipped: list[str] = []

    def run(self, name: str, fn, *args, **kwargs) -> None:
        try:
            detail = fn(*args, **kwargs)
        except Skipped as e:
            self.skipped.append(f"{name} ({e})")
            print(f"check {name} ... skipped: {e}", flush=True)
            return
        except CheckFailed as e:
            self.failed.append(name)
            print(f"check {name} ... FAILED\n{indent(str(e))}", flush=True)
            return
        except Exception as e:  # a bug or an environment problem: still one failed check
            self.failed.append(name)
            print(f"check {name} ... FAILED ({type(e).__name__})\n{indent(str(e))}", flush=True)
            return
        self.passed += 1
        print(f"check {name} ... ok{': ' + detail if detail else ''}", flush=True)

    def finish(self) -> int:
        print()
        if self.skipped:
            print(f"skipped {len(self.skipped)}: " + "; ".join(self.skipped))
        if self.failed:
            print("failures:\n" + "".join(f"    {n}\n" for n in self.failed))
        status = "FAILED" if self.failed else "ok"
        print(
            f"test result: {status}. {self.passed} passed; {len(self.failed)} failed; "
            f"{len(self.skipped)} ignored (check-deploy)"
        )
        return 1 if self.failed else 0


def indent(text: str, by: str = "    ") -> str:
    return "".join(by + line + "\n" for line in text.rstrip().splitlines())


def tool(name: str) -> str:
    path = os.environ.get(name, "")
    if not path:
        raise Skipped(f"{name.lower().replace('_', '-')} not installed")
    return path


def run(cmd: list[str], cwd: Path | None = None, ok_codes=(0,)) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode not in ok_codes:
        raise CheckFailed(
            f"$ {shlex.join(cmd)}\n(exit {proc.returncode})\n{proc.stdout}{proc.stderr}".rstrip()
        )
    return proc


# ---------------------------------------------------------------------------------------------
# Docker build context: rebuild the builder stage's file tree as the Dockerfile produces it and
# let cargo read the manifests there.
# ---------------------------------------------------------------------------------------------


def dockerignore_rules(text: str) -> list[tuple[bool, re.Pattern]]:
    """Patterns of a .dockerignore as (negated, regex), in file order (the last match wins)."""
    rules = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        if negated:
            line = line[1:].strip()
        line = os.path.normpath(line).lstrip("/")
        if line.startswith("./"):
            line = line[2:]
        rules.append((negated, re.compile("^" + glob_to_regex(line) + "$")))
    return rules


def glob_to_regex(pattern: str) -> str:
    """Docker's (Go filepath.Match plus **) pattern syntax as a regex over '/'-separated paths."""
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**", i):
            i += 2
            if pattern.startswith("/", i):
                i += 1
                out.append("(?:.*/)?")
            else:
                out.append(".*")
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            end = pattern.find("]", i)
            if end < 0:
                out.append(re.escape(c))
            else:
                body = pattern[i + 1 : end]
                if body.startswith("^"):
                    body = "!" + body[1:]
                out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
                i = end
        elif c == "\\" and i + 1 < len(pattern):
            i += 1
            out.append(re.escape(pattern[i]))
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


def ignored(rel: str, rules) -> bool:
    """Docker excludes a path when it, or any directory above it, matches (last rule wins)."""
    parts = rel.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    result = False
    for negated, rx in rules:
        if any(rx.match(c) for c in candidates):
            result = not negated
    return result


def context_files(root: Path) -> set[str]:
    """The files `docker build .` sends: the tree minus .git and what .dockerignore excludes."""
    di = root / ".dockerignore"
    rules = dockerignore_rules(di.read_text()) if di.exists() else []
    prune = not any(neg for neg, _ in rules)
    files: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        rel_dir = "" if rel_dir == "." else rel_dir
        keep = []
        for d in dirnames:
            rel = f"{rel_dir}/{d}" if rel_dir else d
            if d == ".git" and not rel_dir:
                continue
            if prune and ignored(rel, rules):
                continue
            keep.append(d)
        dirnames[:] = keep
        for f in filenames:
            rel = f"{rel_dir}/{f}" if rel_dir else f
            if not ignored(rel, rules):
                files.add(rel)
    return files


def dockerfile_instructions(text: str) -> list[tuple[str, str, int]]:
    """(INSTRUCTION, arguments, line number), with continuations joined and comments dropped."""
    out, buf, start = [], [], 0
    for n, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not buf):
            continue
        if not buf:
            start = n
        if stripped.endswith("\\"):
            buf.append(stripped[:-1].strip())
            continue
        buf.append(stripped)
        line = " ".join(b for b in buf if b)
        buf = []
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip(), start))
    return out


# Commands a replayed RUN may contain besides cargo: they only make or remove files, and run
# inside the temp dir. Anything else makes the check fail rather than run it on this machine.
REPLAYABLE = {"mkdir", "touch", "echo", "printf", "rm", "true", "cp", "mv"}


class Stage:
    def __init__(self, name: str, base: str, tmp: Path) -> None:
        self.name, self.base, self.root = name, base, tmp
        self.workdir = "/"
        self.artifacts: set[str] = set()  # absolute paths cargo would have built
        self.last_build: tuple[dict, list[str]] | None = None  # metadata and --bin list

    def path(self, p: str) -> Path:
        absolute = p if p.startswith("/") else os.path.join(self.workdir, p)
        return self.root / os.path.normpath(absolute).lstrip("/")


def copy_args(args: str) -> tuple[dict, list[str], str]:
    flags = {}
    words = json.loads(args) if args.startswith("[") else shlex.split(args)
    while words and words[0].startswith("--"):
        k, _, v = words.pop(0)[2:].partition("=")
        flags[k] = v
    if len(words) < 2:
        raise CheckFailed(f"COPY needs a source and a destination: {args}")
    return flags, words[:-1], words[-1]


def replay_copy(stage: Stage, args: str, ctx: set[str], stages: dict, lineno: int) -> None:
    flags, sources, dest = copy_args(args)
    if "from" in flags:
        src_stage = stages.get(flags["from"])
        if src_stage is None:
            return  # an image, not a stage: nothing to check here
        for s in sources:
            absolute = os.path.normpath(s if s.startswith("/") else "/" + s)
            if absolute not in src_stage.artifacts and not src_stage.path(absolute).exists():
                raise CheckFailed(
                    f"line {lineno}: COPY --from={flags['from']} {s}: that stage neither has the "
                    f"path nor builds it (it builds: {sorted(src_stage.artifacts) or 'nothing'})"
                )
        return
    dirs = {"/".join(f.split("/")[:n]) for f in ctx for n in range(1, f.count("/") + 1)}
    concrete = []
    for s in sources:
        s = os.path.normpath(s).lstrip("/")
        if glob_has_magic(s):
            rx = re.compile("^" + glob_to_regex(s) + "$")
            found = sorted(p for p in ctx | dirs if rx.match(p))
        else:
            found = [s] if s in ctx or s in dirs or s == "." else []
        if not found:
            raise CheckFailed(
                f"line {lineno}: COPY {s}: nothing in the build context matches "
                f"(missing, or excluded by .dockerignore)"
            )
        concrete += found
    into_dir = len(concrete) > 1 or dest.endswith("/")
    target = stage.path(dest)
    for c in concrete:
        if c in ctx:  # a file
            to = target / Path(c).name if into_dir or target.is_dir() else target
            to.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / c, to)
            continue
        prefix = "" if c == "." else c + "/"
        for f in ctx:  # a directory: its contents go into dest
            if f.startswith(prefix):
                to = target / f[len(prefix):]
                to.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / f, to)


def glob_has_magic(s: str) -> bool:
    return any(c in s for c in "*?[")


def replay_run(stage: Stage, args: str, lineno: int, log: list[str]) -> None:
    """Runs a builder-stage RUN in the temp tree: file commands as written, cargo as metadata."""
    if args.startswith("["):
        args = " ".join(json.loads(args))
    steps: list[tuple[str, list[str]]] = []
    for cmd in (c.strip() for c in args.split("&&")):
        words = shlex.split(cmd)
        if not words or words[0].startswith("./target/"):
            continue  # runs what cargo built: nothing to replay
        if words[0] != "cargo":
            if words[0] not in REPLAYABLE:
                raise CheckFailed(
                    f"line {lineno}: RUN uses `{words[0]}`, which check-deploy does not replay. "
                    f"If it only shapes files, add it to REPLAYABLE in scripts/check_deploy.py."
                )
            for w in words[1:]:
                if w.startswith("/") or ".." in w.split("/"):
                    raise CheckFailed(f"line {lineno}: RUN refers to {w}, outside the work dir")
        steps.append((cmd, words))
    cwd = stage.path(".")
    cwd.mkdir(parents=True, exist_ok=True)
    queued: list[str] = []
    for cmd, words in steps + [("", ["cargo-end"])]:
        if words[0] in ("cargo", "cargo-end") and queued:
            proc = subprocess.run(["bash", "-euo", "pipefail", "-c", " && ".join(queued)], cwd=cwd,
                                  capture_output=True, text=True)
            if proc.returncode:
                raise CheckFailed(f"line {lineno}: RUN would fail in the image:\n{proc.stderr.strip()}")
            queued = []
        if words[0] == "cargo":
            run_cargo(stage, words, lineno, log)
        elif words[0] != "cargo-end":
            queued.append(cmd)


def run_cargo(stage: Stage, words: list[str], lineno: int, log: list[str]) -> None:
    if len(words) < 2 or words[1] not in ("build", "fetch"):
        raise CheckFailed(f"line {lineno}: unexpected cargo command: {shlex.join(words)}")
    meta = subprocess.run(
        [tool("CARGO"), "metadata", "--locked", "--offline", "--format-version", "1"],
        cwd=stage.path("."), capture_output=True, text=True,
    )
    if meta.returncode != 0:
        raise CheckFailed(
            f"line {lineno}: `{shlex.join(words)}` would fail: cargo cannot read the manifests "
            f"in the build context as the Dockerfile lays it out:\n{meta.stderr.strip()}"
        )
    # `cargo metadata` tolerates declared targets whose files are missing; `cargo build` does not,
    # and reads every manifest before it selects targets. Asking it for a binary that cannot exist
    # parses the manifests as a build would and stops before compiling anything.
    probe = subprocess.run(
        [tool("CARGO"), "build", "--locked", "--offline", "--bin", "check-deploy-probe"],
        cwd=stage.path("."), capture_output=True, text=True,
        env={**os.environ, "CARGO_TARGET_DIR": str(stage.root / ".probe-target")},
    )
    if "no bin target named `check-deploy-probe`" not in probe.stderr:
        raise CheckFailed(
            f"line {lineno}: `{shlex.join(words)}` would fail: cargo cannot load the manifests "
            f"in the build context as the Dockerfile lays it out:\n{probe.stderr.strip()}"
        )
    data = json.loads(meta.stdout)
    members = set(data["workspace_members"])
    bins = {t["name"] for p in data["packages"] if p["id"] in members
            for t in p["targets"] if "bin" in t["kind"]}
    profile = "release" if "--release" in words or "-r" in words else "debug"
    wanted = [words[i + 1] for i, w in enumerate(words[:-1]) if w == "--bin"]
    for b in wanted:
        if b not in bins:
            raise CheckFailed(f"line {lineno}: cargo build --bin {b}: no such binary (have {sorted(bins)})")
    if words[1] == "build":
        stage.last_build = (data, wanted or sorted(bins))
        for b in wanted or sorted(bins):
            stage.artifacts.add(os.path.normpath(os.path.join(stage.workdir, "target", profile, b)))
    log.append(f"line {lineno} cargo metadata ok")


def check_real_sources(stage: Stage) -> None:
    """The stage's last cargo build compiles the real entry points (lib.rs, main.rs, build.rs of
    every workspace crate, and of the binaries it builds), not a stub left over from the
    dependency layer, and no build script of the repository is missing from the context."""
    data, built_bins = stage.last_build
    repo = json.loads(run([tool("CARGO"), "metadata", "--no-deps", "--offline", "--format-version", "1"],
                          cwd=ROOT).stdout)
    ctx_root = stage.path(".")
    ctx_pkgs = {p["name"]: p for p in data["packages"] if p["id"] in set(data["workspace_members"])}
    errors = []
    for pkg in repo["packages"]:
        for t in pkg["targets"]:
            kinds = set(t["kind"])
            if not (kinds & {"lib", "rlib", "proc-macro", "custom-build"} or ("bin" in kinds and t["name"] in built_bins)):
                continue
            rel = os.path.relpath(t["src_path"], ROOT)
            twin = next((c for c in ctx_pkgs.get(pkg["name"], {}).get("targets", [])
                         if c["name"] == t["name"] and set(c["kind"]) == kinds), None)
            if twin is None:
                errors.append(f"{pkg['name']}: target {t['name']} ({', '.join(sorted(kinds))}, {rel}) "
                              f"is not in the image build: copy it")
                continue
            built = Path(twin["src_path"])
            if not built.exists() or built.read_bytes() != Path(t["src_path"]).read_bytes():
                errors.append(f"{pkg['name']}: the image compiles {os.path.relpath(built, ctx_root)} as a "
                              f"stub or stale copy, not the repository's {rel}")
    if errors:
        raise CheckFailed("the final cargo build would not compile the real sources:\n" + "\n".join(errors))


def check_includes(stage: Stage) -> None:
    """include_str!/include_bytes! outside a #[cfg(test)] part must find its file in the image."""
    missing = []
    for rs in stage.root.rglob("*.rs"):
        text = rs.read_text(errors="replace")
        test_from = text.find("#[cfg(test)]")
        for m in re.finditer(r'include_(?:str|bytes)!\(\s*"([^"]+)"', text):
            if 0 <= test_from < m.start():
                continue  # test-only: not compiled into the image
            if not (rs.parent / m.group(1)).exists():
                missing.append(f"{rs.relative_to(stage.root)}: {m.group(1)}")
    if missing:
        raise CheckFailed("files included at compile time are not in the image's build context:\n"
                          + "\n".join(missing))


def docker_context(dockerfile_text: str) -> str:
    """Replays the Dockerfile against the real build context (after .dockerignore)."""
    ctx = context_files(ROOT)
    stages: dict[str, Stage] = {}
    log: list[str] = []
    with tempfile.TemporaryDirectory(prefix="keygate-docker-ctx-") as tmp:
        stage = None
        instructions = dockerfile_instructions(dockerfile_text)
        # Stages that build with cargo are replayed in full; the runtime stage's apt-get and
        # useradd lines are not this check's business (hadolint looks at them).
        cargo_stages, n = set(), -1
        for ins, args, _ in instructions:
            n += ins == "FROM"
            if ins == "RUN" and re.search(r"(^|&&|;)\s*cargo\s", args):
                cargo_stages.add(n)
        for ins, args, lineno in instructions:
            if ins == "FROM":
                words = args.split()
                name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else str(len(stages))
                stage = Stage(name, words[0], Path(tmp) / f"stage-{len(stages)}")
                if words[0] in stages:  # FROM an earlier stage: start from its tree
                    shutil.copytree(stages[words[0]].root, stage.root, symlinks=True)
                    stage.artifacts = set(stages[words[0]].artifacts)
                stage.root.mkdir(parents=True, exist_ok=True)
                stages[name] = stage
            elif stage is None:
                continue  # ARG before the first FROM
            elif ins == "WORKDIR":
                stage.workdir = os.path.normpath(os.path.join(stage.workdir, args))
            elif ins in ("COPY", "ADD"):
                replay_copy(stage, args, ctx, stages, lineno)
            elif ins == "RUN" and len(stages) - 1 in cargo_stages:
                replay_run(stage, args, lineno, log)
        for s in stages.values():
            if s.last_build:
                check_real_sources(s)
                check_includes(s)
    if not any(s.artifacts for s in stages.values()):
        raise CheckFailed("no stage runs cargo build: is this the right Dockerfile?")
    return f"{len(log)} cargo steps replayed, final image copies {sorted(set().union(*(s.artifacts for s in stages.values())))}"


def docker_context_current() -> str:
    return docker_context((ROOT / "Dockerfile").read_text())


def docker_context_catches_a_missing_stub() -> str:
    """The context check must fail when the Dockerfile forgets a target the manifest declares."""
    text = (ROOT / "Dockerfile").read_text()
    # Drop every command or COPY line that provides benches/ (the break issue #12 found).
    mutated = re.sub(r"\s*\\?\s*&& echo [^\n]*> benches/[^\n\\]*", "", text)
    mutated = re.sub(r"(?m)^COPY benches\b.*\n", "", mutated)
    if mutated == text:
        raise CheckFailed("could not remove the benches/ stub from the Dockerfile to test the check")
    try:
        docker_context(mutated)
    except CheckFailed as e:
        if "hot_path" not in str(e) and "benches" not in str(e):
            raise CheckFailed(f"failed, but not about the bench target:\n{e}")
        return "a Dockerfile without the benches/ stub is rejected"
    raise CheckFailed("the check passed a Dockerfile that lacks the benches/ stub")


# ---------------------------------------------------------------------------------------------
# Compose files and the configs they mount (no Docker needed).
# ---------------------------------------------------------------------------------------------


def load_yaml(path: Path):
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise CheckFailed(f"{path.relative_to(ROOT)}: {e}")


def compose_references(name: str) -> str:
    """depends_on, volumes, networks, bind mounts and the build context all resolve."""
    path = ROOT / name
    doc = load_yaml(path)
    services = doc.get("services") or {}
    volumes = set((doc.get("volumes") or {}).keys())
    networks = set((doc.get("networks") or {}).keys()) | {"default"}
    errors = []
    for sname, svc in services.items():
        if not isinstance(svc, dict):
            errors.append(f"{sname}: not a mapping")
            continue
        if "image" not in svc and "build" not in svc:
            errors.append(f"{sname}: neither image nor build")
        deps = svc.get("depends_on") or []
        for dep in deps if isinstance(deps, list) else deps.keys():
            if dep not in services:
                errors.append(f"{sname}: depends_on unknown service {dep}")
        nets = svc.get("networks") or []
        for net in nets if isinstance(nets, list) else nets.keys():
            if net not in networks:
                errors.append(f"{sname}: network {net} is not declared under networks:")
        for vol in svc.get("volumes") or []:
            src = vol.get("source", "") if isinstance(vol, dict) else vol.split(":")[0]
            if src.startswith((".", "/")):
                if src.startswith(".") and not (path.parent / src).exists():
                    errors.append(f"{sname}: bind mount source {src} does not exist")
            elif src and src not in volumes:
                errors.append(f"{sname}: volume {src} is not declared under volumes:")
        build = svc.get("build")
        if build:
            ctx = path.parent / (build if isinstance(build, str) else build.get("context", "."))
            dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
            if not (ctx / dockerfile).exists():
                errors.append(f"{sname}: build context {ctx} has no {dockerfile}")
        env = svc.get("environment") or {}
        if isinstance(env, list):
            env = dict(e.split("=", 1) if "=" in e else (e, "") for e in env)
        for key, value in env.items():
            if key == "OTEL_EXPORTER_OTLP_ENDPOINT":
                host = urlparse(str(value)).hostname
                if host not in services:
                    errors.append(f"{sname}: {key} points at {host}, which is no service here")
    used = {(v.get("source") if isinstance(v, dict) else v.split(":")[0])
            for s in services.values() for v in (s.get("volumes") or [])}
    for v in volumes - used:
        errors.append(f"volume {v} is declared but no service mounts it")
    if errors:
        raise CheckFailed("\n".join(f"{name}: {e}" for e in errors))
    return f"{len(services)} services"


def keygate_services(doc) -> dict:
    return {n: s for n, s in (doc.get("services") or {}).items()
            if s.get("image") == "keygate:local" and s.get("command", ["serve"]) == ["serve"]}


def compose_embedded_shape() -> str:
    doc = load_yaml(ROOT / "docker-compose.yml")
    kg = keygate_services(doc)
    if len(kg) != 1:
        raise CheckFailed(f"the embedded setup runs exactly one keygate, found {sorted(kg)}")
    (name, svc), = kg.items()
    mounts = [v for v in svc.get("volumes") or [] if isinstance(v, str) and v.split(":")[1] == "/var/lib/keygate"]
    if not mounts or mounts[0].split(":")[0] not in (doc.get("volumes") or {}):
        raise CheckFailed(f"{name} keeps its SQLite database on a named volume at /var/lib/keygate")
    env = svc.get("environment") or {}
    if any(k in env for k in ("DATABASE_URL", "REDIS_URL")):
        raise CheckFailed("the embedded setup must not set DATABASE_URL or REDIS_URL")
    return f"{name} with volume {mounts[0].split(':')[0]}"


def compose_enterprise_shape() -> str:
    doc = load_yaml(ROOT / "docker-compose.enterprise.yml")
    services = doc["services"]
    kg = keygate_services(doc)
    errors = []
    if len(kg) < 2:
        errors.append(f"at least two keygate replicas, found {sorted(kg)}")
    otel = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_SERVICE_NAME", "OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG")
    for n, s in kg.items():
        missing = [k for k in otel if k not in (s.get("environment") or {})]
        if missing:
            errors.append(f"{n} lacks {', '.join(missing)}")
    nginx = (ROOT / "deploy/nginx/keygate.conf").read_text()
    upstream = re.findall(r"^\s*server\s+([\w.-]+):(\d+)", nginx, re.M)
    if sorted(h for h, _ in upstream) != sorted(kg):
        errors.append(f"nginx upstream {sorted(h for h, _ in upstream)} != keygate services {sorted(kg)}")
    prom = load_yaml(ROOT / "deploy/prometheus/prometheus.yml")
    for job in prom.get("scrape_configs", []):
        for sc in job.get("static_configs", []):
            for t in sc.get("targets", []):
                host = urlparse(t if "//" in t else "//" + t).hostname
                if host not in services and host != "localhost":
                    errors.append(f"prometheus job {job['job_name']} scrapes {t}: no such service")
        if job["job_name"] == "keygate":
            scraped = sorted(urlparse("//" + t).hostname for sc in job["static_configs"] for t in sc["targets"])
            if scraped != sorted(kg):
                errors.append(f"prometheus job keygate scrapes {scraped}, replicas are {sorted(kg)}")
    for needed in ("otel-collector", "jaeger", "lb"):
        if needed not in services:
            errors.append(f"service {needed} is missing")
    if errors:
        raise CheckFailed("\n".join(errors))
    return f"{len(kg)} replicas behind nginx, traces to {services['otel-collector']['image']}"


def otel_collector_config() -> str:
    """Every component a pipeline names is defined, and the exporters reach a compose service."""
    cfg = load_yaml(ROOT / "deploy/otel/collector.yaml")
    services = load_yaml(ROOT / "docker-compose.enterprise.yml")["services"]
    errors = []
    svc = cfg.get("service") or {}
    for ext in svc.get("extensions", []):
        if ext not in (cfg.get("extensions") or {}):
            errors.append(f"extension {ext} is not defined")
    pipelines = svc.get("pipelines") or {}
    if "traces" not in pipelines:
        errors.append("no traces pipeline")
    for pname, p in pipelines.items():
        for kind in ("receivers", "processors", "exporters"):
            for comp in p.get(kind, []):
                if comp not in (cfg.get(kind) or {}):
                    errors.append(f"pipeline {pname}: {kind[:-1]} {comp} is not defined")
    for ename, e in (cfg.get("exporters") or {}).items():
        endpoint = str((e or {}).get("endpoint", ""))
        host = urlparse(endpoint if "//" in endpoint else "//" + endpoint).hostname
        if host and host not in services:
            errors.append(f"exporter {ename} sends to {host}, which is no compose service")
    receivers = (cfg.get("receivers") or {}).get("otlp", {}).get("protocols", {})
    if "http" not in receivers:
        errors.append("the otlp receiver must accept HTTP: keygate exports OTLP/HTTP")
    if errors:
        raise CheckFailed("\n".join(errors))
    return ", ".join(f"{k}: {v.get('receivers')} -> {v.get('exporters')}" for k, v in pipelines.items())


def docker_compose_config(name: str) -> str:
    """`docker compose config` when the compose plugin exists (it is not needed otherwise)."""
    if not shutil.which("docker") or subprocess.run(["docker", "compose", "version"], capture_output=True).returncode:
        raise Skipped("docker compose not installed")
    env = {**os.environ}
    for var in re.findall(r"\$\{(\w+):\?", (ROOT / name).read_text()):
        env.setdefault(var, "check-deploy-placeholder")
    proc = subprocess.run(["docker", "compose", "-f", name, "config", "--quiet"], cwd=ROOT,
                          capture_output=True, text=True, env=env)
    if proc.returncode:
        raise CheckFailed(proc.stderr)
    return ""


YAMLLINT_CONFIG = (
    "{extends: default, rules: {line-length: {max: 120}, document-start: disable, "
    "truthy: {check-keys: false}, comments: {min-spaces-from-content: 1}}}"
)


def yaml_files() -> list[str]:
    files = ["docker-compose.yml", "docker-compose.enterprise.yml"]
    files += sorted(str(p.relative_to(ROOT)) for p in (ROOT / "deploy").rglob("*.y*ml"))
    files += sorted(str(p.relative_to(ROOT)) for p in CHART.rglob("*.yaml") if "templates" not in p.parts)
    return files


def yamllint() -> str:
    files = yaml_files()
    run([tool("YAMLLINT"), "--strict", "-d", YAMLLINT_CONFIG, *files], cwd=ROOT)
    return f"{len(files)} files"


def hadolint() -> str:
    run([tool("HADOLINT"), "--failure-threshold", "info", "Dockerfile"], cwd=ROOT)
    return ""


# ---------------------------------------------------------------------------------------------
# Prometheus rules and config.
# ---------------------------------------------------------------------------------------------


def promtool_check_rules() -> str:
    out = run([tool("PROMTOOL"), "check", "rules", str(ALERTS.relative_to(ROOT))], cwd=ROOT).stdout
    return " ".join(out.split()[-3:])


def promtool_test_rules() -> str:
    run([tool("PROMTOOL"), "test", "rules", "alerts_test.yml"], cwd=ALERTS.parent)
    return ""


def promtool_check_config() -> str:
    """prometheus.yml names its rule file by the container path; point it at the repo's copy."""
    promtool = tool("PROMTOOL")
    text = (ALERTS.parent / "prometheus.yml").read_text()
    if "/etc/prometheus/alerts.yml" not in text:
        raise CheckFailed("prometheus.yml no longer loads /etc/prometheus/alerts.yml")
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "prometheus.yml"
        cfg.write_text(text.replace("/etc/prometheus/alerts.yml", str(ALERTS)))
        run([promtool, "check", "config", str(cfg)])
    return ""


def grafana_dashboard_queries() -> str:
    """Every panel query is valid PromQL (promtool parses it as a recording rule) and every
    dashboard variable it uses is defined."""
    promtool = tool("PROMTOOL")
    dash = json.loads((ROOT / "deploy/grafana/dashboards/keygate.json").read_text())
    variables = {v["name"] for v in dash.get("templating", {}).get("list", [])}
    exprs, errors = [], []

    def panels(ps):
        for p in ps:
            yield p
            yield from panels(p.get("panels", []))

    for p in panels(dash.get("panels", [])):
        for t in p.get("targets", []):
            if t.get("expr"):
                exprs.append((p.get("title", "?"), t["expr"]))
    for title, e in exprs:
        for var in re.findall(r"\$\{?(\w+)", e):
            if not var.startswith("__") and var not in variables:
                errors.append(f"panel {title!r} uses ${var}, which the dashboard does not define")
    # Grafana's interval macros become a range, other variables a plain label value.
    concrete = [re.sub(r"\$\{?\w+\}?", "x", re.sub(r"\$\{?__(rate_)?interval\}?|\$\{?__range\}?", "5m", e))
                for _, e in exprs]
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": e} for i, e in enumerate(concrete)]}]}
    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / "dashboard-queries.yml"
        f.write_text(yaml.safe_dump(rules))
        proc = subprocess.run([promtool, "check", "rules", str(f)], capture_output=True, text=True)
        if proc.returncode:
            errors.append(f"promtool rejects a dashboard query:\n{proc.stdout}{proc.stderr}")
    if errors:
        raise CheckFailed("\n".join(errors))
    return f"{len(exprs)} queries"


# ---------------------------------------------------------------------------------------------
# Helm chart: lint, render with several value sets, validate what comes out.
# ---------------------------------------------------------------------------------------------

VALUE_SETS = {
    # name: kinds the rendering must contain, kinds it must not
    "default": ({"Deployment", "Service", "ServiceAccount", "PodDisruptionBudget", "Job"},
                {"Secret", "PersistentVolumeClaim", "Ingress", "NetworkPolicy", "PrometheusRule"}),
    "enterprise": ({"Deployment", "Service", "ServiceAccount", "Secret", "Job", "Ingress", "HTTPRoute",
                    "NetworkPolicy", "PrometheusRule", "ServiceMonitor", "HorizontalPodAutoscaler",
                    "PodDisruptionBudget"}, {"PersistentVolumeClaim"}),
    "embedded": ({"Deployment", "Service", "PersistentVolumeClaim", "Secret", "Ingress"},
                 {"Job", "PodDisruptionBudget", "HorizontalPodAutoscaler"}),
}
# kubernetes-validate schemas: the chart's kubeVersion floor and the newest it ships.
VALIDATE_VERSIONS = ("1.25.0", "1.37.0")


def helm(*args: str, ok_codes=(0,)) -> subprocess.CompletedProcess:
    return run([tool("HELM"), *args], cwd=ROOT, ok_codes=ok_codes)


def chart_alerts_in_sync() -> str:
    if CHART_ALERTS.read_bytes() != ALERTS.read_bytes():
        raise CheckFailed(
            f"{CHART_ALERTS.relative_to(ROOT)} differs from {ALERTS.relative_to(ROOT)}; the chart's "
            f"PrometheusRule is built from the copy. Run:\n  cp {ALERTS.relative_to(ROOT)} "
            f"{CHART_ALERTS.relative_to(ROOT)}"
        )
    return "files/alerts.yml == deploy/prometheus/alerts.yml"


def helm_lint(value_set: str) -> str:
    helm("lint", "--strict", str(CHART.relative_to(ROOT)), "-f", f"{CHART.relative_to(ROOT)}/ci/{value_set}-values.yaml",
         "--kube-version", VALIDATE_VERSIONS[0])
    return ""


def render(value_set: str, *extra: str) -> str:
    return helm("template", "kg", str(CHART.relative_to(ROOT)), "--namespace", "llm",
                "-f", f"{CHART.relative_to(ROOT)}/ci/{value_set}-values.yaml",
                "--kube-version", VALIDATE_VERSIONS[0], *extra).stdout


def docs_of(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if d]


def helm_template_validate(value_set: str) -> str:
    kv = tool("KUBERNETES_VALIDATE")
    text = render(value_set)
    docs = docs_of(text)
    kinds = {d["kind"] for d in docs}
    want, unwanted = VALUE_SETS[value_set]
    errors = []
    if want - kinds:
        errors.append(f"missing kinds: {sorted(want - kinds)}")
    if kinds & unwanted:
        errors.append(f"unexpected kinds: {sorted(kinds & unwanted)}")
    errors += cross_references(docs)
    core = [d for d in docs if d["kind"] not in CRD_KINDS]
    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / f"{value_set}.yaml"
        f.write_text(yaml.safe_dump_all(core))
        for version in VALIDATE_VERSIONS:
            proc = subprocess.run([*kv.split(), "--strict", "--quiet", "-k", version, str(f)],
                                  capture_output=True, text=True)
            if proc.returncode:
                errors.append(f"kubernetes-validate {version}:\n{proc.stdout}{proc.stderr}")
        for d in docs:
            if d["kind"] == "PrometheusRule":
                errors += prometheus_rule_errors(d, Path(tmp))
    if errors:
        raise CheckFailed("\n".join(errors))
    return f"{len(docs)} objects ({', '.join(sorted(kinds))}) valid for Kubernetes {' and '.join(VALIDATE_VERSIONS)}"


def cross_references(docs: list[dict]) -> list[str]:
    """What kubernetes-validate cannot see: names that must point at each other."""
    errors = []
    by_kind: dict[str, list[dict]] = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    svc = by_kind["Service"][0]
    dep = by_kind["Deployment"][0]
    pod = dep["spec"]["template"]
    svc_ports = {p["name"]: p for p in svc["spec"]["ports"]}

    def selects(selector: dict, labels: dict) -> bool:
        return all(labels.get(k) == v for k, v in selector.items())

    if not selects(svc["spec"]["selector"], pod["metadata"]["labels"]):
        errors.append("the Service does not select the Deployment's pods")
    if not selects(dep["spec"]["selector"]["matchLabels"], pod["metadata"]["labels"]):
        errors.append("the Deployment's selector does not match its pod labels")
    for job in by_kind.get("Job", []):
        if selects(svc["spec"]["selector"], job["spec"]["template"]["metadata"]["labels"]):
            errors.append("the Service would route traffic to the migration Job's pod")
        hooks = job["metadata"].get("annotations", {}).get("helm.sh/hook", "")
        if set(hooks.split(",")) != {"pre-install", "pre-upgrade"}:
            errors.append(f"the migration Job is not a pre-install,pre-upgrade hook: {hooks!r}")
        if job["spec"]["template"]["spec"]["containers"][0].get("args") != ["migrate"]:
            errors.append("the migration Job does not run `keygate migrate`")
        errors += pod_refs(job["spec"]["template"]["spec"], names, "Job", hook=True, docs=docs)
    errors += pod_refs(pod["spec"], names, "Deployment", hook=False, docs=docs)
    container_ports = {p["name"] for c in pod["spec"]["containers"] for p in c.get("ports", [])}
    for name, p in svc_ports.items():
        if p["targetPort"] not in container_ports:
            errors.append(f"Service port {name} targets {p['targetPort']}, which no container names")
    for np in by_kind.get("NetworkPolicy", []):
        if not selects(np["spec"]["podSelector"]["matchLabels"], pod["metadata"]["labels"]):
            errors.append("the NetworkPolicy does not select keygate's pods")
        for rule in np["spec"].get("ingress", []):
            for p in rule.get("ports", []):
                if isinstance(p["port"], str) and p["port"] not in container_ports:
                    errors.append(f"NetworkPolicy allows port {p['port']}, which no container names")
    for ing in by_kind.get("Ingress", []):
        for rule in ing["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                b = path["backend"]["service"]
                if b["name"] != svc["metadata"]["name"] or b["port"].get("name", "http") not in svc_ports:
                    errors.append(f"Ingress backend {b} is not the keygate Service")
    for route in by_kind.get("HTTPRoute", []):
        if not route["spec"].get("parentRefs"):
            errors.append("HTTPRoute without parentRefs attaches to no Gateway")
        for rule in route["spec"]["rules"]:
            for b in rule["backendRefs"]:
                if b["name"] != svc["metadata"]["name"] or b["port"] not in {p["port"] for p in svc_ports.values()}:
                    errors.append(f"HTTPRoute backend {b} is not the keygate Service")
    for sm in by_kind.get("ServiceMonitor", []):
        if not selects(sm["spec"]["selector"]["matchLabels"], svc["metadata"]["labels"]):
            errors.append("the ServiceMonitor does not select the Service")
        for ep in sm["spec"]["endpoints"]:
            if ep["port"] not in svc_ports:
                errors.append(f"the ServiceMonitor scrapes port {ep['port']}, which the Service lacks")
    spread = pod["spec"].get("topologySpreadConstraints", [])
    if not spread:
        errors.append("no topologySpreadConstraints (the default spread is missing)")
    for c in spread:
        if not selects(c["labelSelector"]["matchLabels"], pod["metadata"]["labels"]):
            errors.append(f"topology spread on {c['topologyKey']} does not select keygate's pods")
    return errors


def pod_refs(spec: dict, names: set, what: str, hook: bool, docs: list[dict]) -> list[str]:
    errors = []
    volumes = {v["name"] for v in spec.get("volumes", [])}
    for c in spec["containers"]:
        for m in c.get("volumeMounts", []):
            if m["name"] not in volumes:
                errors.append(f"{what}: volumeMount {m['name']} has no volume")
        for ef in c.get("envFrom", []):
            ref = ef.get("secretRef", {}).get("name")
            if not ref:
                continue
            rendered = next((d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"] == ref), None)
            if rendered is None:
                continue  # an existing Secret, made outside the chart
            is_hook = "helm.sh/hook" in rendered["metadata"].get("annotations", {})
            if hook and not is_hook:
                errors.append(f"{what} (a hook) reads Secret {ref}, which does not exist yet at pre-install")
    sa = spec.get("serviceAccountName")
    if sa and sa != "default":
        made = ("ServiceAccount", sa) in names
        if hook and made:
            errors.append(f"{what} (a hook) runs as ServiceAccount {sa}, created only after the hooks")
        if not hook and not made:
            errors.append(f"{what} runs as ServiceAccount {sa}, which the chart does not create")
    return errors


def prometheus_rule_errors(doc: dict, tmp: Path) -> list[str]:
    """The PrometheusRule carries alerts.yml's rules (bar the disabled ones) and promtool accepts it."""
    errors = []
    groups = doc["spec"]["groups"]
    rules_file = tmp / "prometheusrule.yml"
    rules_file.write_text(yaml.safe_dump({"groups": groups}))
    proc = subprocess.run([tool("PROMTOOL"), "check", "rules", str(rules_file)], capture_output=True, text=True)
    if proc.returncode:
        errors.append(f"promtool rejects the PrometheusRule:\n{proc.stdout}{proc.stderr}")
    source = {r["alert"]: r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]}
    rendered = {r["alert"]: r for g in groups for r in g["rules"]}
    for name, r in rendered.items():
        s = source.get(name)
        if s is None:
            errors.append(f"PrometheusRule has {name}, which alerts.yml lacks")
            continue
        # Only the job selectors may differ; compare with those normalised.
        norm = lambda e: re.sub(r'job="[^"]*"', 'job="J"', e)
        if norm(s["expr"]) != norm(r["expr"]) or s.get("for") != r.get("for") or s.get("annotations") != r.get("annotations"):
            errors.append(f"PrometheusRule {name} differs from alerts.yml")
        if not set(s.get("labels", {}).items()) <= set(r.get("labels", {}).items()):
            errors.append(f"PrometheusRule {name} lost labels of alerts.yml")
    if not rendered:
        errors.append("the PrometheusRule has no rules")
    return errors


def helm_rejects(label: str, *args: str, expect: str) -> str:
    proc = helm("template", "kg", str(CHART.relative_to(ROOT)), "--kube-version", VALIDATE_VERSIONS[0], *args,
                ok_codes=range(0, 256))
    if proc.returncode == 0:
        raise CheckFailed(f"helm template accepted {label}")
    if expect not in proc.stderr:
        raise CheckFailed(f"helm template refused {label}, but not with {expect!r}:\n{proc.stderr}")
    return f"refused: {expect}"


def prometheus_rule_follows_values() -> str:
    """Disabled alerts disappear, the job selector follows the Service name, labels are added."""
    docs = docs_of(render("enterprise"))
    rule = next(d for d in docs if d["kind"] == "PrometheusRule")
    svc = next(d for d in docs if d["kind"] == "Service")
    rules = [r for g in rule["spec"]["groups"] for r in g["rules"]]
    names = {r["alert"] for r in rules}
    source = {r["alert"] for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]}
    errors = []
    if names != source - {"KeygateNotReady"}:
        errors.append(f"alerts {sorted(names)} != alerts.yml minus KeygateNotReady")
    jobs = {j for r in rules for j in re.findall(r'job="([^"]*)"', r["expr"])}
    if jobs - {svc["metadata"]["name"]}:
        errors.append(f"job selectors {sorted(jobs)} should all be the Service name {svc['metadata']['name']}")
    if any(r["labels"].get("team") != "platform" for r in rules):
        errors.append("additionalLabels are not on every rule")
    if errors:
        raise CheckFailed("\n".join(errors))
    return f"{len(names)} of {len(source)} alerts, job={svc['metadata']['name']}"


def main() -> int:
    r = Report()
    print("running deploy checks (scripts/check-deploy.sh)", flush=True)
    # Image
    r.run("dockerfile_build_context_loads_in_cargo", docker_context_current)
    r.run("dockerfile_check_rejects_a_missing_bench_stub", docker_context_catches_a_missing_stub)
    r.run("hadolint_dockerfile", hadolint)
    # Compose
    for name in ("docker-compose.yml", "docker-compose.enterprise.yml"):
        r.run(f"compose_references_resolve[{name}]", compose_references, name)
    r.run("compose_embedded_is_one_keygate_on_a_volume", compose_embedded_shape)
    r.run("compose_enterprise_has_replicas_lb_and_tracing", compose_enterprise_shape)
    r.run("otel_collector_pipeline_is_complete", otel_collector_config)
    for name in ("docker-compose.yml", "docker-compose.enterprise.yml"):
        r.run(f"docker_compose_config[{name}]", docker_compose_config, name)
    r.run("yamllint_deploy_files", yamllint)
    # Prometheus
    r.run("promtool_check_rules", promtool_check_rules)
    r.run("promtool_test_rules", promtool_test_rules)
    r.run("promtool_check_config", promtool_check_config)
    r.run("grafana_dashboard_queries_parse", grafana_dashboard_queries)
    # Helm
    r.run("chart_alert_rules_match_deploy_prometheus", chart_alerts_in_sync)
    for v in VALUE_SETS:
        r.run(f"helm_lint[{v}]", helm_lint, v)
        r.run(f"helm_template_validates[{v}]", helm_template_validate, v)
    r.run("prometheus_rule_follows_values", prometheus_rule_follows_values)
    ci = f"{CHART.relative_to(ROOT)}/ci"
    r.run("chart_schema_rejects_a_string_replica_count", helm_rejects, "replicaCount=two",
          "-f", f"{ci}/default-values.yaml", "--set", "replicaCount=two", expect="replicaCount: Invalid type")
    r.run("chart_schema_rejects_unknown_keys", helm_rejects, "a misspelt key",
          "-f", f"{ci}/default-values.yaml", "--set", "ingres.enabled=true", expect="Additional property ingres")
    r.run("chart_refuses_two_embedded_replicas", helm_rejects, "embedded mode with 2 replicas",
          "-f", f"{ci}/embedded-values.yaml", "--set", "replicaCount=2", expect="runs exactly one replica")
    r.run("chart_requires_a_database_url", helm_rejects, "no values", expect="secrets.databaseUrl is required")
    r.run("chart_requires_httproute_parents", helm_rejects, "an HTTPRoute without parentRefs",
          "-f", f"{ci}/default-values.yaml", "--set", "httpRoute.enabled=true", expect="httpRoute.parentRefs")
    return r.finish()


if __name__ == "__main__":
    sys.exit(main())
