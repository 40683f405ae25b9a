"""De-identification at ingest: the DICOM PS3.15 Basic Application Level Confidentiality Profile.

:class:`Deidentifier` applies the profile to a pydicom ``Dataset`` in place:

* every attribute the profile lists is removed (``X``), emptied (``Z``) or, for UIDs, replaced
  (``U``); the table :data:`BASIC_PROFILE` lists the attributes this module acts on;
* UIDs are replaced with ``2.25.<decimal>`` UIDs derived from a keyed hash (HMAC-SHA256) of the
  original, and PatientID/PatientName with ``PAT-<hex>`` from the same keyed hash. The same key gives
  the same pseudonym everywhere (on every Ray worker, in every run), so a patient's CT and MR still
  pair and a FrameOfReferenceUID still links its series; without the key nobody can map back;
* private tags, overlays and curves are removed; by default every remaining person name (VR PN) and
  every date/time (DA, DT, TM) is removed too (stricter than the profile, never looser);
* the geometry (ImagePositionPatient, ImageOrientationPatient, PixelSpacing, SliceThickness,
  rescale, the pixel data) is kept: the profile does not list it.

PatientIdentityRemoved is set to ``YES`` and DeidentificationMethodCodeSequence names code 113100
("Basic Application Confidentiality Profile").

>>> p = Pseudonymizer(b"k" * 32)
>>> p.uid("1.2.3") == p.uid("1.2.3"), p.uid("1.2.3").startswith("2.25."), len(p.uid("1.2.3")) <= 64
(True, True, True)
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass, field

__all__ = ["BASIC_PROFILE", "DEID_KEY_ENV", "DeidConfig", "Pseudonymizer", "Deidentifier"]

DEID_KEY_ENV = "RAYLENS_DEID_KEY"
"""Environment variable read for the pseudonymisation key when none is passed."""

# PS3.15 Annex E, Table E.1-1, "Basic Profile" column. (group, element) -> action:
# "X" remove, "Z" empty (or a dummy: PatientID/PatientName get the keyed pseudonym), "U" keyed UID.
BASIC_PROFILE: dict[tuple[int, int], str] = {
    # identifiers and UIDs
    (0x0008, 0x0014): "U",  # Instance Creator UID
    (0x0008, 0x0018): "U",  # SOP Instance UID
    (0x0008, 0x0058): "U",  # Failed SOP Instance UID List
    (0x0008, 0x1155): "U",  # Referenced SOP Instance UID
    (0x0008, 0x1195): "U",  # Transaction UID
    (0x0008, 0x3010): "U",  # Irradiation Event UID
    (0x0004, 0x1511): "U",  # Referenced SOP Instance UID in File
    (0x0018, 0x1002): "U",  # Device UID
    (0x0018, 0x2042): "U",  # Target UID
    (0x0020, 0x000D): "U",  # Study Instance UID
    (0x0020, 0x000E): "U",  # Series Instance UID
    (0x0020, 0x0052): "U",  # Frame of Reference UID
    (0x0020, 0x0200): "U",  # Synchronization Frame of Reference UID
    (0x0020, 0x9161): "U",  # Concatenation UID
    (0x0020, 0x9164): "U",  # Dimension Organization UID
    (0x0028, 0x1199): "U",  # Palette Color Lookup Table UID
    (0x0040, 0xA124): "U",  # UID
    (0x0040, 0xDB0C): "U",  # Template Extension Creator UID
    (0x0040, 0xDB0D): "U",  # Template Extension Organization UID
    (0x0062, 0x0021): "U",  # Tracking UID
    (0x0070, 0x031A): "U",  # Fiducial UID
    (0x0088, 0x0140): "U",  # Storage Media File-set UID
    (0x3006, 0x0024): "U",  # Referenced Frame of Reference UID
    (0x3006, 0x00C2): "U",  # Related Frame of Reference UID
    # patient
    (0x0010, 0x0010): "Z",  # Patient's Name
    (0x0010, 0x0020): "Z",  # Patient ID
    (0x0010, 0x0021): "X",  # Issuer of Patient ID
    (0x0010, 0x0030): "Z",  # Patient's Birth Date
    (0x0010, 0x0032): "X",  # Patient's Birth Time
    (0x0010, 0x0040): "Z",  # Patient's Sex
    (0x0010, 0x0050): "X",  # Patient's Insurance Plan Code Sequence
    (0x0010, 0x0101): "X",  # Patient's Primary Language Code Sequence
    (0x0010, 0x0102): "X",  # Patient's Primary Language Modifier Code Sequence
    (0x0010, 0x1000): "X",  # Other Patient IDs
    (0x0010, 0x1001): "X",  # Other Patient Names
    (0x0010, 0x1002): "X",  # Other Patient IDs Sequence
    (0x0010, 0x1005): "X",  # Patient's Birth Name
    (0x0010, 0x1010): "X",  # Patient's Age
    (0x0010, 0x1020): "X",  # Patient's Size
    (0x0010, 0x1030): "X",  # Patient's Weight
    (0x0010, 0x1040): "X",  # Patient's Address
    (0x0010, 0x1060): "X",  # Patient's Mother's Birth Name
    (0x0010, 0x1080): "X",  # Military Rank
    (0x0010, 0x1081): "X",  # Branch of Service
    (0x0010, 0x1090): "X",  # Medical Record Locator
    (0x0010, 0x2000): "X",  # Medical Alerts
    (0x0010, 0x2110): "X",  # Allergies
    (0x0010, 0x2150): "X",  # Country of Residence
    (0x0010, 0x2152): "X",  # Region of Residence
    (0x0010, 0x2154): "X",  # Patient's Telephone Numbers
    (0x0010, 0x2160): "X",  # Ethnic Group
    (0x0010, 0x2180): "X",  # Occupation
    (0x0010, 0x21A0): "X",  # Smoking Status
    (0x0010, 0x21B0): "X",  # Additional Patient History
    (0x0010, 0x21C0): "X",  # Pregnancy Status
    (0x0010, 0x21D0): "X",  # Last Menstrual Date
    (0x0010, 0x21F0): "X",  # Patient's Religious Preference
    (0x0010, 0x2203): "X",  # Patient's Sex Neutered
    (0x0010, 0x2297): "X",  # Responsible Person
    (0x0010, 0x2299): "X",  # Responsible Organization
    (0x0010, 0x4000): "X",  # Patient Comments
    (0x0038, 0x0010): "X",  # Admission ID
    (0x0038, 0x0014): "X",  # Issuer of Admission ID Sequence
    (0x0038, 0x0300): "X",  # Current Patient Location
    (0x0038, 0x0400): "X",  # Patient's Institution Residence
    (0x0038, 0x0500): "X",  # Patient State
    (0x0038, 0x4000): "X",  # Visit Comments
    # study, visit, request
    (0x0008, 0x0050): "Z",  # Accession Number
    (0x0008, 0x0080): "X",  # Institution Name
    (0x0008, 0x0081): "X",  # Institution Address
    (0x0008, 0x0082): "X",  # Institution Code Sequence
    (0x0008, 0x0090): "Z",  # Referring Physician's Name
    (0x0008, 0x0092): "X",  # Referring Physician's Address
    (0x0008, 0x0094): "X",  # Referring Physician's Telephone Numbers
    (0x0008, 0x0096): "X",  # Referring Physician Identification Sequence
    (0x0008, 0x1010): "X",  # Station Name
    (0x0008, 0x1030): "X",  # Study Description
    (0x0008, 0x1032): "X",  # Procedure Code Sequence
    (0x0008, 0x103E): "X",  # Series Description
    (0x0008, 0x1040): "X",  # Institutional Department Name
    (0x0008, 0x1048): "X",  # Physician(s) of Record
    (0x0008, 0x1049): "X",  # Physician(s) of Record Identification Sequence
    (0x0008, 0x1050): "X",  # Performing Physicians' Name
    (0x0008, 0x1052): "X",  # Performing Physician Identification Sequence
    (0x0008, 0x1060): "X",  # Name of Physician(s) Reading Study
    (0x0008, 0x1062): "X",  # Physician(s) Reading Study Identification Sequence
    (0x0008, 0x1070): "X",  # Operators' Name
    (0x0008, 0x1072): "X",  # Operator Identification Sequence
    (0x0008, 0x1080): "X",  # Admitting Diagnoses Description
    (0x0008, 0x1084): "X",  # Admitting Diagnoses Code Sequence
    (0x0008, 0x1110): "X",  # Referenced Study Sequence
    (0x0008, 0x1111): "X",  # Referenced Performed Procedure Step Sequence
    (0x0008, 0x1120): "X",  # Referenced Patient Sequence
    (0x0008, 0x2111): "X",  # Derivation Description
    (0x0008, 0x4000): "X",  # Identifying Comments
    (0x0018, 0x1000): "X",  # Device Serial Number
    (0x0018, 0x1004): "X",  # Plate ID
    (0x0018, 0x1005): "X",  # Generator ID
    (0x0018, 0x1007): "X",  # Cassette ID
    (0x0018, 0x1008): "X",  # Gantry ID
    (0x0018, 0x1030): "X",  # Protocol Name
    (0x0018, 0x700A): "X",  # Detector ID
    (0x0018, 0x9424): "X",  # Acquisition Protocol Description
    (0x0020, 0x0010): "Z",  # Study ID
    (0x0020, 0x4000): "X",  # Image Comments
    (0x0020, 0x9158): "X",  # Frame Comments
    (0x0028, 0x4000): "X",  # Image Presentation Comments
    (0x0032, 0x0012): "X",  # Study ID Issuer
    (0x0032, 0x1020): "X",  # Scheduled Study Location
    (0x0032, 0x1021): "X",  # Scheduled Study Location AE Title
    (0x0032, 0x1030): "X",  # Reason for Study
    (0x0032, 0x1032): "X",  # Requesting Physician
    (0x0032, 0x1033): "X",  # Requesting Service
    (0x0032, 0x1060): "X",  # Requested Procedure Description
    (0x0032, 0x1070): "X",  # Requested Contrast Agent
    (0x0032, 0x4000): "X",  # Study Comments
    (0x0040, 0x0006): "X",  # Scheduled Performing Physician's Name
    (0x0040, 0x0007): "X",  # Scheduled Procedure Step Description
    (0x0040, 0x0009): "X",  # Scheduled Procedure Step ID
    (0x0040, 0x0010): "X",  # Scheduled Station Name
    (0x0040, 0x0011): "X",  # Scheduled Procedure Step Location
    (0x0040, 0x0241): "X",  # Performed Station AE Title
    (0x0040, 0x0242): "X",  # Performed Station Name
    (0x0040, 0x0243): "X",  # Performed Location
    (0x0040, 0x0253): "X",  # Performed Procedure Step ID
    (0x0040, 0x0254): "X",  # Performed Procedure Step Description
    (0x0040, 0x0275): "X",  # Request Attributes Sequence
    (0x0040, 0x0280): "X",  # Comments on the Performed Procedure Step
    (0x0040, 0x1001): "X",  # Requested Procedure ID
    (0x0040, 0x1004): "X",  # Patient Transport Arrangements
    (0x0040, 0x1005): "X",  # Requested Procedure Location
    (0x0040, 0x1010): "X",  # Names of Intended Recipients of Results
    (0x0040, 0x1400): "X",  # Requested Procedure Comments
    (0x0040, 0x2001): "X",  # Reason for the Imaging Service Request
    (0x0040, 0x2008): "X",  # Order Entered By
    (0x0040, 0x2009): "X",  # Order Enterer's Location
    (0x0040, 0x2010): "X",  # Order Callback Phone Number
    (0x0040, 0x2016): "Z",  # Placer Order Number / Imaging Service Request
    (0x0040, 0x2017): "Z",  # Filler Order Number / Imaging Service Request
    (0x0040, 0x2400): "X",  # Imaging Service Request Comments
    (0x0040, 0x3001): "X",  # Confidentiality Constraint on Patient Data Description
    (0x0040, 0xA027): "X",  # Verifying Organization
    (0x0040, 0xA073): "X",  # Verifying Observer Sequence
    (0x0040, 0xA075): "X",  # Verifying Observer Name
    (0x0040, 0xA123): "X",  # Person Name
    (0x0040, 0xA730): "X",  # Content Sequence
    (0x0070, 0x0084): "Z",  # Content Creator's Name
    (0x0400, 0x0561): "X",  # Original Attributes Sequence
    (0x4000, 0x0010): "X",  # Arbitrary
    (0x4000, 0x4000): "X",  # Text Comments
    (0x4008, 0x0042): "X",  # Results ID Issuer
    (0x4008, 0x0102): "X",  # Interpretation Recorder
    (0x4008, 0x010A): "X",  # Interpretation Transcriber
    (0x4008, 0x010B): "X",  # Interpretation Text
    (0x4008, 0x010C): "X",  # Interpretation Author
    (0x4008, 0x0114): "X",  # Physician Approving Interpretation
    (0x4008, 0x0119): "X",  # Distribution Name
    (0x4008, 0x011A): "X",  # Distribution Address
    (0x4008, 0x0300): "X",  # Impressions
    (0x4008, 0x4000): "X",  # Results Comments
    # dates and times (also caught by the DA/DT/TM sweep)
    (0x0008, 0x0012): "X",  # Instance Creation Date
    (0x0008, 0x0013): "X",  # Instance Creation Time
    (0x0008, 0x0015): "X",  # Instance Coercion DateTime
    (0x0008, 0x0020): "Z",  # Study Date
    (0x0008, 0x0021): "X",  # Series Date
    (0x0008, 0x0022): "X",  # Acquisition Date
    (0x0008, 0x0023): "Z",  # Content Date
    (0x0008, 0x0024): "X",  # Overlay Date
    (0x0008, 0x0025): "X",  # Curve Date
    (0x0008, 0x002A): "X",  # Acquisition DateTime
    (0x0008, 0x0030): "Z",  # Study Time
    (0x0008, 0x0031): "X",  # Series Time
    (0x0008, 0x0032): "X",  # Acquisition Time
    (0x0008, 0x0033): "Z",  # Content Time
    (0x0008, 0x0034): "X",  # Overlay Time
    (0x0008, 0x0035): "X",  # Curve Time
    (0x0008, 0x0201): "X",  # Timezone Offset From UTC
    (0x0018, 0x1200): "X",  # Date of Last Calibration
    (0x0018, 0x1201): "X",  # Time of Last Calibration
    (0x0018, 0x9074): "X",  # Frame Acquisition DateTime
    (0x0018, 0x9151): "X",  # Frame Reference DateTime
    (0x0040, 0x0244): "X",  # Performed Procedure Step Start Date
    (0x0040, 0x0245): "X",  # Performed Procedure Step Start Time
    (0x0040, 0x0250): "X",  # Performed Procedure Step End Date
    (0x0040, 0x0251): "X",  # Performed Procedure Step End Time
    (0x0040, 0xA030): "X",  # Verification DateTime
    (0x0040, 0xA032): "X",  # Observation DateTime
}

_FILE_META_REMOVE = ((0x0002, 0x0016), (0x0002, 0x0017), (0x0002, 0x0018))  # source/sending/receiving AE
_REPEATING_GROUPS = (0x5000, 0x6000)  # curves and overlays (50xx,xxxx) / (60xx,3000|4000)
_DATE_VRS = ("DA", "DT", "TM")


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

    def __post_init__(self):
        # resolve now, so a missing key fails at the API boundary and not in a worker
        object.__setattr__(self, "key", _resolve_key(self.key))

    def pseudonymizer(self) -> Pseudonymizer:
        return Pseudonymizer(self.key)


class Pseudonymizer:
    """Keyed, consistent pseudonyms: HMAC-SHA256 of the original value under a secret key."""

    def __init__(self, key: bytes | str):
        self._key = _resolve_key(key)

    def __repr__(self) -> str:
        return "Pseudonymizer(key=<hidden>)"

    def __reduce__(self):  # picklable for Ray workers; the key travels only inside the pickle
        return (Pseudonymizer, (self._key,))

    def _digest(self, kind: str, value: str) -> bytes:
        return hmac.new(self._key, f"{kind}\x00{value}".encode(), hashlib.sha256).digest()

    def uid(self, value: str) -> str:
        """A ``2.25.<int>`` UID (<= 64 chars) standing for ``value``."""
        value = str(value).strip()
        if not value:
            return ""
        return "2.25." + str(int.from_bytes(self._digest("uid", value)[:16], "big"))

    def patient_id(self, value: str) -> str:
        """A ``PAT-<16 hex>`` pseudonym for a PatientID (also used for PatientName)."""
        value = str(value).strip()
        return "PAT-" + self._digest("patient", value).hex()[:16] if value else "PAT-UNKNOWN"


class Deidentifier:
    """Applies :class:`DeidConfig` to pydicom datasets, in place (see the module docstring)."""

    def __init__(self, config: DeidConfig):
        self.config = config
        self.pseudo = config.pseudonymizer()

    def __call__(self, ds):
        return self.apply(ds)

    def apply(self, ds):
        """De-identify ``ds`` (a ``pydicom.Dataset``) in place and return it."""
        from pydicom.dataset import Dataset
        from pydicom.sequence import Sequence

        original_patient = str(ds.get("PatientID", "") or ds.get("PatientName", "") or "")
        pseudo_patient = self.pseudo.patient_id(original_patient)
        if self.config.remove_private_tags:
            ds.remove_private_tags()
        self._clean(ds, pseudo_patient)
        ds.PatientID = pseudo_patient
        ds.PatientName = pseudo_patient
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = "raylens: PS3.15 Basic Application Confidentiality Profile"
        code = Dataset()
        code.CodeValue = "113100"
        code.CodingSchemeDesignator = "DCM"
        code.CodeMeaning = "Basic Application Confidentiality Profile"
        ds.DeidentificationMethodCodeSequence = Sequence([code])
        meta = getattr(ds, "file_meta", None)
        if meta is not None:
            for tag in _FILE_META_REMOVE:
                if tag in meta:
                    del meta[tag]
            if "SOPInstanceUID" in ds:
                meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        return ds

    def _clean(self, ds, pseudo_patient: str) -> None:
        for elem in list(ds):
            tag = (elem.tag.group, elem.tag.element)
            action = BASIC_PROFILE.get(tag)
            if action is None and (elem.tag.group & 0xFF00) in _REPEATING_GROUPS:
                action = "X"
            if action is None and self.config.remove_all_dates and elem.VR in _DATE_VRS:
                action = "X"
            if action is None and self.config.remove_all_person_names and elem.VR == "PN":
                action = "X"
            if action == "X":
                del ds[elem.tag]
            elif action == "Z":
                if tag in ((0x0010, 0x0010), (0x0010, 0x0020)):
                    elem.value = pseudo_patient
                elif elem.VR == "SQ":
                    elem.value = []
                else:
                    elem.value = ""
            elif action == "U":
                values = elem.value if elem.VM > 1 else [elem.value]
                new = [self.pseudo.uid(str(v)) for v in values if v is not None and str(v)]
                elem.value = new if elem.VM > 1 else (new[0] if new else "")
            elif elem.VR == "SQ":
                for item in elem.value:
                    self._clean(item, pseudo_patient)
