"""The image of ``deploy/Dockerfile``, built with rootful podman where nothing can be pulled.

No registry serves base images here, so the base is made from Debian
packages: ``mmdebstrap`` writes a bookworm root filesystem (minbase plus
``python3``, ``python3-venv`` and ``ca-certificates``; ``passwd`` is in
minbase) and ``podman import`` turns it into ``BASE_IMAGE``.  The Dockerfile
takes it as ``--build-arg BASE=...`` (its default stays the python image).

pip inside a build may not reach PyPI (the image has Debian's CA store, not
this machine's), so the wheels the install needs (the dependencies and the
build backend, setuptools) are made on the host with this interpreter's pip
and passed as the build context named ``wheels``; the Dockerfile then
installs with ``--no-index`` and the build runs with ``--network none``.

Podman uses the machine's default storage (the images are the cache: the
base is built once per machine, the image reuses its layers) and a
containers.conf for this machine (ulimits podman may set, host network,
cgroupfs, runc, events to a file).  ``tests/podman_engine.py`` keeps its own
storage and is not affected.

Idempotent command line, run as root by ``.ci/deps/40-container.sh``::

    python -m tests.container_image base    # BASE_IMAGE, unless it exists
    python -m tests.container_image image   # IMAGE from the working tree
    python -m tests.container_image all     # both (what CI runs)

Standard library only: it runs before (and without) the test dependencies.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
BASE_IMAGE = "localhost/codalab-scaler-base:bookworm"
IMAGE = "localhost/codalab-scaler:test"
SUITE = "bookworm"
MIRROR = os.environ.get("CODALAB_SCALER_DEBIAN_MIRROR", "http://deb.debian.org/debian")
SECURITY = os.environ.get("CODALAB_SCALER_DEBIAN_SECURITY", "http://deb.debian.org/debian-security")
PACKAGES = ("python3", "python3-venv", "ca-certificates")
IMAGE_PYTHON = (3, 11)  # bookworm's python3 and the Dockerfile's default base
UID = 10001
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "codalab-scaler-image"
DEBOOTSTRAP_TIMEOUT = 900
BUILD_TIMEOUT = 900

CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]
netns = "host"

[engine]
cgroup_manager = "cgroupfs"
runtime = "runc"
events_logger = "file"
"""

# Drop documentation and translations from the base: the service needs none.
DPKG_EXCLUDES = (
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
)

# What `podman import` cannot learn from a tarball: a base image's usual config.
IMPORT_CHANGES = (
    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV LANG=C.UTF-8",
    'CMD ["python3"]',
)


def log(message: str) -> None:
    print(f"container-image: {message}", file=sys.stderr, flush=True)


def podman_missing() -> str | None:
    """Why podman cannot run the image here, or None."""
    absent = [name for name in ("podman", "runc", "conmon") if shutil.which(name) is None]
    if absent:
        return f"podman not installed (missing {', '.join(absent)}); see .ci/deps/30-podman.sh"
    if os.geteuid() != 0:
        return "the image is built and run with rootful podman (run as root)"
    return None


def podman_env() -> dict[str, str]:
    """The environment for every podman command: this machine's containers.conf."""
    conf = CACHE / "containers.conf"
    if not conf.is_file() or conf.read_text() != CONTAINERS_CONF:
        CACHE.mkdir(parents=True, exist_ok=True)
        conf.write_text(CONTAINERS_CONF)
    return {**os.environ, "CONTAINERS_CONF": str(conf)}


def podman(*argv: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        ["podman", *argv],
        env=podman_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and done.returncode != 0:
        raise RuntimeError(f"podman {' '.join(argv)} exited {done.returncode}:\n{done.stderr}")
    return done


def image_exists(name: str) -> bool:
    return podman("image", "exists", name, check=False).returncode == 0


def build_base(*, force: bool = False) -> None:
    """``BASE_IMAGE`` from Debian packages, unless it exists (about 30 s on 2 cores)."""
    if not force and image_exists(BASE_IMAGE):
        log(f"{BASE_IMAGE} exists")
        return
    if shutil.which("mmdebstrap") is None:
        raise RuntimeError("mmdebstrap not installed; see .ci/deps/40-container.sh")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="codalab-scaler-base-") as tmp:
        tarball = Path(tmp) / "rootfs.tar"
        sources = (
            f"deb {MIRROR} {SUITE} main",
            f"deb {MIRROR} {SUITE}-updates main",
            f"deb {SECURITY} {SUITE}-security main",
        )
        argv = [
            "mmdebstrap", "--mode=root", "--variant=minbase", "--quiet",
            f"--include={','.join(PACKAGES)}",
            '--aptopt=APT::Install-Recommends "false"',
            *(f"--dpkgopt={rule}" for rule in DPKG_EXCLUDES),
            SUITE, str(tarball), *sources,
        ]  # fmt: skip
        subprocess.run(argv, stdin=subprocess.DEVNULL, check=True, timeout=DEBOOTSTRAP_TIMEOUT)
        changes = [item for change in IMPORT_CHANGES for item in ("--change", change)]
        podman("import", "--quiet", *changes, str(tarball), BASE_IMAGE, timeout=300)
    log(f"{BASE_IMAGE} built in {time.monotonic() - started:.0f} s")


def wheels() -> Path:
    """Every wheel the image's ``pip install`` needs, cached per pyproject.toml."""
    if sys.version_info[:2] != IMAGE_PYTHON:
        wanted = ".".join(map(str, IMAGE_PYTHON))
        raise RuntimeError(f"make the wheels with Python {wanted} (the image's), not {sys.version}")
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()[:16]
    target = CACHE / f"wheels-{digest}"
    if (target / ".complete").is_file():
        return target
    CACHE.mkdir(parents=True, exist_ok=True)
    for old in CACHE.glob("wheels-*"):
        shutil.rmtree(old, ignore_errors=True)
    partial = Path(tempfile.mkdtemp(prefix="wheels-partial-", dir=CACHE))
    with tempfile.TemporaryDirectory(prefix="codalab-scaler-src-") as src:
        # the project from a copy: pip's build would otherwise write into the work tree
        for name in ("pyproject.toml", "README.md"):
            shutil.copy2(ROOT / name, Path(src) / name)
        shutil.copytree(
            ROOT / "codalab_scaler",
            Path(src) / "codalab_scaler",
            ignore=shutil.ignore_patterns("__pycache__"),
        )
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(partial),
             src, "setuptools>=77"],
            stdin=subprocess.DEVNULL, check=True, timeout=BUILD_TIMEOUT,
        )  # fmt: skip
    for own in partial.glob("codalab_scaler-*.whl"):
        own.unlink()  # the Dockerfile builds the project's wheel from the source it copies
    (partial / ".complete").touch()
    partial.rename(target)
    return target


def build_image(tag: str = IMAGE, *, base: str = BASE_IMAGE) -> str:
    """``deploy/Dockerfile`` from the working tree, offline; its image ID.

    Cached layers make a rebuild of unchanged sources take seconds.  Run the
    ID, not the tag: another work tree may retag it meanwhile.
    """
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="codalab-scaler-build-") as tmp:
        iidfile = Path(tmp) / "iid"
        built = podman(
            "build", "--format", "docker", "--network", "none",
            "--file", str(DOCKERFILE), "--build-arg", f"BASE={base}",
            "--build-context", f"wheels={wheels()}", "--iidfile", str(iidfile),
            "--tag", tag, str(ROOT),
            timeout=BUILD_TIMEOUT, check=False,
        )  # fmt: skip
        if built.returncode != 0:
            raise RuntimeError(
                f"podman build failed:\n{built.stdout[-4000:]}\n{built.stderr[-4000:]}"
            )
        image_id = iidfile.read_text().strip()
    log(f"{tag} ({image_id[:19]}) built in {time.monotonic() - started:.0f} s")
    return image_id


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.container_image", description=__doc__)
    parser.add_argument("what", choices=("base", "image", "all"))
    parser.add_argument("--force", action="store_true", help="rebuild the base even if it exists")
    args = parser.parse_args(argv)
    why = podman_missing()
    if why is not None:
        log(f"skipped: {why}")
        return 0
    if args.what in ("base", "all"):
        build_base(force=args.force)
    if args.what in ("image", "all"):
        build_image()
    return 0


if __name__ == "__main__":
    sys.exit(main())
