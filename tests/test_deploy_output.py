"""Both deploy scripts build into a fresh folder, or one a marker proves is a bundle they wrote.

A build never deletes a file it did not write: ``--out .`` in a folder holding a user's file
is refused with the file untouched. The default output is under ``build/``, which git ignores.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = {
    "cloudflare": REPO / "deploy" / "cloudflare" / "deploy.py",
    "gcp": REPO / "deploy" / "gcp" / "deploy.py",
}
MARKER = ".refluxo-bundle"


@pytest.fixture(params=sorted(SCRIPTS))
def script(request: pytest.FixtureRequest) -> Path:
    return SCRIPTS[str(request.param)]


def build(script: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(script), "--build-only", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        check=False,
    )


def test_out_dot_with_a_users_file_is_refused_and_the_file_kept(
    script: Path, tmp_path: Path
) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "app.py").write_text("print('mine')")

    result = build(script, "--out", ".", cwd=tmp_path)

    assert result.returncode != 0
    assert "not empty" in result.stderr and "nothing was deleted" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "project"]
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert (tmp_path / "project" / "app.py").read_text() == "print('mine')"


def test_a_fresh_or_empty_folder_becomes_a_marked_bundle(script: Path, tmp_path: Path) -> None:
    for out in (tmp_path / "new" / "bundle", tmp_path / "empty"):
        if out.name == "empty":
            out.mkdir()
        result = build(script, "--out", str(out))
        assert result.returncode == 0, result.stderr
        assert (out / MARKER).is_file()
        assert (out / "refluxo" if (out / "refluxo").exists() else out / "src" / "refluxo").is_dir()


def test_a_marked_bundle_is_rebuilt_whole(script: Path, tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    assert build(script, "--out", str(out)).returncode == 0
    (out / "stale.py").write_text("from an earlier build")

    result = build(script, "--out", str(out))

    assert result.returncode == 0, result.stderr
    assert not (out / "stale.py").exists()
    assert (out / MARKER).is_file()


def test_a_file_as_out_is_refused(script: Path, tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("mine")
    result = build(script, "--out", str(target))
    assert result.returncode != 0
    assert target.read_text() == "mine"


def test_the_default_output_is_under_build_which_git_ignores(script: Path) -> None:
    help_text = subprocess.run(
        [sys.executable, str(script), "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    after_out = " ".join(help_text.rsplit("--out OUT", 1)[1].split())
    default = Path(after_out.split("(default: ", 1)[1].split(")")[0])
    assert default.parent == REPO / "build"
    relative = (default / "wrangler.toml").relative_to(REPO).as_posix()
    ignored = subprocess.run(["git", "check-ignore", "-q", relative], cwd=REPO, check=False)
    assert ignored.returncode == 0, f"{relative} is not ignored by git"
