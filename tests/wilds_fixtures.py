"""Tiny fabricated copies of the five WILDS datasets, in the file layout ``wilds`` 2.0.0 reads.

Each copy is a folder ``<root>/<name>_v<version>/`` as ``ftbench fetch`` leaves it: wilds' version
file ``RELEASE_v<version>.txt``, ftbench's completion marker, the metadata CSVs with the columns the
wilds dataset class reads, and one small image per example (JPEG where the real data are JPEG,
PNG where they are PNG), of a non-square size where the real images are not square.

Every image is a flat grey square whose level is the example's position in the wilds dataset
(after FMoW drops its sequestered rows, which get level 255), so a test can tell from the decoded
pixels exactly which example a split holds. Flat grey survives JPEG at quality 100 and resizing
exactly. Each split holds every group / class the protocol needs, in small numbers.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from ftbench.data.fetch import MARKER

CELEBA_ATTRIBUTES = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs", "Big_Lips", "Big_Nose",
    "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows", "Chubby", "Double_Chin", "Eyeglasses",
    "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones", "Male", "Mouth_Slightly_Open", "Mustache",
    "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline", "Rosy_Cheeks",
    "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat", "Wearing_Lipstick",
    "Wearing_Necklace", "Wearing_Necktie", "Young")
FOLDERS = {"waterbirds": ("waterbirds_v1.0", "1.0"), "celeba": ("celebA_v1.0", "1.0"),
           "camelyon17": ("camelyon17_v1.0", "1.0"), "fmow": ("fmow_v1.1", "1.1"), "iwildcam": ("iwildcam_v2.0", "2.0")}
# Examples per group (label, attribute) and WILDS split, for waterbirds and celeba: source_val and
# source_test take a tenth of each train group (1), the target pool half of each val group (4).
GROUPS = ((0, 0), (0, 1), (1, 0), (1, 1))
SPURIOUS_COUNTS = {0: {(0, 0): 12, (0, 1): 10, (1, 0): 10, (1, 1): 12}, 1: dict.fromkeys(GROUPS, 8),
                   2: dict.fromkeys(GROUPS, 5)}
# Fabricated image sizes (width, height).
SIZES = {"waterbirds": (30, 24), "celeba": (18, 22), "camelyon17": (12, 12), "fmow": (20, 20), "iwildcam": (28, 20)}
SEQUESTERED = 255  # grey level of FMoW's sequestered images (not in the wilds dataset)


def write_image(path: Path, level: int, size: tuple[int, int]) -> None:
    """A flat grey image of ``size`` (width, height) at ``level``; JPEG (quality 100) or PNG by suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGB", size, (level, level, level))
    if path.suffix == ".jpg":
        img.save(path, quality=100)
    else:
        img.save(path)


def _finish(root: Path, name: str) -> Path:
    folder, version = FOLDERS[name]
    d = root / folder
    (d / f"RELEASE_v{version}.txt").write_text(f"{name} v{version} (fabricated for ftbench tests)\n")
    (d / MARKER).write_text(json.dumps({"dataset": name}))
    return d


def _spurious_rows() -> list[tuple[int, int, int]]:
    """(split, label, attribute) per example, in a shuffled but fixed order."""
    rows = [(s, y, a) for s, groups in SPURIOUS_COUNTS.items() for (y, a), n in groups.items() for _ in range(n)]
    order = np.random.default_rng(5).permutation(len(rows))
    return [rows[i] for i in order]


def make_waterbirds(root: Path) -> Path:
    d = root / FOLDERS["waterbirds"][0]
    recs = []
    for i, (split, y, place) in enumerate(_spurious_rows()):
        fname = f"{'001.Black_footed_Albatross' if y else '045.Northern_Fulmar'}/bird_{i:04d}_{i + 7}.jpg"
        w, h = SIZES["waterbirds"]
        write_image(d / fname, i, (w, h) if i % 2 else (h, w))  # landscape and portrait images
        recs.append({"img_id": i + 1, "img_filename": fname, "y": y, "split": split, "place": place,
                     "place_filename": f"/{'o/ocean' if place else 'b/bamboo_forest'}/00000{i}.jpg"})
    d.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(recs).to_csv(d / "metadata.csv", index=False)
    return _finish(root, "waterbirds")


def make_celeba(root: Path) -> Path:
    d = root / FOLDERS["celeba"][0]
    attrs, parts = [], []
    rng = np.random.default_rng(6)
    for i, (split, blond, male) in enumerate(_spurious_rows()):
        image_id = f"{i + 1:06d}.jpg"
        write_image(d / "img_align_celeba" / image_id, i, SIZES["celeba"])
        row = {"image_id": image_id, **{a: int(rng.choice([-1, 1])) for a in CELEBA_ATTRIBUTES}}
        row["Blond_Hair"], row["Male"] = 2 * blond - 1, 2 * male - 1
        attrs.append(row)
        parts.append({"image_id": image_id, "partition": split})
    pd.DataFrame(attrs).to_csv(d / "list_attr_celeba.csv", index=False)
    pd.DataFrame(parts).to_csv(d / "list_eval_partition.csv", index=False)
    return _finish(root, "celeba")


def make_camelyon17(root: Path) -> Path:
    """Hospitals 0, 3, 4: train and id_val (3 + 1 per slide and class); hospital 1: OOD val (3 per slide
    and class); hospital 2: OOD test (8 per slide and class: 16 per class)."""
    d = root / FOLDERS["camelyon17"][0]
    per = {0: (3, 1), 3: (3, 1), 4: (3, 1), 1: (3, 0), 2: (8, 0)}  # center -> (first kind, id_val) per slide, class
    recs = []
    for center, (n, n_id_val) in per.items():
        for k in range(2):
            slide, patient, node = 2 * center + k, f"{10 * center + k:03d}", k
            for tumor in (0, 1):
                for j in range(n + n_id_val):
                    recs.append({"patient": patient, "node": node, "x_coord": 32 * (j + 10 * tumor), "y_coord": 96 * k,
                                 "tumor": tumor, "slide": slide, "center": center, "split": int(j >= n)})
    order = np.random.default_rng(7).permutation(len(recs))
    df = pd.DataFrame([recs[i] for i in order])
    for i, r in enumerate(df.itertuples()):
        p = (f"patches/patient_{r.patient}_node_{r.node}/"
             f"patch_patient_{r.patient}_node_{r.node}_x_{r.x_coord}_y_{r.y_coord}.png")
        write_image(d / p, i, SIZES["camelyon17"])
    df.to_csv(d / "metadata.csv")  # wilds reads it with index_col=0
    return _finish(root, "camelyon17")


def make_fmow(root: Path) -> Path:
    """Three land-use classes; countries in three regions and one unmapped ("Other"). In-distribution
    years 2010-2012 (train 6, id_val 2, id_test 2 per class), OOD val 2014 (2 per class), OOD test
    2016-2017 (12 per class); plus one sequestered row and one train row inside the OOD period (in
    no wilds split)."""
    d = root / FOLDERS["fmow"][0]
    countries = ("USA", "FRA", "KEN", "XXX")
    recs = []

    def add(split: str, year: int, n: int) -> None:
        for c in range(3):
            for j in range(n):
                recs.append({"split": split, "category": ["airport", "airport_hangar", "barn"][c],
                             "country_code": countries[(j + c) % 4], "year": year + j % 2})

    add("train", 2010, 6)
    add("val", 2011, 2)
    add("test", 2011, 2)
    add("val", 2014, 2)
    add("test", 2016, 12)
    order = list(np.random.default_rng(8).permutation(len(recs)))
    rows = [recs[i] for i in order]
    rows.insert(5, {"split": "seq", "category": "barn", "country_code": "USA", "year": 2012})
    rows.insert(9, {"split": "train", "category": "barn", "country_code": "FRA", "year": 2016})
    out, level = [], 0
    for i, r in enumerate(rows):
        ts = f"{r['year']}-0{1 + i % 9}-1{i % 10}T10:2{i % 10}:00Z"
        out.append({"split": r["split"], "img_filename": f"{r['category']}_{i}_0_rgb.jpg",
                    "img_path": f"{r['split']}/{r['category']}/{r['category']}_{i}/{r['category']}_{i}_0_rgb.jpg",
                    "category": r["category"], "country_code": r["country_code"], "cloud_cover": 0,
                    "timestamp": ts, "lat": 1.0, "lon": 2.0})
        write_image(d / "images" / f"rgb_img_{i}.png", SEQUESTERED if r["split"] == "seq" else level, SIZES["fmow"])
        level += r["split"] != "seq"
    pd.DataFrame(out).to_csv(d / "rgb_metadata.csv", index=False)
    pd.DataFrame({"name": ["United States", "France", "Kenya"], "alpha-2": ["US", "FR", "KE"],
                  "alpha-3": ["USA", "FRA", "KEN"], "region": ["Americas", "Europe", "Africa"]}).to_csv(
        d / "country_code_mapping.csv", index=False)
    return _finish(root, "fmow")


def make_iwildcam(root: Path) -> Path:
    """Classes 0-2 everywhere, class 3 only in the OOD test split (2 images: too few for the pool);
    locations 0-1 in distribution (train 6, id_val 2, id_test 2 per class), 2 for OOD val (2 per
    class), 3-4 for OOD test (12 per class)."""
    d = root / FOLDERS["iwildcam"][0]
    recs = []

    def add(split: str, locations: tuple[int, ...], n: int, classes: tuple[int, ...] = (0, 1, 2)) -> None:
        for c in classes:
            for j in range(n):
                recs.append({"split": split, "location_remapped": locations[j % len(locations)], "y": c})

    add("train", (0, 1), 6)
    add("id_val", (0, 1), 2)
    add("id_test", (0, 1), 2)
    add("val", (2,), 2)
    add("test", (3, 4), 12)
    add("test", (3, 4), 2, classes=(3,))
    order = np.random.default_rng(9).permutation(len(recs))
    out = []
    for i, k in enumerate(order):
        r = recs[k]
        fname = f"8{i:07x}-21bc-11ea-a13a-137349068a90.jpg"
        write_image(d / "train" / fname, i, SIZES["iwildcam"])
        out.append({"split": r["split"], "location_remapped": r["location_remapped"],
                    "location": 100 + r["location_remapped"], "sequence_remapped": i, "sequence": f"seq{i}",
                    "y": r["y"], "datetime": f"2013-0{1 + i % 9}-1{i % 10} 1{i % 10}:06:34.000", "filename": fname,
                    "image_id": fname[:-4]})
    pd.DataFrame(out).to_csv(d / "metadata.csv", index=False)
    pd.DataFrame({"y": [0, 1, 2, 3], "category_id": [0, 2, 3, 7], "name": ["empty", "a", "b", "c"]}).to_csv(
        d / "categories.csv", index=False)
    return _finish(root, "iwildcam")


MAKERS = {"waterbirds": make_waterbirds, "celeba": make_celeba, "camelyon17": make_camelyon17, "fmow": make_fmow,
          "iwildcam": make_iwildcam}


def make(name: str, root: Path) -> Path:
    """Write the fabricated copy of ``name`` under data root ``root``; returns its folder."""
    return MAKERS[name](root)
