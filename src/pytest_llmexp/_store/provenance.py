"""Where a session's results come from: package versions and the git commit."""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
from contextlib import suppress
from pathlib import Path

__all__ = ["environment_versions", "git_sha"]


@functools.cache
def environment_versions() -> dict[str, str]:
    """Versions of Python and the packages that shape a run's results."""
    from importlib.metadata import PackageNotFoundError, version

    versions = {"python": sys.version.split()[0]}
    for dist, module in _DISTRIBUTIONS.items():
        # A loaded module's own version spares a scan of the installed distributions.
        loaded = getattr(sys.modules.get(module or ""), "__version__", None)
        if isinstance(loaded, str):
            versions[dist] = loaded
            continue
        with suppress(PackageNotFoundError):
            versions[dist] = version(dist)
    return versions


#: The distributions whose versions are recorded, and their modules that say it.
_DISTRIBUTIONS = {
    "pytest-llmexp": None,
    "pytest": "pytest",
    "openai": "openai",
    "pydantic": "pydantic",
    "pytest-xdist": "xdist",
    "llama-cpp-python": None,
}


def git_sha(directory: str) -> str | None:
    """The commit checked out in ``directory``, if it is in a git work tree."""
    found = _head_from_files(Path(directory))
    if found is not _ASK_GIT:
        return found
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=directory,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    sha = result.stdout.strip()
    return sha if result.returncode == 0 and sha else None


#: What :func:`_head_from_files` says when only ``git`` itself can tell.
_ASK_GIT = "?"
_SHA = re.compile(r"[0-9a-f]{40}(?:[0-9a-f]{24})?")
#: Environment variables that change where git looks: then git is asked.
_GIT_ENV = ("GIT_DIR", "GIT_WORK_TREE", "GIT_CEILING_DIRECTORIES", "GIT_COMMON_DIR")


def _head_from_files(directory: Path) -> str | None:
    """The commit of ``HEAD`` read from the repository's files, as ``git rev-parse HEAD``
    gives it, without starting git (a process costs more than the rest of a session's start);
    ``None`` outside any repository or before the first commit, :data:`_ASK_GIT` for anything
    this does not read (a reftable repository, an unusual environment, an unreadable file)."""
    if any(name in os.environ for name in _GIT_ENV):
        return _ASK_GIT
    try:
        start = directory.resolve()
        dot_git = next((p / ".git" for p in (start, *start.parents) if (p / ".git").exists()), None)
        if dot_git is None:
            return None
        git_dir = dot_git
        if dot_git.is_file():  # a linked worktree or a submodule: "gitdir: <path>"
            text = dot_git.read_text().strip()
            if not text.startswith("gitdir:"):
                return _ASK_GIT
            git_dir = dot_git.parent / text.removeprefix("gitdir:").strip()
        common = git_dir
        if (git_dir / "commondir").is_file():
            common = git_dir / (git_dir / "commondir").read_text().strip()
        if (common / "reftable").exists():
            return _ASK_GIT
        head = (git_dir / "HEAD").read_text().strip()
        if _SHA.fullmatch(head):
            return head
        if not head.startswith("ref: "):
            return _ASK_GIT
        ref = head.removeprefix("ref: ").strip()
        for where in (git_dir, common):
            loose = where / ref
            if loose.is_file():
                sha = loose.read_text().strip()
                return sha if _SHA.fullmatch(sha) else _ASK_GIT
        packed = common / "packed-refs"
        if packed.is_file():
            for line in packed.read_text().splitlines():
                sha, _, name = line.partition(" ")
                if name == ref and _SHA.fullmatch(sha):
                    return sha
        return None  # an unborn branch: no commit yet
    except (OSError, UnicodeDecodeError):
        return _ASK_GIT
