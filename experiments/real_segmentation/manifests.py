"""Write the experiment's manifests with absolute paths (run by run.sh and compare.sh).

    python3 experiments/real_segmentation/manifests.py DATA_ROOT OUT

Hippocampus from its dataset.json, one patient per case; CHASE_DB1 with both eyes of a child
(Image_01L, Image_01R) as one patient, so they share a split.
"""

import json
import pathlib
import sys

root, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
out.mkdir(parents=True, exist_ok=True)
hippo = root / "hippocampus"
rows = ["image,mask,patient_id"]
for case in json.loads((hippo / "dataset.json").read_text())["training"]:
    image = (hippo / case["image"]).resolve()
    rows.append(f"{image},{(hippo / case['label']).resolve()},{image.name.split('.')[0]}")
(out / "hippocampus.csv").write_text("\n".join(rows) + "\n")
chase = root / "chase_db1"
rows = ["case,image,mask,patient_id"]
for image in sorted((chase / "images").glob("*.jpg")):
    mask = chase / "manual1" / f"{image.stem}_1stHO.png"
    rows.append(f"{image.stem},{image},{mask},child{image.stem[6:8]}")
(out / "chase_db1.csv").write_text("\n".join(rows) + "\n")
