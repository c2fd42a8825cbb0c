"""Module discovery: built-ins plus third-party types from the ``edgeva.modules`` entry points."""

from __future__ import annotations

import sys
import textwrap

import pytest

from edgeva.modules.registry import BUILTIN, load_registry, module_class


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    """A real installed-looking distribution (package + dist-info) on sys.path."""
    pkg = tmp_path / "edgeva_testplugin"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(textwrap.dedent('''
        from typing import Literal
        from edgeva.modules.base import Module, ModuleConfig

        class DoublerConfig(ModuleConfig):
            type: Literal["doubler"] = "doubler"
            factor: int = 2

        class Doubler(Module[DoublerConfig]):
            config_class = DoublerConfig
            def process(self, msg):
                return msg.derive(value=msg.fields["value"] * self.config.factor)

        class MisnamedConfig(ModuleConfig):
            type: Literal["something-else"] = "something-else"

        class Misnamed(Module[MisnamedConfig]):
            config_class = MisnamedConfig
    '''))
    info = tmp_path / "edgeva_testplugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: edgeva-testplugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(textwrap.dedent("""
        [edgeva.modules]
        doubler = edgeva_testplugin:Doubler
        broken = edgeva_testplugin_missing:Nothing
        misnamed = edgeva_testplugin:Misnamed
        decoder = edgeva_testplugin:Doubler
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("edgeva_testplugin", None)


def test_builtins_are_registered():
    reg = load_registry()
    for name in ("decoder", "publish", "tracker", "roi"):
        assert name in BUILTIN and name in reg
        assert reg[name].config_class.model_fields["type"].default == name


def test_third_party_module_from_entry_point(plugin_dir, caplog):
    from edgeva.modules.base import ModuleContext
    from edgeva.schemas.message import Message

    reg = load_registry()
    assert "doubler" in reg
    assert "broken" not in reg and "misnamed" not in reg  # logged, not fatal
    assert reg["decoder"].__module__ == "edgeva.modules.decoder"  # a plugin cannot hijack a built-in
    assert any("broken" in r.message for r in caplog.records)
    cls = module_class("doubler")
    mod = cls(cls.config_class(factor=3), ModuleContext(name="d"))
    assert mod.process(Message(1, fields={"value": 7})).fields["value"] == 21


def test_unknown_type_lists_known_ones():
    with pytest.raises(KeyError, match="known: .*decoder"):
        module_class("nope")
