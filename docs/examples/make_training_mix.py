"""Write the training set of ``hsc-r`` v3: injected-into-real stamps and synthetic stamps, half and half.

Usage: ``python docs/examples/make_training_mix.py`` (after the commands in README.md "The shipped models":
``data/hsc200`` from ``galnet simulate``, ``data/inj_train`` from ``galnet simulate --background-library``).

Writes ``data/mix/train.h5`` (the 80,000 injected training rows and the first 80,000 synthetic ones) and
``data/mix/val.h5`` (5,000 + 5,000), shuffled with seed 5, in the schema of ``galnet.data.h5``; ``sigma_maps``
are left out (the network does not read them). ``data/mix/test.h5`` links the synthetic test split, on which
``galnet train export`` measures the card's test metrics.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from galnet.data import read_arrays, read_meta, write_split

KEYS = ("images", "psfs", "sky_sigma", "params", "snr")


def main(root: str = "data") -> None:
    out = Path(root) / "mix"
    for split, n_synthetic in (("train", 80000), ("val", 5000)):
        injected = read_arrays(Path(root) / "inj_train" / f"{split}.h5")
        synthetic = read_arrays(Path(root) / "hsc200" / f"{split}.h5", 0, n_synthetic)
        arrays = {k: np.concatenate([injected[k], synthetic[k]]) for k in KEYS}
        order = np.random.default_rng(5).permutation(len(arrays["images"]))
        arrays = {k: v[order] for k, v in arrays.items()}
        arrays["ids"] = np.arange(len(order), dtype=np.int64)
        meta = read_meta(Path(root) / "hsc200" / f"{split}.h5")
        meta.update({"n": len(order), "mixed": {"injected": f"{root}/inj_train/{split}.h5",
                                                "synthetic": f"{root}/hsc200/{split}.h5 rows 0-{n_synthetic}",
                                                "shuffle_seed": 5}})
        write_split(out / f"{split}.h5", arrays, meta)
        print(f"{out / f'{split}.h5'}: {len(order)} rows")
    test = out / "test.h5"
    if not test.exists():
        os.symlink(os.path.relpath(Path(root) / "hsc200" / "test.h5", out), test)


if __name__ == "__main__":
    main()
