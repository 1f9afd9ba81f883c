"""The patient is the privacy unit: one item per patient, Poisson sampling of patients, disjoint splits."""

from __future__ import annotations

import shutil

import pytest
import torch
from data_helpers import write_jpeg
from opacus.data_loader import DPDataLoader
from torch.utils.data import DataLoader

from client.site_runtime import SiteRuntime
from common.data import DataError, PatientDataset, build_site_data
from common.data.patients import Patient, Sample, flat_dataset
from common.data.site_data import group_patients
from common.data.splits import split_samples
from common.federation_config import ConfigError, site_view, validate_config


def _patients(counts: list[int]) -> list[Patient]:
    """Patient p's image k is filled with 100 * p + k, so every drawn item tells whose image it is."""
    return [
        Patient(f"p{p}", torch.stack([torch.full((1, 4, 4), 100.0 * p + k) for k in range(n)]), torch.full((n,), float(p % 2)))
        for p, n in enumerate(counts)
    ]


def test_item_is_one_image_of_that_patient_drawn_at_random():
    ds = PatientDataset(_patients([1, 3, 5]))
    assert len(ds) == 3 and ds.num_images == 9
    torch.manual_seed(0)
    drawn = {int(ds[2][0][0, 0, 0]) for _ in range(200)}
    assert drawn == {200, 201, 202, 203, 204}  # all of patient 2's images, none of another's
    assert {int(ds[0][0][0, 0, 0]) for _ in range(20)} == {0}
    torch.manual_seed(0)
    again = {int(ds[2][0][0, 0, 0]) for _ in range(200)}
    assert again == drawn  # seeded by torch's global RNG (the site runtime seeds it per round)


def test_foreground_bias_favours_the_patients_own_foreground_slices():
    empty, full = torch.zeros(1, 4, 4, dtype=torch.long), torch.ones(1, 4, 4, dtype=torch.long)
    samples = [Sample("a", torch.randn(4, 4).numpy(), t[0].numpy(), f"a{i}") for i, t in enumerate([empty, empty, empty, full])]
    (patient,) = group_patients(samples, task="segmentation", foreground_bias=9.0)
    assert patient.draw_weights.tolist() == [1.0, 1.0, 1.0, 10.0]
    ds = PatientDataset([patient])
    torch.manual_seed(1)
    share = sum(int(ds[0][1].any()) for _ in range(600)) / 600
    assert 0.7 < share < 0.85  # 10 / 13 of draws, instead of 1 / 4 unbiased


def test_poisson_batches_hold_each_patient_at_most_once_and_sample_patients_at_rate_q():
    counts = [1 + (p % 7) * 3 for p in range(40)]  # 1 to 19 images per patient
    ds = PatientDataset(_patients(counts))
    loader = DPDataLoader.from_data_loader(DataLoader(ds, batch_size=10))
    assert loader.sample_rate == pytest.approx(10 / 40)  # q counts patients, not images
    torch.manual_seed(0)
    seen = torch.zeros(40)
    steps = 400
    for _ in range(steps // len(loader)):
        for images, _ in loader:
            owners = (images[:, 0, 0, 0] // 100).long()
            assert len(set(owners.tolist())) == len(owners)  # one item, one clipped gradient per patient
            seen[owners] += 1
    # Patients with 19 images are sampled as often as patients with 1: the unit is the patient.
    heavy, light = seen[torch.tensor(counts) >= 16].mean(), seen[torch.tensor(counts) == 1].mean()
    assert seen.mean() / steps == pytest.approx(0.25, abs=0.03)
    assert heavy / light == pytest.approx(1.0, abs=0.25)


def test_test_set_is_every_image_and_ids_must_be_unique():
    assert len(flat_dataset(_patients([2, 3]))) == 5
    with pytest.raises(ValueError, match="patient ids must be unique"):
        PatientDataset(_patients([1]) + _patients([2]))


def _samples(splits: dict[str, str]) -> list[Sample]:
    return [Sample(p, torch.zeros(2, 2).numpy(), 0, f"{p}_{k}.jpeg", split) for p, split in splits.items() for k in range(2)]


def test_by_patient_split_is_disjoint_seeded_and_keeps_patients_whole():
    samples = _samples({f"person{i}": None for i in range(50)})
    train, test = split_samples(samples, mode="by_patient", test_fraction=0.2, seed=3)
    assert {s.patient for s in train}.isdisjoint({s.patient for s in test})
    assert len({s.patient for s in test}) == 10 and len(test) == 20
    again, _ = split_samples(samples, mode="by_patient", test_fraction=0.2, seed=3)
    other, _ = split_samples(samples, mode="by_patient", test_fraction=0.2, seed=4)
    assert [s.source for s in again] == [s.source for s in train] != [s.source for s in other]


def test_folder_split_pools_val_and_refuses_patients_in_two_splits():
    train, test = split_samples(_samples({"a": "train", "b": "val", "c": "test"}), mode="auto", test_fraction=0.2, seed=0)
    assert {s.patient for s in train} == {"a", "b"} and {s.patient for s in test} == {"c"}
    leaky = _samples({"a": "train", "c": "test"}) + [Sample("a", torch.zeros(2, 2).numpy(), 0, "a_9.jpeg", "test")]
    with pytest.raises(DataError, match="a_9.jpeg: patient 'a' is in both the train and test folders"):
        split_samples(leaky, mode="folders", test_fraction=0.2, seed=0)
    with pytest.raises(DataError, match="has no train/test folders; set data.split: by_patient"):
        split_samples(_samples({"a": None}), mode="folders", test_fraction=0.2, seed=0)
    with pytest.raises(ValueError, match="data.split must be one of .*got 'random'"):
        split_samples(leaky, mode="random", test_fraction=0.2, seed=0)


def test_site_steps_count_patients_not_images(tiny_config):
    site = SiteRuntime(tiny_config(), "hospital_a")
    assert site.data.train.num_images > site.data.num_train_patients == 64
    assert site.steps_per_round() == (pytest.approx(16 / 64), 4)


def test_delta_is_checked_against_the_patients_actually_read(tiny_config, tmp_path):
    # A real-data site (synthesize: false) with 4 training patients: δ=0.3 is fine for the
    # config check (N unknown there) but refused once the files are read.
    root = tmp_path / "hospital_a_files"
    for split, cls, name in [("train", "NORMAL", "IM-0001-0001.jpeg"), ("train", "NORMAL", "IM-0002-0001.jpeg"),
                             ("train", "PNEUMONIA", "person3_virus_1.jpeg"), ("train", "PNEUMONIA", "person4_virus_1.jpeg"),
                             ("test", "NORMAL", "IM-0005-0001.jpeg"), ("test", "PNEUMONIA", "person6_virus_1.jpeg")]:
        write_jpeg(root / split / cls / name)
    cfg = tiny_config(f"federation.sites.hospital_a.data.root={root}", "++federation.sites.hospital_a.data.synthesize=false",
                      "+federation.sites.hospital_a.privacy.delta=0.3", "+federation.sites.hospital_a.training.batch_size=2")
    validate_config(cfg)
    with pytest.raises(ConfigError, match="site hospital_a: privacy.delta=0.3 must be below 1/num_train=0.25"):
        SiteRuntime(cfg, "hospital_a").steps_per_round()
    shutil.rmtree(root / "test")
    with pytest.raises(DataError, match="the test split has no images"):
        build_site_data(cfg.task, site_view(cfg, "hospital_a").data)
