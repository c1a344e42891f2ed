"""The measurements file of ``tme fit``: its columns, units, noise models, and one-line errors."""

import math

import pytest

import tme
from tme.config.treatment import cell_scale
from tme.studies.measurements import mesh_dim, parse_noise, read_measurements


def scenario(**changes):
    base = tme.Scenario(
        name="m", mesh={"kind": "box", "size": ["1 mm", "1 mm", "1 mm"], "cells": [1, 1, 1],
                        "regions": [{"name": "core", "where": "x < 0"}]},
        drugs={"chemo": {"class": "dna_damaging", "diffusivity": "10 um^2/s", "permeability": "1 um/s",
                         "emax": "0.02 1/hour"}},
        tissue={"regions": {"tissue": {"vascular_density": "0.01 1/um"}, "core": {"vascular_density": "0.01 1/um"}}},
        clones={"clones": {"sensitive": {"growth": "0.1 1/day", "initial": 0.3},
                           "resistant": {"growth": "0.05 1/day", "repair": 0.9, "initial": 0.003}}},
        time={"end": "60 day", "dt": "1 day"})
    return base.with_changes(changes) if changes else base


def read(text, noise=None, path="p.csv"):
    return read_measurements(path, noise, text=text)


def test_columns_units_and_standard_deviations():
    m = read("# a comment\ntime [week], burden [mm^3], burden_sd [um^3], resistant_fraction [%], "
             "resistant_fraction_sd [%], fraction_resistant@core\n"
             "0, 0.3, 3e7, 1, 0.5,\n"
             "# between rows\n"
             "2, 0.5, 5e7, , , 0.2\n", dict([parse_noise("fraction_resistant@core=normal:sd=0.05")]))
    assert m.times == [0.0, 2 * 7 * 24.0]
    b, rf, fc = m.observables
    assert (b.kind, b.compares, b.factor) == ("burden", "um**3", pytest.approx(1e-9))
    assert b.values == [0.3, 0.5] and b.sd == [pytest.approx(0.03), pytest.approx(0.05)]
    assert b.sigmas == [pytest.approx(0.1), pytest.approx(0.1)]      # sd / value on the log scale
    assert rf.values == [0.01] and rf.sd == [pytest.approx(0.005)] and rf.rows == [0]
    assert (fc.clone, fc.region, fc.rows, fc.values, fc.sigmas) == ("resistant", "core", [1], [0.2], [0.05])
    assert m.lines == [3, 5] and m.count == 4


def test_noise_models_fill_the_rows_without_an_sd():
    text = "time [day],burden [cell],resistant_fraction\n0,1000,0.1\n7,2000,\n"
    m = read(text, dict([parse_noise("lognormal:cv=0.2"), parse_noise("resistant_fraction=normal:sd=0.05")]))
    assert m.observables[0].sigmas == [pytest.approx(math.sqrt(math.log(1.04)))] * 2
    assert m.observables[1].sigmas == [0.05]
    m = read(text, dict([parse_noise("lognormal:cv=0.2"), parse_noise("fractions=normal:sd=0.01")]))
    assert m.observables[1].sigmas == [0.01]


def test_model_values_in_the_unit_of_the_column():
    """A 3-D burden [µm³] is a volume; a count is volume over clones.cell_volume; a 2-D burden
    [µm²] is an area, and times mesh.thickness a volume."""
    m = read("time [day],burden [mm^3]\n0,1\n", dict([parse_noise("lognormal:cv=0.1")]))
    obs = [{"burden": 2.5e9, "resistant_fraction": 0.0, "clones": {}, "regions": {}}]
    scale3 = cell_scale(3, None, 3000.0)
    assert m.model_values(m.observables[0], obs, scale3, 3) == [pytest.approx(2.5)]
    m = read("time [day],burden [cell]\n0,1\n", dict([parse_noise("lognormal:cv=0.1")]))
    assert m.model_values(m.observables[0], obs, scale3, 3) == [pytest.approx(2.5e9 / 3000.0)]
    scale2 = cell_scale(2, 18.0, 3000.0)
    obs2 = [{"burden": 4e6, "resistant_fraction": 0.0, "clones": {}, "regions": {}}]
    m = read("time [day],burden [mm^2]\n0,1\n", dict([parse_noise("lognormal:cv=0.1")]))
    assert m.model_values(m.observables[0], obs2, scale2, 2) == [pytest.approx(4.0)]
    m = read("time [day],burden [mm^3]\n0,1\n", dict([parse_noise("lognormal:cv=0.1")]))
    assert m.model_values(m.observables[0], obs2, scale2, 2) == [pytest.approx(4e6 * 18.0 * 1e-9)]
    m = read("time [day],fraction_resistant,fraction_resistant@core\n0,0.5,0.5\n",
             dict([parse_noise("fractions=normal:sd=0.1")]))
    obs3 = [{"burden": 1.0, "resistant_fraction": 0.0, "clones": {"sensitive": 3.0, "resistant": 1.0},
             "regions": {"core": {"sensitive": 1.0, "resistant": 1.0}}}]
    assert m.model_values(m.observables[0], obs3, scale3, 3) == [0.25]
    assert m.model_values(m.observables[1], obs3, scale3, 3) == [0.5]


def test_checks_against_the_scenario():
    s = scenario()
    assert mesh_dim(s) == 3
    noise = dict([parse_noise("lognormal:cv=0.1"), parse_noise("fractions=normal:sd=0.1")])
    read("time [day],burden [mm^3],fraction_resistant@core\n0,1,0.1\n", noise).check(s, 3)
    cases = [
        ("time [day],burden [mm^3]\n0,1\n61,1\n", "p.csv: line 3: time 61 day lies after the scenario's time.end (60 day)"),
        ("time [day],burden [mm^2]\n0,1\n", "column 'burden': an area is a burden of a 2-D slice, and this mesh is 3-D"),
        ("time [day],fraction_mdr\n0,0.1\n", "column 'fraction_mdr': no clone 'mdr' in the scenario; clones: sensitive, resistant"),
        ("time [day],fraction_resistant@rim\n0,0.1\n", "column 'fraction_resistant@rim': no region 'rim' in the mesh; regions: core, tissue"),
    ]
    for text, message in cases:
        given = {k: v for k, v in noise.items() if k != "burden" or "burden" in text}
        with pytest.raises(tme.ScenarioError) as e:
            read(text, given).check(s, 3)
        assert message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("text, message", [
    ("", "p.csv: no header row"),
    ("burden [mm^3]\n1\n", "p.csv: line 1: no 'time [UNIT]' column"),
    ("time,burden [mm^3]\n0,1\n", "p.csv: column 'time': give its unit, e.g. 'time [day]'"),
    ("time [mm],burden [mm^3]\n0,1\n", "p.csv: column 'time [mm]': 'mm' is not a unit of time"),
    ("time [day],burden\n0,1\n", "p.csv: column 'burden': give its unit in brackets"),
    ("time [day],burden [s]\n0,1\n", "p.csv: column 'burden [s]': a burden is a volume (mm^3), an area"),
    ("time [day],burden [blorbs]\n0,1\n", "p.csv: column 'burden [blorbs]': cannot read 'blorbs' as a unit"),
    ("time [day],volume [mm^3]\n0,1\n", "p.csv: line 1: unknown column 'volume'"),
    ("time [day],burden [mm^3],burden [mm^3]\n0,1,1\n", "p.csv: line 1: column 'burden' is given twice (columns 2 and 3)"),
    ("time [day],burden_sd [mm^3]\n0,1\n", "p.csv: line 1: column 'burden_sd' has no column 'burden'"),
    ("time [day],burden [mm^3],burden_sd [cell]\n0,1,1\n", "column 'burden_sd [cell]': not the same kind of quantity"),
    ("time [day],burden [mm^3]\n0,abc\n", "p.csv: line 2, column 'burden': 'abc' is not a number (the unit is in the header)"),
    ("time [day],burden [mm^3]\n0,1,2\n", "p.csv: line 2: 3 values for 2 columns"),
    ("time [day],burden [mm^3]\n,1\n", "p.csv: line 2, column 'time': empty"),
    ("time [day],burden [mm^3]\n-1,1\n", "p.csv: line 2, column 'time': -1 day is before the start"),
    ("time [day],burden [mm^3]\n7,1\n\n# c\n3,1\n", "p.csv: line 5, column 'time': 3 day comes before the previous row's time"),
    ("time [day],burden [mm^3]\n0,0\n", "p.csv: line 2, column 'burden': 0 mm^3; a burden is compared on the log scale and must be > 0"),
    ("time [day],burden [mm^3]\n0,nan\n", "p.csv: line 2, column 'burden': 'nan' is not a finite number"),
    ("time [day],resistant_fraction\n0,1.5\n", "p.csv: line 2, column 'resistant_fraction': 1.5 is not a fraction"),
    ("time [day],resistant_fraction [mm]\n0,0.5\n", "column 'resistant_fraction [mm]': a fraction is bare or in [%]"),
    ("time [day],burden [mm^3],burden_sd [mm^3]\n0,,1\n", "p.csv: line 2, column 'burden_sd': a standard deviation without a value"),
    ("time [day],burden [mm^3],burden_sd [mm^3]\n0,1,0\n", "p.csv: line 2, column 'burden_sd': a standard deviation must be > 0"),
    ("time [day],burden [mm^3]\n", "p.csv: no rows of measurements below the header"),
    ("time [day],burden [mm^3]\n0,\n", "p.csv: every measurement cell is empty"),
    ("time [day]\n0\n", "p.csv: line 1: nothing measured"),
    ("time [day],burden [mm^3]\n0,1\n3,1\n", "p.csv: line 2, column 'burden': no standard deviation (no burden_sd value and no --noise lognormal:cv=X)"),
    ("time [day],resistant_fraction\n0,0.1\n", "p.csv: line 2, column 'resistant_fraction': no standard deviation (no resistant_fraction_sd value and no --noise resistant_fraction=normal:sd=X)"),
])
def test_errors_name_file_line_and_column(text, message):
    with pytest.raises(tme.ScenarioError) as e:
        read(text)
    assert message in str(e.value), str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("spec, message", [
    ("gaussian:sd=1", "--noise 'gaussian:sd=1': not a noise model"),
    ("lognormal:sd=0.1", "not a noise model"),
    ("lognormal:cv=-1", "cv must be > 0"),
    ("lognormal:cv=0.1 mm", "--noise 'lognormal:cv=0.1 mm':"),
    ("normal:sd=0.1", "the burden is compared on the log scale; give its noise as lognormal:cv=X"),
    ("resistant_fraction=lognormal:cv=0.1", "a fraction's noise is normal:sd=X"),
])
def test_noise_errors(spec, message):
    with pytest.raises(tme.ScenarioError) as e:
        parse_noise(spec)
    assert message in str(e.value)


def test_noise_for_a_column_the_file_does_not_have():
    with pytest.raises(tme.ScenarioError) as e:
        read("time [day],burden [mm^3]\n0,1\n", dict([parse_noise("lognormal:cv=0.1"),
                                                      parse_noise("resistant_fraction=normal:sd=0.1")]))
    assert "--noise resistant_fraction=...: the file has no column 'resistant_fraction'" in str(e.value)


def test_file_errors(tmp_path):
    with pytest.raises(tme.ScenarioError, match="missing.csv: cannot read"):
        read_measurements(tmp_path / "missing.csv")
    binary = tmp_path / "b.csv"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(tme.ScenarioError, match="b.csv: not a text file"):
        read_measurements(binary)
