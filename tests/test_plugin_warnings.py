"""A broken plugin is reported once per process, however often the plugins are loaded again."""

import warnings

import carl.plugins as plugins


def test_a_failure_is_said_once_per_process(monkeypatch):
    monkeypatch.setattr(plugins._State, "warned", set())
    info = plugins.PluginInfo(name="broken", version="1", module="broken.plugin")
    again = plugins.PluginInfo(name="broken", version="1", module="broken.plugin")  # a reload's fresh record
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plugins._fail(info, "ImportError: no")
        plugins._fail(again, "ImportError: no")
        plugins._fail(info, "a second reason")  # the first reason is kept
    assert [str(w.message) for w in caught] == [
        "carl plugin 'broken' (broken.plugin) failed to load: ImportError: no (see `carl plugins`)"]
    assert info.error == again.error == "ImportError: no"
