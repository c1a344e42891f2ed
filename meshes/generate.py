"""Write meshes/tissue_slice.msh, the example tissue slice shipped with the project.

A 1 mm x 0.6 mm slice (µm, centred on 0) with a tumour nest, its dense ECM capsule, stroma
around it and four vessels, one of them inside the tumour (tumours are poorly vascularised).
Physical surfaces: tumour, dense_ecm, stroma; physical curves: vessel_wall, outer.

    scripts/env-exec python3 meshes/generate.py
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from tme.mesh.build import gmsh_session, slice_geometry  # noqa: E402

SIZE = (1000.0, 600.0)        # µm
H = 30.0                      # element size in the tissue, µm
VESSEL_H = 4.0                # on vessel walls: a dozen or more segments round the smallest vessel
TUMOUR = ((-120.0, 0.0), 190.0)
CAPSULE = 60.0                # thickness of the dense ECM ring around the tumour, µm
VESSELS = [                   # (x, y, radius), µm
    (-120.0, 20.0, 8.0),
    (260.0, -170.0, 14.0),
    (330.0, 160.0, 12.0),
    (-400.0, 210.0, 10.0),
]


def main(out: Path = HERE / "tissue_slice.msh") -> Path:
    (cx, cy), r = TUMOUR
    zones = [("tumour", (cx, cy), r), ("dense_ecm", (cx, cy), r + CAPSULE)]
    with gmsh_session("tissue_slice") as gmsh:
        slice_geometry(SIZE, H, VESSELS, VESSEL_H, zones=zones, background="stroma", split_sides=False)
        gmsh.option.setNumber("Mesh.MshFileVersion", 4.1)
        gmsh.option.setNumber("Mesh.Binary", 0)
        gmsh.write(str(out))
        n = sum(len(tags) for tags in gmsh.model.mesh.getElements(2)[1])
    print(f"wrote {out} ({n} triangles, {out.stat().st_size / 1024:.0f} KiB)")
    return out


if __name__ == "__main__":
    main()
