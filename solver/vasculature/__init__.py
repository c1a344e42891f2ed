"""Vessel networks: blood flow, delivery along the vessels and the 3-D–1-D exchange with tissue.

One module per noun (the ``vasculature:`` section of a scenario is :mod:`tme.config.vasculature`):

- :mod:`.network`   the network itself: nodes, segments with radius, boundary conditions (pure);
- :mod:`.files`     reading VTK PolyData and node/segment tables, writing the network (pure);
- :mod:`.generator` a seeded synthetic network for a tissue block, abnormal inside a tumour (pure);
- :mod:`.flow`      Poiseuille flow with the in-vivo apparent viscosity of Pries et al. (pure);
- :mod:`.transit`   the plasma level along the network: extraction and mixing in flow order (pure);
- :mod:`.exchange`  the network as a line source on a P1 space: quadrature, well model (DOLFINx);
- :mod:`.verification` the closed-form checks that ``tme verify`` reports (DOLFINx).

Units: lengths µm, time hour, pressure mmHg, flow µm³/h, concentrations µM (the solver's base
units; pressure is kept in mmHg, the unit every vascular source uses, and viscosity in mmHg·h so
that Poiseuille's law needs no factor).
"""
