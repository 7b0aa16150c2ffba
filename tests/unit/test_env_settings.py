"""The environment: every ``SPILLWAY_*`` variable is a setting, one of the project's own
variables (:data:`~core.loading.NOT_SETTINGS`), or refused at start naming it and the
nearest key; a misspelt variable never runs silently against the defaults."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from core.errors import ConfigError
from core.loading import NOT_SETTINGS, load_settings
from core.settings import Settings

ROOT = Path(__file__).resolve().parent.parent.parent


def refused(env: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(env=env)
    return str(info.value)


@pytest.mark.parametrize("var, nearest", [
    ("SPILLWAY_KAFKA_BOOTSTRAP_SERVER", "SPILLWAY_KAFKA_BOOTSTRAP_SERVERS"),
    ("SPILLWAY_KAFKA_BOOTSTRAPSERVERS", "SPILLWAY_KAFKA_BOOTSTRAP_SERVERS"),
    ("SPILLWAY_SOURCE_THRIFT_PROT", "SPILLWAY_SOURCE_THRIFT_PORT"),
    ("SPILLWAY_BUFFER_DIR", "SPILLWAY_BUFFER_DIRECTORY"),
    ("SPILLWAY_KAFKA_PRODUCER_LINGER", "SPILLWAY_KAFKA_PRODUCER_LINGER_MS"),
    ("SPILLWAY_CONFIGS", "SPILLWAY_CONFIG"),
])
def test_a_misspelt_variable_is_refused_naming_it_and_the_nearest_key(var: str, nearest: str) -> None:
    assert refused({var: "x"}) == f"{var}: is no spillway setting; did you mean {nearest}?"


def test_a_variable_like_no_setting_is_refused_without_a_guess() -> None:
    assert refused({"SPILLWAY_FROBNICATE": "1"}) == "SPILLWAY_FROBNICATE: is no spillway setting"


def test_the_value_of_a_refused_variable_is_never_shown() -> None:
    msg = refused({"SPILLWAY_KAFKA_SASL_PASWORD": "hunter2-secret"})
    assert msg.startswith("SPILLWAY_KAFKA_SASL_PASWORD: is no spillway setting")
    assert "hunter2" not in msg


def test_variables_of_other_programs_are_none_of_our_business() -> None:
    s = load_settings(env={"FAUST_LOOP": "uvloop", "SPILLWAYS": "x", "MY_SPILLWAY_PORT": "1", "PATH": "/bin"})
    assert s.web.port == 6066


def test_the_projects_own_variables_that_are_no_settings_pass() -> None:
    assert load_settings(env=dict.fromkeys(NOT_SETTINGS - {"SPILLWAY_CONFIG"}, "1")) == Settings()


def test_every_key_check_config_prints_can_be_set_from_the_environment() -> None:
    """Each key's variable is accepted (set to the key's own default, as text)."""
    for key, value in Settings().flat().items():
        if key in ("kafka.secondary", "interceptors"):  # arrays of tables: the file only (below)
            continue
        if isinstance(value, bool):
            text = str(value).lower()
        elif isinstance(value, tuple):
            text = ",".join(value)
        else:
            text = str(value)
        var = "SPILLWAY_" + key.upper().replace(".", "_")
        assert load_settings(env={var: text}).origins[key] == f"env:{var}", key


@pytest.mark.parametrize("var, key", [("SPILLWAY_INTERCEPTORS", "interceptors"),
                                      ("SPILLWAY_KAFKA_SECONDARY", "kafka.secondary")])
def test_an_array_of_tables_from_the_environment_says_it_is_file_only(var: str, key: str) -> None:
    assert refused({var: "[]"}) == f"{var}: [[{key}]] is set in the configuration file only"


def test_acks_and_idempotence_from_the_environment_are_checked_like_the_file() -> None:
    assert load_settings(env={"SPILLWAY_KAFKA_PRODUCER_ACKS": "all",
                              "SPILLWAY_KAFKA_PRODUCER_ENABLE_IDEMPOTENCE": "true"}) == Settings()
    assert refused({"SPILLWAY_KAFKA_PRODUCER_ACKS": "1"}).startswith("SPILLWAY_KAFKA_PRODUCER_ACKS: must be all (-1)")
    assert refused({"SPILLWAY_KAFKA_PRODUCER_ENABLE_IDEMPOTENCE": "off"}).startswith(
        "SPILLWAY_KAFKA_PRODUCER_ENABLE_IDEMPOTENCE: must be true")


def test_a_security_variable_under_the_producer_points_to_its_flat_variable() -> None:
    msg = refused({"SPILLWAY_KAFKA_PRODUCER_SASL_PLAIN_PASSWORD": "hunter2"})
    assert msg == ("SPILLWAY_KAFKA_PRODUCER_SASL_PLAIN_PASSWORD: is a security setting, not a producer one: "
                   "set SPILLWAY_KAFKA_SASL_PASSWORD")


def test_the_misspelt_variable_is_refused_before_the_file_is_read(tmp_path: Path) -> None:
    # even with SPILLWAY_CONFIG naming no file, the typo is what the operator hears about first
    assert refused({"SPILLWAY_CONFIG": str(tmp_path / "none.toml"), "SPILLWAY_WEB_PROT": "1"}).startswith(
        "SPILLWAY_WEB_PROT: is no spillway setting; did you mean SPILLWAY_WEB_PORT?")


# Prose like SPILLWAY_<SECTION>_<KEY> and this suite's deliberate misspellings are not uses.
_USE = re.compile(r"\bSPILLWAY_[A-Z0-9_]*[A-Z0-9]\b(?!_?<)")
_DELIBERATE = {Path("tests/unit/test_env_settings.py"), Path("tests/unit/test_producer_settings.py"),
               Path("tests/integration/test_install.py")}
_EXAMPLES = {"SPILLWAY_KAFKA_BOOTSTRAP_SERVER"}  # the README's example of a typo


def test_every_spillway_variable_the_project_uses_is_a_setting_or_allowed() -> None:
    """A new test knob or devtools variable must go into NOT_SETTINGS, or every worker refuses it."""
    used: dict[str, Path] = {}
    for path in ROOT.rglob("*"):
        rel = path.relative_to(ROOT)
        if rel.parts[0] in (".git", ".venv", "var") or rel in _DELIBERATE or not path.is_file():
            continue
        if path.suffix not in (".py", ".sh", ".toml", ".md") and path.name != "Procfile":
            continue
        for var in set(_USE.findall(path.read_text(errors="replace"))) - _EXAMPLES:
            used.setdefault(var, rel)
    assert len(used) > 20  # the scan found the project's variables
    for var, rel in sorted(used.items()):
        try:
            load_settings(env={var: "1"} if var != "SPILLWAY_CONFIG" else {})
        except ConfigError as exc:
            assert not str(exc).startswith(f"{var}: is no spillway setting"), f"{rel}: {exc}"
