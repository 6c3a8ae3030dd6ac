"""Project identity: one repository is one project wherever it is opened, and nothing else is."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.request import pathname2url

import pytest

from lightmem_mcp.projects import Project, project_from_cwd, project_from_roots, project_of

ORIGIN = "github.com/owner/app"


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test folder lies in a fresh home, so no repository around the temp dir leaks in."""
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


def make_repo(folder: Path, origin: str | None = None, config: str | None = None) -> Path:
    """A checkout as git leaves it: a `.git` directory with a config, maybe with an origin."""
    git_dir = folder / ".git"
    git_dir.mkdir(parents=True)
    (git_dir / "HEAD").write_text("ref: refs/heads/main\n")
    if config is None:
        config = "[core]\n\trepositoryformatversion = 0\n\tbare = false\n"
        if origin is not None:
            config += f'[remote "origin"]\n\turl = {origin}\n\tfetch = +refs/heads/*:refs/remotes/origin/*\n'
    (git_dir / "config").write_text(config)
    return folder


def make_worktree(main: Path, folder: Path, name: str = "x") -> Path:
    """A linked worktree: a `.git` file pointing into `<main>/.git/worktrees/<name>`, which points back."""
    admin = main / ".git" / "worktrees" / name
    admin.mkdir(parents=True)
    (admin / "commondir").write_text("../..\n")
    (admin / "HEAD").write_text("ref: refs/heads/feature\n")
    folder.mkdir(parents=True)
    (folder / ".git").write_text(f"gitdir: {admin}\n")
    return folder


def project(folder: Path | str) -> Project:
    found = project_of(folder)
    assert found is not None, f"{folder} is not a project"
    return found


def test_the_same_folder_is_the_same_project(home: Path) -> None:
    repo = make_repo(home / "src" / "app", origin=f"https://{ORIGIN}.git")
    link = home / "link-to-app"
    link.symlink_to(repo)

    first, second, through_link = project(repo), project(str(repo)), project(link)

    assert first == second == through_link
    assert through_link.root == repo.resolve()
    assert first.name == "app"
    assert first.key == f"git-remote:{ORIGIN}"


def test_the_id_is_readable_and_short(home: Path) -> None:
    found = project(make_repo(home / "My Big App!"))
    assert found.id.startswith("my-big-app-")
    assert len(found.id) == len("my-big-app-") + 12

    long_folder = home / ("Long name " * 20)
    long_folder.mkdir()
    long_name = project(long_folder)
    assert len(long_name.id) <= 64
    assert long_name.id.isprintable()


def test_a_name_without_ascii_letters_gets_a_plain_slug(home: Path) -> None:
    (home / "项目").mkdir()

    assert project(home / "项目").id.startswith("project-")


def test_repositories_with_the_same_name_are_different_projects(home: Path) -> None:
    work = project(make_repo(home / "work" / "app"))
    play = project(make_repo(home / "play" / "app"))

    assert work.name == play.name == "app"
    assert work.id != play.id


@pytest.mark.parametrize(
    "spelling",
    [
        "git@github.com:owner/app.git",
        "ssh://git@github.com/owner/app",
        "ssh://git@GitHub.com:22/owner/app.git/",
        "https://github.com/owner/app.git",
        "https://user:token@github.com/owner/app/",
        "git://github.com/owner/app",
    ],
)
def test_clones_of_one_repository_are_one_project(home: Path, spelling: str) -> None:
    reference = project(make_repo(home / "a" / "app", origin=f"https://{ORIGIN}"))
    clone = project(make_repo(home / "b" / "app-clone", origin=spelling))

    assert clone.id.removeprefix("app-clone-") == reference.id.removeprefix("app-")
    assert clone.key == reference.key == f"git-remote:{ORIGIN}"
    assert "token" not in clone.key


def test_a_fork_is_another_project(home: Path) -> None:
    upstream = project(make_repo(home / "a" / "app", origin="git@github.com:owner/app.git"))
    fork = project(make_repo(home / "b" / "app", origin="git@github.com:me/app.git"))

    assert fork.id != upstream.id


@pytest.mark.parametrize("origin", [f"git@{ORIGIN.replace('/', ':', 1)}.git", None])
def test_a_worktree_is_the_main_checkouts_project(home: Path, origin: str | None) -> None:
    main = make_repo(home / "app", origin=origin)
    worktree = make_worktree(main, home / "app-feature")

    assert project(worktree).id.removeprefix("app-feature-") == project(main).id.removeprefix("app-")
    assert project(worktree).key == project(main).key
    assert project(worktree).root == worktree.resolve()


def test_a_worktree_with_a_relative_gitdir(home: Path) -> None:
    main = make_repo(home / "app", origin=None)
    worktree = make_worktree(main, home / "wt" / "app")
    (worktree / ".git").write_text("gitdir: ../../app/.git/worktrees/x\n")

    assert project(worktree).id == project(main).id


def test_a_submodule_is_keyed_by_its_own_origin(home: Path) -> None:
    outer = make_repo(home / "app", origin="git@github.com:owner/app.git")
    module_git = outer / ".git" / "modules" / "lib"
    module_git.mkdir(parents=True)
    (module_git / "config").write_text('[remote "origin"]\n\turl = https://github.com/owner/lib.git\n')
    (outer / "lib").mkdir()
    (outer / "lib" / ".git").write_text("gitdir: ../.git/modules/lib\n")

    assert project(outer / "lib").key == "git-remote:github.com/owner/lib"
    assert project(outer / "lib").name == "lib"


def test_a_subfolder_belongs_to_its_repository(home: Path) -> None:
    repo = make_repo(home / "app", origin=f"https://{ORIGIN}")
    deep = repo / "src" / "pkg"
    deep.mkdir(parents=True)

    assert project(deep) == project(repo)


def test_a_folder_without_git_is_keyed_by_its_path(home: Path) -> None:
    notes = home / "notes"
    (notes / "2024").mkdir(parents=True)

    found = project(notes)

    assert found.root == notes.resolve()
    assert found.key == f"path:{notes.resolve()}"
    assert project(notes / "2024").root == (notes / "2024").resolve()


def test_a_repository_without_origin_is_keyed_by_its_git_dir(home: Path) -> None:
    repo = make_repo(home / "app")

    assert project(repo).key == f"git-dir:{(repo / '.git').resolve()}"


def test_a_repository_in_home_does_not_claim_every_folder_under_it(home: Path) -> None:
    make_repo(home, origin="git@github.com:me/dotfiles.git")
    (home / "notes").mkdir()

    assert project(home / "notes").key == f"path:{(home / 'notes').resolve()}"


def test_home_the_filesystem_root_and_missing_folders_are_not_projects(home: Path) -> None:
    (home / "file.txt").write_text("not a folder")

    assert project_of(home) is None
    assert project_of(Path.home()) is None
    assert project_of("/") is None
    assert project_of(home / "missing") is None
    assert project_of(home / "file.txt") is None
    assert project_of("bad\x00path") is None


def test_roots_take_the_first_file_uri_that_is_a_project(home: Path) -> None:
    repo = make_repo(home / "app")
    uris = [
        "https://example.com/app",
        "untitled:Untitled-1",
        "not a uri at all",
        "file://[broken/x",
        f"file://{pathname2url(str(home / 'missing'))}",
        f"file://{pathname2url(str(repo))}",
        f"file://{pathname2url(str(home))}",
    ]

    assert project_from_roots(uris) == project(repo)
    assert project_from_roots(uris[:5]) is None
    assert project_from_roots([]) is None


def test_roots_are_percent_decoded(home: Path) -> None:
    repo = make_repo(home / "my app (v2)")

    uri = "file://" + pathname2url(str(repo))
    assert "%20" in uri
    assert project_from_roots([uri]) == project(repo)
    assert project_from_roots(["FILE://localhost" + pathname2url(str(repo))]) == project(repo)


def test_the_working_directory_is_the_fallback(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = make_repo(home / "app", origin=f"https://{ORIGIN}")
    (repo / "src").mkdir()

    monkeypatch.chdir(repo / "src")
    assert project_from_cwd() == project(repo)
    assert project_from_cwd(repo) == project(repo)

    monkeypatch.chdir(home)
    assert project_from_cwd() is None


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ('[remote "origin"] url = "https://github.com/owner/app" ; comment\n', f"git-remote:{ORIGIN}"),
        ('[Remote "origin"]\n\tURL = git@github.com:owner/app.git\n', f"git-remote:{ORIGIN}"),
        ("[remote.origin]\nurl = https://github.com/owner/app\n", f"git-remote:{ORIGIN}"),
        ('[remote "origin"]\r\n\turl = https://github.com/owner/\\\r\napp.git\r\n', f"git-remote:{ORIGIN}"),
        ('[remote "upstream"]\nurl = https://github.com/other/app\n', None),
        ('[remote "Origin"]\nurl = https://github.com/other/app\n', None),
        ('[remote "origin"\nurl = https://github.com/other/app\n', None),
        ('[remote "origin"]\nurl = "https://github.com/other/app\n', None),
        ('[remote "origin"]\nurl = https://github.com/\\q/app\n', None),
        ('[remote "origin"]\nurl\n', None),
        (
            '\x00\xff garbage [[[\n= x\n]]]\n[remote "origin"]\n9 = x\nurl = git@github.com:owner/app\n',
            f"git-remote:{ORIGIN}",
        ),
        (
            '[remote "origin"]\n\turl = https://github.com/owner/app\n\turl = https://github.com/other/app\n',
            f"git-remote:{ORIGIN}",
        ),
        (
            '[remote "origin"]\n\turl = https://github.com/other/app\n\turl =\n\turl = git@github.com:owner/app\n',
            f"git-remote:{ORIGIN}",
        ),
        ('[remote "origin"]\n\turl = https:///nohost\n', None),
    ],
)
def test_git_config_is_read_as_git_reads_it(home: Path, config: str, key: str | None) -> None:
    repo = make_repo(home / "app", config=config)

    assert project(repo).key == (key or f"git-dir:{(repo / '.git').resolve()}")


def test_unreadable_git_files_fall_back_instead_of_raising(home: Path) -> None:
    broken_file = home / "broken-file"
    broken_file.mkdir()
    (broken_file / ".git").write_bytes(b"\xff\xfe not a gitdir line\n")

    dangling = home / "dangling"
    dangling.mkdir()
    (dangling / ".git").write_text("gitdir: /nowhere/at/all\n")

    config_is_a_folder = make_repo(home / "odd")
    (config_is_a_folder / ".git" / "config").unlink()
    (config_is_a_folder / ".git" / "config").mkdir()

    assert project(broken_file).key == f"path:{broken_file.resolve()}"
    assert project(dangling).key == f"path:{dangling.resolve()}"
    assert project(config_is_a_folder).key == f"git-dir:{(config_is_a_folder / '.git').resolve()}"


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads any file")
def test_a_config_without_read_permission_falls_back(home: Path) -> None:
    repo = make_repo(home / "app", origin=f"https://{ORIGIN}")
    (repo / ".git" / "config").chmod(0)
    try:
        assert project(repo).key == f"git-dir:{(repo / '.git').resolve()}"
    finally:
        (repo / ".git" / "config").chmod(0o644)
