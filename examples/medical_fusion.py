"""CT + MR fusion end to end: DICOM phantoms -> Ray Data ingest -> early/mid/late fusion -> AUC table.

Copy this file to start a medical project. Replace the phantom folder with your DICOM folders (and
``labels`` with your label table keyed on PatientID); keep the rest.

    python examples/medical_fusion.py --workdir runs/medical            # ~5 min on 2 CPU cores
    python examples/medical_fusion.py --workdir runs/medical --quick    # a smoke run
    python examples/medical_fusion.py --ray-train                       # train with Ray Train (2 workers)
    raylens train fusion phantoms --model mid --modality-dropout 0.2    # one model, from the command line

Steps:

1. write N phantom patients as real DICOM CT and MR series (oblique, out of order, some RLE, some
   multi-frame); the label needs both modalities (a lesion dense on CT *and* bright on MR);
2. ingest with the Ray Data reader: headers first, grouped by SeriesInstanceUID, sorted along the
   slice normal, HU, affine, de-identified (PS3.15 Basic Profile, keyed pseudonyms);
3. pair CT and MR per study (MR resampled onto the CT grid) and preprocess with MONAI;
4. train early, mid and late fusion plus the CT-only and MR-only baselines; report AUC, accuracy and
   F1 on held-out patients, the AUC of mid/late fusion with one modality missing, and ROC curves;
5. index the case embeddings (FAISS) for similar-case retrieval; save the mid-fusion checkpoint
   that ``raylens_services.medical`` serves.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np


def _split(keys: list[str], test_fraction: float) -> np.ndarray:
    """Deterministic train/test split by hashing the (pseudonymised) study key."""
    h = np.array([int(hashlib.sha256(k.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF for k in keys])
    return h < test_fraction


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default="runs/medical_fusion")
    ap.add_argument("--patients", type=int, default=240)
    ap.add_argument("--epochs", type=int, default=16)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--quick", action="store_true", help="a small smoke run (numbers are not meaningful)")
    ap.add_argument("--ray-train", action="store_true", help="train with Ray Train (TorchTrainer, 2 workers)")
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads for local training (1 is fastest for these small nets on a busy machine)",
    )
    args = ap.parse_args(argv)
    if args.quick:
        args.patients, args.epochs = 24, 2

    import torch

    from raylens.runtime import init_ray
    from raylens.train import LocalContext
    from raylens_domains.medical import (
        DeidConfig,
        DicomIngestConfig,
        FusionTrainConfig,
        PhantomConfig,
        VolumeTransformConfig,
        binary_metrics,
        evaluate,
        generate_phantoms,
        load_checkpoint,
        save_checkpoint,
        save_roc_png,
        train_fusion,
    )
    from raylens_domains.medical.metrics import metrics_table
    from raylens_domains.medical.ray_reader import fusion_dataset, pair_dataset, read_dicom
    from raylens_domains.medical.retrieval import build_case_index, file_hash, similar_cases
    from raylens_domains.medical.train import predict_proba

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)

    # 1. phantoms: real DICOM files on disk
    t0 = time.perf_counter()
    ph = generate_phantoms(work / "dicom", PhantomConfig(n_patients=args.patients, seed=args.seed, extras=True))
    print(
        f"phantoms: {len(ph.patients)} patients, {ph.n_files} files, {ph.n_slices} slices "
        f"({time.perf_counter() - t0:.0f}s)"
    )

    # 2. Ray Data ingest (de-identified at read time; the key would come from a secret store)
    init_ray()
    deid = DeidConfig(key="example-key-keep-me-secret-0123456789")
    t0 = time.perf_counter()
    ingest = read_dicom(ph.root, DicomIngestConfig(deid=deid, labels=ph.labels()))
    report = ingest.report()
    print(report.summary(), f"({time.perf_counter() - t0:.0f}s)")
    report.save(work / "ingest_report.json")

    # 3. pair CT + MR per study (raw volumes: the MR resampled at full resolution onto the CT grid),
    #    then MONAI preprocessing, once per volume, and into memory (small data) for training
    transform = VolumeTransformConfig()
    fz = fusion_dataset(pair_dataset(ingest.dataset, by="study"), transform)
    rows = [r for r in fz.take_all() if r["label"] >= 0]
    keys = [str(r["key"]) for r in rows]
    arrays = {k: np.stack([np.asarray(r[k]) for r in rows]) for k in ("ct", "mr_aligned", "mr", "present", "label")}
    test = _split(keys, 1 / 3)
    train = {k: v[~test] for k, v in arrays.items()}
    held = {k: v[test] for k, v in arrays.items()}
    print(f"cases: {int((~test).sum())} train, {int(test.sum())} test, positive rate {arrays['label'].mean():.2f}")

    # 4. train the three fusions and the two single-modality baselines
    runs = {
        "early": FusionTrainConfig(model="early", epochs=args.epochs, seed=args.seed),
        "mid": FusionTrainConfig(
            model="mid",
            epochs=args.epochs,
            modality_dropout=0.2,
            seed=args.seed,
            model_kwargs={"fuse_stage": "layer3", "fuse": "attention"},
        ),
        "late": FusionTrainConfig(
            model="late", epochs=args.epochs, modality_dropout=0.2, seed=args.seed, model_kwargs={"combine": "logit"}
        ),
        "ct_only": FusionTrainConfig(model="ct_only", epochs=args.epochs, seed=args.seed),
        "mr_only": FusionTrainConfig(model="mr_only", epochs=args.epochs, seed=args.seed),
    }
    results, curves, models, seconds = {}, {}, {}, {}
    for name, cfg in runs.items():
        t0 = time.perf_counter()
        if args.ray_train:  # the same loop in Ray Train: re-running with the same name + storage resumes
            import ray.data

            from raylens.train import RayTrainOptions
            from raylens_domains.medical.ray_train import train_fusion_ray

            tr_ds = ray.data.from_items([{k: train[k][i] for k in train} for i in range(len(train["label"]))])
            opts = RayTrainOptions(num_workers=2, storage_path=str(work / "runs"), name=name)
            model = load_checkpoint(train_fusion_ray(cfg, tr_ds, opts=opts, transform=transform).checkpoint)
        else:  # in-process; checkpoints, history.csv and curves.png land in runs/<name>/checkpoint_*
            model = train_fusion(cfg, train, LocalContext(storage=work / "runs" / name)).model
        seconds[name] = time.perf_counter() - t0
        probs = predict_proba(model, held)
        results[name] = binary_metrics(held["label"], probs)
        curves[name] = (held["label"], probs)
        models[name] = model
        print(
            f"  {name:8s} AUC {results[name].auc:.3f}  acc {results[name].accuracy:.3f}  "
            f"F1 {results[name].f1:.3f}  ({seconds[name]:.0f}s)"
        )

    missing = {f"{n} (CT only)": evaluate(models[n], held, present=(True, False)).auc for n in ("mid", "late")}
    missing |= {f"{n} (MR only)": evaluate(models[n], held, present=(False, True)).auc for n in ("mid", "late")}
    print("\n" + metrics_table(results))
    print("missing modality at inference (AUC):", {k: round(v, 3) for k, v in missing.items()})
    roc = save_roc_png(curves, work / "roc.png", title="CT+MR phantom: held-out ROC")

    # 5. similar-case retrieval over the mid-fusion embeddings, and the checkpoint to serve
    ckpt = save_checkpoint(
        models["mid"], work / "checkpoints" / "mid", train_config=runs["mid"], extra={"transform": asdict(transform)}
    )
    meta = [
        {"study_uid": k, "label": int(y), "modalities": "CT+MR"} for k, y in zip(np.array(keys)[~test], train["label"])
    ]
    index = build_case_index(models["mid"], train, meta, checkpoint_hash=file_hash(ckpt / "model.safetensors"))
    index.save(work / "case_index", overwrite=True)
    hits = similar_cases(index, models["mid"], held, k=5)
    agree = float(np.mean([np.mean([h.metadata["label"] == y for h in hs]) for hs, y in zip(hits, held["label"])]))
    print(f"similar cases: label agreement of the 5 nearest training cases = {agree:.3f}")

    summary = {
        "auc": {k: round(v.auc, 4) for k, v in results.items()},
        "accuracy": {k: round(v.accuracy, 4) for k, v in results.items()},
        "f1": {k: round(v.f1, 4) for k, v in results.items()},
        "missing_modality_auc": {k: round(v, 4) for k, v in missing.items()},
        "train_seconds": {k: round(v, 1) for k, v in seconds.items()},
        "retrieval_label_agreement_at_5": round(agree, 4),
        "n_train": int((~test).sum()),
        "n_test": int(test.sum()),
        "epochs": args.epochs,
        "roc_png": str(roc),
        "checkpoint": str(ckpt),
        "ingest": report.to_dict() | {"skipped": None},
    }
    (work / "results.json").write_text(json.dumps(summary, indent=2))
    print(f"wrote {work / 'results.json'} and {roc}")
    return summary


if __name__ == "__main__":
    main()
