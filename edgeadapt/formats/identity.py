"""The identity of the bundle a file was made for, and the one check every reader runs.

Every file made from a bundle (a profile, a plan, an evaluation, imported predictions
given ``--bundle``) records the bundle's **identity**: the sha256 of its manifest, which
lists every file's sha256 (a step whose weights changed changes it), and its state names.
A reader given the bundle calls `check_identity`, which refuses a file made for another
bundle with an error naming the file, both identities and the bundle's path.

A file that records no identity (an evaluation written before evaluations recorded one,
predictions imported without a bundle) cannot be checked: `check_identity` accepts it with
an `UncheckedWarning` (the CLI prints it once as a note).
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from edgeadapt.errors import InputError
from edgeadapt.formats.jsonio import Fields

if TYPE_CHECKING:
    from edgeadapt.formats.bundle import Bundle

__all__ = ["BundleIdentity", "UncheckedWarning", "check_identity", "read_identity"]

_SHA256 = re.compile(r"[0-9a-f]{64}")


class UncheckedWarning(UserWarning):
    """A file read for a bundle records no bundle identity: it cannot be checked."""


@dataclass(frozen=True)
class BundleIdentity:
    """A bundle's manifest sha256 and its state names, in order."""

    manifest_sha256: str
    states: tuple[str, ...]

    def __post_init__(self) -> None:
        if not _SHA256.fullmatch(self.manifest_sha256):
            raise InputError(
                f"must be 64 lowercase hex digits, got {self.manifest_sha256[:70]!r}",
                field="manifest_sha256",
            )
        if not self.states or len(set(self.states)) != len(self.states):
            raise InputError("must be a non-empty list of unique names", field="states")

    @classmethod
    def of(cls, bundle: Bundle) -> BundleIdentity:
        """The identity of a loaded bundle."""
        return cls(bundle.manifest_sha256, tuple(s.name for s in bundle.states))

    def to_json(self) -> dict[str, Any]:
        """``{"manifest_sha256", "states"}``, as profiles and plans hold it in ``$.bundle``."""
        return {"manifest_sha256": self.manifest_sha256, "states": list(self.states)}

    def describe(self) -> str:
        """``manifest sha256 0123456789ab..., states s0, s1`` (for messages)."""
        return f"manifest sha256 {self.manifest_sha256[:12]}..., states {', '.join(self.states)}"


def read_identity(f: Fields) -> BundleIdentity:
    """The identity in a JSON object (a profile's or plan's ``$.bundle``): its
    ``manifest_sha256`` (64 lowercase hex digits) and ``states`` (unique non-empty names);
    errors name the file and the JSON path."""
    sha = f.get(
        "manifest_sha256",
        str,
        check=lambda v: None if _SHA256.fullmatch(v) else "must be 64 lowercase hex digits",
    )
    names = f.get("states", list)
    for j, name in enumerate(names):
        if not isinstance(name, str) or not name:
            f.fail(f"must be a non-empty string, got {name!r}", f"states[{j}]")
    if not names or len(set(names)) != len(names):
        f.fail("must be a non-empty list of unique names", "states")
    return BundleIdentity(sha, tuple(names))


def check_identity(
    recorded: BundleIdentity | None,
    bundle: Bundle,
    *,
    source: str | os.PathLike[str] | None,
    redo: str,
    fields: tuple[str, str] = ("$.bundle.manifest_sha256", "$.bundle.states"),
    unrecorded: str = "it records no bundle identity",
) -> None:
    """Refuse a file (`source`) whose `recorded` identity is not `bundle`'s, naming the
    file, the field that differs (`fields`: where the file holds the manifest sha256 and
    the state names), both identities and what to do (`redo`, e.g. ``profile this bundle
    again``); a file without one (None) is accepted with an `UncheckedWarning` that says
    why (`unrecorded`)."""
    here = BundleIdentity.of(bundle)
    if recorded is None:
        warnings.warn(
            f"{source}: {unrecorded}, so it cannot be checked to be of the bundle "
            f"{bundle.path} ({here.describe()}); {redo} to make it checkable",
            UncheckedWarning,
            stacklevel=3,
        )
        return
    if recorded != here:
        differs = recorded.manifest_sha256 != here.manifest_sha256
        raise InputError(
            f"was made for another bundle ({recorded.describe()}), not for "
            f"{bundle.path} ({here.describe()}); {redo}",
            source=source,
            field=fields[0] if differs else fields[1],
        )
