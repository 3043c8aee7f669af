"""Tests of galnet.data: the HDF5 schema, StampDataset, read_arrays and OnTheFlyDataset."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from galnet.data import StampDataset, read_arrays, read_meta, write_split
from galnet.errors import InputDataError
from galnet.simulate import OnTheFlyDataset, load_preset

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _arrays(n: int, *, sigma_maps: bool = False, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    out = {
        "images": rng.normal(size=(n, 61, 61)).astype(np.float32),
        "psfs": np.full((n, 25, 25), 1 / 625, np.float32),
        "sky_sigma": rng.uniform(0.05, 0.06, n).astype(np.float32),
        "params": rng.normal(size=(n, 7)),
        "snr": rng.uniform(10, 100, n).astype(np.float32),
        "ids": np.arange(100, 100 + n, dtype=np.int64),
    }
    if sigma_maps:
        out["sigma_maps"] = np.full((n, 61, 61), 0.06, np.float32)
    return out


def _fast_config():
    return load_preset("hsc-r", {"priors": {"re_arcsec": {"kind": "loguniform", "low": 0.1, "high": 0.5}},
                                 "neighbours": {"enabled": False}})


def test_write_read_roundtrip_schema(tmp_path):
    import h5py

    arrays = _arrays(70)
    meta = {"seed": 1, "split": "train", "zeropoint": 27.0}
    path = write_split(tmp_path / "train.h5", arrays, meta)
    back = read_arrays(path)
    for k, v in arrays.items():
        np.testing.assert_array_equal(back[k], v)
    assert read_meta(path) == meta
    with h5py.File(path) as f:
        assert f["images"].dtype == np.float32 and f["params"].dtype == np.float64
        assert f["ids"].dtype == np.int64
        assert f["images"].chunks[0] == 32 and f["images"].compression == "gzip"
        assert json.loads(f.attrs["meta"]) == meta
    part = read_arrays(path, 10, 20, keys=["ids"])
    np.testing.assert_array_equal(part["ids"], np.arange(110, 120))


def test_write_split_rejects_bad_arrays(tmp_path):
    a = _arrays(5)
    del a["snr"]
    with pytest.raises(InputDataError, match="missing array.*snr"):
        write_split(tmp_path / "x.h5", a, {})
    a = _arrays(5)
    a["ids"] = a["ids"][:3]
    with pytest.raises(InputDataError, match="'ids' has 3 rows"):
        write_split(tmp_path / "x.h5", a, {})


def test_stamp_dataset_items(tmp_path):
    arrays = _arrays(12, sigma_maps=True)
    path = write_split(tmp_path / "val.h5", arrays, {"split": "val"})
    ds = StampDataset(path)
    assert len(ds) == 12 and ds.meta == {"split": "val"}
    item = ds[3]
    assert set(item) == {"image", "psf", "sky_sigma", "params", "id", "sigma_map"}
    assert item["image"].shape == (61, 61) and item["image"].dtype == torch.float32
    assert item["psf"].shape == (25, 25) and item["psf"].dtype == torch.float32
    assert item["sky_sigma"].shape == () and item["sky_sigma"].dtype == torch.float32
    assert item["params"].shape == (7,) and item["params"].dtype == torch.float32
    assert item["id"].shape == () and item["id"].dtype == torch.int64 and int(item["id"]) == 103
    np.testing.assert_array_equal(item["image"].numpy(), arrays["images"][3])
    assert int(ds[-1]["id"]) == 111
    with pytest.raises(IndexError):
        ds[12]
    loader = torch.utils.data.DataLoader(ds, batch_size=5, num_workers=2, shuffle=False)
    ids = torch.cat([b["id"] for b in loader])
    np.testing.assert_array_equal(ids.numpy(), arrays["ids"])


def test_stamp_dataset_errors(tmp_path):
    with pytest.raises(InputDataError, match="not found"):
        StampDataset(tmp_path / "none.h5")
    import h5py

    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["images"] = np.zeros((2, 61, 61))
    with pytest.raises(InputDataError, match="other.h5.*missing"):
        StampDataset(tmp_path / "other.h5")
    (tmp_path / "text.h5").write_text("not hdf5")
    with pytest.raises(InputDataError, match="not a readable HDF5"):
        StampDataset(tmp_path / "text.h5")


def test_simulated_dataset_meta(tmp_path):
    from galnet.simulate import simulate_dataset

    paths = simulate_dataset(_fast_config(), tmp_path, 10, (0.8, 0.2, 0.0), seed=2, shard_size=8,
                             progress=False)
    ds = StampDataset(paths["train"])
    keys = ("preset", "seed", "split", "galnet_version", "conventions_version", "zeropoint", "pixel_scale",
            "gain")
    for key in keys:
        assert key in ds.meta
    assert ds.meta["split"] == "train" and ds.meta["seed"] == 2 and ds.meta["pixel_scale"] == 0.168
    assert len(ds) == 8 and len(StampDataset(paths["val"])) == 2 and len(StampDataset(paths["test"])) == 0
    arr = read_arrays(paths["train"])
    assert {"images", "psfs", "sky_sigma", "params", "snr", "ids"} <= set(arr)


def test_on_the_fly_dataset():
    cfg = _fast_config()
    ds = OnTheFlyDataset(cfg, seed=5, batch=4)
    assert isinstance(ds, torch.utils.data.IterableDataset)
    it = iter(ds)
    items = [next(it) for _ in range(6)]  # crosses a batch boundary
    assert items[0]["image"].shape == (61, 61) and items[0]["params"].dtype == torch.float32
    assert [int(i["id"]) for i in items] == list(range(6))
    again = next(iter(OnTheFlyDataset(cfg, seed=5, batch=4)))
    assert torch.equal(again["image"], items[0]["image"])
    # two DataLoader workers draw different streams
    loader = torch.utils.data.DataLoader(OnTheFlyDataset(cfg, seed=5, batch=4), batch_size=4, num_workers=2)
    batches = []
    for b in loader:
        batches.append(b)
        if len(batches) == 2:
            break
    assert not torch.equal(batches[0]["image"], batches[1]["image"])
    assert set(batches[0]["id"].tolist()).isdisjoint(batches[1]["id"].tolist())
