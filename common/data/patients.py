"""The patient as the privacy unit: datasets whose items are patients, not images.

DP-SGD clips and accounts per item. If items were images, a patient with many images or
slices would enter a step several times and be protected less than the accountant says.
Here item ``i`` is *one* image of patient ``i``, drawn at random from that patient's own
images with torch's global RNG (seeded each round by the site runtime). Under
Poisson sampling each sampled patient then contributes exactly one per-sample-clipped
gradient per step, so q = batch_size / number of patients is the patient's sampling rate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset


@dataclass(frozen=True)
class Sample:
    """One image or slice as a reader returns it, before grouping by patient.

    ``image`` is ``[S, S]`` float32 (windowed and resized, not yet standardised);
    ``target`` is a class index (classification) or an ``[S, S]`` label map (segmentation);
    ``split`` is ``train``/``val``/``test`` where the layout says so, else ``None``.
    """

    patient: str
    image: np.ndarray
    target: int | np.ndarray
    source: str
    split: str | None = None


@dataclass(frozen=True)
class Patient:
    """All images of one patient, stacked: ``images [k, 1, S, S]``, ``targets [k]`` or ``[k, S, S]``.

    ``draw_weights`` (``[k]``, optional) biases the per-step draw among this patient's
    images; it is computed from this patient's data only, so the unit stays the patient.
    """

    id: str
    images: torch.Tensor
    targets: torch.Tensor
    draw_weights: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if len(self.images) < 1 or len(self.images) != len(self.targets):
            raise ValueError(f"patient {self.id}: needs >= 1 image and one target per image")


class PatientDataset(Dataset):
    """Training set whose item ``i`` is one randomly drawn image of patient ``i``.

    Parameters
    ----------
    patients : sequence of Patient
        Distinct patients; ``len(dataset)`` is the number of patients (the N of DP-SGD).
    """

    def __init__(self, patients: Sequence[Patient]) -> None:
        ids = [p.id for p in patients]
        if not ids:
            raise ValueError("a patient dataset needs at least one patient")
        if len(set(ids)) != len(ids):
            dup = sorted({i for i in ids if ids.count(i) > 1})[:3]
            raise ValueError(f"patient ids must be unique, repeated: {dup}")
        self.patients = list(patients)

    def __len__(self) -> int:
        return len(self.patients)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        patient = self.patients[index]
        k = len(patient.images)
        if patient.draw_weights is not None:
            j = int(torch.multinomial(patient.draw_weights, 1))
        else:
            j = int(torch.randint(k, ())) if k > 1 else 0
        return patient.images[j], patient.targets[j]

    @property
    def ids(self) -> list[str]:
        """Patient ids in item order."""
        return [p.id for p in self.patients]

    @property
    def num_images(self) -> int:
        """Images (or slices) over all patients."""
        return sum(len(p.images) for p in self.patients)


def flat_dataset(patients: Sequence[Patient]) -> TensorDataset:
    """Every image of every patient, for evaluation (no privacy accounting there)."""
    if not patients:
        raise ValueError("a test set needs at least one patient")
    return TensorDataset(torch.cat([p.images for p in patients]), torch.cat([p.targets for p in patients]))
