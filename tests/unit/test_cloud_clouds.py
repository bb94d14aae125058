"""CloudSet: the named clouds of a controller, chosen by a request's ``cloud`` secret."""

from __future__ import annotations

import pytest

from cinder_csi import errors
from cinder_csi.cloud.clouds import CloudSet
from cinder_csi.cloud.connection import Cloud
from cinder_csi.config import AuthSettings


def clouds(*names: str) -> CloudSet:
    return CloudSet.from_settings({n: AuthSettings(name=n) for n in names})


def test_the_secret_names_the_cloud_and_its_absence_the_default() -> None:
    made = clouds("", "east")
    assert made.for_secrets({"cloud": "east"}).auth.name == "east"
    assert made.for_secrets({}).auth.name == ""
    assert made.for_secrets({"other-key": "x"}).auth.name == ""
    assert made.names() == ["", "east"]


@pytest.mark.parametrize(("have", "secrets", "needle"), [
    (("", "east"), {"cloud": "west"}, "cloud 'west' is not configured"),
    (("east",), {}, "the default cloud ([Global]) is not configured"),
])
def test_an_unknown_cloud_is_invalid_argument_naming_the_served_ones(
    have: tuple[str, ...], secrets: dict[str, str], needle: str
) -> None:
    with pytest.raises(errors.InvalidArgument) as info:
        clouds(*have).for_secrets(secrets)
    assert needle in info.value.message
    assert "'east'" in info.value.message


def test_ready_while_some_cloud_answers_else_names_each() -> None:
    down: set[str] = {"east"}

    class Probed(Cloud):
        def probe(self) -> str | None:
            return "unreachable" if self.auth.name in down else None

    made = CloudSet.from_settings({n: AuthSettings(name=n) for n in ("", "east")}, Probed)
    assert made.probe() is None
    down.add("")
    assert made.probe() == '[Global]: unreachable; [Global "east"]: unreachable'


def test_no_cloud_is_refused() -> None:
    with pytest.raises(errors.InvalidArgument):
        CloudSet({})
