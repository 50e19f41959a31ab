"""`--subset imagenet100`: exactly the 100 listed classes from an ImageFolder, else one line.

The folders are generated: the 100 WordNet ids of scaled/imagenet100.txt plus two classes that
are not on the list, one tiny JPEG each.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scaled.config import UserError
from scaled.data import SUBSET_FILES, eval_dataset, pretrain_dataset, subset_classes
from scaled.options import parse_config
from scaled.pretrain import main

LIST = SUBSET_FILES["imagenet100"]


def _listed() -> list[str]:
    return [x for x in LIST.read_text().splitlines() if x and not x.startswith("#")]


def _folder(root: Path, classes: list[str]) -> Path:
    img = Image.fromarray(np.full((8, 8, 3), 127, dtype=np.uint8))
    for split in ("train", "val"):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            img.save(root / split / c / "0.JPEG")
    return root


def test_the_shipped_list_is_100_distinct_wordnet_ids_with_its_source():
    ids = _listed()
    assert len(ids) == 100 and len(set(ids)) == 100
    assert all(re.fullmatch(r"n\d{8}", x) for x in ids)
    assert "HobbitLong/CMC" in LIST.read_text()  # the header names the source
    assert subset_classes("imagenet100") == sorted(ids) and subset_classes("none") is None


def test_subset_selects_exactly_the_listed_classes(tmp_path):
    extra = ["n00000001", "n99999999"]
    data = _folder(tmp_path / "data", _listed() + extra)
    argv = ["--preset", "demo", "--data-dir", str(data), "--subset", "imagenet100"]
    cfg = parse_config(argv)
    ds, _, n_classes = pretrain_dataset(cfg)
    names = {Path(p).parent.name for p, _ in ds.source.samples}
    assert n_classes == 100 and names == set(_listed()) and len(ds) == 100
    assert {y for _, y in ds.source.samples} == set(range(100))
    val = eval_dataset(cfg, "val")
    assert {Path(p).parent.name for p, _ in val.source.samples} == set(_listed())
    full, _, n_all = pretrain_dataset(parse_config(argv[:-2]))
    assert n_all == 102 and len(full) == 102


def test_missing_classes_give_one_line_naming_them(tmp_path, capsys):
    listed = _listed()
    data = _folder(tmp_path / "data", listed[3:])
    cfg = parse_config(["--preset", "demo", "--data-dir", str(data), "--subset", "imagenet100"])
    with pytest.raises(UserError) as err:
        pretrain_dataset(cfg)
    message = str(err.value)
    assert "\n" not in message and "; " in message
    assert all(c in message for c in listed[:3]) and "3 of the 100" in message
    assert not any(c in message for c in listed[3:])


def test_subset_without_data_dir_is_a_user_error(capsys):
    assert main(["--preset", "demo", "--subset", "imagenet100", "--print-config"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --subset imagenet100") and err.count("\n") == 1


def test_subset_with_the_dali_loader_is_refused(tmp_path):
    argv = ["--preset", "demo", "--data-dir", str(tmp_path), "--subset", "imagenet100"]
    with pytest.raises(UserError, match="--loader torch"):
        parse_config([*argv, "--loader", "dali"])
