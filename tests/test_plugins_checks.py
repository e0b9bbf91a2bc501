"""The checks a plugin class goes through, in-process: what ``hpplug_register`` refuses
and why, in one line that names the class and the fix."""

from __future__ import annotations

import pytest

from hpplug import HpplugError, Param, Plugin, discovery, hookimpl, manager
from hpplug.discovery import LOCAL_DISTRIBUTION, PluginEntry


class Typo(Plugin):
    @hookimpl
    def hpplug_lr_facter(self, progress, base_lr):
        return 1.0


class Unmarked(Plugin):
    def hpplug_lr_factor(self, progress, base_lr):
        return 1.0


class WrongArgument(Plugin):
    @hookimpl
    def hpplug_transform_batch(self, batch, step):
        pass


class BadDefault(Plugin):
    params = {"p": Param(float, 1.5, "a probability", min=0.0, max=1.0)}


class NotAParam(Plugin):
    params = {"p": 0.5}


class TooNew(Plugin):
    requires_hpplug = ">=99"


class BadSpecifier(Plugin):
    requires_hpplug = "0.1 or later"


@pytest.mark.parametrize(("cls", "message"), [
    (Typo, "Typo.hpplug_lr_facter matches no hpplug hookspec: did you mean hpplug_lr_factor?"),
    (Unmarked, "Unmarked.hpplug_lr_factor is not marked @hpplug.hookimpl, so it would never be called"),
    (WrongArgument, "WrongArgument.hpplug_transform_batch takes step, which hpplug_transform_batch does not "
                    "pass; it passes: batch, progress"),
    (BadDefault, "BadDefault.params['p']: the default 1.5 is invalid: 1.5 is out of range"),
    (NotAParam, "NotAParam.params['p'] is a float, not an hpplug.Param"),
    (TooNew, "TooNew needs hpplug>=99 (requires_hpplug), but hpplug"),
    (BadSpecifier, "BadSpecifier.requires_hpplug '0.1 or later' is not a version specifier"),
    (object, "object is not a subclass of hpplug.Plugin"),
], ids=lambda v: getattr(v, "__name__", "message"))
def test_register_refuses_a_broken_class_at_once(hpplug_register, cls, message) -> None:
    with pytest.raises(HpplugError) as info:
        hpplug_register("broken", cls)
    text = str(info.value)
    assert text.startswith("plugin 'broken' cannot be registered: ") and message in text
    assert "\n" not in text
    assert "broken" not in discovery.discover()


@pytest.mark.parametrize("name", ["Noise", "my_noise", "-noise", "noise.x", "2x", ""])
def test_plugin_names_are_lowercase_words_joined_by_hyphens(hpplug_register, name) -> None:
    with pytest.raises(HpplugError, match="lowercase letters, digits and hyphens"):
        hpplug_register(name, Plugin)


def test_hooks_may_take_a_subset_of_the_arguments_or_another_name(hpplug_register) -> None:
    class Subset(Plugin):
        @hookimpl
        def hpplug_lr_factor(self, progress):
            return 1.0

        @hookimpl(specname="hpplug_epoch_end", trylast=True)
        def report(self, metrics):
            return {"subset/seen": 1.0}

    hpplug_register("subset", Subset)
    entry = discovery.discover()["subset"]
    assert entry.active and entry.hooks == ["hpplug_epoch_end", "hpplug_lr_factor"]


def test_an_in_process_plugin_wins_over_an_installed_one_until_removed() -> None:
    installed = discovery.discover()["cosine"]
    assert installed.active and installed.distribution == "hpplug-schedulers"

    class MyCosine(Plugin):
        pass

    discovery.register_local("cosine", MyCosine)
    try:
        local = discovery.discover()["cosine"]
        assert (local.cls, local.distribution, local.status) == (MyCosine, LOCAL_DISTRIBUTION, "active")
    finally:
        discovery.unregister_local("cosine")
    assert discovery.discover()["cosine"].distribution == "hpplug-schedulers"


def test_a_prerelease_of_hpplug_satisfies_a_plain_minimum(hpplug_register, monkeypatch) -> None:
    class NeedsOld(Plugin):
        requires_hpplug = ">=0.1"

    monkeypatch.setattr(discovery, "__version__", "0.2.0.dev1")
    hpplug_register("needs-old", NeedsOld)


def test_resolve_says_why_a_plugin_cannot_be_used() -> None:
    catalog = {
        "off": PluginEntry("off", "hpplug-off", "1.0", "hpplug_off:Off", disabled=True),
        "bad": PluginEntry("bad", "hpplug-bad", "2.0", "hpplug_bad:Bad", error="import of hpplug_bad:Bad failed: X"),
        "ok": PluginEntry("ok", "hpplug-ok", "1.0", "hpplug_ok:Ok", cls=Plugin),
    }
    assert [e.status for e in catalog.values()] == ["disabled", "error", "active"]
    with pytest.raises(HpplugError, match=r"plugin 'off' \(hpplug-off\) is not loaded because "
                                          r"HPPLUG_DISABLE_PLUGIN_AUTOLOAD is set: unset it"):
        manager.resolve(catalog, ["off"])
    with pytest.raises(HpplugError, match=r"plugin 'bad' \(hpplug-bad 2.0\) cannot be used: import of"):
        manager.resolve(catalog, ["bad"])
    with pytest.raises(HpplugError, match=r"unknown plugin 'nope'; installed plugins: ok \(models and data sets: --model, --dataset\)$"):
        manager.resolve(catalog, ["nope"])
    assert manager.resolve(catalog, ["ok"]) == [catalog["ok"]]


@pytest.mark.parametrize(("value", "disabled"), [("1", True), ("true", True), ("yes", True),
                                                 ("", False), ("0", False), ("false", False)])
def test_the_autoload_switch_reads_like_pytests(monkeypatch, value, disabled) -> None:
    monkeypatch.setenv(discovery.DISABLE_AUTOLOAD_ENV, value)
    assert discovery.third_party_disabled() is disabled
