"""Pure logic of the test product builder: Debian metadata -> RPM spec syntax."""

from __future__ import annotations

import tarfile

import pytest

from testproduct import debrpm, resolve, setuppkg
from testproduct import translate as tr

# ------------------------------------------------------------------ versions


@pytest.mark.parametrize(
    "deb, evr",
    [
        ("1.2-3", tr.EVR(None, "1.2", "3")),
        ("1:2.66-4+deb12u3+b1", tr.EVR("1", "2.66", "4+deb12u3+b1")),
        ("252.39-1~deb12u2", tr.EVR(None, "252.39", "1~deb12u2")),
        ("0~20171227-0.3+deb12u1", tr.EVR(None, "0~20171227", "0.3+deb12u1")),
        ("1.5.82", tr.EVR(None, "1.5.82", "0")),  # native package
        ("2.0-beta-1", tr.EVR(None, "2.0_beta", "1")),  # '-' inside upstream
        ("3:1.0:2-1", tr.EVR("3", "1.0_2", "1")),  # ':' inside upstream (epoch present)
        ("0:1.0-1", tr.EVR(None, "1.0", "1")),  # epoch 0 is no epoch
    ],
)
def test_deb_to_evr(deb: str, evr: tr.EVR) -> None:
    assert tr.deb_to_evr(deb) == evr


def test_deb_to_evr_in_dependency_has_no_release_for_native() -> None:
    assert tr.deb_to_evr("2.34", native_release=None) == tr.EVR(None, "2.34", None)
    assert str(tr.deb_to_evr("1:2.34", native_release=None)) == "1:2.34"
    assert str(tr.deb_to_evr("2.34-1")) == "2.34-1"


def test_deb_to_evr_rejects_garbage() -> None:
    with pytest.raises(ValueError):
        tr.deb_to_evr("")


@pytest.mark.parametrize(
    "a, b, want",
    [
        ("1.0", "1.0", 0),
        ("1.0", "1.1", -1),
        ("1.10", "1.9", 1),
        ("1.0~rc1", "1.0", -1),
        ("1.0~rc1", "1.0~rc2", -1),
        ("1.0~~", "1.0~", -1),
        ("1.0+b1", "1.0", 1),
        ("1.0a", "1.0", 1),
        ("1.0", "1.0a", -1),
        ("1.0.1", "1.0a", 1),  # numeric segment beats alpha
        ("001", "1", 0),
        ("1.0^1", "1.0", 1),
        ("1.0^1", "1.0.1", -1),
        ("1_0", "1.0", 0),  # separators are equal
    ],
)
def test_rpmvercmp(a: str, b: str, want: int) -> None:
    assert tr.rpmvercmp(a, b) == want
    assert tr.rpmvercmp(b, a) == -want


def test_evr_cmp_epoch_and_missing_release() -> None:
    E = tr.EVR
    assert tr.evr_cmp(E("1", "1.0", "1"), E(None, "9.9", "9")) == 1  # epoch wins
    assert tr.evr_cmp(E(None, "1.0", "5"), E(None, "1.0", None)) == 0  # no release: not compared
    assert tr.evr_cmp(E(None, "1.0", "5"), E(None, "1.0", "6")) == -1
    assert tr.evr_cmp(E("0", "1.0", None), E(None, "1.0", None)) == 0


# -------------------------------------------------------------- dependencies


def test_parse_dep_field() -> None:
    groups = tr.parse_dep_field("libc6 (>= 2.34), awk | mawk,\n python3:any (<< 3.12~), foo [amd64] <!nocheck>")
    assert groups == [
        [tr.DebDep("libc6", ">=", "2.34")],
        [tr.DebDep("awk"), tr.DebDep("mawk")],
        [tr.DebDep("python3", "<<", "3.12~")],
        [tr.DebDep("foo")],
    ]
    assert tr.parse_dep_field("") == []
    with pytest.raises(ValueError):
        tr.parse_dep_field("libc6 (>= 2.34")


@pytest.mark.parametrize(
    "field, want",
    [
        ("libc6 (>= 2.34)", ["libc6 >= 2.34"]),
        ("libcap2 (>= 1:2.63)", ["libcap2 >= 1:2.63"]),
        ("libfoo (= 1.2-3)", ["libfoo = 1.2-3"]),
        ("libfoo (<< 1.3~)", ["libfoo < 1.3~"]),
        ("libfoo (>> 1.2+dfsg-1)", ["libfoo > 1.2+dfsg-1"]),
        ("libfoo (<= 2)", ["libfoo <= 2"]),
        ("a | b (>= 2)", ["(a or b >= 2)"]),
        ("a, a", ["a"]),
        ("a:any", ["a"]),
    ],
)
def test_translate_without_universe(field: str, want: list[str]) -> None:
    assert tr.translate_field(field) == want


def _universe() -> tr.Universe:
    u = tr.Universe()
    u.add("libc6", tr.deb_to_evr("2.36-9+deb12u4"))
    u.add("mawk", tr.deb_to_evr("1.3.4.20200120-3.1"))
    u.add("awk", None)  # unversioned virtual, provided by mawk
    u.add("libudev1", tr.deb_to_evr("252.39-1~deb12u2"))
    u.add("libcap2", tr.deb_to_evr("1:2.66-4"))
    u.add("libweird", tr.deb_to_evr("1.0a-1"))
    return u


@pytest.mark.parametrize(
    "field, want",
    [
        # alternatives outside the repository are dropped
        ("gawk | mawk", ["mawk"]),
        ("awk | nawk", ["awk"]),
        ("initramfs-tools | linux-initramfs-tool", []),
        # satisfiable constraints are kept as they are
        ("libc6 (>= 2.34)", ["libc6 >= 2.34"]),
        ("libudev1 (>= 252~rc1)", ["libudev1 >= 252~rc1"]),
        ("libudev1 (= 252.39-1~deb12u2)", ["libudev1 = 252.39-1~deb12u2"]),
        ("libcap2 (>= 1:2.10)", ["libcap2 >= 1:2.10"]),
        ("awk (>= 1.0)", ["awk >= 1.0"]),  # rpm: unversioned provides satisfy all
        # unsatisfiable ones (epoch missing, dpkg/rpm ordering differences) lose the version
        ("libcap2 (>= 2.10)", ["libcap2 >= 2.10"]),
        ("libcap2 (>= 2:1.0)", ["libcap2"]),
        ("libweird (>= 1.0.1)", ["libweird"]),
        ("libc6 (<< 2.30)", ["libc6"]),
        ("libc6 (>= 2.34), gawk | mawk (>= 1.3)", ["libc6 >= 2.34", "mawk >= 1.3"]),
    ],
)
def test_translate_against_universe(field: str, want: list[str]) -> None:
    assert tr.translate_field(field, _universe()) == want


def test_translate_provides() -> None:
    assert tr.translate_provides("awk, libfoo-abi (= 1:2.0-1), bar (= 3)") == [
        ("awk", None),
        ("libfoo-abi", tr.EVR("1", "2.0", "1")),
        ("bar", tr.EVR(None, "3", "0")),
    ]


# ---------------------------------------------------------------- files


@pytest.mark.parametrize(
    "path, want",
    [
        ("/usr/bin/ls", "/usr/bin/ls"),
        ("/usr/bin/[", "/usr/bin/[[]"),
        ("/a/b[1]", "/a/b[[]1[]]"),
        ("/a/*?", "/a/[*][?]"),
        ("/a/{x,y}", "/a/[{]x,y[}]"),
        ("/a/100%", "/a/100%%"),
        ("/a/%{name}", "/a/%%[{]name[}]"),
        (
            "/usr/lib/systemd/system/system-systemd\\x2dcryptsetup.slice",
            "/usr/lib/systemd/system/system-systemd?x2dcryptsetup.slice",
        ),
        ("/a/with space", '"/a/with space"'),
    ],
)
def test_escape_files_path(path: str, want: str) -> None:
    assert tr.escape_files_path(path) == want


def test_escape_files_path_rejects_unrepresentable() -> None:
    with pytest.raises(ValueError):
        tr.escape_files_path('/a/"quoted"')


@pytest.mark.parametrize(
    "path, want",
    [
        ("/bin/sh", "/usr/bin/sh"),
        ("/bin", "/usr/bin"),
        ("/sbin/ldconfig", "/usr/sbin/ldconfig"),
        ("/lib/x86_64-linux-gnu/libc.so.6", "/usr/lib/x86_64-linux-gnu/libc.so.6"),
        ("/lib64/ld-linux-x86-64.so.2", "/usr/lib64/ld-linux-x86-64.so.2"),
        ("/library/x", "/library/x"),
        ("/usr/bin/ls", "/usr/bin/ls"),
        ("/var/run/utmp", "/run/utmp"),
        ("/var/lock", "/run/lock"),
        ("/var/running", "/var/running"),
        ("/etc/passwd", "/etc/passwd"),
    ],
)
def test_merged_path(path: str, want: str) -> None:
    assert tr.merged_path(path) == want


def test_lang_and_doc() -> None:
    assert tr.lang_of("/usr/share/locale/de/LC_MESSAGES/x.mo") == "de"
    assert tr.lang_of("/usr/share/locale/pt_BR/LC_MESSAGES/x.mo") == "pt_BR"
    assert tr.lang_of("/usr/share/locale/sr@latin/LC_MESSAGES/x.mo") == "sr@latin"
    assert tr.lang_of("/usr/share/locale/locale.alias") is None
    assert tr.lang_of("/usr/share/doc/x") is None
    assert tr.is_doc("/usr/share/doc/bash/copyright")
    assert tr.is_doc("/usr/share/man/man1/ls.1.gz")
    assert not tr.is_doc("/usr/share/docs")


def test_description_and_control() -> None:
    fields = tr.parse_control("Package: foo\nVersion: 1.0-1\nDescription: short one\n first line\n .\n 100% more\n")
    assert fields["Package"] == "foo"
    summary, body = tr.debian_description(fields["Description"])
    assert summary == "short one"
    assert body == "first line\n\n100% more"
    assert tr.spec_text(body).endswith("100%% more")


# ------------------------------------------------------- unpack planning


def _ti(name: str, kind: bytes = tarfile.REGTYPE, link: str = "", mode: int = 0o755) -> tarfile.TarInfo:
    t = tarfile.TarInfo(name)
    t.type = kind
    t.linkname = link
    t.mode = mode
    t.uname = t.gname = "root"
    return t


def test_plan_usr_merge_collisions() -> None:
    members = [
        _ti("./", tarfile.DIRTYPE),
        _ti("./bin/", tarfile.DIRTYPE),
        _ti("./bin/foo"),
        _ti("./usr/bin/", tarfile.DIRTYPE),
        _ti("./usr/bin/foo", tarfile.SYMTYPE, "/bin/foo"),  # would point at itself
        _ti("./lib/systemd/systemd-x", tarfile.SYMTYPE, "../../usr/lib/x/y"),
        _ti("./sbin/bar", tarfile.SYMTYPE, "../bin/foo"),
        _ti("./lib/udev/rules.d/55-dm.rules"),
        _ti("./usr/lib/udev/rules.d/55-dm.rules", tarfile.LNKTYPE, "./lib/udev/rules.d/55-dm.rules"),
        _ti("./var/run/", tarfile.DIRTYPE),
    ]
    plan = debrpm._plan(members, "test")
    assert "/" not in plan and "/usr/bin" in plan
    assert plan["/usr/bin"][0].orig == "/usr/bin"
    foo = plan["/usr/bin/foo"][0]
    assert foo.kind == "f" and foo.orig == "/bin/foo"
    # a relative link moved under /usr still reaches the same place
    assert plan["/usr/lib/systemd/systemd-x"][0].target == "../x/y"
    assert plan["/usr/sbin/bar"][0].target == "../bin/foo"
    # a hard link onto the same merged path collapses to one file
    rules = plan["/usr/lib/udev/rules.d/55-dm.rules"][0]
    assert rules.kind == "f"
    assert "/var/run" not in plan and "/run" not in plan


def test_files_section() -> None:
    E = debrpm.Entry
    text = debrpm.files_section(
        [
            E("/usr/share/locale/de/LC_MESSAGES/a.mo", "", "f", 0o644, "root", "root"),
            E("/usr/share/doc/a", "", "d", 0o755, "root", "root"),
            E("/usr/share/doc/a/copyright", "", "f", 0o644, "root", "root"),
            E("/usr/bin/[", "", "f", 0o755, "root", "root"),
            E("/etc/a.conf", "", "f", 0o644, "root", "root"),
        ],
        config=["/etc/a.conf"],
    )
    assert text.splitlines() == [
        "%files",
        "%defattr(-,root,root,-)",
        "%config(noreplace) /etc/a.conf",
        "/usr/bin/[[]",
        "%dir /usr/share/doc/a",
        "%doc /usr/share/doc/a/copyright",
        "%lang(de) /usr/share/locale/de/LC_MESSAGES/a.mo",
    ]


def test_spec_for_macros_are_escaped() -> None:
    spec = debrpm.spec_for(
        name="foo",
        evr=tr.EVR("1", "2.0", "3"),
        arch="noarch",
        summary="100% %{evil}",
        description="uses %post",
        license="x",
        requires=["a >= 1", "(b or c)"],
        requires_pre=["d"],
        provides=["/bin/foo"],
        files="%files\n",
    )
    assert "Epoch: 1\nVersion: 2.0\nRelease: 3\n" in spec
    assert "Summary: 100%% %%{evil}" in spec
    assert "\nuses %%post\n" in spec
    assert "AutoReqProv: no" in spec and "BuildArch: noarch" in spec
    assert "Requires(pre): d\n" in spec and "Requires: (b or c)\n" in spec
    assert "Provides: /bin/foo\n" in spec


def test_parse_simulation() -> None:
    text = (
        "Inst libc6 (2.36-9+deb12u4 Debian:12.5/stable [amd64]) []\n"
        "Conf libc6 (2.36-9+deb12u4 Debian:12.5/stable [amd64])\n"
        "Inst libcap2-bin (1:2.66-4 Debian:12.5/stable [amd64])\n"
        "Inst debconf [1.5.81] (1.5.82 Debian:12.5/stable [all])\n"
    )
    pkgs = resolve.parse_simulation(text)
    assert pkgs == [
        resolve.DebPkg("debconf", "1.5.82", "all"),
        resolve.DebPkg("libc6", "2.36-9+deb12u4", "amd64"),
        resolve.DebPkg("libcap2-bin", "1:2.66-4", "amd64"),
    ]
    assert pkgs[2].filename == "libcap2-bin_1%3a2.66-4_amd64.deb"


def test_setup_payload_and_fingerprint() -> None:
    files, links = setuppkg.payload()
    assert links["/bin"] == "usr/bin" and links["/var/run"] == "../run"
    assert links["/etc/systemd/system/multi-user.target.wants/composer-boot-check.service"].endswith(
        "/composer-boot-check.service"
    )
    unit = files["/usr/lib/systemd/system/composer-boot-check.service"][1]
    assert "ConditionKernelCommandLine=composer.check=poweroff" in unit
    assert "COMPOSER-BOOT-OK" in files["/usr/libexec/testproduct/boot-check"][1]
    script = setuppkg.fixups_script([("/usr/sbin/unix_chkpwd", "root", "shadow", 0o2755)])
    assert "root:shadow 2755 /usr/sbin/unix_chkpwd\n" in script
    assert "awk /usr/bin/awk /usr/bin/mawk\n" in script
    assert setuppkg.fingerprint() == setuppkg.fingerprint()


def _staged(tmp_path, name: str, files: dict[str, tuple[str, str, int]]) -> debrpm.Staged:
    """files: path -> (kind, content or link target, mode)"""
    root = tmp_path / name
    entries = {}
    for path, (kind, data, mode) in files.items():
        dst = root / path.lstrip("/")
        if kind == "d":
            dst.mkdir(parents=True, exist_ok=True)
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            if kind == "l":
                dst.symlink_to(data)
            else:
                dst.write_text(data)
        entries[path] = debrpm.Entry(path, path, kind, mode, "root", "root", data if kind == "l" else "")
    return debrpm.Staged(tmp_path / f"{name}.deb", {"Package": name, "Version": "1"}, root, entries, 0)


def test_resolve_conflicts(tmp_path) -> None:
    a = _staged(
        tmp_path,
        "a",
        {
            "/usr": ("d", "", 0o755),
            "/var/log": ("d", "", 0o755),
            "/usr/same": ("f", "x", 0o644),
            "/usr/differs": ("f", "a", 0o644),
            "/usr/link-or-file": ("l", "elsewhere", 0o777),
        },
    )
    b = _staged(
        tmp_path,
        "b",
        {
            "/usr": ("d", "", 0o755),
            "/var/log": ("d", "", 0o2775),
            "/usr/same": ("f", "x", 0o644),
            "/usr/differs": ("f", "b", 0o644),
            "/usr/link-or-file": ("f", "real", 0o755),
        },
    )
    notes = debrpm.resolve_conflicts([b, a])
    assert len(notes) == 3
    # identical files and directories stay shared
    assert "/usr/same" in a.entries and "/usr/same" in b.entries
    assert "/usr" in a.entries and "/usr" in b.entries
    # a directory with other attributes: first package (by name) owns it
    assert "/var/log" in a.entries and "/var/log" not in b.entries
    # differing files: first by name keeps it, the other loses it (also on disk)
    assert "/usr/differs" in a.entries and "/usr/differs" not in b.entries
    assert not (b.root / "usr/differs").exists()
    # a real file beats a symlink whatever the names
    assert "/usr/link-or-file" in b.entries and "/usr/link-or-file" not in a.entries
    assert not (a.root / "usr/link-or-file").is_symlink()
