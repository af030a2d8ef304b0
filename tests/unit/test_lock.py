"""Every requirement is pinned with its hashes: `make setup` installs requirements.lock and each
image installs include/images/<role>.lock with `pip install --require-hashes`; `make lock`
(tools/lock.sh) writes them from the hand-edited requirements*.txt and include/images/*.txt."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
IMAGES = ROOT / "include" / "images"
ENTRY = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)")
# what a GPU lock holds that its CPU lock does not, or in another build
GPU_ONLY = re.compile(r"^(nvidia-|triton$|cuda-|onnxruntime-gpu$|torch$|sympy$|mpmath$|networkx$|jinja2$|markupsafe$)")


def parse_lock(path: Path) -> dict[str, tuple[Version, list[str]]]:
    """name -> (version, hashes) of a pip-compile lock with hashes."""
    entries: dict[str, tuple[Version, list[str]]] = {}
    name = ""
    for line in path.read_text().splitlines():
        match = ENTRY.match(line)
        if match:
            name = canonicalize_name(match.group(1))
            assert name not in entries, f"{path.name}: {name} twice"
            entries[name] = (Version(match.group(2)), [])
        elif "--hash=sha256:" in line:
            entries[name][1].append(line.split("--hash=sha256:")[1].split()[0])
    return entries


def requirements(path: Path) -> list[Requirement]:
    out = []
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            out.append(Requirement(line))
    return out


LOCKS = {
    "requirements.lock": [ROOT / "requirements.txt", ROOT / "requirements-dev.txt"],
    "include/images/step.lock": [ROOT / "requirements.txt"],
    "include/images/airflow.lock": [IMAGES / "airflow.txt"],
    "include/images/serving.lock": [IMAGES / "serving.txt"],
    "include/images/services.lock": [IMAGES / "services.txt"],
}


@pytest.mark.parametrize("lock", sorted(LOCKS))
def test_each_lock_pins_every_requirement_of_its_inputs_with_hashes(lock: str) -> None:
    entries = parse_lock(ROOT / lock)
    assert entries, f"{lock} is empty"
    unhashed = [name for name, (_, hashes) in entries.items() if not hashes]
    assert not unhashed, f"{lock}: no hash for {unhashed}"
    for source in LOCKS[lock]:
        for req in requirements(source):
            name = canonicalize_name(req.name)
            assert name in entries, f"{source.name} asks for {req.name}: not in {lock} (run `make lock`)"
            assert entries[name][0] in req.specifier, f"{lock} pins {name} {entries[name][0]}, {source.name} asks {req}"
    # the images' Python (Debian's 3.11.2) needs async-timeout for redis, whatever compiled the lock
    assert "async-timeout" in entries or lock.endswith("services.lock")


def test_the_images_install_the_versions_make_setup_installs() -> None:
    main = parse_lock(ROOT / "requirements.lock")
    for lock in sorted(IMAGES.glob("*.lock")):
        gpu = lock.stem.endswith("-gpu")
        for name, (version, hashes) in parse_lock(lock).items():
            if gpu and GPU_ONLY.match(name):
                continue
            assert name in main, f"{lock.name}: {name} is not in requirements.lock"
            assert version == main[name][0], f"{lock.name}: {name} {version}, requirements.lock {main[name][0]}"
            if not gpu:  # the same files: the same indexes were asked
                assert set(hashes) <= set(main[name][1]), f"{lock.name}: {name} has a hash requirements.lock lacks"


def test_torch_is_the_cpu_build_here_and_cuda_in_the_gpu_locks() -> None:
    assert str(parse_lock(ROOT / "requirements.lock")["torch"][0]) == "2.13.0+cpu"
    assert str(parse_lock(IMAGES / "step.lock")["torch"][0]) == "2.13.0+cpu"
    step_gpu = parse_lock(IMAGES / "step-gpu.lock")
    assert str(step_gpu["torch"][0]) == "2.13.0"
    assert "onnxruntime-gpu" in step_gpu and "onnxruntime" not in step_gpu
    serving_gpu = parse_lock(IMAGES / "serving-gpu.lock")
    assert "onnxruntime-gpu" in serving_gpu and "onnxruntime" not in serving_gpu and "torch" not in serving_gpu


def test_every_install_of_the_project_requires_the_hashes() -> None:
    makefile = (ROOT / "Makefile").read_text().replace("\\\n", " ")  # one line per command
    installs = [
        line
        for line in makefile.splitlines()
        if re.search(r"pip (install|download)", line) and not line.rstrip().endswith("-e .")  # the project itself
    ]
    assert installs, "no pip install in the Makefile"
    for line in installs:
        assert "--require-hashes" in line and " -r " in line, f"Makefile installs without hashes: {line.strip()}"
    venv = (IMAGES / "venv.sh").read_text()
    pip_lines = [line for line in venv.splitlines() if line.lstrip().startswith("pip install")]
    assert pip_lines and all("--require-hashes" in line and "--no-index" in line for line in pip_lines)
    assert "requirements.txt" not in (ROOT / "Dockerfile").read_text()


def test_make_setup_installs_the_locked_pip_first() -> None:
    pip = parse_lock(ROOT / "tools" / "pip.lock")
    assert list(pip) == ["pip"] and pip["pip"] == parse_lock(ROOT / "requirements.lock")["pip"]
    makefile = (ROOT / "Makefile").read_text()
    assert makefile.index("-r tools/pip.lock") < makefile.index("-r requirements.lock")
