"""The package works wherever it is installed: a built wheel carries manifests/ (byte for byte)
as cinder_csi.manifests, and the sandbox demo runs from that install, away from the checkout.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.node_env import loop_devices_backed_by, unmount_below

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "manifests"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    out = tmp_path_factory.mktemp("wheel")
    build = tmp_path_factory.mktemp("build")
    # A copy of the tree, so the build's own build/ and egg-info never land in the checkout.
    subprocess.run(["cp", "-a", f"{ROOT}/.", str(build)], check=True, timeout=120)
    for leftover in ("build", "dist"):
        subprocess.run(["rm", "-rf", str(build / leftover)], check=True)
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(out), str(build)],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    [built] = out.glob("cinder_csi-*.whl")
    yield built


def test_the_wheel_ships_the_manifests_unchanged(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        shipped = {name.removeprefix("cinder_csi/manifests/"): archive.read(name)
                   for name in archive.namelist() if name.startswith("cinder_csi/manifests/")}
        assert "cinder_csi/py.typed" in archive.namelist()
    source = {str(p.relative_to(MANIFESTS)): p.read_bytes()
              for p in MANIFESTS.rglob("*.yaml")}
    assert shipped == source


@pytest.mark.root
def test_sandbox_demo_runs_from_the_installed_wheel(wheel: Path, tmp_path: Path) -> None:
    """Installed away from the checkout (only the wheel on the path, run from elsewhere), the
    sandbox still finds its CSIDriver and StorageClasses, and the demo completes."""
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                    str(target), str(wheel)], check=True, timeout=300, capture_output=True)
    state = tmp_path / "state"
    env = {**os.environ, "PYTHONPATH": str(target)}
    try:
        result = subprocess.run(
            [sys.executable, "-m", "cinder_csi.cli", "sandbox", "--demo",
             "--state-dir", str(state)],
            capture_output=True, text=True, timeout=300, check=False, cwd=tmp_path, env=env,
        )
    finally:
        unmount_below(tmp_path)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    # The wheel's copy, not the checkout's manifests/.
    assert f"registry claim of {target / 'cinder_csi' / 'manifests'}" in out, out
    assert "applied StorageClass standard" in out and "applied CSIDriver" in out
    assert "demo complete" in out
    assert loop_devices_backed_by(state) == []


def test_an_install_without_its_manifests_says_so(wheel: Path, tmp_path: Path) -> None:
    """No silent 'applied nothing, then wait for Bound forever': a clear error, exit 1."""
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                    str(target), str(wheel)], check=True, timeout=300, capture_output=True)
    subprocess.run(["rm", "-rf", str(target / "cinder_csi" / "manifests")], check=True)
    result = subprocess.run(
        [sys.executable, "-m", "cinder_csi.cli", "sandbox", "--demo",
         "--state-dir", str(tmp_path / "state")],
        capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(target)},
    )
    assert result.returncode == 1
    assert "deployment manifests are missing" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
