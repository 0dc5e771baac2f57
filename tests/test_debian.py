"""debian/: static checks of the Debian packaging against the tree it packages (no build).

Building the package (``make deb``) needs debhelper and takes a while; these checks only read
debian/control, debian/rules, debian/changelog and the install lists, and cross-check them
with pyproject.toml and systemd/edgevoice.service so that the two cannot drift apart.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import replace
from pathlib import Path, PurePosixPath

import pytest
from unit_file import unit_directives

from edgevoice.settings import Settings, parse_settings

REPO = Path(__file__).resolve().parent.parent
DEBIAN = REPO / "debian"
UNIT = REPO / "systemd" / "edgevoice.service"
PACKAGE = "edgevoice"

# Debian 12's own packages for the runtime dependencies in pyproject.toml (+ systemd extra).
RUNTIME_DEPENDS = {
    "python3-numpy",
    "python3-websocket",
    "python3-yaml",
    "python3-pyaudio",
    "python3-systemd",
}


def _deb822_paragraphs(text: str) -> list[dict[str, str]]:
    """Paragraphs of a deb822 file (debian/control): field name -> value, lines folded."""
    paragraphs: list[dict[str, str]] = []
    current: dict[str, str] = {}
    field = ""
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        if not line.strip():
            if current:
                paragraphs.append(current)
            current, field = {}, ""
            continue
        if line[0] in " \t":
            assert field, f"continuation line without a field: {line!r}"
            current[field] += "\n" + line.strip()
            continue
        name, sep, value = line.partition(":")
        assert sep, f"not a field: {line!r}"
        field = name.strip()
        current[field] = value.strip()
    if current:
        paragraphs.append(current)
    return paragraphs


def _relation_names(value: str) -> set[str]:
    """Package names in a relationship field ("a (>= 1), b | c, ${x:Depends}")."""
    names: set[str] = set()
    for relation in value.replace("\n", " ").split(","):
        for alternative in relation.split("|"):
            name = re.split(r"[\s(\[<:]", alternative.strip(), maxsplit=1)[0]
            if name and not name.startswith("$"):
                names.add(name)
    return names


def _binary_paragraph() -> dict[str, str]:
    paragraphs = _deb822_paragraphs((DEBIAN / "control").read_text(encoding="utf-8"))
    for paragraph in paragraphs[1:]:
        if paragraph.get("Package") == PACKAGE:
            return paragraph
    pytest.fail(f"debian/control has no binary package {PACKAGE!r}")


def _unit_values(key: str) -> list[str]:
    """Values of KEY= in the [Service] section of the unit, in order."""
    return unit_directives(UNIT.read_text(encoding="utf-8")).get(("Service", key), [])


def _unit_environment(variable: str) -> str:
    for value in _unit_values("Environment"):
        for assignment in shlex.split(value):
            name, sep, setting = assignment.partition("=")
            if sep and name == variable:
                return setting
    pytest.fail(f"{UNIT.name} sets no Environment={variable}=...")


def _rules() -> str:
    return (DEBIAN / "rules").read_text(encoding="utf-8")


def _installed_paths() -> dict[str, str]:
    """Package path (absolute) -> source path, from debian/edgevoice.install (dh_install)."""
    installed: dict[str, str] = {}
    install = DEBIAN / f"{PACKAGE}.install"
    for raw in install.read_text(encoding="utf-8").splitlines():
        words = raw.split("#", 1)[0].split()
        if not words:
            continue
        *sources, destination = words
        assert sources, f"{install.name}: a line needs a source and a destination: {raw!r}"
        for source in sources:
            target = PurePosixPath("/", destination, PurePosixPath(source).name)
            installed[str(target)] = source
    return installed


def test_runtime_depends_are_debians_python_packages() -> None:
    binary = _binary_paragraph()
    assert binary.get("Architecture") == "all"
    depends = _relation_names(binary.get("Depends", ""))
    missing = RUNTIME_DEPENDS - depends
    assert not missing, f"debian/control Depends lacks {sorted(missing)}"
    assert "${python3:Depends}" in binary["Depends"]
    assert "${misc:Depends}" in binary["Depends"]
    # The devserver extra (websockets >= 13) is newer than Debian 12's python3-websockets.
    assert "python3-websockets" not in depends


def test_build_depends_and_build_system() -> None:
    source = _deb822_paragraphs((DEBIAN / "control").read_text(encoding="utf-8"))[0]
    assert source.get("Source") == PACKAGE
    build_depends = _relation_names(source.get("Build-Depends", ""))
    assert {"debhelper-compat", "dh-python", "pybuild-plugin-pyproject", "python3-all",
            "python3-setuptools"} <= build_depends
    assert re.search(r"^\tdh \$@ --with python3 --buildsystem=pybuild\s*$", _rules(), re.M)


def test_rules_installs_the_unit_without_enabling_it() -> None:
    # dh_installsystemd installs debian/<package>.service, which must be the tree's unit.
    packaged_unit = DEBIAN / f"{PACKAGE}.service"
    assert packaged_unit.exists(), "debian/edgevoice.service (-> ../systemd/...) is missing"
    assert packaged_unit.read_bytes() == UNIT.read_bytes()
    if packaged_unit.is_symlink():
        assert packaged_unit.resolve() == UNIT.resolve()
    # The unit needs an API key the admin adds after installing: never enable it on install.
    calls = re.findall(r"^\tdh_installsystemd\b(.*)$", _rules(), re.M)
    assert calls, "debian/rules does not override dh_installsystemd"
    assert all("--no-enable" in call.split() for call in calls)


def test_rules_installs_asound_conf_where_the_unit_points() -> None:
    alsa_config_path = _unit_environment("ALSA_CONFIG_PATH")
    assert alsa_config_path.startswith("/usr/share/")
    installed = _installed_paths()
    assert installed.get(alsa_config_path) == "systemd/asound.conf", (
        f"debian/{PACKAGE}.install does not put systemd/asound.conf at {alsa_config_path}"
    )


def test_rules_installs_the_config_the_unit_reads_as_a_conffile() -> None:
    (exec_start,) = _unit_values("ExecStart")
    argv = shlex.split(exec_start.lstrip("-@:+!"))
    config_path = argv[argv.index("--config") + 1]
    assert config_path.startswith("/etc/")  # everything under /etc is a conffile
    # Run the recipe itself (make, in a scratch tree): the conffile is the reference
    # configuration with the metrics sent to node_exporter's textfile directory.
    with tempfile.TemporaryDirectory() as scratch:
        tree = Path(scratch)
        (tree / "config").mkdir()
        (tree / "debian").mkdir()
        shutil.copy(REPO / "config" / "edgevoice.yaml", tree / "config" / "edgevoice.yaml")
        shutil.copy(DEBIAN / "rules", tree / "debian" / "rules")
        subprocess.run(["make", "-s", "-f", "debian/rules", "execute_after_dh_install"],
                       cwd=tree, check=True, timeout=60)
        installed = tree / "debian" / PACKAGE / config_path.lstrip("/")
        assert stat.S_IMODE(installed.stat().st_mode) == 0o644
        text = installed.read_text(encoding="utf-8")
    reference = (REPO / "config" / "edgevoice.yaml").read_text(encoding="utf-8")
    assert text == reference.replace(
        "  metrics_file: null\n",
        "  metrics_file: /var/lib/prometheus/node-exporter/edgevoice.prom\n")
    assert text != reference
    shipped = parse_settings(text)
    assert shipped.health.metrics_file == "/var/lib/prometheus/node-exporter/edgevoice.prom"
    assert replace(shipped, health=replace(shipped.health, metrics_file=None)) == Settings()
    examples = (DEBIAN / f"{PACKAGE}.examples").read_text(encoding="utf-8").split()
    assert "config/edgevoice.yaml" in examples


def _sysusers_lines() -> list[list[str]]:
    path = DEBIAN / f"{PACKAGE}.sysusers"
    assert path.exists(), f"debian/{PACKAGE}.sysusers is missing"
    return [shlex.split(line) for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def test_sysusers_creates_the_units_static_group() -> None:
    # The status file is 0640 for the unit's Group=; the package creates that group.
    (group,) = _unit_values("Group")
    assert ["g", group, "-"] in _sysusers_lines()
    assert all(words[0] in ("g", "u", "m", "r") for words in _sysusers_lines())
    # Only a group: the service user is dynamic (and must not share the group's name).
    assert all(words[0] != "u" for words in _sysusers_lines())
    assert _unit_values("DynamicUser") == ["yes"]
    assert group not in _unit_values("User")


@pytest.mark.skipif(shutil.which("systemd-sysusers") is None or os.geteuid() != 0,
                    reason="needs systemd-sysusers and root")
def test_sysusers_file_creates_the_group(tmp_path: Path) -> None:
    # As the postinst does, but into a scratch root: the group appears in its /etc/group.
    conf_dir = tmp_path / "usr" / "lib" / "sysusers.d"
    conf_dir.mkdir(parents=True)
    (tmp_path / "etc").mkdir()
    shutil.copy(DEBIAN / f"{PACKAGE}.sysusers", conf_dir / f"{PACKAGE}.conf")
    proc = subprocess.run(["systemd-sysusers", f"--root={tmp_path}", f"{PACKAGE}.conf"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    (group,) = _unit_values("Group")
    names = [line.split(":")[0] for line in (tmp_path / "etc" / "group").read_text().splitlines()]
    assert names == [group]


def test_sysusers_file_is_installed_and_applied_by_debhelper() -> None:
    # debhelper 13.11 (Debian 12) runs dh_installsysusers by default only from compat 14;
    # with compat 13 the dh-sequence-installsysusers build dependency (or --with
    # installsysusers) adds it. It installs /usr/lib/sysusers.d/edgevoice.conf and calls
    # systemd-sysusers in the postinst.
    source = _deb822_paragraphs((DEBIAN / "control").read_text(encoding="utf-8"))[0]
    build_depends = _relation_names(source.get("Build-Depends", ""))
    compat = re.search(r"debhelper-compat \(= (\d+)\)", source.get("Build-Depends", ""))
    assert compat, "debian/control: no debhelper-compat (= N) build dependency"
    with_addon = re.search(r"^\tdh \$@.*--with\s+\S*installsysusers", _rules(), re.M)
    assert (int(compat.group(1)) >= 14 or "dh-sequence-installsysusers" in build_depends
            or with_addon), "dh_installsysusers does not run"
    assert "override_dh_installsysusers" not in _rules()


def test_changelog_version_matches_pyproject() -> None:
    first = (DEBIAN / "changelog").read_text(encoding="utf-8").splitlines()[0]
    match = re.fullmatch(r"(\S+) \(([^)\s]+)\) [^;]+; urgency=\w+", first)
    assert match, f"debian/changelog: unexpected first line {first!r}"
    assert match.group(1) == PACKAGE
    debian_version = match.group(2)
    upstream = debian_version.split(":", 1)[-1]  # epoch
    native = (DEBIAN / "source" / "format").read_text(encoding="utf-8").strip() == "3.0 (native)"
    if not native:
        upstream, sep, revision = upstream.rpartition("-")
        assert sep and revision, f"non-native version {debian_version!r} needs a revision"
    with (REPO / "pyproject.toml").open("rb") as fh:
        project_version = tomllib.load(fh)["project"]["version"]
    assert upstream == project_version


# -- the man page: rendered from the argparse parser at build time ---------------------------


def _render_manpage() -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO), "SOURCE_DATE_EPOCH": "1763678012"}
    proc = subprocess.run([sys.executable, "-B", str(DEBIAN / "make-manpage.py")], cwd=REPO,
                          capture_output=True, text=True, env=env, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_manpage_is_generated_from_the_parser_and_installed() -> None:
    page = _render_manpage()
    lines = page.splitlines()
    with (REPO / "pyproject.toml").open("rb") as fh:
        version = tomllib.load(fh)["project"]["version"]
    assert lines[0] == f'.TH EDGEVOICE 1 "2025-11-20" "edgevoice {version}" "User Commands"'
    assert lines[1:3] == [".SH NAME", lines[2]] and lines[2].startswith("edgevoice \\- ")
    from edgevoice.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert [line[4:] for line in lines if line.startswith(".SS ")] == list(commands.choices)
    for sub in commands.choices.values():  # every option of every command is described
        for action in sub._actions:
            for option in action.option_strings:
                assert option.replace("-", "\\-") in page, option
    for section in ("SYNOPSIS", "DESCRIPTION", "OPTIONS", "COMMANDS", "EXIT STATUS", "FILES"):
        assert f".SH {section}" in lines
    for code in ("0", "1", "2", "77", "78"):
        assert f"\\fB{code}\\fR" in lines
    # built by debian/rules, installed by dh_installman, removed by dh_clean
    assert re.search(r"^execute_after_dh_auto_build:\n\tPYTHONPATH=\$\(CURDIR\) python3 -B "
                     r"debian/make-manpage\.py > debian/edgevoice\.1$", _rules(), re.M)
    assert (DEBIAN / f"{PACKAGE}.manpages").read_text().split() == ["debian/edgevoice.1"]
    assert "debian/edgevoice.1" in (DEBIAN / "clean").read_text().split()
    source = _deb822_paragraphs((DEBIAN / "control").read_text(encoding="utf-8"))[0]
    assert "python3-yaml" in _relation_names(source["Build-Depends"])  # edgevoice.cli needs it


@pytest.mark.skipif(shutil.which("man") is None, reason="needs man-db")
def test_manpage_renders_without_warnings(tmp_path: Path) -> None:
    # What lintian's groff-message check runs.
    page = tmp_path / "edgevoice.1"
    page.write_text(_render_manpage())
    env = {**os.environ, "LC_ALL": "C.UTF-8", "MANROFFSEQ": "", "MANWIDTH": "80"}
    proc = subprocess.run(["man", "--warnings", "-E", "UTF-8", "-l", "-Tutf8", "-Z", str(page)],
                          capture_output=True, text=True, env=env, timeout=60, check=False)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr


def test_lintian_overrides_are_explained() -> None:
    lines = (DEBIAN / f"{PACKAGE}.lintian-overrides").read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines):
        if line.strip() and not line.startswith("#"):
            assert line.startswith(f"{PACKAGE}: ")
            assert number > 0 and lines[number - 1].startswith("#"), f"unexplained: {line}"
