"""The browser harness's pure parts: error normalisation and the stock-page diff, Chromium discovery."""
import os
import stat

import pytest

from iasa.harness.browser import HOW_TO_GET_CHROMIUM, find_chromium, new_errors, normalise_message


def test_messages_lose_the_server_address_and_script_positions():
    a = normalise_message("TypeError: x\n    at f (http://127.0.0.1:41231/assets/index-B.js:58:253162)")
    b = normalise_message("TypeError: x\n    at f (http://127.0.0.1:50000/assets/index-B.js:58:253170)")
    assert a == b == "TypeError: x\n    at f (<server>/assets/index-B.js)"


def test_new_errors_are_counted_as_a_multiset_against_the_stock_page():
    stock = ["HTTP 404 <server>/user.css", "TypeError: id"]
    page = ["HTTP 404 <server>/user.css", "TypeError: id", "TypeError: id", "widget AUDIOUPLOAD failed"]
    assert new_errors(page, stock) == ["TypeError: id", "widget AUDIOUPLOAD failed"]
    assert new_errors(stock, stock) == []


def test_iasa_chromium_must_be_an_executable(tmp_path, monkeypatch):
    not_exec = tmp_path / "chromium"
    not_exec.write_text("#!/bin/sh\n")
    monkeypatch.setenv("IASA_CHROMIUM", str(not_exec))
    with pytest.raises(FileNotFoundError, match="IASA_CHROMIUM=.*not an executable.*apt-get install chromium"):
        find_chromium()
    not_exec.chmod(not_exec.stat().st_mode | stat.S_IXUSR)
    assert find_chromium() == str(not_exec)


def test_no_chromium_on_path_gives_none(monkeypatch, tmp_path):
    monkeypatch.delenv("IASA_CHROMIUM", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert find_chromium() is None
    assert "apt-get install chromium" in HOW_TO_GET_CHROMIUM and os.environ["PATH"] == str(tmp_path)
