"""The corpus reads its natural text from installed files only: a missing Debian package is an error that
names the `apt-get install` line, never an installation."""

from __future__ import annotations

import subprocess

import pytest

from temoe.cli.main import main
from temoe.embedded import sources
from temoe.embedded.corpus import Corpus


@pytest.fixture
def no_processes(monkeypatch):
    """Fail the test if anything tries to start a process (apt-get or otherwise)."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"a subprocess was started: {args}")

    for name in ("run", "Popen", "call", "check_call", "check_output"):
        monkeypatch.setattr(subprocess, name, refuse)


def test_missing_package_is_an_error_with_the_install_line(monkeypatch, no_processes):
    monkeypatch.setattr(sources, "missing_packages", lambda packages=None: ["fortunes", "manpages-de"])
    with pytest.raises(sources.MissingSourcesError) as err:
        Corpus(seed=0, natural_chars=2_000)
    message = str(err.value)
    assert "apt-get install --no-install-recommends fortunes manpages-de" in message
    assert "--allow-missing-sources" in message


def test_allow_missing_builds_from_what_is_installed(monkeypatch, no_processes):
    monkeypatch.setattr(sources, "missing_packages", lambda packages=None: ["python3-doc"])
    with pytest.warns(UserWarning, match="apt-get install --no-install-recommends python3-doc"):
        corpus = Corpus(seed=0, natural_chars=2_000, require_sources=False)
    # The Python standard library is always there: the code category never depends on a package.
    assert corpus.prompt_docs["code"]


def test_missing_packages_checks_the_package_doc_directories(monkeypatch, tmp_path):
    real = sources.Path

    def fake_path(p):
        # Redirect /usr/share/doc/<pkg> to an empty temporary directory: every package reads as missing.
        return real(str(p).replace("/usr/share/doc", str(tmp_path)))

    monkeypatch.setattr(sources, "Path", fake_path)
    assert sources.missing_packages() == list(sources.PACKAGES)
    (tmp_path / "fortunes").mkdir()
    assert "fortunes" not in sources.missing_packages()


def test_pretrain_cli_fails_before_training_and_names_the_packages(monkeypatch, tmp_path, capsys,
                                                                   no_processes):
    monkeypatch.setattr(sources, "missing_packages", lambda packages=None: ["fortunes-de"])
    assert main(["pretrain", "--out", str(tmp_path / "run"), "--steps", "1"]) == 2
    err = capsys.readouterr().err
    assert "fortunes-de" in err and "apt-get install" in err
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
