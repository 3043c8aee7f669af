"""On-the-fly training data: unlimited fresh stamps drawn by :func:`galnet.simulate.generate_batch`."""

from __future__ import annotations

import numpy as np
from torch.utils.data import IterableDataset

from .generate import generate_batch

__all__ = ["OnTheFlyDataset"]


class OnTheFlyDataset(IterableDataset):
    """A torch ``IterableDataset`` yielding fresh simulated stamps forever.

    Each DataLoader worker draws its own stream, seeded by ``SeedSequence(seed, spawn_key=(worker,))``,
    so workers never repeat each other and a given (seed, num_workers) always gives the same stream.

    Parameters
    ----------
    config : SimulationConfig
        What to simulate.
    seed : int
        Base seed.
    batch : int
        Stamps drawn per :func:`~galnet.simulate.generate_batch` call (then yielded one by one).

    Notes
    -----
    Items are dicts like :class:`galnet.data.StampDataset`'s: ``image``, ``psf``, ``sky_sigma``,
    ``params``, ``id`` (and ``sigma_map`` with real backgrounds with variance planes). ``id`` is
    ``worker * 2**40 + running index``.
    """

    def __init__(self, config, seed: int, batch: int = 256):
        self.config = config
        self.seed = int(seed)
        self.batch = int(batch)

    def __iter__(self):
        import torch
        from torch.utils.data import get_worker_info

        info = get_worker_info()
        worker = 0 if info is None else info.id
        rng = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(worker,)))
        next_id = worker * 2**40
        while True:
            b = generate_batch(self.config, self.batch, seed=rng)
            for i in range(self.batch):
                item = {
                    "image": torch.from_numpy(b["images"][i]),
                    "psf": torch.from_numpy(b["psfs"][i]),
                    "sky_sigma": torch.tensor(float(b["sky_sigma"][i]), dtype=torch.float32),
                    "params": torch.from_numpy(b["params"][i].astype(np.float32)),
                    "id": torch.tensor(next_id, dtype=torch.int64),
                }
                if "sigma_maps" in b:
                    item["sigma_map"] = torch.from_numpy(b["sigma_maps"][i])
                next_id += 1
                yield item
