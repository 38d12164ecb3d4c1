"""Site-side training stack: transforms, datalist loading and splitting, model, training, metrics.

A tiny cohort export is written in code: random CT volumes as NIfTI, ECGs as npy, tabular rows with
nulls, and labels that depend on the ECG pulse width and on age, so that learning is possible.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from sklearn.metrics import balanced_accuracy_score, log_loss, recall_score, roc_auc_score

from cohort.errors import ConfigError, InputError
from fl_client.data import (
    DataConfig,
    build_datasets,
    load_datalist,
    make_loader,
    positive_weight,
    split_train_val,
)
from fl_client.model import ModelConfig, MultiModalNet, get_weights, set_weights
from fl_client.train import (
    TrainConfig,
    binary_metrics,
    evaluate,
    resolve_device,
    roc_auc,
    train,
)
from fl_client.transforms import (
    CT_KEY,
    ECG_KEY,
    FixLengthECG,
    ImputeStandardize,
    LoadECG,
    PreprocessConfig,
    ResampleECG,
    ScaleECG,
    TabularStats,
    ct_transforms,
    site_transforms,
)

N_PATIENTS = 64
ECG_RATE = 500
ECG_SAMPLES = 500  # 1 s: enough for one pulse, small enough to be fast
FEATURES = [{"name": "age", "unit": "a"}, {"name": "sex_male", "unit": "1"},
            {"name": "height_cm", "unit": "cm"}, {"name": "weight_kg", "unit": "kg"}]
PRE = PreprocessConfig(ct_spacing=2.0, ct_shape=(8, 8, 8), ecg_rate=250, ecg_seconds=1.0)
SMALL_MODEL = dict(n_tabular=len(FEATURES), ct_channels=(4, 8), ecg_channels=(8, 8), ecg_kernel=7,
                   tabular_hidden=16, embed_dim=16, fusion_hidden=16, dropout=0.0)


def _ecg(rng: np.random.Generator, wide: bool) -> np.ndarray:
    """One pulse per lead; a wide pulse stands in for a long QRS (the learnable ECG feature)."""
    t = np.arange(ECG_SAMPLES)
    sigma = 30.0 if wide else 6.0
    amplitude = rng.uniform(0.5, 1.5, size=(12, 1))
    pulse = np.exp(-0.5 * ((t - rng.uniform(200, 300)) / sigma) ** 2)
    return (amplitude * pulse + rng.normal(0, 0.03, size=(12, ECG_SAMPLES))).astype(np.float32)


def _write_export(root: Path, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    (root / "ct").mkdir(parents=True)
    (root / "ecg").mkdir()
    entries = []
    for i in range(N_PATIENTS):
        pid = f"P{i:03d}"
        has_ecg = i % 5 != 0
        wide = bool(has_ecg and rng.random() < 0.3)
        age = float(rng.uniform(55, 90))
        label = int(wide or age > 82)
        ct_rel = ecg_rel = None
        if i % 4 != 1:
            shape = tuple(int(s) for s in rng.integers(10, 15, size=3))
            spacing = rng.uniform(1.0, 2.0, size=3)
            vol = rng.normal(0, 300, size=shape).astype(np.float32)
            ct_rel = f"ct/{pid}.nii.gz"
            nib.save(nib.Nifti1Image(vol, np.diag([*spacing, 1.0])), root / ct_rel)
        if has_ecg:
            ecg_rel = f"ecg/{pid}.npy"
            np.save(root / ecg_rel, _ecg(rng, wide))
        tabular: list[float | None] = [age, float(i % 2), float(rng.normal(170, 10)), float(rng.normal(80, 12))]
        if i % 3 == 0:
            tabular[2] = None
        if i % 7 == 0:
            tabular[3] = None
        entries.append({"patient": pid, "ct": ct_rel, "ecg": ecg_rel, "tabular": tabular, "label": label})
    doc = {"version": 1, "cohort_hash": "abc123", "ecg_sampling_rate": ECG_RATE, "ecg_samples": ECG_SAMPLES,
           "tabular_features": FEATURES, "training": entries}
    (root / "datalist.json").write_text(json.dumps(doc))


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("export")
    _write_export(root)
    return root


@pytest.fixture(scope="module")
def datasets(export_dir: Path):
    return build_datasets(load_datalist(export_dir), DataConfig(preprocess=PRE, cache_workers=1))


def _edit_datalist(src: Path, dst: Path, edit) -> Path:
    doc = json.loads((src / "datalist.json").read_text())
    edit(doc)
    dst.mkdir()
    for sub in ("ct", "ecg"):
        (dst / sub).symlink_to(src / sub)
    (dst / "datalist.json").write_text(json.dumps(doc))
    return dst


# ---------------------------------------------------------------------------------------- transforms


def test_sample_shapes_and_missing_modalities(export_dir: Path) -> None:
    dl = load_datalist(export_dir)
    stats = TabularStats.fit([e.tabular for e in dl.entries], dl.n_tabular)
    chain = site_transforms(PRE, stats, dl.ecg_sampling_rate)
    full = next(e for e in dl.entries if e.ct and e.ecg and e.tabular[2] is None)
    bare = next(e for e in dl.entries if e.ct is None and e.ecg is None)
    out = chain(full.to_sample())
    assert out["ct"].shape == (1, 8, 8, 8) and out["ecg"].shape == (12, 250)
    assert type(out["ct"]) is torch.Tensor  # plain tensor, so it collates with the zero placeholder
    assert 0.0 <= float(out["ct"].min()) and float(out["ct"].max()) <= 1.0
    assert float(out["ct_present"]) == 1.0 and float(out["ecg_present"]) == 1.0
    assert out["tabular"].shape == (4,) and out["tabular_missing"].tolist() == [0.0, 0.0, 1.0, 0.0]
    assert float(out["tabular"][2]) == 0.0  # imputed with the mean, which standardizes to 0
    assert out["label"].dtype == torch.float32 and float(out["label"]) == full.label
    empty = chain(bare.to_sample())
    assert float(empty["ct_present"]) == 0.0 and float(empty["ecg_present"]) == 0.0
    assert empty["ct"].shape == (1, 8, 8, 8) and not empty["ct"].any()
    assert empty["ecg"].shape == (12, 250) and not empty["ecg"].any()


def test_ct_is_reoriented_to_ras_windowed_and_fitted(tmp_path: Path) -> None:
    vol = np.full((8, 8, 8), -1000.0, dtype=np.float32)
    vol[1, 2, 3] = 1000.0
    # x axis stored right-to-left (negative step): RAS reorientation must flip it.
    nib.save(nib.Nifti1Image(vol, np.diag([-2.0, 2.0, 2.0, 1.0])), tmp_path / "lps.nii.gz")
    out = ct_transforms(PRE)({"ct": str(tmp_path / "lps.nii.gz")})["ct"]
    assert out.shape == (1, 8, 8, 8)
    assert np.unravel_index(int(out.argmax()), out.shape[1:]) == (6, 2, 3)
    assert float(out.max()) == pytest.approx(1.0) and float(out.min()) == 0.0

    nib.save(nib.Nifti1Image(np.zeros((16, 16, 16), np.float32) + 400, np.diag([1.0, 1.0, 1.0, 1.0])),
             tmp_path / "fine.nii.gz")
    padded = ct_transforms(PreprocessConfig(ct_spacing=2.0, ct_shape=(12, 12, 12)))(
        {"ct": str(tmp_path / "fine.nii.gz")})["ct"]
    # 16 voxels at 1 mm -> 8 at 2 mm, centred in 12 with zero padding: 2 voxels on each side.
    assert padded.shape == (1, 12, 12, 12)
    assert padded[0, 2:10, 2:10, 2:10].min() == pytest.approx(0.5)
    assert padded[0, :2].abs().max() == 0.0 and padded[0, 10:].abs().max() == 0.0
    resized = ct_transforms(PreprocessConfig(ct_spacing=2.0, ct_shape=(12, 12, 12), ct_fit="resize"))(
        {"ct": str(tmp_path / "fine.nii.gz")})["ct"]
    assert resized.shape == (1, 12, 12, 12) and resized.min() == pytest.approx(0.5)


def test_ecg_transforms(tmp_path: Path) -> None:
    t = np.arange(1000) / 500.0
    ecg = np.tile(np.sin(2 * np.pi * 5 * t), (12, 1)).astype(np.float32)
    ecg[3] = 0.7  # a flat lead must stay finite when standardized
    half = ResampleECG(500, 250)(ecg)
    assert half.shape == (12, 500)
    np.testing.assert_allclose(half[0, 50:450], np.sin(2 * np.pi * 5 * np.arange(500) / 250.0)[50:450], atol=0.02)
    std = ScaleECG("standardize")(ecg)
    np.testing.assert_allclose(std[0].mean(), 0.0, atol=1e-5)
    np.testing.assert_allclose(std[0].std(), 1.0, atol=1e-4)
    assert np.all(std[3] == 0.0)
    np.testing.assert_allclose(ScaleECG("fixed", mv_scale=2.0)(ecg), ecg / 2.0)
    padded = FixLengthECG(1200)(ecg)
    assert padded.shape == (12, 1200) and np.all(padded[:, 1000:] == 0) and np.array_equal(padded[:, :1000], ecg)
    assert np.array_equal(FixLengthECG(300)(ecg), ecg[:, :300])
    np.save(tmp_path / "bad.npy", np.zeros((1000, 12), np.float32))
    with pytest.raises(InputError, match=r"\(12, samples\)"):
        LoadECG()(tmp_path / "bad.npy")


def test_tabular_stats_and_imputation() -> None:
    rows = [[1.0, None, 5.0], [3.0, None, 5.0], [None, None, 5.0]]
    stats = TabularStats.fit(rows, 3)
    assert stats.means == (2.0, 0.0, 5.0) and stats.stds == (1.0, 1.0, 1.0)  # all-missing and constant
    values, missing = ImputeStandardize(stats)([3.0, None, None])
    assert values.tolist() == [1.0, 0.0, 0.0] and missing.tolist() == [0.0, 1.0, 1.0]
    with pytest.raises(InputError, match="2 values"):
        ImputeStandardize(stats)([1.0, 2.0])


# ------------------------------------------------------------------------------------- data / split


def test_load_datalist_resolves_paths(export_dir: Path) -> None:
    dl = load_datalist(export_dir)
    assert len(dl.entries) == N_PATIENTS and dl.n_tabular == 4 and dl.cohort_hash == "abc123"
    assert dl.tabular_features[0].name == "age" and dl.ecg_sampling_rate == ECG_RATE
    e = dl.entries[0]
    assert e.ct is not None and e.ct.is_absolute() and e.ct.is_file() and e.ecg is None
    assert dl.entries[1].ct is None and e.tabular[2] is None


@pytest.mark.parametrize(("edit", "field"), [
    (lambda d: d["training"][1].pop("label"), "training[1].label"),
    (lambda d: d["training"][2].update(label=2), "training[2].label"),
    (lambda d: d["training"][0].update(ct="ct/nope.nii.gz"), "training[0].ct"),
    (lambda d: d["training"][3].update(tabular=[1.0]), "training[3].tabular"),
    (lambda d: d["training"][3]["tabular"].__setitem__(0, "old"), "training[3].tabular[0]"),
    (lambda d: d.update(version=2), "version"),
    (lambda d: d.pop("ecg_sampling_rate"), "ecg_sampling_rate"),
], ids=["missing-label", "bad-label", "missing-file", "short-tabular", "text-value", "version", "no-rate"])
def test_load_datalist_errors_name_the_key(export_dir: Path, tmp_path: Path, edit, field: str) -> None:
    bad = _edit_datalist(export_dir, tmp_path / "bad", edit)
    with pytest.raises(InputError) as info:
        load_datalist(bad)
    assert info.value.field == field and field in str(info.value)


def test_split_is_stratified_deterministic_and_order_free(export_dir: Path) -> None:
    entries = load_datalist(export_dir).entries
    train_a, val_a = split_train_val(entries, 0.25, seed=3)
    train_b, val_b = split_train_val(list(reversed(entries)), 0.25, seed=3)
    assert [e.patient for e in val_a] == [e.patient for e in val_b]
    assert [e.patient for e in train_a] == [e.patient for e in train_b]
    ids_train, ids_val = {e.patient for e in train_a}, {e.patient for e in val_a}
    assert not ids_train & ids_val and len(ids_train | ids_val) == N_PATIENTS
    for label in (0, 1):
        n = sum(e.label == label for e in entries)
        assert sum(e.label == label for e in val_a) == round(n * 0.25)
    _, val_other = split_train_val(entries, 0.25, seed=4)
    assert {e.patient for e in val_other} != ids_val
    # A class of two still puts one in each split.
    few = [e for e in entries if e.label == 0][:6] + [e for e in entries if e.label == 1][:2]
    tr, va = split_train_val(few, 0.1, seed=0)
    assert sum(e.label for e in va) == 1 and sum(e.label for e in tr) == 1


def test_positive_weight(export_dir: Path) -> None:
    entries = load_datalist(export_dir).entries
    n_pos = sum(e.label for e in entries)
    assert positive_weight(entries) == pytest.approx((N_PATIENTS - n_pos) / n_pos)
    assert positive_weight([e for e in entries if e.label == 0]) == 1.0


# -------------------------------------------------------------------------------------------- model


def _batch(n: int = 3) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {"ct": torch.rand(n, 1, 8, 8, 8, generator=g), "ecg": torch.randn(n, 12, 250, generator=g),
            "tabular": torch.randn(n, 4, generator=g), "tabular_missing": torch.zeros(n, 4),
            "ct_present": torch.ones(n), "ecg_present": torch.ones(n)}


def test_model_ignores_absent_modality() -> None:
    torch.manual_seed(0)
    model = MultiModalNet(ModelConfig(**SMALL_MODEL)).eval()
    b = _batch()
    b["ct_present"] = torch.tensor([0.0, 1.0, 1.0])
    out = model(**b)
    assert out.shape == (3,)
    b2 = dict(b, ct=b["ct"] * 0 + 7.0)
    out2 = model(**b2)
    assert out2[0] == out[0] and not torch.allclose(out2[1:], out[1:])
    assert sum(p.numel() for p in MultiModalNet(ModelConfig()).parameters()) < 200_000


def test_weights_round_trip() -> None:
    torch.manual_seed(0)
    a = MultiModalNet(ModelConfig(**SMALL_MODEL)).eval()
    torch.manual_seed(1)
    b = MultiModalNet(ModelConfig(**SMALL_MODEL)).eval()
    batch = _batch()
    assert not torch.allclose(a(**batch), b(**batch))
    weights = get_weights(a)
    assert [w.shape for w in weights] == [tuple(t.shape) for t in a.state_dict().values()]
    set_weights(b, weights)
    assert torch.equal(a(**batch), b(**batch))
    weights[0] += 1.0  # get_weights returns copies: editing them must not touch the model
    assert not np.array_equal(weights[0], get_weights(a)[0])
    with pytest.raises(ConfigError, match="same ModelConfig"):
        set_weights(b, weights[:-1])
    with pytest.raises(ConfigError, match="shape"):
        set_weights(MultiModalNet(ModelConfig(**dict(SMALL_MODEL, n_tabular=5))), weights)


# ------------------------------------------------------------------------------------ train / eval


def test_train_counts_samples_and_is_repeatable(datasets) -> None:
    train_ds, _ = datasets
    stats = []
    for _ in range(2):
        torch.manual_seed(0)
        model = MultiModalNet(ModelConfig(**SMALL_MODEL))
        loader = make_loader(train_ds, batch_size=5, shuffle=True, seed=0)
        stats.append((train(model, loader, TrainConfig(epochs=2, batch_size=5, device="cpu")),
                      get_weights(model)))
    (s, w1), (_, w2) = stats
    assert s.num_samples == len(train_ds) == 48 and len(s.epoch_losses) == 2 and s.loss == s.epoch_losses[-1]
    assert all(np.array_equal(x, y) for x, y in zip(w1, w2, strict=True))


def test_training_learns_the_toy_task(export_dir: Path, datasets) -> None:
    train_ds, val_ds = datasets
    torch.manual_seed(0)
    model = MultiModalNet(ModelConfig(**SMALL_MODEL))
    cfg = TrainConfig(epochs=25, batch_size=8, lr=3e-3, device="cpu")
    loader = make_loader(train_ds, cfg.batch_size, shuffle=True, seed=0)
    train_entries, _ = split_train_val(load_datalist(export_dir).entries)  # the split build_datasets made
    pos_w = positive_weight(train_entries)
    stats = train(model, loader, cfg, pos_weight=pos_w)
    assert stats.epoch_losses[-1] < 0.6 * stats.epoch_losses[0]
    result = evaluate(model, make_loader(val_ds, 8))
    assert result.num_samples == len(val_ds) == 16
    assert result.auroc is not None and result.auroc >= 0.75
    assert result.balanced_accuracy is not None and result.balanced_accuracy > 0.6


def test_evaluate_matches_sklearn(datasets) -> None:
    _, val_ds = datasets
    torch.manual_seed(0)
    model = MultiModalNet(ModelConfig(**SMALL_MODEL))
    result = evaluate(model, make_loader(val_ds, 5))
    y, p = result.labels, result.probabilities
    assert len(p) == len(y) == 16 and set(y.tolist()) == {0, 1}
    assert result.auroc == pytest.approx(roc_auc_score(y, p))
    pred = (p >= 0.5).astype(int)
    assert result.balanced_accuracy == pytest.approx(balanced_accuracy_score(y, pred))
    assert result.sensitivity == pytest.approx(recall_score(y, pred))
    assert result.specificity == pytest.approx(recall_score(y, pred, pos_label=0))
    assert result.loss == pytest.approx(log_loss(y, p), rel=1e-5)
    prev = result.at_prevalence
    assert prev is not None and int((p >= prev.threshold).sum()) == int(y.sum())


def test_metrics_with_ties_and_one_class() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, size=200)
    scores = np.round(rng.random(200) * 0.5 + 0.4 * y, 1)  # coarse rounding creates many ties
    assert roc_auc(y, scores) == pytest.approx(roc_auc_score(y, scores))
    m = binary_metrics(y, scores, 0.5)
    assert m.balanced_accuracy == pytest.approx(balanced_accuracy_score(y, scores >= 0.5))
    ones = np.ones(5, dtype=int)
    assert roc_auc(ones, rng.random(5)) is None
    single = binary_metrics(ones, np.array([0.9, 0.9, 0.1, 0.9, 0.9]), 0.5)
    assert single.specificity is None and single.sensitivity == pytest.approx(0.8)
    assert single.balanced_accuracy == pytest.approx(0.8)


def test_device_resolution() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    with pytest.raises(ConfigError, match="not valid"):
        resolve_device("tpu-please")
    with pytest.raises(ConfigError):
        TrainConfig(epochs=0)


def test_config_errors_name_the_choices() -> None:
    with pytest.raises(ConfigError, match="'crop_pad' or 'resize'"):
        PreprocessConfig(ct_fit="pad")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="val_fraction"):
        DataConfig(val_fraction=1.0)
    assert CT_KEY == "ct" and ECG_KEY == "ecg"  # datalist keys are the contract with cohort export
