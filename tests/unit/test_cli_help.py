"""`cinder-csi <command> --help` is a complete reference: every flag says what it does."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from cinder_csi.cli import build_parser, flag_reference, main

REFERENCE = flag_reference()
README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_every_command_is_listed() -> None:
    assert {"controller", "node", "provisioner", "registry", "sandbox", "version"} <= set(
        REFERENCE)


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_every_flag_and_command_has_help(name: str) -> None:
    missing = [flag or f"the command {name}" for flag, text in REFERENCE[name]
               if text is None or not text.strip() or text == argparse.SUPPRESS]
    assert not missing, f"cinder-csi {name}: no help for {', '.join(missing)}"


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_help_prints_every_flag_and_exits_zero(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main([name, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: cinder-csi {name}")
    for flag, _ in REFERENCE[name][1:]:
        if flag.startswith("-"):
            assert flag.split("/")[-1] in out


@pytest.mark.parametrize("name", ["controller", "node", "provisioner"])
def test_readme_names_every_flag(name: str) -> None:
    """The README's flag tables stay true: each flag of the long-running commands is there."""
    absent = [flag for flag, _ in REFERENCE[name][1:]
              if flag.startswith("--") and f"`{flag}" not in README and flag not in README]
    assert not absent, f"README lacks {name} flags: {', '.join(absent)}"


@pytest.mark.parametrize(("argv", "names"), [
    (['--cloud-name="zone-one"'], ["zone-one"]),  # upstream's manifests quote it
    (["--cloud-name", "a,b", "--cloud-name=c"], ["a", "b", "c"]),
    (['--cloud-name=""'], [""]),  # the plain [Global]
    ([], []),
])
def test_cloud_name_reads_like_the_go_flag(argv: list[str], names: list[str]) -> None:
    args = build_parser().parse_args(["controller", *argv])
    assert args.cloud_name == names
