"""The wheelhouse deploy ships: meshtui's own wheel plus every dependency's.

Hosts install offline (``pip install --no-index --find-links``), so the
operator's machine builds everything once:

* dependency wheels with ``pip wheel`` for the *local* interpreter, cached in
  ``~/.cache/meshtui/wheels/<version>/`` (``$XDG_CACHE_HOME`` honoured).  The
  remote hosts are assumed to run the same OS, architecture and Python
  ``major.minor`` as the operator's machine; deploy checks the last two on
  every host and refuses a mismatch rather than installing wheels that cannot
  import there.
* meshtui's wheel from the source tree this package was imported from,
  rebuilt only when a source file changed (the cache remembers a hash of the
  tree, since the version alone does not change between commits).

``MESHTUI_WHEELHOUSE=DIR`` skips both and ships the wheels already in DIR
(for installs without a source tree, or to pin a set of wheels).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import sys
import tempfile
import tomllib
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from agent.errors import LocalError

PROJECT = "meshtui"
SOURCE_DIRS = ("agent", "meshtui", "inventory")
MANIFEST = "SHA256SUMS"
BUILD_TIMEOUT = 900.0
"""Seconds for one ``pip wheel`` run (dependency wheels may compile)."""


class WheelhouseError(LocalError):
    """The local wheels could not be built or found."""


@dataclass(frozen=True, slots=True)
class Wheelhouse:
    """A directory of wheels and their hashes, ready to upload."""

    directory: Path
    files: dict[str, str]
    """file name → sha256 hex."""
    project_wheel: str
    """File name of meshtui's own wheel."""
    python: tuple[int, int]
    machine: str

    @property
    def manifest(self) -> str:
        """``sha256sum`` format, sorted: identical wheels give an identical manifest."""
        return "".join(f"{digest}  {name}\n" for name, digest in sorted(self.files.items()))

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.manifest.encode()).hexdigest()


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(base) / "meshtui" / "wheels"


def project_version() -> str:
    try:
        return metadata.version(PROJECT)
    except metadata.PackageNotFoundError:
        return "0+unknown"


def source_root() -> Path | None:
    """The source tree holding pyproject.toml and the packages, if we run from one."""
    root = Path(__file__).resolve().parent.parent
    if (root / "pyproject.toml").is_file() and all((root / d).is_dir() for d in SOURCE_DIRS):
        return root
    return None


def source_digest(root: Path) -> str:
    digest = hashlib.sha256()
    files = [root / "pyproject.toml"]
    for name in SOURCE_DIRS:
        files.extend(
            p
            for p in (root / name).rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
        )
    for path in sorted(files):
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def requirements() -> list[str]:
    """meshtui's runtime requirements (no extras).

    From the source tree's ``pyproject.toml`` when the wheel is built from one
    (an editable install's metadata lags behind a dependency added since), else
    from the installed metadata.
    """
    root = source_root()
    if root is not None:
        with open(root / "pyproject.toml", "rb") as fh:
            deps = tomllib.load(fh).get("project", {}).get("dependencies")
        if isinstance(deps, list) and all(isinstance(d, str) for d in deps):
            return list(deps)
    try:
        reqs = metadata.requires(PROJECT) or []
    except metadata.PackageNotFoundError:
        raise WheelhouseError(
            "meshtui is not installed (pip install -e .); cannot tell its dependencies"
        ) from None
    return [r for r in reqs if "extra ==" not in r and "extra==" not in r]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


async def _pip(args: list[str], what: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "pip",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), BUILD_TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise WheelhouseError(f"{what}: pip took longer than {BUILD_TIMEOUT:.0f}s") from None
    if proc.returncode != 0:
        tail = out.decode(errors="replace").strip().splitlines()[-3:]
        raise WheelhouseError(f"{what} failed: {' / '.join(tail)}")


def _scan(directory: Path, python: tuple[int, int], machine: str) -> Wheelhouse:
    files = {p.name: file_sha256(p) for p in sorted(directory.glob("*.whl"))}
    own = [n for n in files if n.split("-", 1)[0].lower() == PROJECT]
    if len(own) != 1:
        raise WheelhouseError(f"{directory}: expected one {PROJECT} wheel, found {len(own)}")
    return Wheelhouse(directory, files, own[0], python, machine)


async def build_wheelhouse() -> Wheelhouse:
    """Build (or reuse) the wheels for this version; see the module docstring."""
    python = (sys.version_info.major, sys.version_info.minor)
    machine = os.uname().machine
    override = os.environ.get("MESHTUI_WHEELHOUSE")
    if override:
        return _scan(Path(override), python, machine)
    version = project_version()
    target = cache_root() / version
    deps_dir = target / "deps"
    target.mkdir(parents=True, exist_ok=True)
    deps_stamp = target / ".deps-complete"
    wanted = "\n".join(sorted(requirements()))
    if not deps_stamp.is_file() or deps_stamp.read_text() != wanted:
        tmp = tempfile.mkdtemp(dir=target, prefix=".deps-")
        try:
            await _pip(["wheel", "--quiet", "--wheel-dir", tmp, *wanted.split("\n")], "dependency wheels")
            shutil.rmtree(deps_dir, ignore_errors=True)
            os.replace(tmp, deps_dir)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        deps_stamp.write_text(wanted)
    root = source_root()
    stamp = target / ".source-sha256"
    own = sorted(target.glob(f"{PROJECT}-*.whl"))
    if root is not None:
        digest = source_digest(root)
        if not own or not stamp.is_file() or stamp.read_text() != digest:
            with tempfile.TemporaryDirectory(dir=target) as tmp:
                build = ["wheel", "--quiet", "--no-deps", "--wheel-dir", tmp, str(root)]
                await _pip(build, "meshtui wheel")
                for old in own:
                    old.unlink()
                for built in Path(tmp).glob("*.whl"):
                    os.replace(built, target / built.name)
            stamp.write_text(digest)
    elif not own:
        raise WheelhouseError(
            f"no source tree to build the {PROJECT} wheel from; put it in {target} or set MESHTUI_WHEELHOUSE"
        )
    ship = target / "ship"
    shutil.rmtree(ship, ignore_errors=True)
    ship.mkdir()
    for wheel in [*deps_dir.glob("*.whl"), *target.glob(f"{PROJECT}-*.whl")]:
        os.link(wheel, ship / wheel.name)
    return _scan(ship, python, machine)
