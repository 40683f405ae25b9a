"""A DICOM phantom generator: real CT and MR series for N patients, written with pydicom.

Each patient has a body (an ellipsoid of soft tissue with a bony rod) and one lesion. On CT the
lesion is *dense* (about 185 HU) or not (about -30 HU, hypodense); on MR it is *bright* or
*dark*. The label is 1 only when the lesion is dense on CT **and** bright on MR, so one modality
alone cannot tell a positive from a negative that shares its look on that modality, while fusing
both can. With the default category mix (40% dense+bright, 30% dense only, 30% bright only) a perfect
single-modality model reaches an AUC of 0.75 and a perfect fused model 1.0.

The files exercise what ingest must get right:

* correct geometry tags (ImagePositionPatient, ImageOrientationPatient, PixelSpacing), with oblique
  orientations (MR always at a random angle, some CT tilted) and sagittal/coronal MR planes;
* files stored out of order, under random names, with scrambled InstanceNumbers;
* some series RLE-compressed; some MR series stored as one Enhanced MR multi-frame object;
* CT stored either unsigned with RescaleIntercept -1024 or signed with intercept 0;
* PHI in the usual places (names, ids, dates, institution, accession, a private tag, a sequence)
  so that the de-identification test has something to look for (:meth:`PhantomPatient.phi_values`).

With ``extras=True`` the folder also gets a text file, a CT series with a missing slice and a mixed
series, for the skip/report paths.

>>> import tempfile
>>> ds = generate_phantoms(tempfile.mkdtemp(), PhantomConfig(n_patients=2, ct_size=16, ct_slices=8,
...                        mr_size=16, mr_slices=8, seed=1))
>>> len(ds.patients), ds.labels_csv.name
(2, 'labels.csv')
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["PhantomConfig", "PhantomPatient", "PhantomDataset", "generate_phantoms", "write_series", "render_phantom"]

_FIRST = ("Jane", "John", "Maria", "Ahmed", "Li", "Olga", "Kwame", "Sofia", "Ravi", "Emma", "Noah", "Yuki")
_LAST = ("Doe", "Smith", "Garcia", "Okafor", "Nguyen", "Ivanova", "Mensah", "Rossi", "Patel", "Muller")
CT_SOP = "1.2.840.10008.5.1.4.1.1.2"
MR_SOP = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_MR_SOP = "1.2.840.10008.5.1.4.1.1.4.1"
_PRIVATE_CREATOR = "RAYLENS PHANTOM"


@dataclass(frozen=True)
class PhantomConfig:
    """What to generate."""

    n_patients: int = 40
    """Patients; each gets one CT and one MR series (unless a modality is dropped, see below)."""
    seed: int = 0
    """Seed for everything random: same seed, same files."""
    ct_size: int = 40
    """CT rows = columns."""
    ct_slices: int = 32
    ct_pixel_mm: float = 2.5
    ct_slice_mm: float = 3.0
    mr_size: int = 36
    mr_slices: int = 28
    mr_pixel_mm: float = 2.8
    mr_slice_mm: float = 3.5
    ct_tilt_fraction: float = 0.3
    """Fraction of CT series tilted (oblique) by up to 15 degrees."""
    mr_max_angle_deg: float = 25.0
    """MR planes are rotated by a random angle up to this (always oblique when > 0)."""
    rle_fraction: float = 0.25
    """Fraction of series written RLE Lossless compressed."""
    multiframe_fraction: float = 0.2
    """Fraction of MR series written as one Enhanced MR multi-frame object."""
    category_probs: tuple[float, float, float, float] = (0.4, 0.3, 0.3, 0.0)
    """Probabilities of (dense+bright = positive, dense only, bright only, neither)."""
    missing_modality_fraction: float = 0.0
    """Fraction of patients that lose their CT or their MR (for missing-modality tests)."""
    same_study: bool = True
    """CT and MR in one study (one StudyInstanceUID); otherwise two studies of one patient."""
    extras: bool = False
    """Also write a text file, a series with a missing slice and a mixed series."""

    def __post_init__(self):
        if self.n_patients < 1:
            raise ValueError(f"n_patients must be >= 1, got {self.n_patients}")
        for name in ("ct_size", "ct_slices", "mr_size", "mr_slices"):
            if getattr(self, name) < 4:
                raise ValueError(f"{name} must be >= 4, got {getattr(self, name)}")
        p = np.asarray(self.category_probs, dtype=float)
        if p.shape != (4,) or np.any(p < 0) or not np.isclose(p.sum(), 1.0):
            raise ValueError(f"category_probs needs 4 non-negative numbers summing to 1, got {self.category_probs}")
        for name in ("ct_tilt_fraction", "rle_fraction", "multiframe_fraction", "missing_modality_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")


@dataclass
class PhantomPatient:
    """One generated patient: its label, what its series look like, and the PHI written into them."""

    index: int
    label: int
    dense_on_ct: bool
    bright_on_mr: bool
    modalities: tuple[str, ...]
    patient_name: str
    patient_id: str
    birth_date: str
    accession: str
    institution: str
    physician: str
    study_date: str
    study_uids: dict[str, str] = field(default_factory=dict)
    """Modality -> original StudyInstanceUID."""
    series_uids: dict[str, str] = field(default_factory=dict)
    """Modality -> original SeriesInstanceUID."""
    sop_uids: list[str] = field(default_factory=list)
    frame_of_reference_uid: str = ""
    folders: dict[str, str] = field(default_factory=dict)
    """Modality -> folder of its files."""
    anatomy: dict = field(default_factory=dict, repr=False)
    """The phantom's shape (centres, radii, intensities): render it with :func:`render_phantom`."""

    def phi_values(self) -> list[str]:
        """Every identifying value written into this patient's files (for the no-PHI test)."""
        vals = [
            self.patient_name,
            self.patient_name.replace("^", " "),
            self.patient_id,
            self.birth_date,
            self.accession,
            self.institution,
            self.physician,
            self.study_date,
            self.frame_of_reference_uid,
            f"SECRET-{self.patient_id}",
        ]
        vals += list(self.study_uids.values()) + list(self.series_uids.values()) + self.sop_uids
        return sorted({v for v in vals if v})


@dataclass
class PhantomDataset:
    """Where a phantom lies on disk and what it holds."""

    root: Path
    patients: list[PhantomPatient]
    labels_csv: Path
    """``PatientID,label`` (original ids: an input of ingest, it holds PHI)."""
    config: PhantomConfig
    n_files: int = 0
    n_slices: int = 0
    extra_paths: dict[str, str] = field(default_factory=dict)
    """With ``extras``: ``{"not_dicom": file, "missing_slice": folder, "mixed": folder}``."""
    extra_phi: list[str] = field(default_factory=list)
    """PHI written into the extra series (they belong to no labelled patient)."""

    def labels(self) -> dict[str, int]:
        """Original PatientID -> label (pass to the reader with ``label_key="PatientID"``)."""
        return {p.patient_id: p.label for p in self.patients}

    def phi_values(self) -> list[str]:
        return sorted({v for p in self.patients for v in p.phi_values()} | set(self.extra_phi))


# ----------------------------------------------------------------------------------------------
# the analytic phantom


def _rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    axis = axis / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k)


def _soft(d: np.ndarray, width: float = 0.8) -> np.ndarray:
    """Smooth inside(1)/outside(0) step of a signed distance-like quantity (negative = inside)."""
    return 1.0 / (1.0 + np.exp(np.clip(d / width, -30, 30)))


def render_phantom(
    points: np.ndarray,
    anatomy: dict,
    modality: str,
    rng: np.random.Generator | None = None,
    *,
    noise_scale: float = 1.0,
) -> np.ndarray:
    """Evaluate the phantom at patient points ``(..., 3)`` (LPS mm): HU for CT, a.u. for MR.

    ``noise_scale=0`` (or ``rng=None``) gives the noise-free phantom, which tests compare against.
    """
    if rng is None:
        noise_scale = 0.0
        rng = np.random.default_rng(0)
    rel = points - anatomy["centre"]
    r = np.asarray(anatomy["radii"])
    body_d = (np.sqrt(np.sum((rel / r) ** 2, axis=-1)) - 1.0) * r.min()
    body = _soft(body_d)
    rod_rel = points - anatomy["rod_centre"]
    rod = _soft(np.sqrt(rod_rel[..., 0] ** 2 + rod_rel[..., 1] ** 2) - anatomy["rod_radius"]) * body
    les = _soft(np.linalg.norm(points - anatomy["lesion_centre"], axis=-1) - anatomy["lesion_radius"]) * body
    if modality == "CT":
        lesion_hu = anatomy["ct_lesion_hu"]
        v = -1000.0 + body * (1000.0 + 40.0) + rod * 360.0 + les * (lesion_hu - 40.0)
        v = v + noise_scale * rng.normal(0.0, 10.0, size=v.shape) * (0.3 + 0.7 * body)
    else:
        s = anatomy["mr_scale"]
        v = body * 300.0 + rod * (-220.0) + les * (anatomy["mr_lesion"] - 300.0)
        v = s * (v + noise_scale * rng.normal(0.0, 15.0, size=v.shape) * body)
        v = np.clip(v, 0, None)
    return v


def _anatomy(rng: np.random.Generator, dense: bool, bright: bool) -> dict:
    centre = rng.uniform(-4, 4, size=3)
    radii = np.array([42.0, 36.0, 40.0]) * rng.uniform(0.92, 1.05, size=3)
    while True:
        off = rng.uniform(-0.5, 0.5, size=3) * radii
        if np.sum((off / (radii * 0.55)) ** 2) <= 1.0:
            break
    rod_centre = centre + np.array([0.0, radii[1] * 0.6, 0.0])
    lesion_centre = centre + off
    if np.linalg.norm((lesion_centre - rod_centre)[:2]) < 16:  # keep the lesion off the rod
        lesion_centre[1] = centre[1] - radii[1] * 0.35
    return dict(
        centre=centre,
        radii=radii,
        rod_centre=rod_centre,
        rod_radius=5.0,
        lesion_centre=lesion_centre,
        lesion_radius=float(rng.uniform(9.0, 13.0)),
        ct_lesion_hu=float(rng.uniform(160, 210) if dense else rng.uniform(-50, -10)),
        mr_lesion=float(rng.uniform(650, 800) if bright else rng.uniform(100, 160)),
        mr_scale=float(rng.uniform(0.7, 1.4)),
    )


def _grid(rng: np.random.Generator, modality: str, cfg: PhantomConfig, centre: np.ndarray) -> dict:
    if modality == "CT":
        size, n, px, dz = cfg.ct_size, cfg.ct_slices, cfg.ct_pixel_mm, cfg.ct_slice_mm
        rot = np.eye(3)
        if rng.random() < cfg.ct_tilt_fraction:
            rot = _rotation(np.array([1.0, 0.0, 0.0]), np.deg2rad(rng.uniform(5, 15)))
        base = np.eye(3)  # axial: rows along +x, columns along +y, normal +z
    else:
        size, n, px, dz = cfg.mr_size, cfg.mr_slices, cfg.mr_pixel_mm, cfg.mr_slice_mm
        plane = rng.choice(["axial", "sagittal", "coronal"])
        base = {
            "axial": np.eye(3),
            "sagittal": np.array([[0, 0, 1], [1, 0, 0], [0, -1, 0]], dtype=float).T,
            "coronal": np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]], dtype=float).T,
        }[plane]
        angle = np.deg2rad(rng.uniform(0.4, 1.0) * cfg.mr_max_angle_deg) if cfg.mr_max_angle_deg > 0 else 0.0
        rot = _rotation(rng.normal(size=3), angle)
    axes = rot @ base  # columns: row cosine, column cosine, normal
    row_cos, col_cos = axes[:, 0], axes[:, 1]
    normal = np.cross(row_cos, col_cos)
    # centre the field of view on the body (plus a little jitter)
    fov_centre = centre + rng.uniform(-3, 3, size=3)
    origin = fov_centre - row_cos * px * (size - 1) / 2 - col_cos * px * (size - 1) / 2 - normal * dz * (n - 1) / 2
    return dict(size=size, n=n, px=px, dz=dz, row_cos=row_cos, col_cos=col_cos, normal=normal, origin=origin)


def _slice_points(g: dict, k: int) -> np.ndarray:
    i = np.arange(g["size"], dtype=float)
    rr, cc = np.meshgrid(i, i, indexing="ij")  # rr: row index (along col_cos), cc: column index
    p = g["origin"] + k * g["dz"] * g["normal"]
    return p + rr[..., None] * g["px"] * g["col_cos"] + cc[..., None] * g["px"] * g["row_cos"]


# ----------------------------------------------------------------------------------------------
# writing DICOM


def _uid(rng: np.random.Generator) -> str:
    """A valid ``2.25.`` UID drawn from ``rng``: the same seed gives the same UIDs."""
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=[str(int(x)) for x in rng.integers(0, 2**62, size=2)])


def _base_dataset(
    sop_class: str,
    sop_uid: str,
    modality: str,
    patient: PhantomPatient,
    study_uid: str,
    series_uid: str,
    rng: np.random.Generator,
):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.Modality = modality
    ds.PatientName = patient.patient_name
    ds.PatientID = patient.patient_id
    ds.PatientBirthDate = patient.birth_date
    ds.PatientSex = "O"
    ds.OtherPatientIDs = f"SECRET-{patient.patient_id}"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = patient.frame_of_reference_uid
    ds.StudyDate = patient.study_date
    ds.SeriesDate = patient.study_date
    ds.StudyTime = "101500"
    ds.AccessionNumber = patient.accession
    ds.InstitutionName = patient.institution
    ds.ReferringPhysicianName = patient.physician
    ds.OperatorsName = patient.physician
    ds.StudyDescription = f"{modality} phantom for {patient.patient_name.replace('^', ' ')}"
    ds.SeriesDescription = f"{modality} series"
    ds.StudyID = patient.accession[-6:]
    ds.Manufacturer = "raylens phantom"
    req = Dataset()
    req.RequestedProcedureID = patient.accession
    req.ScheduledProcedureStepID = f"S{patient.patient_id}"[:16]
    ds.RequestAttributesSequence = Sequence([req])
    block = ds.private_block(0x0009, _PRIVATE_CREATOR, create=True)
    block.add_new(0x01, "LO", f"SECRET-{patient.patient_id}")
    block.add_new(0x02, "PN", patient.patient_name)
    return ds


def _set_pixels(ds, pixels: np.ndarray, modality: str, signed: bool) -> None:
    """Store float values (HU / a.u.) as integers with a modality LUT that brings them back."""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    if modality == "CT":
        if signed:
            ds.PixelRepresentation = 1
            ds.RescaleIntercept = 0
            stored = np.clip(np.round(pixels), -32768, 32767).astype(np.int16)
        else:
            ds.PixelRepresentation = 0
            ds.RescaleIntercept = -1024
            stored = np.clip(np.round(pixels + 1024), 0, 65535).astype(np.uint16)
        ds.RescaleSlope = 1
        ds.RescaleType = "HU"
    else:
        ds.PixelRepresentation = 0
        stored = np.clip(np.round(pixels), 0, 65535).astype(np.uint16)
    ds.PixelData = stored.tobytes()


def write_series(
    folder: str | Path,
    patient: PhantomPatient,
    modality: str,
    volume_fn,
    grid: dict,
    rng: np.random.Generator,
    *,
    study_uid: str,
    series_uid: str,
    rle: bool = False,
    multiframe: bool = False,
    drop_slices: tuple[int, ...] = (),
    shuffle: bool = True,
) -> list[Path]:
    """Write one series (slice files, or one Enhanced MR multi-frame file) and return the paths.

    ``volume_fn(points) -> values`` renders the phantom at patient points; ``grid`` places the
    slices (origin, cosines, spacing). Slices listed in ``drop_slices`` are left out (a gap).
    """
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence
    from pydicom.uid import RLELossless

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ks = [k for k in range(grid["n"]) if k not in set(drop_slices)]
    iop = [float(x) for x in (*grid["row_cos"], *grid["col_cos"])]
    signed = rng.random() < 0.5
    paths: list[Path] = []

    def geometry(ds, k):
        ds.ImagePositionPatient = [round(float(x), 4) for x in grid["origin"] + k * grid["dz"] * grid["normal"]]

    if multiframe:
        sop = _uid(rng)
        patient.sop_uids.append(sop)
        ds = _base_dataset(ENHANCED_MR_SOP, sop, modality, patient, study_uid, series_uid, rng)
        order = list(ks)
        if shuffle:
            rng.shuffle(order)  # frames stored out of order, placed by their per-frame positions
        frames = np.stack([volume_fn(_slice_points(grid, k)) for k in order])
        ds.NumberOfFrames = len(order)
        ds.Rows = ds.Columns = grid["size"]
        shared = Dataset()
        pm = Dataset()
        pm.PixelSpacing = [grid["px"], grid["px"]]
        pm.SliceThickness = grid["dz"]
        shared.PixelMeasuresSequence = Sequence([pm])
        po = Dataset()
        po.ImageOrientationPatient = [round(x, 6) for x in iop]
        shared.PlaneOrientationSequence = Sequence([po])
        ds.SharedFunctionalGroupsSequence = Sequence([shared])
        per = []
        for k in order:
            f = Dataset()
            pp = Dataset()
            pp.ImagePositionPatient = [round(float(x), 4) for x in grid["origin"] + k * grid["dz"] * grid["normal"]]
            f.PlanePositionSequence = Sequence([pp])
            per.append(f)
        ds.PerFrameFunctionalGroupsSequence = Sequence(per)
        _set_pixels(ds, frames, modality, signed)
        if rle:
            ds.compress(RLELossless, generate_instance_uid=False)  # keep the seeded UID
        path = folder / f"{rng.integers(10**9):09d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        return [path]

    inst = list(range(1, len(ks) + 1))
    if shuffle:
        rng.shuffle(inst)  # InstanceNumber says nothing about position
    for j, k in enumerate(ks):
        sop = _uid(rng)
        patient.sop_uids.append(sop)
        ds = _base_dataset(CT_SOP if modality == "CT" else MR_SOP, sop, modality, patient, study_uid, series_uid, rng)
        ds.Rows = ds.Columns = grid["size"]
        ds.PixelSpacing = [grid["px"], grid["px"]]
        ds.SliceThickness = grid["dz"]
        ds.ImageOrientationPatient = [round(x, 6) for x in iop]
        geometry(ds, k)
        ds.InstanceNumber = inst[j]
        _set_pixels(ds, volume_fn(_slice_points(grid, k)), modality, signed)
        if rle:
            ds.compress(RLELossless, generate_instance_uid=False)  # keep the seeded UID
        path = folder / f"{rng.integers(10**9):09d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def generate_phantoms(root: str | Path, config: PhantomConfig | None = None) -> PhantomDataset:
    """Write the phantom patients below ``root`` (``case_XXX/ct``, ``case_XXX/mr``) and a labels CSV.

    Folder and file names carry no PHI. Returns a :class:`PhantomDataset` describing what was written.
    """
    cfg = config or PhantomConfig()
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(cfg.seed)
    cats = rng.choice(4, size=cfg.n_patients, p=np.asarray(cfg.category_probs))
    patients: list[PhantomPatient] = []
    n_files = n_slices = 0
    for i in range(cfg.n_patients):
        prng = np.random.default_rng([cfg.seed, i])
        dense = bool(cats[i] in (0, 1))
        bright = bool(cats[i] in (0, 2))
        mods: tuple[str, ...] = ("CT", "MR")
        if prng.random() < cfg.missing_modality_fraction:
            mods = (("CT",), ("MR",))[int(prng.integers(2))]
        first, last = prng.choice(_FIRST), prng.choice(_LAST)
        p = PhantomPatient(
            index=i,
            label=int(dense and bright),
            dense_on_ct=dense,
            bright_on_mr=bright,
            modalities=mods,
            patient_name=f"{last}^{first}^Q{prng.integers(1000, 9999)}",
            patient_id=f"MRN{prng.integers(10**6, 10**7)}{i:03d}",
            birth_date=f"19{prng.integers(30, 99)}{prng.integers(1, 13):02d}{prng.integers(1, 29):02d}",
            accession=f"ACC{prng.integers(10**7, 10**8)}",
            institution=f"St Example Hospital {prng.integers(100, 999)}",
            physician=f"Who^Doctor^{prng.integers(100, 999)}",
            study_date=f"20{prng.integers(10, 24)}{prng.integers(1, 13):02d}{prng.integers(1, 29):02d}",
            frame_of_reference_uid=_uid(prng),
        )
        anatomy = _anatomy(prng, dense, bright)
        p.anatomy = anatomy
        shared_study = _uid(prng)
        for m in mods:
            study = shared_study if cfg.same_study else _uid(prng)
            series = _uid(prng)
            p.study_uids[m] = study
            p.series_uids[m] = series
            grid = _grid(prng, m, cfg, anatomy["centre"])
            folder = root / f"case_{i:03d}" / m.lower()
            p.folders[m] = str(folder)
            mf = m == "MR" and prng.random() < cfg.multiframe_fraction
            rle = prng.random() < cfg.rle_fraction
            fn = lambda pts, m=m, anatomy=anatomy, prng=prng: render_phantom(pts, anatomy, m, prng)
            paths = write_series(
                folder, p, m, fn, grid, prng, study_uid=study, series_uid=series, rle=rle, multiframe=mf
            )
            n_files += len(paths)
            n_slices += grid["n"]
        patients.append(p)

    labels_csv = root / "labels.csv"
    with labels_csv.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["PatientID", "label"])
        for p in patients:
            w.writerow([p.patient_id, p.label])

    out = PhantomDataset(
        root=root, patients=patients, labels_csv=labels_csv, config=cfg, n_files=n_files, n_slices=n_slices
    )
    if cfg.extras:
        out.extra_paths, out.extra_phi = _write_extras(root, cfg, rng)
    return out


def _write_extras(root: Path, cfg: PhantomConfig, rng: np.random.Generator) -> tuple[dict[str, str], list[str]]:
    """A non-DICOM file, a CT series with a missing slice, and a mixed series (two sizes, one UID)."""
    extra = root / "extras"
    extra.mkdir(parents=True, exist_ok=True)
    txt = extra / "notes.txt"
    txt.write_text("not a DICOM file\n")
    ghost = PhantomPatient(
        index=-1,
        label=0,
        dense_on_ct=False,
        bright_on_mr=False,
        modalities=("CT",),
        patient_name="Ghost^Extra^Q0001",
        patient_id="MRN-EXTRA-0001",
        birth_date="19500101",
        accession="ACC-EXTRA-1",
        institution="Extra Clinic 1",
        physician="Extra^Doc",
        study_date="20200101",
        frame_of_reference_uid=_uid(rng),
    )
    anatomy = _anatomy(rng, True, True)
    grid = _grid(rng, "CT", cfg, anatomy["centre"])
    fn = lambda pts: render_phantom(pts, anatomy, "CT", rng)  # noqa: E731
    gap = extra / "missing_slice"
    write_series(
        gap, ghost, "CT", fn, grid, rng, study_uid=_uid(rng), series_uid=_uid(rng), drop_slices=(grid["n"] // 2,)
    )
    mixed = extra / "mixed"
    series = _uid(rng)
    study = _uid(rng)
    small = dict(grid, n=max(2, grid["n"] // 4))
    write_series(mixed, ghost, "CT", fn, small, rng, study_uid=study, series_uid=series)
    other = dict(
        small, size=grid["size"] // 2, px=grid["px"] * 2, origin=small["origin"] + 0.5 * small["dz"] * small["normal"]
    )
    write_series(mixed, ghost, "CT", fn, other, rng, study_uid=study, series_uid=series)
    return {"not_dicom": str(txt), "missing_slice": str(gap), "mixed": str(mixed)}, ghost.phi_values()
