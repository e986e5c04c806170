"""The project's own wheel, the one thing of ours every instance installs: built by deploy from
the source tree it runs from, or given as `ec2.wheel`, never looked up by name on an index
(whoever owns a name there would get root on every instance).

The build is reproducible (a fixed SOURCE_DATE_EPOCH, from a copy of the tree, so a stale
`build/` cannot leak removed modules into it), and cached by the digest of the files it is
built from: an unchanged tree redeploys the same bytes, hence the same S3 key and pins.
"""

from __future__ import annotations

import email.parser
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from email.message import Message
from pathlib import Path

from hybridserve.config_base import ConfigError

PROJECT = "hybridserve"
SOURCE_DATE_EPOCH = "315532800"  # 1980-01-01, zip's earliest date
_TOP_FILES = ("pyproject.toml", "setup.cfg", "setup.py", "MANIFEST.in")
_SKIP_DIRS = {"__pycache__", "build", "dist", ".git", ".venv", "venv", ".pytest_cache"}


def cache_dir() -> Path:
    """Where built wheels and resolved wheelhouses are kept: $HYBRIDSERVE_CACHE_DIR, else the
    user's cache directory."""
    if os.environ.get("HYBRIDSERVE_CACHE_DIR"):
        return Path(os.environ["HYBRIDSERVE_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / PROJECT


def source_root() -> Path | None:
    """The source tree this hybridserve was imported from, if it is one (a pyproject.toml
    naming the project beside the package); None when installed from a wheel."""
    import hybridserve

    root = Path(hybridserve.__file__).resolve().parents[1]
    pyproject = root / "pyproject.toml"
    if pyproject.is_file() and f'name = "{PROJECT}"' in pyproject.read_text():
        return root
    return None


def source_files(root: Path) -> list[Path]:
    """What the wheel is built from: the build files, README/LICENSE, and every package."""
    out = [root / f for f in _TOP_FILES if (root / f).is_file()]
    out += sorted(
        p for p in root.iterdir() if p.is_file() and p.name.startswith(("README", "LICENSE"))
    )
    for pkg in sorted(p for p in root.iterdir() if (p / "__init__.py").is_file()):
        for dirpath, dirnames, filenames in os.walk(pkg):
            dirnames[:] = sorted(
                d
                for d in dirnames
                if d not in _SKIP_DIRS and not d.startswith(".") and not d.endswith(".egg-info")
            )
            out += [Path(dirpath) / f for f in sorted(filenames) if not f.endswith(".pyc")]
    return out


def tree_digest(root: Path, files: list[Path]) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(f.relative_to(root).as_posix().encode() + b"\0")
        h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()


def build_wheel(root: Path, cache: Path) -> Path:
    """The wheel of the tree at `root`, built once per content (cache/wheels/<digest>/)."""
    files = source_files(root)
    done = cache / "wheels" / tree_digest(root, files)
    found = sorted(done.glob(f"{PROJECT}-*.whl")) if done.is_dir() else []
    if found:
        return found[0]
    done.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="hybridserve-wheel-", dir=done.parent) as tmp:
        src, out = Path(tmp) / "src", Path(tmp) / "out"
        for f in files:
            (src / f.relative_to(root)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, src / f.relative_to(root))
        cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
               "--no-index", "--disable-pip-version-check", "-q", "-w", str(out), str(src)]  # fmt: skip
        env = {**os.environ, "SOURCE_DATE_EPOCH": SOURCE_DATE_EPOCH}
        p = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if p.returncode != 0:
            raise ConfigError(
                f"ec2.wheel: building the wheel from {root} failed ({' '.join(cmd[2:5])}): "
                f"{(p.stderr or p.stdout).strip()[-1500:]}\nexpected a buildable tree, or set "
                "ec2.wheel to a wheel built with `python -m pip wheel --no-deps -w dist .`"
            )
        try:
            os.replace(out, done)  # atomic: a concurrent build of the same tree wins or loses whole
        except OSError:
            if not done.is_dir():
                raise
    return sorted(done.glob(f"{PROJECT}-*.whl"))[0]


def wheel_metadata(path: Path) -> Message:
    """The METADATA of a wheel (Name, Version, Requires-Dist, ...)."""
    with zipfile.ZipFile(path) as z:
        names = [n for n in z.namelist() if n.count("/") == 1 and n.endswith(".dist-info/METADATA")]
        if len(names) != 1:
            raise ValueError(f"{path}: expected one *.dist-info/METADATA, found {len(names)}")
        return email.parser.Parser().parsestr(z.read(names[0]).decode())


def project_wheel(configured: str | None, cache: Path) -> Path:
    """`ec2.wheel` when set (checked to be a hybridserve wheel), else the source tree's."""
    if configured:
        p = Path(configured)
        if not p.is_file():
            raise ConfigError(f"ec2.wheel: {p} does not exist; expected a hybridserve-*.whl file")
        try:
            name = wheel_metadata(p).get("Name", "")
        except (zipfile.BadZipFile, ValueError) as e:
            raise ConfigError(f"ec2.wheel: {p} is not a wheel ({e})") from None
        if name.lower() != PROJECT:
            raise ConfigError(f"ec2.wheel: {p} is the wheel of {name!r}, expected {PROJECT}")
        return p
    root = source_root()
    if root is None:
        raise ConfigError(
            "ec2.wheel: hybridserve is installed without its source tree, so deploy cannot "
            "build the wheel the instances install; expected ec2.wheel: the path of a "
            "hybridserve wheel (python -m pip wheel --no-deps -w dist . in the source tree)"
        )
    return build_wheel(root, cache)
