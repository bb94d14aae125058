"""Which signature reader the node uses: libblkid in-process, else the blkid program."""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Any

import pytest

from cinder_csi.host import signatures
from cinder_csi.host.signatures import BlkidCommandSignatures, LibblkidSignatures
from tests.unit.host_fakes import FakeRunner


def test_libblkid_is_used_where_it_loads() -> None:
    assert isinstance(signatures.default_reader(FakeRunner()), LibblkidSignatures)


def test_the_blkid_program_is_used_where_libblkid_does_not_load(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def missing(name: str, **kwargs: Any) -> ctypes.CDLL:
        raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setattr(signatures.ctypes, "CDLL", missing)
    runner = FakeRunner(lambda argv: (2, "", ""))
    reader = signatures.default_reader(runner)
    assert isinstance(reader, BlkidCommandSignatures)
    assert reader.read(Path("/dev/vdb")).values == {}
    assert runner.commands() == ["blkid -p -o export /dev/vdb"]
