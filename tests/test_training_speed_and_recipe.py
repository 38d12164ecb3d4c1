"""The preprocessing cache, federated normalisation statistics, losses, reproducibility, early stopping."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from cohort.errors import ConfigError
from fl_client.data import (
    DataConfig,
    build_datasets,
    load_datalist,
    make_loader,
    positive_weight,
    preprocess_cache_dir,
    preprocessed_dataset,
    split_train_val,
)
from fl_client.model import ModelConfig, MultiModalNet, get_weights
from fl_client.normalization import (
    NormStats,
    SiteMoments,
    combine,
    norm_stats,
    release_moments,
    site_moments,
)
from fl_client.train import TrainConfig, train
from fl_client.transforms import CT_KEY, ECG_KEY, ECG_PRESENT_KEY, TabularStats, cached_transforms
from tests.test_training import FEATURES, PRE, SMALL_MODEL, _write_export


@pytest.fixture()
def export(tmp_path: Path) -> Path:
    root = tmp_path / "export"
    _write_export(root)
    return root


def _cfg(tmp: Path, **kw: object) -> DataConfig:
    return DataConfig(preprocess=PRE, cache_root=tmp / "cache", **kw)  # type: ignore[arg-type]


def _cache_files(directory: Path) -> dict[str, float]:
    return {p.name: p.stat().st_mtime_ns for p in directory.glob("*.pt")}


# -------------------------------------------------------------------------------------------- cache


def test_cached_samples_equal_the_uncached_chain(export: Path, tmp_path: Path) -> None:
    dl = load_datalist(export)
    cached = preprocessed_dataset(dl, dl.entries, _cfg(tmp_path))
    chain = cached_transforms(PRE, dl.ecg_sampling_rate)
    for i in (0, 1, 5):
        want = chain(dl.entries[i].to_sample())
        got = cached[i]
        for key in (CT_KEY, ECG_KEY):
            assert torch.equal(torch.as_tensor(got[key]), torch.as_tensor(want[key]))


def test_cache_is_reused_and_sources_are_not_read_again(export: Path, tmp_path: Path) -> None:
    dl = load_datalist(export)
    cfg = _cfg(tmp_path)
    first, _ = build_datasets(dl, cfg)
    before = [first[i] for i in range(len(first))]
    directory = preprocess_cache_dir(dl, cfg)
    files = _cache_files(directory)
    assert len(files) == len(dl.entries)  # one file per patient (training and validation split)
    # Another split seed: other training patients and statistics, same cache folder, no file rewritten.
    again = replace(cfg, seed=cfg.seed + 1)
    shutil.rmtree(export / "ct")  # the sources are gone: a rebuild must read the cache only
    shutil.rmtree(export / "ecg")
    second, second_val = build_datasets(dl, again)
    assert _cache_files(directory) == files
    by_patient = {s["patient"]: s for ds in (second, second_val) for s in (ds[i] for i in range(len(ds)))}
    for a in before:
        assert torch.equal(torch.as_tensor(a[CT_KEY]), torch.as_tensor(by_patient[a["patient"]][CT_KEY]))
    assert preprocess_cache_dir(dl, replace(cfg, val_fraction=0.4, seed=7)) == directory


@pytest.mark.parametrize("change", [
    pytest.param(lambda dl, cfg: (replace(dl, cohort_hash="other"), cfg), id="cohort-hash"),
    pytest.param(lambda dl, cfg: (dl, replace(cfg, preprocess=replace(PRE, ct_shape=(6, 6, 6)))), id="ct-shape"),
    pytest.param(lambda dl, cfg: (dl, replace(cfg, preprocess=replace(PRE, ct_spacing=3.0))), id="ct-spacing"),
    pytest.param(lambda dl, cfg: (dl, replace(cfg, preprocess=replace(PRE, hu_window=(-100.0, 500.0)))),
                 id="hu-window"),
    pytest.param(lambda dl, cfg: (dl, replace(cfg, preprocess=replace(PRE, ecg_rate=125))), id="ecg-rate"),
])
def test_cache_is_invalidated_by_cohort_hash_and_preprocessing(export: Path, tmp_path: Path, change) -> None:  # type: ignore[no-untyped-def]
    dl = load_datalist(export)
    cfg = _cfg(tmp_path)
    build_datasets(dl, cfg)
    dl2, cfg2 = change(dl, cfg)
    new_dir = preprocess_cache_dir(dl2, cfg2)
    assert new_dir != preprocess_cache_dir(dl, cfg)
    train_ds, _ = build_datasets(dl2, cfg2)
    assert len(_cache_files(new_dir)) > 0
    sample = train_ds[0]
    assert tuple(sample[CT_KEY].shape[1:]) == cfg2.preprocess.ct_shape


def test_settings_outside_the_cached_chain_keep_the_cache(export: Path, tmp_path: Path) -> None:
    dl = load_datalist(export)
    cfg = _cfg(tmp_path)
    base = preprocess_cache_dir(dl, cfg)
    for other in (replace(cfg, preprocess=replace(PRE, ecg_scaling="fixed")), replace(cfg, val_fraction=0.1),
                  replace(cfg, seed=3), replace(cfg, cache=False)):
        assert preprocess_cache_dir(dl, other) == base


# ----------------------------------------------------------------------------- normalisation stats


def _sites(export: Path, tmp_path: Path, n: int = 3):  # type: ignore[no-untyped-def]
    dl = load_datalist(export)
    cfg = _cfg(tmp_path)
    parts = [list(dl.entries[i::n]) for i in range(n)]
    samples = [preprocessed_dataset(dl, p, cfg) for p in parts]
    return dl, parts, samples


def test_federated_statistics_equal_the_pooled_ones(export: Path, tmp_path: Path) -> None:
    dl, parts, samples = _sites(export, tmp_path)
    units = [f["unit"] for f in FEATURES]
    moments = [site_moments([e.tabular for e in p], units, (s[i] for i in range(len(s))))
               for p, s in zip(parts, samples, strict=True)]
    fed = norm_stats(combine([m.tabular for m in moments]), combine([m.ecg for m in moments]))
    pooled_rows = [e.tabular for p in parts for e in p]
    pooled = TabularStats.fit(pooled_rows, len(FEATURES))
    numeric = [u != "1" for u in units]
    for j, is_numeric in enumerate(numeric):
        if is_numeric:
            assert fed.tabular.means[j] == pytest.approx(pooled.means[j], rel=1e-9)
            assert fed.tabular.stds[j] == pytest.approx(pooled.stds[j], rel=1e-9)
        else:  # indicators are never summed (their sums would be patient counts)
            assert (fed.tabular.means[j], fed.tabular.stds[j]) == (0.0, 1.0)
    ecgs = np.concatenate([np.asarray(s[i][ECG_KEY], dtype=np.float64) for s in samples for i in range(len(s))
                           if float(s[i][ECG_PRESENT_KEY]) > 0], axis=-1)
    assert fed.ecg is not None
    np.testing.assert_allclose(fed.ecg.means, ecgs.mean(axis=-1), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(fed.ecg.stds, ecgs.std(axis=-1), rtol=1e-9)
    assert NormStats.from_json(fed.to_json()) == fed


def test_a_site_withholds_features_below_its_minimum_cell(export: Path, tmp_path: Path) -> None:
    dl, parts, samples = _sites(export, tmp_path)
    units = [f["unit"] for f in FEATURES]
    m = site_moments([e.tabular for e in parts[1]], units, (samples[1][i] for i in range(len(samples[1]))))
    weight = 3  # weight: missing for every seventh patient, so fewer patients than age
    min_cell = m.tabular_patients[weight] + 1
    assert m.tabular_patients[0] >= min_cell  # age has more patients and is released
    released, withheld, ecg_withheld = release_moments(m, min_cell)
    assert weight in withheld and 0 not in withheld
    assert released.tabular.counts[weight] is None and released.tabular.sums[weight] is None
    assert released.tabular.counts[0] == m.tabular.counts[0]
    # Everything is withheld when the minimum exceeds the split: the site refuses.
    none_left, _, ecg_gone = release_moments(m, 10_000)
    assert ecg_gone and all(c is None or c == 0 for c in none_left.tabular.counts)
    # The combination skips the withheld entries instead of counting them as zero.
    other = site_moments([e.tabular for e in parts[2]], units, (samples[2][i] for i in range(len(samples[2]))))
    both = combine([released.tabular, other.tabular])
    assert both.counts[weight] == other.tabular.counts[weight]
    assert SiteMoments.from_json(released.to_json()) == released
    assert ecg_withheld == (m.ecg_patients < min_cell)


def test_release_withholds_a_lone_feature_and_rejects_a_zero_minimum() -> None:
    from fl_client.normalization import Moments

    m = SiteMoments(Moments((3, 0), (30.0, 0.0), (310.0, 0.0)), (3, 0), Moments((0,) * 12, (0.0,) * 12, (0.0,) * 12), 0)
    released, withheld, _ = release_moments(m, 10)
    assert withheld == [0] and released.tabular.counts == (None, 0)
    with pytest.raises(ConfigError):
        release_moments(m, 0)


# ------------------------------------------------------------------------------- training recipe


def _fit(export: Path, tmp_path: Path, **train_kw: object) -> list[np.ndarray]:
    dl = load_datalist(export)
    cfg = _cfg(tmp_path)
    train_ds, _ = build_datasets(dl, cfg)
    entries, _ = split_train_val(dl.entries, cfg.val_fraction, cfg.seed)
    torch.manual_seed(0)
    model = MultiModalNet(ModelConfig(**SMALL_MODEL))  # type: ignore[arg-type]
    tc = TrainConfig(epochs=2, batch_size=8, seed=5, device="cpu", **train_kw)  # type: ignore[arg-type]
    train(model, make_loader(train_ds, tc.batch_size, shuffle=True, seed=tc.seed), tc,
          pos_weight=positive_weight(entries))
    return get_weights(model)


def test_training_is_bit_for_bit_reproducible_on_cpu(export: Path, tmp_path: Path) -> None:
    a = _fit(export, tmp_path)
    b = _fit(export, tmp_path)  # the second run reads the cache the first one wrote
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("kw", [{"loss": "focal"}, {"proximal_mu": 0.5}], ids=["focal", "proximal"])
def test_loss_choices_change_the_update(export: Path, tmp_path: Path, kw: dict[str, object]) -> None:
    base = _fit(export, tmp_path)
    other = _fit(export, tmp_path, **kw)
    assert any(not np.array_equal(x, y) for x, y in zip(base, other, strict=True))


def test_train_reports_where_the_time_went(export: Path, tmp_path: Path) -> None:
    dl = load_datalist(export)
    train_ds, _ = build_datasets(dl, _cfg(tmp_path))
    model = MultiModalNet(ModelConfig(**SMALL_MODEL))  # type: ignore[arg-type]
    stats = train(model, make_loader(train_ds, 8, shuffle=True), TrainConfig(epochs=1, device="cpu"))
    assert stats.step_seconds > 0 and stats.data_seconds > 0
    assert 0.0 < stats.model_share < 1.0


def test_unknown_loss_names_the_choices() -> None:
    with pytest.raises(ConfigError, match="weighted_bce"):
        TrainConfig(loss="hinge")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------- early stopping


def test_best_round_is_kept_and_training_stops_after_patience() -> None:
    from flwr.app import ArrayRecord, ConfigRecord

    from fl_server.strategy import StrategySettings, build_strategy

    strategy = build_strategy(StrategySettings(patience=2), {1: "a", 2: "b"}, 2)
    arrays = {r: ArrayRecord(numpy_ndarrays=[np.full(2, float(r))]) for r in range(1, 6)}
    for r, auroc in zip(range(1, 6), [0.6, 0.7, 0.65, 0.69, 0.9], strict=True):
        if strategy.stopped_after is not None:
            assert list(strategy.configure_train(r, arrays[r], ConfigRecord(), None)) == []  # type: ignore[arg-type]
            continue
        strategy._latest = arrays[r]
        strategy._track_best(r, auroc)
    assert strategy.best_round == 2 and strategy.best_auroc == 0.7
    assert strategy.best_arrays is arrays[2]
    assert strategy.stopped_after == 4


def test_strategy_settings_name_the_choices() -> None:
    from fl_server.strategy import StrategySettings

    with pytest.raises(ConfigError, match="fedavg, fedprox, fedadam, fedyogi"):
        StrategySettings(strategy="scaffold")
    with pytest.raises(ConfigError, match="proximal_mu"):
        StrategySettings(strategy="fedprox")
    picked = StrategySettings.from_config({"strategy": "fedadam", "server_lr": 0.05, "rounds": 3})
    assert (picked.strategy, picked.server_lr, picked.patience) == ("fedadam", 0.05, 0)  # other keys ignored


def test_round_datasets_are_reused_until_the_datalist_or_settings_change(export: Path, tmp_path: Path) -> None:
    from fl_client.local import _round_datasets

    cfg = _cfg(tmp_path)
    _, a_train, a_val = _round_datasets(export, cfg, None)
    _, b_train, _ = _round_datasets(export, cfg, None)
    assert b_train is a_train  # the next round in this process reads the datasets it already holds
    _, c_train, _ = _round_datasets(export, replace(cfg, seed=cfg.seed + 1), None)
    assert c_train is not a_train
    doc = json.loads((export / "datalist.json").read_text())
    doc["training"] = doc["training"][:-1]
    (export / "datalist.json").write_text(json.dumps(doc))
    _, d_train, d_val = _round_datasets(export, cfg, None)
    assert d_train is not a_train and len(d_train) + len(d_val) == len(a_train) + len(a_val) - 1


def test_the_site_refuses_the_moments_round_when_every_feature_is_below_its_minimum_cell(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import fl_client.local as local
    from cohort.siteconfig import SiteConfig
    from fl_client.moments import answer_moments
    from fl_client.normalization import Moments

    site = SiteConfig(site_id="tiny", store=str(tmp_path / "store"), pseudonym_key="k" * 16)
    settings_json = json.dumps({"model": {}, "training": {}})  # local.moments is replaced below
    few = SiteMoments(Moments((4, 0), (40.0, 0.0), (410.0, 0.0)), (4, 0),
                      Moments((8,) * 12, (0.0,) * 12, (1.0,) * 12), 4)
    monkeypatch.setattr(local, "moments", lambda *a, **k: few)
    refused = answer_moments(site, {}, "labelled", settings_json, "run-1")
    assert refused.status == "refused" and refused.moments_json is None and "10" in (refused.reason or "")
    enough = replace(few, tabular_patients=(12, 0), tabular=Moments((12, 0), (120.0, 0.0), (1210.0, 0.0)))
    monkeypatch.setattr(local, "moments", lambda *a, **k: enough)
    answered = answer_moments(site, {}, "labelled", settings_json, "run-2")
    assert answered.status == "answered" and answered.moments_json is not None
    assert SiteMoments.from_json(answered.moments_json).ecg.counts == (None,) * 12  # 4 ECG patients withheld
    log = [json.loads(line) for line in (tmp_path / "store" / "audit.jsonl").read_text().splitlines()]
    assert [e["decision"] for e in log] == ["refused", "answered"]


def test_each_round_of_local_training_draws_its_own_batches() -> None:
    from monai.data import Dataset

    from fl_client.local import TrainingSettings

    training = {"epochs": 1, "batch_size": 4, "lr": 1e-3, "weight_decay": 0.0, "val_fraction": 0.25,
                "ct_shape": 8, "ct_spacing_mm": 2.0, "ecg_sampling_rate": 250}
    settings = TrainingSettings(model={}, training=training, seed=3)
    first, second = settings.train_config(server_round=1), settings.train_config(server_round=2)
    assert settings.train_config(server_round=1) == first  # the same round repeats exactly
    assert settings.data_config().seed == 3  # the train/validation split does not move with the round

    def order(seed: int) -> list[int]:
        loader = make_loader(Dataset([{"i": i} for i in range(32)]), 4, shuffle=True, seed=seed)
        return [int(i) for batch in loader for i in batch["i"]]

    assert order(first.seed) != order(second.seed)  # round 2 does not replay round 1's batch order
    assert order(first.seed) == order(settings.train_config(server_round=1).seed)


def test_class_weight_setting_picks_the_positive_weight() -> None:
    from fl_client.data import DatalistEntry
    from fl_client.local import TrainingSettings

    entries = [DatalistEntry(patient=f"p{i}", label=int(i < 2), ct=None, ecg=None, tabular=())
               for i in range(10)]

    def weight(mode: str) -> float:
        return TrainingSettings(model={}, training={"class_weight": mode}).positive_weight(entries)

    assert weight("site") == pytest.approx(8 / 2)  # the split's own n_neg / n_pos
    assert weight("none") == 1.0  # unweighted: base rates between sites survive averaging
    with pytest.raises(ConfigError, match="class_weight"):
        weight("balanced-ish")


@pytest.mark.parametrize(("override", "named"), [
    ("training.class_weight=balanced", "training.class_weight"),
    ("training.loss=hinge", "loss='hinge'"),
    ("training.normalization=global", "training.normalization"),
    ("training.ecg_scaling=minmax", "ecg_scaling='minmax'"),
    ("training.val_fraction=1.5", "val_fraction"),
    ("model.ecg_kernel=4", "ecg_kernel"),
    ("federation.strategy=fedsgd", "federation.strategy"),
    ("federation.site_calibration=platt", "federation.site_calibration"),
])
def test_the_coordinator_refuses_a_bad_training_setting_before_any_message(override: str, named: str,
                                                                         tmp_path: Path) -> None:
    from fl_server.config import compose_run_config
    from fl_server.federation import RunSettings, run_federation

    cfg = compose_run_config(None, "")  # the defaults pass
    assert cfg["training"]["class_weight"] in ("site", "none")

    class NoMessages:  # any message sent would mean the run got past the check
        def get_node_ids(self):  # type: ignore[no-untyped-def]
            raise AssertionError("the coordinator contacted the grid before checking its settings")

        def send_and_receive(self, messages, *, timeout=None):  # type: ignore[no-untyped-def]
            raise AssertionError("the coordinator sent a message before checking its settings")

    settings = RunSettings(overrides=override, out_dir=str(tmp_path), expected_sites=1, wait_s=1)
    with pytest.raises(ConfigError, match=re.escape(named)):
        run_federation(NoMessages(), settings)  # type: ignore[arg-type]


def test_threshold_metrics_are_taken_where_both_classes_weigh_the_same() -> None:
    from fl_client.data import DatalistEntry
    from fl_client.local import TrainingSettings

    entries = [DatalistEntry(patient=f"p{i}", label=int(i < 2), ct=None, ecg=None, tabular=())
               for i in range(10)]

    def threshold(mode: str) -> float:
        return TrainingSettings(model={}, training={"class_weight": mode}).decision_threshold(entries)

    assert threshold("site") == pytest.approx(0.5)  # pos_weight already balances the classes
    assert threshold("none") == pytest.approx(0.2)  # unweighted: the training split's prevalence
    one_class = entries[2:]
    assert TrainingSettings(model={}, training={"class_weight": "none"}).decision_threshold(one_class) == 0.5

    # An unweighted model that ranks perfectly but never reaches 0.5 still scores as it ranks.
    from fl_client import transforms as t
    from fl_client.train import evaluate

    class Fixed(torch.nn.Module):  # returns the logits it is given as the first tabular feature
        def __init__(self) -> None:
            super().__init__()
            self.anchor = torch.nn.Parameter(torch.zeros(1))

        def forward(self, **inputs: torch.Tensor) -> torch.Tensor:
            return inputs[t.TABULAR_KEY][:, 0]

    logits = torch.logit(torch.tensor([0.05] * 8 + [0.3] * 2))
    batch = {k: torch.zeros(10, 1) for k in (t.CT_KEY, t.ECG_KEY, t.TABULAR_MISSING_KEY, t.CT_PRESENT_KEY,
                                              t.ECG_PRESENT_KEY)}
    batch |= {t.TABULAR_KEY: logits[:, None], t.LABEL_KEY: torch.tensor([0.0] * 8 + [1.0] * 2)}
    assert evaluate(Fixed(), [batch]).balanced_accuracy == pytest.approx(0.5)
    at_prevalence = evaluate(Fixed(), [batch], threshold=threshold("none"))
    assert (at_prevalence.balanced_accuracy, at_prevalence.threshold) == pytest.approx((1.0, 0.2))
