from dataclasses import fields
from pathlib import Path

import pytest

from hub.config import Settings

README = (Path(__file__).parent.parent / "README.md").read_text()


@pytest.mark.parametrize("name", [f.name for f in fields(Settings) if f.name != "dev_mode"])
def test_every_setting_is_documented_in_the_readme(name: str) -> None:
    assert f"HUB_{name.upper()}" in README


def test_environment_overrides_defaults_and_port_is_honoured() -> None:
    settings = Settings.from_env({"PORT": "9000", "HUB_MAX_SUBSCRIPTIONS": "5",
                                  "HUB_JWT_SECRET": "s" * 32})
    assert (settings.port, settings.max_subscriptions, settings.dev_mode) == (9000, 5, False)


def test_no_secret_means_development_mode_with_a_generated_secret() -> None:
    settings = Settings.from_env({})
    assert settings.dev_mode and settings.jwt_secret and len(settings.jwt_secret) >= 32


def test_a_non_numeric_limit_names_the_variable() -> None:
    with pytest.raises(ValueError, match="HUB_MAX_FRAME_BYTES"):
        Settings.from_env({"HUB_MAX_FRAME_BYTES": "lots"})
