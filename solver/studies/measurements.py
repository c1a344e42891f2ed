"""A patient's longitudinal measurements: the file ``tme fit`` reads, and how the model is
compared with it.

The file is CSV with a header row; lines starting with ``#`` are comments (anywhere). Each
column names what it holds and, in brackets, its unit::

    # imaging every 4 weeks, a biopsy at diagnosis and at day 84
    time [day], burden [mm^3], burden_sd [mm^3], resistant_fraction, resistant_fraction_sd
    0,    0.303, 0.03,  0.01, 0.005
    28,   0.251, 0.025, ,
    84,   0.049, 0.005, 0.35, 0.05

Columns (every one but ``time`` is optional; an empty cell is "not measured then"):

- ``time [UNIT]``: when, in any unit of time (``day``, ``week``, ``hour``), from the start of
  the scenario (t = 0); required.
- ``burden [UNIT]``: the tumour burden, as a volume (``mm^3``, ``cm^3``, ``um^3``), an area
  (``mm^2``: a 2-D slice, only for a 2-D mesh) or a cell count (``cell``).
- ``resistant_fraction``: the fraction of the tumour in resistant clones (a bare fraction, or
  ``resistant_fraction [%]``).
- ``fraction_<clone>`` and ``fraction_<clone>@<region>``: the fraction of one clone in the whole
  tumour, or in a region of the mesh (``regions.csv`` names them), as sequencing a biopsy gives
  it (bare, or ``[%]``).
- ``<column>_sd``: the standard deviation of a measurement, in the same kind of unit
  (``burden_sd [mm^3]``; bare or ``[%]`` for a fraction). Where a row has none, the noise model
  given for that column (``--noise``) applies.

The model's burden is ∫ N_tot dx [µm^d]; it becomes the measured quantity through the
scenario's :class:`~tme.config.treatment.CellScale` (a 2-D burden times ``mesh.thickness`` is a
volume, a volume over ``clones.cell_volume`` a count), as ``burden_cells`` in ``timeseries.csv``.

Residuals (each measurement one, weighted by its standard deviation):

- burden, on the log scale: r = (ln B_model − ln B_data) / σ_log, with σ_log = sd / B_data
  from an sd column (first order), or σ_log = sqrt(ln(1 + cv²)) for the noise model
  ``lognormal:cv=X`` (ln B_data ~ N(ln B_model, σ_log²): cv is the coefficient of variation of
  B_data / B_model);
- fractions, linear: r = (f_model − f_data) / sd, with sd from the column or ``normal:sd=X``.

Any error in the file is one line naming the file, the line and the column. Pure: no DOLFINx.
"""

from __future__ import annotations

import csv
import io
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..config.spec import ScenarioError
from ..config.units import parse_quantity, read

#: What a burden column may be measured in: name -> (base unit the model compares in, dimension text)
BURDEN_KINDS = {"volume": "um**3", "area": "um**2", "cells": "cell"}

_HEADER = re.compile(r"^\s*([^\[\]]+?)\s*(?:\[\s*([^\[\]]*?)\s*\])?\s*$")
_FRACTION = re.compile(r"^fraction_([A-Za-z_][A-Za-z0-9_]*?)(?:@([A-Za-z_][A-Za-z0-9_]*))?$")


@dataclass(frozen=True)
class Noise:
    """A noise model: ``kind`` 'lognormal' (parameter ``cv``) or 'normal' (parameter ``sd``)."""

    kind: str
    value: float
    text: str

    def __str__(self) -> str:
        return self.text


def parse_noise(text: str) -> tuple[str, Noise]:
    """``[COLUMN=]lognormal:cv=X`` or ``[COLUMN=]normal:sd=X`` -> (column, noise); the column
    is ``burden`` when not named, ``fractions`` for every fraction column."""
    valid = "write e.g. --noise lognormal:cv=0.1 (burden) or --noise resistant_fraction=normal:sd=0.05"
    if not isinstance(text, str):
        raise ScenarioError(f"--noise {text!r}: {valid}")
    column, spec = "burden", text.strip()
    head = spec.split(":", 1)[0]
    if "=" in head:
        column, spec = (p.strip() for p in spec.split("=", 1))
    m = re.fullmatch(r"(lognormal|normal)\s*:\s*(cv|sd)\s*=\s*(.+)", spec)
    if not m or (m.group(1), m.group(2)) not in (("lognormal", "cv"), ("normal", "sd")):
        raise ScenarioError(f"--noise {text!r}: not a noise model; {valid}")
    try:
        value = parse_quantity(m.group(3).strip(), "dimensionless")
    except ValueError as exc:
        raise ScenarioError(f"--noise {text!r}: {exc}; the parameter is a bare number "
                            f"(a fraction's sd, or a cv)") from None
    if not value > 0:
        raise ScenarioError(f"--noise {text!r}: {m.group(2)} must be > 0")
    if column == "burden" and m.group(1) != "lognormal":
        raise ScenarioError(f"--noise {text!r}: the burden is compared on the log scale; give its "
                            f"noise as lognormal:cv=X (or a burden_sd column)")
    if column != "burden" and m.group(1) != "normal":
        raise ScenarioError(f"--noise {text!r}: a fraction's noise is normal:sd=X (an absolute "
                            f"standard deviation), not {m.group(1)}")
    return column, Noise(m.group(1), value, spec)


@dataclass
class Observable:
    """One measured column: what it is, its values and their standard deviations.

    ``kind``: 'burden', 'resistant_fraction' or 'fraction'; ``clone`` and ``region`` for a
    clone's fraction (region None: the whole tumour). ``rows[i]`` indexes
    :attr:`Measurements.times`; ``values`` and ``sd`` are in ``unit`` (burden) or fractions.
    """

    column: str
    kind: str
    unit: str
    rows: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    sd: list[float | None] = field(default_factory=list)
    clone: str | None = None
    region: str | None = None
    #: burden: the model's quantity it is compared with ('um**3', 'um**2' or 'cell') and the
    #: factor from that quantity to ``unit``
    compares: str | None = None
    factor: float = 1.0
    #: the standard deviation of each residual's denominator (see :meth:`sigma`), and the noise
    #: model that gave those of the rows without an sd
    sigmas: list[float] = field(default_factory=list)
    noise: Noise | None = None

    @property
    def log_scale(self) -> bool:
        return self.kind == "burden"

    def sigma(self, noise: Noise | None, line_of) -> list[float]:
        """The standard deviation of each residual's denominator: σ_log for the burden, the
        absolute sd for a fraction (``line_of(i)`` names the file line of value i)."""
        out = []
        for k, (v, sd) in enumerate(zip(self.values, self.sd)):
            if sd is not None:
                out.append(sd / v if self.log_scale else sd)
            elif noise is not None:
                out.append(math.sqrt(math.log1p(noise.value ** 2)) if noise.kind == "lognormal"
                           else noise.value)
            else:
                kind = "lognormal:cv=X" if self.log_scale else "normal:sd=X"
                raise ScenarioError(f"{line_of(k)}, column '{self.column}': no standard deviation "
                                    f"(no {self.column}_sd value and no --noise "
                                    f"{'' if self.column == 'burden' else self.column + '='}{kind})")
        return out


@dataclass
class Measurements:
    """The measurements of one patient: the times [hour] and the measured columns."""

    path: str
    times: list[float]
    time_unit: str
    observables: list[Observable]
    lines: list[int]       # the file line of each time

    def line_of(self, row: int) -> str:
        return f"{self.path}: line {self.lines[row]}"

    @property
    def count(self) -> int:
        return sum(len(o.values) for o in self.observables)

    def clones_and_regions(self) -> tuple[set[str], set[str]]:
        clones = {o.clone for o in self.observables if o.clone is not None}
        regions = {o.region for o in self.observables if o.region is not None}
        return clones, regions

    def check(self, scenario, dim: int | None) -> None:
        """Refuse what the scenario cannot be compared with: a time after ``time.end``, a
        clone it does not have, a fraction without clones, an area on a 3-D mesh, a fraction
        per region of a region the mesh does not declare (when the scenario names them)."""
        end = scenario.time.end
        for i, t in enumerate(self.times):
            if t > end * (1 + 1e-12):
                raise ScenarioError(f"{self.line_of(i)}: time {t / 24.0:g} day lies after the scenario's "
                                    f"time.end ({end / 24.0:g} day); lengthen time.end (--set "
                                    f"time.end=...) or leave the row out")
        clones = list(scenario.clones.clones) if scenario.clones is not None else []
        for o in self.observables:
            if not clones:
                raise ScenarioError(f"{self.path}: column '{o.column}': the scenario has no clones, "
                                    f"so it has no tumour burden to compare")
            if o.clone is not None and o.clone not in clones:
                raise ScenarioError(f"{self.path}: column '{o.column}': no clone {o.clone!r} in the "
                                    f"scenario; clones: {', '.join(clones)}")
            if o.kind == "resistant_fraction" and not any(scenario.clones.resistant()):
                raise ScenarioError(f"{self.path}: column '{o.column}': no clone of the scenario "
                                    f"carries a resistance mechanism")
            if o.kind == "burden" and o.compares == "um**2" and dim is not None and dim != 2:
                raise ScenarioError(f"{self.path}: column '{o.column}': an area is a burden of a "
                                    f"2-D slice, and this mesh is {dim}-D; give a volume (mm^3) or "
                                    f"a cell count (cell)")
        regions = _declared_regions(scenario)
        for o in self.observables:
            if o.region is not None and regions is not None and o.region not in regions:
                raise ScenarioError(f"{self.path}: column '{o.column}': no region {o.region!r} in "
                                    f"the mesh; regions: {', '.join(sorted(regions))}")

    def model_values(self, o: Observable, observed: list, scale, dim: int) -> list[float]:
        """The model's value of observable ``o`` at each of its rows, in its unit, from the
        run's observations (``observed[row]``: see :func:`tme.studies.fit.observe`)."""
        out = []
        for row in o.rows:
            obs = observed[row]
            if o.kind == "burden":
                b = obs["burden"]
                if o.compares == "cell":
                    q = scale.cells(b)
                elif o.compares == "um**3":
                    q = b * scale.volume_per_burden
                else:
                    if dim != 2:
                        raise ScenarioError(f"{self.path}: column '{o.column}': an area is a burden "
                                            f"of a 2-D slice, and this mesh is {dim}-D")
                    q = b
                out.append(q * o.factor)
            elif o.kind == "resistant_fraction":
                out.append(obs["resistant_fraction"])
            else:
                amounts = obs["clones"] if o.region is None else obs["regions"].get(o.region)
                if amounts is None:
                    raise ScenarioError(f"{self.path}: column '{o.column}': the mesh has no region "
                                        f"{o.region!r} (see regions.csv of a run)")
                total = sum(amounts.values())
                out.append(amounts[o.clone] / total if total > 0 else 0.0)
        return out


def _declared_regions(scenario) -> set[str] | None:
    """The region names a built-in mesh declares (None: known only once the mesh is built)."""
    mesh = scenario.mesh
    if getattr(mesh, "kind", None) == "file":
        return None
    names = {r.name for r in getattr(mesh, "regions", [])}
    names.add("tissue")
    if getattr(mesh, "kind", None) in ("slice2d", "krogh"):
        return None   # vessel walls and other tags are added when the mesh is built
    return names


def mesh_dim(scenario) -> int | None:
    """The dimension of the scenario's mesh where the section says it (None for a mesh file)."""
    mesh = scenario.mesh
    kind = getattr(mesh, "kind", None)
    return {"rectangle": 2, "box": 3, "slice2d": 2, "spheroid": 3}.get(kind, getattr(mesh, "dim", None)
                                                                        if kind == "krogh" else None)


def _column_unit(path: str, name: str, unit: str | None) -> tuple[str, float]:
    """(the model quantity a burden column compares with, factor from it to the column's unit)."""
    if unit is None or not unit.strip():
        raise ScenarioError(f"{path}: column '{name}': give its unit in brackets, e.g. "
                            f"'{name} [mm^3]', '{name} [mm^2]' (a 2-D slice) or '{name} [cell]'")
    try:
        q = read(f"1 {unit}")
    except ValueError:
        raise ScenarioError(f"{path}: column '{name} [{unit}]': cannot read {unit!r} as a unit; write "
                            f"e.g. mm^3, mm^2 or cell") from None
    for base in ("um**3", "um**2", "cell"):
        check = "[cell_count]" if base == "cell" else base
        if hasattr(q, "check") and q.check(check):
            return base, float(1.0 / q.to(base).magnitude)
    raise ScenarioError(f"{path}: column '{name} [{unit}]': a burden is a volume (mm^3), an area "
                        f"(mm^2, for a 2-D slice) or a cell count (cell), not {unit!r}")


def _fraction_factor(path: str, name: str, unit: str | None) -> float:
    if unit is None or unit.strip() in ("", "1", "-"):
        return 1.0
    if unit.strip() == "%":
        return 0.01
    raise ScenarioError(f"{path}: column '{name} [{unit}]': a fraction is bare or in [%]")


def read_measurements(path: str | Path, noise: dict[str, Noise] | None = None,
                      text: str | None = None) -> Measurements:
    """Read and check a measurements file (see the module docstring); ``text`` instead of the
    file's content (a table built in Python). Raises ScenarioError with one line naming the
    file, the line and the column of the first problem."""
    path = str(path)
    if text is None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise ScenarioError(f"{path}: not a text file (a measurements file is CSV text)") from None
        except OSError as exc:
            raise ScenarioError(f"{path}: cannot read ({exc.strerror})") from None
    lines = [(n + 1, ln) for n, ln in enumerate(text.splitlines())
             if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        raise ScenarioError(f"{path}: no header row (expected e.g. 'time [day], burden [mm^3], "
                            f"burden_sd [mm^3]')")
    header_line, header = lines[0]
    names = next(csv.reader(io.StringIO(header)))
    columns = []
    for k, raw in enumerate(names):
        m = _HEADER.match(raw)
        if not m or not m.group(1):
            raise ScenarioError(f"{path}: line {header_line}, column {k + 1}: cannot read the header "
                                f"{raw!r}; write a name and, in brackets, its unit ('time [day]')")
        columns.append((m.group(1).strip(), m.group(2)))
    seen = {}
    for k, (name, _) in enumerate(columns):
        if name in seen:
            raise ScenarioError(f"{path}: line {header_line}: column '{name}' is given twice "
                                f"(columns {seen[name] + 1} and {k + 1})")
        seen[name] = k
    if "time" not in seen:
        raise ScenarioError(f"{path}: line {header_line}: no 'time [UNIT]' column (e.g. 'time [day]')")
    t_unit = columns[seen["time"]][1]
    if t_unit is None:
        raise ScenarioError(f"{path}: column 'time': give its unit, e.g. 'time [day]'")
    try:
        t_factor = parse_quantity(f"1 {t_unit}", "hour", "day")
    except ValueError:
        raise ScenarioError(f"{path}: column 'time [{t_unit}]': {t_unit!r} is not a unit of time; "
                            f"write e.g. 'time [day]'") from None

    observables: dict[str, Observable] = {}
    sds: dict[str, tuple[int, str | None]] = {}
    for k, (name, unit) in enumerate(columns):
        if name == "time":
            continue
        if name.endswith("_sd"):
            sds[name[:-3]] = (k, unit)
            continue
        fm = _FRACTION.match(name)
        if name == "burden":
            compares, factor = _column_unit(path, name, unit)
            observables[name] = Observable(name, "burden", unit, compares=compares, factor=factor)
        elif name == "resistant_fraction":
            observables[name] = Observable(name, "resistant_fraction", "1",
                                           factor=_fraction_factor(path, name, unit))
        elif fm:
            observables[name] = Observable(name, "fraction", "1", clone=fm.group(1), region=fm.group(2),
                                           factor=_fraction_factor(path, name, unit))
        else:
            raise ScenarioError(f"{path}: line {header_line}: unknown column '{name}'; columns: time "
                                f"[UNIT], burden [UNIT], resistant_fraction, fraction_<clone>, "
                                f"fraction_<clone>@<region>, and <column>_sd for any of them")
    sd_factor = {}
    for base, (k, unit) in sds.items():
        if base not in observables:
            raise ScenarioError(f"{path}: line {header_line}: column '{base}_sd' has no column '{base}'")
        o = observables[base]
        if o.kind == "burden":
            compares, factor = _column_unit(path, f"{base}_sd", unit)
            if compares != o.compares:
                raise ScenarioError(f"{path}: column '{base}_sd [{unit}]': not the same kind of "
                                    f"quantity as '{base} [{o.unit}]'")
            sd_factor[base] = o.factor / factor   # sd in the burden's own unit
        else:
            sd_factor[base] = _fraction_factor(path, f"{base}_sd", unit)

    if not observables:
        raise ScenarioError(f"{path}: line {header_line}: nothing measured (no burden, "
                            f"resistant_fraction or fraction_<clone> column)")
    times, file_lines = [], []
    for n, line in lines[1:]:
        cells = next(csv.reader(io.StringIO(line)))
        if len(cells) != len(columns):
            raise ScenarioError(f"{path}: line {n}: {len(cells)} values for {len(columns)} columns")
        row = len(times)

        def number(k, what):
            text_ = cells[k].strip()
            if not text_:
                return None
            try:
                v = float(text_)
            except ValueError:
                raise ScenarioError(f"{path}: line {n}, column '{what}': {text_!r} is not a number "
                                    f"(the unit is in the header)") from None
            if not math.isfinite(v):
                raise ScenarioError(f"{path}: line {n}, column '{what}': {text_!r} is not a finite number")
            return v

        t = number(seen["time"], "time")
        if t is None:
            raise ScenarioError(f"{path}: line {n}, column 'time': empty (every row needs its time)")
        t *= t_factor
        if t < 0:
            raise ScenarioError(f"{path}: line {n}, column 'time': {t / t_factor:g} {t_unit} is before "
                                f"the start of the scenario (t = 0)")
        if times and t < times[-1]:
            raise ScenarioError(f"{path}: line {n}, column 'time': {t / t_factor:g} {t_unit} comes "
                                f"before the previous row's time; list the rows in time order")
        for name, o in observables.items():
            v = number(seen[name], name)
            sd_k = sds.get(name)
            sd = number(sd_k[0], f"{name}_sd") if sd_k is not None else None
            if v is None:
                if sd is not None:
                    raise ScenarioError(f"{path}: line {n}, column '{name}_sd': a standard deviation "
                                        f"without a value in '{name}'")
                continue
            if o.kind == "burden":
                if v <= 0:
                    raise ScenarioError(f"{path}: line {n}, column '{name}': {v:g} {o.unit}; a burden "
                                        f"is compared on the log scale and must be > 0 (leave a burden "
                                        f"below detection empty)")
            else:
                v *= o.factor
                if not 0.0 <= v <= 1.0:
                    raise ScenarioError(f"{path}: line {n}, column '{name}': {v:g} is not a fraction "
                                        f"between 0 and 1")
            if sd is not None:
                sd *= sd_factor[name]
                if not sd > 0:
                    raise ScenarioError(f"{path}: line {n}, column '{name}_sd': a standard deviation "
                                        f"must be > 0")
            o.rows.append(row)
            o.values.append(v)
            o.sd.append(sd)
        times.append(t)
        file_lines.append(n)
    if not times:
        raise ScenarioError(f"{path}: no rows of measurements below the header")
    obs = [o for o in observables.values() if o.values]
    if not obs:
        raise ScenarioError(f"{path}: every measurement cell is empty")
    m = Measurements(path, times, t_unit, obs, file_lines)
    noise = dict(noise or {})
    for column in noise:
        if column != "fractions" and column not in observables:
            raise ScenarioError(f"--noise {column}=...: the file has no column '{column}'; its columns: "
                                f"{', '.join(observables)}")
    for o in obs:
        given = noise.get(o.column) or (noise.get("fractions") if o.kind != "burden" else None)
        o.sigmas = o.sigma(given, lambda k, o=o: m.line_of(o.rows[k]))
        o.noise = given
    return m
