"""De-identification at ingest: the whole DICOM PS3.15 Basic Application Level Confidentiality Profile.

**Why table-driven, not a library.** The profile is applied from the standard's own table: the file
``ps3_15_basic_profile.csv`` beside this module holds every row of PS3.15 Annex E, Table E.1-1
(revision 2024b, 621 attributes, provenance in its header), and :data:`PROFILE_TABLE` is read from it,
so coverage is the standard's, not a hand list's, and a test is generated from the same rows. We chose
this over adopting ``dicognito``, ``dicom-anonymizer`` or pydicom's ``deid`` because all three bring their
own pseudonyms (random or seeded UIDs and names), while ours must be *keyed* and identical on every Ray
worker, in the header reader and in the de-identifier (a patient's CT and MR must still pair); wrapping
them would mean undoing half of what they do. The table is data: moving to a new revision is replacing
the CSV.

:class:`Deidentifier` applies the profile to a pydicom ``Dataset`` in place, at every nesting level:

* each table action: ``X`` remove, ``Z`` empty, ``D`` a dummy of the right VR, ``U`` a keyed UID. A
  compound code (``X/Z``, ``X/D``, ``X/Z/D``, ``X/Z/U*``, ``Z/D``) takes its first, strictest action.
  A ``D`` sequence (Content, Graphic Annotation, Verifying Observer, ...) is removed, since no dummy item
  is safe. :data:`BASIC_PROFILE` is the resulting tag -> action map;
* PatientID and PatientName get the keyed ``PAT-<hex>`` pseudonym of :meth:`Pseudonymizer.patient_of`,
  the same function the header reader calls, so both agree even when PatientID is empty or missing;
* every UID that is not a standard (``1.2.840.10008.*``) UID is replaced by ``2.25.<int>`` from a keyed
  hash (HMAC-SHA256) of the original: the table's ``U`` attributes and any other UI value (coding scheme
  and private SOP class UIDs included), except the transfer syntax. The same key gives the same UID in
  every file of a study, so series, frames of reference and references still link;
* private attributes (table row "(gggg,eeee) where gggg is odd"), curves (50xx) and overlays (60xx) are
  removed; the file meta keeps only its version, SOP class, SOP instance (remapped) and transfer
  syntax; the implementation is named as pydicom (the writer); private information and AE titles go,
  and the 128-byte preamble (free for applications: a TIFF header, say) is zeroed;
* by default every remaining person name (VR PN) and date/time (DA, DT, TM) is removed too, stricter
  than the profile, never looser;
* the geometry and the pixels are kept (the profile does not list them). An image whose
  BurnedInAnnotation is YES has PHI in its pixels that no header edit removes: it is refused with
  :class:`BurnedInAnnotationError` (the header reader refuses it too, so the series is skipped with that
  reason) unless ``DeidConfig(allow_burned_in_annotation=True)``; such copies then say
  PatientIdentityRemoved=NO.

PatientIdentityRemoved is set to ``YES``, DeidentificationMethodCodeSequence names code 113100 ("Basic
Application Confidentiality Profile") and LongitudinalTemporalInformationModified says how dates fared.

>>> p = Pseudonymizer(b"k" * 32)
>>> p.uid("1.2.3") == p.uid("1.2.3"), p.uid("1.2.3").startswith("2.25."), len(p.uid("1.2.3")) <= 64
(True, True, True)
>>> len(PROFILE_TABLE), BASIC_PROFILE[(0x0088, 0x0200)]   # the Icon Image Sequence is removed
(621, 'X')
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from .errors import DicomError

__all__ = [
    "BASIC_PROFILE",
    "BurnedInAnnotationError",
    "DEID_KEY_ENV",
    "DeidConfig",
    "Deidentifier",
    "PROFILE_CSV",
    "PROFILE_TABLE",
    "ProfileRow",
    "Pseudonymizer",
    "STANDARD_UID_ROOT",
    "profile_action",
]

DEID_KEY_ENV = "RAYLENS_DEID_KEY"
"""Environment variable read for the pseudonymisation key when none is passed."""

PROFILE_CSV = Path(__file__).with_name("ps3_15_basic_profile.csv")
"""PS3.15 Table E.1-1 (tag, name, Basic Profile code), with its provenance in the header lines."""

STANDARD_UID_ROOT = "1.2.840.10008."
"""UIDs under this root are defined by the standard (SOP classes, transfer syntaxes) and are kept."""


class BurnedInAnnotationError(DicomError):
    """An image whose BurnedInAnnotation is YES: its pixels may show PHI, so it is not ingested."""


class ProfileRow(NamedTuple):
    """One row of PS3.15 Table E.1-1."""

    tag: str
    """As the standard writes it: ``(0010,0010)``, ``(60XX,3000)``, or ``(gggg,eeee)`` for private attributes."""
    name: str
    code: str
    """The Basic Profile column: ``X``, ``Z``, ``D``, ``U`` or a compound such as ``X/Z/D``."""


def _read_table(path: Path) -> tuple[ProfileRow, ...]:
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(line for line in f if not line.startswith("#"))
        return tuple(ProfileRow(r["tag"], r["name"], r["basic_profile"]) for r in reader)


PROFILE_TABLE: tuple[ProfileRow, ...] = _read_table(PROFILE_CSV)
"""Every row of PS3.15 Table E.1-1, read from :data:`PROFILE_CSV`."""


def profile_action(code: str) -> str:
    """The one action applied for a table code: the first (strictest) of a compound.

    >>> [profile_action(c) for c in ("X/Z/D", "Z/D", "X/Z/U*", "D", "U")]
    ['X', 'Z', 'X', 'D', 'U']
    """
    action = code.split("/")[0].strip().rstrip("*")
    if action not in ("X", "Z", "D", "U"):
        raise ValueError(f"unknown PS3.15 action code {code!r}; expected X, Z, D, U or a compound of them")
    return action


def _parse_tag(text: str) -> tuple[str, str]:
    group, element = text.strip("()").split(",")
    return group.upper(), element.upper()


def _build_profile(rows: Iterable[ProfileRow]):
    exact: dict[tuple[int, int], str] = {}
    masked: list[tuple[int, int, int, int, str]] = []  # (group mask, group, element mask, element, action)
    for row in rows:
        if row.tag == "(gggg,eeee)":  # private attributes: removed by their own rule
            continue
        group, element = _parse_tag(row.tag)
        action = profile_action(row.code)
        if "X" in group or "X" in element:
            gmask = int("".join("0" if c == "X" else "F" for c in group), 16)
            emask = int("".join("0" if c == "X" else "F" for c in element), 16)
            masked.append((gmask, int(group.replace("X", "0"), 16), emask, int(element.replace("X", "0"), 16), action))
        else:
            exact[(int(group, 16), int(element, 16))] = action
    return exact, tuple(masked)


BASIC_PROFILE, _MASKED_PROFILE = _build_profile(PROFILE_TABLE)
BASIC_PROFILE: dict[tuple[int, int], str]
"""(group, element) -> the action applied (``X``, ``Z``, ``D`` or ``U``; see :func:`profile_action`)."""

_PATIENT_TAGS = ((0x0010, 0x0010), (0x0010, 0x0020))  # PatientName, PatientID: Z with the pseudonym
_REPEATING_GROUPS = (0x5000, 0x6000)  # curves and overlays: the whole group goes (stricter than the rows)
_DATE_VRS = ("DA", "DT", "TM")
_TEXT_VRS = ("AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UR", "UT")
_DUMMY = {"AS": "000Y", "DA": "19000101", "DT": "19000101000000", "TM": "000000", "DS": "0", "IS": "0"}
_META_KEEP = (0x00020001, 0x00020002, 0x00020003, 0x00020010)  # version, SOP class, SOP instance, syntax


def _resolve_key(key: bytes | str | None) -> bytes:
    if key is None:
        key = os.environ.get(DEID_KEY_ENV)
        if not key:
            raise ValueError(
                f"a de-identification key is needed: pass DeidConfig(key=...) or set {DEID_KEY_ENV}. "
                "Keep it secret and keep it stable: the same key gives the same pseudonyms."
            )
    if isinstance(key, str):
        key = key.encode("utf-8")
    if not isinstance(key, (bytes, bytearray)) or len(key) < 16:
        raise ValueError("the de-identification key must be at least 16 bytes; use secrets.token_hex(32)")
    return bytes(key)


def _burned_in(ds) -> bool:
    return str(ds.get("BurnedInAnnotation", "") or "").strip().upper() == "YES"


class Pseudonymizer:
    """Keyed, consistent pseudonyms: HMAC-SHA256 of the original value under a secret key.

    The header reader carries this object, so it also carries the one release rule that must hold
    before any pixel leaves ingest (:meth:`check_burned_in`).
    """

    def __init__(self, key: bytes | str, *, allow_burned_in_annotation: bool = False):
        self._key = _resolve_key(key)
        self.allow_burned_in_annotation = bool(allow_burned_in_annotation)

    def __repr__(self) -> str:
        return f"Pseudonymizer(key=<hidden>, allow_burned_in_annotation={self.allow_burned_in_annotation})"

    def __reduce__(self):  # picklable for Ray workers; the key travels only inside the pickle
        return (_pseudonymizer, (self._key, self.allow_burned_in_annotation))

    def _digest(self, kind: str, value: str) -> bytes:
        return hmac.new(self._key, f"{kind}\x00{value}".encode(), hashlib.sha256).digest()

    def uid(self, value: str) -> str:
        """A ``2.25.<int>`` UID (<= 64 chars) standing for ``value``."""
        value = str(value).strip().rstrip("\x00")
        if not value:
            return ""
        return "2.25." + str(int.from_bytes(self._digest("uid", value)[:16], "big"))

    def patient_id(self, value: str) -> str:
        """A ``PAT-<16 hex>`` pseudonym for a PatientID value."""
        value = str(value).strip()
        return "PAT-" + self._digest("patient", value).hex()[:16] if value else "PAT-UNKNOWN"

    def patient_of(self, ds) -> str:
        """The patient pseudonym of a dataset; the header reader and the de-identifier both call this.

        PatientID when it has a value; else PatientName (a different keyed hash, so a name never
        collides with an id); else the StudyInstanceUID, so a study with neither stays together
        without being merged with other anonymous studies; else ``PAT-UNKNOWN``.
        """
        pid = str(ds.get("PatientID", "") or "").strip()
        if pid:
            return self.patient_id(pid)
        for kind, keyword in (("patient-name", "PatientName"), ("patient-study", "StudyInstanceUID")):
            value = str(ds.get(keyword, "") or "").strip()
            if value:
                return "PAT-" + self._digest(kind, value).hex()[:16]
        return "PAT-UNKNOWN"

    def path_token(self, path: str | os.PathLike) -> str:
        """A keyed ``path-<16 hex>`` token naming a file or folder without showing its name."""
        return "path-" + self._digest("path", str(path)).hex()[:16]

    def check_burned_in(self, ds) -> None:
        """Raise :class:`BurnedInAnnotationError` for a BurnedInAnnotation=YES image, unless allowed."""
        if _burned_in(ds) and not self.allow_burned_in_annotation:
            raise BurnedInAnnotationError(
                "burned-in annotation (BurnedInAnnotation=YES: the pixels may show the patient's name or "
                "other PHI that header de-identification cannot remove); the file is refused. After checking "
                "the pixels are clean, pass DeidConfig(allow_burned_in_annotation=True) to ingest it"
            )


def _pseudonymizer(key: bytes, allow_burned_in_annotation: bool) -> Pseudonymizer:
    return Pseudonymizer(key, allow_burned_in_annotation=allow_burned_in_annotation)


@dataclass(frozen=True)
class DeidConfig:
    """How PHI is removed at ingest."""

    key: bytes | str | None = field(default=None, repr=False)
    """Secret for the keyed hash (>= 16 bytes); ``None`` reads ``RAYLENS_DEID_KEY``. Never logged."""
    remove_private_tags: bool = True
    """Remove every private (odd-group) attribute, as the Basic Profile requires."""
    remove_all_dates: bool = True
    """Also remove every DA/DT/TM attribute the profile does not list (stricter than the profile)."""
    remove_all_person_names: bool = True
    """Also remove every PN attribute the profile does not list (stricter than the profile)."""
    output_dir: str | None = None
    """If set, write a de-identified DICOM copy of every ingested file below this directory."""
    allow_burned_in_annotation: bool = False
    """Ingest images whose BurnedInAnnotation is YES. Off: they are refused and reported, since their
    pixels may show PHI. Turn on only for data whose pixels you have checked; copies then say
    PatientIdentityRemoved=NO."""
    report_paths: bool = False
    """Name source files and folders in ingest reports and logs. Off: DICOM folders are often named
    after the patient, so they appear as keyed ``path-<hex>`` tokens (:meth:`report_path`), which
    :meth:`locate` maps back for whoever holds the key."""

    def __post_init__(self):
        # resolve now, so a missing key fails at the API boundary and not in a worker
        object.__setattr__(self, "key", _resolve_key(self.key))

    def pseudonymizer(self) -> Pseudonymizer:
        """The keyed pseudonymiser (with this config's burned-in annotation rule) for the header reader."""
        return Pseudonymizer(self.key, allow_burned_in_annotation=self.allow_burned_in_annotation)

    def report_path(self, path: str | os.PathLike) -> str:
        """How a report or log names a source file or folder: the path, or its keyed token (``report_paths``)."""
        return str(path) if self.report_paths else self.pseudonymizer().path_token(path)

    def locate(self, token: str, roots: str | os.PathLike | Iterable[str | os.PathLike]) -> list[str]:
        """The files and folders below ``roots`` that a report's ``path-<hex>`` token names.

        Paths are spelled the way ingest spells them (``str(Path(folder) / name)`` while walking).
        """
        if isinstance(roots, (str, os.PathLike)):
            roots = [roots]
        pseudo = self.pseudonymizer()
        found = []
        for root in roots:
            candidates = [str(root)]
            for folder, dirs, files in os.walk(root):
                candidates.append(folder)
                candidates += [str(Path(folder) / n) for n in (*dirs, *files)]
            found += [c for c in dict.fromkeys(candidates) if pseudo.path_token(c) == token]
        return sorted(set(found))


class Deidentifier:
    """Applies :class:`DeidConfig` to pydicom datasets, in place (see the module docstring)."""

    def __init__(self, config: DeidConfig):
        self.config = config
        self.pseudo = config.pseudonymizer()

    def __call__(self, ds):
        return self.apply(ds)

    def apply(self, ds):
        """De-identify ``ds`` (a ``pydicom.Dataset``, file meta included) in place and return it.

        Raises:
            BurnedInAnnotationError: BurnedInAnnotation is YES and the config does not allow it.
        """
        from pydicom.dataset import Dataset
        from pydicom.sequence import Sequence

        self.pseudo.check_burned_in(ds)
        pseudo_patient = self.pseudo.patient_of(ds)
        if self.config.remove_private_tags:
            ds.remove_private_tags()  # at every nesting level
        self._clean(ds, pseudo_patient)
        ds.PatientID = pseudo_patient
        ds.PatientName = pseudo_patient
        burned = _burned_in(ds)
        ds.PatientIdentityRemoved = "NO" if burned else "YES"
        method = "raylens PS3.15 E.1-1 Basic Profile (2024b)"  # LO: at most 64 characters
        ds.DeidentificationMethod = method + "; burned-in kept" if burned else method
        code = Dataset()
        code.CodeValue = "113100"
        code.CodingSchemeDesignator = "DCM"
        code.CodeMeaning = "Basic Application Confidentiality Profile"
        ds.DeidentificationMethodCodeSequence = Sequence([code])
        ds.LongitudinalTemporalInformationModified = "REMOVED" if self.config.remove_all_dates else "MODIFIED"
        self._clean_meta(ds)
        if getattr(ds, "preamble", None):  # 128 free bytes before "DICM": a TIFF header, or anything
            ds.preamble = b"\x00" * 128
        return ds

    def _clean_meta(self, ds) -> None:
        from pydicom.uid import PYDICOM_IMPLEMENTATION_UID

        meta = getattr(ds, "file_meta", None)
        if meta is None:
            return
        for elem in list(meta):
            if elem.tag not in _META_KEEP:
                del meta[elem.tag]
        if "SOPInstanceUID" in ds:
            meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        elif "MediaStorageSOPInstanceUID" in meta:
            meta.MediaStorageSOPInstanceUID = self.pseudo.uid(meta.MediaStorageSOPInstanceUID)
        if "SOPClassUID" in ds:
            meta.MediaStorageSOPClassUID = ds.SOPClassUID
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID  # pydicom writes the copy
        meta.ImplementationVersionName = "RAYLENS_DEID"

    def _action(self, elem) -> str | None:
        tag = (elem.tag.group, elem.tag.element)
        action = BASIC_PROFILE.get(tag)
        if action is None:
            for gmask, group, emask, element, act in _MASKED_PROFILE:
                if elem.tag.group & gmask == group and elem.tag.element & emask == element:
                    return act
            if (elem.tag.group & 0xFF00) in _REPEATING_GROUPS:
                return "X"
            if self.config.remove_all_dates and elem.VR in _DATE_VRS:
                return "X"
            if self.config.remove_all_person_names and elem.VR == "PN":
                return "X"
        if action in ("D", "U") and elem.VR in ("SQ", "UN"):
            return "X"  # no safe dummy item; an undecoded UID cannot be remapped
        return action

    def _clean(self, ds, pseudo_patient: str) -> None:
        for elem in list(ds):
            action = self._action(elem)
            if action == "X":
                del ds[elem.tag]
            elif action == "Z":
                if (elem.tag.group, elem.tag.element) in _PATIENT_TAGS:
                    elem.value = pseudo_patient
                elif elem.VR == "SQ":
                    elem.value = []
                else:
                    elem.value = "" if elem.VR in _TEXT_VRS else None
            elif action == "D":
                elem.value = self._dummy(elem)
            elif action == "U" or (action is None and elem.VR == "UI"):
                self._remap_uids(elem, always=action == "U")
            elif elem.VR == "SQ":
                for item in elem.value:
                    self._clean(item, pseudo_patient)

    def _dummy(self, elem):
        if elem.VR == "UI":
            return self.pseudo.uid(str(elem.value or "") or f"dummy-{elem.tag:08X}")
        if elem.VR == "PN":
            return "ANONYMIZED"
        if elem.VR in _DUMMY:
            return _DUMMY[elem.VR]
        if elem.VR in _TEXT_VRS or elem.VR in ("SH", "LO"):
            return "ANONYMIZED"
        if elem.VR in ("US", "SS", "UL", "SL", "UV", "SV", "FL", "FD", "AT"):
            return 0
        return b"\x00\x00"  # OB, OW, OD, OF, OL, OV

    def _remap_uids(self, elem, *, always: bool) -> None:
        if elem.value is None or elem.value == "":
            return
        values = list(elem.value) if elem.VM > 1 else [elem.value]
        new = [
            v if (not always and str(v).startswith(STANDARD_UID_ROOT)) or not str(v).strip() else self.pseudo.uid(v)
            for v in values
        ]
        elem.value = new if elem.VM > 1 else new[0]
