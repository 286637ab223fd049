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

    def run(self, name: str, fn, *args) -> None:
        try:
            detail = fn(*args)
        except Skipped as e:
            self.skipped.append(f"{name} ({e})")
            print(f"check {name} ... skipped: {e}", flush=True)
            return
        except CheckFailed as e:
            self.failed.append(name)
            print(f"check {name} ... FAILED\n{indent(str(e))}", flush=True)
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
            subprocess.run(["bash", "-euo", "pipefail", "-c", " && ".join(queued)], cwd=cwd, check=True)
            queued = []
        if words[0] == "cargo":
            run_cargo(stage, words, lineno, log)
        elif words[0] != "cargo-end":
            queued.append(cmd)


def run_cargo(stage: Stage, words: list[str], lineno: int, log: list[str]) -> None:
    if len(words) < 2 or words[1] not in ("build", "fetch"):
        raise CheckFailed(f"line {lineno}: unexpected cargo command: {shlex.join(words)}")
    meta = subprocess.run(
        ["cargo", "metadata", "--locked", "--offline", "--format-version", "1"],
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
        ["cargo", "build", "--locked", "--offline", "--bin", "check-deploy-probe"],
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
    for b in (wanted or sorted(bins)) if words[1] == "build" else []:
        stage.artifacts.add(os.path.normpath(os.path.join(stage.workdir, "target", profile, b)))
    log.append(f"line {lineno} cargo metadata ok")


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
            if s.artifacts:
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
    mutated = re.sub(r"(?<=[ /])benches(?=[ \n\\])", "", mutated, count=1) if mutated == text else mutated
    if mutated == text:
        raise CheckFailed("could not remove the benches/ stub from the Dockerfile to test the check")
    try:
        docker_context(mutated)
    except CheckFailed as e:
        if "hot_path" not in str(e) and "benches" not in str(e):
            raise CheckFailed(f"failed, but not about the bench target:\n{e}")
        return "a Dockerfile without the benches/ stub is rejected"
    raise CheckFailed("the check passed a Dockerfile that lacks the benches/ stub")
