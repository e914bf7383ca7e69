"""Where a session's results come from: package versions and the git commit."""

from __future__ import annotations

import functools
import subprocess
import sys
from contextlib import suppress

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
