"""A compiled clone reaction step: C generated for one population, built once, cached.

:class:`~tme.cells.reactions.CloneReactions` describes the pointwise dynamics; its NumPy path makes
some 20 sweeps over memory per clone for each (sub)step. This module writes the same arithmetic
as one C function specialised to the population at hand (every clone, drug, Hill exponent,
EC50, mutation rate and switch is a literal, every loop over clones and drugs unrolled), with
one loop over the dofs that the C compiler vectorises: ``exp`` and ``pow`` are declared SIMD
functions, so GCC calls glibc's vector math library (libmvec) for them. No fast-math:
infinities and NaN propagation are those of the NumPy path, which remains the reference; the
arithmetic differs from it by rounding only (exp(a)·exp(b) is taken as exp(a + b), φ1 from the
e^z at hand, x^1.5 as x·√x), and the tests hold the two together to 1e-11.

It is the approach of FFCx for forms: generate, compile with the system C compiler (the one the
DOLFINx stack already needs), load with :mod:`ctypes`. Built libraries live in
``$TME_CACHE_DIR`` (default ``$XDG_CACHE_HOME/tme`` or ``~/.cache/tme``) under a hash of the
source, the compiler flags and the CPU (``-march=native`` code must not run on another kind of
CPU); they are written under a temporary name and renamed, so ranks that compile at the same
time do not trip over each other.
"""

from __future__ import annotations

import ctypes
import hashlib
import math
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from .. import cache

#: Compiler flags. ``-fno-math-errno`` lets GCC vectorise calls of math functions; no
#: ``-ffast-math``, which would assume away the infinities the Hill terms rely on.
CFLAGS = ("-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math", "-fPIC", "-shared")


def flags() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Compiler flags and libraries for this machine. On x86-64, full-width AVX-512 vectors
    where the CPU has them (GCC otherwise stops at 256 bits): 1.3x faster on the benchmark
    machine, and ignored by CPUs without AVX-512."""
    machine = platform.machine().lower()
    extra = ("-mprefer-vector-width=512",) if machine in ("x86_64", "amd64") else ()
    libs = ("-lmvec", "-lm") if machine in ("x86_64", "amd64", "aarch64", "arm64") else ("-lm",)
    return CFLAGS + extra, libs

#: Dofs per chunk: the chunk's loss rates and decay factors stay in the L1/L2 cache between
#: the kill rates and the substeps.
CHUNK = 512

SYMBOL = "tme_clone_step"


class KernelError(RuntimeError):
    """The compiled kernel cannot be built or loaded (no compiler, a compiler error, ...)."""


# --------------------------------------------------------------------------------------------
# Code generation


def _lit(x: float) -> str:
    """A C double literal that reads back exactly."""
    x = float(x)
    if not math.isfinite(x):
        raise ValueError(f"non-finite constant {x} in the clone kernel")
    return repr(x) if "e" in repr(x) or "." in repr(x) else repr(x) + ".0"


def _power(v: str, n: float) -> str:
    """v^n for v ≥ 0: products and square roots for the common Hill exponents (a hardware
    square root costs a fraction of ``pow``; each is within an ulp or two of it)."""
    whole, half = divmod(n, 1.0)
    if n > 0 and half in (0.0, 0.5) and whole <= 4:
        factors = [v] * int(whole) + ([f"sqrt({v})"] if half else [])
        return f"({' * '.join(factors)})"
    return f"pow({v}, {_lit(n)})"


def _hill(c: str, ec50: float, n: float) -> str:
    """1/(1 + (EC50/max(c, 0))^n), as :func:`tme.cells.reactions.hill` computes it."""
    return f"(1.0 / (1.0 + {_power(f'({_lit(max(ec50, 1e-300))} / POS({c}))', n)}))"


def generate(rx, plan, *, oxygen: bool, immune: bool, necrosis: bool) -> str:
    """C source of one clone step of ``rx`` (a :class:`~tme.cells.reactions.CloneReactions`) for
    the fields present: ``plan`` is the kill plan for them (None without drugs), ``oxygen``
    whether h(o) multiplies growth, ``immune`` whether the effector field kills, ``necrosis``
    whether oxygen below the threshold kills."""
    TINY, LOG_TINY = rx.tiny, math.log(rx.tiny)
    m = rx.model
    K = m.n_clones
    out: list[str] = []
    emit = out.append
    emit("#include <math.h>\n#include <stdint.h>")
    emit('#define SIMD __attribute__((simd("notinbranch"), const, nothrow))')
    emit("SIMD double exp(double);\nSIMD double pow(double, double);")
    # NaN < 0 is false, so NaN passes through as np.maximum(x, 0) lets it
    emit("#define POS(x) ((x) < 0.0 ? 0.0 : (x))")
    emit(f"#define CHUNK {CHUNK}")
    emit(f"void {SYMBOL}(int64_t n, double *restrict N, const double *restrict c, "
         "const double *restrict s, const double *restrict o, const double *restrict e, "
         "double tau, int64_t steps, double *restrict total)\n{")
    emit("  const double ntau = -tau;")
    for i in range(K):
        emit(f"  const double bt{i} = {_lit(rx.retained[i])} * tau;")
    for r, (i, donors) in enumerate(rx.receivers):
        for d, weight in donors:
            emit(f"  const double mw{r}_{d} = {_lit(weight)} * tau;")
    emit(f"  double nl[{K}][CHUNK], dc[{K}][CHUNK], hh[CHUNK];")
    emit("  (void)hh; (void)c; (void)s; (void)o; (void)e;")
    emit("  for (int64_t a = 0; a < n; a += CHUNK) {")
    emit("    const int64_t len = n - a < CHUNK ? n - a : CHUNK;")
    for i in range(K):
        emit(f"    double *restrict N{i} = N + {i} * n + a;")
    # ---- loss rates: kill, immune kill, necrosis; decay factors
    emit("    for (int64_t p = 0; p < len; p++) {")
    emit("      const int64_t d = a + p;")
    loss = [[] for _ in range(K)]
    if oxygen:
        emit(f"      const double ox = POS(o[d]);\n      const double h = ox / (ox + {_lit(m.oxygen_half)});")
        emit("      hh[p] = h;")
    if plan is not None and plan.terms:
        for j in plan.drugs:
            emit(f"      const double x{j} = POS(c[{j} * n + d]);")
        if plan.shield:
            emit("      double S = POS(s[d]);")
            for j, ec50, hn in m.blockers:
                emit(f"      S *= 1.0 - {_hill(f'c[{j} * n + d]', ec50, hn)};")
            emit(f"      S = S / (S + {_lit(m.factor_half)});")
        left = None
        if plan.pumps and m.inhibitors:
            left = "left"
            emit("      double left = 1.0;")
            for j, p, ec50, hn in m.inhibitors:
                emit(f"      left *= {_hill(f'c[{j} * n + d]', ec50, hn)} * {_lit(-p)} + 1.0;")
        for k, (j, i) in enumerate(plan.sources):
            hn = float(m.hill[j])
            if i >= 0:
                # 2 c_in, as tme.cells.reactions._twice_intracellular writes it
                scale = _lit(m.vmax[i] / m.kin)
                beta = f"{left} * {scale} + {_lit(m.km)}" if left else _lit(m.km + m.vmax[i] / m.kin)
                emit(f"      const double b{k} = ({beta}) - x{j};")
                emit(f"      const double k{k} = x{j} * {_lit(4.0 * m.km)};")
                emit(f"      const double a{k} = fabs(b{k});")
                emit(f"      const double v{k} = (a{k} - b{k}) + k{k} / (sqrt(b{k} * b{k} + k{k}) + a{k});")
                emit(f"      const double w{k} = {_power(f'v{k}', hn)};")
            else:
                emit(f"      const double w{k} = {_power(f'x{j}', hn)};")
        for k, (src, p, cyc) in enumerate(plan.weights):
            expr = f"w{src}"
            if p:
                expr = f"(S * {_lit(-p)} + 1.0) * w{src}"
            if cyc:
                expr = f"{expr} * h"
            emit(f"      const double u{k} = {expr};")
        for k, (src, wt, en, users) in enumerate(plan.terms):
            emit(f"      const double T{k} = u{wt} / (w{src} + {_lit(en)});")
            for i, coeff in users:
                loss[i].append(f"({_lit(coeff)} * ntau) * T{k}")
    if immune:
        emit("      const double ee = POS(e[d]);")
        for i, v in enumerate(rx.immune):
            if v > 0:
                loss[i].append(f"({_lit(v)} * ntau) * ee")
    if necrosis:
        rate, threshold = rx.necrosis
        emit(f"      const double nec = o[d] < {_lit(threshold)} ? {_lit(rate)} * ntau : 0.0;")
        for i in range(K):
            loss[i].append("nec")
    for i in range(K):
        emit(f"      const double L{i} = {' + '.join(loss[i]) or '0.0'};")
        emit(f"      nl[{i}][p] = L{i};")
        emit(f"      dc[{i}][p] = L{i} < {_lit(LOG_TINY)} ? {_lit(LOG_TINY)} : L{i};")
    emit("    }")
    # ---- substeps (exponential Heun), as CloneReactions._substep
    tot = " + ".join(f"n{i}" for i in range(K))
    tot1 = " + ".join(f"m{i}" for i in range(K))
    emit("    for (int64_t step = 0; step < steps; step++) {")
    emit("      for (int64_t p = 0; p < len; p++) {")
    for i in range(K):
        emit(f"        double n{i} = N{i}[p];")
    emit(f"        const double F = POS(1.0 - ({tot}));")
    emit("        const double hF = " + ("F * hh[p];" if oxygen else "F;"))
    for i in range(K):
        emit(f"        const double E{i} = exp(bt{i} * hF + dc[{i}][p]);")
        emit(f"        double m{i} = n{i} * E{i};")
    for r, (i, donors) in enumerate(rx.receivers):
        terms = " + ".join(f"(n{rx.donors[d]} * hF) * mw{r}_{d}" for d, _ in donors)
        emit(f"        double q{r} = {terms};")
        emit(f"        m{i} += q{r} * E{i};")
    emit(f"        double F1 = POS(1.0 - ({tot1}));")
    if oxygen:
        emit("        const double hFbar = (F + F1) * 0.5 * hh[p];\n        F1 *= hh[p];")
    else:
        emit("        const double hFbar = (F + F1) * 0.5;")
    for r, (i, donors) in enumerate(rx.receivers):
        terms = " + ".join(f"(m{rx.donors[d]} * F1) * mw{r}_{d}" for d, _ in donors)
        emit(f"        q{r} = (q{r} + {terms}) * 0.5;")
    for i in range(K):
        emit(f"        const double G{i} = bt{i} * hFbar;")
        emit(f"        const double C{i} = exp(G{i} + dc[{i}][p]);")
        emit(f"        n{i} *= C{i};")
    for r, (i, _) in enumerate(rx.receivers):
        # φ1(z) = (e^z − 1)/z at z = G + L: from C = e^z unless |z| is small, where e^z − 1
        # would cancel and the series is exact to rounding (|z|⁴/120 < 1e-14)
        emit(f"        const double z{r} = G{i} + nl[{i}][p];")
        emit(f"        const double f{r} = fabs(z{r}) < 1e-3 ? "
             f"1.0 + z{r} * (0.5 + z{r} * ({_lit(1 / 6)} + z{r} * {_lit(1 / 24)})) : (C{i} - 1.0) / z{r};")
        emit(f"        n{i} += q{r} * f{r};")
    emit(f"        const double t = {tot};")
    emit("        const double scale = t > 1.0 ? t : 1.0;")
    for i in range(K):
        emit(f"        n{i} /= scale;")
        emit(f"        N{i}[p] = n{i} < {_lit(TINY)} ? 0.0 : n{i};")
    emit("      }")
    emit("    }")
    emit("    if (total)")
    emit("      for (int64_t p = 0; p < len; p++)")
    emit(f"        total[a + p] = {' + '.join(f'N{i}[p]' for i in range(K))};")
    emit("  }")
    emit("}")
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------------------------
# Building and loading


def _cpu() -> str:
    """What ``-march=native`` depends on: the CPU's model and feature flags."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.machine() + platform.processor()
    keep = [line for line in text.splitlines() if line.startswith(("model name", "flags"))][:2]
    return platform.machine() + "\n".join(keep)


def compiler() -> str:
    return os.environ.get("CC") or "cc"


_LOADED: dict[str, ctypes.CDLL] = {}


def build(source: str) -> ctypes._CFuncPtr:
    """Compile ``source`` (or find it compiled) and return its step function.

    Raises :class:`KernelError` with the compiler's message when it cannot be built.
    """
    cc = compiler()
    cflags, libs = flags()
    key = hashlib.sha256("\0".join((source, cc, *cflags, *libs, _cpu())).encode()).hexdigest()[:24]
    if key in _LOADED:
        return _function(_LOADED[key])
    folder = cache.directory() / "kernels"
    path = folder / f"clones_{key}.so"
    if not path.exists():
        if shutil.which(cc) is None:
            raise KernelError(f"no C compiler '{cc}' on PATH (set CC, or numerics.reaction_kernel: numpy)")
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise KernelError(f"cannot create the kernel cache {folder}: {exc.strerror} "
                              "(set TME_CACHE_DIR)") from None
        with tempfile.TemporaryDirectory(dir=folder, prefix=".build-") as tmp:
            src, lib = Path(tmp) / "clones.c", Path(tmp) / "clones.so"
            src.write_text(source)
            run = subprocess.run([cc, *cflags, str(src), "-o", str(lib), *libs],
                                 capture_output=True, text=True)
            if run.returncode != 0:
                message = " | ".join((run.stderr or run.stdout).strip().splitlines()[:5])
                raise KernelError(f"{cc} failed on the clone kernel: "
                                  f"{message or f'exit status {run.returncode}, no message'}")
            os.replace(lib, path)   # atomic: a concurrent build of the same key is identical
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as exc:
        raise KernelError(f"cannot load {path}: {exc}") from None
    _LOADED[key] = lib
    return _function(lib)


def _function(lib: ctypes.CDLL):
    f = getattr(lib, SYMBOL)
    f.restype = None
    f.argtypes = [ctypes.c_int64] + [ctypes.c_void_p] * 5 + [ctypes.c_double, ctypes.c_int64,
                                                            ctypes.c_void_p]
    return f


def pointer(a: np.ndarray | None) -> int | None:
    """Address of a C-contiguous float64 array (None for None)."""
    if a is None:
        return None
    if a.dtype != np.float64 or not a.flags.c_contiguous:
        raise ValueError("the compiled clone kernel needs C-contiguous float64 arrays")
    return a.ctypes.data
