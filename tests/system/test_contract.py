"""psutil's promise, held: every OS module answers the same functions, with the same signatures,
so capability code can call `narcissus.system` without knowing which OS it runs on."""

from __future__ import annotations

import importlib
import inspect

import pytest

from narcissus import system
from narcissus.core.oses import OSES

OS_MODULES = ["linux", "darwin", "bsd", "windows", "generic"]


def _signature(module: object, name: str) -> str:
    value = getattr(module, name)
    return str(inspect.signature(value)) if callable(value) and not inspect.isclass(value) else ""


@pytest.mark.parametrize("name", OS_MODULES)
def test_every_os_module_offers_the_whole_contract(name: str) -> None:
    module = importlib.import_module(f"narcissus.system.{name}")
    missing = [item for item in system.CONTRACT if not hasattr(module, item)]
    assert not missing, f"narcissus.system.{name} lacks {missing}"
    assert sorted(module.__all__) == sorted(system.CONTRACT)
    assert isinstance(module.CAPABILITIES, frozenset)


@pytest.mark.parametrize("name", [n for n in OS_MODULES if n != "linux"])
def test_signatures_match_linux(name: str) -> None:
    """Annotations are strings here (`from __future__ import annotations`), so this compares
    parameter names, kinds, defaults and the annotation text."""
    linux = importlib.import_module("narcissus.system.linux")
    module = importlib.import_module(f"narcissus.system.{name}")
    for item in system.CONTRACT:
        assert _signature(module, item) == _signature(linux, item), item


@pytest.mark.parametrize("name", [n for n in OS_MODULES if n != "linux"])
def test_what_an_os_cannot_do_it_says_so(name: str) -> None:
    from narcissus.core.ports import PortRange, PortSet
    from narcissus.errors import UnsupportedError

    module = importlib.import_module(f"narcissus.system.{name}")
    assert frozenset() == module.CAPABILITIES
    assert module.reserved_ports_writable() is False
    with pytest.raises(UnsupportedError, match="Linux"):
        module.trace_self_connects()
    with pytest.raises(UnsupportedError, match="needs Linux"):
        module.trace_bind_failures()
    with pytest.raises(UnsupportedError, match="Linux"):
        module.isolate_network(PortRange(50000, 50000), user_namespace=True)
    with pytest.raises(UnsupportedError, match="only on Linux"):
        module.write_reserved_ports(PortSet([50000]))
    for shield_call in (module.shield_on, module.shield_off, module.shield_status):
        with pytest.raises(UnsupportedError, match="needs Linux"):
            shield_call()
    with pytest.raises(UnsupportedError, match="needs Linux"):
        module.run_shielded(["true"])


def test_the_capabilities_are_named_in_one_vocabulary() -> None:
    known = {"netns", "kill", "trace", "binds", "reserve", "isolate", "shield"}
    assert known >= system.CAPABILITIES
    assert {"netns", "kill", "trace", "reserve", "isolate"} <= system.CAPABILITIES  # Linux CI


def test_every_os_module_reads_settings_of_an_os_with_facts() -> None:
    """Each settings reader names an OS narcissus has a row for (core.oses)."""
    assert system.ephemeral_ports().os in OSES
