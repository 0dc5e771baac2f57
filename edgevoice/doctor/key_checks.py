"""The API key: found where the service would find it, in a file only its owner can read.

Run by systemd (`$CREDENTIALS_DIRECTORY` set) this is exactly `credentials.load_api_key`.
Run by hand, the service would first take the credential file its unit loads
(`LoadCredential=`, the README's `/etc/edgevoice/openai-api-key`), so that file is checked
(exists, regular file, mode 600) and used when this user can read it. The key is never
printed: it is registered for redaction as soon as it is read.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path

from edgevoice.credentials import CREDENTIAL_NAME, load_api_key
from edgevoice.doctor.service import ServicePaths
from edgevoice.doctor.verdicts import Check, failed, passed, warned
from edgevoice.errors import EXIT_CONFIG, ConfigError
from edgevoice.health.logsetup import add_secret
from edgevoice.settings import ServerSettings

CREATE_KEY = ("sudo install -d -m 700 /etc/edgevoice && sudo install -m 600 /dev/stdin "
              "{path} <<< \"sk-...\"")


def check_key(server: ServerSettings, service: ServicePaths,
              environ: Mapping[str, str] | None = None) -> tuple[list[Check], str | None]:
    """The checks ("key file" when run by hand, then "api key") and the key, if read."""
    env = dict(os.environ if environ is None else environ)
    if env.get("CREDENTIALS_DIRECTORY"):
        check, key = _load("api key", server, env, service)
        return [check], key
    checks: list[Check] = []
    cred = service.credential_file
    file_check, usable = _credential_file(cred)
    checks.append(file_check)
    if usable == "readable":
        # The service takes this file first; load it through the same code it uses.
        env["CREDENTIALS_DIRECTORY"] = str(cred.parent)
        if cred.name != CREDENTIAL_NAME:
            check, key = _read_other(cred)
            return [*checks, check], key
    elif usable == "unreadable":
        checks.append(warned(
            "api key", f"the service would use {cred}, which this user cannot read "
            "(systemd reads it as root); the server checks cannot test it",
            "run `sudo edgevoice check` to test the key against the server"))
        return checks, None
    check, key = _load("api key", server, env, service)
    return [*checks, check], key


def _credential_file(path: Path) -> tuple[Check, str]:
    """The unit's LoadCredential= source: ("absent" | "readable" | "unreadable" | "bad")."""
    name = "key file"
    try:
        st = path.lstat()
    except FileNotFoundError:
        return passed(name, f"{path} absent (the service then uses server.api_key_file "
                      "or the environment)"), "absent"
    except OSError as exc:
        return warned(name, f"{path}: {exc.strerror}", f"sudo ls -l {path}"), "unreadable"
    if not stat.S_ISREG(st.st_mode):
        return failed(name, f"{path} is not a regular file",
                      f"replace it with a file holding only the key: "
                      f"{CREATE_KEY.format(path=path)}", EXIT_CONFIG), "bad"
    mode = stat.S_IMODE(st.st_mode)
    readable = "readable" if os.access(path, os.R_OK) else "unreadable"
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        return warned(name, f"{path} is readable by group or others (mode {mode:04o}); "
                      "systemd copies it for the service anyway, but other local users "
                      "can read the key", f"sudo chmod 600 {path}"), readable
    return passed(name, f"{path} exists, mode {mode:04o} (the service loads it as the "
                  f"credential {CREDENTIAL_NAME})"), readable


def _source(server: ServerSettings, env: Mapping[str, str]) -> str:
    """Where load_api_key found the key (its order)."""
    cred_dir = env.get("CREDENTIALS_DIRECTORY")
    if cred_dir and (Path(cred_dir) / CREDENTIAL_NAME).is_file():
        return f"systemd credential {Path(cred_dir) / CREDENTIAL_NAME}"
    if server.api_key_file:
        return f"server.api_key_file {server.api_key_file}"
    return f"environment variable {server.api_key_env}"


def _load(name: str, server: ServerSettings, env: Mapping[str, str],
          service: ServicePaths) -> tuple[Check, str | None]:
    try:
        key = load_api_key(server, env)
    except ConfigError as exc:
        return failed(name, str(exc), _fix(str(exc), server, service), exc.exit_code), None
    add_secret(key)
    return passed(name, f"found: {_source(server, env)} (not shown)"), key


def _read_other(path: Path) -> tuple[Check, str | None]:
    """A LoadCredential= source under another name: the same rules as load_api_key."""
    try:
        key = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        return failed("api key", f"cannot read {path}: {exc.strerror}",
                      f"sudo chmod 600 {path}", EXIT_CONFIG), None
    if not key or any(c.isspace() for c in key):
        return failed("api key", f"{path} is empty or holds more than one word",
                      f"write only the key into it: {CREATE_KEY.format(path=path)}",
                      EXIT_CONFIG), None
    add_secret(key)
    return passed("api key", f"found: {path} (the service's credential; not shown)"), key


def _fix(message: str, server: ServerSettings, service: ServicePaths) -> str:
    if "readable by group or others" in message and server.api_key_file:
        return f"chmod 600 {server.api_key_file}"
    if "does not exist" in message and server.api_key_file:
        return (f"create {server.api_key_file} (chmod 600) holding only the key, or unset "
                "server.api_key_file")
    if "no API key found" in message:
        return (f"for the service: {CREATE_KEY.format(path=service.credential_file)}; "
                f"or set server.api_key_file, or export {server.api_key_env}")
    return "write only the key (one word) into the file the message names, mode 600"
