"""Treatment strategies of a study (``--strategy`` of ``tme cohort`` and ``tme forecast``).

A strategy is a name and the changes it makes to a scenario, in the order given:
``NAME=FILE.yaml`` (a fragment: a mapping of scenario sections or dotted key paths, merged into
the scenario mapping key by key — a mapping into a mapping, anything else replaces),
``NAME=key.path=value`` (an override, as ``--set``), or ``NAME=`` (the scenario as it is). A
name repeated adds its changes. One parser and one way of applying serve both commands.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..config.scenario import _yaml, apply_override, set_key
from ..config.spec import ScenarioError

#: A strategy's name names its runs' files
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
FORMS = "NAME=FILE.yaml, NAME=key.path=value (repeat NAME for more changes) or NAME= (the scenario as it is)"


@dataclass
class Strategy:
    """``changes``: ('file', path, mapping) or ('set', 'key.path=value') or ('dict', mapping of
    key paths to values), applied in order."""

    name: str
    changes: list = field(default_factory=list)

    @property
    def files(self) -> list[Path]:
        return [c[1] for c in self.changes if c[0] == "file"]

    def describe(self, plain: str = "the scenario as it is") -> str:
        parts = [str(c[1]) if c[0] == "file" else (c[1] if c[0] == "set" else
                 ", ".join(f"{k}={v}" for k, v in c[1].items())) for c in self.changes]
        return "; ".join(parts) or plain


def check_name(name: str, item: str | None = None) -> str:
    if not NAME.fullmatch(str(name)):
        where = f"--strategy {item!r}" if item is not None else f"strategy {name!r}"
        raise ScenarioError(f"{where}: the name {name!r} names files: letters, digits, '_', '.' and '-'")
    return str(name)


def read_fragment(name: str, path: Path) -> dict:
    """A strategy file's mapping (one line naming the file on any error)."""
    where = f"--strategy {name}: {path}"
    try:
        data = _yaml(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ScenarioError(f"{where}: cannot read ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise ScenarioError(f"{where}: not a text file") from None
    except Exception as exc:  # noqa: BLE001 - a YAML error
        raise ScenarioError(f"{where}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ScenarioError(f"{where}: a strategy file is a YAML mapping of scenario sections or key "
                            f"paths (e.g. treatment: ...)")
    return data


def parse(items) -> list[Strategy]:
    """``--strategy`` items -> strategies, in the order their names first appear."""
    out: dict[str, Strategy] = {}
    for item in items or ():
        if not isinstance(item, str) or "=" not in item:
            raise ScenarioError(f"--strategy {item!r}: expected {FORMS}")
        name, spec = (p.strip() for p in item.split("=", 1))
        st = out.setdefault(check_name(name, item), Strategy(name))
        if not spec:
            continue
        head = spec.split("=", 1)[0]
        if "=" in spec and not head.endswith((".yaml", ".yml")):
            st.changes.append(("set", spec))
        elif Path(spec).suffix in (".yaml", ".yml"):
            st.changes.append(("file", Path(spec), read_fragment(name, Path(spec))))
        else:
            raise ScenarioError(f"--strategy {item!r}: {spec!r} is neither a YAML file (.yaml) nor "
                                f"a key.path=value override")
    return list(out.values())


def from_python(strategies: dict) -> list[Strategy]:
    """``{name: change or [changes]}`` (the Python form of ``--strategy``) -> strategies; a
    change is a fragment file (``"x.yaml"``), an override (``"key.path=value"``) or a mapping
    ``{key.path: value}``; None, ``""`` or ``[]``: the scenario as it is."""
    out = []
    for name, spec in strategies.items():
        st = Strategy(check_name(name))
        items = [] if spec is None or spec == "" else ([spec] if isinstance(spec, (str, Path, dict)) else list(spec))
        for item in items:
            if isinstance(item, dict):
                st.changes.append(("dict", item))
            elif str(item).endswith((".yaml", ".yml")) and "=" not in str(item):
                st.changes.append(("file", Path(item), read_fragment(str(name), Path(item))))
            elif isinstance(item, str) and "=" in item:
                st.changes.append(("set", item))
            else:
                raise ScenarioError(f"strategy {name}: {item!r} is neither a YAML file (.yaml), a "
                                    f"key.path=value override nor a mapping of key paths")
        out.append(st)
    return out


def merge(data: dict, fragment: dict, where: str, prefix: str = "") -> list[str]:
    """Merge ``fragment`` into ``data`` in place (mappings key by key, anything else replaces;
    a dotted key is a path); returns the key paths set."""
    paths = []
    for key, value in fragment.items():
        if not isinstance(key, str):
            raise ScenarioError(f"{where}: key {key!r} is not text")
        path = f"{prefix}{key}"
        if "." in key:
            set_key(data, key, copy.deepcopy(value), f"{where}: {path}", where)
            paths.append(path)
        elif isinstance(value, dict) and isinstance(data.get(key), dict):
            paths += merge(data[key], value, where, f"{path}.")
        else:
            data[key] = copy.deepcopy(value)
            paths.append(path)
    return paths


def apply(data: dict, strategy: Strategy) -> tuple[dict, list[str]]:
    """(a copy of the scenario mapping ``data`` with the strategy's changes, the key paths they
    set). The caller validates the result."""
    data = copy.deepcopy(data)
    paths: list[str] = []
    for change in strategy.changes:
        if change[0] == "file":
            paths += merge(data, change[2], f"--strategy {strategy.name}={change[1]}")
        elif change[0] == "dict":
            for key, value in change[1].items():
                set_key(data, key, copy.deepcopy(value), f"strategy {strategy.name}: {key}", "strategy")
                paths.append(key)
        else:
            apply_override(data, change[1])
            paths.append(change[1].split("=", 1)[0].strip())
    return data, paths


def overlap(a: str, b: str) -> bool:
    """Do key paths ``a`` and ``b`` set the same value (one is the other or lies inside it)?"""
    return a == b or a.startswith(b + ".") or b.startswith(a + ".")
