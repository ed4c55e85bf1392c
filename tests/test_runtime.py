"""st_llm2vec/runtime.py: the machine's threads and bf16, decided alike for every command."""

from __future__ import annotations

from st_llm2vec import runtime


def test_auto_threads_use_the_cores_the_load_average_leaves_free(monkeypatch):
    monkeypatch.setattr(runtime.os, "cpu_count", lambda: 4)
    assert runtime.choose_threads(3) == 3
    assert runtime.choose_threads("2") == 2
    monkeypatch.setattr(runtime.os, "getloadavg", lambda: (0.1, 0.0, 0.0))
    assert runtime.choose_threads("auto") == 4
    monkeypatch.setattr(runtime.os, "getloadavg", lambda: (2.6, 0.0, 0.0))
    assert runtime.choose_threads(None) == 1
    monkeypatch.setattr(runtime.os, "getloadavg", lambda: (9.0, 0.0, 0.0))
    assert runtime.choose_threads("auto") == 1


def test_bf16_auto_follows_the_cpus_bf16_support(monkeypatch):
    assert runtime.resolve_bf16(True) is True and runtime.resolve_bf16("off") is False
    assert runtime.resolve_bf16("on") is True
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: False)
    assert runtime.resolve_bf16("auto") is False
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: True)
    assert runtime.resolve_bf16(None) is True


def test_a_thread_count_that_is_not_a_positive_number_is_an_input_error_naming_the_option():
    import pytest

    from st_llm2vec.errors import InputError

    for bad in ("abc", "0", "-2", "1.5", "", 0, True):
        with pytest.raises(InputError, match=r"^--threads must be a positive whole number or 'auto', got"):
            runtime.choose_threads(bad)
    assert runtime.parse_threads("auto") is None and runtime.parse_threads(" 3 ") == 3
